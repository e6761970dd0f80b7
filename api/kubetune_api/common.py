"""What every part of the FineTuneJob model shares: the base model class,
patterns and bounds, the constrained field types, and the helpers that write a
CEL rule (``x-kubernetes-validations``) next to the pydantic validator that
enforces the same check.

Validator messages start with the offending field path relative to the model
they run on (``"training.globalBatchSize: ..."``, see :func:`invalid`);
:func:`kubetune_api.contract.validation_messages` joins that onto the error's
location.
"""
from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

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

# One CEL rule as it appears in x-kubernetes-validations.
CelRule = dict[str, Any]


def parse_duration_seconds(value: str) -> int:
    """'90s' -> 90, '30m' -> 1800, '2h' -> 7200."""
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration like '90s', '30m' or '2h'")
    n, unit = int(m.group(1)), m.group(2)
    return n * {"s": 1, "m": 60, "h": 3600}[unit]


def invalid(path: str, message: str) -> ValueError:
    """A cross-field error naming the field (relative to the model the validator runs on)."""
    return ValueError(f"{path}: {message}")


def cel_rule(rule: str, message: str, field_path: str | None = None, message_expression: str | None = None) -> CelRule:
    """One x-kubernetes-validations entry."""
    r: CelRule = {"rule": rule, "message": message}
    if message_expression:
        r["messageExpression"] = message_expression
    if field_path:
        r["fieldPath"] = field_path
    return r


def model_rules(*rules: CelRule) -> ConfigDict:
    """Model-level CEL rules (x-kubernetes-validations on the object)."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": list(rules)})


def scheme_rule(schemes: tuple[str, ...], what: str) -> CelRule:
    """The CEL twin of :func:`check_scheme`."""
    cond = " || ".join(f"self.startsWith('{s}')" for s in schemes)
    listed = ", ".join(schemes)
    return cel_rule(f"!self.contains('://') || {cond}", f"{what} must start with {listed} or be a local path")


def key_length_rule(what: str) -> JsonDict:
    """The CEL twin of LabelKey's bounds on a map's keys (a CRD schema cannot bound property names)."""
    return {"x-kubernetes-validations": [cel_rule(
        f"self.all(k, k.size() >= 1 && k.size() <= {LABEL_KEY_MAX})",
        f"every key of {what} must be 1 to {LABEL_KEY_MAX} characters long",
    )]}


def check_scheme(v: str, schemes: tuple[str, ...]) -> str:
    if "://" in v and not v.startswith(schemes):
        raise ValueError(f"must start with {', '.join(schemes)} or be a local path (got {v!r})")
    return v


ShortName = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX)]
ModuleName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Quantity = Annotated[int | str, Field(json_schema_extra={"pattern": QUANTITY_PATTERN})]
LABEL_KEY_MAX = 317  # a DNS-subdomain prefix (253), '/', a name (63)
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=LABEL_KEY_MAX)]
LabelValue = Annotated[str, StringConstraints(max_length=63)]
AnnotationValue = Annotated[str, StringConstraints(max_length=4096)]
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)


def check_quantities(v: dict[str, int | str]) -> dict[str, int | str]:
    for key, q in v.items():
        if isinstance(q, bool) or (isinstance(q, str) and not _QUANTITY_RE.match(q)):
            raise ValueError(f"{q!r} (for {key}) is not a Kubernetes quantity like '32', '500m' or '256Gi'")
    return v


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused, defaults validated."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        """A field written as null counts as not written, as the API server prunes it before defaulting
        (so `kubetune run` and the trainer accept what `kubectl apply` and `kubetune validate` accept)."""
        if not isinstance(data, dict) or all(v is not None for v in data.values()):
            return data
        fields = {f.alias or name for name, f in cls.model_fields.items()} | set(cls.model_fields)
        return {k: v for k, v in data.items() if v is not None or k not in fields}
