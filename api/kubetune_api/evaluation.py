"""spec.evaluation: the final evaluation (base vs tuned, validation and test sets) and the report."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .common import DATA_SCHEMES, URI_MAX, ApiModel, cel_rule, check_scheme, invalid, model_rules, scheme_rule


class DecodingSpec(ApiModel):
    """How generations for the generation metrics are decoded (recorded with the results)."""

    model_config = model_rules(
        cel_rule(
            "self.strategy == 'sample' || (!has(self.temperature) && !has(self.topP))",
            "evaluation.decoding.temperature and topP apply only to strategy 'sample'; remove them or set strategy: sample",
        ),
        cel_rule(
            "self.strategy == 'beam' || !has(self.numBeams)",
            "evaluation.decoding.numBeams applies only to strategy 'beam'; remove it or set strategy: beam",
        ),
    )

    strategy: Literal["greedy", "sample", "beam"] = Field(
        default="greedy",
        description="'greedy' (the default: deterministic, comparable between runs), 'sample' (seeded by training.seed) or 'beam'.",
    )
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Generation length limit per row.")
    temperature: float | None = Field(default=None, gt=0, le=10, description="Sampling temperature (strategy 'sample' only; unset: 1.0).")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling mass (strategy 'sample' only; unset: 1.0).")
    num_beams: int | None = Field(default=None, ge=2, le=16, description="Beams (strategy 'beam' only; unset: 4).")

    @model_validator(mode="after")
    def _options_match_strategy(self) -> DecodingSpec:
        if self.strategy != "sample" and (self.temperature is not None or self.top_p is not None):
            raise invalid("temperature", "temperature and topP apply only to strategy 'sample'; remove them or set strategy: sample")
        if self.strategy != "beam" and self.num_beams is not None:
            raise invalid("numBeams", "applies only to strategy 'beam'; remove it or set strategy: beam")
        return self

    def generate_kwargs(self) -> dict[str, object]:
        """The ``transformers`` ``generate`` settings this decoding means."""
        if self.strategy == "sample":
            return {"do_sample": True, "temperature": self.temperature or 1.0, "top_p": self.top_p or 1.0, "num_beams": 1}
        if self.strategy == "beam":
            return {"do_sample": False, "num_beams": self.num_beams or 4}
        return {"do_sample": False, "num_beams": 1}


class EvaluationSpec(ApiModel):
    """The evaluation after training: the same metrics for the base and the tuned model, on the same rows."""

    test: str | None = Field(
        default=None,
        min_length=1,
        max_length=URI_MAX,
        description=(
            "A held-out test set, same forms as dataset.train, seen only by this final evaluation (never during "
            "training, so a sweep can select on the validation set and report on this one)."
        ),
        json_schema_extra={"x-kubernetes-validations": [scheme_rule(DATA_SCHEMES, "evaluation.test")]},
    )
    samples: int = Field(
        default=0,
        ge=0,
        le=10000,
        description=(
            "Rows of each eval set (the first ones) that both models generate answers for: exact match, normalised exact "
            "match, ROUGE-L, and JSON validity and per-field match where the reference answer is a JSON object. "
            "0: no generation metrics (loss, perplexity and token accuracy are always computed on the whole set)."
        ),
    )
    baseline: bool = Field(
        default=True,
        description="Also evaluate the base model (before any training step) on the same rows, for the base-vs-tuned table.",
    )
    decoding: DecodingSpec = Field(default_factory=DecodingSpec, description="Decoding settings of the generation metrics.")
    report: bool = Field(default=True, description="Write <output>/final/report.md and report.html with the metrics table and PNG plots.")
    report_rows: int = Field(default=5, ge=0, le=100, description="Rows where base and tuned answers differ, shown in the report.")

    @field_validator("test")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        return None if v is None else check_scheme(v, DATA_SCHEMES)
