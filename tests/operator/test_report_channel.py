"""Rank 0's report channel, the operator's side (report.py): what a pod may say, and who may say it. Pure."""
import json

import pytest

from kubetune_operator import report
from kubetune_operator.report import InvalidReport, check_sender, parse_report

OUT = "s3://bucket/runs/llama"


def body(**fields):
    return json.dumps(fields).encode()


def test_a_full_report_is_kept_field_by_field_and_unknown_keys_are_dropped():
    r = parse_report(body(
        attempt=2, stage="exporting", phase="Succeeded", restarts=0, conditions=[],
        progress={"step": 40, "totalSteps": 100, "epoch": 1.5, "percent": 40.0, "loss": 1.25, "evalLoss": 1.5, "learningRate": 2e-4,
                  "tokensPerSecond": 1200.5, "mfu": 0.41, "etaSeconds": 90, "updatedAt": "2026-01-01T00:00:00Z", "phase": "Failed",
                  "evalMetrics": {"accuracy": 0.9, "macroF1": 0.85}},
        lastCheckpoint={"step": 40, "uri": f"{OUT}/checkpoints/step-000040", "time": "2026-01-01T00:00:01Z"},
        output={"adapterUri": f"{OUT}/final/adapter", "summaryUri": f"{OUT}/final/summary.json", "reportUri": f"{OUT}/final/report.html",
                "baseModel": "hf://org/base", "baseModelRevision": "main", "metrics": {"evalLoss": 1.4, "rouge/L": 0.3}},
    ), OUT)
    assert (r.attempt, r.stage) == (2, "exporting")
    assert r.progress["step"] == 40 and "phase" not in r.progress and len(r.progress) == 12
    assert r.progress["evalMetrics"] == {"accuracy": 0.9, "macroF1": 0.85}
    assert r.last_checkpoint["uri"].endswith("step-000040") and r.output["metrics"] == {"evalLoss": 1.4, "rouge/L": 0.3}
    assert (r.output["reportUri"], r.output["baseModel"], r.output["baseModelRevision"]) == (f"{OUT}/final/report.html", "hf://org/base", "main")
    assert not {"phase", "restarts", "conditions"} & set(vars(r))


@pytest.mark.parametrize(("fields", "needle"), [
    ({"attempt": -1}, "attempt"),
    ({"attempt": True}, "attempt"),
    ({"stage": "Succeeded"}, "stage"),
    ({"progress": {"step": "7"}}, "progress.step"),
    ({"progress": {"loss": float("nan")}}, "progress.loss"),
    ({"progress": {"loss": 1e300}}, "progress.loss"),
    ({"progress": {"percent": 250}}, "progress.percent"),
    ({"progress": {"updatedAt": "yesterday"}}, "progress.updatedAt"),
    ({"progress": [1, 2]}, "progress"),
    ({"progress": {"evalMetrics": {"accuracy": "high"}}}, "progress.evalMetrics.accuracy"),
    ({"lastCheckpoint": {"uri": "s3://attacker/x"}}, "lastCheckpoint.uri"),
    ({"lastCheckpoint": {"uri": "s3://bucket/runs/llama-other/x"}}, "lastCheckpoint.uri"),
    ({"lastCheckpoint": {"uri": f"{OUT}/../../other"}}, "'..'"),
    ({"output": {"mergedUri": "https://evil.example/model"}}, "output.mergedUri"),
    ({"output": {"reportUri": "https://evil.example/r.html"}}, "output.reportUri"),
    ({"output": {"baseModel": "x" * 3000}}, "output.baseModel"),
    ({"output": {"baseModel": "hf://a\nb"}}, "output.baseModel"),
    ({"output": {"metrics": {"bad name!": 1}}}, "output.metrics"),
    ({"output": {"metrics": {f"m{i}": 1 for i in range(65)}}}, "output.metrics"),
    ({"output": {"metrics": {"loss": "low"}}}, "output.metrics.loss"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_report_breaking_a_rule_is_refused_naming_the_field(fields, needle):
    with pytest.raises(InvalidReport, match=needle.replace(".", r"\.").replace("(", r"\(")):
        parse_report(json.dumps(fields, allow_nan=True).encode(), OUT)


PLAN = {"zeroStage": 2, "offload": "none", "gradientCheckpointing": False, "microBatchSize": 4,
        "estimatedBytes": 12_884_901_888, "deviceBytes": 85_520_809_984, "device": "NVIDIA H100 80GB HBM3", "fits": True}


def test_the_memory_plan_is_kept_typed_and_bounded():
    r = parse_report(body(plan={**PLAN, "phase": "Failed", "terms": {"weights": 1}}), OUT)
    assert r.plan == PLAN  # unknown keys (a newer trainer's) are dropped
    assert parse_report(body(plan={"zeroStage": 0, "fits": False}), OUT).plan == {"zeroStage": 0, "fits": False}


@pytest.mark.parametrize(("plan", "needle"), [
    ({"zeroStage": 4}, "plan.zeroStage"),
    ({"zeroStage": "2"}, "plan.zeroStage"),
    ({"offload": "disk"}, "plan.offload"),
    ({"gradientCheckpointing": "yes"}, "plan.gradientCheckpointing"),
    ({"gradientCheckpointing": 1}, "plan.gradientCheckpointing"),
    ({"microBatchSize": 0}, "plan.microBatchSize"),
    ({"microBatchSize": 10_000}, "plan.microBatchSize"),
    ({"estimatedBytes": -1}, "plan.estimatedBytes"),
    ({"deviceBytes": 1e300}, "plan.deviceBytes"),
    ({"device": "x" * 200}, "plan.device"),
    ({"device": "GPU\nFits: yes"}, "plan.device"),
    ({"fits": "true"}, "plan.fits"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_plan_breaking_a_rule_is_refused_naming_the_field(plan, needle):
    with pytest.raises(InvalidReport, match=needle.replace(".", r"\.")):
        parse_report(body(plan=plan), OUT)


def test_size_and_shape_limits():
    with pytest.raises(InvalidReport, match="bytes"):
        parse_report(b" " * (report.MAX_BODY_BYTES + 1), OUT)
    with pytest.raises(InvalidReport, match="not JSON"):
        parse_report(b"{", OUT)
    with pytest.raises(InvalidReport, match="JSON object"):
        parse_report(b"[]", OUT)
    assert parse_report(b"", OUT) == report.TrainerReport()


JOB_UID = "job-uid-1"


def pod(name="j-a1-0-abcde", index="0", attempt="1", job_uid=JOB_UID, uid="pod-uid-1"):
    return {"metadata": {"name": name, "uid": uid, "labels": {"kubetune.io/attempt": attempt, "batch.kubernetes.io/controller-uid": job_uid},
                         "annotations": {"batch.kubernetes.io/job-completion-index": index}}}


RANK0 = pod()


@pytest.mark.parametrize(("sender", "pods", "needle"), [
    ({}, [RANK0], None),
    ({"pod_uid": None}, [RANK0], None),  # clusters before pod-uid in TokenReview extra
    ({"username": "system:serviceaccount:other:default"}, [RANK0], "namespace 'ml'"),
    ({"username": "alice"}, [RANK0], "not to a service account"),
    ({"pod_name": None}, [RANK0], "not bound to a pod"),
    ({"pod_name": "someone-elses-pod"}, [RANK0], "not a pod of this job"),
    ({}, [pod(job_uid="another-jobs-uid")], "not a pod of this job"),
    ({"pod_uid": "pod-uid-0"}, [RANK0], "replaced"),
    ({}, [pod(index="1")], "rank 1, only rank 0"),
    ({}, [pod(attempt="0")], "attempt 0"),
], ids=["rank0", "no-pod-uid", "other-namespace", "a-user", "unbound", "foreign-pod", "foreign-job", "recreated-pod",
        "rank1", "earlier-attempt"])
def test_only_rank_0_of_the_current_attempt_may_report(sender, pods, needle):
    args = {"pod_name": "j-a1-0-abcde", "pod_uid": "pod-uid-1", "namespace": "ml", "username": "system:serviceaccount:ml:default",
            "pods": pods, "job_uids": {JOB_UID}, "attempt": 1, **sender}
    why = check_sender(**args)
    assert (why is None) if needle is None else (needle in (why or ""))
