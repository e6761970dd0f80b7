"""``kubetune plan`` and the memory check of ``kubetune validate --gpu`` (torch-free)."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from . import contract
from .memory import Plan, PlanError, format_plan, parse_quantity, plan_for_spec, read_config
from .spec import load_job_file

INSUFFICIENT_MEMORY = "InsufficientMemory"


def _plan_file(path: str, gpu: str | None, gpu_memory: str | None) -> tuple[Plan, str]:
    job = load_job_file(path)
    spec = job.spec
    config, source = read_config(spec.model.base_source(), spec.model.revision, spec.storage)
    device_bytes = parse_quantity(gpu_memory) if gpu_memory else None
    return plan_for_spec(spec, config, gpu=gpu, device_bytes=device_bytes), source


def plan_cli(files: Sequence[str], gpu: str | None = None, gpu_memory: str | None = None) -> int:
    """Print each job's plan; exit 3 (InsufficientMemory) if one cannot fit, 1 if one cannot be planned."""
    code = contract.OK
    for path in files:
        try:
            p, source = _plan_file(path, gpu, gpu_memory)
        except (PlanError, ValueError, OSError) as e:
            print(f"{path}: cannot plan: {e}", file=sys.stderr)
            code = max(code, 1)
            continue
        print(f"# {path}")
        print(format_plan(p, source))
        if p.device_bytes is not None and not p.fits:
            print(contract.format_error_line(INSUFFICIENT_MEMORY, f"{path}: {p.refusal()}"), file=sys.stderr)
            code = contract.PERMANENT
    return code


def check_memory_cli(files: Sequence[str], gpu: str | None, gpu_memory: str | None) -> int:
    """The memory part of ``kubetune validate --gpu``: one line per file; 3 when a job cannot fit."""
    code = contract.OK
    for path in files:
        try:
            p, _ = _plan_file(path, gpu, gpu_memory)
        except (PlanError, ValueError, OSError) as e:
            print(f"{path}: memory: not checked: {e}")
            continue
        if p.fits:
            s = p.chosen.settings if p.chosen else None
            assert s is not None and p.chosen is not None
            print(f"{path}: memory: fits on {p.device_name}: ~{p.chosen.total / 2**30:.1f} GiB per GPU "
                  f"(ZeRO-{s.zero_stage}, offload {s.offload}, gradient checkpointing "
                  f"{'on' if s.gradient_checkpointing else 'off'}, micro-batch {s.micro_batch})")
        else:
            print(contract.format_error_line(INSUFFICIENT_MEMORY, f"{path}: {p.refusal()}"))
            code = contract.PERMANENT
    return code
