"""Pod knobs of the spec: tolerations, environment variables and compute resources."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .common import (
    DNS_SUBDOMAIN_PATTERN,
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


# Keys of Secrets and ConfigMaps, as Kubernetes allows them.
_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# The pod fields a container's environment may read (the Downward API's env
# subset, as the API server allows for fieldRef).
FIELD_REF_PATTERN = (
    r"^(metadata\.(name|namespace|uid)|metadata\.(labels|annotations)\['[^'\]]+'\]|"
    r"spec\.(nodeName|serviceAccountName)|status\.(hostIP|hostIPs|podIP|podIPs))$"
)


class KeySelector(ApiModel):
    """One key of a Secret or ConfigMap in the job's namespace."""

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=DNS_SUBDOMAIN_PATTERN, description="Name of the Secret or ConfigMap.")
    key: str = Field(min_length=1, max_length=NAME_MAX, pattern=_KEY_PATTERN, description="The key whose value becomes the variable.")
    optional: bool | None = Field(default=None, description="true: a missing object or key leaves the variable unset instead of failing the pod.")


class FieldSelector(ApiModel):
    """A field of the trainer pod itself (Downward API)."""

    field_path: str = Field(
        max_length=NAME_MAX, pattern=FIELD_REF_PATTERN,
        description="e.g. metadata.name, metadata.namespace, metadata.labels['team'], spec.nodeName, status.podIP.",
    )


class EnvVarSource(ApiModel):
    """Where a variable's value comes from; exactly one source."""

    model_config = model_rules(
        cel_rule(
            "(has(self.secretKeyRef) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0) + (has(self.fieldRef) ? 1 : 0) == 1",
            "set exactly one of secretKeyRef, configMapKeyRef or fieldRef",
        ),
    )

    secret_key_ref: KeySelector | None = Field(
        default=None, description="A key of a Secret: credentials (W&B, MLflow, Hub tokens) belong here, never in value."
    )
    config_map_key_ref: KeySelector | None = Field(default=None, description="A key of a ConfigMap.")
    field_ref: FieldSelector | None = Field(default=None, description="A field of the pod (Downward API).")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if sum(x is not None for x in (self.secret_key_ref, self.config_map_key_ref, self.field_ref)) != 1:
            raise ValueError("set exactly one of secretKeyRef, configMapKeyRef or fieldRef")
        return self


class EnvVar(ApiModel):
    """An environment variable set in every trainer container: a literal value,
    or one taken from a Secret, a ConfigMap or the pod (valueFrom), as in a
    Kubernetes container."""

    model_config = model_rules(
        cel_rule(
            "!has(self.valueFrom) || !has(self.value) || self.value == ''",
            "set value or valueFrom, not both",
            ".valueFrom",
        ),
    )

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=ENV_NAME_PATTERN, description="Variable name, e.g. NCCL_DEBUG.")
    value: str | None = Field(
        default=None, max_length=4096,
        description=(
            "Literal value. Visible to anyone who can read the job, its ConfigMap or its pods: "
            "use valueFrom.secretKeyRef for anything secret."
        ),
    )
    value_from: EnvVarSource | None = Field(default=None, description="Take the value from a Secret, a ConfigMap or the pod.")

    @model_validator(mode="after")
    def _value_or_value_from(self) -> EnvVar:
        if self.value_from is not None and self.value:
            raise invalid("valueFrom", "set value or valueFrom, not both")
        return self


class ObjectRef(ApiModel):
    """A Secret or ConfigMap in the job's namespace, as a whole."""

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=DNS_SUBDOMAIN_PATTERN, description="Its name.")
    optional: bool | None = Field(default=None, description="true: a missing object is ignored instead of failing the pod.")


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


class EnvFromSource(ApiModel):
    """Every key of a Secret or ConfigMap as an environment variable."""

    model_config = model_rules(
        cel_rule("has(self.secretRef) != has(self.configMapRef)", "set exactly one of secretRef or configMapRef"),
    )

    secret_ref: ObjectRef | None = Field(default=None, description="A Secret in the job's namespace; each key becomes a variable.")
    config_map_ref: ObjectRef | None = Field(default=None, description="A ConfigMap in the job's namespace; each key becomes a variable.")
    prefix: str | None = Field(
        default=None, max_length=NAME_MAX, pattern=ENV_NAME_PATTERN, description="Prepended to every key, e.g. WANDB_."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvFromSource:
        if (self.secret_ref is None) == (self.config_map_ref is None):
            raise ValueError("set exactly one of secretRef or configMapRef")
        return self
