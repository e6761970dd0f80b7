"""The final evaluation and the report (issue 15), on one real trainer run of a tiny model.

One LoRA run (1 CPU process, 6 steps) on chat rows whose answers are one line
of JSON, with a validation set, a separate test set and a generation sample.
The tests read what it wrote: the per-row base/tuned outputs, the metrics
(recomputed here from the rows), the plots (their embedded series against
the run's records), report.html in headless Chromium, and `kubetune report`
on the local output, on a copy in S3 (moto) and on a still-running output.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import urllib.request
from contextlib import redirect_stdout

import pytest
from trainer_helpers import run_trainer, write_json_chat

from kubetune_operator.cli import main as kubetune
from kubetune_trainer import evaluation, report

pytestmark = [pytest.mark.distributed]

@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    w = tmp_path_factory.mktemp("evalrun")
    spec = {
        "model": {"source": str(tiny_model_dir)},
        "dataset": {"train": write_json_chat(w / "train.jsonl", 48, 0), "eval": write_json_chat(w / "eval.jsonl", 8, 1),
                    "maxSeqLength": 128},
        "method": {"type": "lora", "lora": {"r": 8}},
        "training": {"maxSteps": 6, "globalBatchSize": 8, "microBatchSize": 8, "learningRate": 5e-3, "evalEvery": 3,
                     "gradientCheckpointing": False},
        "evaluation": {"test": write_json_chat(w / "test.jsonl", 5, 2), "samples": 4, "decoding": {"maxNewTokens": 24},
                       "reportRows": 3},
        "distributed": {"gpusPerNode": 0, "processesPerNode": 1},
        "output": {"uri": str(w / "out"), "checkpointEvery": 3, "keepLast": 1},
    }
    r = run_trainer(w, spec, nproc=1)
    assert r.rc == 0, r.log[-4000:]
    return r


def _metrics(run) -> dict:
    return json.loads((run.output / "final" / "eval" / "metrics.json").read_text())


def _rows(run, name: str) -> list[dict]:
    return [json.loads(l) for l in (run.output / "final" / "eval" / f"{name}.jsonl").read_text().splitlines()]


def test_base_and_tuned_on_the_same_rows_of_both_sets(run):
    m = _metrics(run)
    assert m["decoding"] == {"strategy": "greedy", "maxNewTokens": 24, "do_sample": False, "num_beams": 1}
    assert set(m["sets"]) == {"validation", "test"} and m["sets"]["test"]["rows"] == 5
    for name, entry in m["sets"].items():
        rows = _rows(run, name)
        assert [r["row"] for r in rows] == list(range(entry["rows"]))
        for who in ("base", "tuned"):
            got = entry[who]
            # the metrics are what the per-row outputs say
            scored = [evaluation.score(r[who]["prediction"], r["reference"]) for r in rows if "prediction" in r[who]]
            assert len(scored) == 4 and got["generations"] == 4
            again = evaluation.generation_metrics(scored)
            for key in ("exactMatch", "normalizedExactMatch", "rougeL", "jsonValid", "jsonFieldMatch", "fields"):
                assert got[key] == again[key], (name, who, key)
            assert got["jsonRows"] == 4 and set(got["fields"]) == {"country", "capital", "size"}
            tokens = sum(r[who]["tokens"] for r in rows)
            assert got["tokens"] == tokens and got["loss"] == pytest.approx(sum(r[who]["lossSum"] for r in rows) / tokens, rel=1e-12)
            assert 0 <= got["tokenAccuracy"] <= 1
        assert entry["tuned"]["loss"] < entry["base"]["loss"]
    # the base is the model before any training step: the Trainer's own step-0 eval loss on the validation set
    s = run.summary
    assert m["sets"]["validation"]["base"]["loss"] == pytest.approx(s["initialEvalLoss"], abs=1e-4)
    assert m["sets"]["validation"]["tuned"]["loss"] == pytest.approx(s["evalLoss"], abs=1e-4)
    assert s["evaluation"] == m and s["exactMatch"] == m["sets"]["validation"]["tuned"]["exactMatch"]
    exported = [r for r in run.records if r.get("event") == "exported"][0]
    assert exported["reportUri"].endswith("final/report.html")
    assert exported["metrics"]["baseJsonFieldMatch"] == m["sets"]["validation"]["base"]["jsonFieldMatch"]
    assert exported["metrics"]["testLoss"] == m["sets"]["test"]["tuned"]["loss"]  # for a sweep that selected on validation


def test_plots_are_pngs_of_the_runs_records(run):
    from PIL import Image

    history = run.summary["history"]
    want = report.series(history)
    # the records themselves: a loss every step, eval at 0, 3 and 6, a learning rate every step
    assert [p[0] for p in want["train_loss"]] == [1, 2, 3, 4, 5, 6]
    assert [p[0] for p in want["eval_loss"]] == [0, 3, 6]
    assert want["eval_loss"][0][1] == run.summary["initialEvalLoss"]
    assert len(want["learning_rate"]) == 6
    for name, curves in (("loss", ("train_loss", "eval_loss")), ("learning_rate", ("learning_rate",))):
        png = run.output / "final" / report.PLOTS[name]
        with Image.open(png) as img:
            assert img.format == "PNG" and img.size == (700, 360)
            drawn = json.loads(img.text[report.SERIES_KEY])
            assert drawn == {c: want[c] for c in curves}
            assert sum(1 for n in img.convert("L").histogram() if n) > 20  # lines and text, not a blank canvas


def test_report_markdown_and_html(run, tmp_path):
    final = run.output / "final"
    md = (final / "report.md").read_text()
    assert "| validation | exact match |" in md and "| test | JSON field match |" in md
    assert "![loss](plots/loss.png)" in md and "## First rows where base and tuned differ" in md
    page = (final / "report.html").read_text()
    assert "src='plots" not in page and page.count("data:image/png;base64,") == 2  # self-contained
    chromium = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if chromium is None:
        pytest.skip("no headless Chromium installed (apt-get install chromium-headless-shell; .ci/run installs it)")
    shot = tmp_path / "report-screenshot.png"
    p = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1000,1800",
                        (final / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and shot.is_file(), p.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1000, 1800)
        gray = img.convert("L")
        # the page drew text, the table and both plots: many shades, and dark pixels well down the page
        assert sum(1 for n in gray.histogram() if n) > 50
        assert gray.crop((0, 600, 1000, 1800)).getextrema()[0] < 100


def _kubetune_report(*args: str) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = kubetune(["report", *args])
    return rc, buf.getvalue()


def test_kubetune_report_on_a_local_output(run, tmp_path):
    rc, out = _kubetune_report(str(run.output), "--out", str(tmp_path / "r"))
    assert rc == 0, out
    m = _metrics(run)["sets"]["validation"]
    line = next(l for l in out.splitlines() if l.startswith("validation") and " exact match " in l)
    assert f"{m['base']['exactMatch']:.4f}" in line and f"{m['tuned']['exactMatch']:.4f}" in line
    line = next(l for l in out.splitlines() if l.startswith("test") and "JSON field match" in l)
    assert f"{_metrics(run)['sets']['test']['tuned']['jsonFieldMatch']:.4f}" in line
    assert (tmp_path / "r" / "report.html").is_file()
    from PIL import Image

    with Image.open(tmp_path / "r" / report.PLOTS["loss"]) as img:
        assert json.loads(img.text[report.SERIES_KEY])["eval_loss"] == report.series(run.summary["history"])["eval_loss"]


def test_kubetune_report_on_a_running_output(run, tmp_path):
    """No final/ yet: the curves come from the newest committed checkpoint's trainer_state.json."""
    out = tmp_path / "running"
    shutil.copytree(run.output, out, ignore=shutil.ignore_patterns("final"))
    rc, text = _kubetune_report(str(out), "--out", str(tmp_path / "r"))
    assert rc == 0, text
    assert "running, step 6" in text and "no final evaluation yet" in text
    from PIL import Image

    with Image.open(tmp_path / "r" / report.PLOTS["loss"]) as img:
        drawn = json.loads(img.text[report.SERIES_KEY])
    assert drawn["train_loss"] == report.series(run.summary["history"])["train_loss"]
    rc, text = _kubetune_report(str(tmp_path / "nothing"), "--out", str(tmp_path / "r2"))
    assert rc == 1


@pytest.fixture
def s3_endpoint(monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30)
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="reports")
    try:
        yield endpoint, client
    finally:
        server.stop()


def test_kubetune_report_on_an_s3_output(run, s3_endpoint, tmp_path):
    endpoint, client = s3_endpoint
    for f in sorted(run.output.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), "reports", f"runs/job-a/{f.relative_to(run.output).as_posix()}")
    rc, s3_text = _kubetune_report("s3://reports/runs/job-a", "--endpoint", endpoint, "--out", str(tmp_path / "s3"))
    assert rc == 0, s3_text
    rc, local_text = _kubetune_report(str(run.output), "--out", str(tmp_path / "local"))
    table = [l for l in s3_text.splitlines() if l.startswith(("set ", "validation", "test"))]
    assert len(table) > 10 and table == [l for l in local_text.splitlines() if l.startswith(("set ", "validation", "test"))]
    assert (tmp_path / "s3" / "report.md").read_text().split("## Metrics")[1] == (tmp_path / "local" / "report.md").read_text().split("## Metrics")[1]
