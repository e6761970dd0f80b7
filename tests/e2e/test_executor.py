"""The test executor itself (tiny Python "pods", no trainer): it must play kubelet and Job
controller faithfully, or the end-to-end tests would prove less than they claim."""
from __future__ import annotations

import base64
import json

import pytest
from executor import PodExecutor, _expand, _ranges

NS = "exec"


def test_kubernetes_variable_expansion_and_completed_indexes():
    env = {"A": "x", "JOB_COMPLETION_INDEX": "1"}
    assert _expand("--node-rank=$(JOB_COMPLETION_INDEX)", env) == "--node-rank=1"
    assert _expand("$(A)-$(B)", env) == "x-$(B)"  # undefined stays, as in Kubernetes
    assert _expand("$$(A)", env) == "$(A)"  # escaped
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


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

    with EmulatedCluster(semantics=Semantics(job_controller=False)) as cluster:  # the executor under test is the Job controller
        cluster.ensure_namespace(NS)
        cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": NS}, "data": {"conf.txt": "hello"}})
        cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": NS},
                        "data": {"KEY": base64.b64encode(b"s3cr3t").decode()}})
        with PodExecutor(cluster.url, tmp_path_factory.mktemp("pods"), bin_dir=None, interval=0.05,
                         token=cluster.control_plane_token) as ex:
            yield cluster, ex, wait_for


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
    term = pod_objs[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    assert pod_objs[0]["metadata"]["ownerReferences"][0]["name"] == "ok"


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
    wait_for(lambda: "Suspended" in _job_status(cluster, "sleepy")[0], timeout=30, message="Suspended")
    assert all(p.poll() is not None for p in procs)  # SIGTERM ended them
    # The Job controller deletes the pods and reports Suspended at once; each Pod object goes when its
    # job-tracking finalizer is released, an instant later (as on a real cluster).
    wait_for(lambda: not cluster.list("Pod", NS, label_selector="job-name=sleepy"), timeout=10, message="pods deleted on suspend")
    cluster.patch("Job", NS, "sleepy", {"spec": {"suspend": False}})
    wait_for(lambda: len(ex.running_pods("sleepy")) == 2, timeout=30, message="pods again after resume")
    again = list(ex.running_pods("sleepy"))
    cluster.delete("Job", NS, "sleepy")
    wait_for(lambda: all(p.poll() is not None for p in again), timeout=30, message="processes gone after Job deletion")
    wait_for(lambda: not cluster.list("Pod", NS, label_selector="job-name=sleepy"), timeout=10, message="pods deleted with their Job")
