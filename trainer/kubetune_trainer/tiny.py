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
