"""spec.model: the pre-trained base model to fine-tune."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .common import MODEL_SCHEMES, NAME_MAX, URI_MAX, ApiModel, cel_rule, check_scheme, invalid, model_rules, scheme_rule


class ModelSpec(ApiModel):
    """The pre-trained base model to fine-tune."""

    model_config = model_rules(
        cel_rule(
            "!has(self.revision) || self.source.startsWith('hf://')",
            "model.revision applies only to hf:// sources; remove it or use an hf:// source",
            ".revision",
        ),
    )

    source: str = Field(
        description=(
            "Where the base model comes from: 'hf://org/name' (a Hugging Face Hub repo), "
            "'s3://bucket/prefix' (a folder in S3-compatible storage holding a Hugging Face "
            "model), a local path or 'file://' path (a Hugging Face model folder), or a path "
            "to a '.gguf' file (converted once to a Hugging Face model on first use)."
        ),
        min_length=1,
        max_length=URI_MAX,
        json_schema_extra={"x-kubernetes-validations": [scheme_rule(MODEL_SCHEMES, "model.source")]},
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=NAME_MAX,
        description="Branch, tag or commit of an hf:// model. Pin a commit for reproducible runs.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="Dtype the base weights are loaded in. 'auto' follows training.precision.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow model code shipped with the model repo to run. Off by default: it executes arbitrary code.",
    )
    attention: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        default="auto",
        description="Attention kernel. 'auto' uses flash_attention_2 when installed on GPU, else sdpa.",
    )

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        return check_scheme(v, MODEL_SCHEMES)

    @model_validator(mode="after")
    def _revision_needs_hub(self) -> ModelSpec:
        if self.revision is not None and not self.source.startswith("hf://"):
            raise invalid("revision", "applies only to hf:// sources; remove it or use an hf:// source")
        return self

