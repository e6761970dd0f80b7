"""bench/train_throughput.py runs end to end at its tiny size: the baseline and kubetune's trainer
train the same samples in the same steps, the table and verdict print, `speedup: X.XX` is last.

One run of the script (two arm subprocesses) is shared by every test here.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "train_throughput.py"
sys.path.insert(0, str(SCRIPT.parent))

import train_throughput as tt  # noqa: E402


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench") / "work"
    out = work.parent / "results.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "tiny", "--arms", "hf,kubetune", "--no-noise", "--device", "cpu",
         "--threads", "1", "--workdir", str(work), "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout, json.loads(out.read_text()), work


def test_prints_speedup_last(bench_run):
    stdout, results, _ = bench_run
    last = stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"speedup: (\d+\.\d\d)", last)
    assert m, last
    r = results["results"]
    assert float(m.group(1)) == pytest.approx(r["kubetune"]["tokens_per_second"] / r["hf"]["tokens_per_second"], abs=0.006)


def test_both_arms_did_the_same_work(bench_run):
    stdout, results, _ = bench_run
    r = results["results"]
    assert r["hf"]["steps"] == r["kubetune"]["steps"] == tt.SIZES["tiny"]["steps"]
    assert r["hf"]["tokens"] == r["kubetune"]["tokens"] == results["real_tokens"]
    assert r["kubetune"]["packed_rows"] < results["rows"]  # kubetune really packed the rows
    assert "same work in every arm: yes" in stdout


def test_table_and_quality_verdict(bench_run):
    stdout, results, _ = bench_run
    assert re.search(r"^\(a\) hf .*\d", stdout, re.M) and re.search(r"^\(b\) kubetune .*\d", stdout, re.M)
    assert "liger" not in "".join(l for l in stdout.splitlines() if l.startswith("(b)"))
    verdict = next(l for l in stdout.splitlines() if l.startswith("eval loss after the same"))
    assert re.search(r"hf \d+\.\d{4}, kubetune \d+\.\d{4}", verdict)
    assert "no worse (within noise)" in verdict or "WORSE than the baseline" in verdict
    for arm in ("hf", "kubetune"):
        assert math.isfinite(results["results"][arm]["eval_loss"])
        assert results["results"][arm]["peak_memory"] > 0


def test_kubetune_reports_mfu_key_none_on_cpu(bench_run):
    _, _, work = bench_run
    summary = json.loads((work / "kubetune" / "final" / "summary.json").read_text())
    assert "mfu" in summary and summary["mfu"] is None
    records = [json.loads(l) for l in (work / "kubetune" / "progress.jsonl").read_text().splitlines()]
    progress = [r for r in records if "event" not in r]
    assert progress and all("mfu" in r and r["mfu"] is None for r in progress)


def test_plan_gives_equal_steps_to_both_arms():
    from kubetune_trainer import data

    samples = [{"input_ids": [1] * n, "labels": [1] * n} for n in (500, 40, 60, 300, 90, 1000, 33, 200, 120, 75) * 6]
    n, b, g, p = tt.plan_rows(samples, steps=5, batch=8, max_len=1024)
    assert math.ceil(n / b) == 5 and math.ceil(p / g) == 5
    assert p == len(data.pack(samples[:n], 1024))


def test_refuses_to_empty_a_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("x")
    p = subprocess.run([sys.executable, str(SCRIPT), "--workdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert p.returncode != 0 and "not empty" in p.stderr
    assert (tmp_path / "precious.txt").exists()


def test_kubetune_default_lets_the_memory_plan_turn_checkpointing_off(bench_run):
    stdout, results, work = bench_run
    summary = json.loads((work / "kubetune" / "final" / "summary.json").read_text())
    assert summary["gradientCheckpointing"] is False
    assert summary["memoryPlan"]["fits"] is True and summary["memoryPlan"]["gradientCheckpointing"] is False
    assert results["results"]["kubetune"]["gradient_checkpointing"] is False
    assert "off (plan)" in next(line for line in stdout.splitlines() if line.startswith("(b) kubetune"))
