"""spec.output: where checkpoints and the final model go, and how often."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .common import (
    CHECKPOINT_EVERY_PATTERN,
    OUTPUT_SCHEMES,
    URI_MAX,
    ApiModel,
    check_scheme,
    parse_duration_seconds,
    scheme_rule,
)


class OutputSpec(ApiModel):
    """Where checkpoints and the final model go, and how often."""

    uri: str = Field(
        min_length=1,
        max_length=URI_MAX,
        description="Output location: 's3://bucket/prefix' or a local path. Checkpoints go to <uri>/checkpoints/, the result to <uri>/final/.",
        json_schema_extra={"x-kubernetes-validations": [scheme_rule(OUTPUT_SCHEMES, "output.uri")]},
    )
    checkpoint_every: int | str = Field(
        default="30m",
        description="Checkpoint cadence: a number of optimizer steps (e.g. 500) or a duration ('90s', '30m', '2h').",
        json_schema_extra={"pattern": CHECKPOINT_EVERY_PATTERN, "minimum": 1, "maxLength": 32},
    )
    keep_last: int = Field(default=2, ge=1, le=1000, description="Committed checkpoints to keep; older ones are deleted only after a newer one is committed.")
    export: Literal["auto", "adapter", "merged", "both"] = Field(
        default="auto",
        description=(
            "What to export at the end: the PEFT adapter, the merged full model, or both. 'auto': "
            "'merged' for full fine-tuning, else 'adapter'. Full fine-tuning cannot export an adapter; "
            "prompt-tuning and prefix-tuning export only adapters."
        ),
    )

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        return check_scheme(v, OUTPUT_SCHEMES)

    @field_validator("checkpoint_every")
    @classmethod
    def _cadence(cls, v: int | str) -> int | str:
        if isinstance(v, bool):
            raise ValueError("must be a step count or a duration")
        if isinstance(v, int):
            if v < 1:
                raise ValueError("must be at least 1 step")
            return v
        if v.isdigit():
            return _cadence_steps(int(v))
        if parse_duration_seconds(v) < 1:
            raise ValueError("a duration must be at least 1s")
        return v

    def checkpoint_every_steps(self) -> int | None:
        return self.checkpoint_every if isinstance(self.checkpoint_every, int) else None

    def checkpoint_every_seconds(self) -> int | None:
        return None if isinstance(self.checkpoint_every, int) else parse_duration_seconds(self.checkpoint_every)


def _cadence_steps(n: int) -> int:
    if n < 1:
        raise ValueError("must be at least 1 step")
    return n

