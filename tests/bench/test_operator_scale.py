"""bench/operator_scale.py at a small N, so it cannot rot: every measure is taken and printed."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("operator_scale", ROOT / "bench" / "operator_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_operator_scale_small(capsys):
    bench = load_bench()
    r = bench.main(["--jobs", "8", "--finished", "12", "--resync", "1"])
    out = capsys.readouterr().out
    assert out.count("ratio: ") == 1 and "requests per job until its Job exists: " in out
    assert "requests per resync with 12 finished jobs: " in out and "peak RSS with 12 jobs: " in out
    # Sanity of what was measured (not the goals: those are the bench's to report).
    assert r["kopf"]["p99"] > 0 and r["kubetune"]["p99"] > 0 and r["ratio"] > 0
    assert r["requests_per_job"] >= 2  # at least the status write and the Job itself
    assert r["kubetune"]["breakdown"]["create jobs"] == 1.0  # exactly one Job POST per job before it exists
    assert r["requests_per_resync"] >= 0 and r["finished_arm"]["startup_s"] > 0
    assert 20 < r["peak_rss_mib"] < 4096
