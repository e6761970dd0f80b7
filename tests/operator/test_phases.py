"""The phase machine as a pure function: one observation (status, Jobs, pods, time) -> a decision. Fast, no I/O.

Decision and classification cases are tables: each row is one named situation
and what the operator must decide in it.
"""
import datetime as dt
import uuid

import pytest

from kubetune_operator import builders, observe, phases
from kubetune_operator.observe import Observation
from kubetune_operator.report import TrainerReport
from kubetune_operator.settings import OperatorSettings
from support.manifests import job_manifest

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
SETTINGS = OperatorSettings(max_backoff_seconds=100)


def ftj(status=None, generation=1, **spec):
    m = job_manifest("j", "ml", **spec)
    m["metadata"].update(uid=str(uuid.uuid4()), generation=generation)  # a new object each time
    if status is not None:
        m["status"] = status
    return m


def batch(f, attempt=1, suspend=False, conditions=()):
    job = builders.build_batch_job(f, SETTINGS, attempt)
    job["metadata"]["uid"] = f"job-uid-a{attempt}"
    job["spec"]["suspend"] = suspend
    job["status"] = {"conditions": [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions]}
    return observe.summarize(job)


def pod(index=0, attempt=1, phase="Running", state=None, conditions=(), reason=None, deleting=False):
    p = {
        "metadata": {"name": f"j-a{attempt}-{index}-x", "labels": {"kubetune.io/job": "j", "kubetune.io/attempt": str(attempt),
                                                                 "batch.kubernetes.io/controller-uid": f"job-uid-a{attempt}"}},
        "status": {"phase": phase, "conditions": list(conditions),
                   "containerStatuses": [{"name": "trainer", "state": state or ({"running": {}} if phase == "Running" else {})}]},
    }
    if reason:
        p["status"]["reason"] = reason
    if deleting:
        p["metadata"]["deletionTimestamp"] = "2026-01-01T11:00:00Z"
    return p


def terminated(code, reason="Error", message=""):
    return {"terminated": {"exitCode": code, "reason": reason, "message": message}}


def waiting(reason, message):
    return {"waiting": {"reason": reason, "message": message}}


def status(phase, reason="x", attempt=1, restarts=0, **extra):
    return {"phase": phase, "reason": reason, "attempt": attempt, "restarts": restarts, "activeJob": f"j-a{attempt}", "observedGeneration": 1,
            "conditions": [{"type": phase, "status": "True", "reason": reason, "message": "", "lastTransitionTime": "2026-01-01T11:59:00.000Z"}], **extra}


def decide(f, jobs=(), pods=(), now=NOW, **observed):
    return phases.decide(Observation.of(f, jobs=jobs, pods=pods, now=now, settings=SETTINGS, **observed))


def phase_reason(decision):
    return decision.status_patch.get("phase"), decision.status_patch.get("reason")


UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPUs"}
PREEMPTED_BY_SCHEDULER = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}


# ------------------------------------------------------------- start-up
def test_new_job_creates_attempt_one_then_writes_what_came_of_it():
    f = ftj()
    decision = decide(f)
    # Nothing to record before the Job (its name is fixed, it is claimed by UID): objects first.
    assert decision.create_attempt == 1 and decision.status_after_create
    # With its Job there, one status write: attempt 1, Initializing, never a Pending in between.
    after = decide(f, [batch(f)])
    assert not after.status_after_create and after.create_attempt is None
    assert phase_reason(after) == ("Initializing", "PodsStarting")
    assert after.status_patch["attempt"] == 1 and after.status_patch["restarts"] == 0 and after.status_patch["activeJob"] == "j-a1"
    assert after.status_patch["observedGeneration"] == 1 and "Pending" not in {c["type"] for c in after.status_patch["conditions"]}
    assert [(e.type, e.reason) for e in after.events] == [("Normal", "PodsStarting")]


@pytest.mark.parametrize(("observed", "reason"), [
    pytest.param({"rejection": observe.Rejection(code=403, kind="Job", name="j-a1", message="quota", at=NOW)}, "Forbidden", id="forbidden"),
    pytest.param({"rejection": observe.Rejection(code=409, kind="Service", name="j", message="Service j exists, being deleted", at=NOW)},
                 "WaitingForLeftovers", id="someone-elses-object"),
])
def test_new_job_that_cannot_start_at_once_goes_pending_and_says_why(observed, reason):
    decision = decide(ftj(), **observed)
    assert phase_reason(decision) == ("Pending", "Accepted") and decision.status_patch["attempt"] == 1
    assert decision.create_attempt is None and not decision.status_after_create
    assert next(c for c in decision.status_patch["conditions"] if c["type"] == "AttemptBlocked")["reason"] == reason
    assert ("Normal", "Accepted") in [(e.type, e.reason) for e in decision.events]


def test_new_job_with_an_invalid_object_fails_without_a_pending():
    decision = decide(ftj(), rejection=observe.Rejection(code=422, kind="Job", name="j-a1", message="invalid", at=NOW))
    assert phase_reason(decision) == ("Failed", "JobInvalid") and "Pending" not in {c["type"] for c in decision.status_patch["conditions"]}


def test_pending_job_creates_attempt_one_and_writes_nothing():
    decision = decide(ftj(status("Pending", "Accepted")))
    assert decision.create_attempt == 1 and not decision.status_patch


def test_suspended_before_start_creates_nothing():
    decision = decide(ftj(status("Pending", "Accepted"), suspend=True))
    assert decision.create_attempt is None and decision.status_patch["phase"] == "Suspended"


# ------------------------------------------------------- pods and phases
# (id, FineTuneJob status, pods of attempt 1 as (index, phase, state, conditions), expected (phase, reason), message part)
POD_STATE_CASES = [
    pytest.param(status("Queued", "WaitingForAdmission"), [(0, "Pending", None, ()), (1, "Pending", None, ())],
                 ("Initializing", "PodsStarting"), "0/2 pods", id="pods-pending-starting"),
    pytest.param(status("Queued", "WaitingForAdmission"), [(0, "Running", None, ()), (1, "Pending", None, [UNSCHEDULABLE])],
                 ("Initializing", "Unschedulable"), "no GPUs", id="unschedulable-pod-named"),
    pytest.param(status("Queued", "WaitingForAdmission"), [(0, "Running", None, ()), (1, "Pending", waiting("ErrImagePull", "not found"), ())],
                 ("Initializing", "ImagePullFailed"), "not found", id="image-pull-transient-waits"),
    pytest.param(status("Queued", "WaitingForAdmission"), [(0, "Running", None, ()), (1, "Pending", waiting("InvalidImageName", "bad ref"), ())],
                 ("Failed", "ImagePullFailed"), "bad ref", id="invalid-image-name-fails"),
    pytest.param(status("Queued", "WaitingForAdmission"), [(0, "Running", None, ()), (1, "Running", None, ())],
                 ("Running", "PodsRunning"), "all 2 pods of attempt 1", id="all-pods-running"),
]


@pytest.mark.parametrize(("st", "pod_specs", "expected", "message_part"), POD_STATE_CASES)
def test_pod_states_decide_the_phase(st, pod_specs, expected, message_part):
    f = ftj(st)
    pods = [pod(i, phase=ph, state=state, conditions=conds) for i, ph, state, conds in pod_specs]
    decision = decide(f, [batch(f)], pods)
    after = {**st, **decision.status_patch}
    assert (after["phase"], after["reason"]) == expected and "reason" in decision.status_patch
    assert message_part in decision.status_patch["message"]


def test_first_start_time_is_stamped():
    f = ftj(status("Queued", "WaitingForAdmission"))
    decision = decide(f, [batch(f)], [pod(0, phase="Pending"), pod(1, phase="Pending")])
    assert decision.status_patch["startTime"] == "2026-01-01T12:00:00.000Z"


def test_a_phase_written_by_an_older_operators_reporter_is_confirmed():
    f = ftj(status("Running", "TrainingStarted"))
    f["status"]["phase"] = "Exporting"  # pods could write status before the report endpoint
    decision = decide(f, [batch(f)], [pod(0), pod(1)])
    assert decision.status_patch["conditions"][-1]["type"] == "Exporting" and decision.events[0].reason == "Exporting"


# ------------------------------------------------------- rank 0's reports (report.py)
def test_a_report_of_this_attempt_confirms_training_and_its_progress_is_copied():
    f = ftj(status("Running", "PodsRunning", progress={"step": 3, "loss": 2.0}))
    rep = TrainerReport(attempt=1, stage="running", progress={"step": 4, "loss": 2.0, "updatedAt": "2026-01-01T11:59:59Z"},
                        last_checkpoint={"step": 4, "uri": "s3://b/out/checkpoints/step-000004"})
    decision = decide(f, [batch(f)], [pod(0), pod(1)], report=rep)
    assert decision.status_patch["reason"] == "TrainingStarted" and "reports progress" in decision.status_patch["message"]
    # Only what changed, as a merge patch: keys not reported stay.
    assert decision.status_patch["progress"] == {"step": 4, "updatedAt": "2026-01-01T11:59:59Z"}
    assert decision.status_patch["lastCheckpoint"] == {"step": 4, "uri": "s3://b/out/checkpoints/step-000004"}
    assert {"restarts", "attempt"}.isdisjoint(decision.status_patch)


def test_the_status_writer_puts_the_reported_memory_plan_in_status_as_a_whole():
    earlier = {"zeroStage": 3, "offload": "optimizer", "gradientCheckpointing": True, "microBatchSize": 1,
               "estimatedBytes": 70 * 2**30, "deviceBytes": 80 * 2**30, "device": "NVIDIA H100 80GB HBM3", "fits": True}
    f = ftj(status("Running", "TrainingStarted", progress={"step": 4}, plan=earlier))
    # this attempt runs where no plan could be made: only the decisions, no numbers
    rep = TrainerReport(attempt=1, stage="running", plan={"zeroStage": 2, "offload": "none", "gradientCheckpointing": True,
                                                          "microBatchSize": 1})
    patch = decide(f, [batch(f)], [pod(0), pod(1)], report=rep).status_patch
    assert patch["plan"] == {"zeroStage": 2, "offload": "none", "estimatedBytes": None, "deviceBytes": None, "device": None,
                             "fits": None}
    f["status"]["plan"] = {k: v for k, v in {**earlier, **patch["plan"]}.items() if v is not None}
    assert decide(f, [batch(f)], [pod(0), pod(1)], report=rep).empty  # the same plan again writes nothing


def test_the_same_report_twice_writes_nothing():
    rep = TrainerReport(attempt=1, stage="running", progress={"step": 4})
    f = ftj(status("Running", "TrainingStarted", progress={"step": 4, "loss": 1.0}))
    assert decide(f, [batch(f)], [pod(0), pod(1)], report=rep).empty


@pytest.mark.parametrize(("report_attempt", "expected"), [(1, ("Exporting", "Exporting")), (0, (None, None))],
                         ids=["this-attempt", "an-earlier-attempt"])
def test_the_exporting_stage_counts_only_from_this_attempt(report_attempt, expected):
    f = ftj(status("Running", "TrainingStarted"))
    decision = decide(f, [batch(f)], [pod(0), pod(1)], report=TrainerReport(attempt=report_attempt, stage="exporting"))
    assert phase_reason(decision) == expected


def test_a_report_never_changes_a_finished_job_or_the_operators_fields():
    st = status("Failed", "BackoffLimitExceeded", restarts=3)
    rep = TrainerReport(attempt=1, stage="exporting", progress={"step": 9}, output={"adapterUri": "s3://b/out/final/adapter"})
    decision = decide(ftj(st), [], report=rep)
    assert set(decision.status_patch) == {"progress", "output"} and not decision.events


def test_an_operator_restart_without_reports_keeps_training_started():
    f = ftj(status("Running", "TrainingStarted", progress={"step": 4}))
    assert decide(f, [batch(f)], [pod(0), pod(1)]).empty


# (id, spec overrides, FineTuneJob status, Job suspended, expected (phase, reason), expected suspend_job, event type)
KUEUE_AND_SUSPEND_CASES = [
    pytest.param({"queueName": "q"}, status("Pending", "Accepted"), True, ("Queued", "WaitingForAdmission"), None, "Normal",
                 id="kueue-waiting-never-unsuspended"),
    pytest.param({"queueName": "q"}, status("Running", "PodsRunning"), True, ("Queued", "Preempted"), None, "Warning",
                 id="kueue-preempted-running-job"),
    pytest.param({"suspend": True}, status("Running", "PodsRunning"), False, ("Suspended", "Suspended"), ("j-a1", True), "Normal",
                 id="suspend-patches-job"),
    pytest.param({}, status("Suspended", "Suspended"), True, ("Initializing", "Resuming"), ("j-a1", False), "Normal",
                 id="resume-patches-job"),
]


@pytest.mark.parametrize(("spec", "st", "job_suspended", "expected", "suspend_job", "event_type"), KUEUE_AND_SUSPEND_CASES)
def test_kueue_and_suspend(spec, st, job_suspended, expected, suspend_job, event_type):
    f = ftj(st, **spec)
    decision = decide(f, [batch(f, suspend=job_suspended)])
    assert phase_reason(decision) == expected
    assert decision.suspend_job == suspend_job
    assert decision.events[0].type == event_type


def test_kueue_managed_suspend_ends_the_attempt_uncounted():
    # Kueue would unsuspend a suspended admitted Job: the attempt ends and resumes as a new one.
    f = ftj(status("Running", "PodsRunning"), suspend=True, queueName="q")
    decision = decide(f, [batch(f)])
    assert decision.delete_jobs == ["j-a1"] and decision.status_patch["attempt"] == 2 and "restarts" not in decision.status_patch


# -------------------------------------------------------------- finishing
def test_complete_job_succeeds():
    f = ftj(status("Exporting", "Exporting"), runPolicy={"ttlSecondsAfterFinished": 60})
    decision = decide(f, [batch(f, conditions=[("Complete", "CompletionsReached", "")])])
    assert decision.status_patch["phase"] == "Succeeded" and decision.status_patch["completionTime"]


@pytest.mark.parametrize(("seconds_after", "requeue_after", "delete_self"), [
    pytest.param(0, 30, False, id="ttl-not-elapsed-requeues"),
    pytest.param(31, None, True, id="ttl-elapsed-deletes"),
])
def test_ttl_after_finished(seconds_after, requeue_after, delete_self):
    done = ftj(status("Succeeded", "Completed", completionTime="2026-01-01T11:59:30.000Z"), runPolicy={"ttlSecondsAfterFinished": 60})
    decision = decide(done, now=NOW + dt.timedelta(seconds=seconds_after))
    assert decision.delete_self is delete_self
    if requeue_after is not None:
        assert decision.requeue_after == pytest.approx(requeue_after)


@pytest.mark.parametrize(("now", "expected_reason", "delete_jobs", "requeue_after"), [
    pytest.param(NOW, "DeadlineExceeded", ["j-a1"], None, id="deadline-passed-fails"),
    pytest.param(NOW - dt.timedelta(seconds=100), None, [], 100, id="deadline-ahead-requeues"),
])
def test_deadline_exceeded(now, expected_reason, delete_jobs, requeue_after):
    f = ftj(status("Running", "PodsRunning", startTime="2026-01-01T11:00:00.000Z"), runPolicy={"activeDeadlineSeconds": 3600})
    decision = decide(f, [batch(f)], [pod(0), pod(1)], now=now)
    assert decision.status_patch.get("reason") == expected_reason and decision.delete_jobs == delete_jobs
    if requeue_after is not None:
        assert not decision.status_patch and decision.requeue_after == pytest.approx(requeue_after)


# --------------------------------------------------------------- failures
# (id, restarts so far, runPolicy, failed pods, expected phase/reason/restarts/attempt, counted, message parts, requeue)
FAILURE_CASES = [
    pytest.param(1, {"maxRestarts": 3, "backoffSeconds": 10}, [pod(0), pod(1, phase="Failed", state=terminated(137, "OOMKilled"))],
                 ("Restarting", "OOMKilled", 2, 2), True, ("restart 2/3", "memory limit"), 20, id="oom-counts-doubling-backoff"),
    pytest.param(0, {"maxRestarts": 0, "backoffSeconds": 5}, [pod(0, phase="Failed", state=terminated(75))],
                 ("Restarting", "Preempted", None, 2), False, ("not counted",), 5, id="exit-75-not-counted"),
    pytest.param(0, {"maxRestarts": 0, "backoffSeconds": 5},
                 [pod(0, phase="Failed", state=terminated(143), conditions=[PREEMPTED_BY_SCHEDULER])],
                 ("Restarting", "Preempted", None, 2), False, ("PreemptionByScheduler",), 5, id="disruption-target-not-counted"),
    pytest.param(2, {"maxRestarts": 2}, [pod(0, phase="Failed", state=terminated(1, message="Traceback...\nRuntimeError: boom"))],
                 ("Failed", "BackoffLimitExceeded", None, None), None, ("RuntimeError: boom",), None, id="max-restarts-exceeded"),
    pytest.param(0, {}, [pod(0, phase="Failed", state=terminated(3, message="step 0\nkubetune: error: ModelNotFound: hf://org/model has no config.json\n"))],
                 ("Failed", "ModelNotFound", None, None), None, ("no config.json",), None, id="exit-3-trainer-reason"),
]


@pytest.mark.parametrize(("restarts", "run_policy", "pods", "expected", "counted", "message_parts", "requeue_after"), FAILURE_CASES)
def test_failed_pods(restarts, run_policy, pods, expected, counted, message_parts, requeue_after):
    f = ftj(status("Running", "PodsRunning", restarts=restarts), runPolicy=run_policy)
    decision = decide(f, [batch(f)], pods)
    p = decision.status_patch
    phase, reason, new_restarts, attempt = expected
    assert (p["phase"], p["reason"]) == (phase, reason)
    assert p.get("restarts") == new_restarts  # None: not written (unchanged)
    assert p.get("attempt") == attempt
    assert decision.restart_counted is counted
    assert decision.delete_jobs == ["j-a1"]
    for part in message_parts:
        assert part in p["message"]
    if requeue_after is not None:
        assert decision.requeue_after == requeue_after


def test_job_controller_verdict_alone_fails_permanently():
    # The Job controller's verdict alone (pods already gone) is read too.
    f = ftj(status("Running", "PodsRunning"))
    verdict = ("Failed", "PodFailurePolicy", "Container trainer for pod ml/j-a1-0 failed with exit code 3 matching FailJob rule at index 0")
    decision = decide(f, [batch(f, conditions=[verdict])])
    assert phase_reason(decision) == ("Failed", "PermanentError")


def test_pods_deleted_by_the_job_controller_are_not_failures():
    f = ftj(status("Running", "PodsRunning"))
    decision = decide(f, [batch(f)], [pod(0), pod(1, phase="Failed", state=terminated(75), deleting=True)])
    assert decision.status_patch.get("phase") in (None, "Initializing")  # one pod is gone: not all running, no restart
    assert not decision.delete_jobs


def test_restart_waits_for_backoff_then_creates_next_attempt_once():
    st = status("Restarting", "PodFailed", attempt=2, restarts=2)
    st["conditions"][0]["lastTransitionTime"] = "2026-01-01T11:59:50.000Z"
    f = ftj(st, runPolicy={"maxRestarts": 3, "backoffSeconds": 10})
    decision = decide(f, [])
    assert decision.create_attempt is None and decision.requeue_after == pytest.approx(10)  # 10 * 2^(2-1) = 20s since 11:59:50
    assert decide(f, [], now=NOW + dt.timedelta(seconds=10)).create_attempt == 2
    # An old attempt still visible (deleting) is not "current"; a non-deleted one is removed.
    old = batch(f, attempt=1)
    assert decide(f, [old], now=NOW + dt.timedelta(seconds=10)).delete_jobs == ["j-a1"]


@pytest.mark.parametrize(("base", "restarts", "counted", "expected"), [
    pytest.param(30, 1, True, 30, id="first-restart-base"),
    pytest.param(30, 4, True, 240, id="doubles-per-counted-restart"),
    pytest.param(30, 20, True, 3600, id="capped"),
    pytest.param(30, 20, False, 30, id="uncounted-stays-base"),
])
def test_backoff(base, restarts, counted, expected):
    assert phases.backoff_seconds(base, restarts, counted, 3600) == expected


def test_a_late_trainer_report_cannot_revive_a_finished_job():
    # Failed (condition True) but a dying rank 0 wrote phase Running afterwards.
    st = status("Failed", "DatasetNotFound")
    st["phase"] = "Running"
    decision = decide(ftj(st), [])
    assert decision.create_attempt is None and decision.status_patch["phase"] == "Failed" and not decision.events


def test_a_late_trainer_report_cannot_cut_a_restart_backoff_short():
    # Restarting (condition True) overwritten the same way: the backoff still holds.
    st = status("Restarting", "PodFailed", attempt=2, restarts=1)
    st["phase"] = "Running"
    decision = decide(ftj(st, runPolicy={"maxRestarts": 3, "backoffSeconds": 600}), [])
    assert decision.create_attempt is None and decision.requeue_after == pytest.approx(40)  # capped at 100 s since 11:59:00


# ------------------------------------------------------- spec and idempotence
def test_spec_change_is_a_condition_and_changes_nothing_else():
    started = ftj(status("Running", "PodsRunning"))
    job = batch(started)
    changed = ftj(status("Running", "PodsRunning"), generation=2, model={"source": "hf://org/other"})
    changed["metadata"]["uid"] = started["metadata"]["uid"]  # the same object, edited
    decision = decide(changed, [job], [pod(0), pod(1)])
    cond = next(c for c in decision.status_patch["conditions"] if c["type"] == "SpecChangeIgnored")
    assert cond["status"] == "True" and cond["message"].startswith("spec.model changed")
    assert decision.status_patch["observedGeneration"] == 2 and "phase" not in decision.status_patch
    assert not decision.delete_jobs and decision.create_attempt is None
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "SpecChangeIgnored")]
    relaxed = ftj(status("Running", "PodsRunning"), generation=2, runPolicy={"maxRestarts": 9})
    relaxed["metadata"]["uid"] = started["metadata"]["uid"]
    assert not decide(relaxed, [job], [pod(0), pod(1)]).events


def test_invalid_spec_fails_once():
    f = ftj(training={"maxSteps": 1, "globalBatchSize": 3})
    decision = decide(f)
    assert phase_reason(decision) == ("Failed", "InvalidSpec")
    f["status"] = {**decision.status_patch}
    assert decide(f).empty


def test_same_observation_twice_plans_nothing_new():
    f = ftj(status("Queued", "WaitingForAdmission"))
    job, pods = batch(f), [pod(0), pod(1)]
    decision = decide(f, [job], pods)
    f["status"] = {**f["status"], **decision.status_patch}
    again = decide(f, [job], pods)
    assert again.empty, again


def test_observation_is_frozen():
    obs = Observation.of(ftj(), now=NOW, settings=SETTINGS)
    with pytest.raises(AttributeError):
        obs.now = NOW  # type: ignore[misc]


# -------------------------------------------------- which spec an attempt runs
def test_first_attempt_runs_the_live_spec():
    f = ftj(status("Pending", "Accepted"))
    chosen = phases.attempt_spec(f, 1, None)
    assert chosen.source == f and chosen.spec_hashes is None


def test_restart_runs_the_stored_spec_with_the_live_run_policy():
    started = ftj()
    cm = builders.build_config_map(started, SETTINGS)
    edited = ftj(model={"source": "hf://org/other"}, runPolicy={"maxRestarts": 9, "backoffSeconds": 0})
    chosen = phases.attempt_spec(edited, 2, cm)
    assert chosen.source["spec"]["model"]["source"] == "hf://org/model"
    assert chosen.source["spec"]["runPolicy"]["maxRestarts"] == 9
    assert chosen.spec_hashes == cm["metadata"]["annotations"][builders.ANNOTATION_SPEC_HASHES]


# ------------------------------------------------------------ classification
@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("x\nkubetune: error: BadData: row 7 is empty\ny", ("BadData", "row 7 is empty"), id="error-line-found"),
    pytest.param("no marker", None, id="no-error-line"),
])
def test_trainer_error_line_parsing(text, expected):
    assert observe.trainer_error(text) == expected


TORCHRUN_BANNER = "\n".join([
    "[rank1]: ImportError: /root/.cache/torch_extensions/x.so: cannot open shared object file",
    "Traceback (most recent call last):",
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
    "============================================================",
    "  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html",
    "============================================================",
])


@pytest.mark.parametrize(("pod_obj", "kind", "reason", "message_start"), [
    pytest.param(pod(1, phase="Failed", state=terminated(1, message=TORCHRUN_BANNER)), "transient", "PodFailed",
                 "pod j-a1-1-x: container trainer failed (exit code 1): [rank1]: ImportError: /root/.cache", id="error-not-banner"),
    pytest.param(pod(0, phase="Failed", state=terminated(137, "OOMKilled")), "transient", "OOMKilled",
                 "pod j-a1-0-x: container trainer was killed for exceeding its memory limit", id="oom-killed"),
    pytest.param(pod(0, phase="Failed", state=terminated(3, message="kubetune: error: DatasetNotFound: s3://d missing")),
                 "permanent", "DatasetNotFound", "s3://d missing (pod j-a1-0-x, exit code 3)", id="exit-3-with-reason"),
    pytest.param(pod(0, phase="Failed", state=terminated(3, message="RuntimeError: x")), "permanent", "PermanentError",
                 "pod j-a1-0-x exited with code 3: RuntimeError: x", id="exit-3-without-reason"),
    pytest.param(pod(0, phase="Failed", state=terminated(75)), "preempted", "Preempted",
                 "pod j-a1-0-x checkpointed and stopped after SIGTERM", id="exit-75"),
    pytest.param(pod(0, phase="Failed", state=terminated(143), conditions=[PREEMPTED_BY_SCHEDULER]), "preempted", "Preempted",
                 "pod j-a1-0-x was disrupted (PreemptionByScheduler)", id="disruption-target"),
])
def test_classify_pod_failure(pod_obj, kind, reason, message_start):
    failure = observe.classify_pod_failure(pod_obj)
    assert (failure.kind, failure.reason) == (kind, reason)
    assert failure.message.startswith(message_start), failure.message


def test_failure_message_names_the_error_not_the_banner():
    f = ftj(status("Running", "PodsRunning"))
    decision = decide(f, [batch(f)], [pod(1, phase="Failed", state=terminated(1, message=TORCHRUN_BANNER))])
    assert decision.status_patch["message"].startswith(
        "pod j-a1-1-x: container trainer failed (exit code 1): [rank1]: ImportError: /root/.cache")
    assert observe.last_error_line("step 1\nstep 2\n----\n") == "step 2"


# ------------------------------------------- issue 11: disruptions are not failures
DRAINED = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}
NODE_PRESSURE = {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet", "message": "memory pressure"}


def verdict(reason, message):
    return [("FailureTarget", reason, message), ("Failed", reason, message)]


# (id, pods, Job conditions, expected (phase, reason), counted)
DISRUPTION_CASES = [
    pytest.param([pod(0, phase="Failed", state=terminated(75), conditions=[DRAINED], deleting=True), pod(1)], (),
                 ("Restarting", "Preempted"), False, id="drained-pod-deleting-exit-75"),
    pytest.param([pod(0, phase="Failed", state=terminated(137), conditions=[DRAINED], deleting=True), pod(1)], (),
                 ("Restarting", "Preempted"), False, id="drained-pod-killed-after-grace"),
    pytest.param([pod(0, phase="Failed", state=terminated(137), conditions=[NODE_PRESSURE], reason="Evicted"), pod(1)], (),
                 ("Restarting", "Preempted"), False, id="node-pressure-eviction"),
    pytest.param([], verdict("PodFailurePolicy", "Pod ml/j-a1-0-x has condition DisruptionTarget matching FailJob rule at index 2"),
                 ("Restarting", "Preempted"), False, id="job-verdict-disruption-rule-only"),
    pytest.param([], verdict("PodFailurePolicy", "Container trainer for pod ml/j-a1-0-x failed with exit code 75 matching FailJob rule at index 1"),
                 ("Restarting", "Preempted"), False, id="job-verdict-exit-75-rule-only"),
    pytest.param([pod(0, phase="Running", conditions=[DRAINED], deleting=True)],
                 verdict("BackoffLimitExceeded", "Job has reached the specified backoff limit"),
                 ("Restarting", "Preempted"), False, id="job-verdict-backoff-with-disrupted-pod"),
    pytest.param([pod(0, phase="Failed", state=terminated(1, message="RuntimeError: nccl")), pod(1)], (),
                 ("Failed", "BackoffLimitExceeded"), None, id="real-failure-still-counts"),
    pytest.param([], verdict("PodFailurePolicy", "Container trainer for pod ml/j-a1-0-x failed with exit code 30 matching FailJob rule at index 0"),
                 ("Failed", "BackoffLimitExceeded"), None, id="exit-30-is-not-exit-3"),
]


@pytest.mark.parametrize(("pods", "job_conditions", "expected", "counted"), DISRUPTION_CASES)
def test_disruptions_restart_without_counting(pods, job_conditions, expected, counted):
    f = ftj(status("Running", "PodsRunning"), runPolicy={"maxRestarts": 0, "backoffSeconds": 5})
    decision = decide(f, [batch(f, conditions=job_conditions)], pods)
    assert phase_reason(decision) == expected
    assert "restarts" not in decision.status_patch
    assert decision.restart_counted is counted


def test_pod_failure_policy_names_every_verdict():
    rules = builders.pod_failure_policy()["rules"]
    assert [r["action"] for r in rules] == ["FailJob"] * 3
    assert rules[0]["onExitCodes"]["values"] == [3] and rules[1]["onExitCodes"]["values"] == [75]
    assert rules[2]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]


# ---------------------------------------------------- issue 11: ownership by UID
def foreign_job(f, attempt=1, conditions=(), deleting=False):
    """The namesake's Job: same name and labels, owned by another FineTuneJob UID."""
    job = batch(f, attempt=attempt, conditions=conditions)
    job["metadata"]["ownerReferences"][0]["uid"] = "deleted-namesake-uid"
    job["metadata"]["uid"] = "namesake-job-uid"
    if deleting:
        job["metadata"]["deletionTimestamp"] = "2026-01-01T11:59:00Z"
    return job


def foreign_pod(**kw):
    p = pod(**kw)
    p["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = "namesake-job-uid"
    return p


@pytest.mark.parametrize(("jobs", "pods"), [
    pytest.param([("Complete", "CompletionsReached", "")], [], id="namesake-complete-job"),
    pytest.param([("Failed", "PodFailurePolicy", "failed with exit code 3 matching FailJob rule at index 0")],
                 [dict(phase="Failed", state=terminated(3, message="kubetune: error: DatasetNotFound: gone"))], id="namesake-failed-pod"),
])
def test_a_namesakes_leftovers_are_waited_for_not_adopted(jobs, pods):
    f = ftj(status("Pending", "Accepted"))
    decision = decide(f, [foreign_job(f, conditions=jobs, deleting=True)], [foreign_pod(**kw) for kw in pods])
    assert decision.status_patch.get("phase") is None  # neither Succeeded nor Failed
    assert decision.create_attempt is None and not decision.delete_jobs and decision.requeue_after == phases.LEFTOVER_POLL_SECONDS
    cond = next(c for c in decision.status_patch["conditions"] if c["type"] == "AttemptBlocked")
    assert (cond["status"], cond["reason"]) == ("True", "WaitingForLeftovers") and "Job j-a1" in cond["message"]
    assert [(e.type, e.reason) for e in decision.events] == [("Normal", "WaitingForLeftovers")]
    # Waiting again says nothing new.
    f["status"] = {**f["status"], **decision.status_patch}
    assert decide(f, [foreign_job(f, conditions=jobs, deleting=True)], [foreign_pod(**kw) for kw in pods]).empty
    # Once the leftovers are collected, the attempt starts and the condition clears when its Job shows.
    assert decide(f).create_attempt == 1
    done = decide(f, [batch(f)])
    assert next(c for c in done.status_patch["conditions"] if c["type"] == "AttemptBlocked")["status"] == "False"


def test_a_users_labelled_job_is_never_deleted():
    f = ftj(status("Running", "PodsRunning", attempt=2, restarts=1))
    users = batch(f, attempt=1)
    users["metadata"]["ownerReferences"] = []  # merely carries the kubetune.io/job label
    decision = decide(f, [batch(f, attempt=2), users], [pod(0, attempt=2), pod(1, attempt=2)])
    assert decision.delete_jobs == []


def test_next_attempt_waits_for_the_previous_gang_bounded_by_the_grace_period():
    st = status("Restarting", "Preempted", attempt=2)
    st["activeJob"] = None
    f = ftj(st, runPolicy={"maxRestarts": 3, "backoffSeconds": 0, "terminationGraceSeconds": 60})
    lingering = [pod(0, attempt=1, conditions=[DRAINED], deleting=True)]
    decision = decide(f, [], lingering, known_job_uids=["job-uid-a1"])
    assert decision.create_attempt is None
    cond = next(c for c in decision.status_patch["conditions"] if c["type"] == "AttemptBlocked")
    assert cond["reason"] == "WaitingForPreviousAttempt" and "j-a1-0-x" in cond["message"]
    f["status"] = {**f["status"], **decision.status_patch}
    assert decide(f, [], lingering, now=NOW + dt.timedelta(seconds=60), known_job_uids=["job-uid-a1"]).create_attempt is None
    assert decide(f, [], lingering, now=NOW + dt.timedelta(seconds=91), known_job_uids=["job-uid-a1"]).create_attempt == 2
    assert decide(f, [], []).create_attempt == 2


def test_a_hand_deleted_job_restarts_the_gang_visibly_uncounted():
    f = ftj(status("Running", "PodsRunning"), runPolicy={"maxRestarts": 0, "backoffSeconds": 5})
    decision = decide(f, [], [])
    assert phase_reason(decision) == ("Restarting", "JobDeleted") and decision.status_patch["attempt"] == 2
    assert "restarts" not in decision.status_patch and decision.restart_counted is False
    assert decision.events[0].type == "Warning" and "j-a1" in decision.events[0].message


# ------------------------------------------------ issue 11: API rejections surface
def rejected(code, count=1, at=NOW):
    return observe.Rejection(code=code, kind="Job", name="j-a1", message='Job.batch "j-a1" is invalid: spec.template: x', at=at, count=count)


def test_an_invalid_object_fails_the_job_naming_it():
    f = ftj(status("Pending", "Accepted"))
    decision = decide(f, rejection=rejected(422))
    assert phase_reason(decision) == ("Failed", "JobInvalid") and "Job j-a1" in decision.status_patch["message"]
    assert decision.create_attempt is None


def test_a_forbidden_create_retries_with_backoff_visibly():
    f = ftj(status("Pending", "Accepted"))
    decision = decide(f, rejection=rejected(403, count=2))
    cond = next(c for c in decision.status_patch["conditions"] if c["type"] == "AttemptBlocked")
    assert (cond["status"], cond["reason"]) == ("True", "Forbidden") and "2 refusal(s)" in cond["message"]
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "Forbidden")]
    assert decision.create_attempt is None and decision.requeue_after == pytest.approx(10)  # 5 s doubling
    assert decide(f, rejection=rejected(403, count=2), now=NOW + dt.timedelta(seconds=10)).create_attempt == 1


def test_observed_generation_follows_a_run_policy_edit():
    f = ftj(status("Running", "PodsRunning"), generation=2, runPolicy={"maxRestarts": 5, "backoffSeconds": 0})
    decision = decide(f, [batch(f)], [pod(0), pod(1)])
    assert decision.status_patch == {"observedGeneration": 2} and not decision.events


def test_someone_elses_object_met_on_create_is_waited_for_then_tried_again():
    f = ftj(status("Pending", "Accepted"))
    in_the_way = observe.Rejection(code=409, kind="ConfigMap", name="j-config", message="ConfigMap j-config exists, being deleted", at=NOW)
    decision = decide(f, rejection=in_the_way)
    cond = next(c for c in decision.status_patch["conditions"] if c["type"] == "AttemptBlocked")
    assert cond["reason"] == "WaitingForLeftovers" and "ConfigMap j-config" in cond["message"]
    assert decision.create_attempt is None and decision.requeue_after == phases.LEFTOVER_POLL_SECONDS
    assert decide(f, rejection=in_the_way, now=NOW + dt.timedelta(seconds=5)).create_attempt == 1
