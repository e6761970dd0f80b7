"""Gradient accumulation through the real trainer (HF Trainer + DeepSpeed config from the spec):
a global batch of 8 as micro 4 x accumulation 2 gives the same optimizer steps as micro 8 x 1.

Single-process torchrun runs, full fine-tuning, ZeRO-2, constant LR, no warmup, 2 steps, on
text rows of very different lengths without packing, so the two micro batches of a step
hold different numbers of loss tokens: only a loss normalised by the tokens of the whole
accumulated batch (not per micro batch) matches. Clipping is set high enough never to act,
but keeps the gradient norm computed and logged. Compared: the logged loss and gradient
norm of each step (Adam's update is nearly scale-free, the gradient norm is not) and the
exported weights after the second step.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from kubetune_trainer import tiny

from trainer_helpers import finish_trainer, start_trainer

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def ga_spec(model_dir, train, out, micro: int) -> dict:
    return {
        "model": {"source": str(model_dir)},
        "dataset": {"train": train, "evalFraction": 0, "maxSeqLength": 64, "packing": False},
        "method": {"type": "full"},
        "training": {"maxSteps": 2, "globalBatchSize": 8, "microBatchSize": micro, "learningRate": 1e-3,
                     "scheduler": "constant", "warmupRatio": 0, "gradientCheckpointing": False, "maxGradNorm": 1000.0},
        "distributed": {"gpusPerNode": 0, "processesPerNode": 1, "zeroStage": "2"},
        "output": {"uri": str(out)},
    }


def test_accumulation_matches_one_big_batch(tiny_model_dir, tmp_path):
    train = str(tiny.write_text_dataset(tmp_path / "text.jsonl", n=32, seed=5))
    specs = {micro: ga_spec(tiny_model_dir, train, tmp_path / f"out{micro}", micro) for micro in (4, 8)}
    # two single-process runs side by side: one core each
    started = {micro: start_trainer(tmp_path / f"m{micro}", specs[micro], nproc=1) for micro in specs}
    runs = {micro: finish_trainer(started[micro], tmp_path / f"m{micro}", specs[micro]) for micro in specs}
    for run in runs.values():
        assert run.rc == 0, run.log[-4000:]
    a, b = runs[4].summary, runs[8].summary
    assert (a["gradientAccumulation"], b["gradientAccumulation"]) == (2, 1)
    steps_a = [h for h in a["history"] if "loss" in h]
    steps_b = [h for h in b["history"] if "loss" in h]
    assert len(steps_a) == len(steps_b) == 2
    print("micro 4 x 2:", [(h["loss"], h["grad_norm"]) for h in steps_a])
    print("micro 8 x 1:", [(h["loss"], h["grad_norm"]) for h in steps_b])
    for x, y in zip(steps_a, steps_b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    wa = load_file(str(tmp_path / "out4" / "final" / "merged" / "model.safetensors"))
    wb = load_file(str(tmp_path / "out8" / "final" / "merged" / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    moved = max((wb[k] - base[k]).abs().max().item() for k in base)
    assert moved > 1e-4  # the steps really changed the weights
    assert max((wa[k] - wb[k]).abs().max().item() for k in wb) < 1e-6
