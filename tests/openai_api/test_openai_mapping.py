"""The pure mappings of `kubetune api`: request -> FineTuneJob manifest, FineTuneJob -> job object, events, pages."""
from __future__ import annotations

import json

import pytest

from kubetune_operator.openai_api import mapping
from kubetune_operator.openai_api.errors import ApiError

TEMPLATE = {"training": {"microBatchSize": 4, "precision": "fp32"}, "distributed": {"gpusPerNode": 0},
            "storage": {"endpoint": "http://minio:9000", "secretRef": {"name": "s3"}}}


def _manifest(body: dict, template: dict | None = None) -> dict:
    req = mapping.parse_create_request({"model": "tiny", "training_file": "file-a", **body})
    return mapping.build_manifest(req, name="ftjob-1", namespace="ml", model_source="s3://m/tiny", train_uri="s3://f/a.jsonl",
                                  eval_uri=None, output_uri="s3://o/ml/ftjob-1", template=TEMPLATE if template is None else template)


def test_request_becomes_a_valid_finetunejob_with_hyperparameters_mapped():
    m = _manifest({"hyperparameters": {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5}, "seed": 7, "suffix": "triage",
                   "metadata": {"team": "nlp"}})
    job = mapping.check_manifest(m)
    t = m["spec"]["training"]
    assert (t["epochs"], t["globalBatchSize"], t["microBatchSize"], t["seed"]) == (2, 8, 4, 7)
    assert t["learningRate"] == pytest.approx(0.5 * 2e-4)  # the multiplier scales the method's default (LoRA)
    assert m["spec"]["model"]["source"] == "s3://m/tiny" and m["spec"]["dataset"]["train"] == "s3://f/a.jsonl"
    assert m["spec"]["output"]["uri"] == "s3://o/ml/ftjob-1" and m["spec"]["storage"]["secretRef"] == {"name": "s3"}
    assert m["metadata"]["namespace"] == "ml" and m["metadata"]["labels"] == {mapping.MANAGED_LABEL: "true"}
    assert json.loads(m["metadata"]["annotations"][mapping.REQUEST_ANNOTATION])["suffix"] == "triage"
    assert job.spec.training.epochs == 2
    assert "microBatchSize" not in TEMPLATE["storage"] and TEMPLATE["training"] == {"microBatchSize": 4, "precision": "fp32"}  # untouched


def test_method_hyperparameters_and_auto_and_the_batch_divisor():
    m = _manifest({"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 6, "n_epochs": "auto"}}}})
    t = m["spec"]["training"]
    assert t["globalBatchSize"] == 6 and t["microBatchSize"] == 2  # gcd(6, 4): the accumulation stays whole
    assert t["epochs"] == 3 and "learningRate" not in t  # auto: the server's default length, the method's default rate


@pytest.mark.parametrize(("extras", "check"), [
    ({"metadata": {"kubetune.method": "full", "kubetune.nodes": "2", "kubetune.gpus": "8"}, "hyperparameters": {"batch_size": 64}},
     lambda s: s["method"]["type"] == "full" and s["distributed"] == {"gpusPerNode": 8, "nodes": 2}),
    ({"metadata": {"kubetune.training.maxSteps": "10"}}, lambda s: s["training"]["maxSteps"] == 10 and "epochs" not in s["training"]),
    ({"kubetune": {"method": {"type": "qlora"}, "queueName": "gpu-queue"}}, lambda s: s["method"]["type"] == "qlora" and s["queueName"] == "gpu-queue"),
], ids=["metadata-aliases", "metadata-spec-path", "extra-body-fragment"])
def test_kubetune_extras_from_metadata_or_extra_body(extras, check):
    m = _manifest(extras)
    mapping.check_manifest(m)
    assert check(m["spec"])


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    ({"method": {"type": "dpo"}}, 400, "method.type", "unsupported"),
    ({"method": {"type": "reinforcement"}}, 400, "method.type", "unsupported"),
    ({"hyperparameters": {"n_epochs": 0}}, 400, "hyperparameters.n_epochs", "invalid_hyperparameter"),
    ({"hyperparameters": {"n_epochs": 1.5}}, 400, "hyperparameters.n_epochs", "invalid_hyperparameter"),
    ({"hyperparameters": {"batch_size": "big"}}, 400, "hyperparameters.batch_size", "invalid_hyperparameter"),
    ({"hyperparameters": {"beta": 0.1}}, 400, "hyperparameters.beta", "unsupported"),
    ({"integrations": [{"type": "wandb"}]}, 400, "integrations", "unsupported"),
    ({"reasoning": {}}, 400, "reasoning", "unsupported"),
    ({"seed": -1}, 400, "seed", "invalid_value"),
    ({"metadata": {"kubetune.output.uri": "/etc"}}, 400, "kubetune.output.uri", "invalid_value"),
    ({"hyperparameters": {"n_epochs": 2}, "metadata": {"kubetune.training.maxSteps": "5"}}, 400, "hyperparameters.n_epochs", "invalid_value"),
], ids=["dpo", "reinforcement", "zero-epochs", "fractional-epochs", "batch-not-a-number", "unknown-hyperparameter",
        "integrations", "unknown-field", "negative-seed", "protected-extra", "epochs-and-steps"])
def test_bad_requests_name_the_field(body, status, param, code):
    with pytest.raises(ApiError) as e:
        _manifest(body)
    assert (e.value.status, e.value.param, e.value.code) == (status, param, code), e.value.message


def test_the_api_model_checks_map_back_to_request_fields():
    # 4 GPUs and a micro-batch of gcd(10, 4) = 2: 10 is not a multiple of 8; the FineTuneJob model says so, about batch_size.
    with pytest.raises(ApiError) as e:
        mapping.check_manifest(_manifest({"hyperparameters": {"batch_size": 10}},
                                         template={"training": {"microBatchSize": 4}, "distributed": {"gpusPerNode": 4}}))
    assert e.value.param == "hyperparameters.batch_size" and "globalBatchSize" in e.value.message
    with pytest.raises(ApiError) as e:
        mapping.check_manifest(_manifest({"metadata": {"kubetune.distributed.nodes": "0"}}))
    assert e.value.param == "kubetune.distributed.nodes"


def test_models_come_from_the_catalogue_or_a_source():
    assert mapping.resolve_model("smol", {"smol": "hf://HuggingFaceTB/SmolLM2-135M"}) == "hf://HuggingFaceTB/SmolLM2-135M"
    assert mapping.resolve_model("s3://b/m", {}) == "s3://b/m"
    with pytest.raises(ApiError) as e:
        mapping.resolve_model("gpt-4o-mini", {"smol": "x"})
    assert (e.value.status, e.value.param, e.value.code) == (404, "model", "model_not_found") and "smol" in e.value.message


def _ftj(phase: str | None, **status) -> dict:
    m = _manifest({"hyperparameters": {"n_epochs": 1}, "suffix": "s", "metadata": {"team": "nlp"}})
    m["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    m["status"] = {"phase": phase, **status} if phase else {}
    return m


@pytest.mark.parametrize(("phase", "expected"), [
    (None, "validating_files"), ("Pending", "validating_files"), ("Queued", "queued"), ("Initializing", "running"),
    ("Running", "running"), ("Restarting", "running"), ("Exporting", "running"), ("Suspended", "paused"),
    ("Succeeded", "succeeded"), ("Failed", "failed"),
])
def test_phase_to_status(phase, expected):
    assert mapping.job_object(_ftj(phase), now=0)["status"] == expected


def test_job_object_fields_from_the_finetunejob():
    running = mapping.job_object(_ftj("Running", progress={"step": 5, "totalSteps": 10, "etaSeconds": 60, "updatedAt": "2026-01-01T00:10:00Z"}), now=0)
    assert running["estimated_finish"] == 1767226200 + 60 and running["fine_tuned_model"] is None and running["finished_at"] is None
    assert running["created_at"] == 1767225600 and running["organization_id"] == "ml"
    assert running["model"] == "tiny" and running["training_file"] == "file-a" and running["metadata"] == {"team": "nlp"}
    assert running["hyperparameters"] == {"n_epochs": 1, "batch_size": 16, "learning_rate_multiplier": 1.0}
    assert running["method"]["type"] == "supervised" and running["kubetune"]["method"] == "lora"

    done = mapping.job_object(_ftj("Succeeded", completionTime="2026-01-01T01:00:00Z", output={
        "adapterUri": "s3://o/final/adapter", "metrics": {"tokensSeen": 1234.0}}), now=0)
    assert done["fine_tuned_model"] == "s3://o/final/adapter" and done["trained_tokens"] == 1234 and done["finished_at"] == 1767229200
    merged = mapping.job_object(_ftj("Succeeded", output={"adapterUri": "a", "mergedUri": "m"}), now=0)
    assert merged["fine_tuned_model"] == "m"

    failed = mapping.job_object(_ftj("Failed", reason="InvalidDataset", message="train row 3: 'prompt' is empty"), now=0)
    assert failed["error"] == {"code": "InvalidDataset", "message": "train row 3: 'prompt' is empty", "param": "training_file"}

    cancelled = _ftj("Suspended")
    cancelled["metadata"]["annotations"][mapping.CANCELLED_ANNOTATION] = "2026-01-01T00:30:00Z"
    assert mapping.job_object(cancelled, now=0)["status"] == "cancelled"


def test_status_changes_become_events_newest_first_with_stable_ids():
    ftj = _ftj("Succeeded", completionTime="2026-01-01T01:00:00Z", startTime="2026-01-01T00:01:00Z",
               conditions=[{"type": "Running", "status": "True", "reason": "PodsRunning", "lastTransitionTime": "2026-01-01T00:02:00Z"}],
               progress={"step": 10, "totalSteps": 10, "loss": 0.5, "updatedAt": "2026-01-01T00:59:00Z"},
               lastCheckpoint={"step": 10, "uri": "s3://o/checkpoints/step-000010", "time": "2026-01-01T00:58:00Z"},
               output={"adapterUri": "s3://o/final/adapter"})
    k8s = [{"type": "Warning", "reason": "Restarting", "message": "pod failed", "lastTimestamp": "2026-01-01T00:30:00Z"}]
    events = mapping.status_events(ftj, k8s, now=0)
    times = [e["created_at"] for e in events]
    assert times == sorted(times, reverse=True)
    messages = [e["message"] for e in events]
    assert messages[-1] == "Created fine-tuning job: ftjob-1"
    assert "Running (PodsRunning)" in messages and "Restarting: pod failed" in messages
    assert any(m.startswith("Step 10/10: training loss=0.5000") for m in messages)
    assert any("Checkpoint committed at step 10" in m for m in messages)
    assert messages[0].startswith("The job has successfully completed") or messages[1].startswith("The job has successfully completed")
    assert next(e for e in events if e["message"].startswith("Restarting"))["level"] == "warn"
    assert [e["id"] for e in mapping.status_events(ftj, k8s, now=99)] == [e["id"] for e in events]


def test_cursor_pagination():
    items = [{"id": f"x{i}"} for i in range(5)]
    first = mapping.page(items, None, 2)
    assert [i["id"] for i in first["data"]] == ["x0", "x1"] and first["has_more"]
    last = mapping.page(items, "x3", 2)
    assert [i["id"] for i in last["data"]] == ["x4"] and not last["has_more"]
    with pytest.raises(ApiError):
        mapping.page(items, "nope", 2)
    with pytest.raises(ApiError):
        mapping.page(items, None, 0)
