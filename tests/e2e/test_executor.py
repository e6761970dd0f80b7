"""The test executor itself (tiny Python "pods", no trainer): it must play the kubelet faithfully
(the emulator's Job controller makes and accounts the pods), or the end-to-end tests would prove less
than they claim."""
from __future__ import annotations

import base64
import json

import pytest
from executor import PodExecutor, _expand

NS = "exec"


def test_kubernetes_variable_expansion():
    env = {"A": "x", "JOB_COMPLETION_INDEX": "1"}
    assert _expand("--node-rank=$(JOB_COMPLETION_INDEX)", env) == "--node-rank=1"
    assert _expand("$(A)-$(B)", env) == "x-$(B)"  # undefined stays, as in Kubernetes
    assert _expand("$$(A)", env) == "$(A)"  # escaped


def _job(name: str, script: str, completions: int = 2, **spec) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS},
        "spec": {
            "completionMode": "Indexed", "completions": completions, "parallelism": completions, "backoffLimit": 0,
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}}]},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "restartPolicy": "Never", "subdomain": "svc", "terminationGracePeriodSeconds": 5,
                "containers": [{
                    "name": "main", "image": "ignored", "command": ["python", "-c", script],
                    "args": ["--rank=$(JOB_COMPLETION_INDEX)", f"--addr={name}-0.svc.{NS}.svc.cluster.local", "--port=29500",
                             "/etc/cfg/conf.txt"],
                    "ports": [{"containerPort": 29500}],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "env": [
                        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "IDX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
                        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "KEY"}}},
                        {"name": "MISSING", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "NOPE", "optional": True}}},
                        {"name": "DATA", "value": "/data/x"},
                    ],
                    "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "scratch", "mountPath": "/data"}],
                }],
                "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "scratch", "emptyDir": {}}],
            }},
            **spec,
        },
    }


REPORT = """
import json, os, sys
args = sys.argv[1:]
cfg = open(args[3]).read()
out = {"args": args, "cfg": cfg, "env": {k: os.environ.get(k) for k in
       ("POD_NS", "IDX", "KEY", "MISSING", "DATA", "JOB_COMPLETION_INDEX", "KUBETUNE_API_SERVER")}}
open(os.path.join(os.environ["DATA"].rsplit("/", 1)[0], "report.json"), "w").write(json.dumps(out))
print("kubetune: error: InvalidSpec: index 1 refuses" if os.environ["IDX"] == "1" and "{fail}" == "yes" else "ok")
sys.exit(3 if os.environ["IDX"] == "1" and "{fail}" == "yes" else 0)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from support.cluster import EmulatedCluster, wait_for
    from support.emulator import Semantics

    # Faithful, whatever KUBETUNE_TEST_SEMANTICS says: the emulator's Job controller makes the pods the executor
    # (a kubelet) runs, and deletes them gracefully.
    with EmulatedCluster(semantics=Semantics()) as cluster:
        cluster.ensure_namespace(NS)
        cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": NS}, "data": {"conf.txt": "hello"}})
        cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": NS},
                        "data": {"KEY": base64.b64encode(b"s3cr3t").decode()}})
        with PodExecutor(cluster, tmp_path_factory.mktemp("pods"), bin_dir=None, interval=0.05) as ex:
            yield cluster, ex, wait_for
        assert not ex.errors, ex.errors[-5:]


def _job_status(cluster, name):
    job = cluster.get("Job", NS, name)
    return {c["type"]: c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}, job.get("status") or {}


def test_pods_run_from_the_template_and_the_job_completes(setup):
    cluster, ex, wait_for = setup
    cluster.create(_job("ok", REPORT.replace("{fail}", "no")))
    wait_for(lambda: "Complete" in _job_status(cluster, "ok")[0], timeout=60, message="Job ok Complete")
    conds, status = _job_status(cluster, "ok")
    assert "SuccessCriteriaMet" in conds and status["succeeded"] == 2 and status["completedIndexes"] == "0-1"

    pods = sorted((p for p in ex.pods if p.job_key == (NS, "ok")), key=lambda p: p.index)
    reports = [json.loads((p.workdir / "volumes" / "scratch" / "report.json").read_text()) for p in pods]
    local_port = pods[0].argv[-2].split("=")[1]
    for index, rep in enumerate(reports):
        args = rep["args"]
        assert args[0] == f"--rank={index}"
        assert args[1] == "--addr=127.0.0.1"  # the rendezvous DNS name of pod 0
        assert args[2] == f"--port={local_port}" and local_port != "29500"  # one free port per Job
        assert rep["cfg"] == "hello"  # the ConfigMap mounted as a real file, its path rewritten
        env = rep["env"]
        assert env["POD_NS"] == NS and env["IDX"] == env["JOB_COMPLETION_INDEX"] == str(index)
        assert env["KEY"] == "s3cr3t" and env["MISSING"] is None
        assert env["DATA"] == str(pods[index].workdir / "volumes" / "scratch" / "x")
        assert env["KUBETUNE_API_SERVER"] == cluster.url
    pod_objs = cluster.list("Pod", NS, label_selector="job-name=ok")
    assert sorted(p["status"]["phase"] for p in pod_objs) == ["Succeeded", "Succeeded"]
    assert sorted(p["metadata"]["name"] for p in pod_objs) == sorted(p.name for p in pods)  # the Job controller's pods
    container = pod_objs[0]["status"]["containerStatuses"][0]
    term = container["state"]["terminated"]
    assert container["name"] == "main" and term["exitCode"] == 0 and term["reason"] == "Completed" and term["startedAt"]
    conds = {c["type"]: c for c in pod_objs[0]["status"]["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "PodCompleted" and conds["PodScheduled"]["status"] == "True"
    assert pod_objs[0]["metadata"]["ownerReferences"][0]["name"] == "ok"
    assert not pod_objs[0]["metadata"].get("finalizers")  # accounted: the Job controller released job-tracking


def test_exit_code_3_fails_the_job_by_pod_failure_policy_with_the_log_as_message(setup):
    cluster, ex, wait_for = setup
    cluster.create(_job("perm", REPORT.replace("{fail}", "yes")))
    wait_for(lambda: "Failed" in _job_status(cluster, "perm")[0], timeout=60, message="Job perm Failed")
    conds, _ = _job_status(cluster, "perm")
    assert conds["Failed"]["reason"] == "PodFailurePolicy" and "exit code 3" in conds["Failed"]["message"]
    failed = [p for p in cluster.list("Pod", NS, label_selector="job-name=perm") if p["status"]["phase"] == "Failed"]
    term = failed[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and "kubetune: error: InvalidSpec: index 1 refuses" in term["message"]


def test_suspend_and_delete_stop_the_processes(setup):
    cluster, ex, wait_for = setup
    sleeper = "import time, sys\nwhile True: time.sleep(0.1)"
    cluster.create(_job("sleepy", sleeper, completions=2))
    wait_for(lambda: len(ex.running_pods("sleepy")) == 2, timeout=30, message="2 running pods")
    procs = list(ex.running_pods("sleepy"))
    cluster.patch("Job", NS, "sleepy", {"spec": {"suspend": True}})
    # The Job controller deletes the pods (gracefully: they run) and reports Suspended at once; the kubelet
    # SIGTERMs them, reports them terminated, and then each Pod object goes (its job-tracking finalizer released).
    wait_for(lambda: "Suspended" in _job_status(cluster, "sleepy")[0], timeout=30, message="Suspended")
    wait_for(lambda: all(p.poll() is not None for p in procs), timeout=10, message="SIGTERM ended the processes")
    assert sorted(p.exit_code for p in procs) == [143, 143]
    wait_for(lambda: not cluster.list("Pod", NS, label_selector="job-name=sleepy"), timeout=10, message="pods deleted on suspend")
    cluster.patch("Job", NS, "sleepy", {"spec": {"suspend": False}})
    wait_for(lambda: len(ex.running_pods("sleepy")) == 2, timeout=30, message="pods again after resume")
    again = list(ex.running_pods("sleepy"))
    cluster.delete("Job", NS, "sleepy")
    wait_for(lambda: all(p.poll() is not None for p in again), timeout=30, message="processes gone after Job deletion")
    wait_for(lambda: not cluster.list("Pod", NS, label_selector="job-name=sleepy"), timeout=10, message="pods deleted with their Job")


def _last_version(cluster, pod_name: str) -> dict:
    """The Pod object as it was last stored (also when it is gone now)."""
    versions = [v.raw for key, obj in list(cluster.emulator.objects.items()) if key[2] == pod_name for v in obj.history if v is not None]
    return versions[-1]


CHECKPOINT_ON_SIGTERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
while True: time.sleep(0.05)
"""
STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(0.05)"


def test_an_evicted_pod_gets_sigterm_and_its_exit_code_is_reported_with_disruption_target(setup):
    cluster, ex, wait_for = setup
    cluster.create(_job("evictee", CHECKPOINT_ON_SIGTERM, completions=1))
    cluster.create(_job("stubborn", STUBBORN, completions=1))
    wait_for(lambda: len(ex.running_pods("evictee")) == 1 and len(ex.running_pods("stubborn")) == 1, timeout=30, message="running")
    (evictee,), (stubborn,) = ex.running_pods("evictee"), ex.running_pods("stubborn")
    cluster.evict(NS, evictee.name)  # DisruptionTarget, then a graceful delete (the pod's 5 s)
    cluster.evict(NS, stubborn.name, grace_seconds=1)
    wait_for(lambda: evictee.poll() is not None and stubborn.poll() is not None, timeout=10, message="both processes ended")
    assert evictee.exit_code == 75  # it exited on SIGTERM, within its grace period
    assert stubborn.exit_code == 137  # SIGKILL once its 1 s were over
    wait_for(lambda: cluster.get("Pod", NS, evictee.name) is None and cluster.get("Pod", NS, stubborn.name) is None,
             timeout=10, message="the evicted pods gone once terminated and accounted")
    last = _last_version(cluster, evictee.name)
    term = last["status"]["containerStatuses"][0]["state"]["terminated"]
    conds = {c["type"]: c for c in last["status"]["conditions"]}
    assert last["status"]["phase"] == "Failed" and term["exitCode"] == 75, last["status"]
    assert conds["DisruptionTarget"]["status"] == "True" and conds["DisruptionTarget"]["reason"] == "EvictionByEvictionAPI"
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "PodFailed"
    assert _last_version(cluster, stubborn.name)["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137


def test_a_missing_secret_key_leaves_the_pod_pending_until_it_exists(setup):
    cluster, ex, wait_for = setup
    job = _job("config", REPORT.replace("{fail}", "no"), completions=1)
    job["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "LATE", "valueFrom": {"secretKeyRef": {"name": "late", "key": "LATE"}}})
    cluster.create(job)

    def waiting():
        pods = cluster.list("Pod", NS, label_selector="job-name=config")
        states = [cs["state"].get("waiting") for p in pods for cs in (p.get("status") or {}).get("containerStatuses") or []]
        return states[0] if states and states[0] else None
    state = wait_for(waiting, timeout=30, message="CreateContainerConfigError")
    assert state["reason"] == "CreateContainerConfigError" and 'secret "late" not found' in state["message"]
    assert not ex.running_pods("config")
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late", "namespace": NS},
                    "data": {"LATE": base64.b64encode(b"now").decode()}})
    wait_for(lambda: "Complete" in _job_status(cluster, "config")[0], timeout=30, message="Job config Complete once the secret exists")
