"""The trainer's progress reporter, through the real operator's report endpoint, on the emulated cluster.

Rank 0 holds one credential: a projected token of its ServiceAccount with the audience
kubetune.io/report, bound to its pod. The operator verifies it (TokenReview, pod membership),
checks the report and writes status; the pod never calls the API server.
"""
import time

import pytest

from kubetune_operator import builders
from kubetune_trainer import k8s_status
from support import kubelet
from support.cluster import EmulatedCluster, reporting_settings, wait_for
from support.manifests import job_manifest

NS = "reporter"
OUT = "s3://kubetune-test/runs"


@pytest.fixture(scope="module")
def cluster():
    with EmulatedCluster() as c:
        c.ensure_namespace(NS)
        yield c


@pytest.fixture(scope="module")
def operator(cluster):
    settings = reporting_settings()
    with cluster.operator(settings, namespaces=(NS,)):
        yield settings


def running_job(cluster, name):
    """A job whose attempt 1 runs: -> its rank-0 pod."""
    cluster.create(job_manifest(name, NS, output={"uri": f"{OUT}/{name}"}))
    job = wait_for(lambda: cluster.get("Job", NS, builders.batch_job_name(name, 1)), message="Job")
    pods = [kubelet.run(cluster, p) for p in kubelet.create_pods(cluster, job)]
    wait_for(lambda: status(cluster, name).get("phase") == "Running", message="Running")
    return pods[0]


def reporter(cluster, settings, name, pod, tmp_path, interval=10.0):
    token = tmp_path / f"{name}-token"
    token.write_text(cluster.service_account_token(NS, "default", (builders.REPORT_AUDIENCE,), pod=pod["metadata"]["name"]) + "\n")
    return k8s_status.reporter_from_env({
        "KUBETUNE_JOB_NAME": name, "KUBETUNE_JOB_NAMESPACE": NS, "KUBETUNE_ATTEMPT": "1",
        "KUBETUNE_REPORT_URL": settings.report_url, "KUBETUNE_REPORT_TOKEN": str(token), "KUBETUNE_STATUS_INTERVAL": str(interval),
        "KUBETUNE_REPORT_CA": settings.report_ca,
    })


def status(cluster, name):
    return (cluster.get("FineTuneJob", NS, name) or {}).get("status") or {}


def test_progress_checkpoint_and_export_reach_status_through_the_operator(cluster, operator, tmp_path):
    name = "reported"
    rank0 = running_job(cluster, name)
    before = status(cluster, name)
    r = reporter(cluster, operator, name, rank0, tmp_path, interval=0.05)
    r.event({"event": "phase", "phase": "Running"})
    r.event({"event": "plan", "zeroStage": 2, "offload": "none", "gradientCheckpointing": False, "microBatchSize": 4,
             "estimatedBytes": 9_663_676_416, "deviceBytes": 85_520_809_984, "device": "NVIDIA H100 80GB HBM3", "fits": True})
    r.progress({"step": 5, "totalSteps": 50, "percent": 10.0, "loss": 2.0, "evalLoss": None, "updatedAt": "2026-01-01T00:00:00Z"})
    wait_for(lambda: status(cluster, name).get("progress", {}).get("step") == 5, message="progress 5")
    assert status(cluster, name)["reason"] == "TrainingStarted"
    r.progress({"step": 6, "totalSteps": 50, "percent": 12.0, "loss": 1.9, "evalLoss": 2.1, "updatedAt": "2026-01-01T00:00:01Z"})
    r.event({"event": "checkpoint", "step": 6, "uri": f"{OUT}/{name}/checkpoints/step-000006", "time": "2026-01-01T00:00:02Z"})
    r.event({"event": "resumed", "step": 6, "uri": f"{OUT}/{name}/checkpoints/step-000006"})
    r.event({"event": "phase", "phase": "Exporting"})
    r.event({"event": "exported", "adapterUri": f"{OUT}/{name}/final/adapter", "mergedUri": None,
             "summaryUri": f"{OUT}/{name}/final/summary.json", "reportUri": f"{OUT}/{name}/final/report.html",
             "baseModel": "hf://org/base", "baseModelRevision": "main", "metrics": {"evalLoss": 1.8, "perplexity": 6.05}})
    r.progress({"step": 7, "loss": 1.8})
    r.close()
    wait_for(lambda: status(cluster, name).get("progress", {}).get("step") == 7, message="progress 7")
    st = wait_for(lambda: (lambda s: s if s.get("phase") == "Exporting" else None)(status(cluster, name)), message="Exporting")
    # The operator decided Exporting (with its condition) from the reported stage; its own fields are its own.
    assert any(c["type"] == "Exporting" and c["status"] == "True" for c in st["conditions"])
    assert (st["restarts"], st["attempt"]) == (before["restarts"], before["attempt"])
    assert st["progress"] == {"step": 7, "totalSteps": 50, "percent": 12.0, "loss": 1.8, "evalLoss": 2.1, "updatedAt": "2026-01-01T00:00:01Z"}
    assert st["lastCheckpoint"] == {"step": 6, "uri": f"{OUT}/{name}/checkpoints/step-000006", "time": "2026-01-01T00:00:02Z"}
    assert st["output"] == {"adapterUri": f"{OUT}/{name}/final/adapter", "summaryUri": f"{OUT}/{name}/final/summary.json",
                            "reportUri": f"{OUT}/{name}/final/report.html", "baseModel": "hf://org/base", "baseModelRevision": "main",
                            "metrics": {"evalLoss": 1.8, "perplexity": 6.05}}
    assert st["plan"] == {"zeroStage": 2, "offload": "none", "gradientCheckpointing": False, "microBatchSize": 4,
                          "estimatedBytes": 9_663_676_416, "deviceBytes": 85_520_809_984, "device": "NVIDIA H100 80GB HBM3",
                          "fits": True}
    # The pod made no request to the API server.
    assert not [c for c in cluster.calls if c.user_agent == "kubetune-trainer"]


def test_progress_is_rate_limited_and_the_latest_record_wins(cluster, operator, tmp_path):
    name = "throttled"
    rank0 = running_job(cluster, name)
    r = reporter(cluster, operator, name, rank0, tmp_path, interval=30.0)
    r.progress({"step": 1, "totalSteps": 100})
    wait_for(lambda: r.sent == 1 and status(cluster, name).get("progress", {}).get("step") == 1)
    for step in range(2, 101):
        r.progress({"step": step, "totalSteps": 100})
    time.sleep(0.3)
    sent_before_close = r.sent
    r.close()
    assert sent_before_close == 1  # the first record at once, the rest wait for the interval
    assert r.sent == 2
    wait_for(lambda: status(cluster, name)["progress"]["step"] == 100, message="close() flushes the latest")


def test_errors_never_reach_training(tmp_path):
    (tmp_path / "token").write_text("t")
    r = k8s_status.KubernetesStatusReporter("http://127.0.0.1:9", "ns", "gone", token_file=str(tmp_path / "token"), min_interval=0.0,
                                           timeout=0.5, allow_insecure_http=True)
    t0 = time.monotonic()
    for step in range(50):
        r.progress({"step": step})
    r.event({"event": "checkpoint", "step": 1, "uri": "s3://x"})
    assert time.monotonic() - t0 < 0.5  # never blocks the training loop
    t0 = time.monotonic()
    r.close(timeout=0.5)  # the operator is unreachable: close() gives up instead of holding the process
    assert time.monotonic() - t0 < 1.0 and r.sent == 0


def test_missing_configuration_is_reported_clearly():
    with pytest.raises(RuntimeError, match="KUBETUNE_JOB_NAME"):
        k8s_status.reporter_from_env({})
    with pytest.raises(RuntimeError, match="KUBETUNE_REPORT_URL"):
        k8s_status.reporter_from_env({"KUBETUNE_JOB_NAME": "a", "KUBETUNE_JOB_NAMESPACE": "b"})
