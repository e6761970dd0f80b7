"""The DeepSpeed config derived from the spec: batch arithmetic, ZeRO 'auto', offload, precision."""
from __future__ import annotations

import pytest

from kubetune_api.contract import PermanentError
from kubetune_api.spec import load_job
from kubetune_trainer import dsconfig
from support.manifests import merged, wrap

GiB = 1024**3


def spec(**over):
    s = {
        "model": {"source": "/m"},
        "dataset": {"train": "/d.jsonl"},
        "method": {"type": "lora"},
        "training": {"maxSteps": 1, "globalBatchSize": 64, "microBatchSize": 2},
        "distributed": {"nodes": 2, "gpusPerNode": 8},
        "output": {"uri": "s3://b/o"},
    }
    return load_job(wrap(merged(s, **over))).spec


def test_accumulation_from_global_batch():
    plan = dsconfig.batch_plan(spec(), world_size=16)
    assert (plan.micro_batch, plan.accumulation) == (2, 2)
    cfg = dsconfig.build_ds_config(spec(), plan, stage=2, precision="bf16")
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * 16
    assert "optimizer" not in cfg and "scheduler" not in cfg  # the HF Trainer builds torch AdamW and the schedule
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]


def test_runtime_world_size_that_does_not_divide_is_permanent():
    with pytest.raises(PermanentError, match="not divisible by microBatchSize 2 x world size 24"):
        dsconfig.batch_plan(spec(), world_size=24)


def test_auto_stage_picks_2_when_model_state_fits_else_3():
    s = spec(distributed={"zeroStage": "auto"}, method={"type": "full"})
    # 1B params full fine-tuning bf16 on 16 x 80 GiB: weights 2 GB + grads/optimizer sharded -> fits
    assert dsconfig.choose_zero_stage(s, 10**9, 10**9, "bf16", 16, 80 * GiB) == 2
    # 70B params: 140 GB of bf16 weights on every rank under ZeRO-2 -> does not fit, ZeRO-3
    assert dsconfig.choose_zero_stage(s, 70 * 10**9, 70 * 10**9, "bf16", 16, 80 * GiB) == 3
    # qlora and CPU runs stay on ZeRO-2; an explicit stage is kept as given
    assert dsconfig.choose_zero_stage(spec(method={"type": "qlora"}), 70 * 10**9, 10**8, "bf16", 16, 80 * GiB) == 2
    assert dsconfig.choose_zero_stage(s, 70 * 10**9, 70 * 10**9, "bf16", 16, None) == 2
    assert dsconfig.choose_zero_stage(spec(distributed={"zeroStage": "1"}), 10**12, 10**12, "bf16", 16, GiB) == 1


def test_stage3_gathers_weights_for_export_and_offload_maps_to_cpu():
    s = spec(distributed={"zeroStage": "3", "offload": "parameters"}, method={"type": "full"})
    plan = dsconfig.batch_plan(s, 16)
    zero = dsconfig.build_ds_config(s, plan, stage=3, precision="bf16")["zero_optimization"]
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_param"]["device"] == zero["offload_optimizer"]["device"] == "cpu"
    z2 = dsconfig.build_ds_config(spec(distributed={"offload": "optimizer"}), plan, stage=2, precision="bf16")["zero_optimization"]
    assert z2["offload_optimizer"]["device"] == "cpu" and "offload_param" not in z2


def test_precision_auto():
    s = spec()
    assert dsconfig.resolve_precision(s, cuda=True, bf16_supported=True) == "bf16"
    assert dsconfig.resolve_precision(s, cuda=True, bf16_supported=False) == "fp16"
    assert dsconfig.resolve_precision(s, cuda=False, bf16_supported=False) == "fp32"


def test_qlora_with_explicit_zero3_is_refused_up_front():
    with pytest.raises(PermanentError, match="qlora with distributed.zeroStage 3 is not supported"):
        dsconfig.choose_zero_stage(spec(method={"type": "qlora"}, distributed={"zeroStage": "3"}), 0, 0, "bf16", 16, None)
