"""spec.training: optimisation hyperparameters."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .common import ApiModel, cel_rule, model_rules


class GenerationEvalSpec(ApiModel):
    """Task accuracy from greedy generations on a sample of the eval set."""

    samples: int = Field(default=0, ge=0, le=10000, description="Eval rows to generate for (0 disables). Exact match against the reference completion.")
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Generation length limit.")


class TrainingSpec(ApiModel):
    """Optimisation hyperparameters. Set exactly one of epochs or maxSteps."""

    model_config = model_rules(
        cel_rule(
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
    micro_batch_size: int | str = Field(
        default=1,
        description=(
            "Sequences per process per forward/backward pass (1-4096), or 'auto': the memory plan picks the largest "
            "of 8, 4, 2, 1 that fits and divides globalBatchSize / world size (1 when no plan can be made)."
        ),
        json_schema_extra={"pattern": "^(auto)$", "minimum": 1, "maximum": 4096},
    )
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(default="cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(default=0.03, ge=0.0, le=0.5, description="Fraction of steps with linear warmup.")
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, ge=0.0, le=1e6, description="Gradient clipping norm (0 disables).")
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Seed for data order, initialisation and dropout.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto", description="Mixed precision. 'auto': bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU. fp16 needs GPUs."
    )
    gradient_checkpointing: bool | None = Field(
        default=None,
        description=(
            "Recompute activations in backward to save memory (~30% slower). Unset: decided by the memory plan, "
            "off when the job fits without it (on when no plan can be made)."
        ),
    )
    eval_every: int | None = Field(
        default=None, ge=1, le=100_000_000,
        description="Evaluate every N optimizer steps. Unset: at the end of each epoch and of training. Needs eval data.",
    )
    log_every: int = Field(default=1, ge=1, le=100_000, description="Report loss and progress every N optimizer steps.")
    generation_eval: GenerationEvalSpec | None = Field(
        default=None,
        description="Deprecated spelling of evaluation.samples and evaluation.decoding.maxNewTokens (used when evaluation.samples is 0).",
    )
    liger_kernels: bool = Field(default=False, description="Use Liger fused kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) when installed.")
    tracker: Literal["none", "tensorboard", "mlflow", "wandb"] = Field(default="none", description="Experiment tracker (must be installed in the image).")

    @field_validator("micro_batch_size")
    @classmethod
    def _micro_batch(cls, v: int | str) -> int | str:
        if isinstance(v, bool) or isinstance(v, str) and v != "auto":
            raise ValueError("must be a number of sequences (1-4096) or 'auto'")
        if isinstance(v, int) and not 1 <= v <= 4096:
            raise ValueError("must be between 1 and 4096 (or 'auto')")
        return v

    def fixed_micro_batch(self) -> int | None:
        """The micro-batch the spec fixes, or None for 'auto' (the memory plan decides)."""
        return None if self.micro_batch_size == "auto" else int(self.micro_batch_size)

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

