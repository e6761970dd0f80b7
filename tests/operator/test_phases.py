"""The phase machine as a pure function: observed Job/pods + status + time -> plan. Fast, no I/O."""
import datetime as dt
import uuid

import pytest

from kubetune_operator import builders, phases
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
    job["spec"]["suspend"] = suspend
    job["status"] = {"conditions": [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions]}
    return phases.summarize(job)


def pod(index=0, attempt=1, phase="Running", state=None, conditions=(), reason=None, deleting=False):
    p = {
        "metadata": {"name": f"j-a{attempt}-{index}-x", "labels": {"kubetune.io/job": "j", "kubetune.io/attempt": str(attempt)}},
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


def status(phase, reason="x", attempt=1, restarts=0, **extra):
    return {"phase": phase, "reason": reason, "attempt": attempt, "restarts": restarts, "activeJob": f"j-a{attempt}", "observedGeneration": 1,
            "conditions": [{"type": phase, "status": "True", "reason": reason, "message": "", "lastTransitionTime": "2026-01-01T11:59:00.000Z"}], **extra}


def decide(f, jobs=(), pods=(), now=NOW):
    return phases.decide(f, list(jobs), list(pods), now, SETTINGS)


def test_new_job_goes_pending_then_creates_attempt_one():
    plan = decide(ftj())
    assert plan.status_patch["phase"] == "Pending" and plan.status_patch["attempt"] == 1
    assert plan.status_patch["observedGeneration"] == 1 and plan.create_attempt is None
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "Accepted")]
    plan = decide(ftj(status("Pending", "Accepted")))
    assert plan.create_attempt == 1 and not plan.status_patch


def test_suspended_before_start_creates_nothing():
    plan = decide(ftj(status("Pending", "Accepted"), suspend=True))
    assert plan.create_attempt is None and plan.status_patch["phase"] == "Suspended"


def test_kueue_waiting_admitted_and_preempted():
    f = ftj(status("Pending", "Accepted"), queueName="q")
    plan = decide(f, [batch(f, suspend=True)])
    assert (plan.status_patch["phase"], plan.status_patch["reason"]) == ("Queued", "WaitingForAdmission")
    assert plan.suspend_job is None  # never unsuspend what Kueue holds
    f = ftj(status("Running", "PodsRunning"), queueName="q")
    plan = decide(f, [batch(f, suspend=True)])
    assert (plan.status_patch["phase"], plan.status_patch["reason"]) == ("Queued", "Preempted")
    assert plan.events[0].type == "Warning"


def test_pods_starting_unschedulable_image_errors_then_running():
    f = ftj(status("Queued", "WaitingForAdmission"))
    job = batch(f)
    plan = decide(f, [job], [pod(0, phase="Pending"), pod(1, phase="Pending")])
    assert (plan.status_patch["phase"], plan.status_patch["reason"]) == ("Initializing", "PodsStarting")
    assert plan.status_patch["startTime"] == "2026-01-01T12:00:00.000Z"
    unsched = pod(1, phase="Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPUs"}])
    plan = decide(f, [job], [pod(0), unsched])
    assert plan.status_patch["reason"] == "Unschedulable" and "no GPUs" in plan.status_patch["message"]
    pulling = pod(1, phase="Pending", state={"waiting": {"reason": "ErrImagePull", "message": "not found"}})
    assert decide(f, [job], [pod(0), pulling]).status_patch["reason"] == "ImagePullFailed"
    bad = pod(1, phase="Pending", state={"waiting": {"reason": "InvalidImageName", "message": "bad ref"}})
    plan = decide(f, [job], [pod(0), bad])
    assert (plan.status_patch["phase"], plan.status_patch["reason"]) == ("Failed", "ImagePullFailed")
    plan = decide(f, [job], [pod(0), pod(1)])
    assert (plan.status_patch["phase"], plan.status_patch["reason"]) == ("Running", "PodsRunning")


def test_trainer_reported_phases_are_confirmed():
    f = ftj(status("Running", "PodsRunning", progress={"step": 3, "updatedAt": "2026-01-01T11:59:59Z"}))
    job = batch(f)
    assert decide(f, [job], [pod(0), pod(1)]).status_patch["reason"] == "TrainingStarted"
    f = ftj(status("Running", "TrainingStarted"))
    f["status"]["phase"] = "Exporting"  # written by the reporter
    plan = decide(f, [job], [pod(0), pod(1)])
    assert plan.status_patch["conditions"][-1]["type"] == "Exporting" and plan.events[0].reason == "Exporting"


def test_complete_job_succeeds_and_ttl_deletes_later():
    f = ftj(status("Exporting", "Exporting"), runPolicy={"ttlSecondsAfterFinished": 60})
    plan = decide(f, [batch(f, conditions=[("Complete", "CompletionsReached", "")])])
    assert plan.status_patch["phase"] == "Succeeded" and plan.status_patch["completionTime"]
    done = ftj(status("Succeeded", "Completed", completionTime="2026-01-01T11:59:30.000Z"), runPolicy={"ttlSecondsAfterFinished": 60})
    assert decide(done).requeue_after == pytest.approx(30) and not decide(done).delete_self
    assert decide(done, now=NOW + dt.timedelta(seconds=31)).delete_self


def test_oom_restarts_the_gang_counting_with_doubling_backoff():
    f = ftj(status("Running", "PodsRunning", restarts=1), runPolicy={"maxRestarts": 3, "backoffSeconds": 10})
    plan = decide(f, [batch(f)], [pod(0), pod(1, phase="Failed", state=terminated(137, "OOMKilled"))])
    p = plan.status_patch
    assert (p["phase"], p["reason"], p["restarts"], p["attempt"]) == ("Restarting", "OOMKilled", 2, 2)
    assert plan.delete_jobs == ["j-a1"] and plan.requeue_after == 20 and plan.restart_counted is True
    assert "restart 2/3" in p["message"] and "memory limit" in p["message"]


def test_restart_waits_for_backoff_then_creates_next_attempt_once():
    st = status("Restarting", "PodFailed", attempt=2, restarts=2)
    st["conditions"][0]["lastTransitionTime"] = "2026-01-01T11:59:50.000Z"
    f = ftj(st, runPolicy={"maxRestarts": 3, "backoffSeconds": 10})
    plan = decide(f, [])
    assert plan.create_attempt is None and plan.requeue_after == pytest.approx(10)  # 10 * 2^(2-1) = 20s since 11:59:50
    assert decide(f, [], now=NOW + dt.timedelta(seconds=10)).create_attempt == 2
    # An old attempt still visible (deleting) is not "current"; a non-deleted one is removed.
    old = batch(f, attempt=1)
    assert decide(f, [old], now=NOW + dt.timedelta(seconds=10)).delete_jobs == ["j-a1"]


def test_backoff_is_capped():
    assert phases.backoff_seconds(30, 1, True, 3600) == 30
    assert phases.backoff_seconds(30, 4, True, 3600) == 240
    assert phases.backoff_seconds(30, 20, True, 3600) == 3600
    assert phases.backoff_seconds(30, 20, False, 3600) == 30


def test_max_restarts_then_backoff_limit_exceeded():
    f = ftj(status("Running", "PodsRunning", restarts=2), runPolicy={"maxRestarts": 2})
    plan = decide(f, [batch(f)], [pod(0, phase="Failed", state=terminated(1, message="Traceback...\nRuntimeError: boom"))])
    p = plan.status_patch
    assert (p["phase"], p["reason"]) == ("Failed", "BackoffLimitExceeded") and "restarts" not in p
    assert "RuntimeError: boom" in p["message"] and plan.delete_jobs == ["j-a1"]


def test_permanent_exit_fails_at_once_with_trainer_reason():
    f = ftj(status("Running", "PodsRunning"))
    msg = "step 0\nkubetune: error: ModelNotFound: hf://org/model has no config.json\n"
    plan = decide(f, [batch(f)], [pod(0, phase="Failed", state=terminated(3, message=msg))])
    p = plan.status_patch
    assert (p["phase"], p["reason"]) == ("Failed", "ModelNotFound") and "no config.json" in p["message"]
    # The Job controller's verdict alone (pods already gone) is read too.
    plan = decide(f, [batch(f, conditions=[("Failed", "PodFailurePolicy", "Container trainer for pod ml/j-a1-0 failed with exit code 3 matching FailJob rule at index 0")])])
    assert (plan.status_patch["phase"], plan.status_patch["reason"]) == ("Failed", "PermanentError")


@pytest.mark.parametrize("failed_pod", [
    pod(0, phase="Failed", state=terminated(75)),
    pod(0, phase="Failed", state=terminated(143), conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]),
])
def test_preemption_restarts_without_counting(failed_pod):
    f = ftj(status("Running", "PodsRunning"), runPolicy={"maxRestarts": 0, "backoffSeconds": 5})
    plan = decide(f, [batch(f)], [failed_pod])
    p = plan.status_patch
    assert (p["phase"], p["reason"], p["attempt"]) == ("Restarting", "Preempted", 2) and "restarts" not in p
    assert plan.restart_counted is False


def test_pods_deleted_by_the_job_controller_are_not_failures():
    f = ftj(status("Running", "PodsRunning"))
    plan = decide(f, [batch(f)], [pod(0), pod(1, phase="Failed", state=terminated(75), deleting=True)])
    assert plan.status_patch.get("phase") in (None, "Initializing")  # one pod is gone: not all running, no restart
    assert not plan.delete_jobs


def test_suspend_and_resume_patch_the_job():
    f = ftj(status("Running", "PodsRunning"), suspend=True)
    plan = decide(f, [batch(f)])
    assert plan.suspend_job == ("j-a1", True) and plan.status_patch["phase"] == "Suspended"
    f = ftj(status("Suspended", "Suspended"))
    plan = decide(f, [batch(f, suspend=True)])
    assert plan.suspend_job == ("j-a1", False) and plan.status_patch["reason"] == "Resuming"
    # Kueue-managed: the attempt ends (Kueue would unsuspend a suspended admitted Job) and resumes as a new one.
    f = ftj(status("Running", "PodsRunning"), suspend=True, queueName="q")
    plan = decide(f, [batch(f)])
    assert plan.delete_jobs == ["j-a1"] and plan.status_patch["attempt"] == 2 and "restarts" not in plan.status_patch


def test_deadline_exceeded():
    f = ftj(status("Running", "PodsRunning", startTime="2026-01-01T11:00:00.000Z"), runPolicy={"activeDeadlineSeconds": 3600})
    plan = decide(f, [batch(f)], [pod(0), pod(1)])
    assert plan.status_patch["reason"] == "DeadlineExceeded" and plan.delete_jobs == ["j-a1"]
    plan = decide(f, [batch(f)], [pod(0), pod(1)], now=NOW - dt.timedelta(seconds=100))
    assert not plan.status_patch and plan.requeue_after == pytest.approx(100)


def test_spec_change_is_a_condition_and_changes_nothing_else():
    started = ftj(status("Running", "PodsRunning"))
    job = batch(started)
    changed = ftj(status("Running", "PodsRunning"), generation=2, model={"source": "hf://org/other"})
    plan = decide(changed, [job], [pod(0), pod(1)])
    cond = next(c for c in plan.status_patch["conditions"] if c["type"] == "SpecChangeIgnored")
    assert cond["status"] == "True" and cond["message"].startswith("spec.model changed")
    assert plan.status_patch["observedGeneration"] == 2 and "phase" not in plan.status_patch
    assert not plan.delete_jobs and plan.create_attempt is None
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "SpecChangeIgnored")]
    relaxed = ftj(status("Running", "PodsRunning"), generation=2, runPolicy={"maxRestarts": 9})
    assert not decide(relaxed, [job], [pod(0), pod(1)]).events


def test_invalid_spec_fails_once():
    f = ftj(training={"maxSteps": 1, "globalBatchSize": 3})
    plan = decide(f)
    assert (plan.status_patch["phase"], plan.status_patch["reason"]) == ("Failed", "InvalidSpec")
    f["status"] = {**plan.status_patch}
    assert decide(f).empty


def test_same_observation_twice_plans_nothing_new():
    f = ftj(status("Queued", "WaitingForAdmission"))
    job, pods = batch(f), [pod(0), pod(1)]
    plan = decide(f, [job], pods)
    f["status"] = {**f["status"], **plan.status_patch}
    again = decide(f, [job], pods)
    assert again.empty, again


def test_trainer_error_line_parsing():
    assert phases.trainer_error("x\nkubetune: error: BadData: row 7 is empty\ny") == ("BadData", "row 7 is empty")
    assert phases.trainer_error("no marker") is None


def test_a_late_trainer_report_cannot_revive_a_finished_or_restarting_job():
    # Failed (condition True) but a dying rank 0 wrote phase Running afterwards.
    st = status("Failed", "DatasetNotFound")
    st["phase"] = "Running"
    f = ftj(st)
    plan = decide(f, [])
    assert plan.create_attempt is None and plan.status_patch["phase"] == "Failed" and not plan.events
    # Restarting (condition True) overwritten the same way: the backoff still holds.
    st = status("Restarting", "PodFailed", attempt=2, restarts=1)
    st["phase"] = "Running"
    f = ftj(st, runPolicy={"maxRestarts": 3, "backoffSeconds": 600})
    plan = decide(f, [])
    assert plan.create_attempt is None and plan.requeue_after == pytest.approx(40)  # capped at 100 s since 11:59:00


def test_failure_message_names_the_error_not_the_banner():
    log = "\n".join([
        "[rank1]: ImportError: /root/.cache/torch_extensions/x.so: cannot open shared object file",
        "Traceback (most recent call last):",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "============================================================",
        "  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html",
        "============================================================",
    ])
    f = ftj(status("Running", "PodsRunning"))
    plan = decide(f, [batch(f)], [pod(1, phase="Failed", state=terminated(1, message=log))])
    assert plan.status_patch["message"].startswith("pod j-a1-1-x: container trainer failed (exit code 1): [rank1]: ImportError: /root/.cache")
    assert phases.last_error_line("step 1\nstep 2\n----\n") == "step 2"
