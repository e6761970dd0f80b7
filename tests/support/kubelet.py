"""Play the Job controller, the scheduler and the kubelet against the emulated cluster.

The emulator runs no controllers. These helpers change objects the way those
controllers would, through the API, so the operator sees ordinary watch
events: pods of an Indexed Job appear (named, labelled and owned as the Job
controller makes them), get scheduled or not, run, and terminate with an exit
code, a reason and a termination message.
"""
from __future__ import annotations

import copy
import datetime as dt
import uuid
from typing import Any

from support.cluster import EmulatedCluster

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_pods(cluster: EmulatedCluster, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The Job controller: one pod per completion index, from the Job's template.

    With ``Semantics.job_controller`` the emulator's controller creates them: wait for them instead.
    """
    meta = job["metadata"]
    if cluster.semantics.job_controller:
        from support.cluster import wait_for

        def made() -> list[dict[str, Any]] | None:
            pods = [p for p in cluster.list("Pod", meta["namespace"], label_selector=f"batch.kubernetes.io/controller-uid={meta['uid']}")
                    if not p["metadata"].get("deletionTimestamp")]
            return pods if len(pods) >= int(job["spec"].get("completions") or 1) else None
        pods = wait_for(made, message=f"the Job controller's pods of {meta['name']}")
        return sorted(pods, key=lambda p: int(p["metadata"]["annotations"][INDEX_ANNOTATION]))
    ns = meta["namespace"]
    template = job["spec"]["template"]
    pods = []
    for index in range(int(job["spec"].get("completions") or 1)):
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels.update({"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"], INDEX_ANNOTATION: str(index)})
        spec = copy.deepcopy(template["spec"])
        spec["hostname"] = f"{meta['name']}-{index}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{meta['name']}-{index}-{uuid.uuid4().hex[:5]}",
                "namespace": ns,
                "labels": labels,
                "annotations": {INDEX_ANNOTATION: str(index)},
                "ownerReferences": [{
                    "apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                    "controller": True, "blockOwnerDeletion": True,
                }],
            },
            "spec": spec,
        }
        created = cluster.create(pod)
        pods.append(cluster.patch_status("Pod", ns, created["metadata"]["name"], {"phase": "Pending"}))
    cluster.patch_status("Job", ns, meta["name"], {"active": len(pods), "startTime": _now()})
    return pods


def _container(state: dict[str, Any], name: str = "trainer", last: dict[str, Any] | None = None) -> dict[str, Any]:
    cs = {"name": name, "image": "trainer", "imageID": "", "ready": "running" in state, "restartCount": 0, "state": state}
    if last:
        cs["lastState"] = last
    return cs


def unschedulable(cluster: EmulatedCluster, pod: dict[str, Any], message: str = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.") -> dict[str, Any]:
    return cluster.patch_status("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"], {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message, "lastTransitionTime": _now()}],
    })


def image_pull_error(cluster: EmulatedCluster, pod: dict[str, Any], reason: str = "ImagePullBackOff",
                     message: str = "Back-off pulling image") -> dict[str, Any]:
    return cluster.patch_status("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"], {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}],
        "containerStatuses": [_container({"waiting": {"reason": reason, "message": message}})],
    })


def run(cluster: EmulatedCluster, pod: dict[str, Any]) -> dict[str, Any]:
    return cluster.patch_status("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"], {
        "phase": "Running",
        "startTime": _now(),
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
        "containerStatuses": [_container({"running": {"startedAt": _now()}})],
    })


def terminate(cluster: EmulatedCluster, pod: dict[str, Any], exit_code: int, reason: str | None = None, message: str = "",
              pod_conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The kubelet: the trainer container exited; the pod is Succeeded (0) or Failed."""
    reason = reason or ("Completed" if exit_code == 0 else "Error")
    status: dict[str, Any] = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [_container({"terminated": {
            "exitCode": exit_code, "reason": reason, "message": message, "startedAt": _now(), "finishedAt": _now(),
        }})],
    }
    if pod_conditions:
        status["conditions"] = pod_conditions
    return cluster.patch_status("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"], status)


def complete_job(cluster: EmulatedCluster, job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """All indexes succeeded: pods exit 0, the Job controller marks the Job Complete.

    With ``Semantics.job_controller`` the emulator's controller writes the Job's status: this returns the Job
    once its verdict is in (``Complete``; ``Failed`` if another of its pods failed it, e.g. by a FailJob rule)."""
    if cluster.semantics.job_controller:
        from support.cluster import ApiError

        for p in pods:
            try:
                terminate(cluster, p, 0)
            except ApiError as e:  # a pod the controller deleted and released already (it failed the Job): nothing to report
                if e.status != 404:
                    raise
        return _wait_job_condition(cluster, job, "Complete", "Failed")
    for p in pods:
        terminate(cluster, p, 0)
    n = len(pods)
    return cluster.patch_status("Job", job["metadata"]["namespace"], job["metadata"]["name"], {
        "active": 0, "succeeded": n, "completedIndexes": f"0-{n - 1}" if n > 1 else "0", "completionTime": _now(),
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": _now()},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": _now()},
        ],
    })


def fail_job(cluster: EmulatedCluster, job: dict[str, Any], reason: str = "BackoffLimitExceeded",
             message: str = "Job has reached the specified backoff limit") -> dict[str, Any]:
    return cluster.patch_status("Job", job["metadata"]["namespace"], job["metadata"]["name"], {
        "active": 0, "failed": 1,
        "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": reason, "message": message, "lastTransitionTime": _now()},
            {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": _now()},
        ],
    })


def suspend_pods(cluster: EmulatedCluster, job: dict[str, Any], exit_code: int = 75) -> None:
    """The Job controller on spec.suspend=true: delete the active pods.

    With ``Semantics.job_controller`` the emulator's controller deletes them (uncounted) and sets ``Suspended``;
    this plays the kubelet then: the deleted pods' trainers got SIGTERM, checkpoint and exit (``exit_code``)."""
    ns = job["metadata"]["namespace"]
    if cluster.semantics.job_controller:
        _wait_job_condition(cluster, job, "Suspended")
        for p in cluster.list("Pod", ns, label_selector=f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}"):
            if (p.get("status") or {}).get("phase") == "Running":
                terminate(cluster, p, exit_code)
        return
    for p in cluster.list("Pod", ns, label_selector=f"job-name={job['metadata']['name']}"):
        cluster.delete("Pod", ns, p["metadata"]["name"])
    cluster.patch_status("Job", ns, job["metadata"]["name"], {
        "active": 0,
        "conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended", "lastTransitionTime": _now()}],
    })


def _terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _wait_job_condition(cluster: EmulatedCluster, job: dict[str, Any], *ctypes: str) -> dict[str, Any]:
    from support.cluster import wait_for

    ns, name, uid = job["metadata"]["namespace"], job["metadata"]["name"], job["metadata"]["uid"]

    def verdict() -> dict[str, Any] | None:
        live = cluster.get("Job", ns, name)
        if live is None or live["metadata"]["uid"] != uid:
            raise AssertionError(f"Job {ns}/{name} ({uid}) is gone while waiting for its {' or '.join(ctypes)} condition")
        ok = any(c.get("type") in ctypes and c.get("status") == "True" for c in (live.get("status") or {}).get("conditions") or [])
        return live if ok else None
    return wait_for(verdict, message=f"the Job controller's {' or '.join(ctypes)} condition on {ns}/{name}")


def _disrupt(cluster: EmulatedCluster, pod: dict[str, Any], reason: str, message: str, grace_seconds: int | None = None) -> dict[str, Any] | None:
    """A control-plane component deleting a pod: DisruptionTarget=True first, then a graceful delete
    (https://kubernetes.io/docs/concepts/workloads/pods/disruptions/#pod-disruption-conditions)."""
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    live = cluster.get("Pod", ns, name)
    if live is None:
        return None
    conditions = [c for c in (live.get("status") or {}).get("conditions") or [] if c.get("type") != "DisruptionTarget"]
    conditions.append({"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message, "lastTransitionTime": _now()})
    cluster.patch_status("Pod", ns, name, {"conditions": conditions})
    cluster.delete("Pod", ns, name, grace_seconds=grace_seconds)
    return cluster.get("Pod", ns, name)


def preempt(cluster: EmulatedCluster, pod: dict[str, Any]) -> dict[str, Any] | None:
    """The scheduler preempts the pod for a higher-priority one."""
    return _disrupt(cluster, pod, "PreemptionByScheduler", "default-scheduler: preempting to accommodate a higher priority pod")


def taint_evict(cluster: EmulatedCluster, pod: dict[str, Any]) -> dict[str, Any] | None:
    """The taint manager evicts the pod from a node with a NoExecute taint it does not tolerate."""
    return _disrupt(cluster, pod, "DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint")


def evict(cluster: EmulatedCluster, pod: dict[str, Any]) -> dict[str, Any] | None:
    """kubectl drain / the cluster autoscaler: the eviction API."""
    cluster.evict(pod["metadata"]["namespace"], pod["metadata"]["name"])
    return cluster.get("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])
