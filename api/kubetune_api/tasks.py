"""Which model.task a model can be trained for, read from its config.json alone (no transformers, no weights).

One table for the trainer (``model.task: auto`` and the check of an explicit
task) and for ``kubetune validate`` (a local model folder is checked before
any job starts):

- an encoder-decoder (``is_encoder_decoder``: T5, BART, mT5, Pegasus) is
  seq2seq, and can take a classification head where transformers has one
  (not Pegasus, Marian, LED, ...: seq2seq only);
- a model saved with a classification head (``*ForSequenceClassification``)
  is sequence-classification;
- an encoder-only model (BERT, RoBERTa, DeBERTa, MiniLM, ...: a known encoder
  type or a masked-LM architecture, with no causal-LM architecture) is
  sequence-classification only: it has no causal-LM head worth training;
- anything else is causal-lm first, and can take a classification head.
"""
from __future__ import annotations

from typing import Any

# model_type values of encoder-only families (transformers' names)
ENCODER_ONLY_TYPES = frozenset({
    "albert", "bert", "big_bird", "camembert", "canine", "convbert", "data2vec-text", "deberta", "deberta-v2",
    "distilbert", "electra", "ernie", "esm", "flaubert", "funnel", "ibert", "layoutlm", "longformer", "luke",
    "megatron-bert", "mobilebert", "modernbert", "mpnet", "nezha", "nomic_bert", "rembert", "roberta",
    "roberta-prelayernorm", "roformer", "squeezebert", "xlm", "xlm-roberta", "xlm-roberta-xl", "xmod",
})
# text encoder-decoders without an AutoModelForSequenceClassification class (transformers 5's auto mappings)
SEQ2SEQ_ONLY_TYPES = frozenset({
    "blenderbot", "blenderbot-small", "fsmt", "led", "longt5", "m2m_100", "marian", "nllb-moe", "pegasus", "pegasus_x",
    "prophetnet", "switch_transformers",
})
_DECODER_HEADS = ("ForCausalLM", "LMHeadModel")
_ENCODER_HEADS = ("ForMaskedLM", "ForPreTraining", "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice")


def fitting_tasks(config: dict[str, Any]) -> tuple[str, ...]:
    """The tasks a model's config.json allows, the one ``model.task: auto`` picks first."""
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    if config.get("is_encoder_decoder"):
        if config.get("model_type") in SEQ2SEQ_ONLY_TYPES:
            return ("seq2seq",)
        return ("seq2seq", "sequence-classification")
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return ("sequence-classification",)
    decoder = bool(config.get("is_decoder")) or any(a.endswith(_DECODER_HEADS) for a in archs)
    encoder = config.get("model_type") in ENCODER_ONLY_TYPES or any(a.endswith(_ENCODER_HEADS) for a in archs)
    if encoder and not decoder:
        return ("sequence-classification",)
    return ("causal-lm", "sequence-classification")


def describe(config: dict[str, Any]) -> str:
    archs = ", ".join(a for a in config.get("architectures") or [] if isinstance(a, str)) or "no architectures"
    return f"{config.get('model_type', '?')}: {archs}"


def task_problem(task: str, config: dict[str, Any]) -> str | None:
    """Why an explicit model.task does not fit the model (None when it does, or for 'auto')."""
    fits = fitting_tasks(config)
    if task == "auto" or task in fits:
        return None
    return (f"{task} does not fit the model ({describe(config)}), which can do {' or '.join(fits)}; "
            f"set model.task to {fits[0]} (or auto) or choose another model")
