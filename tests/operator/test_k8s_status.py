"""The trainer's Kubernetes status reporter against the emulated API (no operator needed)."""
import time

from kubetune_trainer import k8s_status
from support.cluster import wait_for
from support.manifests import job_manifest

NS = "reporter"


def make_job(cluster, name):
    cluster.ensure_namespace(NS)
    cluster.create(job_manifest(name, NS))


def reporter(cluster, name, tmp_path, interval=10.0):
    sa = tmp_path / "sa"
    sa.mkdir(exist_ok=True)
    (sa / "token").write_text("pod-token\n")
    return k8s_status.reporter_from_env({
        "KUBETUNE_JOB_NAME": name, "KUBETUNE_JOB_NAMESPACE": NS, "KUBETUNE_API_SERVER": cluster.url,
        "KUBETUNE_SA_DIR": str(sa), "KUBETUNE_STATUS_INTERVAL": str(interval),
    })


def status(cluster, name):
    return cluster.get("FineTuneJob", NS, name).get("status") or {}


def test_progress_checkpoint_and_export_reach_the_status_subresource_only(cluster, tmp_path):
    name = "reported"
    make_job(cluster, name)
    cluster.patch_status("FineTuneJob", NS, name, {"phase": "Initializing", "restarts": 1})
    r = reporter(cluster, name, tmp_path, interval=0.05)
    r.event({"event": "phase", "phase": "Initializing"})  # the operator's to say: not written
    r.event({"event": "phase", "phase": "Running"})
    r.progress({"step": 5, "totalSteps": 50, "percent": 10.0, "loss": 2.0, "evalLoss": None, "updatedAt": "2026-01-01T00:00:00Z"})
    wait_for(lambda: status(cluster, name).get("progress", {}).get("step") == 5)
    r.progress({"step": 6, "totalSteps": 50, "percent": 12.0, "loss": 1.9, "evalLoss": 2.1, "updatedAt": "2026-01-01T00:00:01Z"})
    r.event({"event": "checkpoint", "step": 6, "uri": "s3://out/run/checkpoints/step-000006", "time": "2026-01-01T00:00:02Z"})
    r.event({"event": "resumed", "step": 6, "uri": "s3://out/run/checkpoints/step-000006"})
    r.event({"event": "phase", "phase": "Exporting"})
    r.event({"event": "exported", "adapterUri": "s3://out/run/final/adapter", "mergedUri": None,
             "summaryUri": "s3://out/run/final/summary.json", "reportUri": "s3://out/run/final/report.html",
             "metrics": {"evalLoss": 1.8, "perplexity": 6.05}})
    r.progress({"step": 7, "loss": 1.8})
    r.close()
    st = status(cluster, name)
    assert st["phase"] == "Exporting" and st["restarts"] == 1  # the operator's fields are untouched
    assert st["progress"] == {"step": 7, "totalSteps": 50, "percent": 12.0, "loss": 1.8, "evalLoss": 2.1, "updatedAt": "2026-01-01T00:00:01Z"}
    assert st["lastCheckpoint"] == {"step": 6, "uri": "s3://out/run/checkpoints/step-000006", "time": "2026-01-01T00:00:02Z"}
    assert st["output"] == {"adapterUri": "s3://out/run/final/adapter", "summaryUri": "s3://out/run/final/summary.json",
                            "reportUri": "s3://out/run/final/report.html", "metrics": {"evalLoss": 1.8, "perplexity": 6.05}}
    calls = [c for c in cluster.calls if c.user_agent == "kubetune-trainer"]
    # Exactly what the job's Role allows: patch finetunejobs/status of this one job.
    assert calls and {c.key for c in calls} == {("patch", "kubetune.io", "finetunejobs", "status", NS, name)}
    assert cluster.get("FineTuneJob", NS, name)["spec"] == job_manifest(name, NS)["spec"]


def test_progress_is_rate_limited_and_the_latest_record_wins(cluster, tmp_path):
    name = "throttled"
    make_job(cluster, name)
    r = reporter(cluster, name, tmp_path, interval=30.0)
    r.progress({"step": 1, "totalSteps": 100})
    wait_for(lambda: r.sent == 1 and status(cluster, name).get("progress", {}).get("step") == 1)
    for step in range(2, 101):
        r.progress({"step": step, "totalSteps": 100})
    time.sleep(0.3)
    sent_before_close = r.sent
    r.close()
    assert sent_before_close == 1  # the first record at once, the rest wait for the interval
    assert r.sent == 2 and status(cluster, name)["progress"]["step"] == 100  # close() flushes the latest


def test_api_errors_never_reach_training(tmp_path):
    (tmp_path / "token").write_text("t")
    r = k8s_status.KubernetesStatusReporter("http://127.0.0.1:9", "ns", "gone", token_file=str(tmp_path / "token"), min_interval=0.0, timeout=0.5)
    t0 = time.monotonic()
    for step in range(50):
        r.progress({"step": step})
    r.event({"event": "checkpoint", "step": 1, "uri": "s3://x"})
    assert time.monotonic() - t0 < 0.5  # never blocks the training loop
    t0 = time.monotonic()
    r.close(timeout=0.5)  # the API is down: close() gives up instead of holding the process
    assert time.monotonic() - t0 < 1.0 and r.sent == 0


def test_missing_configuration_is_reported_clearly():
    import pytest

    with pytest.raises(RuntimeError, match="KUBETUNE_JOB_NAME"):
        k8s_status.reporter_from_env({})
    with pytest.raises(RuntimeError, match="KUBERNETES_SERVICE_HOST"):
        k8s_status.reporter_from_env({"KUBETUNE_JOB_NAME": "a", "KUBETUNE_JOB_NAMESPACE": "b"})
