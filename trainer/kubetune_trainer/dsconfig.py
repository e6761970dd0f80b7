"""The DeepSpeed config, derived from the spec.

Deliberately without an ``optimizer`` or ``scheduler`` block: the Hugging Face
Trainer then builds torch AdamW and its own LR schedule (the same code path on
CPU and GPU; a DeepSpeed optimizer block would compile FusedAdam/CPUAdam).
"""
from __future__ import annotations

from dataclasses import dataclass

from kubetune_api.contract import PermanentError
from kubetune_api.spec import FineTuneJobSpec

# Bytes per parameter of model state in mixed-precision Adam training (ZeRO paper):
# 2 (16-bit weights) + 2 (16-bit grads) + 12 (fp32 master, momentum, variance).
_WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
_HEADROOM = 0.6  # fraction of GPU memory model state may use; the rest is activations, buffers, fragmentation


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    micro_batch: int
    world_size: int
    accumulation: int


def batch_plan(spec: FineTuneJobSpec, world_size: int, micro_batch: int | None = None) -> BatchPlan:
    """Gradient accumulation = global batch / (micro batch x world size), which must divide exactly.

    ``micro_batch``: the memory plan's choice for ``microBatchSize: auto`` (default: the spec's value, 1 for auto).
    """
    g = spec.training.global_batch_size
    m = micro_batch or spec.training.fixed_micro_batch() or 1
    if g % (m * world_size):
        raise PermanentError(
            f"training.globalBatchSize {g} is not divisible by microBatchSize {m} x world size {world_size}",
            "InvalidSpec",
        )
    return BatchPlan(g, m, world_size, g // (m * world_size))


def resolve_precision(spec: FineTuneJobSpec, cuda: bool, bf16_supported: bool) -> str:
    p = spec.training.precision
    if p == "auto":
        return ("bf16" if bf16_supported else "fp16") if cuda else "fp32"
    if p == "fp16" and not cuda:  # DeepSpeed's fp16 loss scaling has no CPU path; bf16 and fp32 do
        raise PermanentError("training.precision fp16 needs a GPU; use bf16 or fp32 on CPU", "InvalidSpec")
    return p


def model_state_bytes_per_rank(stage: int, n_params: int, n_trainable: int, precision: str, world_size: int) -> float:
    """Memory for weights, gradients and Adam states per rank under a ZeRO stage (activations excluded)."""
    w = _WEIGHT_BYTES[precision]
    opt = 12 if precision != "fp32" else 8  # fp32: no master copy, momentum + variance
    weights = n_params * w / (world_size if stage >= 3 else 1)
    grads = n_trainable * w / (world_size if stage >= 2 else 1)
    optim = n_trainable * opt / (world_size if stage >= 1 else 1)
    return weights + grads + optim


def choose_zero_stage(
    spec: FineTuneJobSpec,
    n_params: int,
    n_trainable: int,
    precision: str,
    world_size: int,
    gpu_memory_bytes: int | None,
) -> int:
    """'auto': ZeRO-2 when model state fits in the headroom of one GPU, else ZeRO-3.

    QLoRA stays on ZeRO-2 (4-bit weights are not partitioned by ZeRO-3 here);
    on CPU (no GPU memory to fit) ZeRO-2.
    """
    requested = spec.distributed.zero_stage
    if requested == "3" and spec.method.type == "qlora":
        raise PermanentError(
            "method qlora with distributed.zeroStage 3 is not supported (4-bit weights are not partitioned); "
            "use zeroStage 2 or auto",
            "InvalidSpec",
        )
    if requested != "auto":
        return int(requested)
    if spec.method.type == "qlora" or gpu_memory_bytes is None:
        return 2
    need = model_state_bytes_per_rank(2, n_params, n_trainable, precision, world_size)
    return 2 if need <= _HEADROOM * gpu_memory_bytes else 3


def build_ds_config(spec: FineTuneJobSpec, plan: BatchPlan, stage: int, precision: str, offload: str | None = None) -> dict:
    """``offload``: the decided value (the memory plan's for 'auto'); None reads the spec ('auto' there means none)."""
    offload = offload or spec.distributed.offload
    if offload == "parameters" and stage != 3:
        raise PermanentError("distributed.offload 'parameters' needs ZeRO stage 3", "InvalidSpec")
    zero: dict = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e7,
    }
    if stage in (1, 2):
        zero["allgather_bucket_size"] = 5e7
    if stage == 3:
        zero.update(
            stage3_gather_16bit_weights_on_model_save=True,  # export gathers the full weights
            stage3_prefetch_bucket_size=5e7,
            stage3_param_persistence_threshold=1e5,
        )
    if offload in ("optimizer", "parameters") and stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload == "parameters":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": plan.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.accumulation,
        "gradient_clipping": spec.training.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
        # Each node writes a complete checkpoint to its own scratch disk (no shared
        # filesystem across pods); checkpoint.py uploads and commits it.
        "checkpoint": {"use_node_local_storage": True},
    }
