"""The memory plan at start-up (``kubetune_api.memory``): refuse a job that cannot fit, decide the 'auto' settings.

Runs before any weight is downloaded: only the model's ``config.json`` is read
(from the same source as the model). The GPU's memory is measured here, in the
pod (``torch.cuda.get_device_properties``); a CPU process plans against the
pod's memory limit, else this machine's memory, per process.

No plan (an architecture the planner does not know, a config that cannot be
read) is not an error: the job runs with the spec's values and the previous
defaults (gradient checkpointing on, ZeRO 'auto' by model state), and the
fetch reports a missing model as before.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from kubetune_api import memory
from kubetune_api.contract import PermanentError

from . import fetch

log = logging.getLogger("kubetune.memory")

INSUFFICIENT_MEMORY = "InsufficientMemory"


def device_memory(cuda: bool, local_rank: int) -> tuple[str | None, int | None]:
    """(GPU name, total bytes) measured on this rank's GPU; (None, None) on CPU."""
    if not cuda:
        return None, None
    import torch

    props = torch.cuda.get_device_properties(local_rank)
    return props.name, int(props.total_memory)


def plan_memory(spec: Any, precision: str, cuda: bool, local_rank: int) -> memory.Plan | None:
    """The plan for this job on this machine; PermanentError(InsufficientMemory) when nothing fits."""
    try:
        config, source = memory.read_config(fetch.model_source(spec), spec.model.revision, spec.storage)
        name, total = device_memory(cuda, local_rank)
        plan = memory.plan_for_spec(spec, config, gpu=name, device_bytes=total, precision=precision)
    except memory.PlanError as e:
        log.warning("memory plan: none (%s); running with the spec's settings", e)
        return None
    if plan.device_bytes is not None and not plan.fits:
        raise PermanentError(plan.refusal(), INSUFFICIENT_MEMORY)
    log.info("memory plan (%s): %s", source, json.dumps(plan.summary()))
    return plan


def gradient_checkpointing(spec: Any, plan: memory.Plan | None) -> bool:
    """The spec's value, else the plan's decision, else on (the safe choice without a plan)."""
    if spec.training.gradient_checkpointing is not None:
        return bool(spec.training.gradient_checkpointing)
    return plan.chosen.settings.gradient_checkpointing if plan is not None and plan.chosen is not None else True


def offload(spec: Any, plan: memory.Plan | None) -> str:
    if spec.distributed.offload != "auto":
        return str(spec.distributed.offload)
    return plan.chosen.settings.offload if plan is not None and plan.chosen is not None else "none"


def zero_stage(plan: memory.Plan | None) -> int | None:
    """The plan's ZeRO stage (for zeroStage 'auto'), or None without a plan."""
    return plan.chosen.settings.zero_stage if plan is not None and plan.chosen is not None else None


def micro_batch(spec: Any, plan: memory.Plan | None) -> int:
    """The spec's microBatchSize, else (for 'auto') the plan's, else 1."""
    fixed = spec.training.fixed_micro_batch()
    if fixed is not None:
        return int(fixed)
    if plan is not None and plan.chosen is not None:
        return int(plan.chosen.settings.micro_batch)
    log.info("microBatchSize auto: no memory plan, using 1")
    return 1
