"""Invalid manifests: each is rejected by `kubetune validate` naming the offending field.

Each case mutates one valid base manifest. ``admission`` says whether the CRD
itself (schema or CEL rule) must reject it, so the API server refuses it at
`kubectl apply`; ``model`` whether the pydantic model (what the trainer and
`kubetune run` enforce) must reject it too. Cases where only code can tell
(bucket names, Hub repo ids, a missing name) have admission=False.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from api_manifests import base

from kubetune_api.validation import (
    cel_problems,
    crd_schema,
    model_problems,
    prepare,
    schema_problems,
    validate_manifest,
)
from kubetune_operator.cli import main as kubetune

_DELETE = object()


def put(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation setting (or deleting) a dotted path; list indexes as .0."""

    def apply(doc: dict) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return apply


def both(*mutations: Callable[[dict], None]) -> Callable[[dict], None]:
    def apply(doc: dict) -> None:
        for m in mutations:
            m(doc)

    return apply


@dataclass
class Case:
    id: str
    mutate: Callable[[dict], None]
    path: str  # the field path the output must name
    admission: bool = True  # the CRD (schema or CEL) rejects it too
    model: bool = True  # pydantic rejects it too


CPU = put("spec.distributed.gpusPerNode", 0)
CASES = [
    Case("missing-model", put("spec.model", _DELETE), "spec.model"),
    Case("empty-model-source", put("spec.model.source", ""), "spec.model.source"),
    Case("model-source-unknown-scheme", put("spec.model.source", "gs://bucket/llama"), "spec.model.source"),
    Case("revision-on-s3-model", both(put("spec.model.source", "s3://models-bucket/llama"), put("spec.model.revision", "main")),
         "spec.model.revision"),
    Case("model-without-source-or-from", put("spec.model.source", _DELETE), "spec.model.source"),
    Case("model-source-and-from", put("spec.model.from", {"fineTuneJob": "earlier"}), "spec.model.from"),
    Case("model-adapter-and-from",
         both(put("spec.model.source", _DELETE), put("spec.model.from", {"fineTuneJob": "earlier"}),
              put("spec.model.adapter", "s3://out-bucket/earlier/final/adapter")), "spec.model.adapter"),
    Case("model-from-name-uppercase",
         both(put("spec.model.source", _DELETE), put("spec.model.from", {"fineTuneJob": "Earlier_Job"})),
         "spec.model.from.fineTuneJob"),
    Case("model-from-use-unknown",
         both(put("spec.model.source", _DELETE), put("spec.model.from", {"fineTuneJob": "earlier", "use": "checkpoint"})),
         "spec.model.from.use"),
    Case("model-adapter-unknown-scheme", put("spec.model.adapter", "gs://bucket/adapter"), "spec.model.adapter"),
    Case("model-adapter-with-full",
         both(put("spec.method", {"type": "full"}), put("spec.model.adapter", "s3://out-bucket/earlier/final/adapter")),
         "spec.model.adapter"),
    Case("model-from-adapter-with-full",
         both(put("spec.method", {"type": "full"}), put("spec.model.source", _DELETE),
              put("spec.model.from", {"fineTuneJob": "earlier", "use": "adapter"})),
         "spec.model.from.use"),
    Case("revision-with-model-from",
         both(put("spec.model.source", _DELETE), put("spec.model.from", {"fineTuneJob": "earlier"}),
              put("spec.model.revision", "main")), "spec.model.revision"),
    Case("model-dtype-typo", put("spec.model.dtype", "bf16"), "spec.model.dtype"),
    Case("dataset-ftp-scheme", put("spec.dataset.train", "ftp://host/train.jsonl"), "spec.dataset.train"),
    Case("dataset-format-unknown", put("spec.dataset.format", "sharegpt"), "spec.dataset.format"),
    Case("eval-fraction-too-big", put("spec.dataset.evalFraction", 0.9), "spec.dataset.evalFraction"),
    Case("max-seq-length-too-small", put("spec.dataset.maxSeqLength", 8), "spec.dataset.maxSeqLength"),
    Case("method-type-unknown", put("spec.method.type", "adapter"), "spec.method.type"),
    Case("lora-options-with-full", put("spec.method.type", "full"), "spec.method.lora"),
    Case("quantization-without-qlora", put("spec.method.quantization", {"quantType": "nf4"}), "spec.method.quantization"),
    Case("lora-rank-zero", put("spec.method.lora.r", 0), "spec.method.lora.r"),
    Case("lora-dropout-one", put("spec.method.lora.dropout", 1.0), "spec.method.lora.dropout"),
    Case("all-linear-plus-names", put("spec.method.lora.targetModules", ["all-linear", "q_proj"]),
         "spec.method.lora.targetModules"),
    Case("target-modules-empty", put("spec.method.lora.targetModules", []), "spec.method.lora.targetModules"),
    Case("prompt-init-text-missing",
         put("spec.method", {"type": "prompt-tuning", "promptTuning": {"init": "text"}}),
         "spec.method.promptTuning.initText"),
    Case("soft-prompt-longer-than-sequence",
         both(put("spec.method", {"type": "prefix-tuning", "prefixTuning": {"numVirtualTokens": 64}}),
              put("spec.dataset.maxSeqLength", 32)),
         "spec.dataset.maxSeqLength"),
    Case("epochs-and-max-steps", put("spec.training.maxSteps", 100), "spec.training"),
    Case("neither-epochs-nor-max-steps", put("spec.training.epochs", _DELETE), "spec.training"),
    Case("epochs-zero", put("spec.training.epochs", 0), "spec.training.epochs"),
    Case("batch-not-divisible",
         both(put("spec.distributed", {"nodes": 2, "gpusPerNode": 8}), put("spec.training.globalBatchSize", 24)),
         "spec.training.globalBatchSize"),
    Case("batch-not-divisible-cpu-processes",
         both(put("spec.distributed", {"gpusPerNode": 0, "processesPerNode": 3}), put("spec.training.microBatchSize", 1)),
         "spec.training.globalBatchSize"),
    Case("batch-not-divisible-auto-micro-batch",
         both(put("spec.distributed", {"gpusPerNode": 0, "processesPerNode": 3}), put("spec.training.microBatchSize", "auto")),
         "spec.training.globalBatchSize"),
    Case("micro-batch-word", put("spec.training.microBatchSize", "max"), "spec.training.microBatchSize"),
    Case("micro-batch-zero", put("spec.training.microBatchSize", 0), "spec.training.microBatchSize"),
    Case("learning-rate-not-a-number", put("spec.training.learningRate", "fast"), "spec.training.learningRate"),
    Case("snake-case-field", put("spec.training.learning_rate", 0.001), "spec.training.learning_rate"),
    Case("fp16-on-cpu", both(CPU, put("spec.training.precision", "fp16")), "spec.training.precision"),
    Case("eval-every-without-eval-data",
         both(put("spec.training.evalEvery", 50), put("spec.dataset.evalFraction", 0)), "spec.training.evalEvery"),
    Case("generation-eval-without-eval-data",
         both(put("spec.training.generationEval", {"samples": 10}), put("spec.dataset.evalFraction", 0)),
         "spec.training.generationEval"),
    Case("evaluation-samples-without-eval-data",
         both(put("spec.evaluation", {"samples": 10}), put("spec.dataset.evalFraction", 0)), "spec.evaluation.samples"),
    Case("evaluation-temperature-with-greedy",
         put("spec.evaluation", {"decoding": {"temperature": 0.7}}), "spec.evaluation.decoding"),
    Case("evaluation-beams-with-sampling",
         put("spec.evaluation", {"decoding": {"strategy": "sample", "numBeams": 4}}), "spec.evaluation.decoding"),
    Case("evaluation-test-scheme", put("spec.evaluation", {"test": "gs://bucket/test.jsonl"}), "spec.evaluation.test"),
    Case("zero-stage-four", put("spec.distributed.zeroStage", 4), "spec.distributed.zeroStage"),
    Case("zero-stage-word", put("spec.distributed.zeroStage", "three"), "spec.distributed.zeroStage"),
    Case("offload-parameters-zero-2",
         both(put("spec.distributed.zeroStage", 2), put("spec.distributed.offload", "parameters")),
         "spec.distributed.offload"),
    Case("offload-parameters-zero-auto", put("spec.distributed.offload", "parameters"), "spec.distributed.offload"),
    Case("offload-with-zero-0",
         both(put("spec.distributed.zeroStage", "0"), put("spec.distributed.offload", "optimizer")),
         "spec.distributed.offload"),
    Case("processes-differ-from-gpus",
         both(put("spec.distributed.gpusPerNode", 8), put("spec.distributed.processesPerNode", 4)),
         "spec.distributed.processesPerNode"),
    Case("too-many-gpus-per-node", put("spec.distributed.gpusPerNode", 32), "spec.distributed.gpusPerNode"),
    Case("nodes-zero", put("spec.distributed.nodes", 0), "spec.distributed.nodes"),
    Case("output-to-hub", put("spec.output.uri", "hf://org/my-finetune"), "spec.output.uri"),
    Case("checkpoint-every-prose", put("spec.output.checkpointEvery", "10 minutes"), "spec.output.checkpointEvery"),
    Case("checkpoint-every-zero", put("spec.output.checkpointEvery", 0), "spec.output.checkpointEvery"),
    Case("checkpoint-every-zero-duration", put("spec.output.checkpointEvery", "0m"), "spec.output.checkpointEvery"),
    Case("adapter-export-for-full",
         both(put("spec.method", {"type": "full"}), put("spec.output.export", "adapter")), "spec.output.export"),
    Case("merged-export-for-prompt-tuning",
         both(put("spec.method", {"type": "prompt-tuning"}), put("spec.output.export", "merged")), "spec.output.export"),
    Case("packing-with-prefix-tuning",
         both(put("spec.method", {"type": "prefix-tuning"}), put("spec.dataset.packing", True)), "spec.dataset.packing"),
    # model.task: combinations of task, method and data that cannot work
    Case("task-unknown", put("spec.model.task", "classification"), "spec.model.task"),
    Case("seq2seq-from-gguf", both(put("spec.model.source", "/models/smollm2.gguf"), put("spec.model.task", "seq2seq")),
         "spec.model.task"),
    Case("packing-with-seq2seq", both(put("spec.model.task", "seq2seq"), put("spec.dataset.packing", True)),
         "spec.dataset.packing"),
    Case("train-on-prompt-with-classification",
         both(put("spec.model.task", "sequence-classification"), put("spec.dataset.trainOnPrompt", True)),
         "spec.dataset.trainOnPrompt"),
    Case("chat-rows-for-classification",
         both(put("spec.model.task", "sequence-classification"), put("spec.dataset.format", "chat")), "spec.dataset.format"),
    Case("text-rows-for-seq2seq", both(put("spec.model.task", "seq2seq"), put("spec.dataset.format", "text")),
         "spec.dataset.format"),
    Case("classification-rows-for-causal-lm",
         both(put("spec.model.task", "causal-lm"), put("spec.dataset.format", "classification")), "spec.dataset.format"),
    Case("labels-for-seq2seq", both(put("spec.model.task", "seq2seq"), put("spec.dataset.labels", ["yes", "no"])),
         "spec.dataset.labels"),
    Case("one-label", put("spec.dataset.labels", ["only"]), "spec.dataset.labels"),
    Case("generation-eval-for-classification",
         both(put("spec.model.task", "sequence-classification"), put("spec.training.generationEval", {"samples": 4})),
         "spec.training.generationEval"),
    Case("generation-samples-for-classification",
         both(put("spec.model.task", "sequence-classification"), put("spec.evaluation", {"samples": 8})),
         "spec.evaluation.samples"),
    Case("storage-endpoint-without-scheme", put("spec.storage", {"endpoint": "minio:9000"}), "spec.storage.endpoint"),
    Case("secret-ref-without-name", put("spec.storage", {"secretRef": {}}), "spec.storage.secretRef.name"),
    Case("gpus-in-resources", put("spec.resources", {"requests": {"nvidia.com/gpu": 8}}), "spec.resources"),
    Case("memory-not-a-quantity", put("spec.resources", {"limits": {"memory": "lots"}}), "spec.resources.limits[memory]"),
    Case("shm-not-a-quantity", put("spec.resources", {"shmSize": "16 gigabytes"}), "spec.resources.shmSize"),
    Case("empty-label-key", put("spec.nodeSelector", {"": "gpu"}), "spec.nodeSelector"),
    Case("queue-name-uppercase", put("spec.queueName", "Team_A"), "spec.queueName"),
    Case("toleration-exists-with-value",
         put("spec.tolerations", [{"key": "gpu", "operator": "Exists", "value": "yes"}]), "spec.tolerations[0].value"),
    Case("env-name-starts-with-digit", put("spec.env", [{"name": "1BAD", "value": "x"}]), "spec.env[0].name"),
    Case("env-value-and-value-from",
         put("spec.env", [{"name": "WANDB_API_KEY", "value": "k", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}}]),
         "spec.env[0].valueFrom"),
    Case("env-value-from-two-sources",
         put("spec.env", [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"},
                                                      "configMapKeyRef": {"name": "c", "key": "k"}}}]),
         "spec.env[0].valueFrom"),
    Case("env-value-from-no-source", put("spec.env", [{"name": "X", "valueFrom": {}}]), "spec.env[0].valueFrom"),
    Case("env-field-ref-not-allowed",
         put("spec.env", [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.containers"}}}]),
         "spec.env[0].valueFrom.fieldRef.fieldPath"),
    Case("env-secret-key-with-space",
         put("spec.env", [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "api key"}}}]),
         "spec.env[0].valueFrom.secretKeyRef.key"),
    Case("env-from-secret-and-configmap",
         put("spec.envFrom", [{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}]), "spec.envFrom[0]"),
    Case("env-from-nothing", put("spec.envFrom", [{"prefix": "W_"}]), "spec.envFrom[0]"),
    Case("storage-endpoint-with-credentials",
         put("spec.storage", {"endpoint": "https://AKIAEXAMPLE:s3cr3t@minio.example.com:9000"}), "spec.storage.endpoint"),
    Case("storage-endpoint-with-user", put("spec.storage", {"endpoint": "http://admin@minio.storage.svc:9000"}),
         "spec.storage.endpoint"),
    Case("suspend-not-boolean", put("spec.suspend", "please"), "spec.suspend"),
    Case("max-restarts-negative", put("spec.runPolicy", {"maxRestarts": -1}), "spec.runPolicy.maxRestarts"),
    Case("name-too-long", put("metadata.name", "a" * 60), "metadata.name", model=False),
    Case("name-with-dots", put("metadata.name", "llama.finetune"), "metadata.name", model=False),
    # only code can tell (the API server would accept these, the trainer would fail later)
    Case("bad-bucket-name", put("spec.output.uri", "s3://My_Bucket/runs"), "spec.output.uri", admission=False, model=False),
    Case("empty-bucket", put("spec.dataset.train", "s3:///train.jsonl"), "spec.dataset.train", admission=False, model=False),
    Case("bad-hub-repo-id", put("spec.model.source", "hf://org/name with spaces"), "spec.model.source",
         admission=False, model=False),
    Case("missing-name", put("metadata", {}), "metadata.name", admission=False, model=False),
    Case("labels-twice", put("spec.dataset.labels", ["yes", "no", "yes"]), "spec.dataset.labels", admission=False),
    Case("wrong-api-version", put("apiVersion", "kubetune.io/v1"), "apiVersion", admission=False),
]


def test_enough_distinct_cases():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)
    docs = [yaml.safe_dump(_manifest(c)) for c in CASES]
    assert len(set(docs)) == len(docs), "two cases produce the same manifest"


def _manifest(case: Case) -> dict:
    doc = base()
    case.mutate(doc)
    return doc


def test_base_manifest_is_valid():
    assert validate_manifest(base()) == []


def test_micro_batch_auto_is_valid_when_the_world_size_divides_the_batch():
    """'auto' drops the micro-batch from the divisibility rule (the plan picks a divisor); schema, CEL and model agree."""
    doc = base()
    both(put("spec.training.microBatchSize", "auto"), put("spec.training.globalBatchSize", 6),
         put("spec.distributed", {"gpusPerNode": 0, "processesPerNode": 3}))(doc)
    assert validate_manifest(doc) == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_invalid_manifest_is_rejected_naming_the_field(case, tmp_path, capsys):
    doc = _manifest(case)
    f = tmp_path / f"{case.id}.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))

    rc = kubetune(["validate", str(f)])
    out = capsys.readouterr().out
    assert rc == 1, out
    lines = out.strip().splitlines()
    assert lines and all(line.startswith(f"{f}: ") for line in lines), out
    assert any(line.startswith(f"{f}: {case.path}: ") for line in lines), f"{case.path} not named in:\n{out}"
    assert len(lines) == len(set(lines)), "duplicate lines"

    prepared = prepare(crd_schema(), doc)
    structural = schema_problems(prepared)
    admission = structural + cel_problems(prepared, schema_errors=structural)
    if case.admission:
        assert case.path in {p.path for p in admission}, f"the CRD would admit it: {admission}"
    else:
        assert case.path not in {p.path for p in admission}, "the CRD rejects it: mark admission=True"
    if case.model:
        assert model_problems(prepare(crd_schema(), doc, defaults=False)), "pydantic accepts what the CRD rejects"
