"""Checkpoint, kill, resume with the real trainer: 2 processes, DeepSpeed on CPU, checkpoints in moto S3.

The uninterrupted reference runs are module-scoped and shared by the tests.
Losses are read from the KUBETUNE_PROGRESS_FILE JSON lines (one per step).
"""
from __future__ import annotations

import signal
import time

import pytest

from harness import job, run_job
from kubetune_trainer import exitcodes

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(600)]

STEPS = 12
EVERY = 3


@pytest.fixture(scope="module")
def assets(s3, tmp_path_factory):
    """A tiny Llama and an instruction dataset, uploaded to S3 (so fetch is exercised too)."""
    from kubetune_trainer import tiny

    d = tmp_path_factory.mktemp("assets")
    tiny.save_tiny_model(d / "model")
    tiny.write_instruction_dataset(d / "train.jsonl", n=96)
    c = s3.client()
    for p in (d / "model").iterdir():
        c.upload_file(str(p), s3.bucket, f"assets/model/{p.name}")
    c.upload_file(str(d / "train.jsonl"), s3.bucket, "assets/train.jsonl")
    return {"model": f"s3://{s3.bucket}/assets/model", "train": f"s3://{s3.bucket}/assets/train.jsonl"}


def _job(s3, assets, name, out, **kw):
    return job(name, model=assets["model"], train=assets["train"], output=f"s3://{s3.bucket}/{out}",
               endpoint=kw.pop("endpoint", s3.endpoint), steps=STEPS, every=EVERY, **kw)


@pytest.fixture(scope="module")
def reference_lora(s3, assets, tmp_path_factory):
    d = tmp_path_factory.mktemp("ref-lora")
    r = run_job(_job(s3, assets, "ref-lora", "runs/ref-lora", method="lora", zero=2), d, s3.env())
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_reference_lora_runs(reference_lora):
    r = reference_lora
    print(f"reference run {r.seconds:.1f}s")
    assert sorted(r.losses()) == list(range(1, STEPS + 1))
    assert [e["step"] for e in r.of("checkpoint")] == [3, 6, 9, 12]
