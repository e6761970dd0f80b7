"""The local backend's job life cycle, fast: `kubetune run` replaced by a stand-in that keeps its contract.

The stand-in takes the same command line, writes the same files (progress records and events in
<run-dir>/progress.jsonl, committed checkpoints and final/ in the output folder, the error line in
a node log) and exits with the same codes (0, 75 after Ctrl-C with a checkpoint, 3 with the error line).
Its behaviour per job comes from the request's suffix.
"""
from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kubetune_operator.openai_api.errors import ApiError
from kubetune_operator.openai_api.local_backend import LocalBackend

STAND_IN = textwrap.dedent('''
    import json, signal, sys, time
    from pathlib import Path
    import yaml

    args = sys.argv[1:]
    assert args[:3] == ["-m", "kubetune_operator.cli", "run"], args
    run_dir = Path(args[args.index("--run-dir") + 1])
    manifest = yaml.safe_load(open(args[3]))
    suffix = json.loads(manifest["metadata"]["annotations"]["openai.kubetune.io/request"])["suffix"] or "train"
    out = Path(manifest["spec"]["output"]["uri"])
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = open(run_dir / "progress.jsonl", "w", buffering=1)
    emit = lambda rec: progress.write(json.dumps(rec) + "\\n")
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))

    def commit(step):
        d = out / "checkpoints" / f"step-{step:06d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "COMMITTED").write_text("{}")
        emit({"event": "checkpoint", "step": step, "uri": str(d), "time": "2026-01-01T00:00:00Z"})

    done = sorted(int(p.parent.name[5:]) for p in out.glob("checkpoints/step-*/COMMITTED"))
    start = done[-1] if done else 0
    emit({"event": "phase", "phase": "Initializing"})
    if start:
        emit({"event": "resumed", "step": start, "uri": str(out / "checkpoints" / f"step-{start:06d}")})
    emit({"event": "phase", "phase": "Running"})
    total = 30
    for step in range(start + 1, total + 1):
        # As the trainer reports: training records carry the latest eval loss too; evaluations come as their own records.
        emit({"step": step, "totalSteps": total, "loss": 3.0 / step, "evalLoss": 3.5 / (step - step % 5) if step >= 5 else None})
        if step % 5 == 0:
            emit({"step": step, "totalSteps": total, "evalLoss": 3.5 / step})
        if suffix == "fail" and step == 3:
            (run_dir / "node-0.log").write_text("Traceback...\\nkubetune: error: InvalidDataset: train row 3: 'prompt' is empty\\n")
            sys.exit(3)
        if step % 5 == 0:
            commit(step)
        if stop:
            commit(step)
            sys.exit(75)
        time.sleep(0.05)
    (out / "final" / "adapter").mkdir(parents=True)
    (out / "final" / "summary.json").write_text(json.dumps({"tokensSeen": 1234, "steps": total}))
    emit({"event": "exported", "adapterUri": str(out / "final" / "adapter"), "metrics": {"evalLoss": 0.1}})
''')


@pytest.fixture
def stand_in(tmp_path) -> str:
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\n{STAND_IN}")
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def model(tmp_path) -> Path:
    (tmp_path / "model").mkdir()
    return tmp_path / "model"


def _backend(tmp_path: Path, stand_in: str, model: Path) -> LocalBackend:
    b = LocalBackend(tmp_path / "state", catalogue={"m": str(model)}, template={"distributed": {"gpusPerNode": 0}},
                     python=stand_in, poll_seconds=0.05)
    b.start()
    return b


def _upload(b: LocalBackend) -> str:
    return b.create_file(None, "t.jsonl", "fine-tune", b'{"prompt": "q", "completion": "a"}\n')["id"]


def _wait(b: LocalBackend, job_id: str, predicate, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = b.get_job(None, job_id)
        if predicate(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"timed out; job: {b.get_job(None, job_id)}; events: {[e['message'] for e in b.list_events(None, job_id)]}")


def _messages(b: LocalBackend, job_id: str) -> list[str]:
    return [e["message"] for e in reversed(b.list_events(None, job_id))]  # oldest first


def test_success_failure_and_queueing(tmp_path, stand_in, model):
    b = _backend(tmp_path, stand_in, model)
    try:
        f = _upload(b)
        ok = b.create_job(None, {"model": "m", "training_file": f})
        bad = b.create_job(None, {"model": "m", "training_file": f, "suffix": "fail"})
        assert b.get_job(None, bad["id"])["status"] == "queued"  # one at a time
        done = _wait(b, ok["id"], lambda j: j["status"] == "succeeded")
        assert done["fine_tuned_model"].endswith("final/adapter") and done["trained_tokens"] == 1234
        rows = b.file_content(None, done["result_files"][0]).decode().splitlines()
        assert rows[0] == "step,train_loss,valid_loss" and rows[-1] == f"30,0.1,{3.5 / 30}"
        assert rows[1:5] == ["1,3.0,", "2,1.5,", "3,1.0,", "4,0.75,"]  # no stale eval loss on training steps
        metrics = [e for e in b.list_events(None, ok["id"]) if e["type"] == "metrics"]
        assert "validation" not in next(e for e in metrics if e["data"]["step"] == 7)["message"]
        steps = [c["step_number"] for c in b.list_checkpoints(None, ok["id"])]
        assert steps == [30, 25, 20, 15, 10, 5]
        failed = _wait(b, bad["id"], lambda j: j["status"] == "failed")
        assert failed["error"] == {"code": "InvalidDataset", "message": "train row 3: 'prompt' is empty", "param": "training_file"}
        assert b.list_events(None, bad["id"])[0]["level"] == "error"
        with pytest.raises(ApiError) as e:
            b.resume_job(None, bad["id"])
        assert e.value.status == 400
    finally:
        b.close()


def test_resume_while_the_pause_is_still_checkpointing_runs_it_again(tmp_path, stand_in, model):
    b = _backend(tmp_path, stand_in, model)
    try:
        job = b.create_job(None, {"model": "m", "training_file": _upload(b)})
        _wait(b, job["id"], lambda j: (j["kubetune"]["progress"] or {}).get("step", 0) >= 7)
        assert b.pause_job(None, job["id"])["status"] == "paused"
        assert b.resume_job(None, job["id"])["status"] == "queued"  # before the stand-in has exited
        done = _wait(b, job["id"], lambda j: j["status"] in ("succeeded", "failed"))
        assert done["status"] == "succeeded"
        messages = _messages(b, job["id"])
        assert any(m.startswith("Job stopped at the checkpoint of step") and m.endswith("starting again as asked") for m in messages)
        assert any(m.startswith("Resumed from the checkpoint at step") for m in messages)
    finally:
        b.close()


def test_a_server_restart_pauses_running_jobs_and_they_resume(tmp_path, stand_in, model):
    b = _backend(tmp_path, stand_in, model)
    job = b.create_job(None, {"model": "m", "training_file": _upload(b)})
    _wait(b, job["id"], lambda j: (j["kubetune"]["progress"] or {}).get("step", 0) >= 3)
    b.close()  # as on Ctrl-C of `kubetune api`: running jobs checkpoint and stop
    paused_at = b.list_checkpoints(None, job["id"])[0]["step_number"]

    again = _backend(tmp_path, stand_in, model)
    try:
        assert again.get_job(None, job["id"])["status"] == "paused"
        again.resume_job(None, job["id"])
        assert _wait(again, job["id"], lambda j: j["status"] == "succeeded")
        assert f"Resumed from the checkpoint at step {paused_at}" in _messages(again, job["id"])
    finally:
        again.close()

    # A server that died while a job ran (job.json still says Running): loaded as paused, resumable.
    state = tmp_path / "state" / "jobs" / job["id"] / "job.json"
    stored = json.loads(state.read_text())
    stored["ftj"]["status"]["phase"] = "Running"
    state.write_text(json.dumps(stored))
    third = LocalBackend(tmp_path / "state", python=stand_in)
    assert third.get_job(None, job["id"])["status"] == "paused"
    assert "The API server restarted while the job ran" in third.list_events(None, job["id"])[0]["message"]


def test_cancel_queued_and_running(tmp_path, stand_in, model):
    b = _backend(tmp_path, stand_in, model)
    try:
        f = _upload(b)
        first = b.create_job(None, {"model": "m", "training_file": f})
        second = b.create_job(None, {"model": "m", "training_file": f})
        assert b.cancel_job(None, second["id"])["status"] == "cancelled"  # still queued: never starts
        _wait(b, first["id"], lambda j: j["status"] == "running")
        assert b.cancel_job(None, first["id"])["status"] == "cancelled"
        _wait(b, first["id"], lambda j: "Job cancelled" in " ".join(_messages(b, first["id"])) or None)
        time.sleep(0.3)
        assert b.get_job(None, second["id"])["status"] == "cancelled" and not (tmp_path / "state" / "jobs" / second["id"] / "run").exists()
        with pytest.raises(ApiError):
            b.cancel_job(None, first["id"])
        with pytest.raises(ApiError) as e:
            b.create_job(None, {"model": str(tmp_path / "nowhere"), "training_file": f})
        assert (e.value.status, e.value.param) == (404, "model")
    finally:
        b.close()
