"""flops.py: FLOPs per token from hand-computed configs, the GPU peak table, MFU in progress records."""
from __future__ import annotations

import types

import pytest

from kubetune_trainer import flops

# A Llama with hidden 64, 2 layers, 4 heads, MLP 176, vocabulary 430, untied head:
#   per layer: q,k,v,o 4*64*64 = 16384; gate,up,down 3*64*176 = 33792; two RMSNorms 2*64 = 128 -> 50304
#   2 layers 100608 + final norm 64 + lm_head 430*64 = 27520 -> 128192 matmul parameters
#   (the input embedding, another 27520, is a lookup and not counted)
MATMUL_PARAMS = 128192
# LoRA r=4 on all linear layers of a layer: r*(in+out) each:
#   q,k,v,o 4*4*(64+64) = 2048; gate,up,down 3*4*(64+176) = 2880 -> 4928 per layer, 9856 in all
LORA_PARAMS = 9856


def llama(tie: bool = False, kv_heads: int = 4):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=430, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, tie_word_embeddings=tie)
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


def test_formula_by_hand():
    # 6*100 trainable + 4*1000 frozen + 12 * 2 layers * width 8 * context 16
    assert flops.flops_per_token(100, 1000, 2, 8, 16) == 600 + 4000 + 3072


def test_full_fine_tuning_is_6n_plus_attention():
    model = llama()
    assert flops.matmul_params(model) == (MATMUL_PARAMS, 0)
    assert flops.attention_shape(model.config) == (2, 64)
    assert flops.model_flops_per_token(model, context=100.0) == 6 * MATMUL_PARAMS + 12 * 2 * 64 * 100


def test_tied_head_counts_once():
    model = llama(tie=True)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert flops.matmul_params(model) == (MATMUL_PARAMS, 0)


def test_grouped_query_attention_uses_query_heads():
    # 2 KV heads shrink k_proj and v_proj (2 * 2 * 64*32 fewer weights) but not the score matmuls
    model = llama(kv_heads=2)
    assert flops.attention_shape(model.config) == (2, 64)
    assert flops.matmul_params(model) == (MATMUL_PARAMS - 2 * 2 * 64 * 32, 0)


def test_lora_frozen_base_is_4n_plus_6n_adapter():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(llama(), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert flops.matmul_params(model) == (LORA_PARAMS, MATMUL_PARAMS)
    assert flops.model_flops_per_token(model, context=50.0) == 6 * LORA_PARAMS + 4 * MATMUL_PARAMS + 12 * 2 * 64 * 50


def test_sample_lengths_and_attention_context():
    packed = {"input_ids": [9] * 9, "position_ids": [0, 1, 2, 0, 1, 0, 1, 2, 3]}
    assert flops.sample_lengths(packed) == [3, 2, 4]
    assert flops.sample_lengths({"input_ids": [1, 2, 3, 4, 5]}) == [5]
    assert flops.attention_context([2, 4]) == pytest.approx((4 + 16) / 6)
    assert flops.attention_context([7, 7, 7]) == 7
    # packing does not change the context: the same samples, packed or not
    rows = [packed, {"input_ids": [1] * 3}, {"input_ids": [1] * 2}, {"input_ids": [1] * 4}]
    assert flops.dataset_attention_context(rows) == pytest.approx(flops.attention_context([3, 2, 4, 3, 2, 4]))
    assert flops.dataset_attention_context([]) == 0.0


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989),
    ("NVIDIA H100 PCIe", 756),
    ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989),
    ("NVIDIA H200 NVL", 835),
    ("NVIDIA GH200 480GB", 989),
    ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100 80GB PCIe", 312),
    ("NVIDIA A100-PCIE-40GB", 312),
    ("NVIDIA L40S", 362),
    ("NVIDIA L40", 181),
    ("NVIDIA L4", 121),
    ("NVIDIA A10G", 70),
    ("NVIDIA A10", 125),
])
def test_known_gpus(name, tflops):
    assert flops.peak_bf16_flops(name) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("name", [None, "", "Tesla T4", "Tesla V100-SXM2-16GB", "AMD Instinct MI300X", "cpu"])
def test_unknown_devices_have_no_peak(name):
    assert flops.peak_bf16_flops(name) is None


def test_no_peak_on_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert flops.device_peak_flops() is None
    assert flops.training_mfu(llama(), [{"input_ids": [1] * 8}], 1e6) is None


def test_mfu():
    # a 1B model, full fine-tuning: 6e9 FLOPs/token at 50k tokens/s on one H100 SXM
    assert flops.mfu(6e9, 50_000, 989e12) == pytest.approx(0.30334, rel=1e-4)
    assert flops.mfu(6e9, 50_000, 989e12, devices=2) == pytest.approx(0.15167, rel=1e-4)
    assert flops.mfu(6e9, None, 989e12) is None
    assert flops.mfu(6e9, 50_000, None) is None


def _progress_records(monkeypatch, peak):
    """Drive the trainer's progress callback through one logging window of 2 s and 1000 tokens."""
    from kubetune_trainer import progress

    monkeypatch.setattr(flops, "device_peak_flops", lambda device=None: peak)
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    records = []
    reporters = progress.Reporters([types.SimpleNamespace(progress=records.append, event=lambda e: None, close=lambda: None)])
    cb = progress.make_progress_callback(reporters)
    args = types.SimpleNamespace(device="cuda:0", world_size=2)
    state = types.SimpleNamespace(global_step=0, num_input_tokens_seen=0, max_steps=10, epoch=0.0, is_world_process_zero=True)
    rows = [{"input_ids": [1] * 100}]  # context 100
    cb.on_train_begin(args, state, None, model=llama(), train_dataloader=types.SimpleNamespace(dataset=rows))
    state.global_step, state.num_input_tokens_seen, state.epoch = 1, 1000, 0.1
    cb.on_log(args, state, None, logs={"loss": 2.0, "learning_rate": 1e-4})
    return records


def test_progress_records_carry_mfu_on_a_known_gpu(monkeypatch):
    (rec,) = _progress_records(monkeypatch, peak=1e9)
    assert rec["tokensPerSecond"] == 500.0
    fpt = 6 * MATMUL_PARAMS + 12 * 2 * 64 * 100
    assert rec["mfu"] == pytest.approx(round(fpt * 500 / (1e9 * 2), 4))  # world size 2: two GPUs' peak
    assert 0 < rec["mfu"] < 1


def test_progress_records_have_no_mfu_without_a_known_gpu(monkeypatch):
    (rec,) = _progress_records(monkeypatch, peak=None)
    assert rec["tokensPerSecond"] == 500.0
    assert "mfu" in rec and rec["mfu"] is None
