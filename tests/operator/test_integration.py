"""The real operator (Kopf, in a thread) against the emulated API: what it creates and how it reacts.

The tests play the Job controller and the kubelet (support/kubelet.py) and run
the trainer's progress reporter (posting to the operator's report endpoint with
rank 0's projected token), and watch what the operator does through the API only.
"""
import time

import kubernetes_validate
import pytest

from kubetune_operator import builders
from kubetune_trainer import k8s_status
from support import kubelet
from support.cluster import ApiError, reporting_settings, wait_for
from support.manifests import job_manifest

NS = "ops"


@pytest.fixture(scope="module")
def operator(cluster):
    for ns in (NS, "scale"):
        cluster.ensure_namespace(ns)
    settings = reporting_settings()
    with cluster.operator(settings, namespaces=(NS, "scale")) as op:
        op.settings = settings
        yield op


def rank0_reporter(cluster, operator, name, pod, tmp_path):
    """The trainer's reporter as rank 0 runs it: its projected token (audience kubetune.io/report, bound to the pod)."""
    token = tmp_path / f"{pod['metadata']['name']}.token"
    token.write_text(cluster.service_account_token(NS, "default", (builders.REPORT_AUDIENCE,), pod=pod["metadata"]["name"]))
    return k8s_status.KubernetesStatusReporter(operator.settings.report_url, NS, name, token_file=str(token),
                                               ca_file=operator.settings.report_ca, attempt=1, min_interval=0.0)


def ftj(cluster, name, ns=NS):
    return cluster.get("FineTuneJob", ns, name)


def status(cluster, name, ns=NS):
    return (ftj(cluster, name, ns) or {}).get("status") or {}


def wait_phase(cluster, name, phase, reason=None, ns=NS, timeout=10):
    def ok():
        s = status(cluster, name, ns)
        return s if s.get("phase") == phase and (reason is None or s.get("reason") == reason) else None
    return wait_for(ok, timeout, message=f"{name} -> {phase}/{reason} (now {status(cluster, name, ns).get('phase')}/{status(cluster, name, ns).get('reason')})")


def condition(st, ctype):
    return next((c for c in st.get("conditions", []) if c["type"] == ctype), None)


def events(cluster, name, ns=NS):
    return [(e["type"], e["reason"]) for e in cluster.events(ns, name)]


def wait_events(cluster, name, *expected, ns=NS):
    """Events are posted asynchronously (Kopf's poster): wait until all expected ones are there."""
    return wait_for(lambda: (lambda evs: evs if all(e in evs for e in expected) else None)(events(cluster, name, ns)),
                    message=f"events {expected} of {name} (have {events(cluster, name, ns)})")


def start(cluster, name, ns=NS, **spec):
    """Create a job and wait for its first attempt's Job; -> (Job, pods)."""
    cluster.create(job_manifest(name, ns, **spec))
    job = wait_for(lambda: cluster.get("Job", ns, f"{name}-a1"), message=f"Job {name}-a1")
    return job


def running(cluster, name, ns=NS, attempt=1):
    job = wait_for(lambda: cluster.get("Job", ns, f"{name}-a{attempt}"), message=f"Job {name}-a{attempt}")
    pods = kubelet.create_pods(cluster, job)
    pods = [kubelet.run(cluster, p) for p in pods]
    wait_phase(cluster, name, "Running", ns=ns)
    return job, pods


# --------------------------------------------------------------- objects
def test_creates_exactly_the_job_objects_with_correct_fields(cluster, operator):
    name = "objects"
    manifest = job_manifest(name, NS, queueName="gpu-queue", nodeSelector={"pool": "h100"},
                            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                            priorityClassName="high", schedulerName="default-scheduler")
    cluster.create(manifest)
    job = wait_for(lambda: cluster.get("Job", NS, f"{name}-a1"))
    wait_phase(cluster, name, "Queued", "WaitingForAdmission")
    owner = ftj(cluster, name)
    uid = owner["metadata"]["uid"]

    # Exactly these objects carry the job's label, all owned by the FineTuneJob.
    found = {}
    for kind in ("ConfigMap", "Service", "ServiceAccount", "Role", "RoleBinding", "Job", "Pod", "Secret"):
        for o in cluster.list(kind, NS, label_selector=f"kubetune.io/job={name}"):
            found[(kind, o["metadata"]["name"])] = o
    # No ServiceAccount, Role or RoleBinding: trainer pods get no API permission.
    assert set(found) == {("ConfigMap", f"{name}-config"), ("Service", name), ("Job", f"{name}-a1")}
    for o in found.values():
        refs = o["metadata"]["ownerReferences"]
        assert refs == [{"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "name": name, "uid": uid,
                         "controller": True, "blockOwnerDeletion": True}]

    # Kueue: label on the Job, created suspended; gang semantics left to the operator.
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    js = job["spec"]
    assert js["suspend"] is True and js["completionMode"] == "Indexed"
    assert js["completions"] == js["parallelism"] == 2 and js["backoffLimit"] == 0
    assert js["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [3]

    pod = js["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["python", "-m", "kubetune_trainer.torchrun"]
    assert "--nnodes=2" in c["args"] and "--nproc-per-node=8" in c["args"]
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in c["args"]
    assert f"--master-addr={name}-a1-0.{name}" in c["args"]  # rank 0's pod via the headless Service
    assert pod["subdomain"] == name and found[("Service", name)]["spec"]["clusterIP"] == "None"
    assert found[("Service", name)]["spec"]["publishNotReadyAddresses"] is True
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8" and c["resources"]["requests"]["nvidia.com/gpu"] == "8"
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID", "optional": False}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    assert env["KUBETUNE_REPORTER"]["value"] == "kubernetes" and env["KUBETUNE_JOB_NAME"]["value"] == name
    assert env["KUBETUNE_REPORT_URL"]["value"] == operator.settings.report_url
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in vols[mounts["/scratch"]]
    assert vols[mounts["/etc/kubetune"]]["configMap"]["name"] == f"{name}-config"
    # Restricted pod security: non-root, no escalation, no capabilities, RuntimeDefault seccomp, no auto token.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    assert vols[mounts["/var/run/secrets/kubetune.io/report"]]["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "kubetune.io/report"
    assert pod["nodeSelector"] == {"pool": "h100"} and pod["priorityClassName"] == "high"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["schedulerName"] == "default-scheduler"
    cm = builders.manifest_from_config_map(found[("ConfigMap", f"{name}-config")])
    # The resolved config: defaults filled in, operator defaults applied.
    assert cm["spec"]["distributed"]["processesPerNode"] == 8 and cm["spec"]["training"]["learningRate"] == 2e-4
    assert cm["spec"]["method"]["type"] == "lora" and cm["spec"]["image"] == builders.OperatorSettings().trainer_image
    assert cm["metadata"] == {"name": name, "namespace": NS} and "status" not in cm

    # What the API server stored passes kubernetes-validate --strict, as created (server fields removed).
    for o in found.values():
        o = {k: v for k, v in o.items() if k != "status"}
        o["metadata"] = {k: v for k, v in o["metadata"].items() if k not in ("uid", "resourceVersion", "creationTimestamp", "generation")}
        kubernetes_validate.validate(o, "1.33", strict=True)

    # The operator writes the FineTuneJob's status only: no finalizer (issue 11), never spec, labels or annotations.
    mine = [c for c in cluster.operator_calls() if c.resource == "finetunejobs" and c.name == name and c.verb == "patch"]
    assert {c.subresource for c in mine} == {"status"}
    assert not ftj(cluster, name)["metadata"].get("finalizers")
    history = cluster.emulator.objects["kubetune.io/v1alpha1/finetunejobs", NS, name].history
    stored = [version for version in history if version is not None]
    for version in stored:  # as the API server stored it at create (defaulted, on a faithful cluster), never changed
        assert dict(version["spec"]) == dict(stored[0]["spec"])
        assert "annotations" not in version["metadata"] and "labels" not in version["metadata"]
    assert manifest["spec"].keys() <= dict(stored[0]["spec"]).keys()
    assert not owner["metadata"].get("finalizers")


# ---------------------------------------------------------------- phases
def test_phase_machine_through_queue_admission_preemption_and_success(cluster, operator, tmp_path):
    name = "lifecycle"
    cluster.create(job_manifest(name, NS, queueName="gpu-queue"))
    wait_phase(cluster, name, "Queued", "WaitingForAdmission")
    job = cluster.get("Job", NS, f"{name}-a1")

    # Kueue admits the workload: it unsuspends the Job.
    cluster.patch("Job", NS, job["metadata"]["name"], {"spec": {"suspend": False}})
    wait_phase(cluster, name, "Initializing", "PodsStarting")
    assert status(cluster, name)["startTime"]
    pods = kubelet.create_pods(cluster, job)
    kubelet.unschedulable(cluster, pods[0])
    st = wait_phase(cluster, name, "Initializing", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in st["message"]
    kubelet.image_pull_error(cluster, pods[0])
    st = wait_phase(cluster, name, "Initializing", "ImagePullFailed")
    assert "ImagePullBackOff" in st["message"]
    pods = [kubelet.run(cluster, p) for p in pods]
    wait_phase(cluster, name, "Running", "PodsRunning")

    # Rank 0's reporter (the trainer's own code) says it trains and how far it got.
    reporter = rank0_reporter(cluster, operator, name, pods[0], tmp_path)
    reporter.event({"event": "phase", "phase": "Running"})
    reporter.progress({"step": 10, "totalSteps": 100, "percent": 10.0, "loss": 2.5, "updatedAt": "2026-01-01T00:00:00Z"})
    wait_phase(cluster, name, "Running", "TrainingStarted")
    reporter.close()

    # Kueue preempts: it suspends the Job; the Job controller deletes the pods.
    cluster.patch("Job", NS, job["metadata"]["name"], {"spec": {"suspend": True}})
    kubelet.suspend_pods(cluster, job)
    st = wait_phase(cluster, name, "Queued", "Preempted")
    assert condition(st, "Running")["status"] == "False"
    cluster.patch("Job", NS, job["metadata"]["name"], {"spec": {"suspend": False}})
    wait_phase(cluster, name, "Initializing")
    pods = [kubelet.run(cluster, p) for p in kubelet.create_pods(cluster, job)]
    wait_phase(cluster, name, "Running")

    reporter = rank0_reporter(cluster, operator, name, pods[0], tmp_path)  # the new rank 0's own token
    reporter.event({"event": "phase", "phase": "Exporting"})
    wait_phase(cluster, name, "Exporting", "Exporting")
    reporter.event({"event": "exported", "adapterUri": "s3://out/run/final/adapter", "metrics": {"evalLoss": 1.5}})
    reporter.close()
    kubelet.complete_job(cluster, cluster.get("Job", NS, job["metadata"]["name"]), pods)
    st = wait_phase(cluster, name, "Succeeded", "Completed")

    assert st["completionTime"] and st["observedGeneration"] == 1 and st["restarts"] == 0
    assert st["progress"]["step"] == 10 and st["output"]["adapterUri"].endswith("final/adapter")  # the trainer's fields survive
    true = {c["type"] for c in st["conditions"] if c["status"] == "True"}
    assert true == {"Succeeded"}
    # No Pending: the Job was created at once, and the first status write said Queued.
    assert {"Queued", "Initializing", "Running", "Exporting", "Succeeded"} <= {c["type"] for c in st["conditions"]}
    wait_events(cluster, name, *[("Normal", "WaitingForAdmission"), ("Normal", "PodsStarting"), ("Warning", "Unschedulable"),
                     ("Warning", "ImagePullFailed"), ("Normal", "PodsRunning"), ("Normal", "TrainingStarted"), ("Warning", "Preempted"),
                     ("Normal", "Exporting"), ("Normal", "Completed")])


def test_oom_killed_pod_restarts_the_gang_with_backoff_then_backoff_limit(cluster, operator):
    name = "oom"
    start(cluster, name, runPolicy={"maxRestarts": 1, "backoffSeconds": 1})
    job, pods = running(cluster, name)
    kubelet.terminate(cluster, pods[1], 137, reason="OOMKilled")
    st = wait_phase(cluster, name, "Restarting", "OOMKilled")
    failed_at = time.monotonic()
    assert st["restarts"] == 1 and st["attempt"] == 2
    assert "OOMKilled" not in st["message"] or "memory limit" in st["message"]
    wait_events(cluster, name, ("Warning", "OOMKilled"))
    # The failed attempt's Job is deleted (its pods with it, gracefully: the running one stops within its grace
    # period); the next attempt waits for the backoff and for every pod of the first to be gone (one gang at a time).
    wait_for(lambda: cluster.get("Job", NS, f"{name}-a1") is None, message="attempt 1 deleted")
    wait_for(lambda: cluster.get("Job", NS, f"{name}-a2"), timeout=10)
    assert not cluster.list("Pod", NS, label_selector=f"kubetune.io/job={name},kubetune.io/attempt=1")
    assert time.monotonic() - failed_at >= 0.9  # backoffSeconds: 1

    job2, pods2 = running(cluster, name, attempt=2)
    assert "--master-addr=oom-a2-0.oom" in job2["spec"]["template"]["spec"]["containers"][0]["args"]
    kubelet.terminate(cluster, pods2[0], 1, message="RuntimeError: NCCL watchdog timeout")
    st = wait_phase(cluster, name, "Failed", "BackoffLimitExceeded")
    assert st["restarts"] == 1 and "last failure: PodFailed" in st["message"] and "NCCL watchdog" in st["message"]
    assert st["completionTime"]
    time.sleep(0.3)
    assert cluster.get("Job", NS, f"{name}-a3") is None


def test_permanent_exit_code_fails_at_once_with_the_trainers_reason(cluster, operator):
    name = "permanent"
    start(cluster, name)
    job, pods = running(cluster, name)
    kubelet.terminate(cluster, pods[0], 3, message="loading data\nkubetune: error: DatasetNotFound: s3://data/train.jsonl does not exist")
    st = wait_phase(cluster, name, "Failed", "DatasetNotFound")
    assert "s3://data/train.jsonl does not exist" in st["message"] and st["restarts"] == 0
    wait_events(cluster, name, ("Warning", "DatasetNotFound"))

    def gang_stopped() -> bool:
        # The operator deletes the attempt's Job; or the Job controller failed the Job first (podFailurePolicy
        # FailJob on exit 3), stops its pods itself, and the operator keeps the finished Job (CI saw both orders).
        job = cluster.get("Job", NS, f"{name}-a1")
        if job is not None and not any(c.get("type") == "Failed" and c.get("status") == "True"
                                       for c in (job.get("status") or {}).get("conditions") or []):
            return False
        pods = cluster.list("Pod", NS, label_selector=f"kubetune.io/job={name}")
        return all((p.get("status") or {}).get("phase") in ("Succeeded", "Failed") or p["metadata"].get("deletionTimestamp")
                   for p in pods)

    wait_for(gang_stopped, message="the failed gang is stopped")
    time.sleep(0.3)
    assert cluster.get("Job", NS, f"{name}-a2") is None


def test_preempted_exit_code_restarts_without_counting(cluster, operator):
    name = "preempted"
    start(cluster, name, runPolicy={"maxRestarts": 0, "backoffSeconds": 0})
    job, pods = running(cluster, name)
    kubelet.terminate(cluster, pods[0], 75)  # SIGTERM (spot reclaim) -> checkpoint -> exit 75
    wait_for(lambda: cluster.get("Job", NS, f"{name}-a2"), message="attempt 2")
    st = status(cluster, name)
    assert st["restarts"] == 0 and st["attempt"] == 2
    wait_events(cluster, name, ("Warning", "Preempted"))
    running(cluster, name, attempt=2)


def test_suspend_and_resume(cluster, operator):
    name = "suspend"
    start(cluster, name)
    job, pods = running(cluster, name)
    cluster.patch("FineTuneJob", NS, name, {"spec": {"suspend": True}})
    st = wait_phase(cluster, name, "Suspended", "Suspended")
    # The operator writes the decision to status first, then patches the Job.
    wait_for(lambda: cluster.get("Job", NS, f"{name}-a1")["spec"]["suspend"] is True, message="Job suspended")
    kubelet.suspend_pods(cluster, job)  # the Job controller deletes the pods (SIGTERM -> checkpoint)
    time.sleep(0.2)
    assert status(cluster, name)["phase"] == "Suspended"
    assert condition(status(cluster, name), "Suspended")["status"] == "True"

    cluster.patch("FineTuneJob", NS, name, {"spec": {"suspend": False}})
    wait_for(lambda: cluster.get("Job", NS, f"{name}-a1")["spec"]["suspend"] is False, message="Job resumed")
    wait_phase(cluster, name, "Initializing")
    job, pods = running(cluster, name)  # the same attempt: resumed, not restarted
    st = status(cluster, name)
    assert st["attempt"] == 1 and st["restarts"] == 0 and condition(st, "Suspended")["status"] == "False"
    wait_events(cluster, name, ("Normal", "Suspended"), ("Normal", "Resuming"))


def test_deletion_removes_everything_it_created(cluster, operator):
    name = "delete-me"
    start(cluster, name)
    running(cluster, name)
    labelled = f"kubetune.io/job={name}"
    kinds = ("ConfigMap", "Service", "Job", "Pod")
    assert sum(len(cluster.list(k, NS, label_selector=labelled)) for k in kinds) == 5  # 3 objects + 2 pods
    cluster.delete("FineTuneJob", NS, name)
    wait_for(lambda: ftj(cluster, name) is None, message="finalizer released")
    # The emulator's garbage collector follows ownerReferences as the real one does.
    wait_for(lambda: not any(cluster.list(k, NS, label_selector=labelled) for k in kinds), message="all owned objects gone")


def test_spec_change_while_running_is_surfaced_not_applied(cluster, operator):
    name = "immutable"
    start(cluster, name)
    running(cluster, name)
    change = {"spec": {"training": {"maxSteps": 500}, "runPolicy": {"maxRestarts": 5, "backoffSeconds": 0}}}
    if cluster.semantics.validate_custom_resources:  # the CRD's transition rule refuses it at admission
        with pytest.raises(ApiError) as refused:
            cluster.patch("FineTuneJob", NS, name, change)
        assert refused.value.status == 422 and "spec.training is immutable once created" in refused.value.body["message"]
    with cluster.admission_off():  # a cluster that did not enforce it (the CRD of an older release): the operator does
        cluster.patch("FineTuneJob", NS, name, change)
    def ignored():
        c = condition(status(cluster, name), "SpecChangeIgnored")
        return c if c and c["status"] == "True" else None
    c = wait_for(ignored, message="SpecChangeIgnored")
    assert c["message"].startswith("spec.training changed after the job started")  # runPolicy may change
    st = status(cluster, name)
    assert st["phase"] == "Running" and st["observedGeneration"] == 2 and st["attempt"] == 1
    wait_events(cluster, name, ("Warning", "SpecChangeIgnored"))
    assert cluster.get("Job", NS, f"{name}-a2") is None
    # A restart after the change still runs the spec the job started with.
    pods = cluster.list("Pod", NS, label_selector=f"kubetune.io/job={name}")
    kubelet.terminate(cluster, pods[0], 1)
    job2 = wait_for(lambda: cluster.get("Job", NS, f"{name}-a2"), message="attempt 2")
    cm = builders.manifest_from_config_map(cluster.get("ConfigMap", NS, f"{name}-config"))
    assert cm["spec"]["training"]["maxSteps"] == 100
    recorded = cluster.get("ConfigMap", NS, f"{name}-config")["metadata"]["annotations"][builders.ANNOTATION_SPEC_HASHES]
    assert job2["metadata"]["annotations"][builders.ANNOTATION_SPEC_HASHES] == recorded


def test_invalid_spec_fails_with_invalid_spec_and_creates_nothing(cluster, operator):
    name = "invalid"
    manifest = job_manifest(name, NS, training={"maxSteps": 10, "globalBatchSize": 10})  # 10 % (1 x 16 ranks) != 0
    if cluster.semantics.validate_custom_resources:  # refused at admission, with the same message
        with pytest.raises(ApiError) as refused:
            cluster.create(manifest)
        assert refused.value.status == 422 and "must be divisible" in refused.value.body["message"]
    with cluster.admission_off():  # stored under a CRD without the rule: the operator's own check fails it
        cluster.create(manifest)
    st = wait_phase(cluster, name, "Failed", "InvalidSpec")
    assert "globalBatchSize" in st["message"] and "divisible" in st["message"]
    assert not cluster.list("Job", NS, label_selector=f"kubetune.io/job={name}")
    wait_events(cluster, name, ("Warning", "InvalidSpec"))


def test_active_deadline_and_ttl_after_finished(cluster, operator):
    name = "deadline"
    start(cluster, name, runPolicy={"activeDeadlineSeconds": 1, "ttlSecondsAfterFinished": 1})
    running(cluster, name)
    st = wait_phase(cluster, name, "Failed", "DeadlineExceeded", timeout=5)
    assert "activeDeadlineSeconds" in st["message"]
    wait_for(lambda: cluster.get("Job", NS, f"{name}-a1") is None, message="job stopped at the deadline")
    wait_for(lambda: ftj(cluster, name) is None, timeout=5, message="deleted after ttlSecondsAfterFinished")
