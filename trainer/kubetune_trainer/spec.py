"""The FineTuneJob API (kubetune.io/v1alpha1): the single source of truth.

This module is torch-free on purpose: the operator imports it, the CRD is
generated from it (``kubetune_trainer.crd``), and the trainer parses the same
spec from the config file the operator hands it.

Field names are camelCase on the wire (YAML/JSON) and snake_case in Python.
Every field carries a description, which becomes ``kubectl explain`` text.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj", "ftjob"]

MethodType = Literal["full", "lora", "qlora", "prompt-tuning", "prefix-tuning", "ia3"]
PEFT_METHODS = ("lora", "qlora", "prompt-tuning", "prefix-tuning", "ia3")

_DURATION = re.compile(r"^([0-9]+)(s|m|h)$")


def parse_duration_seconds(value: str) -> int:
    """'90s' -> 90, '30m' -> 1800, '2h' -> 7200."""
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration like '90s', '30m' or '2h'")
    n, unit = int(m.group(1)), m.group(2)
    return n * {"s": 1, "m": 60, "h": 3600}[unit]


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

    source: str = Field(
        description=(
            "Where the base model comes from: 'hf://org/name' (a Hugging Face Hub repo), "
            "'s3://bucket/prefix' (a folder in S3-compatible storage holding a Hugging Face "
            "model), a local path or 'file://' path (a Hugging Face model folder), or a path "
            "to a '.gguf' file (converted once to a Hugging Face model on first use)."
        ),
        min_length=1,
    )
    revision: Optional[str] = Field(
        default=None,
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
        if "://" in v and not v.startswith(("hf://", "s3://", "file://")):
            raise ValueError("must start with hf://, s3://, file:// or be a local path")
        return v


# ------------------------------------------------------------------- dataset
class DatasetSpec(_Model):
    """Training and evaluation data."""

    train: str = Field(
        min_length=1,
        description=(
            "Training data: a JSONL, JSON, Parquet or CSV file or folder, as 's3://bucket/key', "
            "a local path, or 'hf://org/dataset' for a Hub dataset."
        ),
    )
    eval: Optional[str] = Field(
        default=None,
        description="Evaluation data, same forms as 'train'. If unset, evalFraction of train is held out.",
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
    packing: bool = Field(
        default=True,
        description=(
            "Pack several short samples into one sequence, with attention kept inside each "
            "sample (no cross-sample attention). Large speed-up on mixed-length data."
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


# -------------------------------------------------------------------- method
class LoraOptions(_Model):
    """LoRA adapter options (also used by qlora)."""

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the LoRA update matrices.")
    alpha: Optional[int] = Field(
        default=None, ge=1, le=4096, description="LoRA scaling numerator. Unset means 2*r."
    )
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description="Module names to adapt, e.g. [q_proj, v_proj], or [all-linear] for every linear layer but the output head.",
    )
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")


class QuantizationOptions(_Model):
    """4-bit quantisation of the frozen base model (qlora only)."""

    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(default=True, description="Quantise the quantisation constants too (saves ~0.4 bit/param).")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="Dtype of the de-quantised matmuls. 'auto' follows training.precision."
    )


class PromptTuningOptions(_Model):
    """Learned soft prompt on a frozen model."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=1024, description="Length of the soft prompt in tokens.")
    init: Literal["random", "text"] = Field(default="random", description="Initialise the soft prompt randomly or from initText.")
    init_text: Optional[str] = Field(default=None, description="Text whose token embeddings initialise the soft prompt (init: text).")


class PrefixTuningOptions(_Model):
    """Learned key/value prefixes in every layer of a frozen model."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=1024, description="Prefix length in tokens.")
    projection: bool = Field(default=False, description="Reparameterise the prefix through an MLP (more stable, more memory).")


class IA3Options(_Model):
    """(IA)^3: learned rescaling vectors on a frozen model."""

    target_modules: Optional[list[str]] = Field(
        default=None, description="Modules to rescale. Unset: the model type's defaults in PEFT."
    )
    feedforward_modules: Optional[list[str]] = Field(
        default=None, description="Which of targetModules are feed-forward layers. Unset: PEFT's defaults."
    )


class MethodSpec(_Model):
    """How the model is adapted: all weights, or a parameter-efficient method."""

    type: MethodType = Field(
        default="lora",
        description="full | lora | qlora | prompt-tuning | prefix-tuning | ia3.",
    )
    lora: Optional[LoraOptions] = Field(default=None, description="Options for type lora or qlora.")
    quantization: Optional[QuantizationOptions] = Field(default=None, description="Options for type qlora.")
    prompt_tuning: Optional[PromptTuningOptions] = Field(default=None, description="Options for type prompt-tuning.")
    prefix_tuning: Optional[PrefixTuningOptions] = Field(default=None, description="Options for type prefix-tuning.")
    ia3: Optional[IA3Options] = Field(default=None, description="Options for type ia3.")

    @model_validator(mode="after")
    def _options_match_type(self) -> "MethodSpec":
        allowed = {
            "full": set(),
            "lora": {"lora"},
            "qlora": {"lora", "quantization"},
            "prompt-tuning": {"prompt_tuning"},
            "prefix-tuning": {"prefix_tuning"},
            "ia3": {"ia3"},
        }[self.type]
        for name in ("lora", "quantization", "prompt_tuning", "prefix_tuning", "ia3"):
            if getattr(self, name) is not None and name not in allowed:
                raise ValueError(
                    f"{to_camel(name)} options are not allowed for method type {self.type!r}; "
                    f"remove them or change method.type"
                )
        if self.type == "prompt-tuning" and self.prompt_tuning and self.prompt_tuning.init == "text" and not self.prompt_tuning.init_text:
            raise ValueError("promptTuning.initText is required when promptTuning.init is 'text'")
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


# ------------------------------------------------------------------ training
class GenerationEvalSpec(_Model):
    """Task accuracy from greedy generations on a sample of the eval set."""

    samples: int = Field(default=0, ge=0, le=10000, description="Eval rows to generate for (0 disables). Exact match against the reference completion.")
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Generation length limit.")


class TrainingSpec(_Model):
    """Optimisation hyperparameters. Set exactly one of epochs or maxSteps."""

    epochs: Optional[float] = Field(default=None, gt=0, le=1000, description="Passes over the training data. Exactly one of epochs/maxSteps.")
    max_steps: Optional[int] = Field(default=None, ge=1, le=100_000_000, description="Optimizer steps to run. Exactly one of epochs/maxSteps.")
    learning_rate: Optional[float] = Field(
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
    max_grad_norm: float = Field(default=1.0, ge=0.0, description="Gradient clipping norm (0 disables).")
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Seed for data order, initialisation and dropout.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto", description="Mixed precision. 'auto': bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU."
    )
    gradient_checkpointing: bool = Field(default=True, description="Recompute activations in backward to save memory (~30% slower).")
    eval_every: Optional[int] = Field(default=None, ge=1, description="Evaluate every N optimizer steps. Unset: at the end of each epoch and of training.")
    log_every: int = Field(default=1, ge=1, description="Report loss and progress every N optimizer steps.")
    generation_eval: Optional[GenerationEvalSpec] = Field(default=None, description="Optional task accuracy from greedy generation.")
    liger_kernels: bool = Field(default=False, description="Use Liger fused kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) when installed.")
    tracker: Literal["none", "tensorboard", "mlflow", "wandb"] = Field(default="none", description="Experiment tracker (must be installed in the image).")

    @model_validator(mode="after")
    def _one_of_epochs_steps(self) -> "TrainingSpec":
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

    nodes: int = Field(default=1, ge=1, le=1024, description="Pods (machines) in the gang. Each runs torchrun.")
    gpus_per_node: int = Field(default=1, ge=0, le=16, description="GPUs per pod, requested as nvidia.com/gpu. 0 runs on CPU.")
    processes_per_node: Optional[int] = Field(
        default=None, ge=1, le=256, description="Training processes per pod. Unset: gpusPerNode, or 1 on CPU."
    )
    zero_stage: Literal["auto", "0", "1", "2", "3"] = Field(
        default="auto",
        description="DeepSpeed ZeRO stage as a string. 'auto' picks from model size and GPU memory (2 when it fits, else 3).",
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

    def procs_per_node(self) -> int:
        return self.processes_per_node or max(self.gpus_per_node, 1)

    def world_size(self) -> int:
        return self.nodes * self.procs_per_node()


# -------------------------------------------------------------------- output
class OutputSpec(_Model):
    """Where checkpoints and the final model go, and how often."""

    uri: str = Field(
        min_length=1,
        description="Output location: 's3://bucket/prefix' or a local path. Checkpoints go to <uri>/checkpoints/, the result to <uri>/final/.",
    )
    checkpoint_every: Union[int, str] = Field(
        default="30m",
        description="Checkpoint cadence: a number of optimizer steps (e.g. 500) or a duration ('90s', '30m', '2h').",
    )
    keep_last: int = Field(default=2, ge=1, le=1000, description="Committed checkpoints to keep; older ones are deleted only after a newer one is committed.")
    export: Literal["adapter", "merged", "both"] = Field(
        default="adapter",
        description="What to export at the end: the PEFT adapter, the merged full model, or both. Full fine-tuning always exports merged.",
    )

    @field_validator("checkpoint_every")
    @classmethod
    def _cadence(cls, v: Union[int, str]) -> Union[int, str]:
        if isinstance(v, bool):
            raise ValueError("must be a step count or a duration")
        if isinstance(v, int):
            if v < 1:
                raise ValueError("must be at least 1 step")
            return v
        if v.isdigit():
            return int(v)
        parse_duration_seconds(v)
        return v

    def checkpoint_every_steps(self) -> Optional[int]:
        return self.checkpoint_every if isinstance(self.checkpoint_every, int) else None

    def checkpoint_every_seconds(self) -> Optional[int]:
        return None if isinstance(self.checkpoint_every, int) else parse_duration_seconds(self.checkpoint_every)


class SecretRef(_Model):
    """A reference to a Secret in the job's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Secret name.")


class StorageSpec(_Model):
    """S3-compatible storage settings. Credentials come only from a Secret or the pod's cloud identity."""

    endpoint: Optional[str] = Field(default=None, description="S3 endpoint URL for MinIO, Ceph RGW, GCS etc. Unset: AWS S3.")
    region: Optional[str] = Field(default=None, description="Region, e.g. us-east-1.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(default="auto", description="Bucket addressing. MinIO usually needs 'path'.")
    secret_ref: Optional[SecretRef] = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN). Unset: the pod's cloud identity (IRSA, workload identity).",
    )
    hub_secret_ref: Optional[SecretRef] = Field(default=None, description="Secret with HF_TOKEN for gated hf:// models and datasets.")


# ----------------------------------------------------------------- pod knobs
class Toleration(_Model):
    """A Kubernetes toleration."""

    key: Optional[str] = Field(default=None, description="Taint key.")
    operator: Optional[Literal["Exists", "Equal"]] = Field(default=None, description="Exists or Equal.")
    value: Optional[str] = Field(default=None, description="Taint value.")
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = Field(default=None, description="Taint effect.")
    toleration_seconds: Optional[int] = Field(default=None, description="For NoExecute: how long the pod stays bound.")


class ResourcesSpec(_Model):
    """Per-pod compute resources besides GPUs (GPUs come from distributed.gpusPerNode)."""

    requests: dict[str, Union[int, str]] = Field(default_factory=dict, description="Resource requests, e.g. {cpu: '32', memory: 256Gi}.")
    limits: dict[str, Union[int, str]] = Field(default_factory=dict, description="Resource limits, e.g. {memory: 300Gi}.")
    shm_size: str = Field(default="16Gi", description="Size of the /dev/shm memory volume (NCCL and data loaders need it).")
    scratch_size: Optional[str] = Field(default=None, description="Size limit of the node-local scratch volume for the model cache and checkpoints.")


class RunPolicy(_Model):
    """Restarts, deadlines and clean-up. May be changed while the job runs."""

    max_restarts: int = Field(default=3, ge=0, le=1000, description="Gang restarts after pod failures before the job fails with BackoffLimitExceeded.")
    backoff_seconds: int = Field(default=30, ge=0, le=86400, description="Wait before the first restart; doubles each restart (capped at 1h).")
    active_deadline_seconds: Optional[int] = Field(default=None, ge=1, description="Fail the job with DeadlineExceeded after this long running.")
    ttl_seconds_after_finished: Optional[int] = Field(default=None, ge=0, description="Delete the finished FineTuneJob and its objects after this long.")
    termination_grace_seconds: int = Field(default=300, ge=10, le=86400, description="Pod grace period; on SIGTERM the trainer checkpoints within it.")


class FineTuneJobSpec(_Model):
    """What to fine-tune, on what, how, and where the result goes."""

    model: ModelSpec = Field(description="The base model.")
    dataset: DatasetSpec = Field(description="Training and evaluation data.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="Full fine-tuning or a PEFT method.")
    training: TrainingSpec = Field(description="Hyperparameters; set exactly one of epochs or maxSteps.")
    distributed: DistributedSpec = Field(default_factory=DistributedSpec, description="Nodes, GPUs, ZeRO.")
    output: OutputSpec = Field(description="Checkpoint and result location.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="S3 endpoint and credentials Secret.")
    image: Optional[str] = Field(default=None, description="Trainer image. Unset: the operator's default.")
    image_pull_policy: Optional[Literal["Always", "IfNotPresent", "Never"]] = Field(default=None, description="Image pull policy.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="CPU, memory, shm and scratch per pod.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods must match.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations for tainted GPU nodes.")
    affinity: Optional[dict[str, Any]] = Field(default=None, description="Kubernetes affinity, passed through to the pods.")
    priority_class_name: Optional[str] = Field(default=None, description="PriorityClass of the pods.")
    scheduler_name: Optional[str] = Field(default=None, description="Scheduler for the pods (e.g. a gang scheduler).")
    queue_name: Optional[str] = Field(default=None, description="Kueue LocalQueue. The Job is created suspended for Kueue to admit as a gang.")
    suspend: bool = Field(default=False, description="Suspend the job: pods checkpoint and stop; false resumes from the checkpoint.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Restarts, deadlines, clean-up.")

    @model_validator(mode="after")
    def _cross_field(self) -> "FineTuneJobSpec":
        m, t, d, o = self.method.type, self.training, self.distributed, self.output
        per_step = t.micro_batch_size * d.world_size()
        if t.global_batch_size % per_step:
            raise ValueError(
                f"training.globalBatchSize ({t.global_batch_size}) must be divisible by "
                f"training.microBatchSize x world size ({t.micro_batch_size} x {d.world_size()} = {per_step}); "
                f"use a multiple of {per_step}"
            )
        if d.offload == "parameters" and d.zero_stage not in ("3", "auto"):
            raise ValueError("distributed.offload 'parameters' needs distributed.zeroStage 3 (or auto)")
        if m == "full" and o.export == "adapter":
            raise ValueError("output.export 'adapter' is not possible with method.type 'full'; use 'merged'")
        if m in ("prompt-tuning", "prefix-tuning") and o.export != "adapter":
            raise ValueError(f"output.export must be 'adapter' for method.type {m!r}: soft prompts cannot be merged into weights")
        return self


# -------------------------------------------------------------------- status
Phase = Literal["Pending", "Queued", "Initializing", "Running", "Suspended", "Restarting", "Exporting", "Succeeded", "Failed"]


class Condition(_Model):
    type: str = Field(description="Condition type, e.g. Ready, Running, Succeeded, Failed, Suspended.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: Optional[str] = Field(default=None, description="CamelCase machine-readable reason.")
    message: Optional[str] = Field(default=None, description="Human-readable details.")
    last_transition_time: Optional[str] = Field(default=None, description="When status last changed (RFC 3339).")
    observed_generation: Optional[int] = Field(default=None, description="Spec generation this condition describes.")


class Progress(_Model):
    step: Optional[int] = Field(default=None, description="Optimizer steps done.")
    total_steps: Optional[int] = Field(default=None, description="Optimizer steps planned.")
    epoch: Optional[float] = Field(default=None, description="Fractional epoch.")
    percent: Optional[float] = Field(default=None, description="step / totalSteps x 100.")
    loss: Optional[float] = Field(default=None, description="Latest training loss.")
    eval_loss: Optional[float] = Field(default=None, description="Latest evaluation loss.")
    learning_rate: Optional[float] = Field(default=None, description="Current learning rate.")
    tokens_per_second: Optional[float] = Field(default=None, description="Real (non-padding) tokens per second over all ranks.")
    mfu: Optional[float] = Field(default=None, description="Model FLOPs utilisation (0-1) on a known GPU.")
    eta_seconds: Optional[int] = Field(default=None, description="Estimated seconds to the end of training.")
    updated_at: Optional[str] = Field(default=None, description="When the trainer last reported (RFC 3339).")


class CheckpointRef(_Model):
    step: Optional[int] = Field(default=None, description="Global step of the checkpoint.")
    uri: Optional[str] = Field(default=None, description="Where it is.")
    time: Optional[str] = Field(default=None, description="When it was committed.")


class OutputStatus(_Model):
    adapter_uri: Optional[str] = Field(default=None, description="Exported PEFT adapter.")
    merged_uri: Optional[str] = Field(default=None, description="Exported merged model.")
    summary_uri: Optional[str] = Field(default=None, description="Run summary JSON.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Final metrics, e.g. evalLoss, perplexity.")


class FineTuneJobStatus(_Model):
    phase: Optional[Phase] = Field(default=None, description="Pending, Queued, Initializing, Running, Suspended, Restarting, Exporting, Succeeded or Failed.")
    reason: Optional[str] = Field(default=None, description="Reason for the current phase.")
    message: Optional[str] = Field(default=None, description="Human-readable details.")
    conditions: list[Condition] = Field(default_factory=list, description="Latest observations.")
    progress: Optional[Progress] = Field(default=None, description="Training progress reported by rank 0.")
    last_checkpoint: Optional[CheckpointRef] = Field(default=None, description="Newest committed checkpoint.")
    restarts: int = Field(default=0, description="Gang restarts so far.")
    attempt: int = Field(default=0, description="Current attempt number (Job suffix).")
    active_job: Optional[str] = Field(default=None, description="Name of the current attempt's batch Job.")
    start_time: Optional[str] = Field(default=None, description="When training first started.")
    completion_time: Optional[str] = Field(default=None, description="When the job finished.")
    observed_generation: Optional[int] = Field(default=None, description="Spec generation the status describes.")
    output: Optional[OutputStatus] = Field(default=None, description="Exported artifacts.")


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Optional[str] = None
    namespace: Optional[str] = None


class FineTuneJob(_Model):
    """A fine-tuning run of a large language model, as a gang of DeepSpeed pods."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion", description="kubetune.io/v1alpha1")
    kind: Literal["FineTuneJob"] = Field(description="FineTuneJob")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: FineTuneJobSpec = Field(description="Desired state.")
    status: Optional[FineTuneJobStatus] = Field(default=None, description="Observed state, written by the operator and rank 0.")


def load_job(data: dict[str, Any]) -> FineTuneJob:
    """Parse a manifest dict (raises pydantic.ValidationError)."""
    return FineTuneJob.model_validate(data)


def load_job_file(path: str) -> FineTuneJob:
    """Load a FineTuneJob from a YAML/JSON file (the first FineTuneJob document in it)."""
    import yaml

    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == KIND:
            return load_job(d)
    raise ValueError(f"{path}: no FineTuneJob document found")
