"""The Job controller, run inside the emulator when ``Semantics.job_controller`` is on.

Follows https://kubernetes.io/docs/concepts/workloads/controllers/job/ and
https://kubernetes.io/docs/tasks/job/pod-failure-policy/ (Kubernetes 1.31+):

- an Indexed Job gets one pod per completion index (``<job>-<index>-<random>``,
  hostname ``<job>-<index>``, labels ``batch.kubernetes.io/controller-uid``,
  ``batch.kubernetes.io/job-name``, ``batch.kubernetes.io/job-completion-index``,
  a controller owner reference, the ``batch.kubernetes.io/job-tracking``
  finalizer, ``JOB_COMPLETION_INDEX`` in every container's env unless it
  declares its own), at most
  ``parallelism`` at a time;
- a failed pod is matched against ``podFailurePolicy.rules`` in order
  (``onExitCodes`` with In/NotIn, ``onPodConditions``); the first match's
  action applies: ``FailJob`` (the Job fails, reason ``PodFailurePolicy``),
  ``Ignore`` (not counted, the index gets a new pod), ``Count`` (counted);
  no match counts. More than ``backoffLimit`` counted failures: reason
  ``BackoffLimitExceeded``; ``activeDeadlineSeconds`` exceeded:
  ``DeadlineExceeded``;
- a terminal verdict is first the ``FailureTarget`` (or ``SuccessCriteriaMet``)
  condition; remaining pods are deleted; ``Failed`` (``Complete``) follows
  once no pod of the Job is still running;
- with a pod failure policy a terminating pod is replaced only once it is
  terminal (podReplacementPolicy ``Failed``);
- ``spec.suspend: true`` deletes the active pods, sets ``Suspended``; false
  recreates them (condition ``Suspended`` False, reason ``JobResumed``);
- the job-tracking finalizer is removed from a pod once it is accounted
  (terminal, or deleted and no longer running), or when its Job is gone
  (also for pods whose Job went before the controller looked at them again).
"""
from __future__ import annotations

import copy
import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

from support.emulator import JOB_TRACKING_FINALIZER, _controller_ref, _now, _terminal

if TYPE_CHECKING:
    from support.emulator import KubeEmulator

INDEX = "batch.kubernetes.io/job-completion-index"
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
JOB_NAME = "batch.kubernetes.io/job-name"


def _deleting(obj: dict[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _cond(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return c
    return None


def _index(pod: dict[str, Any]) -> int | None:
    v = ((pod.get("metadata") or {}).get("annotations") or {}).get(INDEX) or ((pod.get("metadata") or {}).get("labels") or {}).get(INDEX)
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _parse_indexes(s: str | None) -> set[int]:
    out: set[int] = set()
    for part in (s or "").split(","):
        if "-" in part:
            a, b = part.split("-")
            out.update(range(int(a), int(b) + 1))
        elif part.strip():
            out.add(int(part))
    return out


def _format_indexes(idx: set[int]) -> str:
    parts, run = [], []
    for i in sorted(idx):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def match_rule(policy: dict[str, Any] | None, pod: dict[str, Any]) -> tuple[str, int, str] | None:
    """(action, rule index, message) of the first podFailurePolicy rule the failed pod matches."""
    ns, name = pod["metadata"].get("namespace"), pod["metadata"]["name"]
    statuses = ((pod.get("status") or {}).get("containerStatuses") or []) + ((pod.get("status") or {}).get("initContainerStatuses") or [])
    for i, rule in enumerate((policy or {}).get("rules") or []):
        codes = rule.get("onExitCodes")
        if codes:
            for cs in statuses:
                if codes.get("containerName") and cs.get("name") != codes["containerName"]:
                    continue
                term = (cs.get("state") or {}).get("terminated")
                if not term:
                    continue
                code = term.get("exitCode")
                values = codes.get("values") or []
                hit = code in values if codes.get("operator") == "In" else (code != 0 and code not in values)
                if hit:
                    return rule["action"], i, (f"Container {cs.get('name')} for pod {ns}/{name} failed with exit code "
                                               f"{code} matching {rule['action']} rule at index {i}")
        for pattern in rule.get("onPodConditions") or []:
            want = pattern.get("status") or "True"
            for c in (pod.get("status") or {}).get("conditions") or []:
                if c.get("type") == pattern.get("type") and c.get("status") == want:
                    return rule["action"], i, (f"Pod {ns}/{name} has condition {c.get('type')} matching "
                                               f"{rule['action']} rule at index {i}")
    return None


def _set_condition(status: dict[str, Any], ctype: str, cstatus: str, reason: str, message: str) -> None:
    conds = [c for c in status.get("conditions") or [] if c.get("type") != ctype]
    now = _now()
    conds.append({"type": ctype, "status": cstatus, "reason": reason, "message": message,
                  "lastProbeTime": now, "lastTransitionTime": now})
    status["conditions"] = conds


async def _release(emu: KubeEmulator, key: Any, pod: dict[str, Any]) -> None:
    fins = pod["metadata"].get("finalizers") or []
    if JOB_TRACKING_FINALIZER not in fins:
        return
    new = copy.deepcopy(pod)
    new["metadata"]["finalizers"] = [f for f in fins if f != JOB_TRACKING_FINALIZER]
    await emu.write_object(key, pod, new)


def _done_running(emu: KubeEmulator, key: Any, pod: dict[str, Any]) -> bool:
    """Terminal, or deleted and not (any more) running on a node."""
    return _terminal(pod) or (_deleting(pod) and not emu._lingering(key, pod))


async def sync(emu: KubeEmulator, item: tuple[str, str, str]) -> None:
    kind, ns, name = item
    pods_res = emu.res("v1/pods")
    if kind == "pod":  # a pod whose Job is gone: release it
        key = (pods_res, ns, name)
        pod = emu._live(key)
        ref = _controller_ref(pod or {})
        if pod is not None and ref and ref.get("uid") not in emu._uids:
            await _release(emu, key, pod)
        return
    jkey = (emu.res("batch/v1/jobs"), ns, name)
    job = emu._live(jkey)
    if job is None:
        # The Job is gone: its pods are orphans, and their finalizer goes now (the real controller enqueues
        # them when it sees the Job deleted). A pod deleted meanwhile gets no further event to release it by.
        for k, o in list(emu._objects.items()):
            ref = _controller_ref(o.raw) if k[0] == pods_res and k[1] == ns and not o.deleted else None
            if ref and ref.get("kind") == "Job" and ref.get("name") == name and ref.get("uid") not in emu._uids:
                await _release(emu, k, o.raw)
        return
    uid = job["metadata"]["uid"]
    pods = [(k, o.raw) for k, o in list(emu._objects.items())
            if k[0] == pods_res and k[1] == ns and not o.deleted and (_controller_ref(o.raw) or {}).get("uid") == uid]
    if not emu.semantics.job_controller or _deleting(job) or _cond(job, "Complete") or _cond(job, "Failed"):
        for k, p in pods:
            if _done_running(emu, k, p) or (_deleting(job) and _terminal(p)):
                await _release(emu, k, p)
        return
    await _reconcile(emu, jkey, job, pods)


async def _reconcile(emu: KubeEmulator, jkey: Any, job: dict[str, Any], pods: list[tuple[Any, dict[str, Any]]]) -> None:
    spec = job.get("spec") or {}
    old_status = job.get("status") or {}
    status = copy.deepcopy(old_status)
    uid = job["metadata"]["uid"]
    counted = emu.job_counted.setdefault(uid, set())
    policy = spec.get("podFailurePolicy")
    succeeded = _parse_indexes(status.get("completedIndexes"))
    failed = int(status.get("failed") or 0)
    target = _cond(job, "FailureTarget")
    target_set: tuple[str, str] | None = (target["reason"], target.get("message", "")) if target else None
    for key, pod in sorted(pods, key=lambda kp: kp[1]["metadata"].get("creationTimestamp") or ""):
        puid = pod["metadata"]["uid"]
        if not _done_running(emu, key, pod):
            continue
        if puid in counted:  # accounted already, or deleted by this controller (suspend, finishing)
            await _release(emu, key, pod)
            continue
        counted.add(puid)
        if (pod.get("status") or {}).get("phase") == "Succeeded":
            idx = _index(pod)
            if idx is not None:
                succeeded.add(idx)
        else:
            hit = match_rule(policy, pod)
            action = hit[0] if hit else "Count"
            if action == "FailJob" and target_set is None:
                target_set = ("PodFailurePolicy", hit[2] if hit else "")
            elif action == "Ignore":
                pass
            else:
                failed += 1
        await _release(emu, key, emu._live(key) or pod)
    if failed:
        status["failed"] = failed
    if succeeded:
        status["succeeded"] = len(succeeded)
        status["completedIndexes"] = _format_indexes(succeeded)
    now = dt.datetime.now(dt.UTC)
    if target_set is None and failed > int(spec.get("backoffLimit", 6)):
        target_set = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    ads = spec.get("activeDeadlineSeconds")
    start = status.get("startTime")
    if target_set is None and ads is not None and start and not spec.get("suspend"):
        started = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
        if (now - started).total_seconds() >= int(ads):
            target_set = ("DeadlineExceeded", "Job was active longer than specified deadline")
    live = [(k, p) for k, p in emu_pods(emu, pods) if not _done_running(emu, k, p)]
    active = [(k, p) for k, p in live if not _deleting(p)]
    completions = int(spec.get("completions") or 1)
    finishing: tuple[str, str, str, str] | None = None
    if target_set is not None:
        if not _cond({"status": status}, "FailureTarget"):
            _set_condition(status, "FailureTarget", "True", *target_set)
        finishing = ("Failed", *target_set, "")
    elif len(succeeded) >= completions:
        if not _cond({"status": status}, "SuccessCriteriaMet"):
            _set_condition(status, "SuccessCriteriaMet", "True", "CompletionsReached", "Reached expected number of succeeded pods")
        finishing = ("Complete", "CompletionsReached", "Reached expected number of succeeded pods", "")
    if finishing is not None:
        for k, p in active:
            counted.add(p["metadata"]["uid"])  # pods the controller removes are not failures
            await emu.delete_object(k, p)
        if not live:
            _set_condition(status, finishing[0], "True", finishing[1], finishing[2])
            if finishing[0] == "Complete":
                status["completionTime"] = _now()
        status["active"] = 0
        status["terminating"] = len(live)
        return await _write_status(emu, jkey, job, old_status, status)
    if spec.get("suspend"):
        for k, p in active:
            counted.add(p["metadata"]["uid"])  # not counted against backoffLimit
            await emu.delete_object(k, p)
        if not _cond({"status": status}, "Suspended"):
            _set_condition(status, "Suspended", "True", "JobSuspended", "Job suspended")
        status.pop("startTime", None)
        status["active"] = 0
        status["terminating"] = len(live)
        return await _write_status(emu, jkey, job, old_status, status)
    if any(c.get("type") == "Suspended" and c.get("status") == "True" for c in status.get("conditions") or []):
        _set_condition(status, "Suspended", "False", "JobResumed", "Job resumed")
    if not status.get("startTime"):
        status["startTime"] = _now()
        if ads is not None:
            loop = emu._loop
            if loop is not None:
                loop.call_later(float(ads) + 0.05, emu.kick_job_controller, ("job", jkey[1], jkey[2]))
    replace_terminating = spec.get("podReplacementPolicy") == "TerminatingOrFailed" and not policy
    busy = {_index(p) for _, p in (active if replace_terminating else live)}
    parallelism = int(spec.get("parallelism", completions))
    n_active = len(active)
    for idx in range(completions):
        if n_active >= parallelism:
            break
        if idx in succeeded or idx in busy:
            continue
        await _create_pod(emu, job, idx)
        n_active += 1
    status["active"] = n_active
    status["terminating"] = len(live) - len(active)
    status["ready"] = sum(1 for _, p in active if _cond(p, "Ready"))
    await _write_status(emu, jkey, job, old_status, status)


def emu_pods(emu: KubeEmulator, pods: list[tuple[Any, dict[str, Any]]]) -> list[tuple[Any, dict[str, Any]]]:
    """The same pods, as they are now (accounting may have changed or removed some)."""
    out = []
    for k, p in pods:
        live = emu._live(k)
        if live is not None and live["metadata"].get("uid") == p["metadata"].get("uid"):
            out.append((k, live))
    return out


async def _write_status(emu: KubeEmulator, jkey: Any, job: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
    def stable(s: dict[str, Any]) -> Any:
        s = copy.deepcopy(s)
        for c in s.get("conditions") or []:
            c.pop("lastProbeTime", None)
            c.pop("lastTransitionTime", None)
        return s
    if stable(old) == stable(new):
        return
    live = emu._live(jkey)
    if live is None:
        return
    await emu.write_object(jkey, live, {**live, "status": new}, "status")


async def _create_pod(emu: KubeEmulator, job: dict[str, Any], idx: int) -> None:
    meta = job["metadata"]
    template = (job.get("spec") or {}).get("template") or {}
    tmeta = template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    labels.update({CONTROLLER_UID: meta["uid"], "controller-uid": meta["uid"], JOB_NAME: meta["name"],
                   "job-name": meta["name"], INDEX: str(idx)})
    spec = copy.deepcopy(template.get("spec") or {})
    spec["hostname"] = f"{meta['name']}-{idx}"
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        # Upstream's addCompletionIndexEnvVariable: a container that declares the variable keeps its own;
        # the others get it appended (the label's value, with PodIndexLabel, GA in 1.32).
        env = list(c.get("env") or [])
        if not any(e.get("name") == "JOB_COMPLETION_INDEX" for e in env):
            env.append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{INDEX}']"}}})
        c["env"] = env
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-{idx}-{uuid.uuid4().hex[:5]}", "namespace": meta["namespace"], "labels": labels,
            "annotations": {**(tmeta.get("annotations") or {}), INDEX: str(idx)},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                                 "controller": True, "blockOwnerDeletion": True}],
            "finalizers": [JOB_TRACKING_FINALIZER],
        },
        "spec": spec,
    }
    created = await emu.create_object(emu.res("v1/pods"), meta["namespace"], pod)
    key = (emu.res("v1/pods"), meta["namespace"], created["metadata"]["name"])
    await emu.write_object(key, created, {**created, "status": {"phase": "Pending", "qosClass": "Burstable"}}, "status")
