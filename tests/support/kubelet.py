"""Play the scheduler and the kubelet (and the Job controller, where the emulator's is off) against the emulated cluster.

The emulator runs the Job controller (``Semantics.job_controller``) but no
scheduler or kubelet. These helpers change objects the way those components
would, through the API, so the operator sees ordinary watch events: pods get
scheduled or not, run, and terminate with an exit code, a reason and a
termination message. The e2e pod executor (``tests/e2e/executor.py``) writes
its pods' status with ``run``/``terminate``/``waiting`` too.
"""
from __future__ import annotations

import copy
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from support.cluster import ApiError, EmulatedCluster

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


def _container(pod: dict[str, Any], state: dict[str, Any], last: dict[str, Any] | None = None) -> dict[str, Any]:
    """The status of the pod's (first) container, named and imaged as its spec says."""
    spec = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    running = "running" in state
    cs = {"name": spec.get("name", "trainer"), "image": spec.get("image", "trainer"), "imageID": "", "ready": running,
          "started": running, "restartCount": 0, "state": state}
    if last:
        cs["lastState"] = last
    return cs


def _with_conditions(conditions: list[dict[str, Any]], status: str, reason: str | None, *types: str) -> list[dict[str, Any]]:
    """``conditions`` with each of ``types`` set to ``status`` (its lastTransitionTime kept when it does not change)."""
    old = {c.get("type"): c for c in conditions}
    out = [c for c in conditions if c.get("type") not in types]
    for t in types:
        prev = old.get(t)
        if prev is not None and prev.get("status") == status and prev.get("reason") == reason:
            out.append(prev)
            continue
        c = {"type": t, "status": status, "lastTransitionTime": _now()}
        if reason:
            c["reason"] = reason
        out.append(c)
    return out


def write_status(cluster: EmulatedCluster, pod: dict[str, Any], build: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """The kubelet's status manager: the new status is built from the pod as it is now and written only over that
    version (a merge patch carrying its resourceVersion; 409 Conflict: read it again), so a condition another
    component added meanwhile (the eviction API's ``DisruptionTarget``) is never lost. 404 when the pod is gone."""
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    for _ in range(20):
        live = cluster.get("Pod", ns, name)
        if live is None or (pod["metadata"].get("uid") and live["metadata"].get("uid") != pod["metadata"]["uid"]):
            raise ApiError(404, {"reason": "NotFound", "message": f'pods "{name}" not found'})
        body = {"metadata": {"resourceVersion": live["metadata"]["resourceVersion"]}, "status": build(live)}
        try:
            return cluster.patch("Pod", ns, name, body, subresource="status")
        except ApiError as e:
            if e.status != 409:
                raise
    raise ApiError(409, {"reason": "Conflict", "message": f"pod {ns}/{name}: status kept changing under the kubelet"})


def waiting(cluster: EmulatedCluster, pod: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
    """The kubelet cannot start the container (``ImagePullBackOff``, ``CreateContainerConfigError``...): Pending."""
    def build(live: dict[str, Any]) -> dict[str, Any]:
        conds = _with_conditions((live.get("status") or {}).get("conditions") or [], "True", None, "PodScheduled")
        return {"phase": "Pending", "conditions": conds,
                "containerStatuses": [_container(live, {"waiting": {"reason": reason, "message": message}})]}
    return write_status(cluster, pod, build)


def unschedulable(cluster: EmulatedCluster, pod: dict[str, Any], message: str = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.") -> dict[str, Any]:
    return cluster.patch_status("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"], {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message, "lastTransitionTime": _now()}],
    })


def image_pull_error(cluster: EmulatedCluster, pod: dict[str, Any], reason: str = "ImagePullBackOff",
                     message: str = "Back-off pulling image") -> dict[str, Any]:
    return waiting(cluster, pod, reason, message)


def run(cluster: EmulatedCluster, pod: dict[str, Any], started_at: str | None = None, pod_ip: str | None = None) -> dict[str, Any]:
    """The kubelet: the pod's container runs (scheduled, initialized, ready); its other conditions stay."""
    started_at = started_at or _now()

    def build(live: dict[str, Any]) -> dict[str, Any]:
        old = live.get("status") or {}
        conds = _with_conditions(old.get("conditions") or [], "True", None, "PodScheduled", "Initialized", "ContainersReady", "Ready")
        status = {"phase": "Running", "startTime": old.get("startTime") or started_at, "conditions": conds,
                  "containerStatuses": [_container(live, {"running": {"startedAt": started_at}})]}
        if pod_ip:
            status.update({"podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "hostIP": pod_ip, "hostIPs": [{"ip": pod_ip}]})
        return status
    return write_status(cluster, pod, build)


def terminate(cluster: EmulatedCluster, pod: dict[str, Any], exit_code: int, reason: str | None = None, message: str = "",
              pod_conditions: list[dict[str, Any]] | None = None, finished_at: str | None = None) -> dict[str, Any]:
    """The kubelet: the container exited; the pod is Succeeded (0) or Failed, with the container's terminated state
    (exit code, reason, message; startedAt from its running state) and Ready/ContainersReady False, reason
    PodCompleted or PodFailed (as kubelet/status/generate.go has them). Its other conditions stay
    (``DisruptionTarget``); ``pod_conditions`` replaces them."""
    reason = reason or ("Completed" if exit_code == 0 else "Error")

    def build(live: dict[str, Any]) -> dict[str, Any]:
        old = live.get("status") or {}
        running = (((old.get("containerStatuses") or [{}])[0].get("state")) or {}).get("running") or {}
        terminated = {"exitCode": exit_code, "reason": reason, "message": message,
                      "startedAt": running.get("startedAt") or old.get("startTime") or _now(), "finishedAt": finished_at or _now()}
        conds = (old.get("conditions") or []) if pod_conditions is None else pod_conditions
        return {"phase": "Succeeded" if exit_code == 0 else "Failed",
                "conditions": _with_conditions(conds, "False", "PodCompleted" if exit_code == 0 else "PodFailed", "ContainersReady", "Ready"),
                "containerStatuses": [_container(live, {"terminated": terminated})]}
    return write_status(cluster, pod, build)


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
