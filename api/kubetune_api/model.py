"""spec.model: the pre-trained base model to fine-tune, or an earlier result to continue.

Three ways to say where training starts (docs/trainer.md, "Continuing from an earlier result"):

- ``source``: a base model (a Hub repo, an S3 folder, a local folder, a GGUF file),
  which may be the merged model an earlier job exported (``<output>/final/merged``);
- ``source`` + ``adapter``: keep training an existing PEFT adapter of that base
  model (``<output>/final/adapter`` of an earlier job, or any PEFT adapter folder);
- ``from: {fineTuneJob: NAME}``: the result of an earlier FineTuneJob in the same
  namespace (the operator) or run folder (``kubetune run``), resolved to its adapter
  and base model or to its merged model before the trainer starts.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .common import (
    JOB_NAME_PATTERN,
    MODEL_SCHEMES,
    NAME_MAX,
    URI_MAX,
    ApiModel,
    cel_rule,
    check_scheme,
    invalid,
    model_rules,
    scheme_rule,
)
from .contract import MAX_JOB_NAME_LENGTH

# The annotation of a resolved manifest that records where ``model.from`` led
# (JSON: the earlier job, the URIs used, its summary); the trainer copies it into
# summary.json as ``lineage``.
LINEAGE_ANNOTATION = "kubetune.io/lineage"


class FromJob(ApiModel):
    """An earlier FineTuneJob whose result this job continues from."""

    fine_tune_job: str = Field(
        min_length=1,
        max_length=MAX_JOB_NAME_LENGTH,
        pattern=JOB_NAME_PATTERN,
        description=(
            "Name of a FineTuneJob in the same namespace (with `kubetune run`: a run folder next to this one, "
            ".kubetune/runs/NAME by default). It must have Succeeded; its exported adapter or merged model "
            "is where this job starts."
        ),
    )
    use: Literal["auto", "adapter", "merged"] = Field(
        default="auto",
        description=(
            "Which of that job's results to start from. 'adapter': keep training its PEFT adapter on its base "
            "model (method.type must be of the same kind, e.g. lora or qlora for a LoRA adapter). 'merged': "
            "its merged model becomes the base model. 'auto': its adapter when it exported one this job's "
            "method can continue, else its merged model."
        ),
    )


ModelTask = Literal["auto", "causal-lm", "seq2seq", "sequence-classification"]
NON_CAUSAL_TASKS = ("seq2seq", "sequence-classification")


class ModelSpec(ApiModel):
    """The pre-trained base model to fine-tune, optionally with an adapter to keep training."""

    model_config = model_rules(
        cel_rule(
            "has(self.source) || has(self.from)",
            "set model.source (a base model) or model.from (an earlier FineTuneJob)",
            ".source",
        ),
        cel_rule(
            "!has(self.source) || !has(self.from)",
            "set exactly one of model.source and model.from: model.from already chooses the base model",
            ".from",
        ),
        cel_rule(
            "!has(self.revision) || (has(self.source) && self.source.startsWith('hf://'))",
            "model.revision applies only to hf:// sources; remove it or use an hf:// source",
            ".revision",
        ),
        cel_rule(
            "!has(self.adapter) || !has(self.from)",
            "model.adapter and model.from are exclusive: model.from already chooses that job's adapter; remove one",
            ".adapter",
        ),
        cel_rule(
            "!(self.task in ['seq2seq', 'sequence-classification']) || !has(self.source) || !self.source.endsWith('.gguf')",
            "model.task seq2seq and sequence-classification need a Hugging Face model folder: a .gguf file holds a "
            "decoder-only (causal-lm) model",
            ".task",
        ),
    )

    source: str | None = Field(
        default=None,
        description=(
            "Where the base model comes from: 'hf://org/name' (a Hugging Face Hub repo), "
            "'s3://bucket/prefix' (a folder in S3-compatible storage holding a Hugging Face "
            "model, e.g. an earlier job's <output>/final/merged), a local path or 'file://' path "
            "(a Hugging Face model folder), or a path to a '.gguf' file (converted once to a Hugging "
            "Face model on first use). Required unless model.from is set."
        ),
        min_length=1,
        max_length=URI_MAX,
        json_schema_extra={"x-kubernetes-validations": [scheme_rule(MODEL_SCHEMES, "model.source")]},
    )
    adapter: str | None = Field(
        default=None,
        description=(
            "An existing PEFT adapter of the base model to keep training instead of starting a new one: "
            "'s3://bucket/prefix', 'hf://org/name' or a local folder holding adapter_config.json (e.g. an "
            "earlier job's <output>/final/adapter). Its kind must match method.type (a LoRA adapter needs lora "
            "or qlora, a prompt-tuning adapter prompt-tuning, ...); its own settings (rank, target modules, "
            "virtual tokens) are kept."
        ),
        min_length=1,
        max_length=URI_MAX,
        json_schema_extra={"x-kubernetes-validations": [scheme_rule(MODEL_SCHEMES, "model.adapter")]},
    )
    from_: FromJob | None = Field(
        default=None,
        alias="from",
        description=(
            "Start from the result of an earlier FineTuneJob instead of model.source: its adapter (kept "
            "training on its base model) or its merged model. Resolved when this job starts; refused with "
            "a reason when that job does not exist or has not Succeeded."
        ),
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=NAME_MAX,
        description="Branch, tag or commit of an hf:// model. Pin a commit for reproducible runs.",
    )
    task: ModelTask = Field(
        default="auto",
        description=(
            "What the model is trained to do. 'causal-lm': next-token prediction (decoder-only models: GPT, Llama, "
            "Qwen). 'seq2seq': an encoder-decoder (T5, BART) maps an input text to a target text. "
            "'sequence-classification': a classification head on the model (BERT, RoBERTa, DeBERTa, MiniLM; "
            "decoder models too) predicts one label per text or text pair, or several with multi-label data. "
            "'auto': from the model's config.json: encoder-decoder models are seq2seq, encoder-only models (and "
            "models saved with a classification head) sequence-classification, everything else causal-lm."
        ),
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
    def _known_scheme(cls, v: str | None) -> str | None:
        return None if v is None else check_scheme(v, MODEL_SCHEMES)

    @field_validator("adapter")
    @classmethod
    def _adapter_scheme(cls, v: str | None) -> str | None:
        return None if v is None else check_scheme(v, MODEL_SCHEMES)

    @model_validator(mode="after")
    def _where_training_starts(self) -> ModelSpec:
        if self.source is None and self.from_ is None:
            raise invalid("source", "set model.source (a base model) or model.from (an earlier FineTuneJob)")
        if self.source is not None and self.from_ is not None:
            raise invalid("from", "set exactly one of model.source and model.from: model.from already chooses the base model")
        if self.adapter is not None and self.from_ is not None:
            raise invalid("adapter", "model.adapter and model.from are exclusive: model.from already chooses that job's adapter; remove one")
        if self.revision is not None and not (self.source or "").startswith("hf://"):
            raise invalid("revision", "applies only to hf:// sources; remove it or use an hf:// source")
        if self.task in NON_CAUSAL_TASKS and (self.source or "").endswith(".gguf"):
            raise invalid(
                "task",
                f"{self.task} needs a Hugging Face model folder: a .gguf file holds a decoder-only (causal-lm) model",
            )
        return self

    def base_source(self) -> str:
        """The base model's source; only for specs whose model.from was resolved (the trainer's)."""
        if self.source is None:
            ref = self.from_.fine_tune_job if self.from_ else "?"
            raise ValueError(f"model.from ({ref}) is resolved to a model when the job starts (by the operator or "
                             f"`kubetune run`); to plan it, use the base model of {ref} as model.source")
        return self.source
