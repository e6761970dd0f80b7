"""bf16 training takes AdamW's first step as AdamW does: a single-process run (ZeRO-0 by the memory
plan) under bf16, where DeepSpeed wraps the torch optimizer in its FP16_UnfusedOptimizer.

Adam's first bias-corrected update is ``lr * g / (|g| + eps)``: every entry moves by the learning
rate, whatever its gradient's size. LoRA's B matrices start at zero, so after one step each of
their entries is +-lr. DeepSpeed's zero-gradient warm-up step at construction made the first real
step Adam's second (0.1 g / 0.19 over sqrt(0.001 g^2 / 0.002)): entries of 0.74 lr, and smaller
early updates all through a short run (docs/trainer.md, "Precision").
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import run_trainer

pytestmark = [pytest.mark.distributed]

LR = 2.0**-10  # exact in bf16: the exported B entries are exactly +-LR


def test_first_adamw_step_under_bf16_moves_lora_b_by_the_learning_rate(tiny_model_dir, tmp_path):
    train = tmp_path / "text.jsonl"
    train.write_text("".join(json.dumps({"text": f"the cat {w} sat on the mat {w}"}) + "\n"
                             for w in ("red", "green", "blue", "one", "two", "three", "four", "five")))
    spec = {
        "model": {"source": str(tiny_model_dir)},
        "dataset": {"train": str(train), "evalFraction": 0, "maxSeqLength": 64},
        "method": {"type": "lora", "lora": {"r": 4, "dropout": 0.0}},
        "training": {"maxSteps": 1, "globalBatchSize": 2, "microBatchSize": 1, "learningRate": LR, "scheduler": "constant",
                     "warmupRatio": 0, "precision": "bf16", "gradientCheckpointing": False},
        "distributed": {"gpusPerNode": 0, "processesPerNode": 1, "zeroStage": "0"},
        "output": {"uri": str(tmp_path / "out")},
    }
    run = run_trainer(tmp_path / "run", spec, nproc=1)
    assert run.rc == 0, run.log[-4000:]
    assert (run.summary["precision"], run.summary["zeroStage"], run.summary["steps"]) == ("bf16", 0, 1)
    weights = load_file(str(tmp_path / "out" / "final" / "adapter" / "adapter_model.safetensors"))
    b = [w.float().abs().flatten() for k, w in weights.items() if "lora_B" in k]
    assert b, sorted(weights)
    moved = torch.cat(b)
    # every entry has a gradient far above Adam's eps (1e-8) here; the median is robust to any that do not
    assert moved.median().item() == pytest.approx(LR, rel=1e-3), f"first-step |lora_B| median {moved.median().item() / LR:.3f} x lr"
    assert moved.max().item() == pytest.approx(LR, rel=1e-3)
