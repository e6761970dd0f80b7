"""The memory planner on the families beyond Llama causal-LM, BERT and T5: Llama-style decoders with a
classification head (``*ForSequenceClassification``: the ``score`` head), RoBERTa / XLM-RoBERTa, DeBERTa-v2/v3
and BART. Parameter counts from config.json against the models transformers builds (tiny configs built for real,
published configs on the meta device) and the sizes their authors publish; trainable counts against PEFT's own."""
from __future__ import annotations

import pytest

from kubetune_api import memory

# config.json values as published with each model on the Hugging Face Hub (the fields that shape the model)
LLAMA3_8B = dict(model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, intermediate_size=14336, tie_word_embeddings=False)
QWEN25_05B = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True)
TINY_LLAMA = dict(model_type="llama", vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=160, tie_word_embeddings=False, pad_token_id=0)
TINY_MISTRAL = dict(model_type="mistral", vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=160, tie_word_embeddings=False, pad_token_id=0)
TINY_QWEN2 = dict(model_type="qwen2", vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=160, tie_word_embeddings=True, pad_token_id=0)


def _auto_config(config: dict, num_labels: int):
    import transformers

    cfg = transformers.AutoConfig.for_model(**config)
    cfg.num_labels = num_labels
    return cfg


def _built(config: dict, task: str, num_labels: int = 2, meta: bool = False):
    """The model transformers' Auto class for ``task`` builds from ``config`` (on the meta device: no memory)."""
    import contextlib

    import torch
    import transformers

    cls = {"causal-lm": transformers.AutoModelForCausalLM, "seq2seq": transformers.AutoModelForSeq2SeqLM,
           "sequence-classification": transformers.AutoModelForSequenceClassification}[task]
    torch.manual_seed(0)
    with torch.device("meta") if meta else contextlib.nullcontext():
        return cls.from_config(_auto_config(config, num_labels))


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _peft_trainable(model, peft_config) -> int:
    import peft

    return int(peft.get_peft_model(model, peft_config).get_nb_trainable_parameters()[0])


def _method_pairs(task_type: str, lora_targets: list[tuple[str, ...]]):
    """(PEFT config, planner Job) pairs: LoRA/DoRA all-linear and named modules, IA3, prompt and prefix tuning."""
    import peft

    pairs = {
        "lora all-linear r8": (peft.LoraConfig(task_type=task_type, r=8, target_modules="all-linear"),
                               memory.Job(method="lora", lora_r=8)),
        "dora all-linear r4": (peft.LoraConfig(task_type=task_type, r=4, target_modules="all-linear", use_dora=True),
                               memory.Job(method="lora", lora_r=4, use_dora=True)),
        "ia3 default": (peft.IA3Config(task_type=task_type), memory.Job(method="ia3")),
        "prompt 10": (peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=10),
                      memory.Job(method="prompt-tuning", num_virtual_tokens=10)),
        "prefix 10": (peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=10),
                      memory.Job(method="prefix-tuning", num_virtual_tokens=10)),
        "prefix 10 projected": (peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=10, prefix_projection=True),
                                memory.Job(method="prefix-tuning", num_virtual_tokens=10, prefix_projection=True)),
    }
    for t in lora_targets:
        pairs[f"lora {','.join(t)}"] = (peft.LoraConfig(task_type=task_type, r=16, target_modules=list(t)),
                                       memory.Job(method="lora", lora_r=16, lora_targets=t))
    return pairs


# ------------------------------------------------------------------ Llama-style decoders with a classifier
@pytest.mark.parametrize("config", [TINY_LLAMA, TINY_MISTRAL, TINY_QWEN2], ids=["llama", "mistral", "qwen2 (tied)"])
def test_decoder_classifier_counts_match_transformers_and_peft(config):
    """model.task sequence-classification on a Llama-style decoder plans AutoModelForSequenceClassification:
    the score head (hidden x classes, no bias) instead of the lm_head, and PEFT's SEQ_CLS counts (score saved)."""
    shape = memory.shape_from_config(config, "sequence-classification", 3)
    assert isinstance(shape, memory.ModelShape) and shape.task == "sequence-classification" and shape.num_labels == 3
    assert shape.parameters() == _numel(_built(config, "sequence-classification", 3))
    causal = memory.shape_from_config(config, "causal-lm")
    assert causal.parameters() == _numel(_built(config, "causal-lm"))
    for what, (pc, job) in _method_pairs("SEQ_CLS", [("q_proj", "v_proj"), ("down_proj",)]).items():
        want = _peft_trainable(_built(config, "sequence-classification", 3), pc)
        assert memory.count_parameters(shape, job).trainable == want, what


def test_decoder_classifier_published_sizes():
    """Llama-3-8B (8,030,261,248 parameters as a causal LM, Meta's model card: 8.03B) with a 2-class head: the
    lm_head (128256 x 4096) gives way to a 4096 x 2 score head; Qwen2.5-0.5B (tied embeddings, 494,032,768 as a
    causal LM: Qwen's model card, 0.49B) gains its score head. Both checked against the model transformers
    builds on the meta device."""
    llama = memory.shape_from_config(LLAMA3_8B, "sequence-classification", 2)
    assert llama.parameters() == 8_030_261_248 - 128256 * 4096 + 4096 * 2
    assert llama.parameters() == _numel(_built(LLAMA3_8B, "sequence-classification", 2, meta=True))
    qwen = memory.shape_from_config(QWEN25_05B, "sequence-classification", 5)
    assert qwen.parameters() == 494_032_768 + 896 * 5
    assert qwen.parameters() == _numel(_built(QWEN25_05B, "sequence-classification", 5, meta=True))


def test_decoder_classifier_logits_are_classes_not_vocabulary():
    """A classifier's logits are tokens x classes: the plan of a Llama-3-8B classifier has no vocabulary-sized
    logits term, and its 2-class head is what LoRA trains whole."""
    job = memory.Job(method="lora", seq_length=2048)
    s = memory.Settings(0, "none", True, 4)
    lm = memory.estimate(memory.shape_from_config(LLAMA3_8B, "causal-lm"), job, s)
    cls = memory.estimate(memory.shape_from_config(LLAMA3_8B, "sequence-classification", 2), job, s)
    assert lm.terms["logits"] == 4 * 2048 * 128256 * (2 + 4 + 4 + 4)
    assert cls.terms["logits"] == 4 * 2048 * 2 * (2 + 4 + 4 + 4)
    assert cls.params.trainable == lm.params.trainable + 4096 * 2
    assert cls.total < lm.total - 4 * 2048 * 128256 * 10


def test_decoder_classifier_labels_from_config_and_task_check():
    with_labels = {**TINY_LLAMA, "id2label": {"0": "a", "1": "b", "2": "c", "3": "d"}}
    assert memory.shape_from_config(with_labels, "sequence-classification").num_labels == 4
    assert memory.shape_from_config(with_labels, "sequence-classification", 7).num_labels == 7
    saved_cls = {**TINY_LLAMA, "architectures": ["LlamaForSequenceClassification"], "num_labels": 3}
    assert memory.shape_from_config(saved_cls, "auto").task == "sequence-classification"
    with pytest.raises(memory.PlanError, match="model.task seq2seq does not fit"):
        memory.shape_from_config(TINY_LLAMA, "seq2seq")
