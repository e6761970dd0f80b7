"""spec.method: full fine-tuning or a PEFT method, and each method's option block.

Which option block belongs to which method type is one table
(``_METHOD_OPTIONS``), read by both the CEL rules and the pydantic validator."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from .common import LIST_MAX, ApiModel, CelRule, ModuleName, cel_rule, invalid, model_rules

MethodType = Literal["full", "lora", "qlora", "prompt-tuning", "prefix-tuning", "ia3"]
PEFT_METHODS = ("lora", "qlora", "prompt-tuning", "prefix-tuning", "ia3")
SOFT_PROMPT_METHODS = ("prompt-tuning", "prefix-tuning")


class LoraOptions(ApiModel):
    """LoRA adapter options (also used by qlora)."""

    model_config = model_rules(
        cel_rule(
            "!('all-linear' in self.targetModules) || self.targetModules.size() == 1",
            "lora.targetModules: 'all-linear' already covers every linear layer; use it alone or list module names",
            ".targetModules",
        ),
    )

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the LoRA update matrices.")
    alpha: int | None = Field(
        default=None, ge=1, le=4096, description="LoRA scaling numerator. Unset means 2*r, or 2*sqrt(r) with useRslora (a scale of 2 either way)."
    )
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[ModuleName] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        max_length=LIST_MAX,
        description="Module names to adapt, e.g. [q_proj, v_proj], or [all-linear] for every linear layer but the output head.",
    )
    modules_to_save: list[ModuleName] | None = Field(
        default=None,
        max_length=LIST_MAX,
        description=(
            "Modules trained in full and saved with the adapter, e.g. [embed_tokens, lm_head] "
            "when the tokenizer gained new tokens. Unset: none."
        ),
    )
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")

    @model_validator(mode="after")
    def _all_linear_alone(self) -> LoraOptions:
        if "all-linear" in self.target_modules and len(self.target_modules) > 1:
            raise invalid(
                "targetModules",
                "'all-linear' already covers every linear layer; use it alone or list module names",
            )
        return self


class QuantizationOptions(ApiModel):
    """4-bit quantisation of the frozen base model (qlora only)."""

    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(default=True, description="Quantise the quantisation constants too (saves ~0.4 bit/param).")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="Dtype of the de-quantised matmuls. 'auto' follows training.precision."
    )


class PromptTuningOptions(ApiModel):
    """Learned soft prompt on a frozen model."""

    model_config = model_rules(
        cel_rule(
            "self.init != 'text' || has(self.initText)",
            "promptTuning.initText is required when promptTuning.init is 'text'",
            ".initText",
        ),
        cel_rule(
            "!has(self.initText) || self.init == 'text'",
            "promptTuning.initText is used only with promptTuning.init 'text'; set init: text or remove initText",
            ".initText",
        ),
    )

    num_virtual_tokens: int = Field(default=20, ge=1, le=1024, description="Length of the soft prompt in tokens.")
    init: Literal["random", "text"] = Field(default="random", description="Initialise the soft prompt randomly or from initText.")
    init_text: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Text whose token embeddings initialise the soft prompt (init: text).",
    )

    @model_validator(mode="after")
    def _init_text(self) -> PromptTuningOptions:
        if self.init == "text" and not self.init_text:
            raise invalid("initText", "is required when promptTuning.init is 'text'")
        if self.init_text is not None and self.init != "text":
            raise invalid("initText", "is used only with promptTuning.init 'text'; set init: text or remove initText")
        return self


class PrefixTuningOptions(ApiModel):
    """Learned key/value prefixes in every layer of a frozen model."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=1024, description="Prefix length in tokens.")
    projection: bool = Field(default=False, description="Reparameterise the prefix through an MLP (more stable, more memory).")


class IA3Options(ApiModel):
    """(IA)^3: learned rescaling vectors on a frozen model."""

    target_modules: list[ModuleName] | None = Field(
        default=None, min_length=1, max_length=LIST_MAX,
        description="Modules to rescale. Unset: the model type's defaults in PEFT.",
    )
    feedforward_modules: list[ModuleName] | None = Field(
        default=None, max_length=LIST_MAX,
        description="Which of targetModules are feed-forward layers. Unset: PEFT's defaults.",
    )


# which option blocks each method type accepts
_METHOD_OPTIONS = {
    "full": (),
    "lora": ("lora",),
    "qlora": ("lora", "quantization"),
    "prompt-tuning": ("promptTuning",),
    "prefix-tuning": ("prefixTuning",),
    "ia3": ("ia3",),
}
_OPTION_BLOCKS = ("lora", "quantization", "promptTuning", "prefixTuning", "ia3")


def _method_option_rules() -> list[CelRule]:
    rules = []
    for block in _OPTION_BLOCKS:
        types = [t for t, blocks in _METHOD_OPTIONS.items() if block in blocks]
        allowed = " or ".join(types)
        cond = " || ".join(f"self.type == '{t}'" for t in types)
        rules.append(
            cel_rule(
                f"!has(self.{block}) || {cond}",
                f"method.{block} is only for method.type {allowed}; remove it or change method.type",
                f".{block}",
            )
        )
    return rules


class MethodSpec(ApiModel):
    """How the model is adapted: all weights, or a parameter-efficient method."""

    model_config = model_rules(*_method_option_rules())

    type: MethodType = Field(
        default="lora",
        description="full | lora | qlora | prompt-tuning | prefix-tuning | ia3.",
    )
    lora: LoraOptions | None = Field(default=None, description="Options for type lora or qlora.")
    quantization: QuantizationOptions | None = Field(default=None, description="Options for type qlora.")
    prompt_tuning: PromptTuningOptions | None = Field(default=None, description="Options for type prompt-tuning.")
    prefix_tuning: PrefixTuningOptions | None = Field(default=None, description="Options for type prefix-tuning.")
    ia3: IA3Options | None = Field(default=None, description="Options for type ia3.")

    @model_validator(mode="after")
    def _options_match_type(self) -> MethodSpec:
        allowed = _METHOD_OPTIONS[self.type]
        for block in _OPTION_BLOCKS:
            if getattr(self, _snake(block)) is not None and block not in allowed:
                types = " or ".join(t for t, blocks in _METHOD_OPTIONS.items() if block in blocks)
                raise invalid(block, f"is only for method.type {types}; remove it or change method.type")
        return self

    # Resolved views: options with defaults filled in for the chosen type.
    def lora_options(self) -> LoraOptions:
        return self.lora or LoraOptions()

    def quantization_options(self) -> QuantizationOptions:
        return self.quantization or QuantizationOptions()

    def prompt_tuning_options(self) -> PromptTuningOptions:
        return self.prompt_tuning or PromptTuningOptions()

    def prefix_tuning_options(self) -> PrefixTuningOptions:
        return self.prefix_tuning or PrefixTuningOptions()

    def ia3_options(self) -> IA3Options:
        return self.ia3 or IA3Options()

    def num_virtual_tokens(self) -> int:
        """Soft-prompt length for prompt/prefix tuning, else 0."""
        if self.type == "prompt-tuning":
            return self.prompt_tuning_options().num_virtual_tokens
        if self.type == "prefix-tuning":
            return self.prefix_tuning_options().num_virtual_tokens
        return 0


def _snake(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)

