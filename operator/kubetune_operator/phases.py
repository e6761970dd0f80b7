"""The phase machine, as a pure function: an observation -> what to do next.

``decide(observation)`` reads one frozen :class:`~kubetune_operator.observe.Observation`
(a FineTuneJob, the batch Jobs and pods it owns as the API shows them, the
time, the settings) and returns a :class:`Decision`: a status merge-patch, the
Kubernetes Events to post, and the few actions the handlers perform (create an
attempt, delete old attempts, (un)suspend a Job, delete the finished
FineTuneJob). No I/O: the handlers do that, and the unit tests drive this
function directly. :func:`attempt_spec` is the other pure choice: which spec an
attempt runs.

Phases: Pending -> Queued (Kueue holds the suspended Job) -> Initializing
(pods starting, fetching) -> Running -> Exporting -> Succeeded | Failed, plus
Suspended and Restarting. Every phase has a condition of the same type, set
True on entry (the others turn False), with a stable CamelCase reason
(reasons.py).

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
from collections.abc import Mapping
from typing import Any

from kubetune_api import spec as api
from kubetune_operator import builders, lineage
from kubetune_operator import reasons as R
from kubetune_operator.observe import (
    Failure,
    Obj,
    Observation,
    attempt_of,
    classify_attempt_failure,
    condition_true,
    deleting,
    job_finished,
    permanent_image_error,
    pod_running,
    pods_problem,
    recorded_spec_hashes,
)
from kubetune_operator.report import TrainerReport
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status_writer import Event, StatusWriter, parse_time

# How often to look again while leftovers are in the way (watch events wake the loop sooner).
LEFTOVER_POLL_SECONDS = 5.0
# Beyond a pod's grace period, how long an attempt still waits for the previous one's pods.
LEFTOVER_MARGIN_SECONDS = 30
CONFIRM_AT_MOST = 10  # leftovers read back from the API per poll while an attempt waits on them
FORBIDDEN_BACKOFF_SECONDS = 5


@dataclasses.dataclass
class Decision:
    """What one pass decided: the status patch, the events, and the actions to take."""

    status_patch: dict[str, Any] = dataclasses.field(default_factory=dict)
    events: list[Event] = dataclasses.field(default_factory=list)
    create_attempt: int | None = None  # create the per-job objects (if missing) and this attempt's Job
    delete_jobs: list[str] = dataclasses.field(default_factory=list)  # batch Job names, propagation Background
    suspend_job: tuple[str, bool] | None = None  # (batch Job name, spec.suspend value)
    delete_self: bool = False  # ttlSecondsAfterFinished elapsed
    requeue_after: float | None = None  # seconds; None: wait for the next event or resync
    # spec.model.from resolved (with create_attempt): the model the attempt runs, when built from the live spec
    resolution: lineage.Resolution | None = None
    # A new job's first attempt: create its objects first, then decide again and write the
    # status that says how it went (this decision's status patch and Events are not written).
    status_after_create: bool = False
    # What the transition was about, for metrics: (phase, reason) entered, and restart kind.
    entered: tuple[str, str] | None = None
    restart_counted: bool | None = None
    # Leftovers the cache has shown in the way for a poll interval or more: read them from the API
    # before waiting again (a cache can hold an object whose DELETED event it never got). (kind, name)
    confirm_gone: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def requeue(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    @property
    def empty(self) -> bool:
        return not (self.status_patch or self.events or self.create_attempt or self.delete_jobs
                    or self.suspend_job or self.delete_self)


def backoff_seconds(base: int, restarts: int, counted: bool, cap: int) -> int:
    """Wait before the next attempt: base for uncounted restarts, doubling per counted restart."""
    if not counted or restarts <= 1:
        return min(base, cap)
    return int(min(base * 2 ** (restarts - 1), cap))


# ----------------------------------------------------------- which spec
@dataclasses.dataclass(frozen=True)
class AttemptSpec:
    """What an attempt is built from."""

    source: dict[str, Any]  # the FineTuneJob (its spec possibly the one stored at the start)
    spec_hashes: str | None  # the hashes recorded at the start; None: compute them from source


def attempt_spec(ftj: Obj, attempt: int, config_map: Obj | None) -> AttemptSpec:
    """The spec attempt ``attempt`` runs: the first runs the live spec; restarts run the spec
    the job started with (kept in its ConfigMap), with the live mutable fields (runPolicy,
    suspend), whatever happened to the spec since."""
    if attempt <= 1 or config_map is None:
        return AttemptSpec(source=dict(ftj), spec_hashes=None)
    stored_spec = dict(builders.manifest_from_config_map(config_map)["spec"])
    live_spec = ftj.get("spec") or {}
    for field in builders.MUTABLE_SPEC_FIELDS:
        if field in live_spec:
            stored_spec[field] = live_spec[field]
    recorded = ((config_map.get("metadata") or {}).get("annotations") or {}).get(builders.ANNOTATION_SPEC_HASHES)
    return AttemptSpec(source={**ftj, "spec": stored_spec}, spec_hashes=recorded)


# ---------------------------------------------------------------- decide
def decide(observation: Observation) -> Decision:
    """What to do next for one FineTuneJob, from what was observed. Pure."""
    decision = Decision()
    meta = observation.metadata
    if meta.get("deletionTimestamp"):
        return decision  # clean-up is the garbage collector's business
    writer = StatusWriter(observation.status, observation.now, meta.get("generation"))
    try:
        _decide(observation, writer, decision)
        if observation.status.get("phase") is None and writer.get("phase") is None:
            if decision.create_attempt == 1 and not (decision.delete_jobs or decision.suspend_job):
                decision.status_after_create = True
            else:  # a new job that cannot start at once: say so
                writer.transition(R.PENDING, R.ACCEPTED, "spec is valid; creating the job's resources")
    finally:
        decision.status_patch = writer.finish()
        decision.events = writer.events
        decision.entered = writer.entered
    return decision


def _decide(obs: Observation, w: StatusWriter, d: Decision) -> None:
    status = obs.status
    phase = status.get("phase")
    attempt = int(status.get("attempt") or 0)
    name = str(obs.metadata.get("name", ""))
    now = obs.now

    # Spec the operator cannot run: Failed/InvalidSpec, never a crash loop.
    job = obs.parsed.job
    if job is None:
        if phase not in R.TERMINAL:
            w.transition(R.FAILED, R.INVALID_SPEC, obs.parsed.error or "invalid spec")
            d.delete_jobs += [_name(j) for j in obs.jobs if not deleting(j) and not job_finished(j)]
        return
    spec = job.spec
    rp = spec.run_policy
    if phase is None:
        # A new job. Its first attempt needs no record in status before its Job exists: the Job's
        # name is fixed (<name>-a1) and claimed by this FineTuneJob's UID, so an operator that
        # stops in between adopts it. The first status write says what came of it (the Job's
        # state, or Pending and why it cannot start): one write per job start, not two.
        attempt = 1

    current_name = builders.batch_job_name(name, attempt) if attempt else None
    current = next((j for j in obs.jobs if _name(j) == current_name and not deleting(j)), None)
    # Jobs of earlier attempts (a restart interrupted half way, a stale watch) go.
    d.delete_jobs += [
        _name(j) for j in obs.jobs
        if _name(j) != current_name and not deleting(j) and (attempt_of(j) or 0) < max(attempt, 1)
    ]

    _check_spec_change(current_hashes=obs.parsed.hashes, current=current, w=w)
    _copy_report(obs.report, status, w)

    # Conditions are the operator's record of a finished job: a phase that disagrees with
    # them (an older operator let pods write status.phase) is put back.
    finished = next((t for t in R.TERMINAL if w.condition_true(t)), None)
    if finished and phase != finished:
        c = w.condition(finished) or {}
        w.set("phase", finished)
        w.set("reason", c.get("reason"))
        w.set("message", c.get("message"))
        phase = finished
    if phase in R.TERMINAL:
        if rp.ttl_seconds_after_finished is not None:
            done = parse_time(status.get("completionTime")) or now
            due = done + dt.timedelta(seconds=rp.ttl_seconds_after_finished)
            if now >= due:
                d.delete_self = True
            else:
                d.requeue((due - now).total_seconds())
        return

    if phase is None:
        w.set("attempt", attempt)
        w.set("restarts", int(status.get("restarts") or 0))

    # activeDeadlineSeconds: wall time since the job first started, across attempts.
    start = parse_time(status.get("startTime"))
    if rp.active_deadline_seconds is not None and start is not None:
        due = start + dt.timedelta(seconds=rp.active_deadline_seconds)
        if now >= due:
            w.transition(R.FAILED, R.DEADLINE_EXCEEDED, f"the job ran longer than activeDeadlineSeconds ({rp.active_deadline_seconds}s)")
            if current is not None and not job_finished(current):
                d.delete_jobs.append(_name(current))
            return
        d.requeue((due - now).total_seconds())

    if current is None:
        # Conditions are the operator's record of what ran.
        ran = any(w.condition_true(p) for p in (*R.ACTIVE, R.QUEUED, R.SUSPENDED)) and not w.condition_true(R.RESTARTING)
        if current_name and status.get("activeJob") == current_name and ran:
            _job_vanished(job_name=current_name, spec=spec, attempt=attempt, settings=obs.settings, w=w, d=d)
            return
        _no_current_job(obs=obs, spec=spec, attempt=attempt, w=w, d=d)
        return

    if w.condition_true(R.ATTEMPT_BLOCKED):
        w.set_condition(R.ATTEMPT_BLOCKED, "False", R.ATTEMPT_CREATED, f"Job {_name(current)} of attempt {attempt} exists")
    w.set("activeJob", _name(current))
    attempt_pods = [p for p in obs.pods if attempt_of(p) == attempt]
    job_suspended = bool((current.get("spec") or {}).get("suspend"))

    if condition_true(current, "Complete") or condition_true(current, "SuccessCriteriaMet"):
        w.transition(R.SUCCEEDED, R.COMPLETED, f"all {spec.distributed.nodes} pods of attempt {attempt} finished")
        return

    if spec.suspend:
        if spec.queue_name:
            # Kueue unsuspends any Job whose workload is admitted, so suspending a queued
            # Job would fight it: end the attempt instead (pods get SIGTERM and checkpoint)
            # and start a fresh, uncounted attempt on resume.
            d.delete_jobs.append(_name(current))
            w.set("attempt", attempt + 1)
            w.set("activeJob", None)
        elif not job_suspended:
            d.suspend_job = (_name(current), True)
        w.transition(R.SUSPENDED, R.SUSPENDED_REASON,
                     "spec.suspend is true: pods checkpoint and stop; set it to false to resume from the checkpoint")
        return

    if job_suspended:
        if spec.queue_name:
            if phase in R.ACTIVE or (phase == R.QUEUED and status.get("reason") == R.PREEMPTED):
                w.transition(R.QUEUED, R.PREEMPTED,
                             f"Kueue suspended the Job (queue {spec.queue_name}); it resumes from the last checkpoint when re-admitted")
            else:
                w.transition(R.QUEUED, R.WAITING_FOR_ADMISSION, f"waiting for Kueue to admit the Job in queue {spec.queue_name}")
        else:
            d.suspend_job = (_name(current), False)
            w.transition(R.INITIALIZING, R.RESUMING, "spec.suspend is false: resuming from the last checkpoint")
        return

    failure = classify_attempt_failure(attempt_pods, current)
    if failure is None:
        bad_image = permanent_image_error(attempt_pods)
        if bad_image:
            failure = Failure("permanent", R.IMAGE_PULL_FAILED, bad_image)
    if failure is not None:
        _handle_failure(failure=failure, current=current, spec=spec, status=status, attempt=attempt, settings=obs.settings, w=w, d=d)
        return

    _active(spec=spec, status=status, attempt=attempt, pods=attempt_pods, report=obs.report, w=w)


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def _job_vanished(*, job_name: str, spec: api.FineTuneJobSpec, attempt: int, settings: OperatorSettings,
                  w: StatusWriter, d: Decision) -> None:
    """The running attempt's Job is gone (deleted by hand, or by anything but the operator): restart visibly."""
    wait = backoff_seconds(spec.run_policy.backoff_seconds, 0, False, settings.max_backoff_seconds)
    w.transition(R.RESTARTING, R.JOB_DELETED,
                 f"Job {job_name} was deleted while attempt {attempt} ran; restart not counted against maxRestarts; "
                 f"attempt {attempt + 1} starts in {wait}s from the last checkpoint")
    w.set("attempt", attempt + 1)
    w.set("activeJob", None)
    d.restart_counted = False
    d.requeue(wait)


def _blocked(w: StatusWriter, reason: str, message: str) -> None:
    """The next attempt cannot start yet: say why once (condition + Event), not on every pass."""
    if w.set_condition(R.ATTEMPT_BLOCKED, "True", reason, message):
        w.event("Warning" if reason == R.FORBIDDEN else "Normal", reason, message)


def _in_the_way(obs: Observation, job_name: str) -> tuple[str, list[str]] | None:
    """What must be gone before the Job ``job_name`` may be created: (reason, object names)."""
    leftovers = [f"Job {_name(j)}" for j in obs.foreign_jobs if _name(j) == job_name]
    rejection = obs.rejection
    if rejection is not None and rejection.code == 409 and obs.now < rejection.at + dt.timedelta(seconds=LEFTOVER_POLL_SECONDS):
        leftovers.append(f"{rejection.kind} {rejection.name}")
    leftovers += [f"pod {_name(p)}" for p in obs.foreign_pods]
    if leftovers:
        return R.WAITING_FOR_LEFTOVERS, leftovers
    previous = [f"pod {_name(p)}" for p in obs.pods if (attempt_of(p) or 0) < int(obs.status.get("attempt") or 0)]
    if previous:
        return R.WAITING_FOR_PREVIOUS_ATTEMPT, previous
    return None


def _no_current_job(*, obs: Observation, spec: api.FineTuneJobSpec, attempt: int, w: StatusWriter, d: Decision) -> None:
    status, now, settings = obs.status, obs.now, obs.settings
    restarting = w.condition(R.RESTARTING)
    if restarting is not None and restarting.get("status") == "True":  # the condition: see above
        since = parse_time(restarting.get("lastTransitionTime"))
        counted = restarting.get("reason") != R.PREEMPTED
        wait = backoff_seconds(spec.run_policy.backoff_seconds, int(status.get("restarts") or 0), counted, settings.max_backoff_seconds)
        if since is not None:
            due = since + dt.timedelta(seconds=wait)
            if now < due:
                d.requeue((due - now).total_seconds())
                return
    if spec.suspend:
        w.transition(R.SUSPENDED, R.SUSPENDED_REASON, "spec.suspend is true; the job starts when it is set to false")
        return
    job_name = builders.batch_job_name(str(obs.metadata.get("name", "")), attempt)
    # One gang at a time: a namesake's leftovers (collected asynchronously after its deletion) and
    # the pods of the previous attempt (checkpointing within their grace period) go first.
    blocking = _in_the_way(obs, job_name)
    if blocking is not None:
        since = parse_time((w.condition(R.ATTEMPT_BLOCKED) or {}).get("lastTransitionTime")) if w.condition_true(R.ATTEMPT_BLOCKED) else now
        limit = spec.run_policy.termination_grace_seconds + LEFTOVER_MARGIN_SECONDS
        reason, names = blocking
        bounded = reason == R.WAITING_FOR_PREVIOUS_ATTEMPT and since is not None and now >= since + dt.timedelta(seconds=limit)
        if not bounded:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            _blocked(w, reason, f"attempt {attempt} (Job {job_name}) waits until {shown} are gone")
            if since is not None and now >= since + dt.timedelta(seconds=LEFTOVER_POLL_SECONDS):
                cached = [("Job", _name(j)) for j in obs.foreign_jobs if _name(j) == job_name]
                cached += [("Pod", _name(p)) for p in (*obs.foreign_pods, *obs.pods) if f"pod {_name(p)}" in names]
                d.confirm_gone = cached[:CONFIRM_AT_MOST]
            d.requeue(LEFTOVER_POLL_SECONDS)
            return
    if not _resolve_from(obs=obs, spec=spec, attempt=attempt, w=w, d=d):
        return
    rejection = obs.rejection
    if rejection is not None and rejection.code == 422:
        w.transition(R.FAILED, R.invalid_object(rejection.kind),
                     f"the API server refused {rejection.kind} {rejection.name} as invalid: {rejection.message}")
        return
    if rejection is not None and rejection.code == 403:
        wait = min(FORBIDDEN_BACKOFF_SECONDS * 2 ** (rejection.count - 1), settings.max_backoff_seconds)
        _blocked(w, R.FORBIDDEN, f"the API server refused to create {rejection.kind} {rejection.name} "
                                 f"(retrying with backoff, {rejection.count} refusal(s) so far): {rejection.message}")
        due = rejection.at + dt.timedelta(seconds=wait)
        if now < due:
            d.requeue((due - now).total_seconds())
            return
    d.create_attempt = attempt


def _resolve_from(*, obs: Observation, spec: api.FineTuneJobSpec, attempt: int, w: StatusWriter, d: Decision) -> bool:
    """spec.model.from -> the earlier job's results (Decision.resolution). The first attempt
    cannot start without them: the job fails at once, naming why. Later attempts run the
    spec stored when the first started, so the earlier job may be gone by then."""
    ref = spec.model.from_
    if ref is None:
        return True
    earlier = lineage.earlier_from_object(obs.earlier) if obs.earlier is not None else None
    result = lineage.resolve(spec.model.model_dump(by_alias=True, exclude_none=True, mode="json"), spec.method.type, earlier,
                             name=ref.fine_tune_job, namespace=obs.metadata.get("namespace"))
    if isinstance(result, lineage.Refusal):
        if attempt <= 1:
            w.transition(R.FAILED, result.reason, result.message)
            return False
        return True
    d.resolution = result
    return True


def _handle_failure(
    *, failure: Failure, current: Obj, spec: api.FineTuneJobSpec, status: Mapping[str, Any], attempt: int,
    settings: OperatorSettings, w: StatusWriter, d: Decision,
) -> None:
    rp = spec.run_policy
    restarts = int(status.get("restarts") or 0)
    job_name = _name(current)
    if failure.kind == "permanent":
        w.transition(R.FAILED, failure.reason, failure.message)
        if not job_finished(current):
            d.delete_jobs.append(job_name)
        return
    counted = failure.kind == "transient"
    if counted and restarts >= rp.max_restarts:
        w.transition(
            R.FAILED,
            R.BACKOFF_LIMIT_EXCEEDED,
            f"the gang failed {restarts + 1} times (maxRestarts {rp.max_restarts}); last failure: {failure.reason}: {failure.message}",
        )
        if not job_finished(current):
            d.delete_jobs.append(job_name)
        return
    new_restarts = restarts + (1 if counted else 0)
    wait = backoff_seconds(rp.backoff_seconds, new_restarts, counted, settings.max_backoff_seconds)
    note = f"restart {new_restarts}/{rp.max_restarts}" if counted else "restart not counted against maxRestarts"
    w.transition(R.RESTARTING, failure.reason, f"{failure.message}; {note}; attempt {attempt + 1} starts in {wait}s from the last checkpoint")
    w.set("restarts", new_restarts)
    w.set("attempt", attempt + 1)
    w.set("activeJob", None)
    d.delete_jobs.append(job_name)
    d.restart_counted = counted
    d.requeue(wait)


def _copy_report(report: TrainerReport | None, status: Mapping[str, Any], w: StatusWriter) -> None:
    """Rank 0's checked report (progress, last checkpoint, output, memory plan) into status: only what changed.

    The report was verified and bounded by the report server (report.py); it never
    carries phase, conditions, restarts or attempt.
    """
    if report is None:
        return
    for key, reported in (("progress", report.progress), ("lastCheckpoint", report.last_checkpoint), ("output", report.output),
                          ("plan", report.plan)):
        current = status.get(key)
        if not isinstance(current, dict):
            current = {}
        changed = {k: v for k, v in reported.items() if current.get(k) != v}
        if key == "plan" and reported:  # one attempt's plan as a whole: an earlier attempt's numbers go
            changed.update({k: None for k in current if k not in reported})
        if changed:
            w.set(key, changed)  # a merge patch: keys not reported are left as they are


def _active(*, spec: api.FineTuneJobSpec, status: Mapping[str, Any], attempt: int, pods: list[Obj],
            report: TrainerReport | None, w: StatusWriter) -> None:
    nodes = spec.distributed.nodes
    live = [p for p in pods if not deleting(p)]
    running = sum(1 for p in live if pod_running(p))
    phase = status.get("phase")
    this_attempt = report is not None and report.attempt == attempt
    # Rank 0 of this attempt reported progress (an operator restart forgets reports; the
    # reason recorded in status remembers that training had started).
    reported = (this_attempt and bool(report and report.progress)) or (phase == R.RUNNING and status.get("reason") == R.TRAINING_STARTED)
    if phase == R.EXPORTING or (this_attempt and report is not None and report.stage == "exporting" and running):
        w.transition(R.EXPORTING, R.EXPORTING_REASON, "the trainer is exporting the model")
        return
    if running >= nodes:
        if reported:
            w.transition(R.RUNNING, R.TRAINING_STARTED, f"all {nodes} pods running; the trainer reports progress")
        else:
            w.transition(R.RUNNING, R.PODS_RUNNING, f"all {nodes} pods of attempt {attempt} are running")
        return
    if phase == R.RUNNING and reported and running:
        return  # the trainer reported; a pod view lagging behind is no news
    problem = pods_problem(live)
    if problem:
        w.transition(R.INITIALIZING, problem[0], problem[1])
    else:
        w.transition(R.INITIALIZING, R.PODS_STARTING, f"{running}/{nodes} pods of attempt {attempt} running")


def _check_spec_change(*, current_hashes: Mapping[str, str], current: Obj | None, w: StatusWriter) -> None:
    if current is None:
        return
    old = recorded_spec_hashes(current)
    if old is None:
        return
    changed = sorted(k for k in set(current_hashes) | set(old) if current_hashes.get(k) != old.get(k))
    if changed:
        fields = ", ".join(f"spec.{f}" for f in changed)
        msg = (f"{fields} changed after the job started; the job keeps running the spec it started with "
               f"(only spec.suspend and spec.runPolicy may change). Delete and re-create the FineTuneJob to apply it.")
        if w.set_condition(R.SPEC_CHANGE_IGNORED, "True", R.SPEC_CHANGE_IGNORED, msg):
            w.event("Warning", R.SPEC_CHANGE_IGNORED, msg)
    elif w.condition_true(R.SPEC_CHANGE_IGNORED):
        w.set_condition(R.SPEC_CHANGE_IGNORED, "False", R.SPEC_RESTORED, "the spec matches the one the job started with")
