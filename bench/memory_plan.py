#!/usr/bin/env python
"""The memory planner's estimate against the measured peak, on CPU.

For several Llama-style configs (a few M to ~100M parameters; causal LM, and
``lcls-*``: the same decoders with a 2-class sequence-classification head), BERT,
DistilBERT, ELECTRA, RoBERTa, DeBERTa-v3 (sequence-classification), T5, mT5, BART,
Pegasus (seq2seq, input and target both SEQ tokens; ``bartcls-*``: BART's classifier)
configs, full fine-tuning and LoRA (all-linear; DistilBERT's listed layers), ZeRO 0/2/3, with and without gradient checkpointing, micro-batch 1-8,
each case runs in its own subprocess: the model is built from its config in
fp32, the method applied (peft), ``deepspeed.initialize`` with the trainer's own
DeepSpeed config (``kubetune_trainer.dsconfig.build_ds_config``) and torch
AdamW, then three optimizer steps on full-length sequences (loss from the
model, as the trainer computes it).

How the peak is measured: the PyTorch profiler with ``profile_memory=True``
records every allocation and free of the CPU tensor allocator (c10's
``DefaultCPUAllocator``, which every CPU tensor of torch, transformers, peft
and DeepSpeed goes through) made by the profiled (main) thread, with its
address and size. The measurement is the largest total of live bytes over model
build + three steps, rebuilt from those records: a block is live from its
allocation until its free, or until its address is allocated again. The
second rule matters: a block freed by a thread the profiler does not watch
(e.g. gloo's worker thread dropping the last reference to a tensor it
reduced or gathered) has no free record, and the allocator's own running
total, which each record also carries, never subtracts it (shown directly: a
100 MB tensor freed by a Python thread, then allocated again at the same
address, reads 200 MB; in ZeRO-3 runs the total keeps 24 MiB blocks whose
addresses the all-gathers hand out again). That total once read 789.3 MiB for
`small lora ZeRO-2 ckpt mb 8`, exactly one 5e7-element bucket (190.7 MiB)
above the 598.5 MiB its records explain, and 598.5 MiB in five other runs.
The ``total`` column shows that running total's peak for comparison. This is
the CPU twin of ``torch.cuda.max_memory_allocated`` (the CUDA caching
allocator counts frees from every thread). Not counted (by either side):
Python objects, the interpreter, library code, the allocator's own
fragmentation -- the planner's runtime margin stands for those. (Process RSS
was not used: the high-water mark of RSS includes imports and glibc's cached
free memory, and cannot be reset between phases.)

The estimate is ``kubetune_api.memory.estimate`` for the same shape, method and
settings, world size 1, fp32, without the runtime margin.

    python bench/memory_plan.py            # the full table (~25 cases, several minutes on 2 cores)
    python bench/memory_plan.py --quick    # 4 cases
    python bench/memory_plan.py --only 'small lora 2 on 8' --only 'medium full'   # just these
    python bench/memory_plan.py --only bert --only t5      # one family: every size of it (bert, t5, lcls, mt5, ...)
    python bench/memory_plan.py --jobs 2   # two cases at once (bytes are the same, the wall time halves)

Column ``total``: the peak of the allocator's own running total (an upper bound
that keeps blocks freed by other threads; see above).

Last line: ``max error: X%`` (|estimate - measured| / measured, worst case).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SIZES = {
    # name: (hidden, layers, heads, kv heads, intermediate, vocabulary)
    "tiny": (128, 2, 4, 2, 344, 4096),
    "small": (384, 6, 6, 2, 1024, 16384),
    "medium": (640, 10, 10, 5, 1728, 32000),
}
# BERT (sequence-classification, 2 classes): (hidden, layers, heads, intermediate, vocabulary);
# bert-m is all-MiniLM-L6-v2's shape (22.7M)
BERT_SIZES = {
    "bert-s": (128, 2, 4, 512, 8192),
    "bert-m": (384, 6, 12, 1536, 30522),
}
# RoBERTa (RobertaForSequenceClassification, 2 classes): (hidden, layers, heads, intermediate, vocabulary);
# roberta-m has roberta-base's vocabulary
ROBERTA_SIZES = {
    "roberta-s": (128, 2, 4, 512, 8192),
    "roberta-m": (384, 6, 12, 1536, 50265),
}
# DeBERTa-v3 (DebertaV2ForSequenceClassification, 2 classes; relative attention c2p|p2c, shared keys, 256 position
# buckets, as the v3 configs): (hidden, layers, heads, intermediate, vocabulary); deberta-m is deberta-v3-xsmall's
# width and vocabulary with 6 of its 12 layers
DEBERTA_SIZES = {
    "deberta-s": (128, 2, 4, 512, 8192),
    "deberta-m": (384, 6, 6, 1536, 128100),
}
# BART (d_model, encoder = decoder layers, heads, ffn, vocabulary), bart-base's dropouts (0.1 hidden, attention and
# activation); bart-* plan seq2seq (BartForConditionalGeneration), bartcls-* sequence-classification (2 classes)
BART_SIZES = {
    "bart-s": (128, 2, 4, 512, 8192),
    "bart-m": (256, 4, 4, 1024, 16384),
    "bartcls-m": (256, 4, 4, 1024, 16384),
}
# T5 (seq2seq): (d_model, encoder = decoder layers, heads, d_kv, d_ff, vocabulary, feed_forward_proj)
T5_SIZES = {
    "t5-s": (128, 2, 4, 32, 512, 8192, "relu"),
    "t5-m": (256, 4, 4, 64, 1024, 16384, "gated-gelu"),
}
# DistilBERT (sequence-classification, 2 classes): (dim, n_layers, n_heads, hidden_dim, vocabulary); distilbert-m is
# distilbert-base-uncased's vocabulary at MiniLM's width
DISTILBERT_SIZES = {
    "distilbert-s": (128, 2, 4, 512, 8192),
    "distilbert-m": (384, 6, 12, 1536, 30522),
}
# ELECTRA discriminator (sequence-classification, 2 classes): (embedding, hidden, layers, heads, intermediate,
# vocabulary); electra-m is electra-small-discriminator (embeddings 128 projected to 256, 13.5M)
ELECTRA_SIZES = {
    "electra-s": (64, 128, 2, 4, 512, 8192),
    "electra-m": (128, 256, 12, 4, 1024, 30522),
}
# mT5 (seq2seq; gated-GELU, an lm_head of its own as the published checkpoints): (d_model, encoder = decoder layers,
# heads, d_kv, d_ff, vocabulary); mt5-m's vocabulary is a quarter of mT5's 250,112
MT5_SIZES = {
    "mt5-s": (128, 2, 4, 32, 320, 16000),
    "mt5-m": (256, 4, 4, 64, 640, 64000),
}
# Pegasus (seq2seq): (d_model, encoder = decoder layers, heads, ffn, vocabulary), pegasus-large's ReLU, dropouts
# (0.1 hidden, attention and activation) and scale_embedding
PEGASUS_SIZES = {
    "pegasus-s": (128, 2, 4, 512, 8192),
    "pegasus-m": (256, 4, 4, 1024, 16384),
}
# Llama with model.task sequence-classification (LlamaForSequenceClassification, 2 classes): the shapes of SIZES
LLAMA_CLS_SIZES = {"lcls-s": "small", "lcls-m": "medium"}
SEQ = 256
TASKS = {"lcls": "sequence-classification", "bartcls": "sequence-classification"}  # families planned for another task than their first fitting one


def family(size: str) -> str:
    return size.split("-")[0] if "-" in size else "llama"


def config_dict(size: str) -> dict:
    """config.json of the bench model ``size`` (dropout at the families' defaults, 0.1, as the real models)."""
    if size in BERT_SIZES:
        h, n_layers, heads, inter, vocab = BERT_SIZES[size]
        return dict(model_type="bert", architectures=["BertForMaskedLM"], vocab_size=vocab, hidden_size=h,
                    num_hidden_layers=n_layers, num_attention_heads=heads, intermediate_size=inter,
                    max_position_embeddings=512, type_vocab_size=2, num_labels=2, hidden_act="gelu",
                    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    if size in ROBERTA_SIZES:
        h, n_layers, heads, inter, vocab = ROBERTA_SIZES[size]
        return dict(model_type="roberta", architectures=["RobertaForMaskedLM"], vocab_size=vocab, hidden_size=h,
                    num_hidden_layers=n_layers, num_attention_heads=heads, intermediate_size=inter,
                    max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, num_labels=2, hidden_act="gelu",
                    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    if size in DEBERTA_SIZES:
        h, n_layers, heads, inter, vocab = DEBERTA_SIZES[size]
        return dict(model_type="deberta-v2", architectures=["DebertaV2ForMaskedLM"], vocab_size=vocab, hidden_size=h,
                    num_hidden_layers=n_layers, num_attention_heads=heads, intermediate_size=inter,
                    max_position_embeddings=512, relative_attention=True, position_buckets=256,
                    norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type="p2c|c2p", max_relative_positions=-1,
                    position_biased_input=False, type_vocab_size=0, hidden_act="gelu", hidden_dropout_prob=0.1,
                    attention_probs_dropout_prob=0.1, num_labels=2, pad_token_id=0)
    if size in BART_SIZES:
        d, n_layers, heads, ffn, vocab = BART_SIZES[size]
        return dict(model_type="bart", architectures=["BartModel"], is_encoder_decoder=True, vocab_size=vocab, d_model=d,
                    encoder_layers=n_layers, decoder_layers=n_layers, encoder_attention_heads=heads,
                    decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, max_position_embeddings=512,
                    dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, num_labels=2, pad_token_id=1,
                    bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)
    if size in DISTILBERT_SIZES:
        dim, n_layers, heads, inter, vocab = DISTILBERT_SIZES[size]
        return dict(model_type="distilbert", architectures=["DistilBertForMaskedLM"], vocab_size=vocab, dim=dim,
                    n_layers=n_layers, n_heads=heads, hidden_dim=inter, max_position_embeddings=512, dropout=0.1,
                    attention_dropout=0.1, activation="gelu", num_labels=2, pad_token_id=0)
    if size in ELECTRA_SIZES:
        e, h, n_layers, heads, inter, vocab = ELECTRA_SIZES[size]
        return dict(model_type="electra", architectures=["ElectraForPreTraining"], vocab_size=vocab, embedding_size=e,
                    hidden_size=h, num_hidden_layers=n_layers, num_attention_heads=heads, intermediate_size=inter,
                    max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.1,
                    attention_probs_dropout_prob=0.1, num_labels=2, pad_token_id=0)
    if size in MT5_SIZES:
        d, n_layers, heads, d_kv, d_ff, vocab = MT5_SIZES[size]
        return dict(model_type="mt5", architectures=["MT5ForConditionalGeneration"], is_encoder_decoder=True,
                    vocab_size=vocab, d_model=d, d_kv=d_kv, d_ff=d_ff, num_layers=n_layers, num_decoder_layers=n_layers,
                    num_heads=heads, feed_forward_proj="gated-gelu", dropout_rate=0.1, tie_word_embeddings=False,
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    if size in PEGASUS_SIZES:
        d, n_layers, heads, ffn, vocab = PEGASUS_SIZES[size]
        return dict(model_type="pegasus", architectures=["PegasusForConditionalGeneration"], is_encoder_decoder=True,
                    vocab_size=vocab, d_model=d, encoder_layers=n_layers, decoder_layers=n_layers,
                    encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn,
                    decoder_ffn_dim=ffn, max_position_embeddings=512, activation_function="relu", scale_embedding=True,
                    dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, pad_token_id=0, eos_token_id=1,
                    decoder_start_token_id=0, forced_eos_token_id=1)
    if size in T5_SIZES:
        d, n_layers, heads, d_kv, d_ff, vocab, proj = T5_SIZES[size]
        return dict(model_type="t5", architectures=["T5ForConditionalGeneration"], is_encoder_decoder=True,
                    vocab_size=vocab, d_model=d, d_kv=d_kv, d_ff=d_ff, num_layers=n_layers, num_decoder_layers=n_layers,
                    num_heads=heads, feed_forward_proj=proj, dropout_rate=0.1, decoder_start_token_id=0,
                    pad_token_id=0, eos_token_id=1)
    h, n_layers, heads, kv, inter, vocab = SIZES[LLAMA_CLS_SIZES.get(size, size)]
    cls = size in LLAMA_CLS_SIZES
    return dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=vocab, hidden_size=h,
                num_hidden_layers=n_layers, num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter,
                max_position_embeddings=4096, tie_word_embeddings=False, rms_norm_eps=1e-5, hidden_act="silu",
                **(dict(num_labels=2, pad_token_id=0) if cls else {}))


# (size, method, zero stage, gradient checkpointing, micro-batch)
CASES = [
    ("tiny", "full", 0, False, 1), ("tiny", "full", 2, True, 4), ("tiny", "lora", 3, False, 8), ("tiny", "lora", 0, True, 2),
    ("small", "full", 0, False, 1), ("small", "full", 0, True, 8), ("small", "full", 2, False, 4), ("small", "full", 2, True, 1),
    ("small", "full", 3, False, 2), ("small", "full", 3, True, 8),
    ("small", "lora", 0, False, 8), ("small", "lora", 0, True, 1), ("small", "lora", 2, False, 1), ("small", "lora", 2, True, 8),
    ("small", "lora", 3, False, 4), ("small", "lora", 3, True, 2),
    ("medium", "full", 0, False, 2), ("medium", "full", 2, True, 8), ("medium", "full", 3, False, 1),
    ("medium", "lora", 0, False, 4), ("medium", "lora", 2, False, 8), ("medium", "lora", 3, True, 1),
    ("medium", "lora", 0, True, 8), ("medium", "full", 0, True, 4),
]
# BERT (sequence-classification) and T5 (seq2seq); T5's input and target are both SEQ tokens long
CASES += [
    ("bert-s", "full", 0, False, 1), ("bert-s", "lora", 2, True, 8), ("bert-s", "full", 3, False, 4),
    ("bert-m", "full", 0, False, 8), ("bert-m", "full", 0, True, 2), ("bert-m", "full", 2, False, 4),
    ("bert-m", "full", 3, True, 8), ("bert-m", "lora", 0, False, 4), ("bert-m", "lora", 2, True, 1),
    ("bert-m", "lora", 3, False, 8), ("bert-m", "lora", 0, True, 8),
    ("t5-s", "full", 0, False, 1), ("t5-s", "lora", 2, True, 8), ("t5-s", "full", 3, False, 4),
    ("t5-m", "full", 0, False, 8), ("t5-m", "full", 0, True, 2), ("t5-m", "full", 2, False, 4),
    ("t5-m", "full", 3, True, 8), ("t5-m", "lora", 0, False, 4), ("t5-m", "lora", 2, True, 1),
    ("t5-m", "lora", 3, False, 8), ("t5-m", "lora", 0, True, 8),
]
# Llama-style decoders with a classification head (model.task sequence-classification)
CASES += [
    ("lcls-s", "full", 0, False, 1), ("lcls-s", "full", 0, True, 4), ("lcls-s", "lora", 0, False, 4),
    ("lcls-s", "lora", 0, True, 1), ("lcls-m", "full", 0, False, 4), ("lcls-m", "lora", 0, True, 4),
    ("lcls-m", "lora", 2, False, 1),
]
# RoBERTa (sequence-classification)
CASES += [
    ("roberta-s", "full", 0, False, 1), ("roberta-s", "lora", 0, True, 4), ("roberta-m", "full", 0, False, 4),
    ("roberta-m", "full", 0, True, 1), ("roberta-m", "lora", 0, False, 4), ("roberta-m", "lora", 2, True, 1),
]
# DeBERTa-v3 (sequence-classification)
CASES += [
    ("deberta-s", "full", 0, False, 1), ("deberta-s", "lora", 0, True, 4), ("deberta-m", "full", 0, False, 4),
    ("deberta-m", "full", 0, True, 1), ("deberta-m", "lora", 0, False, 4), ("deberta-m", "lora", 2, True, 1),
]
# BART: seq2seq (input and target SEQ tokens) and classification (the decoder reads the input shifted right)
CASES += [
    ("bart-s", "full", 0, False, 1), ("bart-s", "lora", 0, True, 4), ("bart-m", "full", 0, False, 4),
    ("bart-m", "full", 0, True, 1), ("bart-m", "lora", 0, False, 4), ("bart-m", "lora", 2, True, 1),
    ("bartcls-m", "full", 0, False, 4), ("bartcls-m", "lora", 0, True, 1),
]
# DistilBERT and ELECTRA (sequence-classification), mT5 and Pegasus (seq2seq, input and target SEQ tokens)
for _fam in ("distilbert", "electra", "mt5", "pegasus"):
    CASES += [
        (f"{_fam}-s", "full", 0, False, 1), (f"{_fam}-s", "lora", 0, True, 4), (f"{_fam}-m", "full", 0, False, 4),
        (f"{_fam}-m", "full", 0, True, 1), (f"{_fam}-m", "lora", 0, False, 4), (f"{_fam}-m", "lora", 2, True, 1),
    ]
QUICK = [CASES[0], CASES[3], CASES[6], CASES[13]]
PEFT_TASK = {"llama": "CAUSAL_LM", "bert": "SEQ_CLS", "t5": "SEQ_2_SEQ_LM", "lcls": "SEQ_CLS", "roberta": "SEQ_CLS",
             "bart": "SEQ_2_SEQ_LM", "bartcls": "SEQ_CLS", "deberta": "SEQ_CLS", "distilbert": "SEQ_CLS",
             "electra": "SEQ_CLS", "mt5": "SEQ_2_SEQ_LM", "pegasus": "SEQ_2_SEQ_LM"}
# LoRA's target modules: all-linear, except DistilBERT (PEFT fails on all-linear there: see memory_arch)
LORA_TARGETS = {"distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"]}


def job_manifest(method: str, stage: int, gc: bool, mb: int, targets: list[str] | None = None) -> dict:
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "memory-plan"},
        "spec": {
            "model": {"source": "/nonexistent"},
            "dataset": {"train": "/nonexistent.jsonl", "maxSeqLength": SEQ},
            "method": {"type": method, **({"lora": {"r": 16, "dropout": 0.05, **({"targetModules": targets} if targets else {})}}
                                          if method == "lora" else {})},
            "training": {"maxSteps": 3, "globalBatchSize": mb, "microBatchSize": mb, "precision": "fp32",
                         "gradientCheckpointing": gc},
            "distributed": {"gpusPerNode": 0, "zeroStage": stage},
            "output": {"uri": "/tmp/unused"},
        },
    }


# ------------------------------------------------------------------ estimate
def estimate_bytes(size: str, method: str, stage: int, gc: bool, mb: int) -> tuple[float, dict]:
    from kubetune_api import memory
    from kubetune_api.spec import load_job

    spec = load_job(job_manifest(method, stage, gc, mb, LORA_TARGETS.get(family(size)))).spec
    shape = memory.shape_from_config(config_dict(size), TASKS.get(family(size)))
    job = memory.job_from_spec(spec, precision="fp32")
    e = memory.estimate(shape, job, memory.Settings(stage, "none", gc, mb))
    return e.total, {k: round(v / 2**20, 1) for k, v in e.terms.items()}


# ------------------------------------------------------------------ measurement (subprocess)
def measure(size: str, method: str, stage: int, gc: bool, mb: int) -> dict:
    import socket

    import torch
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import deepspeed
    import transformers

    from kubetune_api.spec import load_job
    from kubetune_trainer import dsconfig

    deepspeed.init_distributed(dist_backend="gloo")
    spec = load_job(job_manifest(method, stage, gc, mb)).spec
    plan = dsconfig.batch_plan(spec, 1)
    ds_config = dsconfig.build_ds_config(spec, plan, stage, "fp32")
    fam = family(size)
    config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                             "bert": (transformers.BertConfig, transformers.BertForSequenceClassification),
                             "t5": (transformers.T5Config, transformers.T5ForConditionalGeneration),
                             "lcls": (transformers.LlamaConfig, transformers.LlamaForSequenceClassification),
                             "roberta": (transformers.RobertaConfig, transformers.RobertaForSequenceClassification),
                             "bart": (transformers.BartConfig, transformers.BartForConditionalGeneration),
                             "bartcls": (transformers.BartConfig, transformers.BartForSequenceClassification),
                             "deberta": (transformers.DebertaV2Config, transformers.DebertaV2ForSequenceClassification),
                             "distilbert": (transformers.DistilBertConfig, transformers.DistilBertForSequenceClassification),
                             "electra": (transformers.ElectraConfig, transformers.ElectraForSequenceClassification),
                             "mt5": (transformers.MT5Config, transformers.MT5ForConditionalGeneration),
                             "pegasus": (transformers.PegasusConfig, transformers.PegasusForConditionalGeneration)}[fam]
    cfg = config_cls(**{k: v for k, v in config_dict(size).items() if k not in ("model_type", "architectures")})
    cfg.use_cache = False
    if fam == "bert":  # zero.Init: transformers' init of the padding row indexes the (empty) partitioned embedding
        cfg.pad_token_id = None
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(0, cfg.vocab_size, (mb, SEQ), generator=g)
    # labels as the trainer's collators give them: the sequence itself (causal LM), a class per sequence,
    # a target sequence (seq2seq, SEQ tokens; the model shifts it into the decoder's input)
    labels = {"llama": batch, "bert": torch.randint(0, 2, (mb,), generator=g),
              "t5": torch.randint(2, cfg.vocab_size, (mb, SEQ), generator=g),
              "lcls": torch.randint(0, 2, (mb,), generator=g), "roberta": torch.randint(0, 2, (mb,), generator=g),
              "bart": torch.randint(3, cfg.vocab_size, (mb, SEQ), generator=g),
              "bartcls": torch.randint(0, 2, (mb,), generator=g), "deberta": torch.randint(0, 2, (mb,), generator=g),
              "distilbert": torch.randint(0, 2, (mb,), generator=g), "electra": torch.randint(0, 2, (mb,), generator=g),
              "mt5": torch.randint(2, cfg.vocab_size, (mb, SEQ), generator=g),
              "pegasus": torch.randint(2, cfg.vocab_size, (mb, SEQ), generator=g)}[fam]
    if fam in ("lcls", "roberta", "bart", "bartcls", "deberta", "distilbert", "electra", "mt5", "pegasus"):
        # no padding token (llama's 0, roberta's 1): full-length rows
        batch = torch.randint(3, cfg.vocab_size, (mb, SEQ), generator=g)
    if fam == "bartcls":  # one EOS per row, last: BART's classifier pools the decoder state there
        batch[:, -1] = cfg.eos_token_id
    t0 = time.time()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        if stage == 3:
            with deepspeed.zero.Init(config_dict_or_path=ds_config):
                model = model_cls(cfg)
        else:
            model = model_cls(cfg)
        if fam == "mt5":  # the lm_head of its own that from_pretrained keeps from a published checkpoint
            model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
        numel = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # the base model, as planned
        if gc:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if method == "lora":
            import peft

            model = peft.get_peft_model(model, peft.LoraConfig(task_type=PEFT_TASK[fam], r=16, lora_alpha=32,
                                                               lora_dropout=0.05,
                                                               target_modules=LORA_TARGETS.get(fam, "all-linear")))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
        for _ in range(3):
            loss = engine(input_ids=batch, labels=labels).loss
            engine.backward(loss)
            engine.step()
    elapsed = time.time() - t0
    records = allocation_records(prof)
    allocator_total = max(n.typed[1].total_allocated for n in records)
    peak = live_peak((n.typed[1].ptr, n.typed[1].alloc_size) for n in records)
    return {"peak": peak, "allocator_total": allocator_total, "allocations": len(records), "seconds": elapsed,
            "numel": numel}


def allocation_records(prof) -> list:
    """The profiler's memory allocation events (frees have a negative size), in time order."""
    from torch._C._profiler import _EventType

    def walk(nodes):
        for node in nodes:
            yield node
            yield from walk(node.children)

    return sorted((n for n in walk(prof.profiler.kineto_results.experimental_event_tree())
                   if n.typed[0] == _EventType.Allocation), key=lambda n: n.start_time_ns)


def live_peak(records) -> int:
    """Largest total of live bytes over allocation records ``(address, size)`` in time order (size < 0: a free).

    A block is live from its allocation to its free, or until its address is handed out again.
    A block freed by another thread (gloo's worker dropping the last reference to a tensor it
    reduced or gathered) has no free record, and the allocator's own running total
    (``total_allocated``) never subtracts it either; the reused address proves it was freed.
    """
    live: dict[int, int] = {}
    now = peak = 0
    for ptr, size in records:
        if size > 0:
            now += size - live.get(ptr, 0)
            live[ptr] = size
        else:
            now -= live.pop(ptr, 0)
        peak = max(peak, now)
    return peak


def matches(case, selector: str) -> bool:
    """Whether ``case`` starts with the words of ``selector`` (size, method, ZeRO stage, on/off, micro-batch)."""
    size, method, stage, gc, mb = case
    words = [size, method, str(stage), "on" if gc else "off", str(mb)]
    want = selector.split()
    if want and want[0] == family(size):  # 'bert', 't5': every size of that family
        want[0] = size
    return len(want) <= len(words) and words[:len(want)] == want


def run_case(case) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), DS_ACCELERATOR="cpu",
               TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, __file__, "--measure", json.dumps(case)], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=1800)
    line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("{")), None)
    if p.returncode or line is None:
        raise RuntimeError(f"case {case} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return json.loads(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 cases instead of all")
    ap.add_argument("--only", action="append", default=[], metavar="CASE",
                    help="run only the cases matching CASE, written as in the table: 'small lora 2 on 8'; "
                         "fewer words match more cases ('medium full', 'small lora 2'); repeatable")
    ap.add_argument("--jobs", type=int, default=1,
                    help="cases measured at once (each its own process; bytes do not depend on it, wall time does)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*json.loads(args.measure))), flush=True)
        return 0
    rows = []
    print(f"{'model':<8}{'params':>8} {'method':<6}{'ZeRO':>5}{'ckpt':>6}{'mb':>4}{'estimate':>11}{'measured':>11}{'error':>8}"
          f"{'total':>10}  estimate terms (MiB)")
    cases = QUICK if args.quick else CASES
    if args.only:
        cases = [c for c in cases if any(matches(c, sel) for sel in args.only)]
        if not cases:
            ap.error(f"--only {args.only}: no case matches; cases look like 'small lora 2 on 8' "
                     "(size method ZeRO checkpointing micro-batch)")
    from concurrent.futures import ThreadPoolExecutor

    from kubetune_api import memory

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        measured = pool.map(run_case, cases)  # in case order
        for case, m in zip(cases, measured):
            size, method, stage, gc, mb = case
            n = memory.shape_from_config(config_dict(size), TASKS.get(family(size))).parameters()
            est, terms = estimate_bytes(*case)
            err = (est - m["peak"]) / m["peak"]
            if m["numel"] != n:  # the planner's count is checked in tests/api; here the model actually measured
                print(f"# {size}: the measured model has {m['numel']:,} parameters, the plan {n:,}")
            rows.append({"case": case, "params": n, "estimate": est, "measured": m["peak"], "error": err, "terms": terms,
                         "allocator_total": m["allocator_total"], "seconds": m["seconds"]})
            print(f"{size:<8}{n / 1e6:>7.1f}M {method:<6}{stage:>5}{'on' if gc else 'off':>6}{mb:>4}"
                  f"{est / 2**20:>9.1f}Mi{m['peak'] / 2**20:>9.1f}Mi{err * 100:>+7.1f}%{m['allocator_total'] / 2**20:>8.1f}Mi  {terms}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    worst = max(abs(r["error"]) for r in rows)
    print(f"max error: {worst * 100:.1f}%")
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(REPO / "api"), str(REPO / "trainer")]
    sys.exit(main())
