"""The FineTuneJob API (kubetune.io/v1alpha1): the single source of truth.

This module composes the resource from its sections, each in its own module
with its pydantic validators and, beside each, the CEL rule the API server
enforces for the same check (``tests/api`` checks that both reject the same
manifests):

- :mod:`.model` (``spec.model``), :mod:`.dataset`, :mod:`.method`,
  :mod:`.training`, :mod:`.distributed`, :mod:`.output`, :mod:`.storage`,
  :mod:`.pod` (tolerations, env, resources), :mod:`.run_policy`,
  :mod:`.status`; shared patterns and helpers in :mod:`.common`;
- here: the rules that span sections (batch size against world size, export
  against method, ...), ``FineTuneJobSpec``, ``FineTuneJob`` and the loaders.

It stays torch-free on purpose: the operator imports it, the CRD is generated
from it (``python -m kubetune_api.crd --write``), and the trainer parses the
same spec from the config file the operator hands it. Every name the sections
define is importable from here too (``from kubetune_api import spec as api``).

Field names are camelCase on the wire (YAML/JSON) and snake_case in Python.
Every field carries a description, which becomes ``kubectl explain`` text.

Fields whose default is "auto" and that depend on other sections
(``dataset.packing``, ``output.export``) are resolved when the spec is
parsed, so code reading a parsed spec always sees a concrete value.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .common import (
    CHECKPOINT_EVERY_PATTERN,
    DATA_SCHEMES,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ENDPOINT_PATTERN,
    ENV_NAME_PATTERN,
    JOB_NAME_PATTERN,
    LIST_MAX,
    MAP_MAX,
    MODEL_SCHEMES,
    NAME_MAX,
    OUTPUT_SCHEMES,
    QUANTITY_PATTERN,
    URI_MAX,
    ZERO_STAGE_PATTERN,
    AnnotationValue,
    ApiModel,
    CelRule,
    LabelKey,
    LabelValue,
    ModuleName,
    Quantity,
    ShortName,
    cel_rule,
    invalid,
    key_length_rule,
    model_rules,
    parse_duration_seconds,
)
from .contract import MAX_JOB_NAME_LENGTH, MUTABLE_SPEC_FIELDS
from .dataset import DatasetSpec
from .distributed import DistributedSpec
from .evaluation import DecodingSpec, EvaluationSpec
from .method import (
    PEFT_METHODS,
    SOFT_PROMPT_METHODS,
    IA3Options,
    LoraOptions,
    MethodSpec,
    MethodType,
    PrefixTuningOptions,
    PromptTuningOptions,
    QuantizationOptions,
)
from .model import LINEAGE_ANNOTATION, NON_CAUSAL_TASKS, FromJob, ModelSpec, ModelTask
from .output import OutputSpec
from .pod import EnvFromSource, EnvVar, EnvVarSource, FieldSelector, KeySelector, ObjectRef, ResourcesSpec, Toleration
from .run_policy import RunPolicy
from .status import (
    PHASES,
    TERMINAL_PHASES,
    CheckpointRef,
    Condition,
    FineTuneJobStatus,
    OutputStatus,
    Phase,
    PlanStatus,
    Progress,
)
from .storage import SecretRef, StorageSpec
from .training import GenerationEvalSpec, TrainingSpec

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj", "ftjob"]
CATEGORIES = ["all", "kubetune"]

__all__ = [
    # the resource
    "GROUP", "VERSION", "API_VERSION", "KIND", "PLURAL", "SINGULAR", "SHORT_NAMES", "CATEGORIES",
    "FineTuneJob", "FineTuneJobSpec", "ObjectMeta", "load_job", "load_job_file",
    # the contract (kubetune_api.contract), as the spec sees it
    "MAX_JOB_NAME_LENGTH", "MUTABLE_SPEC_FIELDS",
    # common
    "CHECKPOINT_EVERY_PATTERN", "DATA_SCHEMES", "DNS_LABEL_PATTERN", "DNS_SUBDOMAIN_PATTERN", "ENDPOINT_PATTERN",
    "ENV_NAME_PATTERN", "JOB_NAME_PATTERN", "LIST_MAX", "MAP_MAX", "MODEL_SCHEMES", "NAME_MAX", "OUTPUT_SCHEMES",
    "QUANTITY_PATTERN", "URI_MAX", "ZERO_STAGE_PATTERN", "AnnotationValue", "LabelKey", "LabelValue", "ModuleName",
    "Quantity", "ShortName", "parse_duration_seconds",
    # sections
    "ModelSpec", "FromJob", "LINEAGE_ANNOTATION", "ModelTask", "NON_CAUSAL_TASKS", "TASK_FORMATS",
    "DatasetSpec", "MethodSpec", "MethodType", "PEFT_METHODS", "SOFT_PROMPT_METHODS", "LoraOptions",
    "QuantizationOptions", "PromptTuningOptions", "PrefixTuningOptions", "IA3Options", "TrainingSpec",
    "GenerationEvalSpec", "EvaluationSpec", "DecodingSpec", "DistributedSpec", "OutputSpec", "SecretRef", "StorageSpec", "Toleration", "EnvVar",
    "EnvVarSource", "KeySelector", "FieldSelector", "EnvFromSource", "ObjectRef", "ResourcesSpec", "RunPolicy",
    # status
    "Phase", "PHASES", "TERMINAL_PHASES", "Condition", "Progress", "CheckpointRef", "OutputStatus",
    "PlanStatus", "FineTuneJobStatus",
]


# ------------------------------------------------------- rules across sections
# dataset.format values each explicit model.task accepts ('auto' resolves the task from the model's config)
TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "causal-lm": ("auto", "text", "instruction", "chat"),
    "seq2seq": ("auto", "seq2seq", "instruction"),
    "sequence-classification": ("auto", "classification"),
}


def _spec_rules() -> list[CelRule]:
    world = (
        "(self.distributed.nodes * (has(self.distributed.processesPerNode) ? self.distributed.processesPerNode"
        " : (self.distributed.gpusPerNode > 1 ? self.distributed.gpusPerNode : 1)))"
    )
    auto_mb = "string(self.training.microBatchSize) == 'auto'"
    per_step = f"(({auto_mb} ? 1 : int(self.training.microBatchSize)) * {world})"
    has_eval = "(has(self.dataset.eval) || self.dataset.evalFraction > 0.0)"
    return [
        cel_rule(
            f"self.training.globalBatchSize % {per_step} == 0",
            "training.globalBatchSize must be divisible by training.microBatchSize x world size "
            "(nodes x processes per node; with microBatchSize 'auto', by the world size); use a multiple of that product",
            ".training.globalBatchSize",
            message_expression=(
                "'training.globalBatchSize (' + string(self.training.globalBatchSize) + ') must be divisible by "
                "' + (" + auto_mb + " ? 'the world size' : 'microBatchSize x world size') + ' (' + string(" + per_step
                + ") + '); use a multiple of it'"
            ),
        ),
        cel_rule(
            "self.method.type != 'full' || !has(self.model.adapter)",
            "model.adapter needs a PEFT method.type (lora or qlora for a LoRA adapter, prompt-tuning, prefix-tuning "
            "or ia3 for those adapters); full fine-tuning starts from a model: use the earlier job's merged model as model.source",
            ".model.adapter",
        ),
        cel_rule(
            "self.method.type != 'full' || !has(self.model.from) || !has(self.model.from.use) || self.model.from.use != 'adapter'",
            "model.from.use 'adapter' needs a PEFT method.type; full fine-tuning continues from the merged model: "
            "use 'merged' or 'auto'",
            ".model.from.use",
        ),
        cel_rule(
            "self.method.type != 'full' || self.output.export != 'adapter'",
            "output.export 'adapter' is not possible with method.type 'full'; use 'merged' or 'auto'",
            ".output.export",
        ),
        cel_rule(
            "!(self.method.type in ['prompt-tuning', 'prefix-tuning']) || self.output.export in ['adapter', 'auto']",
            "output.export must be 'adapter' (or 'auto') for prompt-tuning and prefix-tuning: soft prompts cannot be merged into weights",
            ".output.export",
        ),
        cel_rule(
            "!(self.method.type in ['prompt-tuning', 'prefix-tuning']) || !has(self.dataset.packing) || !self.dataset.packing",
            "dataset.packing must be false for prompt-tuning and prefix-tuning: the soft prompt must lead every sample; remove packing or set it to false",
            ".dataset.packing",
        ),
        *[
            cel_rule(
                f"self.method.type != '{mtype}' || (has(self.method.{block}) ? self.method.{block}.numVirtualTokens"
                f" : {default}) < self.dataset.maxSeqLength",
                f"dataset.maxSeqLength must be larger than method.{block}.numVirtualTokens (default {default})",
                ".dataset.maxSeqLength",
            )
            for mtype, block, default in (
                ("prompt-tuning", "promptTuning", PromptTuningOptions.model_fields["num_virtual_tokens"].default),
                ("prefix-tuning", "prefixTuning", PrefixTuningOptions.model_fields["num_virtual_tokens"].default),
            )
        ],
        cel_rule(
            "!(self.model.task in ['seq2seq', 'sequence-classification']) || !has(self.dataset.packing) || !self.dataset.packing",
            "dataset.packing must be false for model.task seq2seq and sequence-classification: packing is for "
            "causal-lm; remove packing or set it to false",
            ".dataset.packing",
        ),
        cel_rule(
            "!(self.model.task in ['seq2seq', 'sequence-classification']) || !self.dataset.trainOnPrompt",
            "dataset.trainOnPrompt is for model.task causal-lm: a seq2seq model never predicts its input and a "
            "classifier predicts labels only; remove it",
            ".dataset.trainOnPrompt",
        ),
        *[
            cel_rule(
                f"self.model.task != '{task}' || self.dataset.format in [{', '.join(repr(f) for f in formats)}]",
                f"dataset.format must be {' or '.join(formats)} for model.task {task}",
                ".dataset.format",
            )
            for task, formats in TASK_FORMATS.items()
        ],
        cel_rule(
            "!has(self.dataset.labels) || self.model.task in ['auto', 'sequence-classification']",
            "dataset.labels is only for model.task sequence-classification; remove it or change model.task",
            ".dataset.labels",
        ),
        cel_rule(
            "self.model.task != 'sequence-classification' || !has(self.training.generationEval) || "
            "self.training.generationEval.samples == 0",
            "training.generationEval does not apply to model.task sequence-classification (it reports accuracy and "
            "macro-F1 instead); remove it",
            ".training.generationEval",
        ),
        cel_rule(
            "self.model.task != 'sequence-classification' || !has(self.evaluation) || !has(self.evaluation.samples) || "
            "self.evaluation.samples == 0",
            "evaluation.samples (generation metrics) does not apply to model.task sequence-classification (the "
            "evaluation reports accuracy and macro-F1); set it to 0",
            ".evaluation.samples",
        ),
        cel_rule(
            f"!has(self.training.evalEvery) || {has_eval}",
            "training.evalEvery needs eval data: set dataset.eval or a dataset.evalFraction above 0, or remove evalEvery",
            ".training.evalEvery",
        ),
        cel_rule(
            f"!has(self.training.generationEval) || self.training.generationEval.samples == 0 || {has_eval}",
            "training.generationEval needs eval data: set dataset.eval or a dataset.evalFraction above 0",
            ".training.generationEval",
        ),
        cel_rule(
            f"!has(self.evaluation) || !has(self.evaluation.samples) || self.evaluation.samples == 0 || {has_eval}"
            " || has(self.evaluation.test)",
            "evaluation.samples needs eval data: set dataset.eval, a dataset.evalFraction above 0 or evaluation.test",
            ".evaluation.samples",
        ),
        cel_rule(
            "self.training.precision != 'fp16' || self.distributed.gpusPerNode > 0",
            "training.precision fp16 needs GPUs; use bf16, fp32 or auto with gpusPerNode 0",
            ".training.precision",
        ),
    ]


class FineTuneJobSpec(ApiModel):
    """What to fine-tune, on what, how, and where the result goes."""

    model_config = model_rules(*_spec_rules())

    model: ModelSpec = Field(description="The base model.")
    dataset: DatasetSpec = Field(description="Training and evaluation data.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="Full fine-tuning or a PEFT method.")
    training: TrainingSpec = Field(description="Hyperparameters; set exactly one of epochs or maxSteps.")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec,
        description="The final evaluation: base vs tuned on the validation (and optional test) set, generation metrics, the report.",
    )
    distributed: DistributedSpec = Field(default_factory=DistributedSpec, description="Nodes, GPUs, ZeRO.")
    output: OutputSpec = Field(description="Checkpoint and result location.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="S3 endpoint and credentials Secret.")
    image: str | None = Field(default=None, min_length=1, max_length=1024, description="Trainer image. Unset: the operator's default.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(default=None, description="Image pull policy.")
    image_pull_secrets: list[ShortName] | None = Field(
        default=None, max_length=16, description="Names of Secrets for pulling the trainer image from a private registry."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="CPU, memory, shm and scratch per pod.")
    env: list[EnvVar] = Field(
        default_factory=list, max_length=LIST_MAX,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description=(
            "Extra environment variables for every trainer container, e.g. NCCL_DEBUG=INFO or NCCL_IB_HCA, as in a "
            "Kubernetes container: a literal value, or valueFrom a Secret key (tracker keys such as WANDB_API_KEY or "
            "MLFLOW_TRACKING_TOKEN), a ConfigMap key or a pod field. Never put credentials in value."
        ),
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list, max_length=16,
        description="Secrets or ConfigMaps whose every key becomes an environment variable (spec.env and the operator's own variables win).",
    )
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=MAP_MAX, description="Node labels the pods must match.",
        json_schema_extra=key_length_rule("nodeSelector"),
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=LIST_MAX, description="Tolerations for tainted GPU nodes.")
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Kubernetes affinity (nodeAffinity, podAffinity, podAntiAffinity), passed through to the pods unchanged.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    pod_annotations: dict[LabelKey, AnnotationValue] = Field(
        default_factory=dict, max_length=MAP_MAX,
        description="Annotations added to the trainer pods, e.g. {sidecar.istio.io/inject: 'false'}.",
        json_schema_extra=key_length_rule("podAnnotations"),
    )
    pod_labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=MAP_MAX, description="Labels added to the trainer pods (e.g. for cost attribution).",
        json_schema_extra=key_length_rule("podLabels"),
    )
    service_account_name: str | None = Field(
        default=None, min_length=1, max_length=NAME_MAX, pattern=DNS_SUBDOMAIN_PATTERN,
        description=(
            "ServiceAccount the trainer pods run as, e.g. one bound to a cloud IAM role (IRSA, workload "
            "identity) for S3 access without a Secret. Unset: the namespace's default. Trainer pods never mount its API token."
        ),
    )
    priority_class_name: str | None = Field(
        default=None, min_length=1, max_length=NAME_MAX, pattern=DNS_SUBDOMAIN_PATTERN, description="PriorityClass of the pods."
    )
    scheduler_name: str | None = Field(
        default=None, min_length=1, max_length=NAME_MAX, description="Scheduler for the pods (e.g. a gang scheduler)."
    )
    queue_name: str | None = Field(
        default=None, min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN,
        description="Kueue LocalQueue. The Job is created suspended for Kueue to admit as a gang.",
    )
    suspend: bool = Field(
        default=False,
        description="Suspend the job: pods checkpoint and stop; false resumes from the checkpoint. May be changed at any time.",
    )
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Restarts, deadlines, clean-up. May be changed at any time.")

    @model_validator(mode="after")
    def _cross_field(self) -> FineTuneJobSpec:
        m, t, d, o, ds = self.method.type, self.training, self.distributed, self.output, self.dataset
        mb = t.fixed_micro_batch()
        per_step = (mb or 1) * d.world_size()
        if t.global_batch_size % per_step:
            raise invalid(
                "training.globalBatchSize",
                f"({t.global_batch_size}) must be divisible by microBatchSize x world size "
                f"({mb} x {d.world_size()} = {per_step}); use a multiple of {per_step}"
                if mb is not None else
                f"({t.global_batch_size}) must be divisible by the world size ({per_step}) with microBatchSize "
                f"'auto'; use a multiple of {per_step}",
            )
        if m == "full" and self.model.adapter is not None:
            raise invalid(
                "model.adapter",
                "needs a PEFT method.type (lora or qlora for a LoRA adapter, prompt-tuning, prefix-tuning or ia3 for "
                "those adapters); full fine-tuning starts from a model: use the earlier job's merged model as model.source",
            )
        if m == "full" and self.model.from_ is not None and self.model.from_.use == "adapter":
            raise invalid(
                "model.from.use",
                "'adapter' needs a PEFT method.type; full fine-tuning continues from the merged model: use 'merged' or 'auto'",
            )
        if m == "full" and o.export == "adapter":
            raise invalid("output.export", "'adapter' is not possible with method.type 'full'; use 'merged' or 'auto'")
        if m in SOFT_PROMPT_METHODS and o.export not in ("adapter", "auto"):
            raise invalid(
                "output.export",
                f"must be 'adapter' (or 'auto') for method.type {m!r}: soft prompts cannot be merged into weights",
            )
        if m in SOFT_PROMPT_METHODS and ds.packing:
            raise invalid(
                "dataset.packing",
                f"must be false for method.type {m!r}: the soft prompt must lead every sample; remove packing or set it to false",
            )
        n_virtual = self.method.num_virtual_tokens()
        if n_virtual and n_virtual >= ds.max_seq_length:
            field = "promptTuning" if m == "prompt-tuning" else "prefixTuning"
            raise invalid(
                "dataset.maxSeqLength",
                f"({ds.max_seq_length}) must be larger than method.{field}.numVirtualTokens ({n_virtual})",
            )
        task = self.model.task
        if task in NON_CAUSAL_TASKS and ds.packing:
            raise invalid(
                "dataset.packing",
                f"must be false for model.task {task!r}: packing is for causal-lm; remove packing or set it to false",
            )
        if task in NON_CAUSAL_TASKS and ds.train_on_prompt:
            raise invalid(
                "dataset.trainOnPrompt",
                "is for model.task causal-lm: a seq2seq model never predicts its input and a classifier predicts "
                "labels only; remove it",
            )
        if task in TASK_FORMATS and ds.format not in TASK_FORMATS[task]:
            raise invalid("dataset.format", f"must be {' or '.join(TASK_FORMATS[task])} for model.task {task}, not {ds.format!r}")
        if ds.labels is not None and task not in ("auto", "sequence-classification"):
            raise invalid("dataset.labels", f"is only for model.task sequence-classification, not {task!r}; remove it or change model.task")
        if task == "sequence-classification" and t.generation_eval is not None and t.generation_eval.samples > 0:
            raise invalid(
                "training.generationEval",
                "does not apply to model.task sequence-classification (it reports accuracy and macro-F1 instead); remove it",
            )
        if t.eval_every is not None and not ds.has_eval():
            raise invalid(
                "training.evalEvery",
                "needs eval data: set dataset.eval or a dataset.evalFraction above 0, or remove evalEvery",
            )
        if t.generation_eval is not None and t.generation_eval.samples > 0 and not ds.has_eval():
            raise invalid("training.generationEval", "needs eval data: set dataset.eval or a dataset.evalFraction above 0")
        ev = self.evaluation
        if task == "sequence-classification" and ev.samples > 0:
            raise invalid(
                "evaluation.samples",
                "(generation metrics) does not apply to model.task sequence-classification (the evaluation reports "
                "accuracy and macro-F1); set it to 0",
            )
        if ev.samples > 0 and not ds.has_eval() and ev.test is None:
            raise invalid("evaluation.samples", "needs eval data: set dataset.eval, a dataset.evalFraction above 0 or evaluation.test")
        if t.generation_eval is not None and t.generation_eval.samples > 0 and ev.samples == 0:
            # the older spelling: training.generationEval means evaluation.samples + decoding.maxNewTokens
            ev.samples = t.generation_eval.samples
            ev.decoding.max_new_tokens = t.generation_eval.max_new_tokens
        if t.precision == "fp16" and d.gpus_per_node == 0:
            raise invalid("training.precision", "fp16 needs GPUs; use bf16, fp32 or auto with gpusPerNode 0")
        # Resolve the "auto" values that depend on other sections.
        if ds.packing is None:
            ds.packing = m not in SOFT_PROMPT_METHODS and task not in NON_CAUSAL_TASKS
        if o.export == "auto":
            o.export = "merged" if m == "full" else "adapter"
        return self



class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = None
    namespace: str | None = None


class FineTuneJob(ApiModel):
    """A fine-tuning run of a large language model, as a gang of DeepSpeed pods."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion", description="kubetune.io/v1alpha1")
    kind: Literal["FineTuneJob"] = Field(description="FineTuneJob")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: FineTuneJobSpec = Field(description="Desired state.")
    status: FineTuneJobStatus | None = Field(default=None, description="Observed state, written by the operator and rank 0.")


def load_job(data: dict[str, Any]) -> FineTuneJob:
    """Parse a manifest dict (raises pydantic.ValidationError).

    Manifests must use the camelCase wire names, as the API server demands: a
    snake_case key (``learning_rate``) is an unknown field here too, never a
    silent alias. (Python code may still construct models with snake_case.)
    """
    return FineTuneJob.model_validate(data, by_alias=True, by_name=False)


def load_job_file(path: str) -> FineTuneJob:
    """Load a FineTuneJob from a YAML/JSON file (the first FineTuneJob document in it).

    Raises documents.Unreadable (a ValueError) for a file that is not readable YAML,
    pydantic.ValidationError for an invalid FineTuneJob, ValueError when there is none.
    """
    from .documents import read_documents

    for d in read_documents(path):
        if isinstance(d, dict) and d.get("kind") == KIND:
            return load_job(d)
    raise ValueError(f"{path}: no FineTuneJob document found")
