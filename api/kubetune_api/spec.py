"""The FineTuneJob API (kubetune.io/v1alpha1): the single source of truth.

This module is torch-free on purpose: the operator imports it, the CRD is
generated from it (``python -m kubetune_api.crd --write``), and the
trainer parses the same spec from the config file the operator hands it.

Field names are camelCase on the wire (YAML/JSON) and snake_case in Python.
Every field carries a description, which becomes ``kubectl explain`` text.

Each cross-field check exists twice, kept side by side in this file: as a
pydantic validator (what the trainer and ``kubetune run`` enforce) and as a
CEL rule in ``x-kubernetes-validations`` (what the API server enforces at
admission). ``tests/api`` checks that both reject the same manifests.
Validator messages start with the offending field path relative to the model
they run on (``"training.globalBatchSize: ..."``); ``kubetune validate``
turns that into the full path.

Fields whose default is "auto" and that depend on other sections
(``dataset.packing``, ``output.export``) are resolved when the spec is
parsed, so code reading a parsed spec always sees a concrete value.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic.alias_generators import to_camel

# Which spec fields may change after creation, and how long a job name may be:
# the contract with the operator.
from .contract import MAX_JOB_NAME_LENGTH, MUTABLE_SPEC_FIELDS  # noqa: F401

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj", "ftjob"]
CATEGORIES = ["all", "kubetune"]

MethodType = Literal["full", "lora", "qlora", "prompt-tuning", "prefix-tuning", "ia3"]
PEFT_METHODS = ("lora", "qlora", "prompt-tuning", "prefix-tuning", "ia3")
SOFT_PROMPT_METHODS = ("prompt-tuning", "prefix-tuning")

JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

_DURATION = re.compile(r"^([0-9]+)(s|m|h)$")
# A step count or a positive duration; the same pattern is enforced by the CRD.
CHECKPOINT_EVERY_PATTERN = r"^0*[1-9][0-9]*(s|m|h)?$"
ZERO_STAGE_PATTERN = r"^(auto|[0-3])$"
# Kubernetes resource.Quantity (e.g. 16Gi, 500m, 1.5, 2e3)
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
ENDPOINT_PATTERN = r"^https?://[^\s/]+(/.*)?$"

# Bounds on strings and lists keep the API server's CEL cost estimate small.
URI_MAX = 2048
NAME_MAX = 253
LIST_MAX = 64
MAP_MAX = 64

# URIs: which schemes each field accepts (a string without "://" is a local path).
MODEL_SCHEMES = ("hf://", "s3://", "file://")
DATA_SCHEMES = ("hf://", "s3://", "file://")
OUTPUT_SCHEMES = ("s3://", "file://")


def parse_duration_seconds(value: str) -> int:
    """'90s' -> 90, '30m' -> 1800, '2h' -> 7200."""
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration like '90s', '30m' or '2h'")
    n, unit = int(m.group(1)), m.group(2)
    return n * {"s": 1, "m": 60, "h": 3600}[unit]


def _invalid(path: str, message: str) -> ValueError:
    """A cross-field error naming the field (relative to the model the validator runs on)."""
    return ValueError(f"{path}: {message}")


def _cel(rule: str, message: str, field_path: str | None = None, message_expression: str | None = None) -> dict:
    r: dict[str, Any] = {"rule": rule, "message": message}
    if message_expression:
        r["messageExpression"] = message_expression
    if field_path:
        r["fieldPath"] = field_path
    return r


def _rules(*rules: dict) -> ConfigDict:
    """Model-level CEL rules (x-kubernetes-validations on the object)."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": list(rules)})


def _scheme_rule(schemes: tuple[str, ...], what: str) -> dict:
    cond = " || ".join(f"self.startsWith('{s}')" for s in schemes)
    listed = ", ".join(schemes)
    return _cel(f"!self.contains('://') || {cond}", f"{what} must start with {listed} or be a local path")


def _check_scheme(v: str, schemes: tuple[str, ...]) -> str:
    if "://" in v and not v.startswith(schemes):
        raise ValueError(f"must start with {', '.join(schemes)} or be a local path (got {v!r})")
    return v


ShortName = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX)]
ModuleName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Quantity = Annotated[int | str, Field(json_schema_extra={"pattern": QUANTITY_PATTERN})]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=317)]
LabelValue = Annotated[str, StringConstraints(max_length=63)]
AnnotationValue = Annotated[str, StringConstraints(max_length=4096)]
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)


def _check_quantities(v: dict[str, int | str]) -> dict[str, int | str]:
    for key, q in v.items():
        if isinstance(q, bool) or (isinstance(q, str) and not _QUANTITY_RE.match(q)):
            raise ValueError(f"{q!r} (for {key}) is not a Kubernetes quantity like '32', '500m' or '256Gi'")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )


# --------------------------------------------------------------------- model
class ModelSpec(_Model):
    """The pre-trained base model to fine-tune."""

    model_config = _rules(
        _cel(
            "!has(self.revision) || self.source.startsWith('hf://')",
            "model.revision applies only to hf:// sources; remove it or use an hf:// source",
            ".revision",
        ),
    )

    source: str = Field(
        description=(
            "Where the base model comes from: 'hf://org/name' (a Hugging Face Hub repo), "
            "'s3://bucket/prefix' (a folder in S3-compatible storage holding a Hugging Face "
            "model), a local path or 'file://' path (a Hugging Face model folder), or a path "
            "to a '.gguf' file (converted once to a Hugging Face model on first use)."
        ),
        min_length=1,
        max_length=URI_MAX,
        json_schema_extra={"x-kubernetes-validations": [_scheme_rule(MODEL_SCHEMES, "model.source")]},
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=NAME_MAX,
        description="Branch, tag or commit of an hf:// model. Pin a commit for reproducible runs.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="Dtype the base weights are loaded in. 'auto' follows training.precision.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow model code shipped with the model repo to run. Off by default: it executes arbitrary code.",
    )
    attention: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        default="auto",
        description="Attention kernel. 'auto' uses flash_attention_2 when installed on GPU, else sdpa.",
    )

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        return _check_scheme(v, MODEL_SCHEMES)

    @model_validator(mode="after")
    def _revision_needs_hub(self) -> ModelSpec:
        if self.revision is not None and not self.source.startswith("hf://"):
            raise _invalid("revision", "applies only to hf:// sources; remove it or use an hf:// source")
        return self


# ------------------------------------------------------------------- dataset
class DatasetSpec(_Model):
    """Training and evaluation data."""

    train: str = Field(
        min_length=1,
        max_length=URI_MAX,
        description=(
            "Training data: a JSONL, JSON, Parquet or CSV file or folder, as 's3://bucket/key', "
            "a local path, or 'hf://org/dataset' for a Hub dataset."
        ),
        json_schema_extra={"x-kubernetes-validations": [_scheme_rule(DATA_SCHEMES, "dataset.train")]},
    )
    eval: str | None = Field(
        default=None,
        min_length=1,
        max_length=URI_MAX,
        description="Evaluation data, same forms as 'train'. If unset, evalFraction of train is held out.",
        json_schema_extra={"x-kubernetes-validations": [_scheme_rule(DATA_SCHEMES, "dataset.eval")]},
    )
    eval_fraction: float = Field(
        default=0.05,
        ge=0.0,
        le=0.5,
        description="Fraction of the training data held out for evaluation when 'eval' is unset (0 disables eval).",
    )
    format: Literal["auto", "text", "instruction", "chat"] = Field(
        default="auto",
        description=(
            "Row format. 'text': a 'text' column, loss on all tokens. 'instruction': "
            "prompt/completion or instruction/input/output columns. 'chat': a 'messages' "
            "list of {role, content}, rendered with the tokenizer's chat template. 'auto' "
            "detects it from the columns."
        ),
    )
    max_seq_length: int = Field(
        default=2048,
        ge=16,
        le=1048576,
        description="Maximum tokens per training sequence (after chat templating).",
    )
    truncation: Literal["truncate", "drop", "fail"] = Field(
        default="truncate",
        description=(
            "What to do with a sample longer than maxSeqLength: 'truncate' keeps the first "
            "maxSeqLength tokens, 'drop' skips the sample (counted), 'fail' stops with an error."
        ),
    )
    packing: bool | None = Field(
        default=None,
        description=(
            "Pack several short samples into one sequence, with attention kept inside each "
            "sample (no cross-sample attention). Large speed-up on mixed-length data. Unset: "
            "on, except for prompt-tuning and prefix-tuning, whose soft prompt must lead every sample."
        ),
    )
    train_on_prompt: bool = Field(
        default=False,
        description="Also compute loss on prompt/user/system tokens. Off: loss only on completions/assistant turns and EOS.",
    )
    bad_rows: Literal["fail", "skip"] = Field(
        default="fail",
        description="Rows that fit no format or are empty: 'fail' stops with the row number, 'skip' drops and reports them.",
    )
    shuffle: bool = Field(default=True, description="Shuffle the training data each epoch (seeded by training.seed).")

    @field_validator("train", "eval")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        return None if v is None else _check_scheme(v, DATA_SCHEMES)

    def has_eval(self) -> bool:
        """Whether any evaluation data exists (an eval set or a held-out fraction)."""
        return self.eval is not None or self.eval_fraction > 0


# -------------------------------------------------------------------- method
class LoraOptions(_Model):
    """LoRA adapter options (also used by qlora)."""

    model_config = _rules(
        _cel(
            "!('all-linear' in self.targetModules) || self.targetModules.size() == 1",
            "lora.targetModules: 'all-linear' already covers every linear layer; use it alone or list module names",
            ".targetModules",
        ),
    )

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the LoRA update matrices.")
    alpha: int | None = Field(
        default=None, ge=1, le=4096, description="LoRA scaling numerator. Unset means 2*r."
    )
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[ModuleName] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        max_length=LIST_MAX,
        description="Module names to adapt, e.g. [q_proj, v_proj], or [all-linear] for every linear layer but the output head.",
    )
    modules_to_save: list[ModuleName] | None = Field(
        default=None,
        max_length=LIST_MAX,
        description=(
            "Modules trained in full and saved with the adapter, e.g. [embed_tokens, lm_head] "
            "when the tokenizer gained new tokens. Unset: none."
        ),
    )
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")

    @model_validator(mode="after")
    def _all_linear_alone(self) -> LoraOptions:
        if "all-linear" in self.target_modules and len(self.target_modules) > 1:
            raise _invalid(
                "targetModules",
                "'all-linear' already covers every linear layer; use it alone or list module names",
            )
        return self


class QuantizationOptions(_Model):
    """4-bit quantisation of the frozen base model (qlora only)."""

    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(default=True, description="Quantise the quantisation constants too (saves ~0.4 bit/param).")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="Dtype of the de-quantised matmuls. 'auto' follows training.precision."
    )


class PromptTuningOptions(_Model):
    """Learned soft prompt on a frozen model."""

    model_config = _rules(
        _cel(
            "self.init != 'text' || has(self.initText)",
            "promptTuning.initText is required when promptTuning.init is 'text'",
            ".initText",
        ),
        _cel(
            "!has(self.initText) || self.init == 'text'",
            "promptTuning.initText is used only with promptTuning.init 'text'; set init: text or remove initText",
            ".initText",
        ),
    )

    num_virtual_tokens: int = Field(default=20, ge=1, le=1024, description="Length of the soft prompt in tokens.")
    init: Literal["random", "text"] = Field(default="random", description="Initialise the soft prompt randomly or from initText.")
    init_text: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Text whose token embeddings initialise the soft prompt (init: text).",
    )

    @model_validator(mode="after")
    def _init_text(self) -> PromptTuningOptions:
        if self.init == "text" and not self.init_text:
            raise _invalid("initText", "is required when promptTuning.init is 'text'")
        if self.init_text is not None and self.init != "text":
            raise _invalid("initText", "is used only with promptTuning.init 'text'; set init: text or remove initText")
        return self


class PrefixTuningOptions(_Model):
    """Learned key/value prefixes in every layer of a frozen model."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=1024, description="Prefix length in tokens.")
    projection: bool = Field(default=False, description="Reparameterise the prefix through an MLP (more stable, more memory).")


class IA3Options(_Model):
    """(IA)^3: learned rescaling vectors on a frozen model."""

    target_modules: list[ModuleName] | None = Field(
        default=None, min_length=1, max_length=LIST_MAX,
        description="Modules to rescale. Unset: the model type's defaults in PEFT.",
    )
    feedforward_modules: list[ModuleName] | None = Field(
        default=None, max_length=LIST_MAX,
        description="Which of targetModules are feed-forward layers. Unset: PEFT's defaults.",
    )


# which option blocks each method type accepts
_METHOD_OPTIONS = {
    "full": (),
    "lora": ("lora",),
    "qlora": ("lora", "quantization"),
    "prompt-tuning": ("promptTuning",),
    "prefix-tuning": ("prefixTuning",),
    "ia3": ("ia3",),
}
_OPTION_BLOCKS = ("lora", "quantization", "promptTuning", "prefixTuning", "ia3")


def _method_option_rules() -> list[dict]:
    rules = []
    for block in _OPTION_BLOCKS:
        types = [t for t, blocks in _METHOD_OPTIONS.items() if block in blocks]
        allowed = " or ".join(types)
        cond = " || ".join(f"self.type == '{t}'" for t in types)
        rules.append(
            _cel(
                f"!has(self.{block}) || {cond}",
                f"method.{block} is only for method.type {allowed}; remove it or change method.type",
                f".{block}",
            )
        )
    return rules


class MethodSpec(_Model):
    """How the model is adapted: all weights, or a parameter-efficient method."""

    model_config = _rules(*_method_option_rules())

    type: MethodType = Field(
        default="lora",
        description="full | lora | qlora | prompt-tuning | prefix-tuning | ia3.",
    )
    lora: LoraOptions | None = Field(default=None, description="Options for type lora or qlora.")
    quantization: QuantizationOptions | None = Field(default=None, description="Options for type qlora.")
    prompt_tuning: PromptTuningOptions | None = Field(default=None, description="Options for type prompt-tuning.")
    prefix_tuning: PrefixTuningOptions | None = Field(default=None, description="Options for type prefix-tuning.")
    ia3: IA3Options | None = Field(default=None, description="Options for type ia3.")

    @model_validator(mode="after")
    def _options_match_type(self) -> MethodSpec:
        allowed = _METHOD_OPTIONS[self.type]
        for block in _OPTION_BLOCKS:
            if getattr(self, _snake(block)) is not None and block not in allowed:
                types = " or ".join(t for t, blocks in _METHOD_OPTIONS.items() if block in blocks)
                raise _invalid(block, f"is only for method.type {types}; remove it or change method.type")
        return self

    # Resolved views: options with defaults filled in for the chosen type.
    def lora_options(self) -> LoraOptions:
        return self.lora or LoraOptions()

    def quantization_options(self) -> QuantizationOptions:
        return self.quantization or QuantizationOptions()

    def prompt_tuning_options(self) -> PromptTuningOptions:
        return self.prompt_tuning or PromptTuningOptions()

    def prefix_tuning_options(self) -> PrefixTuningOptions:
        return self.prefix_tuning or PrefixTuningOptions()

    def ia3_options(self) -> IA3Options:
        return self.ia3 or IA3Options()

    def num_virtual_tokens(self) -> int:
        """Soft-prompt length for prompt/prefix tuning, else 0."""
        if self.type == "prompt-tuning":
            return self.prompt_tuning_options().num_virtual_tokens
        if self.type == "prefix-tuning":
            return self.prefix_tuning_options().num_virtual_tokens
        return 0


def _snake(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)


# ------------------------------------------------------------------ training
class GenerationEvalSpec(_Model):
    """Task accuracy from greedy generations on a sample of the eval set."""

    samples: int = Field(default=0, ge=0, le=10000, description="Eval rows to generate for (0 disables). Exact match against the reference completion.")
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Generation length limit.")


class TrainingSpec(_Model):
    """Optimisation hyperparameters. Set exactly one of epochs or maxSteps."""

    model_config = _rules(
        _cel(
            "has(self.epochs) != has(self.maxSteps)",
            "set exactly one of training.epochs or training.maxSteps",
        ),
    )

    epochs: float | None = Field(default=None, gt=0, le=1000, description="Passes over the training data (may be fractional). Exactly one of epochs/maxSteps.")
    max_steps: int | None = Field(default=None, ge=1, le=100_000_000, description="Optimizer steps to run. Exactly one of epochs/maxSteps.")
    learning_rate: float | None = Field(
        default=None,
        gt=0,
        le=10,
        description="Peak learning rate. Unset means a default for the method: 1e-5 full, 2e-4 lora/qlora, 3e-3 ia3/prefix, 3e-2 prompt-tuning.",
    )
    global_batch_size: int = Field(
        default=16,
        ge=1,
        le=1_000_000,
        description="Sequences per optimizer step over all processes. Must be divisible by microBatchSize x world size; the rest is gradient accumulation.",
    )
    micro_batch_size: int = Field(default=1, ge=1, le=4096, description="Sequences per process per forward/backward pass.")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(default="cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(default=0.03, ge=0.0, le=0.5, description="Fraction of steps with linear warmup.")
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, ge=0.0, le=1e6, description="Gradient clipping norm (0 disables).")
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Seed for data order, initialisation and dropout.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto", description="Mixed precision. 'auto': bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU. fp16 needs GPUs."
    )
    gradient_checkpointing: bool = Field(default=True, description="Recompute activations in backward to save memory (~30% slower).")
    eval_every: int | None = Field(default=None, ge=1, le=100_000_000, description="Evaluate every N optimizer steps. Unset: at the end of each epoch and of training. Needs eval data.")
    log_every: int = Field(default=1, ge=1, le=100_000, description="Report loss and progress every N optimizer steps.")
    generation_eval: GenerationEvalSpec | None = Field(default=None, description="Optional task accuracy from greedy generation. Needs eval data.")
    liger_kernels: bool = Field(default=False, description="Use Liger fused kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) when installed.")
    tracker: Literal["none", "tensorboard", "mlflow", "wandb"] = Field(default="none", description="Experiment tracker (must be installed in the image).")

    @model_validator(mode="after")
    def _one_of_epochs_steps(self) -> TrainingSpec:
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError("set exactly one of training.epochs or training.maxSteps")
        return self

    def resolved_learning_rate(self, method: str) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return {
            "full": 1e-5,
            "lora": 2e-4,
            "qlora": 2e-4,
            "ia3": 3e-3,
            "prefix-tuning": 3e-3,
            "prompt-tuning": 3e-2,
        }[method]


# --------------------------------------------------------------- distributed
class DistributedSpec(_Model):
    """Nodes, GPUs and DeepSpeed ZeRO settings."""

    model_config = _rules(
        _cel(
            "self.offload != 'parameters' || string(self.zeroStage) == '3'",
            "distributed.offload 'parameters' needs distributed.zeroStage 3; set zeroStage: 3 or offload: optimizer",
            ".offload",
        ),
        _cel(
            "self.offload == 'none' || string(self.zeroStage) != '0'",
            "distributed.offload needs ZeRO stage 1, 2 or 3; set zeroStage to 'auto' or a stage >= 1",
            ".offload",
        ),
        _cel(
            "!has(self.processesPerNode) || self.gpusPerNode == 0 || self.processesPerNode == self.gpusPerNode",
            "distributed.processesPerNode must equal gpusPerNode on GPU nodes (one process per GPU); remove it or set gpusPerNode: 0 for CPU",
            ".processesPerNode",
        ),
    )

    nodes: int = Field(default=1, ge=1, le=1024, description="Pods (machines) in the gang. Each runs torchrun.")
    gpus_per_node: int = Field(default=1, ge=0, le=16, description="GPUs per pod, requested as nvidia.com/gpu. 0 runs on CPU.")
    processes_per_node: int | None = Field(
        default=None, ge=1, le=256,
        description="Training processes per pod. Unset: gpusPerNode, or 1 on CPU. Only CPU runs (gpusPerNode 0) may choose another number.",
    )
    zero_stage: Literal["auto", "0", "1", "2", "3"] = Field(
        default="auto",
        description=(
            "DeepSpeed ZeRO stage: 0, 1, 2, 3 (number or string) or 'auto', which picks 2 when model "
            "state fits in GPU memory, else 3."
        ),
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "pattern": ZERO_STAGE_PATTERN,
            "minimum": 0,
            "maximum": 3,
        },
    )
    offload: Literal["none", "optimizer", "parameters"] = Field(
        default="none",
        description="Offload to CPU memory: 'optimizer' states (ZeRO 1-3) or 'parameters' and optimizer states (ZeRO 3 only).",
    )
    rendezvous_timeout_seconds: int = Field(default=900, ge=30, le=86400, description="How long ranks wait for each other at start.")

    @field_validator("zero_stage", mode="before")
    @classmethod
    def _int_stage(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _offload_and_processes(self) -> DistributedSpec:
        if self.offload == "parameters" and self.zero_stage != "3":
            raise _invalid("offload", "'parameters' needs distributed.zeroStage 3; set zeroStage: 3 or offload: optimizer")
        if self.offload != "none" and self.zero_stage == "0":
            raise _invalid("offload", "needs ZeRO stage 1, 2 or 3; set zeroStage to 'auto' or a stage >= 1")
        if self.processes_per_node is not None and self.gpus_per_node and self.processes_per_node != self.gpus_per_node:
            raise _invalid(
                "processesPerNode",
                "must equal gpusPerNode on GPU nodes (one process per GPU); remove it or set gpusPerNode: 0 for CPU",
            )
        return self

    def procs_per_node(self) -> int:
        return self.processes_per_node or max(self.gpus_per_node, 1)

    def world_size(self) -> int:
        return self.nodes * self.procs_per_node()


# -------------------------------------------------------------------- output
class OutputSpec(_Model):
    """Where checkpoints and the final model go, and how often."""

    uri: str = Field(
        min_length=1,
        max_length=URI_MAX,
        description="Output location: 's3://bucket/prefix' or a local path. Checkpoints go to <uri>/checkpoints/, the result to <uri>/final/.",
        json_schema_extra={"x-kubernetes-validations": [_scheme_rule(OUTPUT_SCHEMES, "output.uri")]},
    )
    checkpoint_every: int | str = Field(
        default="30m",
        description="Checkpoint cadence: a number of optimizer steps (e.g. 500) or a duration ('90s', '30m', '2h').",
        json_schema_extra={"pattern": CHECKPOINT_EVERY_PATTERN, "minimum": 1, "maxLength": 32},
    )
    keep_last: int = Field(default=2, ge=1, le=1000, description="Committed checkpoints to keep; older ones are deleted only after a newer one is committed.")
    export: Literal["auto", "adapter", "merged", "both"] = Field(
        default="auto",
        description=(
            "What to export at the end: the PEFT adapter, the merged full model, or both. 'auto': "
            "'merged' for full fine-tuning, else 'adapter'. Full fine-tuning cannot export an adapter; "
            "prompt-tuning and prefix-tuning export only adapters."
        ),
    )

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        return _check_scheme(v, OUTPUT_SCHEMES)

    @field_validator("checkpoint_every")
    @classmethod
    def _cadence(cls, v: int | str) -> int | str:
        if isinstance(v, bool):
            raise ValueError("must be a step count or a duration")
        if isinstance(v, int):
            if v < 1:
                raise ValueError("must be at least 1 step")
            return v
        if v.isdigit():
            return _cadence_steps(int(v))
        if parse_duration_seconds(v) < 1:
            raise ValueError("a duration must be at least 1s")
        return v

    def checkpoint_every_steps(self) -> int | None:
        return self.checkpoint_every if isinstance(self.checkpoint_every, int) else None

    def checkpoint_every_seconds(self) -> int | None:
        return None if isinstance(self.checkpoint_every, int) else parse_duration_seconds(self.checkpoint_every)


def _cadence_steps(n: int) -> int:
    if n < 1:
        raise ValueError("must be at least 1 step")
    return n


class SecretRef(_Model):
    """A reference to a Secret in the job's namespace."""

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name.")


class StorageSpec(_Model):
    """S3-compatible storage settings. Credentials come only from a Secret or the pod's cloud identity."""

    endpoint: str | None = Field(
        default=None,
        max_length=URI_MAX,
        pattern=ENDPOINT_PATTERN,
        description="S3 endpoint URL (http:// or https://) for MinIO, Ceph RGW, GCS etc. Unset: AWS S3.",
    )
    region: str | None = Field(default=None, min_length=1, max_length=64, description="Region, e.g. us-east-1.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(default="auto", description="Bucket addressing. MinIO usually needs 'path'.")
    secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN). Unset: the pod's cloud identity (IRSA, workload identity).",
    )
    hub_secret_ref: SecretRef | None = Field(default=None, description="Secret with HF_TOKEN for gated hf:// models and datasets.")


# ----------------------------------------------------------------- pod knobs
class Toleration(_Model):
    """A Kubernetes toleration."""

    model_config = _rules(
        _cel(
            "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "a toleration with operator Exists must not set a value",
            ".value",
        ),
    )

    key: str | None = Field(default=None, max_length=317, description="Taint key. Empty with operator Exists matches all taints.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: str | None = Field(default=None, max_length=63, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(default=None, description="Taint effect. Empty matches all effects.")
    toleration_seconds: int | None = Field(default=None, description="For NoExecute: how long the pod stays bound after the taint appears.")

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise _invalid("value", "a toleration with operator Exists must not set a value")
        return self


class EnvVar(_Model):
    """An environment variable set in every trainer container."""

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=ENV_NAME_PATTERN, description="Variable name, e.g. NCCL_DEBUG.")
    value: str = Field(default="", max_length=4096, description="Value.")


_GPU_RESOURCE = "nvidia.com/gpu"


class ResourcesSpec(_Model):
    """Per-pod compute resources besides GPUs (GPUs come from distributed.gpusPerNode)."""

    model_config = _rules(
        _cel(
            f"!('{_GPU_RESOURCE}' in self.requests) && !('{_GPU_RESOURCE}' in self.limits)",
            f"set GPUs with distributed.gpusPerNode, not {_GPU_RESOURCE} in resources",
        ),
    )

    requests: dict[LabelKey, Quantity] = Field(
        default_factory=dict, max_length=16, description="Resource requests, e.g. {cpu: '32', memory: 256Gi}."
    )
    limits: dict[LabelKey, Quantity] = Field(default_factory=dict, max_length=16, description="Resource limits, e.g. {memory: 300Gi}.")
    shm_size: str = Field(
        default="16Gi", max_length=64, pattern=QUANTITY_PATTERN,
        description="Size of the /dev/shm memory volume (NCCL and data loaders need it).",
    )
    scratch_size: str | None = Field(
        default=None, max_length=64, pattern=QUANTITY_PATTERN,
        description="Size limit of the node-local scratch volume for the model cache and checkpoints.",
    )

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, v: dict[str, int | str]) -> dict[str, int | str]:
        return _check_quantities(v)

    @model_validator(mode="after")
    def _no_gpus_here(self) -> ResourcesSpec:
        if _GPU_RESOURCE in self.requests or _GPU_RESOURCE in self.limits:
            raise ValueError(f"set GPUs with distributed.gpusPerNode, not {_GPU_RESOURCE} in resources")
        return self


class RunPolicy(_Model):
    """Restarts, deadlines and clean-up. May be changed while the job runs."""

    max_restarts: int = Field(default=3, ge=0, le=1000, description="Gang restarts after pod failures before the job fails with BackoffLimitExceeded.")
    backoff_seconds: int = Field(default=30, ge=0, le=86400, description="Wait before the first restart; doubles each restart (capped by the operator, 1h by default).")
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=31_536_000, description="Fail the job with DeadlineExceeded after this long running.")
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=31_536_000, description="Delete the finished FineTuneJob and its objects after this long.")
    termination_grace_seconds: int = Field(default=300, ge=10, le=86400, description="Pod grace period; on SIGTERM the trainer checkpoints within it.")


def _spec_rules() -> list[dict]:
    world = (
        "(self.distributed.nodes * (has(self.distributed.processesPerNode) ? self.distributed.processesPerNode"
        " : (self.distributed.gpusPerNode > 1 ? self.distributed.gpusPerNode : 1)))"
    )
    per_step = f"(self.training.microBatchSize * {world})"
    has_eval = "(has(self.dataset.eval) || self.dataset.evalFraction > 0.0)"
    return [
        _cel(
            f"self.training.globalBatchSize % {per_step} == 0",
            "training.globalBatchSize must be divisible by training.microBatchSize x world size "
            "(nodes x processes per node); use a multiple of that product",
            ".training.globalBatchSize",
            message_expression=(
                "'training.globalBatchSize (' + string(self.training.globalBatchSize) + ') must be divisible by "
                "microBatchSize x world size (' + string(" + per_step + ") + '); use a multiple of it'"
            ),
        ),
        _cel(
            "self.method.type != 'full' || self.output.export != 'adapter'",
            "output.export 'adapter' is not possible with method.type 'full'; use 'merged' or 'auto'",
            ".output.export",
        ),
        _cel(
            "!(self.method.type in ['prompt-tuning', 'prefix-tuning']) || self.output.export in ['adapter', 'auto']",
            "output.export must be 'adapter' (or 'auto') for prompt-tuning and prefix-tuning: soft prompts cannot be merged into weights",
            ".output.export",
        ),
        _cel(
            "!(self.method.type in ['prompt-tuning', 'prefix-tuning']) || !has(self.dataset.packing) || !self.dataset.packing",
            "dataset.packing must be false for prompt-tuning and prefix-tuning: the soft prompt must lead every sample; remove packing or set it to false",
            ".dataset.packing",
        ),
        *[
            _cel(
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
        _cel(
            f"!has(self.training.evalEvery) || {has_eval}",
            "training.evalEvery needs eval data: set dataset.eval or a dataset.evalFraction above 0, or remove evalEvery",
            ".training.evalEvery",
        ),
        _cel(
            f"!has(self.training.generationEval) || self.training.generationEval.samples == 0 || {has_eval}",
            "training.generationEval needs eval data: set dataset.eval or a dataset.evalFraction above 0",
            ".training.generationEval",
        ),
        _cel(
            "self.training.precision != 'fp16' || self.distributed.gpusPerNode > 0",
            "training.precision fp16 needs GPUs; use bf16, fp32 or auto with gpusPerNode 0",
            ".training.precision",
        ),
    ]


class FineTuneJobSpec(_Model):
    """What to fine-tune, on what, how, and where the result goes."""

    model_config = _rules(*_spec_rules())

    model: ModelSpec = Field(description="The base model.")
    dataset: DatasetSpec = Field(description="Training and evaluation data.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="Full fine-tuning or a PEFT method.")
    training: TrainingSpec = Field(description="Hyperparameters; set exactly one of epochs or maxSteps.")
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
        description="Extra environment variables for every trainer container, e.g. NCCL_DEBUG=INFO or NCCL_IB_HCA. Never put credentials here: use storage.secretRef.",
    )
    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=MAP_MAX, description="Node labels the pods must match.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=LIST_MAX, description="Tolerations for tainted GPU nodes.")
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Kubernetes affinity (nodeAffinity, podAffinity, podAntiAffinity), passed through to the pods unchanged.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    pod_annotations: dict[LabelKey, AnnotationValue] = Field(
        default_factory=dict, max_length=MAP_MAX,
        description="Annotations added to the trainer pods, e.g. {sidecar.istio.io/inject: 'false'}.",
    )
    pod_labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=MAP_MAX, description="Labels added to the trainer pods (e.g. for cost attribution)."
    )
    service_account_name: str | None = Field(
        default=None, min_length=1, max_length=NAME_MAX, pattern=DNS_SUBDOMAIN_PATTERN,
        description=(
            "ServiceAccount the trainer pods run as, e.g. one bound to a cloud IAM role (IRSA, workload "
            "identity) for S3 access without a Secret. Unset: a per-job ServiceAccount made by the operator."
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
    suspend: bool = Field(default=False, description="Suspend the job: pods checkpoint and stop; false resumes from the checkpoint. May be changed at any time.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Restarts, deadlines, clean-up. May be changed at any time.")

    @model_validator(mode="after")
    def _cross_field(self) -> FineTuneJobSpec:
        m, t, d, o, ds = self.method.type, self.training, self.distributed, self.output, self.dataset
        per_step = t.micro_batch_size * d.world_size()
        if t.global_batch_size % per_step:
            raise _invalid(
                "training.globalBatchSize",
                f"({t.global_batch_size}) must be divisible by microBatchSize x world size "
                f"({t.micro_batch_size} x {d.world_size()} = {per_step}); use a multiple of {per_step}",
            )
        if m == "full" and o.export == "adapter":
            raise _invalid("output.export", "'adapter' is not possible with method.type 'full'; use 'merged' or 'auto'")
        if m in SOFT_PROMPT_METHODS and o.export not in ("adapter", "auto"):
            raise _invalid(
                "output.export",
                f"must be 'adapter' (or 'auto') for method.type {m!r}: soft prompts cannot be merged into weights",
            )
        if m in SOFT_PROMPT_METHODS and ds.packing:
            raise _invalid(
                "dataset.packing",
                f"must be false for method.type {m!r}: the soft prompt must lead every sample; remove packing or set it to false",
            )
        n_virtual = self.method.num_virtual_tokens()
        if n_virtual and n_virtual >= ds.max_seq_length:
            field = "promptTuning" if m == "prompt-tuning" else "prefixTuning"
            raise _invalid(
                "dataset.maxSeqLength",
                f"({ds.max_seq_length}) must be larger than method.{field}.numVirtualTokens ({n_virtual})",
            )
        if t.eval_every is not None and not ds.has_eval():
            raise _invalid(
                "training.evalEvery",
                "needs eval data: set dataset.eval or a dataset.evalFraction above 0, or remove evalEvery",
            )
        if t.generation_eval is not None and t.generation_eval.samples > 0 and not ds.has_eval():
            raise _invalid("training.generationEval", "needs eval data: set dataset.eval or a dataset.evalFraction above 0")
        if t.precision == "fp16" and d.gpus_per_node == 0:
            raise _invalid("training.precision", "fp16 needs GPUs; use bf16, fp32 or auto with gpusPerNode 0")
        # Resolve the "auto" values that depend on other sections.
        if ds.packing is None:
            ds.packing = m not in SOFT_PROMPT_METHODS
        if o.export == "auto":
            o.export = "merged" if m == "full" else "adapter"
        return self


# -------------------------------------------------------------------- status
Phase = Literal["Pending", "Queued", "Initializing", "Running", "Suspended", "Restarting", "Exporting", "Succeeded", "Failed"]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]
TERMINAL_PHASES = ("Succeeded", "Failed")


class Condition(_Model):
    """One observation of the job's state (Kubernetes condition conventions)."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready, Running, Succeeded, Failed, Suspended.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str | None = Field(default=None, max_length=1024, description="CamelCase machine-readable reason.")
    message: str | None = Field(default=None, max_length=32768, description="Human-readable details.")
    last_transition_time: str | None = Field(default=None, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="Spec generation this condition describes.")


class Progress(_Model):
    """Training progress, reported by rank 0 (keys are the progress-record contract)."""

    step: int | None = Field(default=None, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, description="Fractional epoch.")
    percent: float | None = Field(default=None, description="step / totalSteps x 100.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest evaluation loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(default=None, description="Real (non-padding) tokens per second over all ranks.")
    mfu: float | None = Field(default=None, description="Model FLOPs utilisation (0-1) on a known GPU.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds to the end of training.")
    updated_at: str | None = Field(default=None, description="When the trainer last reported (RFC 3339).")


class CheckpointRef(_Model):
    """A committed checkpoint."""

    step: int | None = Field(default=None, description="Global step of the checkpoint.")
    uri: str | None = Field(default=None, description="Where it is.")
    time: str | None = Field(default=None, description="When it was committed.")


class OutputStatus(_Model):
    """Where the exported results are."""

    adapter_uri: str | None = Field(default=None, description="Exported PEFT adapter.")
    merged_uri: str | None = Field(default=None, description="Exported merged model.")
    summary_uri: str | None = Field(default=None, description="Run summary JSON.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Final metrics, e.g. evalLoss, perplexity.")


class FineTuneJobStatus(_Model):
    """Observed state, written by the operator and (progress only) by rank 0."""

    phase: Phase | None = Field(default=None, description="Pending, Queued, Initializing, Running, Suspended, Restarting, Exporting, Succeeded or Failed.")
    reason: str | None = Field(default=None, description="Reason for the current phase (CamelCase), e.g. InvalidSpec, BackoffLimitExceeded.")
    message: str | None = Field(default=None, description="Human-readable details.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Latest observations, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    progress: Progress | None = Field(default=None, description="Training progress reported by rank 0.")
    last_checkpoint: CheckpointRef | None = Field(default=None, description="Newest committed checkpoint.")
    restarts: int = Field(default=0, description="Gang restarts so far.")
    attempt: int = Field(default=0, description="Current attempt number (Job suffix).")
    active_job: str | None = Field(default=None, description="Name of the current attempt's batch Job.")
    start_time: str | None = Field(default=None, description="When training first started.")
    completion_time: str | None = Field(default=None, description="When the job finished.")
    observed_generation: int | None = Field(default=None, description="Spec generation the status describes.")
    output: OutputStatus | None = Field(default=None, description="Exported artifacts.")


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = None
    namespace: str | None = None


class FineTuneJob(_Model):
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
    """Load a FineTuneJob from a YAML/JSON file (the first FineTuneJob document in it)."""
    import yaml

    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == KIND:
            return load_job(d)
    raise ValueError(f"{path}: no FineTuneJob document found")
