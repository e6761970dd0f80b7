"""End to end: FineTuneJob -> the real operator -> Indexed Job -> 2 trainer "pods" -> S3 and status.

Nothing here is simulated but the container runtime: the operator is the real
Kopf operator against the API emulator, the pods are real torchrun processes
started from the Job's pod template by ``executor.PodExecutor``, training is
the real trainer (tiny model, 2 ranks on 2 nodes, ZeRO via DeepSpeed on CPU),
storage is a real S3 HTTP server (moto), and progress reaches the
FineTuneJob's status through the trainer's Kubernetes status reporter.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from e2e_jobs import BUCKET, NAMESPACE, finetunejob

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]


class StatusRecorder:
    """Polls a FineTuneJob's status in the background and keeps every distinct snapshot."""

    def __init__(self, cluster, name: str):
        self.cluster, self.name = cluster, name
        self.snapshots: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        session.headers.update(self.cluster.session.headers)  # the test client's identity (RBAC refuses none)
        url = self.cluster.url + self.cluster.path("FineTuneJob", NAMESPACE, self.name)
        while not self._stop.is_set():
            r = session.get(url, timeout=10)
            status = (r.json().get("status") or {}) if r.status_code == 200 else {}
            if status and (not self.snapshots or self.snapshots[-1] != status):
                self.snapshots.append(status)
            self._stop.wait(0.02)

    def __enter__(self) -> StatusRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def latest(self) -> dict[str, Any]:
        return self.snapshots[-1] if self.snapshots else {}

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.snapshots and predicate(self.latest):
                return self.latest
            if self.latest.get("phase") == "Failed":
                break
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; status: {json.dumps(self.latest, indent=1)[:3000]}")


def _progress_file_records(pod) -> list[dict[str, Any]]:
    path = Path(pod.env.get("KUBETUNE_PROGRESS_FILE", ""))
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pods_of(executor, job_name: str):
    return [p for p in executor.pods if p.job_key == (NAMESPACE, job_name)]


def _fail_context(executor, job_name: str) -> str:
    return "\n\n".join(f"--- {p.name} (exit {p.exit_code}) ---\n{p.log_tail(40, 4000)}" for p in _pods_of(executor, job_name))


def _load_adapter(s3, tiny_files: Path, adapter_uri: str, tmp_path: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    prefix = adapter_uri[len(f"s3://{BUCKET}/"):]
    local = s3.download_dir(prefix, tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_files / "model")
    model = PeftModel.from_pretrained(base, local)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b), "the exported LoRA B matrices are all zero: untrained"
    return model, torch


def test_finetunejob_runs_to_succeeded_with_progress_checkpoints_and_adapter_in_s3(e2e, tiny_files, tmp_path):
    cluster, executor, s3 = e2e["cluster"], e2e["executor"], e2e["s3"]
    name = "e2e-ok"
    job = finetunejob(name, e2e["inputs"], s3.endpoint)
    with StatusRecorder(cluster, name) as rec:
        cluster.create(job)
        try:
            final = rec.wait_for(lambda s: s.get("phase") == "Succeeded", 240, "phase Succeeded")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{_fail_context(executor, name + '-a1')}") from None

    # The operator created one Indexed Job of 2 pods; the executor ran both to exit 0.
    batch = cluster.get("Job", NAMESPACE, f"{name}-a1")
    assert batch["spec"]["completionMode"] == "Indexed" and batch["spec"]["completions"] == 2
    pods = _pods_of(executor, f"{name}-a1")
    assert sorted(p.index for p in pods) == [0, 1] and all(p.exit_code == 0 for p in pods), _fail_context(executor, f"{name}-a1")
    assert "--node-rank=0" in pods[0].argv or "--node-rank=1" in pods[0].argv  # $(JOB_COMPLETION_INDEX) expanded

    # Progress reached status.progress while training ran (not only at the end).
    progressed = [s["progress"] for s in rec.snapshots if (s.get("progress") or {}).get("step")]
    assert progressed, [s.get("phase") for s in rec.snapshots]
    mid = [p for p in progressed if p["step"] < p["totalSteps"]]
    assert mid, f"no progress seen before the end: {progressed}"
    assert progressed[-1]["step"] == progressed[-1]["totalSteps"] == 8
    assert any(p.get("loss") is not None for p in progressed) and any(p.get("evalLoss") is not None for p in progressed)
    phases_seen = [s.get("phase") for s in rec.snapshots]
    assert "Running" in phases_seen and phases_seen[-1] == "Succeeded"

    # Checkpoints committed in S3; the final adapter too; status.output points at it.
    keys = s3.keys(f"runs/{name}/")
    committed = sorted(k for k in keys if k.startswith(f"runs/{name}/checkpoints/") and k.endswith("/COMMITTED"))
    assert committed == [f"runs/{name}/checkpoints/step-000004/COMMITTED", f"runs/{name}/checkpoints/step-000008/COMMITTED"], committed
    assert f"runs/{name}/final/adapter/adapter_config.json" in keys and f"runs/{name}/final/summary.json" in keys
    output = final.get("output") or {}
    assert output.get("adapterUri") == f"s3://{BUCKET}/runs/{name}/final/adapter", final
    assert output.get("summaryUri") == f"s3://{BUCKET}/runs/{name}/final/summary.json"
    assert output.get("reportUri") == f"s3://{BUCKET}/runs/{name}/final/report.html"  # the report, linked from status
    assert f"runs/{name}/final/plots/loss.png" in keys and f"runs/{name}/final/eval/metrics.json" in keys
    assert output.get("metrics", {}).get("evalLoss") is not None
    assert (final.get("lastCheckpoint") or {}).get("step") == 8
    assert final.get("restarts") == 0

    # The exported adapter loads with PEFT on the base model.
    _load_adapter(s3, tiny_files, output["adapterUri"], tmp_path)


def test_killed_pod_restarts_the_gang_which_resumes_from_the_last_committed_checkpoint(e2e, tmp_path):
    cluster, executor, s3 = e2e["cluster"], e2e["executor"], e2e["s3"]
    name = "e2e-kill"
    job = finetunejob(name, e2e["inputs"], s3.endpoint, training={"maxSteps": 12, "evalEvery": 6}, output={"checkpointEvery": 3})
    with StatusRecorder(cluster, name) as rec:
        cluster.create(job)
        # Wait for a committed checkpoint (the trainer reports it in status.lastCheckpoint after COMMITTED).
        rec.wait_for(lambda s: (s.get("lastCheckpoint") or {}).get("step"), 180, "a committed checkpoint")
        victims = [p for p in executor.running_pods(f"{name}-a1") if p.index == 1]
        assert victims, _fail_context(executor, f"{name}-a1")
        victim = victims[0]
        executor.kill_pod(victim)  # node 1 dies without a chance to checkpoint
        killed_at_status = rec.latest
        try:
            # Attempt 2 starts only once every pod of attempt 1 is gone (node 0 commits its
            # checkpoint within the grace period first: one gang at a time, issue 11).
            final = rec.wait_for(lambda s: s.get("phase") == "Succeeded", 420, "phase Succeeded after the restart")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{_fail_context(executor, name + '-a1')}\n{_fail_context(executor, name + '-a2')}") from None

    assert killed_at_status.get("restarts", 0) == 0
    assert final["restarts"] == 1 and final["attempt"] == 2
    # The operator said why it restarted (Events persist; the Restarting phase may last only an instant).
    events = [e for e in cluster.events(NAMESPACE, name) if (e.get("message") or "").startswith("Restarting:")]
    assert len(events) == 1, [e.get("message") for e in cluster.events(NAMESPACE, name)]
    assert events[0]["reason"] == "PodFailed" and victim.name in events[0]["message"], events[0]

    # Attempt 1: what was the last committed checkpoint when node 1 died?
    first = [p for p in _pods_of(executor, f"{name}-a1") if p.index == 0][0]
    events1 = _progress_file_records(first)
    last_commit = [e for e in events1 if e.get("event") == "checkpoint"][-1]
    # Attempt 2 resumed from exactly that checkpoint, and its first step was the next one.
    second = [p for p in _pods_of(executor, f"{name}-a2") if p.index == 0][0]
    events2 = _progress_file_records(second)
    resumed = [e for e in events2 if e.get("event") == "resumed"]
    assert resumed and resumed[0]["step"] == last_commit["step"], (resumed, last_commit)
    assert resumed[0]["uri"] == last_commit["uri"]
    first_step = next(r["step"] for r in events2 if "event" not in r and r.get("loss") is not None)
    assert first_step == last_commit["step"] + 1, (first_step, last_commit)
    assert all(p.exit_code == 0 for p in _pods_of(executor, f"{name}-a2"))

    # And the job finished its planned steps with the adapter exported.
    assert final["progress"]["step"] == 12
    assert s3.keys(f"runs/{name}/final/adapter/adapter_config.json")


def test_a_permanent_trainer_error_fails_the_job_at_once_with_the_trainers_reason(e2e):
    """Exit code 3 through the real chain: trainer -> torchrun wrapper -> pod -> Job's podFailurePolicy -> operator."""
    cluster, executor, s3 = e2e["cluster"], e2e["executor"], e2e["s3"]
    name = "e2e-perm"
    inputs = dict(e2e["inputs"], train=f"s3://{BUCKET}/data/missing.jsonl")
    job = finetunejob(name, inputs, s3.endpoint, runPolicy={"maxRestarts": 2, "backoffSeconds": 0})
    with StatusRecorder(cluster, name) as rec:
        cluster.create(job)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and rec.latest.get("phase") != "Failed":
            time.sleep(0.1)
    final = rec.latest
    assert final.get("phase") == "Failed", (final, _fail_context(executor, f"{name}-a1"))
    assert final["reason"] == "DatasetNotFound" and "missing.jsonl" in final["message"], final
    assert final.get("restarts", 0) == 0 and final.get("attempt") == 1  # no retry of what a retry cannot fix
    assert any(p.exit_code == 3 for p in _pods_of(executor, f"{name}-a1"))
    assert cluster.get("Job", NAMESPACE, f"{name}-a2") is None
