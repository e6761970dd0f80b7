"""Model and method: the base model from a local Hugging Face folder, then PEFT (or nothing, for full).

The task (``model.task``, 'auto' resolved from config.json by ``resolve_task``)
picks the transformers class: ``AutoModelForCausalLM``, ``AutoModelForSeq2SeqLM``
or ``AutoModelForSequenceClassification`` (with the job's classes as
``id2label``/``label2id``, so the exported model names them), and PEFT's task
type: CAUSAL_LM, SEQ_2_SEQ_LM, or SEQ_CLS (which keeps the classification head
trainable and saves it with the adapter).

Call ``load_model`` after the TrainingArguments with the DeepSpeed config
exist: under ZeRO-3 transformers then builds the model partitioned
(``deepspeed.zero.Init``) instead of materialising it whole on every rank.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune_api.contract import PermanentError
from kubetune_api.memory_arch import SEQ_CLS_SAVED
from kubetune_api.spec import FineTuneJobSpec

if TYPE_CHECKING:
    import peft
    import torch
    from transformers import BitsAndBytesConfig, PreTrainedTokenizerBase

log = logging.getLogger("kubetune.model")

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def check_model_dir(path: str) -> None:
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise PermanentError(
            f"model not found: {path!r} is not a Hugging Face model folder (no config.json)", "ModelNotFound"
        )


# ---------------------------------------------------------------- the task
TASK_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "sequence-classification": "AutoModelForSequenceClassification",
}
PEFT_TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "sequence-classification": "SEQ_CLS"}


def read_config(model_dir: str) -> dict[str, Any]:
    import json

    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)


def resolve_task(spec: FineTuneJobSpec, model_dir: str) -> str:
    """model.task, 'auto' resolved from the model's config.json; a task the model cannot do fails naming the field."""
    from kubetune_api import tasks

    check_model_dir(model_dir)
    config = read_config(model_dir)
    why = tasks.task_problem(spec.model.task, config)
    if why:
        raise PermanentError(f"model.task {why}", "InvalidSpec")
    task = tasks.fitting_tasks(config)[0] if spec.model.task == "auto" else spec.model.task
    if spec.model.task == "auto":
        log.info("model.task auto: %s (%s)", task, tasks.describe(config))
    return task


def classification_head(model_dir: str) -> dict[int, str] | None:
    """id2label of the model's own classification head (a model saved ForSequenceClassification), else None."""
    config = read_config(model_dir)
    if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return None
    id2label = config.get("id2label") or {str(i): f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))}
    return {int(k): v for k, v in id2label.items()}


def load_tokenizer(model_dir: str, spec: FineTuneJobSpec, gguf_file: str | None = None,
                   task: str = "causal-lm") -> PreTrainedTokenizerBase:
    """The model's tokenizer, ready for training (pad token, right padding). ``gguf_file``: read it from
    that file in ``model_dir`` instead of a Hugging Face folder (``kubetune data preview`` on a GGUF model)."""
    from transformers import AutoTokenizer

    if gguf_file is None:
        check_model_dir(model_dir)
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=spec.model.trust_remote_code, gguf_file=gguf_file)
    except Exception as e:
        raise PermanentError(f"cannot load the tokenizer from {model_dir}: {e}", "ModelNotFound") from e
    if tok.eos_token_id is None and task != "sequence-classification":
        raise PermanentError("the tokenizer defines no EOS token; the model could not learn to stop", "InvalidModel")
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise PermanentError("the tokenizer defines neither a padding nor an EOS token; batches cannot be padded",
                                 "InvalidModel")
        tok.pad_token = tok.eos_token  # padding positions carry no loss and no attention
    tok.padding_side = "right"
    return tok


def auto_class(task: str) -> Any:
    import transformers

    return getattr(transformers, TASK_CLASSES[task])


def count_parameters(model_dir: str, spec: FineTuneJobSpec, task: str = "causal-lm") -> int:
    """Parameters of the base model, counted on the meta device (no memory, no weights read)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=spec.model.trust_remote_code)
    with torch.device("meta"):
        m = auto_class(task).from_config(config, trust_remote_code=spec.model.trust_remote_code)
    return sum(p.numel() for p in m.parameters())


def load_dtype(spec: FineTuneJobSpec, precision: str) -> torch.dtype:
    import torch

    name = spec.model.dtype if spec.model.dtype != "auto" else TORCH_DTYPES[precision]
    return getattr(torch, name)


def attention_implementation(spec: FineTuneJobSpec) -> str:
    import torch

    if spec.model.attention != "auto":
        return spec.model.attention
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def quantization_config(spec: FineTuneJobSpec, precision: str) -> BitsAndBytesConfig:
    import torch
    from transformers import BitsAndBytesConfig

    q = spec.method.quantization_options()
    compute = getattr(torch, q.compute_dtype) if q.compute_dtype != "auto" else load_dtype(spec, precision)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def default_lora_alpha(r: int, use_rslora: bool) -> float:
    """lora.alpha when the spec leaves it unset: the scale (alpha/r, or alpha/sqrt(r) with rsLoRA) is 2 either way.

    Plain LoRA's default is alpha = 2r. Carried over to rsLoRA, 2r/sqrt(r) = 2 sqrt(r) would scale
    the update sqrt(r) times more (4x at r=16) than the same spec without rsLoRA.
    """
    return 2 * math.sqrt(r) if use_rslora else 2 * r


def peft_config(spec: FineTuneJobSpec, model_dir: str, model_task: str = "causal-lm") -> peft.PeftConfig | None:
    """The PEFT config for the method, or None for full fine-tuning."""
    import peft

    m = spec.method
    task = peft.TaskType[PEFT_TASK_TYPES[model_task]]
    if m.type in ("lora", "qlora"):
        o = m.lora_options()
        targets = "all-linear" if o.target_modules == ["all-linear"] else list(o.target_modules)
        return peft.LoraConfig(
            task_type=task,
            r=o.r,
            lora_alpha=o.alpha or default_lora_alpha(o.r, o.use_rslora),
            lora_dropout=o.dropout,
            target_modules=targets,
            use_dora=o.use_dora,
            use_rslora=o.use_rslora,
            modules_to_save=list(o.modules_to_save) if o.modules_to_save else None,
        )
    if m.type == "prompt-tuning":
        o = m.prompt_tuning_options()
        text = o.init == "text"
        return peft.PromptTuningConfig(
            task_type=task,
            num_virtual_tokens=o.num_virtual_tokens,
            prompt_tuning_init=peft.PromptTuningInit.TEXT if text else peft.PromptTuningInit.RANDOM,
            prompt_tuning_init_text=o.init_text if text else None,
            tokenizer_name_or_path=model_dir if text else None,
        )
    if m.type == "prefix-tuning":
        o = m.prefix_tuning_options()
        return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=o.num_virtual_tokens, prefix_projection=o.projection)
    if m.type == "ia3":
        o = m.ia3_options()
        return peft.IA3Config(task_type=task, target_modules=o.target_modules, feedforward_modules=o.feedforward_modules)
    return None


# The heads PEFT adds to modules_to_save for a task (PeftModelForSequenceClassification, peft 0.21); the
# memory planner counts the same ones.
PEFT_SAVED_HEADS = {"SEQ_CLS": SEQ_CLS_SAVED}


def saved_whole(model: torch.nn.Module, config: peft.PeftConfig) -> list[str]:
    """Names of the modules PEFT will train whole for ``config``, and of everything inside them.

    PEFT picks modules_to_save by the end of a module's name, letters and all: on DistilBERT the
    sequence-classification head's ``classifier`` also takes ``pre_classifier``.
    """
    task = getattr(config.task_type, "value", config.task_type)
    names = list(getattr(config, "modules_to_save", None) or ()) + list(PEFT_SAVED_HEADS.get(str(task), ()))
    if not names:
        return []
    modules = [n for n, _ in model.named_modules() if n]
    roots = [m for m in modules if any(m.endswith(n) for n in names)]
    return sorted(m for m in modules if any(m == r or m.startswith(r + ".") for r in roots))


def with_adapter(model: Any, config: peft.PeftConfig) -> Any:
    """``get_peft_model(model, config)``, keeping LoRA/DoRA off every module that modules_to_save trains whole.

    PEFT keeps adapters off a module to save only when the whole last part of its name matches,
    while it saves every module whose name merely ends so: with all-linear it puts LoRA on
    DistilBERT's ``pre_classifier``, then cannot save it whole ("modules_to_save cannot be applied
    to modules of type lora.Linear"). Such modules go into exclude_modules and train whole, as the
    rest of the head does.
    """
    import peft

    if isinstance(config, peft.LoraConfig):
        saved = saved_whole(model, config)
        if saved:  # peft_config sets no exclude_modules of its own
            config.exclude_modules = saved
    return peft.get_peft_model(model, config)


def _numel(p: torch.Tensor) -> int:
    return getattr(p, "ds_numel", None) or p.numel()  # ZeRO-3 partitioned parameters are empty locally


def _count_4bit(model: torch.nn.Module) -> int:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


# PEFT's peft_type in adapter_config.json -> the method types that keep training such an adapter.
ADAPTER_METHODS = {
    "LORA": ("lora", "qlora"),
    "PROMPT_TUNING": ("prompt-tuning",),
    "PREFIX_TUNING": ("prefix-tuning",),
    "IA3": ("ia3",),
}


def read_adapter_config(adapter_dir: str) -> dict[str, Any]:
    import json

    path = os.path.join(adapter_dir, "adapter_config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise PermanentError(f"spec.model.adapter: cannot read {path}: {e}", "AdapterNotFound") from e
    if not isinstance(config, dict):
        raise PermanentError(f"spec.model.adapter: {path} is not a PEFT adapter config (not a JSON object)", "AdapterNotFound")
    return config


def _adapter_settings(spec: FineTuneJobSpec, config: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(spec field, value the spec sets, value the adapter has) for each option the spec sets explicitly."""
    m = spec.method
    pairs: list[tuple[str, Any, Any]] = []
    if m.type in ("lora", "qlora") and m.lora is not None:
        o, given = m.lora, m.lora.model_fields_set
        for field, key, camel in (("r", "r", "r"), ("alpha", "lora_alpha", "alpha"), ("dropout", "lora_dropout", "dropout"),
                                  ("use_dora", "use_dora", "useDora"), ("use_rslora", "use_rslora", "useRslora")):
            if field in given and key in config:
                pairs.append((f"method.lora.{camel}", getattr(o, field), config[key]))
        if "target_modules" in given and o.target_modules != ["all-linear"] and config.get("target_modules") is not None:
            have = config["target_modules"]
            have_set = {have} if isinstance(have, str) else set(have)
            pairs.append(("method.lora.targetModules", sorted(o.target_modules), sorted(have_set)))
    block = {"prompt-tuning": m.prompt_tuning, "prefix-tuning": m.prefix_tuning}.get(m.type)
    if block is not None and "num_virtual_tokens" in block.model_fields_set and "num_virtual_tokens" in config:
        name = "promptTuning" if m.type == "prompt-tuning" else "prefixTuning"
        pairs.append((f"method.{name}.numVirtualTokens", block.num_virtual_tokens, config["num_virtual_tokens"]))
    return pairs


def check_adapter(spec: FineTuneJobSpec, adapter_dir: str) -> dict[str, Any]:
    """The adapter's config, after checking that method.type can keep training it and that the
    method options the spec sets agree with it (the adapter's own settings are what runs)."""
    config = read_adapter_config(adapter_dir)
    peft_type = str(config.get("peft_type") or "?")
    methods = ADAPTER_METHODS.get(peft_type)
    uri = spec.model.adapter
    if methods is None:
        kinds = ", ".join(sorted(ADAPTER_METHODS))
        raise PermanentError(f"spec.model.adapter: {uri} is a {peft_type} adapter; kubetune continues {kinds} adapters",
                             "InvalidSpec")
    if spec.method.type not in methods:
        raise PermanentError(
            f"spec.method.type: {spec.method.type!r} cannot keep training spec.model.adapter {uri}, a {peft_type} "
            f"adapter: set method.type to {' or '.join(methods)}, or remove model.adapter to start a new adapter",
            "InvalidSpec",
        )
    for field, wanted, have in _adapter_settings(spec, config):
        if wanted != have:
            raise PermanentError(
                f"spec.{field}: {wanted!r} differs from the adapter's {have!r} (spec.model.adapter {uri}): a continued "
                f"adapter keeps its own settings; remove {field} or set it to {have!r}",
                "InvalidSpec",
            )
    return config


def _load_adapter(model: Any, spec: FineTuneJobSpec, adapter_dir: str) -> Any:
    """The model with the adapter of spec.model.adapter attached, trainable."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    except (ValueError, RuntimeError, KeyError) as e:  # e.g. shapes of another base model
        raise PermanentError(f"spec.model.adapter {spec.model.adapter} does not fit the base model "
                             f"{spec.model.source}: {e}", "InvalidSpec") from e


@dataclass
class ModelInfo:
    n_params: int
    n_trainable: int
    dtype: str
    attention: str
    quantized_modules: int = 0  # bitsandbytes 4-bit linear layers (qlora)


def task_kwargs(task: str, labels: Any = None, pad_token_id: int | None = None) -> dict[str, Any]:
    """from_pretrained arguments a task adds: a classification head sized and named for the job's classes."""
    if task != "sequence-classification" or labels is None:
        return {}
    out = {
        "num_labels": len(labels.names),
        "id2label": labels.id2label(),
        "label2id": {n: i for i, n in labels.id2label().items()},
        "problem_type": "multi_label_classification" if labels.multi_label else "single_label_classification",
    }
    if pad_token_id is not None:
        out["pad_token_id"] = pad_token_id  # decoder classifiers pool the last non-padding token
    return out


def load_model(spec: FineTuneJobSpec, model_dir: str, precision: str, gradient_checkpointing: bool,
               adapter_dir: str | None = None, task: str = "causal-lm", labels: Any = None,
               pad_token_id: int | None = None) -> tuple[Any, ModelInfo]:
    """The base model for ``task`` with the method applied (a new adapter, or the one in ``adapter_dir``
    to keep training; see :func:`check_adapter`); returns (model, ModelInfo).

    ``labels`` (a data.LabelSpace): the classes of a sequence-classification job.
    """
    check_model_dir(model_dir)
    kwargs = dict(
        dtype=load_dtype(spec, precision),
        attn_implementation=attention_implementation(spec),
        trust_remote_code=spec.model.trust_remote_code,
        **task_kwargs(task, labels, pad_token_id),
    )
    if spec.method.type == "qlora":
        kwargs["quantization_config"] = quantization_config(spec, precision)
    try:
        model = auto_class(task).from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError) as e:
        raise PermanentError(f"cannot load the model from {model_dir}: {e}", "ModelNotFound") from e
    model.config.use_cache = False  # no KV cache in training; it also breaks gradient checkpointing
    if spec.method.type == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    n_params = sum(_numel(p) for p in model.parameters())
    config = peft_config(spec, model_dir, task) if adapter_dir is None else None
    if adapter_dir is not None:
        model = _load_adapter(model, spec, adapter_dir)
    elif config is not None:
        try:
            model = with_adapter(model, config)
        except ValueError as e:  # e.g. target modules that do not exist in this model
            raise PermanentError(f"method {spec.method.type}: {e}", "InvalidSpec") from e
    n_trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    info = ModelInfo(n_params, n_trainable, str(kwargs["dtype"]).replace("torch.", ""), kwargs["attn_implementation"],
                     quantized_modules=_count_4bit(model) if spec.method.type == "qlora" else 0)
    log.info("model: %s", info)
    return model, info
