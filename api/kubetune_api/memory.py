"""The memory planner: will a FineTuneJob fit, and with which settings?

Pure arithmetic on a model's ``config.json`` (no torch, no weights), so the
operator image (``kubetune plan``, ``kubetune validate --gpu``) and the
trainer at start-up use the same numbers.

Per process (one per GPU) the plan adds up, in bytes:

- **weights**: every parameter in the training dtype (2 bytes in bf16/fp16,
  4 in fp32); QLoRA's quantised linear layers at ~0.52 byte (NF4 + double
  quantised constants) and the rest in fp32 (peft's k-bit preparation
  upcasts them); divided by the world size under ZeRO-3.
- **gradients**: trainable parameters in the training dtype; divided by the
  world size from ZeRO-2 on.
- **optimizer**: what DeepSpeed keeps per trainable parameter for Adam: fp32
  master weights (4), momentum and variance (8) and an fp32 gradient copy
  (4; 2 under ZeRO-3, as DeepSpeed's own estimator counts); divided by the
  world size from ZeRO-1 on, moved to host memory with ``offload``. Plain
  fp32 at ZeRO-0 has no master copy: 8 bytes (DeepSpeed runs the torch
  optimizer on the module's own fp32 weights).
- **activations**: tensors autograd saves in the forward pass, per token and
  per decoder layer, by architecture (``_layer_activation_elements``); with
  gradient checkpointing only each layer's input plus one layer recomputed.
- **logits**: ``micro-batch x sequence x vocabulary`` in the training dtype,
  their fp32 copy and the loss's log-softmax and its gradient.
- **buffers**: DeepSpeed's gradient buckets (``reduce_bucket_size`` elements,
  two with ``overlap_comm``) and ZeRO-3's gathered layers; one layer's
  activations of transient backward temporaries.
- **runtime**: CUDA context, NCCL and allocator fragmentation: a stated
  margin (``MARGIN_FRACTION`` of the GPU plus ``CUDA_CONTEXT_BYTES``), not a
  guess folded into the other terms.

Llama-style decoders are ``ModelShape`` here (causal LM or sequence
classification); BERT, RoBERTa, DeBERTa-v2/v3, T5 and BART (their parameters,
PEFT counts and activations, built for ``model.task``) are in ``memory_arch``.
``bench/memory_plan.py`` measures these terms against real peaks on CPU.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .memory_arch import Architecture

GIB = 1024**3
MIB = 1024**2

# What the runtime takes before any tensor: CUDA context, cuBLAS workspaces, NCCL
# buffers. Stated, not measured here (no GPU in CI): ~0.5-1 GiB on recent cards.
CUDA_CONTEXT_BYTES = 1 * GIB
# Allocator fragmentation and everything the terms miss, as a fraction of the GPU.
MARGIN_FRACTION = 0.10

# GPU memory by name (what `--gpu` and node labels are matched against), in MiB as
# nvidia-smi reports it. Names are compared without case, spaces, dashes or "NVIDIA".
GPU_MEMORY_MIB: dict[str, int] = {
    "H200-141GB": 143771,
    "H100-94GB": 95830,
    "H100-80GB": 81559,
    "A100-80GB": 81920,
    "A100-40GB": 40960,
    "L40S": 46068,
    "L40": 46068,
    "A40": 46068,
    "A10G": 23028,
    "A10": 23028,
    "L4": 23034,
    "RTX4090": 24564,
    "RTX3090": 24576,
    "V100-32GB": 32768,
    "V100-16GB": 16384,
    "T4": 15360,
    "MI300X": 196608,
}
# Host memory assumed per GPU when spec.resources states none (a cloud VM's share:
# e.g. 8 x H100 nodes carry 1.8-2 TiB). Only offload uses host memory.
HOST_MEMORY_PER_GPU_GIB = {"H200-141GB": 240, "H100-94GB": 240, "H100-80GB": 240, "A100-80GB": 140, "A100-40GB": 100}
DEFAULT_HOST_MEMORY_PER_GPU_GIB = 64

# Node labels of NVIDIA GPU feature discovery that name the card or its memory.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "float32": 4, "bfloat16": 2, "float16": 2}
# bitsandbytes 4-bit: 0.5 byte per weight plus one fp32 absmax per block of 64
# (0.0625 byte), or, with double quantisation, an 8-bit absmax per block plus one
# fp32 constant per 256 blocks (0.0157 byte).
NF4_BYTES = {False: 0.5 + 4 / 64, True: 0.5 + 1 / 64 + 4 / (64 * 256)}

# Adam states per trainable parameter under DeepSpeed mixed precision (its
# estimate_zero2/3_model_states_mem_needs): fp32 master 4 + momentum 4 + variance 4,
# plus an fp32 gradient copy (4 at stages 0-2, 2 at stage 3).
ADAM_STATE_BYTES = 8
MASTER_BYTES = 4


def _norm_gpu(name: str) -> str:
    s = re.sub(r"[\s_\-]", "", name.upper()).replace("NVIDIA", "").replace("TESLA", "")
    return s.replace("GIB", "GB")


class PlanError(ValueError):
    """The plan cannot be made (unknown GPU, unreadable config, unsupported architecture)."""


def gpu_memory_bytes(name: str) -> int:
    """Bytes of the GPU called ``name`` (e.g. 'H100-80GB', 'NVIDIA-A100-SXM4-40GB', 'l4')."""
    want = _norm_gpu(name)
    if want in {_norm_gpu(k) for k in GPU_MEMORY_MIB}:
        return next(v for k, v in GPU_MEMORY_MIB.items() if _norm_gpu(k) == want) * MIB
    # node labels carry form factors and memory kinds: NVIDIA-H100-80GB-HBM3, NVIDIA-A100-SXM4-40GB
    matches = []
    for key, mib in GPU_MEMORY_MIB.items():
        parts = key.split("-")
        if all(_norm_gpu(p) in want for p in parts):
            matches.append((len(_norm_gpu(key)), mib))
    if matches:
        return max(matches)[1] * MIB
    known = ", ".join(GPU_MEMORY_MIB)
    raise PlanError(f"unknown GPU {name!r}; known: {known} (or give the memory, e.g. --gpu-memory 80GiB)")


def parse_quantity(q: int | str) -> int:
    """A Kubernetes quantity ('256Gi', '1.5T', '64') in bytes."""
    if isinstance(q, int):
        return q
    m = re.fullmatch(r"([0-9.]+(?:[eE][0-9]+)?)([KMGTPE]i?|[km])?", str(q).strip())
    if not m:
        raise PlanError(f"{q!r} is not a memory quantity like '80Gi'")
    unit = m.group(2) or ""
    mult = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18, "m": 1e-3}
    if unit.endswith("i"):
        value = 1024 ** ("KMGTPE".index(unit[0]) + 1)
    else:
        value = mult[unit]
    return int(float(m.group(1)) * value)


# ------------------------------------------------------------------ model shape
@dataclass(frozen=True)
class ModelShape:
    """What the planner needs from config.json (decoder-only transformers of the Llama family).

    ``task`` causal-lm: ``*ForCausalLM`` (the lm_head, tied or not); sequence-classification:
    ``*ForSequenceClassification``, whose ``score`` head (hidden x num_labels, no bias) replaces the
    lm_head and whose logits are num_labels wide at every position (the last non-padding one is pooled).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    task: str = "causal-lm"
    num_labels: int = 2

    @property
    def classifier(self) -> bool:
        return self.task == "sequence-classification"

    def head_parameters(self) -> int:
        """The output layer: the score head (classification), else an untied lm_head (0 when tied)."""
        if self.classifier:
            return self.hidden_size * self.num_labels
        return 0 if self.tie_word_embeddings else self.embedding_parameters()

    def output_width(self) -> int:
        """Logits per token: the vocabulary, or the classes."""
        return self.num_labels if self.classifier else self.vocab_size

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_layers(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by module name."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_parameters(self) -> int:
        lin = self.linear_layers()
        n = sum(a * b for a, b in lin.values())
        if self.attention_bias:
            n += self.q_dim + 2 * self.kv_dim
        if self.mlp_bias:
            n += 2 * self.intermediate_size + self.hidden_size
        n += 2 * self.hidden_size  # input and post-attention RMSNorm
        if self.qk_norm:
            n += 2 * self.head_dim
        return n

    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size

    def parameters(self) -> int:
        """Every parameter, counted once when input and output embeddings are tied."""
        return (self.embedding_parameters() + self.num_layers * self.layer_parameters() + self.hidden_size
                + self.head_parameters())

    def linear_parameters(self) -> int:
        """Parameters in the decoder layers' linear weights (what QLoRA quantises)."""
        return self.num_layers * sum(a * b for a, b in self.linear_layers().values())

    def largest_layer_parameters(self) -> int:
        return max(self.embedding_parameters(), self.layer_parameters())


# model types whose decoder layer is the Llama layout: q/k/v/o projections, a gated
# MLP (gate/up/down), RMSNorm, rotary embeddings
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2", "granite")


# the families of memory_arch, for the refusal of an unknown model_type
KNOWN_FAMILIES = ("BERT (bert), DistilBERT (distilbert), ELECTRA (electra), RoBERTa (roberta, xlm-roberta), "
                  "DeBERTa-v2/v3 (deberta-v2), T5 (t5, mt5), BART (bart) and Pegasus (pegasus)")


def shape_from_config(config: Mapping[str, Any], task: str | None = None,
                      num_labels: int | None = None) -> ModelShape | Architecture:
    """The shape of a parsed config.json for ``task`` (None/'auto': the model's first fitting task) with
    ``num_labels`` classes (None: the config's): a Llama-style decoder (ModelShape: causal-lm or
    sequence-classification), or another family of ``memory_arch``; PlanError for other architectures."""
    from .memory_arch import num_labels_of, resolve_task

    mt = str(config.get("model_type", ""))
    if mt not in LLAMA_LIKE:
        from .memory_arch import shape_for

        other = shape_for(config, task, num_labels)
        if other is not None:
            return other
        raise PlanError(
            f"the memory planner knows Llama-style decoders ({', '.join(LLAMA_LIKE)}) and {KNOWN_FAMILIES}, "
            f"not model_type {mt!r}"
        )
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or hidden // heads)
        return ModelShape(
            model_type=mt,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            intermediate_size=int(config["intermediate_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", mt.startswith("gemma"))),
            attention_bias=bool(config.get("attention_bias", mt == "qwen2")),
            mlp_bias=bool(config.get("mlp_bias", False)),
            qk_norm=mt == "qwen3",
            task=resolve_task(config, task),
            num_labels=num_labels_of(config, num_labels),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"config.json lacks or mangles {e}: not a complete {mt} config") from e


# ------------------------------------------------------------------ the job
@dataclass(frozen=True)
class Settings:
    """The settings the plan may choose (``auto`` in the spec) or the spec fixes."""

    zero_stage: int
    offload: str  # none | optimizer | parameters
    gradient_checkpointing: bool
    micro_batch: int


@dataclass(frozen=True)
class Job:
    """What the arithmetic needs from a FineTuneJob spec."""

    method: str = "full"
    precision: str = "bf16"  # of the training step: bf16 | fp16 | fp32
    seq_length: int = 2048
    world_size: int = 1
    lora_r: int = 16
    lora_targets: tuple[str, ...] = ("all-linear",)
    lora_dropout: float = 0.05
    use_dora: bool = False
    modules_to_save: tuple[str, ...] = ()
    double_quant: bool = True
    num_virtual_tokens: int = 0
    prefix_projection: bool = False
    ia3_targets: tuple[str, ...] | None = None
    device: str = "gpu"  # where the job trains: gpu | cpu (BERT/T5 attention kernels differ; see memory_arch)
    reduce_bucket_size: int = int(5e7)
    prefetch_bucket_size: int = int(5e7)
    overlap_comm: bool = True


def job_from_spec(spec: Any, precision: str | None = None) -> Job:
    """A Job from a FineTuneJobSpec; ``precision`` is the resolved one (else 'auto' -> bf16 on GPU, fp32 on CPU)."""
    t, m, d = spec.training, spec.method, spec.distributed
    if precision is None:
        precision = t.precision if t.precision != "auto" else ("bf16" if d.gpus_per_node else "fp32")
    kw: dict[str, Any] = {}
    if m.type in ("lora", "qlora"):
        o = m.lora_options()
        kw.update(lora_r=o.r, lora_targets=tuple(o.target_modules), lora_dropout=o.dropout, use_dora=o.use_dora,
                  modules_to_save=tuple(o.modules_to_save or ()))
    if m.type == "qlora":
        kw["double_quant"] = m.quantization_options().double_quant
    if m.type == "prefix-tuning":
        kw["prefix_projection"] = m.prefix_tuning_options().projection
    if m.type == "ia3" and m.ia3_options().target_modules:
        kw["ia3_targets"] = tuple(m.ia3_options().target_modules)
    return Job(method=m.type, precision=precision, seq_length=spec.dataset.max_seq_length,
               world_size=d.world_size(), num_virtual_tokens=m.num_virtual_tokens(),
               device="gpu" if d.gpus_per_node else "cpu", **kw)


# ------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class ParameterCount:
    total: int  # base model
    trainable: int  # what the optimizer updates
    adapter: int  # parameters the method adds (LoRA A/B, DoRA magnitudes, soft prompts, IA3 vectors)
    quantized: int = 0  # base parameters stored in 4 bits (qlora)
    saved_copies: int = 0  # modules_to_save: trained copies of base modules


# PEFT's default IA3 targets for Llama-style models (peft.utils.constants): k_proj for llama and mistral,
# q_proj for qwen2/qwen3 and gemma
IA3_DEFAULT_TARGETS = ("k_proj", "v_proj", "down_proj")
IA3_Q_DEFAULT_TYPES = ("qwen2", "qwen3", "gemma", "gemma2")
IA3_FEEDFORWARD = ("down_proj",)


def _lora_targets(shape: ModelShape, targets: Iterable[str]) -> dict[str, tuple[int, int]]:
    lin = shape.linear_layers()
    targets = list(targets)
    if targets == ["all-linear"]:
        return lin
    if shape.classifier:  # PEFT's SEQ_CLS trains score whole and adapts nothing inside it, named or not
        targets = [t for t in targets if t != "score"]
    # PEFT matches a listed name against the end of each module's path
    chosen = {name: lin[name] for name in lin if any(name == t or name.endswith("." + t) or t.endswith("." + name) for t in targets)}
    unknown = [t for t in targets if not any(t == n or t.endswith("." + n) for n in lin)]
    if unknown:
        raise PlanError(f"method.lora.targetModules {unknown} are not linear layers of a {shape.model_type} model "
                        f"(its layers: {', '.join(lin)}); use those names or [all-linear]")
    return chosen


def count_parameters(shape: ModelShape | Architecture, job: Job) -> ParameterCount:
    """Base and trainable parameters of the model with the job's method applied, without building it."""
    if not isinstance(shape, ModelShape):
        return shape.count(job)
    total = shape.parameters()
    if job.method == "full":
        return ParameterCount(total, total, 0)
    adapter = 0
    saved = 0
    quantized = 0
    if job.method in ("lora", "qlora"):
        for fin, fout in _lora_targets(shape, job.lora_targets).values():
            adapter += job.lora_r * (fin + fout) + (fout if job.use_dora else 0)
        adapter *= shape.num_layers
        for name in job.modules_to_save:
            if name == "embed_tokens" or name == "lm_head" and not shape.classifier:
                saved += shape.embedding_parameters()
        if job.method == "qlora":
            quantized = shape.linear_parameters()
    elif job.method == "prompt-tuning":
        adapter = job.num_virtual_tokens * shape.hidden_size
    elif job.method == "prefix-tuning":
        kv = shape.num_layers * 2 * shape.kv_dim
        if job.prefix_projection:  # Embedding(n, d) -> Linear(d, d) -> tanh -> Linear(d, layers*2*d)
            d = shape.kv_dim  # PEFT's token_dim for a config with num_key_value_heads (grouped-query attention)
            adapter = job.num_virtual_tokens * d + (d * d + d) + (d * kv + kv)
        else:
            adapter = job.num_virtual_tokens * kv
    elif job.method == "ia3":
        lin = shape.linear_layers()
        targets = job.ia3_targets or (("q_proj", "v_proj", "down_proj") if shape.model_type in IA3_Q_DEFAULT_TYPES
                                      else IA3_DEFAULT_TARGETS)
        for name in targets:
            if name not in lin:
                raise PlanError(f"method.ia3.targetModules: {name!r} is not a linear layer of a {shape.model_type} model "
                                f"(its layers: {', '.join(lin)})")
            fin, fout = lin[name]
            adapter += fin if name in IA3_FEEDFORWARD else fout
        adapter *= shape.num_layers
    else:
        raise PlanError(f"unknown method.type {job.method!r}")
    if shape.classifier:  # PEFT's SEQ_CLS trains the score head whole with any method (modules_to_save)
        saved += shape.head_parameters()
    return ParameterCount(total, adapter + saved, adapter, quantized=quantized, saved_copies=saved)


# ------------------------------------------------------------------ activations
def _layer_activation_elements(shape: ModelShape, job: Job) -> float:
    """Elements autograd keeps per token for one decoder layer (no checkpointing).

    Llama layer with SDPA/flash attention (no stored score matrix):
    attention block: the RMSNorm input and output (2h), q, k, v after RoPE
    (q + 2 kv), the attention output (q), the o_proj output's residual (h);
    MLP block: RMSNorm input and output (2h), gate and up outputs (2i), SiLU(gate)
    and the product fed to down_proj (2i). Frozen linear layers save no input of
    their own (autograd saves it only for a weight gradient), but the inputs are
    kept by their neighbours anyway. LoRA adds its dropout's output per adapted
    module (when dropout > 0) and the rank-r intermediate.
    """
    h, i = shape.hidden_size, shape.intermediate_size
    n = 4 * h + shape.q_dim * 2 + 2 * shape.kv_dim + 4 * i + h
    if job.method in ("lora", "qlora"):
        for fin, _ in _lora_targets(shape, job.lora_targets).values():
            n += job.lora_r + (fin if job.lora_dropout > 0 else 0)
    return n


@dataclass
class Estimate:
    """Per-process bytes of one setting: each term at its largest, and the peak.

    Terms do not all live at once: the logits' fp32 copies are gone before
    DeepSpeed's gradient buckets fill, and gradients exist only between backward
    and the optimizer step. ``phases`` adds up what lives together in each phase
    of a step; ``total`` is the largest phase.
    """

    settings: Settings
    terms: dict[str, float]  # each term at its largest, on the GPU (or the CPU, for CPU jobs)
    phases: dict[str, float]  # bytes live at once in each phase of a step
    host_terms: dict[str, float]  # in host memory (offload)
    params: ParameterCount
    device_bytes: int | None = None
    host_bytes: int | None = None

    @property
    def total(self) -> float:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda k: self.phases[k])

    @property
    def model_states(self) -> float:
        """Weights, gradients and optimizer states (what DeepSpeed's estimators count)."""
        return self.terms["weights"] + self.terms["gradients"] + self.terms["optimizer"] + self.terms.get("gathered", 0.0)

    @property
    def host_total(self) -> float:
        return sum(self.host_terms.values())

    def fits(self) -> bool:
        ok = self.device_bytes is None or self.total <= self.device_bytes
        return ok and (self.host_bytes is None or self.host_total <= self.host_bytes)


def estimate(shape: ModelShape | Architecture, job: Job, settings: Settings) -> Estimate:
    """Bytes per process for ``job`` under ``settings`` (the runtime margin is kept by plan())."""
    p = count_parameters(shape, job)
    n = job.world_size
    stage, offload = settings.zero_stage, settings.offload
    wb = DTYPE_BYTES[job.precision]
    mixed = job.precision in ("bf16", "fp16")
    t = p.trainable
    weights: float
    optim: float
    grads: float
    step_temp: float

    # weights: the model in the training dtype (qlora: linear layers in 4 bit, the rest in fp32
    # after peft's k-bit preparation), plus the adapter or modules_to_save copies
    if job.method == "qlora":
        weights = p.quantized * NF4_BYTES[job.double_quant] + (p.total - p.quantized) * 4 + t * wb
    elif job.method == "full":
        weights = p.total * wb
    else:
        weights = (p.total + t) * wb
    if stage >= 3:
        weights /= n
    # optimizer states kept across steps: fp32 master copy (DeepSpeed keeps one at every ZeRO stage,
    # in fp32 training too) and Adam's momentum and variance; at ZeRO-0 in fp32 the torch optimizer
    # works on the module's own weights. ZeRO-0 mixed precision keeps fp32 gradients as well.
    if stage == 0:
        optim = t * (ADAM_STATE_BYTES + (MASTER_BYTES + 4 if mixed else 0))
    else:
        optim = t * (MASTER_BYTES + ADAM_STATE_BYTES) / n
    # gradients between backward and the optimizer step
    if stage == 0:
        grads = t * wb
    elif stage in (1, 2):  # 16-bit gradients (partitioned at 2) and DeepSpeed's fp32 gradient partition
        grads = (t * wb / (n if stage == 2 else 1) if mixed else 0) + t * 4 / n
    else:  # ZeRO-3: a flat fp32 gradient partition allocated at start, kept for the whole run
        grads = t * 4 / n
    host: dict[str, float] = {}
    if offload in ("optimizer", "parameters"):
        host["optimizer"], optim = optim, 0.0
        # ZeRO-Offload keeps the fp32 gradient partition on the host; 16-bit gradients pass through buckets
        host["gradients"], grads = grads, 0.0
    if offload == "parameters":
        host["weights"], weights = weights, 0.0

    # activations kept for backward (by architecture), and one layer's transient backward temporaries
    if isinstance(shape, ModelShape):
        tokens = settings.micro_batch * (job.seq_length + (job.num_virtual_tokens if job.method == "prompt-tuning" else 0))
        per_layer = _layer_activation_elements(shape, job) * wb * tokens
        kept = shape.num_layers * (shape.hidden_size * wb * tokens if settings.gradient_checkpointing else per_layer)
        kept += 2 * shape.hidden_size * wb * tokens  # embedding output and final norm
        recomputed = per_layer if settings.gradient_checkpointing else 0.0  # one layer at a time, in backward
        v = float(tokens * shape.output_width())
        largest_linear = max(a * b for a, b in shape.linear_layers().values())
        lm_head_trainable = not shape.classifier and (job.method == "full" or "lm_head" in job.modules_to_save)
    else:  # the families of memory_arch: by architecture
        kept, recomputed = shape.activation_bytes(job, settings.micro_batch, wb, settings.gradient_checkpointing)
        v = shape.logit_elements(job, settings.micro_batch)
        largest_linear = shape.largest_linear()
        lm_head_trainable = shape.lm_head_trainable(job)
    activations = kept + recomputed
    # logits [tokens x vocabulary]: forward holds the logits (upcast to fp32 under mixed precision) and the
    # loss's log-softmax; backward starts with log-softmax, its gradient and the logits' gradient
    logits_fwd = v * ((wb + 4 + 4) if mixed else 8)
    logits_bwd = v * ((4 + 4 + 4 + wb) if mixed else 12)
    # DeepSpeed's buffers: ZeRO-1/2 reduce buckets (whole buckets, however small the model; two with
    # overlap_comm) during backward; ZeRO-0's flattened gradient copy for the all-reduce; ZeRO-3 keeps
    # one reduce bucket and gathers up to two layers (and a prefetch bucket) at a time
    bucket_bytes = 4 if (not mixed or stage == 1) else wb
    buckets = job.reduce_bucket_size * bucket_bytes * (2 if job.overlap_comm else 1) if stage in (1, 2) and t else 0.0
    flat_grads = min(t, int(5e8)) * wb if stage == 0 and t else 0.0
    gathered = 2 * shape.largest_layer_parameters() * wb if stage >= 3 and n > 1 else 0.0
    if stage >= 3 and t:
        buckets = job.reduce_bucket_size * (4 if not mixed else wb)  # allocated once, kept
    # the optimizer step's temporaries: Adam on DeepSpeed's flat fp32 partition (2-3 partition-sized
    # temporaries, measured), on each parameter at ZeRO-0
    if stage == 0:
        largest = max(shape.embedding_parameters() if job.method == "full" else 0,
                      largest_linear if job.method == "full" else t)
        step_temp = 2 * largest * 4
    else:
        step_temp = (3 if stage >= 3 else 2) * t * 4 / n
    if offload != "none":
        step_temp = 0.0  # the step runs on the host
    persistent = weights + optim + gathered + ((grads + buckets) if stage >= 3 else 0.0)
    phases = {
        "forward": persistent + kept + logits_fwd,
        "backward (loss)": persistent + kept + logits_bwd,
        "backward (buckets)": persistent + activations + (buckets if stage < 3 else 0.0)
        + (v * 4 if lm_head_trainable else 0.0),
        "backward (end)": persistent + (grads if stage < 3 else 0.0) + flat_grads,
        "optimizer step": persistent + (grads if stage < 3 else 0.0) + step_temp,
    }
    terms = {
        "weights": weights,
        "gradients": grads,
        "optimizer": optim,
        "activations": activations,
        "logits": max(logits_fwd, logits_bwd),
        "buffers": max(buckets, flat_grads, step_temp),
        "gathered": gathered,
    }
    return Estimate(settings, terms, phases, host, p)


# ------------------------------------------------------------------ the plan
@dataclass
class Plan:
    """The settings chosen for a job and the numbers behind the choice."""

    job: Job
    shape: ModelShape | Architecture
    chosen: Estimate | None  # None: nothing fits
    candidates: list[Estimate] = field(default_factory=list)
    device_bytes: int | None = None  # GPU memory (or host memory for CPU jobs) per process
    host_bytes: int | None = None  # host memory per process, for offload
    device_name: str = ""
    reserved: float = 0.0  # runtime margin subtracted from device_bytes
    choices: Choices | None = None
    host_source: str = "host memory"

    @property
    def fits(self) -> bool:
        return self.chosen is not None

    def smallest(self) -> Estimate:
        return min(self.candidates, key=lambda e: (e.total, e.host_total))

    def summary(self) -> dict[str, Any]:
        """Decisions and numbers, for the log, summary.json and status."""
        e = self.chosen or self.smallest()
        return {
            "fits": self.fits,
            "device": self.device_name,
            "deviceBytes": self.device_bytes,
            "reservedBytes": int(self.reserved),
            "estimatedBytes": int(e.total),
            "peakPhase": e.peak_phase,
            "hostBytes": int(e.host_total),
            "zeroStage": e.settings.zero_stage,
            "offload": e.settings.offload,
            "gradientCheckpointing": e.settings.gradient_checkpointing,
            "microBatchSize": e.settings.micro_batch,
            "parameters": e.params.total,
            "trainableParameters": e.params.trainable,
            "terms": {k: int(v) for k, v in e.terms.items()},
        }

    def refusal(self) -> str:
        """Why nothing fits, with the numbers (for the InsufficientMemory error).

        Names the setting that needs the least GPU memory without offload and, when offload
        was allowed, what the offloaded state would need from the host.
        """
        choices = self.choices
        on_device = [c for c in self.candidates if not c.host_terms] or self.candidates
        e = min(on_device, key=lambda c: (c.total, not c.settings.gradient_checkpointing))
        s = e.settings
        unit = "process" if self.device_name == "cpu" else "GPU"
        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in e.terms.items() if v)
        msg = (f"{self.job.method} fine-tuning of a {e.params.total / 1e9:.2f}B-parameter model needs at least "
               f"{fmt_bytes(e.total)} per {unit} at its peak ({e.peak_phase}) with the least memory-hungry setting "
               f"(ZeRO-{s.zero_stage}, offload {s.offload}, gradient checkpointing "
               f"{'on' if s.gradient_checkpointing else 'off'}, micro-batch {s.micro_batch}, world size {self.job.world_size}; "
               f"{parts}), but {self.device_name or 'the device'} has {fmt_bytes(self.device_bytes or 0)} of which "
               f"{fmt_bytes(self.reserved)} is kept for the runtime")
        offloaded = [c for c in self.candidates if c.host_terms]
        if offloaded and self.host_bytes is not None:
            usable = (self.device_bytes or 0) - self.reserved
            on_gpu = [c for c in offloaded if c.total <= usable]
            o = min(on_gpu, key=lambda c: (c.host_total, c.total)) if on_gpu else min(offloaded, key=lambda c: c.total)
            msg += (f"; with offload {o.settings.offload} (ZeRO-{o.settings.zero_stage}) the GPU needs {fmt_bytes(o.total)} "
                    f"but the offloaded state needs {fmt_bytes(o.host_total)} of host memory per {unit}, "
                    f"{fmt_bytes(self.host_bytes)} available ({self.host_source})")
        hints = ["more GPUs (distributed.nodes, gpusPerNode)", "a GPU with more memory"]
        if self.job.method == "full":
            hints.append("a PEFT method (method.type lora or qlora)")
        elif self.job.method == "lora":
            hints.append("method.type qlora")
        if choices is not None:
            if choices.micro_batch is not None and choices.micro_batch > 1:
                hints.append("a smaller training.microBatchSize")
            if choices.gradient_checkpointing is False:
                hints.append("training.gradientCheckpointing: true")
            if choices.zero_stage is not None and choices.zero_stage < 3:
                hints.append("distributed.zeroStage: auto")
            if choices.offload is not None and choices.offload != "parameters":
                hints.append("distributed.offload (with zeroStage 3)")
        hints.append("a shorter dataset.maxSeqLength")
        return msg + "; try " + ", ".join(hints)


def fmt_bytes(b: float) -> str:
    return f"{b / GIB:.1f} GiB" if b >= GIB / 10 else f"{b / MIB:.1f} MiB"


@dataclass(frozen=True)
class Choices:
    """Which values the plan may choose: None = auto, else the spec's fixed value."""

    zero_stage: int | None = None
    offload: str | None = None
    gradient_checkpointing: bool | None = None
    micro_batch: int | None = None
    max_micro_batch: int = 8  # for micro_batch auto; the global batch must stay divisible


def choices_from_spec(spec: Any) -> Choices:
    t, d = spec.training, spec.distributed
    gc = getattr(t, "gradient_checkpointing", None)
    mb = getattr(t, "micro_batch_size", None)
    per_rank = t.global_batch_size // d.world_size() if t.global_batch_size % d.world_size() == 0 else 1
    return Choices(
        zero_stage=None if d.zero_stage == "auto" else int(d.zero_stage),
        # 'auto': none unless needed; a CPU job has no GPU to offload from
        offload=(None if d.gpus_per_node else "none") if d.offload == "auto" else d.offload,
        gradient_checkpointing=None if gc in (None, "auto") else bool(gc),
        micro_batch=None if mb in (None, "auto") else int(mb),
        max_micro_batch=max(1, min(8, per_rank)),
    )


def _candidates(job: Job, c: Choices) -> list[Settings]:
    """Every setting allowed, fastest first: no offload before offload, lower ZeRO stage (ZeRO-0 only for a
    single process, where partitioning over one rank saves nothing),
    no checkpointing, larger micro-batch (as long as the global batch stays divisible)."""
    offloads = [c.offload] if c.offload is not None else ["none", "optimizer", "parameters"]
    if c.zero_stage is not None:
        stages = [c.zero_stage]
    elif job.world_size == 1:  # one process: ZeRO has nothing to partition, its buckets and copies only cost time
        stages = [0, 2, 3]
    else:  # ZeRO-2 moves as many bytes as plain data parallelism and saves memory; 3 when needed
        stages = [2, 3]
    gcs = [c.gradient_checkpointing] if c.gradient_checkpointing is not None else [False, True]
    if job.method == "prefix-tuning":  # the trainer turns it off: checkpointed layers drop the prefix
        gcs = [False]
    if c.micro_batch is not None:
        mbs = [c.micro_batch]
    else:
        mbs = [b for b in (8, 4, 2, 1) if b <= c.max_micro_batch and c.max_micro_batch % b == 0] or [1]
    out = []
    for off in offloads:
        for stage in stages:
            if off == "parameters" and stage != 3 or off != "none" and stage == 0:
                continue
            for gc in gcs:
                for mb in mbs:
                    out.append(Settings(stage, off, gc, mb))
    if job.method == "qlora":
        out = [s for s in out if s.zero_stage != 3] or out
    return out


def plan(shape: ModelShape | Architecture, job: Job, choices: Choices, device_bytes: int | None, host_bytes: int | None = None,
         device_name: str = "", gpu: bool = True, host_source: str = "host memory") -> Plan:
    """The fastest allowed setting that fits in ``device_bytes`` per process (None: no limit known).

    With ``gpu``, the runtime margin (CUDA context + MARGIN_FRACTION) is kept free; a
    CPU process keeps MARGIN_FRACTION of the memory free.
    """
    reserved = 0.0
    usable = None
    if device_bytes is not None:
        reserved = MARGIN_FRACTION * device_bytes + (CUDA_CONTEXT_BYTES if gpu else 0)
        usable = device_bytes - reserved
    cands = []
    for s in _candidates(job, choices):
        e = estimate(shape, job, s)
        e.device_bytes = int(usable) if usable is not None else None
        e.host_bytes = host_bytes
        cands.append(e)
    chosen = next((e for e in cands if e.fits()), None)
    return Plan(job, shape, chosen, cands, device_bytes, host_bytes, device_name, reserved, choices, host_source)


# ------------------------------------------------------------------ config.json
# Known configs' values, for planning without network access to the Hub. Each is the
# published config.json of the model (only the fields the planner reads).
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/Meta-Llama-3-8B": dict(model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                                       tie_word_embeddings=False),
    "meta-llama/Llama-3.1-70B": dict(model_type="llama", vocab_size=128256, hidden_size=8192, num_hidden_layers=80,
                                     num_attention_heads=64, num_key_value_heads=8, intermediate_size=28672,
                                     tie_word_embeddings=False),
    "Qwen/Qwen2.5-7B": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, num_hidden_layers=28,
                            num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944,
                            tie_word_embeddings=False),
    "Qwen/Qwen2.5-0.5B": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24,
                              num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                              tie_word_embeddings=True),
    "mistralai/Mistral-7B-v0.3": dict(model_type="mistral", vocab_size=32768, hidden_size=4096, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                                      tie_word_embeddings=False),
    "HuggingFaceTB/SmolLM2-135M": dict(model_type="llama", vocab_size=49152, hidden_size=576, num_hidden_layers=30,
                                       num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
                                       tie_word_embeddings=True),
    "google-t5/t5-small": dict(model_type="t5", architectures=["T5ForConditionalGeneration"], is_encoder_decoder=True,
                               vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                               relative_attention_num_buckets=32, dropout_rate=0.1),
    "google-bert/bert-base-uncased": dict(model_type="bert", architectures=["BertForMaskedLM"], vocab_size=30522,
                                          hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                          intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2),
    "sentence-transformers/all-MiniLM-L6-v2": dict(model_type="bert", architectures=["BertModel"], vocab_size=30522,
                                                   hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                                   intermediate_size=1536, max_position_embeddings=512,
                                                   type_vocab_size=2),
    "distilbert/distilbert-base-uncased": dict(model_type="distilbert", architectures=["DistilBertForMaskedLM"],
                                               vocab_size=30522, dim=768, hidden_dim=3072, n_layers=6, n_heads=12,
                                               max_position_embeddings=512, sinusoidal_pos_embds=False, dropout=0.1,
                                               attention_dropout=0.1),
    "google/electra-base-discriminator": dict(model_type="electra", architectures=["ElectraForPreTraining"],
                                              vocab_size=30522, embedding_size=768, hidden_size=768,
                                              num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                                              max_position_embeddings=512, type_vocab_size=2),
    "google/mt5-small": dict(model_type="mt5", architectures=["MT5ForConditionalGeneration"], is_encoder_decoder=True,
                             vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8,
                             num_heads=6, relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
                             dropout_rate=0.1, tie_word_embeddings=False),
    "google/pegasus-large": dict(model_type="pegasus", architectures=["PegasusForConditionalGeneration"],
                                 is_encoder_decoder=True, vocab_size=96103, d_model=1024, encoder_layers=16,
                                 decoder_layers=16, encoder_attention_heads=16, decoder_attention_heads=16,
                                 encoder_ffn_dim=4096, decoder_ffn_dim=4096, max_position_embeddings=1024,
                                 activation_function="relu", scale_embedding=True, dropout=0.1, attention_dropout=0.1,
                                 activation_dropout=0.1),
}
# Fine-tuned variants share their base model's architecture.
_KNOWN_ALIASES = {
    "meta-llama/Meta-Llama-3-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Llama-3.1-8B": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Meta-Llama-3-70B": "meta-llama/Llama-3.1-70B",
    "meta-llama/Meta-Llama-3-70B-Instruct": "meta-llama/Llama-3.1-70B",
    "meta-llama/Llama-3.1-70B-Instruct": "meta-llama/Llama-3.1-70B",
    "meta-llama/Llama-3.3-70B-Instruct": "meta-llama/Llama-3.1-70B",
    "Qwen/Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B",
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen/Qwen2.5-0.5B",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistralai/Mistral-7B-v0.3",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M",
    "t5-small": "google-t5/t5-small",  # the Hub's old name for the same repository
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "distilbert-base-uncased": "distilbert/distilbert-base-uncased",
}


def known_config(repo: str) -> dict[str, Any] | None:
    return KNOWN_CONFIGS.get(_KNOWN_ALIASES.get(repo, repo))


def _gguf_config(path: str) -> dict[str, Any]:
    """The config fields of a GGUF file's metadata (needs the ``gguf`` package)."""
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise PlanError(f"{path}: reading a .gguf model's shape needs the 'gguf' package") from e
    reader = GGUFReader(path)

    def value(key: str) -> Any:
        f = reader.fields.get(key)
        if f is None:
            return None
        v = f.parts[f.data[0]]
        return v.tobytes().decode() if f.types and f.types[0].name == "STRING" else v.tolist()[0]

    arch = value("general.architecture")
    if arch != "llama":
        raise PlanError(f"{path}: GGUF architecture {arch!r}; the planner reads llama GGUF files")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = value("llama.vocab_size") or (len(tokens.data) if tokens is not None else None)
    names = {t.name for t in reader.tensors}
    return dict(model_type="llama", vocab_size=vocab, hidden_size=value("llama.embedding_length"),
                num_hidden_layers=value("llama.block_count"), num_attention_heads=value("llama.attention.head_count"),
                num_key_value_heads=value("llama.attention.head_count_kv"),
                intermediate_size=value("llama.feed_forward_length"), tie_word_embeddings="output.weight" not in names)


def read_config(source: str, revision: str | None = None, storage: Any = None) -> tuple[dict[str, Any], str]:
    """(config.json of the model at ``source``, where it came from); only config.json is read.

    Local folders and ``file://`` read the file; ``.gguf`` files their metadata;
    ``s3://`` downloads ``<prefix>/config.json`` with boto3 (``storage``: a
    StorageSpec for the endpoint; credentials from the environment); ``hf://``
    asks the Hub for config.json, and falls back to a built-in copy of a few
    well-known models' configs when the Hub cannot be reached.
    """
    if source.startswith("hf://"):
        repo = source[len("hf://"):]
        try:
            _hub_reachable()
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(repo, "config.json", revision=revision, token=os.environ.get("HF_TOKEN") or None)
            with open(path) as f:
                return json.load(f), f"hf://{repo}/config.json"
        except Exception as e:  # no network, gated, missing library: a built-in copy if there is one
            known = known_config(repo)
            if known is not None:
                return dict(known), f"built-in copy of {repo}'s config.json (Hub not reachable: {type(e).__name__})"
            raise PlanError(f"cannot read config.json of {source}: {e}") from e
    if source.startswith("s3://"):
        return _s3_config(source, storage), source.rstrip("/") + "/config.json"
    path = source[len("file://"):] if source.startswith("file://") else source
    path = os.path.expanduser(path)
    if path.lower().endswith(".gguf"):
        if not os.path.isfile(path):
            raise PlanError(f"model file {path} does not exist")
        return _gguf_config(path), path
    cfg = os.path.join(path, "config.json")
    try:
        with open(cfg) as f:
            return json.load(f), cfg
    except OSError as e:
        raise PlanError(f"cannot read {cfg}: {e.strerror or e}") from e
    except ValueError as e:
        raise PlanError(f"{cfg} is not valid JSON: {e}") from e


def _hub_reachable(timeout: float = 3.0) -> None:
    """Fail fast (OSError) when the Hub cannot be reached, instead of huggingface_hub's minute of retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false"):
        raise OSError("HF_HUB_OFFLINE is set")
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
        pass


def _s3_config(source: str, storage: Any) -> dict[str, Any]:
    try:
        import boto3  # type: ignore[import-untyped]
    except ImportError as e:
        raise PlanError(f"reading config.json from {source} needs boto3") from e
    bucket, _, prefix = source[len("s3://"):].partition("/")
    key = (prefix.rstrip("/") + "/config.json").lstrip("/")
    kwargs: dict[str, Any] = {}
    if storage is not None and getattr(storage, "endpoint", None):
        kwargs["endpoint_url"] = storage.endpoint
    if storage is not None and getattr(storage, "region", None):
        kwargs["region_name"] = storage.region
    try:
        body = boto3.client("s3", **kwargs).get_object(Bucket=bucket, Key=key)["Body"].read()
        config: dict[str, Any] = json.loads(body)
        return config
    except Exception as e:
        raise PlanError(f"cannot read s3://{bucket}/{key}: {e}") from e


# ------------------------------------------------------------------ memory sources
def _resources_memory(spec: Any) -> int | str | None:
    res = getattr(spec, "resources", None)
    for section in ("limits", "requests"):
        q = (getattr(res, section, None) or {}).get("memory") if res is not None else None
        if q is not None:
            return q  # type: ignore[no-any-return]
    return None


def host_memory_per_process(spec: Any, gpu_name: str | None) -> int | None:
    """Host memory per GPU process: the pod's memory limit (else request) / GPUs, else a per-GPU assumption."""
    procs = int(spec.distributed.procs_per_node())
    q = _resources_memory(spec)
    if q is not None:
        return parse_quantity(q) // procs
    if gpu_name is None:
        return None
    key = next((k for k in HOST_MEMORY_PER_GPU_GIB if _norm_gpu(k) in _norm_gpu(gpu_name)), None)
    return (HOST_MEMORY_PER_GPU_GIB[key] if key else DEFAULT_HOST_MEMORY_PER_GPU_GIB) * GIB


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine (a CPU job run here with ``kubetune run``)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def gpu_from_spec(spec: Any) -> tuple[str, int] | None:
    """(name, bytes) of the GPU the job's nodeSelector asks for (GPU feature discovery labels), if any."""
    sel = getattr(spec, "node_selector", None) or {}
    if GPU_MEMORY_LABEL in sel:
        return f"{sel.get(GPU_PRODUCT_LABEL, 'GPU')} ({sel[GPU_MEMORY_LABEL]} MiB)", int(sel[GPU_MEMORY_LABEL]) * MIB
    if GPU_PRODUCT_LABEL in sel:
        name = sel[GPU_PRODUCT_LABEL]
        return name, gpu_memory_bytes(name)
    return None


def plan_for_spec(spec: Any, config: Mapping[str, Any], gpu: str | None = None, device_bytes: int | None = None,
                  precision: str | None = None) -> Plan:
    """The plan of a FineTuneJobSpec, for a GPU by name, by bytes, or from the spec's nodeSelector.

    A CPU job (gpusPerNode 0) plans against the host memory per process when known.
    """
    labels = getattr(spec.dataset, "labels", None)
    shape = shape_from_config(config, spec.model.task, len(labels) if labels else None)
    job = job_from_spec(spec, precision)
    choices = choices_from_spec(spec)
    on_gpu = spec.distributed.gpus_per_node > 0
    name = ""
    if device_bytes is None and gpu is not None:
        device_bytes, name = gpu_memory_bytes(gpu), gpu
    elif device_bytes is None and on_gpu:
        found = gpu_from_spec(spec)
        if found:
            name, device_bytes = found
    elif device_bytes is not None:
        name = gpu or ("GPU" if on_gpu else "cpu")
    host = host_memory_per_process(spec, name if on_gpu else None)
    if not on_gpu:
        name = "cpu"
        if device_bytes is None:
            machine = machine_memory_bytes()
            device_bytes = host if host is not None else (machine // spec.distributed.procs_per_node() if machine else None)
        host = None
    source = ("spec.resources memory" if _resources_memory(spec) is not None
              else "assumed host share per GPU; set spec.resources.limits.memory")
    return plan(shape, job, choices, device_bytes, host, name, gpu=on_gpu, host_source=source)


def format_plan(p: Plan, source: str = "") -> str:
    """The plan as a table: each term per process, the peak, the chosen settings, the fit."""
    e = p.chosen or p.smallest()
    s = e.settings
    sh = p.shape
    lines = [f"model config: {source}"] if source else []
    if isinstance(sh, ModelShape):
        described = f"{sh.num_layers} layers, hidden {sh.hidden_size}, vocabulary {sh.vocab_size}"
        if sh.classifier:
            described = f"{sh.task}; {described}, {sh.num_labels} classes"
    else:
        described = f"{sh.task}; {sh.describe()}"
    lines.append(f"model: {sh.model_type}, {e.params.total / 1e9:.3f}B parameters ({described}); "
                 f"method {p.job.method}: {e.params.trainable:,} trainable")
    lines.append(f"job: {p.job.precision}, sequence {p.job.seq_length}, world size {p.job.world_size}")
    how = "chosen" if p.fits else ("smallest, does not fit" if p.device_bytes is not None else "fastest allowed")
    lines.append(f"settings ({how}): ZeRO-{s.zero_stage}, offload {s.offload}, "
                 f"gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}, micro-batch {s.micro_batch}")
    lines.append("")
    lines.append(f"{'term (at its largest)':<30}{'per process':>14}")
    for k, v in e.terms.items():
        if k != "gathered" or v:
            lines.append(f"  {k:<28}{fmt_bytes(v):>14}")
    lines.append(f"{'peak, by phase of a step':<30}")
    for k, v in e.phases.items():
        lines.append(f"  {k:<28}{fmt_bytes(v):>14}{'  <- peak' if k == e.peak_phase else ''}")
    if p.device_bytes is not None:
        lines.append(f"{'runtime margin (kept free)':<30}{fmt_bytes(p.reserved):>14}")
        lines.append(f"{'memory (' + (p.device_name or 'device') + ')':<30}{fmt_bytes(p.device_bytes):>14}")
    if e.host_terms:
        lines.append(f"{'host memory (offloaded)':<30}{fmt_bytes(e.host_total):>14}"
                     + (f"  of {fmt_bytes(p.host_bytes)}" if p.host_bytes is not None else ""))
    if p.device_bytes is None:
        lines.append("fit: unknown (no memory size: use --gpu NAME, --gpu-memory, or a nodeSelector nvidia.com/gpu.product)")
    else:
        lines.append(f"fit: {'yes' if p.fits else 'NO'}")
    return "\n".join(lines)


def pick(estimates: list[Estimate], **want: Any) -> Estimate:
    """The candidate with these settings (for tests and the benchmark)."""
    for e in estimates:
        if all(getattr(e.settings, k) == v for k, v in want.items()):
            return e
    raise KeyError(want)


__all__ = [
    "ModelShape", "Job", "Settings", "Choices", "Estimate", "Plan", "PlanError", "shape_from_config", "count_parameters",
    "estimate", "plan", "plan_for_spec", "read_config", "format_plan", "gpu_memory_bytes", "job_from_spec",
    "choices_from_spec",
]
