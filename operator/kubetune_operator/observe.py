"""What the operator observed, read without deciding anything.

- :func:`summarize`: what is kept in memory of a watched batch Job or pod;
- :class:`ParsedSpec` / :func:`parse_spec`: a FineTuneJob's spec as the API
  model reads it (or why it cannot run) and its per-field hashes;
- :class:`Observation`: one frozen snapshot (the FineTuneJob, its Jobs and
  pods, the time, the settings) that ``phases.decide`` reads;
- failure classification: why a pod or an attempt failed (:class:`Failure`),
  and why pods are not running yet.

No I/O here.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from kubetune_api import contract
from kubetune_api import spec as api
from kubetune_operator import builders
from kubetune_operator import reasons as R
from kubetune_operator.settings import OperatorSettings

if TYPE_CHECKING:
    from kubetune_operator.report import TrainerReport

Obj = Mapping[str, Any]
FailureKind = Literal["permanent", "transient", "preempted"]

_IMAGE_PULL_TRANSIENT = ("ErrImagePull", "ImagePullBackOff")
_IMAGE_PULL_PERMANENT = ("InvalidImageName", "ErrImageNeverPull")
_KEPT_METADATA = ("name", "namespace", "labels", "annotations", "resourceVersion", "deletionTimestamp", "uid", "ownerReferences")
# The Job controller labels its pods with their Job's UID (the legacy label too).
CONTROLLER_UID_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")


# ------------------------------------------------------------- snapshots
def summarize(obj: Obj) -> dict[str, Any]:
    """What the operator keeps in memory of a watched batch Job or pod."""
    meta = obj.get("metadata") or {}
    out: dict[str, Any] = {
        "metadata": {k: meta[k] for k in _KEPT_METADATA if k in meta},
        "status": obj.get("status") or {},
    }
    if "suspend" in (obj.get("spec") or {}):
        out["spec"] = {"suspend": obj["spec"]["suspend"]}
    return out


@dataclasses.dataclass(frozen=True)
class ParsedSpec:
    """A FineTuneJob's spec read by the API model: the job and its field hashes, or why it cannot run."""

    job: api.FineTuneJob | None
    hashes: Mapping[str, str]
    error: str | None = None


def parse_spec(ftj: Obj) -> ParsedSpec:
    """Parse once per spec generation (callers cache it): the costly part of a decision."""
    try:
        job = builders.parse_runnable_job(dict(ftj))
    except builders.InvalidJob as e:
        return ParsedSpec(job=None, hashes={}, error=str(e))
    hashes = builders.spec_hashes(job.spec.model_dump(by_alias=True, exclude_none=True, mode="json"))
    return ParsedSpec(job=job, hashes=hashes)


@dataclasses.dataclass(frozen=True)
class Rejection:
    """The API server refused an object the operator tried to create."""

    code: int  # 422 invalid, 403 forbidden (RBAC, quota, admission webhook), 409 someone else's object in the way
    kind: str
    name: str
    message: str
    at: dt.datetime  # the last refusal
    count: int = 1  # consecutive refusals, for the backoff


@dataclasses.dataclass(frozen=True)
class Observation:
    """Everything ``phases.decide`` reads: one FineTuneJob, what it owns, what is in its way, and the time.

    ``jobs`` and ``pods`` are the children this FineTuneJob owns by UID (Jobs by
    their controller owner reference, pods through their Job's UID); ``foreign_jobs``
    and ``foreign_pods`` carry the job's label but belong to someone else (a
    deleted namesake's leftovers still being collected, or a user's objects).
    """

    ftj: Obj
    parsed: ParsedSpec
    jobs: Sequence[Obj]
    pods: Sequence[Obj]
    now: dt.datetime
    settings: OperatorSettings
    foreign_jobs: Sequence[Obj] = ()
    foreign_pods: Sequence[Obj] = ()
    rejection: Rejection | None = None
    # The FineTuneJob that spec.model.from names, as the API showed it (None: absent, or no model.from).
    earlier: Obj | None = None
    report: TrainerReport | None = None  # rank 0's last checked report (report.py)

    @classmethod
    def of(
        cls,
        ftj: Obj,
        *,
        jobs: Sequence[Obj] = (),
        pods: Sequence[Obj] = (),
        now: dt.datetime,
        settings: OperatorSettings,
        parsed: ParsedSpec | None = None,
        known_job_uids: Iterable[str] = (),
        rejection: Rejection | None = None,
        earlier: Obj | None = None,
        report: TrainerReport | None = None,
    ) -> Observation:
        """Split labelled Jobs and pods into owned and foreign ones, by UID."""
        uid = str((ftj.get("metadata") or {}).get("uid") or "")
        owned_jobs = tuple(j for j in jobs if controller_uid(j) == uid and uid)
        job_uids = {str((j.get("metadata") or {}).get("uid")) for j in owned_jobs} | set(known_job_uids)
        owned_pods = tuple(p for p in pods if pod_job_uid(p) in job_uids)
        return cls(
            ftj=ftj, parsed=parsed or parse_spec(ftj), jobs=owned_jobs, pods=owned_pods, now=now, settings=settings,
            foreign_jobs=tuple(j for j in jobs if j not in owned_jobs),
            foreign_pods=tuple(p for p in pods if p not in owned_pods),
            rejection=rejection, earlier=earlier, report=report,
        )

    @property
    def metadata(self) -> Obj:
        return self.ftj.get("metadata") or {}

    @property
    def status(self) -> Obj:
        return self.ftj.get("status") or {}


# ------------------------------------------------------------ accessors
def name_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", "?"))


def controller_uid(obj: Obj) -> str | None:
    """The UID of the object's controller (its owner reference with controller: true)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return str(ref.get("uid"))
    return None


def pod_job_uid(pod: Obj) -> str | None:
    """The UID of the Job a pod belongs to: the Job controller's label, else the pod's controller."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    for label in CONTROLLER_UID_LABELS:
        if labels.get(label):
            return str(labels[label])
    return controller_uid(pod)


def conditions(obj: Obj) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for c in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and isinstance(c.get("type"), str):
            out[c["type"]] = c
    return out


def condition_true(obj: Obj, ctype: str) -> bool:
    return conditions(obj).get(ctype, {}).get("status") == "True"


def attempt_of(obj: Obj) -> int | None:
    v = ((obj.get("metadata") or {}).get("labels") or {}).get(builders.LABEL_ATTEMPT)
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def deleting(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def job_finished(job: Obj) -> bool:
    return any(condition_true(job, t) for t in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget"))


def _trainer_status(pod: Obj) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == builders.CONTAINER:
            return dict(cs)
    return dict(statuses[0]) if statuses else {}


def _terminated(pod: Obj) -> dict[str, Any]:
    cs = _trainer_status(pod)
    return dict((cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {})


def _waiting(pod: Obj) -> dict[str, Any]:
    return dict((_trainer_status(pod).get("state") or {}).get("waiting") or {})


def pod_running(pod: Obj) -> bool:
    st = pod.get("status") or {}
    return st.get("phase") == "Running" and "running" in (_trainer_status(pod).get("state") or {})


# --------------------------------------------------------------- failures
@dataclasses.dataclass(frozen=True)
class Failure:
    kind: FailureKind  # permanent: fail now; transient: restart, counted; preempted: restart, not counted
    reason: str
    message: str


_KIND_ORDER: dict[FailureKind, int] = {"permanent": 0, "transient": 1, "preempted": 2}


def trainer_error(message: str) -> tuple[str, str] | None:
    """(reason, message) from the trainer's last 'kubetune: error: <reason>: <message>' line."""
    return contract.parse_error_line(message)


_EXCEPTION_LINE = re.compile(r"\b\w*(?:Error|Exception|Interrupt)\b: *\S")


def last_error_line(message: str) -> str:
    """The line of a termination message (a log tail) that says what went wrong.

    The last 'SomeError: text' line (torchrun's banner ends with separators and
    an empty 'ChildFailedError:'), else the last line with words in it.
    """
    lines = [ln.strip() for ln in (message or "").splitlines() if ln.strip()]
    for line in reversed(lines):
        if _EXCEPTION_LINE.search(line):
            return line[:300]
    for line in reversed(lines):
        if re.search(r"[A-Za-z]{3}", line):
            return line[:300]
    return ""


def classify_pod_failure(pod: Obj) -> Failure:
    """Why one failed pod failed: read from its terminated state and conditions."""
    name = name_of(pod)
    term = _terminated(pod)
    code = term.get("exitCode")
    term_reason = term.get("reason") or ""
    term_message = (term.get("message") or "").strip()
    pod_status = pod.get("status") or {}
    container = builders.CONTAINER
    if code == contract.PERMANENT:
        parsed = trainer_error(term_message)
        if parsed:
            return Failure("permanent", parsed[0], f"{parsed[1]} (pod {name}, exit code 3)")
        return Failure("permanent", R.PERMANENT_ERROR, f"pod {name} exited with code 3: {last_error_line(term_message) or 'no message'}")
    if code == contract.PREEMPTED:
        return Failure("preempted", R.PREEMPTED, f"pod {name} checkpointed and stopped after SIGTERM (exit code 75)")
    # Something deleted or evicted the pod that it did not cause: a drain, the eviction API,
    # scheduler preemption, the taint manager, node pressure or node shutdown.
    disruption = conditions(pod).get("DisruptionTarget")
    if disruption and disruption.get("status") == "True":
        detail = f"pod {name} was disrupted ({disruption.get('reason')}): {disruption.get('message') or ''}"
        return Failure("preempted", R.PREEMPTED, detail.rstrip(": "))
    if term_reason == "OOMKilled":
        return Failure("transient", R.OOM_KILLED, f"pod {name}: container {container} was killed for exceeding its memory limit (exit code {code})")
    if pod_status.get("reason") == "Evicted":
        # Without DisruptionTarget: the kubelet evicted it for exceeding its own limits (e.g. ephemeral storage).
        return Failure("transient", R.EVICTED, f"pod {name} was evicted: {pod_status.get('message') or 'node pressure'}")
    if pod_status.get("reason") == "DeadlineExceeded":
        return Failure("transient", R.POD_FAILED, f"pod {name} exceeded its deadline")
    detail = f"exit code {code}" if code is not None else "no exit code"
    if term_reason and term_reason != "Error":
        detail += f", {term_reason}"
    last = last_error_line(term_message)
    return Failure("transient", R.POD_FAILED, f"pod {name}: container {container} failed ({detail})" + (f": {last}" if last else ""))


def disrupted(pod: Obj) -> bool:
    return conditions(pod).get("DisruptionTarget", {}).get("status") == "True"


_POLICY_EXIT_CODE = re.compile(r"failed with exit code (\d+) matching FailJob rule")
_POLICY_CONDITION = re.compile(r"has condition (\w+) matching FailJob rule")


def classify_job_verdict(job: Obj) -> Failure | None:
    """The Job controller's verdict (FailureTarget, then Failed), when the pods are not (or no longer) seen.

    podFailurePolicy (builders.pod_failure_policy) names the rule that matched in the
    condition's message: exit code 3 is permanent; exit code 75 and DisruptionTarget
    are disruptions, not failures.
    """
    conds = conditions(job)
    cond = conds.get("Failed") if conds.get("Failed", {}).get("status") == "True" else conds.get("FailureTarget")
    if not cond or cond.get("status") != "True":
        return None
    msg = cond.get("message") or cond.get("reason") or "the Job failed"
    if cond.get("reason") == "PodFailurePolicy":
        by_code = _POLICY_EXIT_CODE.search(msg)
        if by_code and int(by_code.group(1)) == contract.PERMANENT:
            return Failure("permanent", R.PERMANENT_ERROR, msg)
        by_condition = _POLICY_CONDITION.search(msg)
        if (by_code and int(by_code.group(1)) == contract.PREEMPTED) or (by_condition and by_condition.group(1) == "DisruptionTarget"):
            return Failure("preempted", R.PREEMPTED, f"Job {name_of(job)}: {msg}")
    return Failure("transient", R.POD_FAILED, f"Job {name_of(job)}: {msg}")


def classify_attempt_failure(pods: Sequence[Obj], job: Obj) -> Failure | None:
    """The attempt's failure, if any: a failed pod, or the Job controller's verdict.

    Failed pods being deleted are ignored (the Job controller removes the rest of a
    failed gang that way), except disrupted ones: a drained or preempted pod is
    deleted by whoever disrupted it.
    """
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed" and (not deleting(p) or disrupted(p))]
    failures = sorted((classify_pod_failure(p) for p in failed), key=lambda f: _KIND_ORDER[f.kind])
    if failures:
        return failures[0]
    verdict = classify_job_verdict(job)
    if verdict is not None and verdict.kind == "transient" and any(disrupted(p) for p in pods):
        # The Job failed because of a pod the operator saw disrupted (e.g. backoffLimit on a
        # cluster whose Job controller has no podFailurePolicy): not the job's failure.
        return Failure("preempted", R.PREEMPTED, verdict.message)
    return verdict


def pods_problem(pods: Sequence[Obj]) -> tuple[str, str] | None:
    """A reason pods are not running yet that a person should see: (reason, message)."""
    for p in pods:
        sched = conditions(p).get("PodScheduled")
        if sched and sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
            return R.UNSCHEDULABLE, f"pod {name_of(p)}: {sched.get('message') or 'no node fits'}"
    for p in pods:
        w = _waiting(p)
        if w.get("reason") in _IMAGE_PULL_TRANSIENT + _IMAGE_PULL_PERMANENT:
            return R.IMAGE_PULL_FAILED, f"pod {name_of(p)}: {w.get('reason')}: {w.get('message') or ''}".rstrip(": ")
        if w.get("reason") in ("CreateContainerConfigError", "CreateContainerError"):
            return R.CONTAINER_CONFIG_ERROR, f"pod {name_of(p)}: {w.get('message') or w.get('reason')}"
    return None


def permanent_image_error(pods: Sequence[Obj]) -> str | None:
    """An image reference no retry can pull (invalid name, pull policy Never), as a message."""
    for p in pods:
        w = _waiting(p)
        if w.get("reason") in _IMAGE_PULL_PERMANENT:
            return f"pod {name_of(p)}: {w.get('reason')}: {w.get('message') or ''}".rstrip(": ")
    return None


def recorded_spec_hashes(job: Obj) -> dict[str, str] | None:
    """The per-field spec hashes an attempt's Job was built from (None: not recorded or unreadable)."""
    recorded = ((job.get("metadata") or {}).get("annotations") or {}).get(builders.ANNOTATION_SPEC_HASHES)
    if not recorded:
        return None
    try:
        value = json.loads(recorded)
    except ValueError:
        return None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None

