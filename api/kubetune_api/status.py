"""status: the observed state, written by the operator and (progress only) by rank 0."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import ApiModel

Phase = Literal["Pending", "Queued", "Initializing", "Running", "Suspended", "Restarting", "Exporting", "Succeeded", "Failed"]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]
TERMINAL_PHASES = ("Succeeded", "Failed")


class Condition(ApiModel):
    """One observation of the job's state (Kubernetes condition conventions)."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready, Running, Succeeded, Failed, Suspended.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str | None = Field(default=None, max_length=1024, description="CamelCase machine-readable reason.")
    message: str | None = Field(default=None, max_length=32768, description="Human-readable details.")
    last_transition_time: str | None = Field(default=None, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="Spec generation this condition describes.")


class Progress(ApiModel):
    """Training progress, reported by rank 0 (keys are the progress-record contract)."""

    step: int | None = Field(default=None, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, description="Fractional epoch.")
    percent: float | None = Field(default=None, description="step / totalSteps x 100.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest evaluation loss.")
    eval_metrics: dict[str, float] | None = Field(
        default=None,
        description=(
            "Task metrics of the latest evaluation besides evalLoss: accuracy and macroF1 "
            "(sequence-classification), exactMatch and rougeL (seq2seq)."
        ),
    )
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(default=None, description="Real (non-padding) tokens per second over all ranks.")
    mfu: float | None = Field(default=None, description="Model FLOPs utilisation (0-1) on a known GPU.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds to the end of training.")
    updated_at: str | None = Field(default=None, description="When the trainer last reported (RFC 3339).")


class CheckpointRef(ApiModel):
    """A committed checkpoint."""

    step: int | None = Field(default=None, description="Global step of the checkpoint.")
    uri: str | None = Field(default=None, description="Where it is.")
    time: str | None = Field(default=None, description="When it was committed.")


class OutputStatus(ApiModel):
    """Where the exported results are."""

    adapter_uri: str | None = Field(default=None, description="Exported PEFT adapter.")
    merged_uri: str | None = Field(default=None, description="Exported merged model.")
    summary_uri: str | None = Field(default=None, description="Run summary JSON.")
    report_uri: str | None = Field(default=None, description="The evaluation report (report.html; report.md beside it): base vs tuned metrics and plots.")
    base_model: str | None = Field(
        default=None,
        description="The base model this job trained (its model.source, resolved): what the adapter applies to. "
        "A job continuing from this one with model.from uses it.",
    )
    base_model_revision: str | None = Field(default=None, description="The base model's hf:// revision, if one was pinned.")
    metrics: dict[str, float] = Field(default_factory=dict, description=(
        "Final metrics, e.g. evalLoss, perplexity; accuracy and macroF1 (sequence-classification); exactMatch and "
        "rougeL (seq2seq)."))


class PlanStatus(ApiModel):
    """The memory plan's decisions and numbers for the current attempt, reported by rank 0 at start-up."""

    zero_stage: int | None = Field(default=None, ge=0, le=3, description="ZeRO stage the trainer runs (decided by the plan for zeroStage auto).")
    offload: Literal["none", "optimizer", "parameters"] | None = Field(default=None, description="What is offloaded to host memory.")
    gradient_checkpointing: bool | None = Field(default=None, description="Whether activations are recomputed in backward.")
    micro_batch_size: int | None = Field(default=None, ge=1, le=4096, description="Sequences per GPU per forward pass.")
    estimated_bytes: int | None = Field(
        default=None, ge=0, description="The planner's estimate of peak memory per GPU (per process on CPU), in bytes; absent without a plan.")
    device_bytes: int | None = Field(default=None, ge=0, description="Memory of the GPU (of the process on CPU) the plan was made for, in bytes.")
    device: str | None = Field(default=None, max_length=128, description="The GPU the plan was made for, as the trainer measured it (cpu for CPU jobs).")
    fits: bool | None = Field(
        default=None,
        description="Whether the estimate plus the runtime margin fits the device memory (a job that does not fit fails with InsufficientMemory).",
    )


class FineTuneJobStatus(ApiModel):
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
    plan: PlanStatus | None = Field(
        default=None, description="The memory plan the trainer runs with (kubetune plan shows the same before a run).")

