"""The trainer's memory plan at start-up: 'auto' settings decided from config.json, a job that cannot
fit refused with exit 3 (InsufficientMemory) before any weight is read."""
from __future__ import annotations

import json
import shutil

import pytest
from trainer_helpers import write_job

from kubetune_api.contract import PERMANENT
from kubetune_api.spec import load_job
from kubetune_trainer import memplan
from kubetune_trainer.train import main


def spec_for(model_dir, train="/data/train.jsonl", **sections):
    doc = {
        "model": {"source": str(model_dir)},
        "dataset": {"train": train, "evalFraction": 0.0, "maxSeqLength": 64},
        "method": {"type": "lora"},
        "training": {"maxSteps": 2, "globalBatchSize": 2, "microBatchSize": 1},
        "distributed": {"gpusPerNode": 0, "processesPerNode": 2},
        "output": {"uri": "/tmp/unused-out"},
    }
    for k, v in sections.items():
        doc[k] = {**doc.get(k, {}), **v}
    return doc


def parsed(doc):
    return load_job({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "t"}, "spec": doc}).spec


def test_checkpointing_auto_is_off_when_the_job_fits(tiny_model_dir):
    spec = parsed(spec_for(tiny_model_dir))
    assert spec.training.gradient_checkpointing is None and spec.distributed.offload == "auto"
    plan = memplan.plan_memory(spec, "fp32", cuda=False, local_rank=0)
    assert plan is not None and plan.fits
    assert memplan.gradient_checkpointing(spec, plan) is False
    assert memplan.offload(spec, plan) == "none"  # a CPU job never offloads
    assert memplan.zero_stage(plan) == 2  # two processes (spec_for): ZeRO-2
    summary = plan.summary()
    assert summary["gradientCheckpointing"] is False and summary["estimatedBytes"] > 0 and summary["device"] == "cpu"


@pytest.mark.parametrize("fixture, task, params", [
    ("tiny_t5_dir", "seq2seq", None), ("minilm_dir", "sequence-classification", 22_713_986),
])
def test_bert_and_t5_jobs_get_a_plan(fixture, task, params, request):
    """The trainer plans encoder (all-MiniLM-L6-v2, 2 classes from dataset.labels) and encoder-decoder jobs
    from config.json, with the model.task's head, and decides the 'auto' settings from it."""
    model_dir = request.getfixturevalue(fixture)
    extra = {"labels": ["neg", "pos"]} if task == "sequence-classification" else {}
    spec = parsed(spec_for(model_dir, model={"task": "auto"}, dataset=extra, training={"microBatchSize": "auto"}))
    plan = memplan.plan_memory(spec, "fp32", cuda=False, local_rank=0)
    assert plan is not None and plan.fits and plan.shape.task == task
    assert memplan.gradient_checkpointing(spec, plan) is False and memplan.micro_batch(spec, plan) == 1
    if params is not None:
        assert plan.summary()["parameters"] == params  # 22,713,216 (BertModel with pooler) + a 2-class classifier (384 x 2 + 2)


def test_spec_values_win_and_no_plan_keeps_the_safe_defaults(tiny_model_dir, tmp_path):
    spec = parsed(spec_for(tiny_model_dir, training={"gradientCheckpointing": True}))
    plan = memplan.plan_memory(spec, "fp32", cuda=False, local_rank=0)
    assert memplan.gradient_checkpointing(spec, plan) is True
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    spec = parsed(spec_for(odd))
    assert memplan.plan_memory(spec, "fp32", cuda=False, local_rank=0) is None
    assert memplan.gradient_checkpointing(spec, None) is True
    assert memplan.offload(spec, None) == "none"


def test_a_job_that_cannot_fit_exits_3_before_reading_weights(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """The model folder holds only config.json: the refusal must come from the plan, not from loading."""
    monkeypatch.setenv("KUBETUNE_SCRATCH", str(tmp_path / "scratch"))
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(tiny_model_dir / "config.json", config_only / "config.json")
    doc = spec_for(config_only, train=str(tmp_path / "absent.jsonl"), resources={"limits": {"memory": "2Mi"}})
    rc = main(["--config", str(write_job(tmp_path / "job.yaml", doc))])
    err = capsys.readouterr().err
    assert rc == PERMANENT
    line = next(x for x in err.splitlines() if x.startswith("kubetune: error:"))
    assert line.startswith("kubetune: error: InsufficientMemory: lora fine-tuning of a ")
    assert "per process at its peak" in line and "but cpu has 1.0 MiB" in line


@pytest.mark.parametrize("stage", ["2", "3"])
def test_ds_config_offload_follows_the_decision(tiny_model_dir, stage):
    from kubetune_trainer import dsconfig

    spec = parsed(spec_for(tiny_model_dir, distributed={"zeroStage": stage}))
    batch = dsconfig.batch_plan(spec, 2)
    auto = dsconfig.build_ds_config(spec, batch, int(stage), "fp32")["zero_optimization"]
    assert "offload_optimizer" not in auto  # 'auto' without a decision: none
    decided = dsconfig.build_ds_config(spec, batch, int(stage), "fp32", offload="optimizer")["zero_optimization"]
    assert decided["offload_optimizer"]["device"] == "cpu"


def test_micro_batch_auto_comes_from_the_plan(tiny_model_dir):
    """microBatchSize 'auto': the plan's largest micro-batch that fits and divides the per-rank batch; into the DS config."""
    from kubetune_trainer import dsconfig

    spec = parsed(spec_for(tiny_model_dir, training={"globalBatchSize": 8, "microBatchSize": "auto"}))
    plan = memplan.plan_memory(spec, "fp32", cuda=False, local_rank=0)
    assert plan is not None and plan.fits
    mb = memplan.micro_batch(spec, plan)
    assert mb == 4 == plan.summary()["microBatchSize"]  # 8 over 2 ranks: 4 per rank, and the tiny model fits it
    batch = dsconfig.batch_plan(spec, 2, mb)
    assert (batch.micro_batch, batch.accumulation) == (4, 1)
    assert dsconfig.build_ds_config(spec, batch, 2, "fp32")["train_micro_batch_size_per_gpu"] == 4
    # Tight memory: the plan steps down to a smaller micro-batch (still without checkpointing) before giving up.
    from kubetune_api import memory

    by = {(e.settings.gradient_checkpointing, e.settings.micro_batch): e.total for e in plan.candidates
          if e.settings.zero_stage == 2}
    assert by[(False, 4)] > by[(False, 2)]
    device = int((by[(False, 4)] + by[(False, 2)]) / 2 / (1 - memory.MARGIN_FRACTION))  # usable: between the two
    small = memory.plan(plan.shape, plan.job, plan.choices, device, gpu=False)
    assert small.fits and memplan.micro_batch(spec, small) == 2 and not small.chosen.settings.gradient_checkpointing
    # Without a plan, and with a fixed value, the spec's rules hold.
    assert memplan.micro_batch(spec, None) == 1
    fixed = parsed(spec_for(tiny_model_dir, training={"globalBatchSize": 8, "microBatchSize": 2}))
    assert memplan.micro_batch(fixed, plan) == 2
