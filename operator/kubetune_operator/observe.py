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
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from kubetune_api import contract
from kubetune_api import spec as api
from kubetune_operator import builders
from kubetune_operator import reasons as R
from kubetune_operator.settings import OperatorSettings

Obj = Mapping[str, Any]
FailureKind = Literal["permanent", "transient", "preempted"]

_IMAGE_PULL_TRANSIENT = ("ErrImagePull", "ImagePullBackOff")
_IMAGE_PULL_PERMANENT = ("InvalidImageName", "ErrImageNeverPull")
_KEPT_METADATA = ("name", "namespace", "labels", "annotations", "resourceVersion", "deletionTimestamp", "uid")


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
class Observation:
    """Everything ``phases.decide`` reads: one FineTuneJob, what it owns, and the time."""

    ftj: Obj
    parsed: ParsedSpec
    jobs: Sequence[Obj]
    pods: Sequence[Obj]
    now: dt.datetime
    settings: OperatorSettings

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
    ) -> Observation:
        return cls(ftj=ftj, parsed=parsed or parse_spec(ftj), jobs=tuple(jobs), pods=tuple(pods), now=now, settings=settings)

    @property
    def metadata(self) -> Obj:
        return self.ftj.get("metadata") or {}

    @property
    def status(self) -> Obj:
        return self.ftj.get("status") or {}


# ------------------------------------------------------------ accessors
def name_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", "?"))


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
    if term_reason == "OOMKilled":
        return Failure("transient", R.OOM_KILLED, f"pod {name}: container {container} was killed for exceeding its memory limit (exit code {code})")
    if pod_status.get("reason") == "Evicted":
        return Failure("transient", R.EVICTED, f"pod {name} was evicted: {pod_status.get('message') or 'node pressure'}")
    disruption = conditions(pod).get("DisruptionTarget")
    if disruption and disruption.get("status") == "True":
        detail = f"pod {name} was disrupted ({disruption.get('reason')}): {disruption.get('message') or ''}"
        return Failure("preempted", R.PREEMPTED, detail.rstrip(": "))
    if pod_status.get("reason") == "DeadlineExceeded":
        return Failure("transient", R.POD_FAILED, f"pod {name} exceeded its deadline")
    detail = f"exit code {code}" if code is not None else "no exit code"
    if term_reason and term_reason != "Error":
        detail += f", {term_reason}"
    last = last_error_line(term_message)
    return Failure("transient", R.POD_FAILED, f"pod {name}: container {container} failed ({detail})" + (f": {last}" if last else ""))


def classify_attempt_failure(pods: Sequence[Obj], job: Obj) -> Failure | None:
    """The attempt's failure, if any: a failed pod, or the Job controller's verdict."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed" and not deleting(p)]
    failures = sorted((classify_pod_failure(p) for p in failed), key=lambda f: _KIND_ORDER[f.kind])
    if failures:
        return failures[0]
    conds = conditions(job)
    cond = conds.get("Failed") if conds.get("Failed", {}).get("status") == "True" else conds.get("FailureTarget")
    if cond and cond.get("status") == "True":
        msg = cond.get("message") or cond.get("reason") or "the Job failed"
        if cond.get("reason") == "PodFailurePolicy" and f"exit code {contract.PERMANENT}" in msg:
            return Failure("permanent", R.PERMANENT_ERROR, msg)
        return Failure("transient", R.POD_FAILED, f"Job {name_of(job)}: {msg}")
    return None


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

