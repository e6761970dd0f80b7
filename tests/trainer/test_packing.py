"""Packing without cross-sample attention: a packed batch's loss equals the token-weighted mean
loss of the same samples run one by one, for the attention kernels used on CPU (sdpa, eager).

Packing is data.pack + data.Collator (position_ids restarting per sample, no attention mask);
the block-diagonal mask itself is transformers' masking_utils packed-sequence detection.
A control run of the same packed batch *without* position_ids (so attention crosses samples)
must give a clearly different loss, or the test could not tell the two apart.
"""
from __future__ import annotations

import pytest
import torch

from kubetune_api.spec import DatasetSpec
from kubetune_trainer import data, tiny


@pytest.fixture(scope="module")
def samples(tokenizer, tmp_path_factory):
    path = tiny.write_chat_dataset(tmp_path_factory.mktemp("pack") / "chat.jsonl", n=12, seed=1)
    rows = data.load_rows(str(path))
    rows += data.load_rows(str(tiny.write_instruction_dataset(path.with_name("i.jsonl"), n=12, seed=2)))
    chat, _ = data.encode_rows(rows[:12], "chat", tokenizer, DatasetSpec(train="x"))
    instr, _ = data.encode_rows(rows[12:], "instruction", tokenizer, DatasetSpec(train="x", train_on_prompt=True))
    return chat + instr  # mixed lengths (about 10 to 30 tokens)


def model_with(tokenizer, attn: str):
    torch.manual_seed(0)
    m = tiny.build_model(tokenizer)
    with torch.no_grad():  # larger weights than the default init: attention patterns matter for the loss
        for _name, p in m.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    m.config._attn_implementation = attn
    # as in training (model.load_model): with a KV cache, transformers skips packed-sequence detection
    m.config.use_cache = False
    return m.eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_mean_of_unpacked(tokenizer, samples, attn):
    model = model_with(tokenizer, attn)
    with torch.no_grad():
        total, count = 0.0, 0
        for s in samples:
            ids, labels = torch.tensor([s["input_ids"]]), torch.tensor([s["labels"]])
            total += model(input_ids=ids, labels=labels, num_items_in_batch=1).loss.item()  # sum over tokens
            count += int((labels[:, 1:] != data.IGNORE).sum())
        unpacked = total / count

        rows = data.pack(samples, max_len=96)
        assert len(rows) <= len(samples) / 3  # really packed: several samples per row
        batch = data.Collator(tokenizer.pad_token_id)(rows)
        packed = model(**batch).loss.item()

        leaky = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.item()

    assert packed == pytest.approx(unpacked, rel=1e-5, abs=1e-5)
    assert abs(leaky - unpacked) > 1e-2, "control: attention across samples must change the loss"


def test_eval_loss_is_the_same_for_any_batching_and_packing(tokenizer, samples):
    """evaluate.eval_loss is the token-weighted mean however the eval set is cut; the per-batch
    mean of means (what the HF Trainer's eval loop reports) is not."""
    from kubetune_trainer import evaluate

    model = model_with(tokenizer, "sdpa")
    collate = data.Collator(tokenizer.pad_token_id)
    one_by_one = evaluate.eval_loss(model, samples, collate, batch_size=1, device="cpu")
    packed = evaluate.eval_loss(model, data.pack(samples, 96), collate, batch_size=2, device="cpu")
    batched = evaluate.eval_loss(model, samples, collate, batch_size=5, device="cpu")
    assert one_by_one["eval_tokens"] == packed["eval_tokens"] == batched["eval_tokens"]
    assert packed["eval_loss"] == pytest.approx(one_by_one["eval_loss"], rel=1e-5)
    assert batched["eval_loss"] == pytest.approx(one_by_one["eval_loss"], rel=1e-5)
    with torch.no_grad():
        means = [model(**collate(samples[i:i + 5]), use_cache=False).loss.item() for i in range(0, len(samples), 5)]
    assert abs(sum(means) / len(means) - one_by_one["eval_loss"]) > 1e-3


def reference_flash_kernels():
    """flash-attn's two entry points written with torch sdpa, for CPU: same arguments, same results up to rounding."""
    import torch.nn.functional as F

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=causal, scale=softmax_scale)
        return out.transpose(1, 2)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                               deterministic=False, return_attn_probs=False, block_table=None):
        bounds = cu_seqlens_q.tolist()
        outs = [flash_attn_func(q[a:b][None], k[a:b][None], v[a:b][None], softmax_scale=softmax_scale, causal=causal)[0]
                for a, b in zip(bounds[:-1], bounds[1:])]
        return torch.cat(outs)

    return flash_attn_func, flash_attn_varlen_func


@pytest.fixture
def reference_flash_attention(monkeypatch):
    """attn_implementation='flash_attention_2' on CPU: transformers' own flash-attention path over reference kernels."""
    import transformers.modeling_flash_attention_utils as fa

    func, varlen = reference_flash_kernels()
    monkeypatch.setattr(fa, "_lazy_imports", lambda *a, **kw: (func, varlen, None, fa._pad_input, fa._unpad_input))
    monkeypatch.setattr(fa, "_loaded_implementation", None)


def test_flash_attention_packed_micro_batch_of_two_equals_unpacked(tokenizer, samples, reference_flash_attention):
    """transformers finds packed samples for flash-attention only in a one-row batch: the collator flattens a packed
    micro-batch into one row, and the loss equals the unpacked one. Without flattening it does not (control)."""
    model = model_with(tokenizer, "flash_attention_2")
    assert data.flattens_packed_batches(model.config._attn_implementation)
    rows = data.pack(samples, max_len=96)
    assert len(rows) >= 4
    with torch.no_grad():
        total, count = 0.0, 0
        for s in samples:
            ids, labels = torch.tensor([s["input_ids"]]), torch.tensor([s["labels"]])
            total += model(input_ids=ids, labels=labels, num_items_in_batch=1).loss.item()
            count += int((labels[:, 1:] != data.IGNORE).sum())
        unpacked = total / count

        def packed_loss(collate: data.Collator) -> float:
            summed = 0.0
            for i in range(0, len(rows), 2):  # micro-batches of two packed rows
                batch = collate(rows[i:i + 2])
                summed += model(**batch, num_items_in_batch=1).loss.item()
            return summed / count

        flat = data.Collator(tokenizer.pad_token_id, flatten_packed=True)
        assert flat(rows[:2])["input_ids"].shape == (1, len(rows[0]["input_ids"]) + len(rows[1]["input_ids"]))
        flattened = packed_loss(flat)
        two_rows = packed_loss(data.Collator(tokenizer.pad_token_id))
    assert flattened == pytest.approx(unpacked, rel=1e-5, abs=1e-5)
    assert abs(two_rows - unpacked) > 1e-3, "control: a two-row packed batch attends across samples"
