"""spec.distributed: nodes, processes, GPUs and DeepSpeed ZeRO."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .common import ZERO_STAGE_PATTERN, ApiModel, cel_rule, invalid, model_rules


class DistributedSpec(ApiModel):
    """Nodes, GPUs and DeepSpeed ZeRO settings."""

    model_config = model_rules(
        cel_rule(
            "self.offload != 'parameters' || string(self.zeroStage) == '3'",
            "distributed.offload 'parameters' needs distributed.zeroStage 3; set zeroStage: 3 or offload: optimizer",
            ".offload",
        ),
        cel_rule(
            "self.offload in ['none', 'auto'] || string(self.zeroStage) != '0'",
            "distributed.offload needs ZeRO stage 1, 2 or 3; set zeroStage to 'auto' or a stage >= 1",
            ".offload",
        ),
        cel_rule(
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
            "DeepSpeed ZeRO stage: 0, 1, 2, 3 (number or string) or 'auto': the memory plan picks 2 when the "
            "job fits in GPU memory with it, else 3."
        ),
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "pattern": ZERO_STAGE_PATTERN,
            "minimum": 0,
            "maximum": 3,
        },
    )
    offload: Literal["auto", "none", "optimizer", "parameters"] = Field(
        default="auto",
        description=(
            "Offload to CPU memory: 'optimizer' states (ZeRO 1-3) or 'parameters' and optimizer states (ZeRO 3 only). "
            "'auto': none, unless the memory plan finds the job fits on the GPUs only with offload."
        ),
    )
    rendezvous_timeout_seconds: int = Field(default=900, ge=30, le=86400, description="How long ranks wait for each other at start.")

    @field_validator("zero_stage", mode="before")
    @classmethod
    def _int_stage(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _offload_and_processes(self) -> DistributedSpec:
        if self.offload == "parameters" and self.zero_stage != "3":
            raise invalid("offload", "'parameters' needs distributed.zeroStage 3; set zeroStage: 3 or offload: optimizer")
        if self.offload not in ("none", "auto") and self.zero_stage == "0":
            raise invalid("offload", "needs ZeRO stage 1, 2 or 3; set zeroStage to 'auto' or a stage >= 1")
        if self.processes_per_node is not None and self.gpus_per_node and self.processes_per_node != self.gpus_per_node:
            raise invalid(
                "processesPerNode",
                "must equal gpusPerNode on GPU nodes (one process per GPU); remove it or set gpusPerNode: 0 for CPU",
            )
        return self

    def procs_per_node(self) -> int:
        return self.processes_per_node or max(self.gpus_per_node, 1)

    def world_size(self) -> int:
        return self.nodes * self.procs_per_node()

