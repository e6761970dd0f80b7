"""Pod knobs of the spec: tolerations, environment variables and compute resources."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .common import (
    ENV_NAME_PATTERN,
    NAME_MAX,
    QUANTITY_PATTERN,
    ApiModel,
    LabelKey,
    Quantity,
    cel_rule,
    check_quantities,
    invalid,
    key_length_rule,
    model_rules,
)


class Toleration(ApiModel):
    """A Kubernetes toleration."""

    model_config = model_rules(
        cel_rule(
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
            raise invalid("value", "a toleration with operator Exists must not set a value")
        return self


class EnvVar(ApiModel):
    """An environment variable set in every trainer container."""

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=ENV_NAME_PATTERN, description="Variable name, e.g. NCCL_DEBUG.")
    value: str = Field(default="", max_length=4096, description="Value.")


_GPU_RESOURCE = "nvidia.com/gpu"


class ResourcesSpec(ApiModel):
    """Per-pod compute resources besides GPUs (GPUs come from distributed.gpusPerNode)."""

    model_config = model_rules(
        cel_rule(
            f"!('{_GPU_RESOURCE}' in self.requests) && !('{_GPU_RESOURCE}' in self.limits)",
            f"set GPUs with distributed.gpusPerNode, not {_GPU_RESOURCE} in resources",
        ),
    )

    requests: dict[LabelKey, Quantity] = Field(
        default_factory=dict, max_length=16, description="Resource requests, e.g. {cpu: '32', memory: 256Gi}.",
        json_schema_extra=key_length_rule("resources.requests"),
    )
    limits: dict[LabelKey, Quantity] = Field(
        default_factory=dict, max_length=16, description="Resource limits, e.g. {memory: 300Gi}.",
        json_schema_extra=key_length_rule("resources.limits"),
    )
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
        return check_quantities(v)

    @model_validator(mode="after")
    def _no_gpus_here(self) -> ResourcesSpec:
        if _GPU_RESOURCE in self.requests or _GPU_RESOURCE in self.limits:
            raise ValueError(f"set GPUs with distributed.gpusPerNode, not {_GPU_RESOURCE} in resources")
        return self

