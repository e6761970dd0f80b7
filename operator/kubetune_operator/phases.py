"""The phase machine, as a pure function: observed state -> what to do next.

``decide(ftj, jobs, pods, now, settings)`` reads a FineTuneJob, the batch Jobs
and pods it owns (as the API shows them) and the time, and returns a ``Plan``:
a status merge-patch, the Kubernetes Events to post, and the few actions the
handlers perform (create an attempt, delete old attempts, (un)suspend a Job,
delete the finished FineTuneJob). No I/O: the handlers do that, and the unit
tests drive this function directly.

Phases: Pending -> Queued (Kueue holds the suspended Job) -> Initializing
(pods starting, fetching) -> Running -> Exporting -> Succeeded | Failed, plus
Suspended and Restarting. Every phase has a condition of the same type, set
True on entry (the others turn False), with a stable CamelCase reason.

Restart semantics (gang): any failed pod ends the attempt. Exit code 3 (the
trainer's permanent error) fails the job at once with the trainer's reason;
exit code 75 (checkpointed after SIGTERM) or a pod disruption restarts without
counting against maxRestarts; anything else (OOMKilled, crashes, evictions)
counts. The failed attempt's Job is deleted and attempt+1 starts after
backoffSeconds * 2^(restarts-1), capped by the operator setting.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from typing import Any

from kubetune_api import contract
from kubetune_operator import builders
from kubetune_operator.settings import OperatorSettings

PHASES = ("Pending", "Queued", "Initializing", "Running", "Suspended", "Restarting", "Exporting", "Succeeded", "Failed")
TERMINAL = ("Succeeded", "Failed")
ACTIVE = ("Initializing", "Running", "Exporting")
SPEC_CHANGE_IGNORED = "SpecChangeIgnored"

# Reasons that are not the user's fault or are expected get Normal events.
_NORMAL_REASONS = {
    "Accepted", "WaitingForAdmission", "PodsStarting", "PodsRunning", "TrainingStarted",
    "Exporting", "Suspended", "Resuming", "Completed", "ContainerCreating",
}

_PERMANENT_EXIT = builders.PERMANENT_EXIT_CODE
_PREEMPTED_EXIT = 75
_IMAGE_PULL_TRANSIENT = ("ErrImagePull", "ImagePullBackOff")
_IMAGE_PULL_PERMANENT = ("InvalidImageName", "ErrImageNeverPull")


def rfc3339(t: dt.datetime) -> str:
    """RFC 3339 in UTC with milliseconds (backoff due times are computed from these)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    try:
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclasses.dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclasses.dataclass
class Plan:
    status_patch: dict[str, Any] = dataclasses.field(default_factory=dict)
    events: list[Event] = dataclasses.field(default_factory=list)
    create_attempt: int | None = None  # create the per-job objects (if missing) and this attempt's Job
    delete_jobs: list[str] = dataclasses.field(default_factory=list)  # batch Job names, propagation Background
    suspend_job: tuple[str, bool] | None = None  # (batch Job name, spec.suspend value)
    delete_self: bool = False  # ttlSecondsAfterFinished elapsed
    requeue_after: float | None = None  # seconds; None: wait for the next event or resync
    # What the transition was about, for metrics: (phase, reason) entered, and restart kind.
    entered: tuple[str, str] | None = None
    restart_counted: bool | None = None

    def requeue(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    @property
    def empty(self) -> bool:
        return not (self.status_patch or self.events or self.create_attempt or self.delete_jobs
                    or self.suspend_job or self.delete_self)


@dataclasses.dataclass
class Failure:
    kind: str  # permanent | transient | preempted
    reason: str
    message: str


# ------------------------------------------------------------ observations
def summarize(obj: dict[str, Any]) -> dict[str, Any]:
    """What the operator keeps in memory of a watched batch Job or pod."""
    meta = obj.get("metadata") or {}
    out: dict[str, Any] = {
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations", "resourceVersion", "deletionTimestamp", "uid") if k in meta},
        "status": obj.get("status") or {},
    }
    if "suspend" in (obj.get("spec") or {}):
        out["spec"] = {"suspend": obj["spec"]["suspend"]}
    return out


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in ((obj.get("status") or {}).get("conditions") or []) if isinstance(c, dict)}


def _true(obj: dict[str, Any], ctype: str) -> bool:
    return _conditions(obj).get(ctype, {}).get("status") == "True"


def _trainer_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == builders.CONTAINER:
            return cs
    return statuses[0] if statuses else {}


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    cs = _trainer_status(pod)
    return (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}


def _waiting(pod: dict[str, Any]) -> dict[str, Any]:
    return (_trainer_status(pod).get("state") or {}).get("waiting") or {}


def _pod_name(pod: dict[str, Any]) -> str:
    return (pod.get("metadata") or {}).get("name", "?")


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


def classify_pod_failure(pod: dict[str, Any]) -> Failure:
    """Why one failed pod failed: read from its terminated state and conditions."""
    name = _pod_name(pod)
    term = _terminated(pod)
    code = term.get("exitCode")
    treason = term.get("reason") or ""
    tmessage = (term.get("message") or "").strip()
    pstatus = pod.get("status") or {}
    if code == _PERMANENT_EXIT:
        parsed = trainer_error(tmessage)
        if parsed:
            return Failure("permanent", parsed[0], f"{parsed[1]} (pod {name}, exit code 3)")
        return Failure("permanent", "PermanentError", f"pod {name} exited with code 3: {last_error_line(tmessage) or 'no message'}")
    if code == _PREEMPTED_EXIT:
        return Failure("preempted", "Preempted", f"pod {name} checkpointed and stopped after SIGTERM (exit code 75)")
    if treason == "OOMKilled":
        return Failure("transient", "OOMKilled", f"pod {name}: container {builders.CONTAINER} was killed for exceeding its memory limit (exit code {code})")
    if pstatus.get("reason") == "Evicted":
        return Failure("transient", "Evicted", f"pod {name} was evicted: {pstatus.get('message') or 'node pressure'}")
    disruption = _conditions(pod).get("DisruptionTarget")
    if disruption and disruption.get("status") == "True":
        return Failure("preempted", "Preempted", f"pod {name} was disrupted ({disruption.get('reason')}): {disruption.get('message') or ''}".rstrip(": "))
    if pstatus.get("reason") == "DeadlineExceeded":
        return Failure("transient", "PodFailed", f"pod {name} exceeded its deadline")
    detail = f"exit code {code}" if code is not None else "no exit code"
    if treason and treason not in ("Error",):
        detail += f", {treason}"
    last = last_error_line(tmessage)
    return Failure("transient", "PodFailed", f"pod {name}: container {builders.CONTAINER} failed ({detail})" + (f": {last}" if last else ""))


def classify_attempt_failure(pods: list[dict[str, Any]], job: dict[str, Any]) -> Failure | None:
    """The attempt's failure, if any: a failed pod, or the Job controller's verdict."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed" and not (p.get("metadata") or {}).get("deletionTimestamp")]
    failures = sorted((classify_pod_failure(p) for p in failed), key=lambda f: {"permanent": 0, "transient": 1, "preempted": 2}[f.kind])
    if failures:
        return failures[0]
    conds = _conditions(job)
    cond = conds.get("Failed") if conds.get("Failed", {}).get("status") == "True" else conds.get("FailureTarget")
    if cond and cond.get("status") == "True":
        msg = cond.get("message") or cond.get("reason") or "the Job failed"
        if cond.get("reason") == "PodFailurePolicy" and f"exit code {_PERMANENT_EXIT}" in msg:
            return Failure("permanent", "PermanentError", msg)
        return Failure("transient", "PodFailed", f"Job {(job.get('metadata') or {}).get('name')}: {msg}")
    return None


def pods_problem(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """A reason pods are not running yet that a person should see (reason, message)."""
    for p in pods:
        sched = _conditions(p).get("PodScheduled")
        if sched and sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
            return "Unschedulable", f"pod {_pod_name(p)}: {sched.get('message') or 'no node fits'}"
    for p in pods:
        w = _waiting(p)
        if w.get("reason") in _IMAGE_PULL_TRANSIENT + _IMAGE_PULL_PERMANENT:
            return "ImagePullFailed", f"pod {_pod_name(p)}: {w.get('reason')}: {w.get('message') or ''}".rstrip(": ")
        if w.get("reason") in ("CreateContainerConfigError", "CreateContainerError"):
            return "ContainerConfigError", f"pod {_pod_name(p)}: {w.get('message') or w.get('reason')}"
    return None


def _permanent_image_error(pods: list[dict[str, Any]]) -> str | None:
    for p in pods:
        w = _waiting(p)
        if w.get("reason") in _IMAGE_PULL_PERMANENT:
            return f"pod {_pod_name(p)}: {w.get('reason')}: {w.get('message') or ''}".rstrip(": ")
    return None


def _running(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    return st.get("phase") == "Running" and "running" in (_trainer_status(pod).get("state") or {})


def backoff_seconds(base: int, restarts: int, counted: bool, cap: int) -> int:
    """Wait before the next attempt: base for uncounted restarts, doubling per counted restart."""
    if not counted or restarts <= 1:
        return min(base, cap)
    return min(base * 2 ** (restarts - 1), cap)


# ------------------------------------------------------------------ status
class _StatusWriter:
    """Accumulates a status merge-patch and the events of transitions."""

    def __init__(self, status: dict[str, Any], now: dt.datetime, generation: int | None, plan: Plan):
        self.status = status
        self.now = now
        self.generation = generation
        self.plan = plan
        self.conditions = [dict(c) for c in (status.get("conditions") or []) if isinstance(c, dict)]
        self.dirty_conditions = False

    def get(self, key: str) -> Any:
        return self.plan.status_patch.get(key, self.status.get(key))

    def set(self, key: str, value: Any) -> None:
        if self.status.get(key) != value or key in self.plan.status_patch:
            self.plan.status_patch[key] = value

    def condition(self, ctype: str) -> dict[str, Any] | None:
        for c in self.conditions:
            if c.get("type") == ctype:
                return c
        return None

    def set_condition(self, ctype: str, status: str, reason: str, message: str) -> bool:
        c = self.condition(ctype)
        if c and c.get("status") == status and c.get("reason") == reason and c.get("message") == message:
            return False
        new = {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": c["lastTransitionTime"] if c and c.get("status") == status and c.get("lastTransitionTime") else rfc3339(self.now),
        }
        if self.generation is not None:
            new["observedGeneration"] = self.generation
        if c:
            self.conditions[self.conditions.index(c)] = new
        else:
            self.conditions.append(new)
        self.dirty_conditions = True
        return True

    def transition(self, phase: str, reason: str, message: str) -> bool:
        """Enter (phase, reason); no-op when already there. Returns whether it changed."""
        c = self.condition(phase)
        same = self.get("phase") == phase and self.get("reason") == reason and c is not None and c.get("status") == "True" and c.get("reason") == reason
        if same:
            return False
        self.set("phase", phase)
        self.set("reason", reason)
        self.set("message", message)
        self.set_condition(phase, "True", reason, message)
        for other in PHASES:
            oc = self.condition(other)
            if other != phase and oc is not None and oc.get("status") == "True":
                self.set_condition(other, "False", reason, f"now {phase}: {message}")
        if phase in ("Initializing", "Running") and not self.get("startTime"):
            self.set("startTime", rfc3339(self.now))
        if phase in TERMINAL and not self.get("completionTime"):
            self.set("completionTime", rfc3339(self.now))
        etype = "Normal" if reason in _NORMAL_REASONS or phase == "Succeeded" else "Warning"
        self.plan.events.append(Event(etype, reason, f"{phase}: {message}"))
        self.plan.entered = (phase, reason)
        return True

    def finish(self) -> None:
        if self.dirty_conditions:
            self.plan.status_patch["conditions"] = self.conditions
        if self.plan.status_patch and self.generation is not None and self.status.get("observedGeneration") != self.generation:
            self.plan.status_patch["observedGeneration"] = self.generation


# ------------------------------------------------------------------ decide
_PARSED: dict[Any, tuple[Any, dict[str, str]]] = {}


def _parse(ftj: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    """The parsed job and its spec hashes, memoized (parsing is the costly part of a decision).

    The API server bumps metadata.generation on every spec change, so (uid,
    generation) identifies a spec; objects without both are keyed by content.
    """
    meta = ftj.get("metadata") or {}
    if meta.get("uid") and meta.get("generation"):
        key: Any = (meta["uid"], meta["generation"], meta.get("name"))
    else:
        key = json.dumps([meta.get("name"), ftj.get("spec")], sort_keys=True, default=str)
    hit = _PARSED.get(key)
    if hit is not None:
        return hit
    job = builders.parse_job(ftj)
    value = (job, builders.spec_hashes(job.spec.model_dump(by_alias=True, exclude_none=True, mode="json")))
    if len(_PARSED) > 4096:
        _PARSED.clear()
    _PARSED[key] = value
    return value


def _attempt_of(obj: dict[str, Any]) -> int | None:
    v = ((obj.get("metadata") or {}).get("labels") or {}).get(builders.LABEL_ATTEMPT)
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _deleting(obj: dict[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _finished(job: dict[str, Any]) -> bool:
    return any(_true(job, t) for t in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget"))


def decide(
    ftj: dict[str, Any],
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    now: dt.datetime,
    settings: OperatorSettings,
) -> Plan:
    plan = Plan()
    meta = ftj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return plan  # clean-up is the handler's business
    name = meta.get("name", "")
    status = dict(ftj.get("status") or {})
    w = _StatusWriter(status, now, meta.get("generation"), plan)
    try:
        _decide(ftj, name, status, jobs, pods, now, settings, w, plan)
    finally:
        w.finish()
    return plan


def _decide(ftj, name, status, jobs, pods, now, settings, w: _StatusWriter, plan: Plan) -> None:
    phase = status.get("phase")
    attempt = int(status.get("attempt") or 0)

    # Spec the operator cannot run: Failed/InvalidSpec, never a crash loop.
    try:
        job, current_hashes = _parse(ftj)
    except builders.InvalidJob as e:
        if phase not in TERMINAL:
            w.transition("Failed", "InvalidSpec", str(e))
            plan.delete_jobs += [j["metadata"]["name"] for j in jobs if not _deleting(j) and not _finished(j)]
        return
    spec = job.spec
    rp = spec.run_policy

    current_name = builders.batch_job_name(name, attempt) if attempt else None
    current = next((j for j in jobs if j["metadata"]["name"] == current_name and not _deleting(j)), None)
    # Jobs of earlier attempts (a restart interrupted half way, a stale watch) go.
    plan.delete_jobs += [
        j["metadata"]["name"] for j in jobs
        if j["metadata"]["name"] != current_name and not _deleting(j) and (_attempt_of(j) or 0) < max(attempt, 1)
    ]

    _check_spec_change(current_hashes, current, w)

    # Conditions are the operator's alone; status.phase is also written by the trainer's
    # reporter, so a late report from a dying pod must not revive a finished job.
    finished = next((t for t in TERMINAL if (w.condition(t) or {}).get("status") == "True"), None)
    if finished and phase != finished:
        c = w.condition(finished) or {}
        w.set("phase", finished)
        w.set("reason", c.get("reason"))
        w.set("message", c.get("message"))
        phase = finished
    if phase in TERMINAL:
        if rp.ttl_seconds_after_finished is not None:
            done = parse_time(status.get("completionTime")) or now
            due = done + dt.timedelta(seconds=rp.ttl_seconds_after_finished)
            if now >= due:
                plan.delete_self = True
            else:
                plan.requeue((due - now).total_seconds())
        return

    if phase is None:
        w.transition("Pending", "Accepted", "spec is valid; creating the job's resources")
        w.set("attempt", 1)
        w.set("restarts", int(status.get("restarts") or 0))
        plan.requeue(0)
        return

    # activeDeadlineSeconds: wall time since the job first started, across attempts.
    start = parse_time(status.get("startTime"))
    if rp.active_deadline_seconds is not None and start is not None:
        due = start + dt.timedelta(seconds=rp.active_deadline_seconds)
        if now >= due:
            w.transition("Failed", "DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds ({rp.active_deadline_seconds}s)")
            if current is not None and not _finished(current):
                plan.delete_jobs.append(current["metadata"]["name"])
            return
        plan.requeue((due - now).total_seconds())

    if current is None:
        _no_current_job(spec, status, attempt, now, settings, w, plan)
        return

    w.set("activeJob", current["metadata"]["name"])
    attempt_pods = [p for p in pods if _attempt_of(p) == attempt]
    job_suspended = bool((current.get("spec") or {}).get("suspend"))
    complete = _true(current, "Complete") or _true(current, "SuccessCriteriaMet")

    if complete:
        w.transition("Succeeded", "Completed", f"all {spec.distributed.nodes} pods of attempt {attempt} finished")
        return

    if spec.suspend:
        if spec.queue_name:
            # Kueue unsuspends any Job whose workload is admitted, so suspending a queued
            # Job would fight it: end the attempt instead (pods get SIGTERM and checkpoint)
            # and start a fresh, uncounted attempt on resume.
            plan.delete_jobs.append(current["metadata"]["name"])
            w.set("attempt", attempt + 1)
            w.set("activeJob", None)
        elif not job_suspended:
            plan.suspend_job = (current["metadata"]["name"], True)
        w.transition("Suspended", "Suspended", "spec.suspend is true: pods checkpoint and stop; set it to false to resume from the checkpoint")
        return

    if job_suspended:
        if spec.queue_name:
            if phase in ACTIVE or (phase == "Queued" and status.get("reason") == "Preempted"):
                w.transition("Queued", "Preempted", f"Kueue suspended the Job (queue {spec.queue_name}); it resumes from the last checkpoint when re-admitted")
            else:
                w.transition("Queued", "WaitingForAdmission", f"waiting for Kueue to admit the Job in queue {spec.queue_name}")
        else:
            plan.suspend_job = (current["metadata"]["name"], False)
            w.transition("Initializing", "Resuming", "spec.suspend is false: resuming from the last checkpoint")
        return

    failure = classify_attempt_failure(attempt_pods, current)
    if failure is None:
        bad_image = _permanent_image_error(attempt_pods)
        if bad_image:
            failure = Failure("permanent", "ImagePullFailed", bad_image)
    if failure is not None:
        _handle_failure(failure, current, spec, status, attempt, settings, w, plan)
        return

    _active(spec, status, attempt, attempt_pods, w)


def _no_current_job(spec, status, attempt, now, settings, w: _StatusWriter, plan: Plan) -> None:
    restarting = w.condition("Restarting")
    if restarting is not None and restarting.get("status") == "True":  # the condition: see above
        c = restarting
        since = parse_time(c.get("lastTransitionTime"))
        counted = c.get("reason") != "Preempted"
        wait = backoff_seconds(spec.run_policy.backoff_seconds, int(status.get("restarts") or 0), counted, settings.max_backoff_seconds)
        if since is not None:
            due = since + dt.timedelta(seconds=wait)
            if now < due:
                plan.requeue((due - now).total_seconds())
                return
    if spec.suspend:
        w.transition("Suspended", "Suspended", "spec.suspend is true; the job starts when it is set to false")
        return
    plan.create_attempt = attempt


def _handle_failure(failure: Failure, current, spec, status, attempt, settings, w: _StatusWriter, plan: Plan) -> None:
    rp = spec.run_policy
    restarts = int(status.get("restarts") or 0)
    job_name = current["metadata"]["name"]
    if failure.kind == "permanent":
        w.transition("Failed", failure.reason, failure.message)
        if not _finished(current):
            plan.delete_jobs.append(job_name)
        return
    counted = failure.kind == "transient"
    if counted and restarts >= rp.max_restarts:
        w.transition(
            "Failed",
            "BackoffLimitExceeded",
            f"the gang failed {restarts + 1} times (maxRestarts {rp.max_restarts}); last failure: {failure.reason}: {failure.message}",
        )
        if not _finished(current):
            plan.delete_jobs.append(job_name)
        return
    new_restarts = restarts + (1 if counted else 0)
    wait = backoff_seconds(rp.backoff_seconds, new_restarts, counted, settings.max_backoff_seconds)
    note = f"restart {new_restarts}/{rp.max_restarts}" if counted else "restart not counted against maxRestarts"
    w.transition("Restarting", failure.reason, f"{failure.message}; {note}; attempt {attempt + 1} starts in {wait}s from the last checkpoint")
    w.set("restarts", new_restarts)
    w.set("attempt", attempt + 1)
    w.set("activeJob", None)
    plan.delete_jobs.append(job_name)
    plan.restart_counted = counted
    plan.requeue(wait)


def _active(spec, status, attempt, pods, w: _StatusWriter) -> None:
    nodes = spec.distributed.nodes
    live = [p for p in pods if not _deleting(p)]
    running = sum(1 for p in live if _running(p))
    phase = status.get("phase")
    if phase == "Exporting":
        w.transition("Exporting", "Exporting", "the trainer is exporting the model")
        return
    if running >= nodes:
        if phase == "Running" and status.get("reason") == "TrainingStarted":
            return
        # The trainer writes phase Running itself with its first progress report.
        if phase == "Running" and (status.get("progress") or {}).get("updatedAt"):
            w.transition("Running", "TrainingStarted", f"all {nodes} pods running; the trainer reports progress")
        else:
            w.transition("Running", "PodsRunning", f"all {nodes} pods of attempt {attempt} are running")
        return
    if phase == "Running" and (status.get("progress") or {}).get("updatedAt") and running:
        return  # the trainer reported; a pod view lagging behind is no news
    problem = pods_problem(live)
    if problem:
        w.transition("Initializing", problem[0], problem[1])
    else:
        w.transition("Initializing", "PodsStarting", f"{running}/{nodes} pods of attempt {attempt} running")


def _check_spec_change(current_hashes: dict[str, str], current, w: _StatusWriter) -> None:
    if current is None:
        return
    recorded = ((current.get("metadata") or {}).get("annotations") or {}).get(builders.ANNOTATION_SPEC_HASHES)
    if not recorded:
        return
    try:
        old = json.loads(recorded)
    except ValueError:
        return
    changed = sorted(k for k in set(current_hashes) | set(old) if current_hashes.get(k) != old.get(k))
    c = w.condition(SPEC_CHANGE_IGNORED)
    if changed:
        fields = ", ".join(f"spec.{f}" for f in changed)
        msg = (f"{fields} changed after the job started; the job keeps running the spec it started with "
               f"(only spec.suspend and spec.runPolicy may change). Delete and re-create the FineTuneJob to apply it.")
        if w.set_condition(SPEC_CHANGE_IGNORED, "True", SPEC_CHANGE_IGNORED, msg):
            w.plan.events.append(Event("Warning", SPEC_CHANGE_IGNORED, msg))
    elif c is not None and c.get("status") == "True":
        w.set_condition(SPEC_CHANGE_IGNORED, "False", "SpecRestored", "the spec matches the one the job started with")
