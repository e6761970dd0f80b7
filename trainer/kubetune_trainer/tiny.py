"""Tiny models and datasets built on the fly, for tests, benchmarks and demos.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained in
a second on a small corpus, the model a randomly initialised Llama.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_WORDS = (
    "the a model learns to answer questions about numbers colors animals and cities "
    "red green blue cat dog bird paris rome tokyo one two three four five six seven "
    "eight nine ten what is capital of sum plus equals answer question user assistant"
).split()


def _corpus(n: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 20))) for _ in range(n)]


# A minimal Llama-3-style chat template with generation markers, so assistant
# masks can be derived from it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|start|>assistant\n{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}\n"
    "{% else %}"
    "<|start|>{{ message['role'] }}\n{{ message['content'] }}<|end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|pad|>", "<|bos|>", "<|eos|>", "<|start|>", "<|end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|start|>", "<|end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer: PreTrainedTokenizerBase, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0,
                max_positions: int = 2048) -> PreTrainedModel:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def save_tiny_model(path: str | os.PathLike, **model_kwargs) -> Path:
    """Build and save a tiny Llama + tokenizer as a Hugging Face folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    model = build_model(tok, **model_kwargs)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_instruction_dataset(path: str | os.PathLike, n: int = 64, seed: int = 0) -> Path:
    """A learnable instruction task: 'add A and B' -> the sum in words."""
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rng.randint(0, 5), rng.randint(0, 5)
            f.write(json.dumps({"prompt": f"what is {names[a]} plus {names[b]} ?", "completion": f" {names[a + b]}"}) + "\n")
    return path


def write_chat_dataset(path: str | os.PathLike, n: int = 64, seed: int = 0) -> Path:
    rng = random.Random(seed)
    caps = {"france": "paris", "italy": "rome", "japan": "tokyo"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for _ in range(n):
            c = rng.choice(sorted(caps))
            msgs = [
                {"role": "system", "content": "answer briefly"},
                {"role": "user", "content": f"what is the capital of {c} ?"},
                {"role": "assistant", "content": caps[c]},
            ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def write_text_dataset(path: str | os.PathLike, n: int = 64, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for line in _corpus(n, seed):
            f.write(json.dumps({"text": line}) + "\n")
    return path


# Topic words per class: a small, learnable classification task for a pretrained encoder.
TOPICS = {
    "sports": ["football", "tennis", "the match", "the goalkeeper", "a marathon", "the team", "basketball", "the referee"],
    "food": ["pasta", "the soup", "fresh bread", "a pizza", "the salad", "chocolate cake", "rice", "the cheese"],
    "weather": ["the rain", "a storm", "the snow", "sunshine", "the wind", "fog", "a heatwave", "thunder"],
    "music": ["the guitar", "a song", "the piano", "the concert", "a melody", "the drums", "the band", "a violin"],
}
_FRAMES = ["i think {} was great today", "everyone talked about {} all evening", "{} is all i can think about",
           "we read a long article about {}", "my friend sent me a photo of {}", "nobody expected {} this week"]


def write_classification_dataset(path: str | os.PathLike, n: int = 128, seed: int = 0, label_ids: bool = False,
                                 topics: tuple[str, ...] | None = None) -> Path:
    """Topic classification rows {text, label}: a sentence mentions one thing of one topic (sports, food, ...).

    ``label_ids``: the label as the topic's index (in ``topics`` order) instead of its name.
    """
    topics = topics or tuple(TOPICS)
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for _ in range(n):
            t = rng.randrange(len(topics))
            text = rng.choice(_FRAMES).format(rng.choice(TOPICS[topics[t]]))
            f.write(json.dumps({"text": text, "label": t if label_ids else topics[t]}) + "\n")
    return path


def build_t5_model(tokenizer: PreTrainedTokenizerBase, d_model: int = 64, layers: int = 2, heads: int = 4,
                   seed: int = 0) -> PreTrainedModel:
    """A randomly initialised tiny T5 (encoder-decoder) on the tiny tokenizer."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // heads, d_ff=d_model * 2, num_layers=layers,
        num_decoder_layers=layers, num_heads=heads, dropout_rate=0.0, feed_forward_proj="relu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    return T5ForConditionalGeneration(cfg)


def save_tiny_t5(path: str | os.PathLike, **model_kwargs) -> Path:
    """Build and save a tiny T5 + tokenizer as a Hugging Face folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    build_t5_model(tok, **model_kwargs).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_seq2seq_dataset(path: str | os.PathLike, n: int = 64, seed: int = 0) -> Path:
    """A learnable seq2seq task {input, target}: name the capital of a country."""
    rng = random.Random(seed)
    caps = {"france": "paris", "italy": "rome", "japan": "tokyo"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for _ in range(n):
            c = rng.choice(sorted(caps))
            f.write(json.dumps({"input": f"what is the capital of {c} ?", "target": caps[c]}) + "\n")
    return path
