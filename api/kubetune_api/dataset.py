"""spec.dataset: training and evaluation data, their format and how samples become sequences."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from .common import DATA_SCHEMES, LIST_MAX, URI_MAX, ApiModel, check_scheme, invalid, scheme_rule


class DatasetSpec(ApiModel):
    """Training and evaluation data."""

    train: str = Field(
        min_length=1,
        max_length=URI_MAX,
        description=(
            "Training data: a JSONL, JSON, Parquet or CSV file or folder, as 's3://bucket/key', "
            "a local path, or 'hf://org/dataset' for a Hub dataset."
        ),
        json_schema_extra={"x-kubernetes-validations": [scheme_rule(DATA_SCHEMES, "dataset.train")]},
    )
    eval: str | None = Field(
        default=None,
        min_length=1,
        max_length=URI_MAX,
        description="Evaluation data, same forms as 'train'. If unset, evalFraction of train is held out.",
        json_schema_extra={"x-kubernetes-validations": [scheme_rule(DATA_SCHEMES, "dataset.eval")]},
    )
    eval_fraction: float = Field(
        default=0.05,
        ge=0.0,
        le=0.5,
        description="Fraction of the training data held out for evaluation when 'eval' is unset (0 disables eval).",
    )
    format: Literal["auto", "text", "instruction", "chat", "seq2seq", "classification"] = Field(
        default="auto",
        description=(
            "Row format. 'text': a 'text' column, loss on all tokens. 'instruction': "
            "prompt/completion or instruction/input/output columns. 'chat': a 'messages' "
            "list of {role, content}, rendered with the tokenizer's chat template. "
            "'seq2seq' (model.task seq2seq, which also reads instruction rows): input/target columns. "
            "'classification' (model.task sequence-classification): text and label columns, plus "
            "text_pair for sentence pairs; a label is a name or a class index, or a list of them for "
            "multi-label data. 'auto' detects it from the columns."
        ),
    )
    labels: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None,
        min_length=2,
        max_length=LIST_MAX * 16,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description=(
            "Class names of a sequence-classification job, in class-index order (label 0 first). They become "
            "the exported model's id2label/label2id. Unset: the distinct labels of the training data, sorted "
            "(integer labels: 0 to the largest one seen), or the model's own id2label when it already has a "
            "classification head."
        ),
    )
    max_seq_length: int = Field(
        default=2048,
        ge=16,
        le=1048576,
        description="Maximum tokens per training sequence (after chat templating).",
    )
    truncation: Literal["truncate", "drop", "fail"] = Field(
        default="truncate",
        description=(
            "What to do with a sample longer than maxSeqLength: 'truncate' keeps the first "
            "maxSeqLength tokens, 'drop' skips the sample (counted), 'fail' stops with an error."
        ),
    )
    packing: bool | None = Field(
        default=None,
        description=(
            "Pack several short samples into one sequence, with attention kept inside each "
            "sample (no cross-sample attention). Large speed-up on mixed-length data. Unset: "
            "on, except for prompt-tuning and prefix-tuning, whose soft prompt must lead every sample."
        ),
    )
    train_on_prompt: bool = Field(
        default=False,
        description="Also compute loss on prompt/user/system tokens. Off: loss only on completions/assistant turns and EOS.",
    )
    bad_rows: Literal["fail", "skip"] = Field(
        default="fail",
        description="Rows that fit no format or are empty: 'fail' stops with the row number, 'skip' drops and reports them.",
    )
    shuffle: bool = Field(default=True, description="Shuffle the training data each epoch (seeded by training.seed).")

    @field_validator("train", "eval")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        return None if v is None else check_scheme(v, DATA_SCHEMES)

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            twice = sorted({x for x in v if v.count(x) > 1})
            raise invalid("labels", f"must be distinct; {twice} appear more than once")
        return v

    def has_eval(self) -> bool:
        """Whether any evaluation data exists (an eval set or a held-out fraction)."""
        return self.eval is not None or self.eval_fraction > 0

