"""One observation of a FineTuneSweep and its trials -> what to do. Pure: no I/O; ``now`` is given.

The sweep's status is the study: every trial is recorded (index, parameters,
phase, intermediate and final objective) *before* its FineTuneJob is created,
with a name derived from its index (``<sweep>-t<index>``). So the same
observation twice, or an operator restart anywhere in between, never starts a
trial twice: a recorded trial without its FineTuneJob is created again under the
same name (a create that meets an existing one adopts it), and the next trial's
parameters are suggested from the recorded ones only.

A step, in order:
1. a spec the model rejects fails the sweep (InvalidSpec);
2. each unfinished trial takes what its FineTuneJob reports: phase, the latest
   intermediate objective (status.progress), the final one (status.output.metrics);
3. early stopping prunes running trials that are clearly worse (their
   FineTuneJobs are suspended: the trainer checkpoints on SIGTERM and stops);
4. more failed trials than maxFailedTrials fail the sweep;
5. free slots (parallelism) get new trials, until maxTrials are recorded;
6. when every trial is finished the sweep succeeds with its bestTrial
   (or fails when none succeeded).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from pydantic import ValidationError

from kubetune_api import spec as job_api
from kubetune_api import sweep as api
from kubetune_api.contract import validation_messages
from kubetune_api.sweep import BestTrial, FineTuneSweepSpec, IntermediateResult, TrialStatus

from . import pruning, search

LABEL_SWEEP = "kubetune.io/sweep"  # on each trial's FineTuneJob: the sweep's name
LABEL_TRIAL = "kubetune.io/trial"  # and its trial index

# Reasons (CamelCase, stable): on the sweep and on its trials.
INVALID_SPEC = "InvalidSpec"
TRIALS_RUNNING = "TrialsRunning"
ALL_TRIALS_DONE = "AllTrialsDone"
TOO_MANY_FAILED = "TooManyFailedTrials"
NO_SUCCESSFUL_TRIAL = "NoSuccessfulTrial"
EARLY_STOPPED = "EarlyStopped"
SWEEP_FAILED = "SweepFailed"
TRIAL_JOB_DELETED = "TrialJobDeleted"
OBJECTIVE_MISSING = "ObjectiveMissing"
RESULTS_WRITTEN = "ResultsWritten"  # condition type and reason: sweep.json and the plots are written
RESULTS_JOB_FAILED = "ResultsJobFailed"


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class SweepEvent:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class SweepObservation:
    """A frozen snapshot: the sweep and the FineTuneJobs it owns (by owner UID), by name.

    ``results_by_job``: the results of a finished sweep are written by a Job (on a
    cluster; ``results_job`` is that Job as observed, or None). ``kubetune run``
    writes them itself and leaves this False.
    """

    sweep: dict[str, Any]
    children: dict[str, dict[str, Any]]
    now: dt.datetime
    results_by_job: bool = False
    results_job: dict[str, Any] | None = None


@dataclasses.dataclass
class SweepDecision:
    status_patch: dict[str, Any] = dataclasses.field(default_factory=dict)  # merge patch of .status
    create: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # FineTuneJob manifests
    suspend: list[str] = dataclasses.field(default_factory=list)  # trial FineTuneJob names
    events: list[SweepEvent] = dataclasses.field(default_factory=list)
    create_results: bool = False  # create the Job that writes sweep.json and the plots (results_job.py)

    @property
    def empty(self) -> bool:
        return not (self.status_patch or self.create or self.suspend or self.events or self.create_results)


# ------------------------------------------------------------ a trial's job
def child_manifest(sweep: dict[str, Any], trial: TrialStatus) -> dict[str, Any]:
    """The FineTuneJob of a trial: the template with its parameters, owned by the sweep."""
    meta = sweep["metadata"]
    labels = {LABEL_SWEEP: meta["name"], LABEL_TRIAL: str(trial.index)}
    manifest: dict[str, Any] = {
        "apiVersion": job_api.API_VERSION,
        "kind": job_api.KIND,
        "metadata": {"name": trial.name, "labels": labels},
        "spec": api.trial_spec(sweep["spec"]["template"], trial.parameters, trial.name),
    }
    if meta.get("namespace"):
        manifest["metadata"]["namespace"] = meta["namespace"]
    if meta.get("uid"):
        manifest["metadata"]["ownerReferences"] = [{
            "apiVersion": api.API_VERSION, "kind": api.KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True,
        }]
    return manifest


def owned_by(child: dict[str, Any], sweep: dict[str, Any]) -> bool:
    """Claimed by owner UID, never by name or label alone."""
    uid = (sweep.get("metadata") or {}).get("uid")
    refs = (child.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(r.get("uid") == uid and r.get("controller") for r in refs)


def objective_of(child_status: dict[str, Any], metric: str) -> float | None:
    """The final objective a trial's FineTuneJob reports (status.output.metrics, else its last progress)."""
    metrics = (child_status.get("output") or {}).get("metrics") or {}
    value = metrics.get(metric)
    if value is None:
        value = (child_status.get("progress") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _observe_progress(trial: TrialStatus, child_status: dict[str, Any], metric: str) -> None:
    """Append the trial's latest intermediate objective when it is new (status.progress)."""
    progress = child_status.get("progress") or {}
    value, step = progress.get(metric), progress.get("step")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not isinstance(step, int):
        return
    last = trial.intermediate[-1] if trial.intermediate else None
    if last is not None and (step <= last.step or value == last.value):
        return  # nothing new: the same eval seen again, or the step moved without a new eval
    trial.intermediate.append(IntermediateResult(step=step, value=float(value)))
    del trial.intermediate[: -api.MAX_INTERMEDIATE]


def _best_step(trial: TrialStatus, direction: str) -> int | None:
    if not trial.intermediate:
        return None
    pick = min if direction == "minimize" else max
    return pick(trial.intermediate, key=lambda r: r.value).step


def _better(a: float, b: float, direction: str) -> bool:
    return a < b if direction == "minimize" else a > b


# ---------------------------------------------------------------- results
def results_settled(status: dict[str, Any]) -> bool:
    """A finished sweep whose results are written, failed to be written, or have nothing to show."""
    if status.get("phase") not in ("Succeeded", "Failed"):
        return False
    return bool(status.get("results") or not status.get("trials")
                or any(c.get("type") == RESULTS_WRITTEN for c in status.get("conditions") or []))


def _results(obs: SweepObservation, status: dict[str, Any], out: SweepDecision, now: str) -> None:
    """A finished sweep: create the results Job, then link its files (or say that it failed)."""
    from kubetune_api.sweep_results import result_uris

    from .results_job import job_outcome

    if results_settled(status):
        return
    if obs.results_job is None:
        out.create_results = True
        return
    outcome = job_outcome(obs.results_job)
    if outcome is None:
        return  # still running
    output = str(obs.sweep["spec"]["template"]["output"]["uri"])
    others = [c for c in status.get("conditions") or [] if c.get("type") != RESULTS_WRITTEN]
    if outcome == "Complete":
        message = f"sweep.json and plots written under {output}"
        out.status_patch = {"results": result_uris(output), "conditions": [*others, {
            "type": RESULTS_WRITTEN, "status": "True", "reason": RESULTS_WRITTEN, "message": message, "lastTransitionTime": now}]}
        out.events.append(SweepEvent("Normal", RESULTS_WRITTEN, message))
        return
    failed: dict[str, Any] = next((c for c in (obs.results_job.get("status") or {}).get("conditions") or [] if c.get("type") == "Failed"), {})
    name = (obs.results_job.get("metadata") or {}).get("name")
    message = f"Job {name} failed ({failed.get('reason') or 'Failed'}: {failed.get('message') or ''}); see its pod's log"
    out.status_patch = {"conditions": [*others, {
        "type": RESULTS_WRITTEN, "status": "False", "reason": RESULTS_JOB_FAILED, "message": message, "lastTransitionTime": now}]}
    out.events.append(SweepEvent("Warning", RESULTS_JOB_FAILED, message))


# ---------------------------------------------------------------- decide
def decide(obs: SweepObservation) -> SweepDecision:
    sweep = obs.sweep
    meta = sweep.get("metadata") or {}
    status = dict(sweep.get("status") or {})
    now = rfc3339(obs.now)
    out = SweepDecision()
    if status.get("phase") in ("Succeeded", "Failed"):
        if obs.results_by_job:
            _results(obs, status, out, now)
        return out
    try:
        spec = FineTuneSweepSpec.model_validate(sweep.get("spec") or {}, by_alias=True, by_name=False)
    except ValidationError as e:
        message = "; ".join(validation_messages(e, "spec"))
        out.status_patch = {"phase": "Failed", "reason": INVALID_SPEC, "message": message[:4000], "completionTime": now,
                            "observedGeneration": meta.get("generation")}
        out.events.append(SweepEvent("Warning", INVALID_SPEC, message))
        return out

    trials = [TrialStatus.model_validate(t) for t in status.get("trials") or []]
    best = BestTrial.model_validate(status["bestTrial"]) if status.get("bestTrial") else None
    direction, metric = spec.objective.direction, spec.objective.metric
    total = search.max_trials(spec)

    # 2. what each unfinished trial's FineTuneJob reports
    for t in trials:
        if t.phase in api.TRIAL_DONE_PHASES:
            continue
        child = obs.children.get(t.name)
        if child is None:
            if t.phase == "Running":  # it ran, and someone deleted it
                t.phase, t.reason, t.completion_time = "Failed", TRIAL_JOB_DELETED, now
                t.message = f"FineTuneJob {t.name} was deleted while it ran"
                out.events.append(SweepEvent("Warning", "TrialFailed", f"{t.name}: {t.message}"))
            else:
                out.create.append(child_manifest(sweep, t))  # recorded, not created yet (or lost): create
            continue
        cs = child.get("status") or {}
        _observe_progress(t, cs, metric)
        t.best_step = _best_step(t, direction)
        phase = cs.get("phase")
        if phase == "Succeeded":
            t.objective = objective_of(cs, metric)
            t.completion_time = cs.get("completionTime") or now
            if t.objective is None:
                t.phase, t.reason = "Failed", OBJECTIVE_MISSING
                t.message = f"the trial reported no {metric} (status.output.metrics); does it have eval data?"
                out.events.append(SweepEvent("Warning", "TrialFailed", f"{t.name}: {t.message}"))
                continue
            t.phase = "Succeeded"
            out.events.append(SweepEvent("Normal", "TrialSucceeded", f"{t.name}: {metric}={t.objective:.6g} {t.parameters}"))
            if best is None or _better(t.objective, best.objective, direction):
                output = cs.get("output") or {}
                best = BestTrial(name=t.name, parameters=t.parameters, objective=t.objective, output_uri=t.output_uri,
                                 adapter_uri=output.get("adapterUri"), merged_uri=output.get("mergedUri"),
                                 summary_uri=output.get("summaryUri"))
        elif phase == "Failed":
            t.phase, t.reason, t.completion_time = "Failed", cs.get("reason") or "Failed", cs.get("completionTime") or now
            t.message = cs.get("message")
            out.events.append(SweepEvent("Warning", "TrialFailed", f"{t.name}: {t.reason}: {t.message or ''}".strip()))
        else:
            t.phase = "Running"

    # 3. early stopping
    for name, why in pruning.to_prune(trials, spec.early_stopping, direction).items():
        t = next(t for t in trials if t.name == name)
        t.phase, t.reason, t.message, t.completion_time = "Pruned", EARLY_STOPPED, why, now
        t.objective = t.intermediate[-1].value if t.intermediate else None
        out.suspend.append(name)
        out.events.append(SweepEvent("Normal", "TrialPruned", f"{name}: {why}"))

    failed = sum(t.phase == "Failed" for t in trials)
    phase, reason, message = "Running", TRIALS_RUNNING, ""
    completion = None
    if failed > spec.max_failed_trials:
        # 4. too many failures: stop what still runs
        phase, reason = "Failed", TOO_MANY_FAILED
        message = f"{failed} trials failed, more than maxFailedTrials ({spec.max_failed_trials})"
        for t in trials:
            if t.phase in ("Pending", "Running"):
                t.phase, t.reason, t.message, t.completion_time = "Pruned", SWEEP_FAILED, message, now
                if t.name in obs.children:
                    out.suspend.append(t.name)
        out.create = []
    else:
        # 5. new trials in the free slots
        active = sum(t.phase in ("Pending", "Running") for t in trials)
        while active < spec.parallelism and len(trials) < total:
            index = len(trials)
            name = api.trial_name(meta["name"], index)
            params = search.suggest(spec, trials, index)
            t = TrialStatus(name=name, index=index, parameters=params, phase="Pending", start_time=now,
                            output_uri=api.trial_output_uri(sweep["spec"]["template"], name))
            trials.append(t)
            out.create.append(child_manifest(sweep, t))
            out.events.append(SweepEvent("Normal", "TrialStarted", f"{name}: {params}"))
            active += 1
        # 6. done?
        if len(trials) >= total and all(t.phase in api.TRIAL_DONE_PHASES for t in trials):
            completion = now
            if best is not None:
                phase, reason = "Succeeded", ALL_TRIALS_DONE
                message = f"best trial {best.name}: {metric}={best.objective:.6g} with {best.parameters}"
            else:
                phase, reason, message = "Failed", NO_SUCCESSFUL_TRIAL, "no trial finished with an objective"
        else:
            message = f"{active} trial(s) running, {sum(t.phase in api.TRIAL_DONE_PHASES for t in trials)} of {total} finished"

    done = sum(t.phase in api.TRIAL_DONE_PHASES for t in trials)
    new_status: dict[str, Any] = {
        "phase": phase, "reason": reason, "message": message,
        "trials": [t.model_dump(by_alias=True, exclude_none=True) for t in trials],
        "progress": f"{done}/{total}",
        "startTime": status.get("startTime") or now,
        "observedGeneration": meta.get("generation"),
    }
    if best is not None:
        new_status["bestTrial"] = best.model_dump(by_alias=True, exclude_none=True)
    if completion:
        new_status["completionTime"] = completion
        new_status["conditions"] = [{
            "type": "Complete" if phase == "Succeeded" else "Failed", "status": "True", "reason": reason,
            "message": message, "lastTransitionTime": now,
        }]
        out.events.append(SweepEvent("Normal" if phase == "Succeeded" else "Warning", f"Sweep{phase}", message))
    changed = {k: v for k, v in new_status.items() if status.get(k) != v}
    # The message alone changing (counts) is worth a write only with something else.
    if set(changed) - {"message"}:
        out.status_patch = changed
    return out
