"""Model FLOPs per token and the GPU's bf16 peak: model FLOPs utilisation (MFU).

Conventions (PaLM appendix B, Megatron-LM, nanoGPT and torchtitan count the same way):

- N counts the parameters that take part in matrix multiplies: every parameter
  except the *input* embedding table, which is a lookup. The output head counts
  (once, also when it is tied to the input embedding); norm weights are counted
  too (elementwise, but a negligible 2·hidden per layer).
- A matmul weight costs 2 FLOPs per token forward, 2 for the gradient of its
  input and 2 for the gradient of the weight itself:
  - trainable weight (full fine-tuning, LoRA A/B matrices): 6 per token;
  - frozen weight (the base model under LoRA/QLoRA/IA3/prompt tuning): 4 per
    token, forward + input gradient; no weight gradient is computed.
  So full fine-tuning is ``6·N`` and LoRA is ``4·N_base + 6·N_adapter``.
- Attention scores and the weighted sum have no weights, so the same count
  holds for every method: forward ``4·d·s`` per token and layer (QKᵀ and AV,
  ``d`` = query heads × head dim), backward twice that (gradients of both
  operands), hence ``12·layers·d·s`` per token. Causal masking is not halved
  (as in PaLM and Megatron).
- ``s`` is the context a token attends to: its sample's length. Packing keeps
  attention inside each sample, padding attends to nothing, so the token-weighted
  mean over samples ``Σl²/Σl`` is used (``attention_context``). For rows that are
  all one length ``s`` this is ``s``.
- Model FLOPs, not hardware FLOPs: activation recomputation (gradient
  checkpointing), padding and masked-out attention are not counted, so the MFU of
  two setups that train the same tokens is directly comparable.

MFU = model FLOPs per token × real tokens/s ÷ (bf16 dense peak × GPUs). It is
``None`` on CPU and on GPUs missing from ``BF16_DENSE_PEAK`` rather than a guess.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

TERA = 1e12

# bf16 dense Tensor Core peak per GPU, FLOP/s. NVIDIA's datasheets print the
# 2:4-sparsity figure and mark it "with sparsity"; the dense figure is half of it.
# Patterns are tried in order (more specific names first) against
# torch.cuda.get_device_name(), e.g. "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB".
BF16_DENSE_PEAK: list[tuple[str, str, float]] = [
    # (pattern, card, FLOP/s)                  source: datasheet, sparse figure / 2
    (r"\bGH200\b", "GH200", 989 * TERA),  # GH200 datasheet: 1,979 TF sparse
    (r"\bH200\b.*\bNVL\b", "H200 NVL", 835 * TERA),  # H200 datasheet: 1,671 TF sparse (NVL)
    (r"\bH200\b", "H200 SXM", 989 * TERA),  # H200 datasheet: 1,979 TF sparse (SXM)
    (r"\bH100\b.*\bNVL\b", "H100 NVL", 835 * TERA),  # H100 datasheet: 1,671 TF sparse (NVL)
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", 756 * TERA),  # H100 datasheet: 1,513 TF sparse (PCIe)
    (r"\bH100\b", "H100 SXM", 989 * TERA),  # H100 datasheet: 1,979 TF sparse (SXM5, "H100 80GB HBM3")
    (r"\bB200\b", "B200", 2250 * TERA),  # HGX B200 spec: 4.5 PF sparse FP16/BF16 per GPU
    (r"\bA100\b", "A100", 312 * TERA),  # A100 datasheet: 624 TF sparse (SXM4 and PCIe, 40/80 GB)
    (r"\bL40S\b", "L40S", 362 * TERA),  # L40S datasheet: 362.05 | 733 TF sparse
    (r"\bL40\b", "L40", 181 * TERA),  # L40 datasheet: 181.05 | 362.1 TF sparse
    (r"\bL4\b", "L4", 121 * TERA),  # L4 datasheet: 242 TF sparse
    # No NVIDIA datasheet exists for AWS's A10G; 70 TF dense is the figure AWS/NVIDIA
    # quote to customers (reproduced in Baseten's "A10 vs A10G" comparison). Less certain.
    (r"\bA10G\b", "A10G", 70 * TERA),
    (r"\bA10\b", "A10", 125 * TERA),  # A10 datasheet: 125 | 250 TF sparse
    (r"\bRTX A6000\b", "RTX A6000", 154.8 * TERA),  # RTX A6000 datasheet: 309.7 TF sparse
]


def peak_bf16_flops(device_name: str | None) -> float | None:
    """The card's bf16 dense peak in FLOP/s, or None for an unknown name (or None)."""
    if not device_name:
        return None
    for pattern, _card, flops in BF16_DENSE_PEAK:
        if re.search(pattern, device_name, re.IGNORECASE):
            return flops
    return None


def device_peak_flops(device: torch.device | str | None = None) -> float | None:
    """bf16 peak of the current CUDA device; None on CPU (or other accelerators) and unknown GPUs."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    if device is not None and getattr(torch.device(device), "type", "cuda") != "cuda":
        return None
    return peak_bf16_flops(torch.cuda.get_device_name(device))


def flops_per_token(
    trainable_matmul_params: int,
    frozen_matmul_params: int,
    layers: int,
    attention_width: int,
    context: float,
) -> float:
    """Training FLOPs per token: 6·N_trainable + 4·N_frozen + 12·layers·d·s (see module docstring)."""
    return 6.0 * trainable_matmul_params + 4.0 * frozen_matmul_params + 12.0 * layers * attention_width * context


def mfu(flops_per_token_: float | None, tokens_per_second: float | None, peak: float | None, devices: int = 1) -> float | None:
    """Model FLOPs utilisation in [0, 1] (None when anything is unknown)."""
    if not flops_per_token_ or not tokens_per_second or not peak or devices < 1:
        return None
    return flops_per_token_ * tokens_per_second / (peak * devices)


# ------------------------------------------------------------ from data rows
def sample_lengths(row: dict) -> list[int]:
    """Lengths of the samples in one training row: packed rows restart position_ids at each sample."""
    pos = row.get("position_ids")
    if pos is None:
        return [len(row["input_ids"])]
    lengths, current = [], 0
    for p in pos:
        if p == 0 and current:
            lengths.append(current)
            current = 0
        current += 1
    if current:
        lengths.append(current)
    return lengths


def attention_context(lengths: Iterable[int]) -> float:
    """Token-weighted mean sample length Σl²/Σl: the mean number of positions a token's attention spans."""
    total = squares = 0
    for n in lengths:
        total += n
        squares += n * n
    return squares / total if total else 0.0


def dataset_attention_context(rows: Sequence[dict], max_rows: int = 512) -> float:
    """``attention_context`` over at most ``max_rows`` evenly spaced rows (cheap on large datasets)."""
    if not rows:
        return 0.0
    step = max(1, len(rows) // max_rows)
    return attention_context(n for i in range(0, len(rows), step) for n in sample_lengths(rows[i]))


# ---------------------------------------------------------------- from models
def _numel(p: torch.Tensor) -> int:
    quant_state = getattr(p, "quant_state", None)  # bitsandbytes 4-bit: the stored tensor is packed
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        n = 1
        for d in quant_state.shape:
            n *= int(d)
        return n
    return int(getattr(p, "ds_numel", None) or p.numel())  # ZeRO-3 partitions hold no local data


def matmul_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameters of ``model`` that enter matrix multiplies (input embedding excluded)."""
    skip = set()
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    emb = get_in() if callable(get_in) else None
    head = get_out() if callable(get_out) else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        if head is None or getattr(head, "weight", None) is not emb.weight:  # tied: the table is the head too
            skip.add(id(emb.weight))
    trainable = frozen = 0
    for p in model.parameters():  # parameters() yields a shared (tied) tensor once
        if id(p) in skip:
            continue
        if p.requires_grad:
            trainable += _numel(p)
        else:
            frozen += _numel(p)
    return trainable, frozen


def attention_shape(config: PretrainedConfig) -> tuple[int, int]:
    """(layers, query heads × head dim) from a transformers config; (0, 0) when it does not say."""
    get_text = getattr(config, "get_text_config", None)
    cfg = get_text() if callable(get_text) else config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    head_dim = getattr(cfg, "head_dim", None) or (hidden // heads if hidden and heads else None)
    if not (layers and heads and head_dim):
        return 0, 0
    return int(layers), int(heads) * int(head_dim)


def model_flops_per_token(model: Any, context: float) -> float:
    """Training FLOPs per token for ``model`` as it is set up (requires_grad says what trains)."""
    trainable, frozen = matmul_params(model)
    layers, width = attention_shape(model.config)
    return flops_per_token(trainable, frozen, layers, width, context)


def training_mfu(model: Any, rows: Sequence[dict[str, Any]], tokens_per_second: float | None, devices: int = 1) -> float | None:
    """MFU of a finished or running training: None off a known GPU. ``rows`` are the training rows."""
    peak = device_peak_flops()
    if peak is None or not tokens_per_second:
        return None
    return mfu(model_flops_per_token(model, dataset_attention_context(rows)), tokens_per_second, peak, devices)
