"""The memory planner's arithmetic on published reference points, its decisions, and `kubetune plan` /
`kubetune validate --gpu` (exit 3, InsufficientMemory, numbers in the message)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import yaml
from api_manifests import REPO, base

from kubetune_api import contract, memory
from kubetune_api.spec import load_job

GIB = 2**30

# config.json values as published with each model on the Hugging Face Hub
LLAMA3_8B = dict(model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, intermediate_size=14336, tie_word_embeddings=False)
LLAMA2_7B = dict(model_type="llama", vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, intermediate_size=11008, tie_word_embeddings=False)
LLAMA31_70B = dict(model_type="llama", vocab_size=128256, hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                   num_key_value_heads=8, intermediate_size=28672, tie_word_embeddings=False)
QWEN25_05B = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True)


@pytest.mark.parametrize("config, expected", [
    pytest.param(LLAMA3_8B, 8_030_261_248, id="llama-3-8b (8.03B)"),
    pytest.param(LLAMA2_7B, 6_738_415_616, id="llama-2-7b (6.74B)"),
    pytest.param(LLAMA31_70B, 70_553_706_496, id="llama-3.1-70b (70.6B)"),
    pytest.param(QWEN25_05B, 494_032_768, id="qwen2.5-0.5b (0.49B, tied, qkv bias)"),
])
def test_parameter_count_from_config(config, expected):
    assert memory.shape_from_config(config).parameters() == expected


@pytest.mark.parametrize("config, targets, r, trainable", [
    # peft's print_trainable_parameters, as widely reported: Llama-2-7B, q_proj/v_proj, r=8
    pytest.param(LLAMA2_7B, ("q_proj", "v_proj"), 8, 4_194_304, id="llama-2-7b q,v r8"),
    # Llama-3-8B, all linear layers, r=16
    pytest.param(LLAMA3_8B, ("all-linear",), 16, 41_943_040, id="llama-3-8b all-linear r16"),
])
def test_lora_parameter_count(config, targets, r, trainable):
    shape = memory.shape_from_config(config)
    count = memory.count_parameters(shape, memory.Job(method="lora", lora_r=r, lora_targets=targets))
    assert count.trainable == trainable
    dora = memory.count_parameters(shape, memory.Job(method="lora", lora_r=r, lora_targets=targets, use_dora=True))
    # DoRA adds one magnitude per output feature of each adapted layer
    outs = sum(o for name, (_, o) in shape.linear_layers().items() if targets == ("all-linear",) or name in targets)
    assert dora.trainable == trainable + shape.num_layers * outs


def _full(stage, offload="none", world=8, precision="bf16", config=LLAMA3_8B):
    shape = memory.shape_from_config(config)
    job = memory.Job(method="full", precision=precision, world_size=world, seq_length=128)
    return shape, memory.estimate(shape, job, memory.Settings(stage, offload, True, 1))


@pytest.mark.parametrize("world", [1, 8, 64])
def test_zero_model_states_match_deepspeed_formulas(world):
    """DeepSpeed's documented estimators (estimate_zero2/3_model_states_mem_needs, GPU side, mixed precision):
    ZeRO-2: 2Ψ + 18Ψ/N; with optimizer offload 2Ψ. ZeRO-3: 4·largest layer + 18Ψ/N; optimizer offload
    4·largest layer + 2Ψ/N; parameter and optimizer offload 4·largest layer (the largest layer counts only
    when there is something to gather, N > 1)."""
    shape, e = _full(2, world=world)
    psi = shape.parameters()
    assert e.model_states == pytest.approx(2 * psi + 18 * psi / world)
    assert _full(2, "optimizer", world)[1].model_states == pytest.approx(2 * psi)
    largest = 4 * shape.largest_layer_parameters() if world > 1 else 0
    assert _full(3, world=world)[1].model_states == pytest.approx(largest + 18 * psi / world)
    assert _full(3, "optimizer", world)[1].model_states == pytest.approx(largest + 2 * psi / world)
    assert _full(3, "parameters", world)[1].model_states == pytest.approx(largest)


def test_zero_paper_optimizer_and_weights():
    """ZeRO paper, figure 1: a 7.5B model, Adam (K=12), 64 GPUs: the optimizer states are 12Ψ/N per GPU
    from stage 1 on (1.41 GB) and 12Ψ without ZeRO (90 GB); 16-bit weights 2Ψ (15 GB) until stage 3 (0.23 GB)."""
    config = dict(LLAMA2_7B)
    shape = memory.shape_from_config(config)
    psi = shape.parameters()
    for stage, weights in ((1, 2 * psi), (2, 2 * psi), (3, 2 * psi / 64)):
        _, e = _full(stage, world=64, config=config)
        assert e.terms["optimizer"] == pytest.approx(12 * psi / 64)
        assert e.terms["weights"] == pytest.approx(weights)
    # at 7.5B parameters, the paper's numbers in GB
    assert 12 * 7.5e9 / 64 / 1e9 == pytest.approx(1.41, abs=0.01)


def test_offload_moves_state_to_host():
    shape, e = _full(3, "parameters", world=1)
    psi = shape.parameters()
    assert e.terms["weights"] == e.terms["optimizer"] == e.terms["gradients"] == 0
    assert e.host_terms["weights"] == pytest.approx(2 * psi)
    assert e.host_terms["optimizer"] == pytest.approx(12 * psi)


def test_qlora_weights_are_four_bit():
    shape = memory.shape_from_config(LLAMA3_8B)
    lora = memory.estimate(shape, memory.Job(method="lora"), memory.Settings(2, "none", True, 1))
    qlora = memory.estimate(shape, memory.Job(method="qlora"), memory.Settings(2, "none", True, 1))
    linear = shape.linear_parameters()
    rest = shape.parameters() - linear
    adapter = qlora.params.trainable
    assert qlora.terms["weights"] == pytest.approx(linear * memory.NF4_BYTES[True] + rest * 4 + adapter * 2)
    assert qlora.terms["weights"] < 0.5 * lora.terms["weights"]


def test_checkpointing_and_micro_batch_scale_activations():
    shape = memory.shape_from_config(LLAMA3_8B)
    job = memory.Job(method="lora", seq_length=2048)
    off1 = memory.estimate(shape, job, memory.Settings(2, "none", False, 1))
    on1 = memory.estimate(shape, job, memory.Settings(2, "none", True, 1))
    off4 = memory.estimate(shape, job, memory.Settings(2, "none", False, 4))
    assert on1.terms["activations"] < off1.terms["activations"] / 5
    assert off4.terms["activations"] == pytest.approx(4 * off1.terms["activations"])
    assert off4.terms["logits"] == pytest.approx(4 * off1.terms["logits"])


def test_method_parameter_counts():
    shape = memory.shape_from_config(LLAMA3_8B)
    prompt = memory.count_parameters(shape, memory.Job(method="prompt-tuning", num_virtual_tokens=20))
    assert prompt.trainable == 20 * 4096
    prefix = memory.count_parameters(shape, memory.Job(method="prefix-tuning", num_virtual_tokens=20))
    assert prefix.trainable == 20 * 32 * 2 * 1024  # keys and values of every layer (8 KV heads x 128)
    ia3 = memory.count_parameters(shape, memory.Job(method="ia3"))
    assert ia3.trainable == 32 * (1024 + 1024 + 14336)  # k_proj, v_proj outputs; down_proj input
    with pytest.raises(memory.PlanError, match=r"method.lora.targetModules \['qkv'\]"):
        memory.count_parameters(shape, memory.Job(method="lora", lora_targets=("qkv",)))


def test_unknown_architecture_and_gpu():
    with pytest.raises(memory.PlanError, match="model_type 'gpt2'"):
        memory.shape_from_config({"model_type": "gpt2"})
    with pytest.raises(memory.PlanError, match="unknown GPU 'Z80'"):
        memory.gpu_memory_bytes("Z80")


@pytest.mark.parametrize("name, key", [
    ("H100-80GB", "H100-80GB"), ("NVIDIA-H100-80GB-HBM3", "H100-80GB"), ("NVIDIA-A100-SXM4-40GB", "A100-40GB"),
    ("a100-80gb", "A100-80GB"), ("NVIDIA-L4", "L4"), ("Tesla-T4", "T4"), ("NVIDIA-L40S", "L40S"),
])
def test_gpu_names(name, key):
    assert memory.gpu_memory_bytes(name) == memory.GPU_MEMORY_MIB[key] * memory.MIB


def _spec(**training):
    doc = base()
    doc["spec"]["model"]["source"] = "/models/x"
    doc["spec"]["method"] = {"type": "lora"}
    doc["spec"]["distributed"] = {"nodes": 1, "gpusPerNode": 1}
    doc["spec"]["training"].update({"globalBatchSize": 8, "microBatchSize": 1, **training})
    doc["spec"]["dataset"]["maxSeqLength"] = 2048
    return load_job(doc).spec


def test_auto_settings_pick_the_fastest_that_fits():
    """gradientCheckpointing and zeroStage 'auto': off / ZeRO-2 (ZeRO-0 for one process) when it fits,
    on / ZeRO-3 / offload only when needed."""
    spec = _spec()
    choices = memory.Choices(zero_stage=None, offload=None, gradient_checkpointing=None, micro_batch=1)
    shape = memory.shape_from_config(LLAMA3_8B)
    job = memory.job_from_spec(spec)
    assert job.world_size == 1
    roomy = memory.plan(shape, job, choices, 80 * GIB)
    assert roomy.chosen.settings == memory.Settings(0, "none", False, 1)  # nothing to partition over one rank
    two = memory.plan(shape, dataclasses.replace(job, world_size=2), choices, 80 * GIB)
    assert two.chosen.settings == memory.Settings(2, "none", False, 1)
    assert all(c.settings.zero_stage != 0 for c in two.candidates)
    no_ckpt = memory.pick(roomy.candidates, zero_stage=0, offload="none", gradient_checkpointing=False).total
    with_ckpt = memory.pick(roomy.candidates, zero_stage=0, offload="none", gradient_checkpointing=True).total
    tight = (no_ckpt + with_ckpt) / 2 / (1 - memory.MARGIN_FRACTION) + memory.CUDA_CONTEXT_BYTES
    assert memory.plan(shape, job, choices, int(tight)).chosen.settings.gradient_checkpointing is True
    full = memory.Job(method="full", seq_length=2048, world_size=8)
    on_8x40 = memory.plan(shape, full, choices, 40 * GIB)
    assert on_8x40.chosen.settings.zero_stage == 3 and on_8x40.chosen.settings.offload == "none"
    alone = memory.plan(shape, memory.Job(method="full", seq_length=2048), choices, 80 * GIB, host_bytes=512 * GIB)
    assert alone.chosen.settings.offload != "none"


def test_micro_batch_auto_takes_the_largest_that_fits():
    shape = memory.shape_from_config(QWEN25_05B)
    job = memory.Job(method="lora", seq_length=1024)
    choices = memory.Choices(gradient_checkpointing=False, micro_batch=None, max_micro_batch=8)
    assert memory.plan(shape, job, choices, 80 * GIB).chosen.settings.micro_batch == 8
    mb2 = memory.pick(memory.plan(shape, job, choices, None).candidates, zero_stage=2, micro_batch=2,
                      gradient_checkpointing=False, offload="none").total
    budget = (mb2 * 1.2) / (1 - memory.MARGIN_FRACTION) + memory.CUDA_CONTEXT_BYTES
    assert memory.plan(shape, job, choices, int(budget)).chosen.settings.micro_batch == 2


def _manifest(tmp_path, config, method="full", gpus=1, nodes=1, **extra):
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(config))
    doc = base()
    doc["metadata"]["name"] = "plan-test"
    doc["spec"]["model"]["source"] = str(model)
    doc["spec"]["method"] = {"type": method}
    doc["spec"]["distributed"] = {"nodes": nodes, "gpusPerNode": gpus}
    doc["spec"]["training"].update({"globalBatchSize": 8 * gpus * nodes, "microBatchSize": 1})
    doc["spec"]["output"]["export"] = "merged" if method == "full" else "adapter"
    doc["spec"].update(extra)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _kubetune(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "kubetune_operator.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_validate_gpu_refuses_70b_full_on_one_h100(tmp_path):
    job = _manifest(tmp_path, LLAMA31_70B, method="full")
    res = _kubetune("validate", str(job), "--gpu", "H100-80GB")
    assert res.returncode == contract.PERMANENT, res.stdout + res.stderr
    reason, message = contract.parse_error_line(res.stdout)
    assert reason == "InsufficientMemory"
    assert "70.55B-parameter model" in message
    assert "H100-80GB has 79.6 GiB" in message
    assert "host memory" in message  # offloading cannot save it either: 18 bytes/parameter on the host
    assert "per GPU at its peak" in message and "GiB" in message


def test_validate_gpu_accepts_lora_8b_on_h100(tmp_path):
    job = _manifest(tmp_path, LLAMA3_8B, method="lora")
    res = _kubetune("validate", str(job), "--gpu", "H100-80GB")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "memory: fits on H100-80GB" in res.stdout


def test_plan_prints_the_table(tmp_path):
    job = _manifest(tmp_path, LLAMA3_8B, method="lora")
    res = _kubetune("plan", str(job), "--gpu", "A100-40GB")
    assert res.returncode == 0, res.stdout + res.stderr
    for word in ("weights", "gradients", "optimizer", "activations", "logits", "<- peak", "runtime margin",
                 "memory (A100-40GB)", "fit: yes", "8.030B parameters", "41,943,040 trainable"):
        assert word in res.stdout
    big = _manifest(tmp_path, LLAMA31_70B, method="full")
    res = _kubetune("plan", str(big), "--gpu", "H100-80GB")
    assert res.returncode == contract.PERMANENT
    assert "fit: NO" in res.stdout
    assert contract.parse_error_line(res.stderr)[0] == "InsufficientMemory"


def test_plan_reads_the_gpu_from_the_node_selector(tmp_path):
    job = _manifest(tmp_path, LLAMA3_8B, method="lora", nodeSelector={"nvidia.com/gpu.product": "NVIDIA-L4"})
    res = _kubetune("plan", str(job))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "memory (NVIDIA-L4)" in res.stdout


@pytest.mark.parametrize("example", ["full-zero3-offload", "lora-8b-2x8-s3-kueue", "prompt-tuning", "qlora-1gpu"])
def test_plan_on_examples(example, monkeypatch):
    """The examples' hf:// models are planned from built-in copies of their config.json when offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = _kubetune("plan", f"examples/{example}.yaml", "--gpu", "H100-80GB")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fit: yes" in res.stdout
