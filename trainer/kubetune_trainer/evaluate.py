"""Evaluation: exact token-weighted eval loss and perplexity; optional exact-match accuracy.

The Hugging Face Trainer's own eval loss averages per-batch means, which
weights tokens unequally when batches hold different numbers of loss tokens
(always, with packing) and repeats samples to even out ranks. Here every rank
sums the loss over its share of the eval samples and counts its loss tokens;
one all-reduce gives sum/count, identical for any world size, batch size or
packing. Ranks with fewer batches run empty-label batches so that ZeRO-3's
parameter gathers stay in step.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from . import data as data_mod

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from .data import Collator


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _all_reduce_sum(values: list[float], device: torch.device | str) -> list[float]:
    import torch

    t = torch.tensor(values, dtype=torch.float64, device=device)
    d = _dist()
    if d is not None:
        d.all_reduce(t)
    return t.tolist()


def _rank_world() -> tuple[int, int]:
    d = _dist()
    return (d.get_rank(), d.get_world_size()) if d is not None else (0, 1)


def eval_loss(model: torch.nn.Module, samples: list[dict[str, Any]], collator: Collator, batch_size: int,
              device: torch.device | str) -> dict[str, float]:
    """{'eval_loss', 'eval_perplexity', 'eval_tokens'}: mean loss over every eval loss token."""
    import torch

    rank, world = _rank_world()
    mine = samples[rank::world]
    n_batches = -(-len(samples[0::world]) // batch_size)  # rank 0 has the most
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(n_batches):
            chunk = mine[b * batch_size:(b + 1) * batch_size]
            if chunk:
                batch = collator(chunk)
            else:
                batch = collator(samples[:1])
                batch["labels"].fill_(data_mod.IGNORE)
            batch = {k: v.to(device) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != data_mod.IGNORE).sum())
            # num_items_in_batch=1 makes the model's loss the *sum* over loss tokens; without
            # use_cache=False transformers builds a KV cache and then skips packed-sequence masking
            out = model(**batch, use_cache=False, num_items_in_batch=1)
            if n:
                total += float(out.loss)
                count += n
    if was_training:
        model.train()
    total, count = _all_reduce_sum([total, count], device)
    loss = total / count if count else float("nan")
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "eval_tokens": int(count)}


def _prompt_and_reference(row: dict[str, Any], fmt: str, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], str] | None:
    """Prompt token ids and the reference answer text, or None for rows without one."""
    try:
        if fmt == "instruction":
            prompt = [*data_mod._bos(tokenizer), *data_mod._tokens(tokenizer, data_mod.instruction_prompt(row))]
            return prompt, data_mod.instruction_completion(row)
        if fmt == "chat":
            msgs = data_mod._messages(row)
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            text = data_mod.render_chat(tokenizer, msgs[:last], add_generation_prompt=True)
            return tokenizer(text, add_special_tokens=False)["input_ids"], msgs[last]["content"]
    except data_mod.BadRow:
        return None
    return None


def generation_accuracy(model: torch.nn.Module, rows: list[dict[str, Any]], fmt: str, tokenizer: PreTrainedTokenizerBase,
                        samples: int, max_new_tokens: int, device: torch.device | str, synced: bool) -> dict[str, float]:
    """Greedy generation on the first `samples` eval rows; exact match (whitespace-trimmed) with the reference.

    ``synced`` (ZeRO-3): all ranks must step through generate together, so
    every rank runs the same number of generate calls (spare ones on a dummy prompt).
    """
    import torch

    if fmt == "text":
        return {}
    pairs = [p for p in (_prompt_and_reference(r, fmt, tokenizer) for r in rows[:samples]) if p is not None]
    if not pairs:
        return {}
    rank, world = _rank_world()
    mine = pairs[rank::world]
    rounds = len(pairs[0::world])
    stop = {tokenizer.eos_token_id}  # plus the model's own stop tokens (e.g. Llama 3's <|eot_id|>)
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    stop = sorted(stop)
    was_training = model.training
    model.eval()
    # training disables the KV cache; generation wants it
    base_config = getattr(model, "config", None)
    if base_config is not None:
        old_cache, base_config.use_cache = getattr(base_config, "use_cache", None), True
    correct = 0
    with torch.no_grad():
        for i in range(rounds):
            prompt, ref = mine[i] if i < len(mine) else pairs[0]
            ids = torch.tensor([prompt], device=device)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id,
                synced_gpus=synced,
            )
            if i < len(mine):
                text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
                correct += int(text.strip() == ref.strip())
    if base_config is not None:
        base_config.use_cache = old_cache
    if was_training:
        model.train()
    correct, total = _all_reduce_sum([correct, len(mine)], device)
    return {"eval_exact_match": correct / total, "eval_generations": int(total)}
