"""Checkpoint, kill, resume with the real trainer: 2 processes, DeepSpeed on CPU, checkpoints in moto S3.

Each uninterrupted reference run is module-scoped and shared. Losses are read
from the KUBETUNE_PROGRESS_FILE JSON lines (one record per optimizer step).
"""
from __future__ import annotations

import io
import signal

import pytest
from harness import job, run_job

from kubetune_api import contract
from kubetune_trainer import checkpoint as ck
from kubetune_trainer.storage import S3Storage, join

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(900)]

STEPS = 20
EVERY = 4
TOL = 1e-5
CONSOLIDATED = ("model.safetensors", "pytorch_model.bin", ".safetensors.index.json")  # incl. adapter_model.*


@pytest.fixture(scope="module")
def assets(s3, tmp_path_factory):
    """A tiny Llama and an instruction dataset, uploaded to S3 (so fetch is exercised too)."""
    from kubetune_trainer import tiny

    d = tmp_path_factory.mktemp("assets")
    tiny.save_tiny_model(d / "model")
    tiny.write_instruction_dataset(d / "train.jsonl", n=128)
    c = s3.client()
    for p in (d / "model").iterdir():
        c.upload_file(str(p), s3.bucket, f"assets/model/{p.name}")
    c.upload_file(str(d / "train.jsonl"), s3.bucket, "assets/train.jsonl")
    return {"model": f"s3://{s3.bucket}/assets/model", "train": f"s3://{s3.bucket}/assets/train.jsonl"}


def _job(s3, assets, name, out, **kw):
    return job(name, model=assets["model"], train=assets["train"], output=f"s3://{s3.bucket}/{out}",
               endpoint=kw.pop("endpoint", s3.endpoint), steps=STEPS, every=EVERY, **kw)


def _store(s3) -> S3Storage:
    return S3Storage(endpoint=s3.endpoint, region="us-east-1", addressing_style="path")


def _reference(s3, assets, tmp_path_factory, name, **kw):
    d = tmp_path_factory.mktemp(name)
    r = run_job(_job(s3, assets, name, f"runs/{name}", **kw), d, s3.env())
    assert r.returncode == 0, r.stderr[-4000:]
    assert sorted(r.losses()) == list(range(1, STEPS + 1))
    assert [e["step"] for e in r.of("checkpoint")] == list(range(EVERY, STEPS + 1, EVERY))
    print(f"\n{name}: {r.seconds:.1f}s")
    return r


@pytest.fixture(scope="module")
def reference_lora(s3, assets, tmp_path_factory):
    return _reference(s3, assets, tmp_path_factory, "ref-lora", method="lora", zero=2)


@pytest.fixture(scope="module")
def reference_full(s3, assets, tmp_path_factory):
    return _reference(s3, assets, tmp_path_factory, "ref-full", method="full", zero=3)


def assert_matches_reference(run, ref, resumed_from: int, last: int):
    """Every step after the resume point is there exactly once and has the reference's loss."""
    losses, want = run.losses(), ref.losses()
    assert sorted(losses) == list(range(resumed_from + 1, last + 1)), sorted(losses)
    worst = max(abs(losses[s] - want[s]) for s in losses)
    assert worst <= TOL, {s: (losses[s], want[s]) for s in losses if abs(losses[s] - want[s]) > TOL}
    return worst


def _committed(s3, out) -> list[int]:
    return [c.step for c in ck.list_checkpoints(_store(s3), f"s3://{s3.bucket}/{out}/checkpoints") if c.committed]


def _first_checkpoint_before_the_end(events):
    return any(e.get("event") == "checkpoint" and e["step"] < STEPS for e in events)


def test_lora_checkpoints_hold_no_frozen_base_weights(s3, reference_lora):
    """What transformers passes to DeepSpeed (exclude_frozen_parameters=True for PEFT) reaches S3."""
    import torch

    st = _store(s3)
    root = f"s3://{s3.bucket}/runs/ref-lora/checkpoints"
    best, _ = ck.newest_committed(st, root)
    assert best.step == STEPS and _committed(s3, "runs/ref-lora") == [STEPS - EVERY, STEPS]  # keepLast 2
    states = [n for n in best.manifest["files"] if n.endswith("model_states.pt")]
    assert states, best.manifest["files"]
    blob = st.read_bytes(join(best.uri, states[0]))
    module = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)["module"]
    assert module and all("lora_" in k for k in module), [k for k in module if "lora_" not in k][:5]
    assert not [n for n in best.manifest["files"] if n.endswith(CONSOLIDATED)]  # DeepSpeed's files only
    assert st.exists(f"s3://{s3.bucket}/runs/ref-lora/final/COMMITTED")
    assert reference_lora.of("exported")[0]["adapterUri"] == f"s3://{s3.bucket}/runs/ref-lora/final/adapter"


def test_lora_zero2_kill9_sigterm_resume_under_s3_faults(s3, assets, reference_lora, tmp_path):
    """ZeRO-2 LoRA through a proxy failing every 9th S3 request:
    kill -9 after a commit -> rerun resumes (ignoring a planted half-uploaded checkpoint) ->
    SIGTERM -> committed checkpoint + exit 75 -> rerun resumes from it and finishes.
    Losses after each resume equal the uninterrupted run's."""
    out = "runs/lora-chain"
    manifest = _job(s3, assets, "lora-chain", out, method="lora", zero=2, endpoint=s3.proxy.url)
    env = s3.env(TORCH_ELASTIC_SHUTDOWN_TIMEOUT="60")
    s3.proxy.reset(fail_every=9)
    try:
        # 1. kill -9 (the whole process group, as a node loss) once a checkpoint is committed.
        a = run_job(manifest, tmp_path / "a", env, until=_first_checkpoint_before_the_end, send=signal.SIGKILL)
        faults_a = dict(s3.proxy.injected)
        assert a.returncode == -signal.SIGKILL, a.stderr[-3000:]
        killed_at = max(a.losses())
        committed = _committed(s3, out)
        assert committed and max(committed) < STEPS and killed_at < STEPS
        resume_a = max(committed)

        # A half-uploaded newer checkpoint (no COMMITTED marker) must be ignored.
        st = _store(s3)
        partial = f"s3://{s3.bucket}/{out}/checkpoints/{ck.step_dirname(resume_a + 2)}"
        st.write_json(join(partial, "trainer_state.json"), {"global_step": resume_a + 2, "garbage": True})

        # 2. Rerun: resumes from the newest commit; SIGTERM to the launcher a few steps later.
        def after_a_few_steps(events):
            steps = [e["step"] for e in events if "event" not in e]
            return bool(steps) and max(steps) >= resume_a + 3

        b = run_job(manifest, tmp_path / "b", env, until=after_a_few_steps, send=signal.SIGTERM)
        assert b.of("resumed") == [{"event": "resumed", "step": resume_a, "uri": f"s3://{s3.bucket}/{out}/checkpoints/{ck.step_dirname(resume_a)}"}]
        assert "ignoring incomplete checkpoint" in b.stderr and ck.step_dirname(resume_a + 2) in b.stderr
        assert b.returncode == contract.PREEMPTED, b.stderr[-3000:]
        preempt_step = max(b.losses())
        assert b.of("checkpoint")[-1]["step"] == preempt_step < STEPS
        assert preempt_step in _committed(s3, out)
        worst_b = assert_matches_reference(b, reference_lora, resume_a, preempt_step)

        # 3. Rerun: resumes from the SIGTERM checkpoint and finishes.
        c = run_job(manifest, tmp_path / "c", env)
        assert c.returncode == 0, c.stderr[-3000:]
        assert c.of("resumed")[0]["step"] == preempt_step
        worst_c = assert_matches_reference(c, reference_lora, preempt_step, STEPS)
        assert c.of("exported")
        faults = dict(s3.proxy.injected)
    finally:
        s3.proxy.reset()
    print(f"\nkilled at step {killed_at} (resume {resume_a}), SIGTERM checkpoint {preempt_step}; "
          f"max |dloss| {worst_b:.2e}/{worst_c:.2e}; faults injected {faults} (run a: {faults_a}); "
          f"runs {a.seconds:.1f}s/{b.seconds:.1f}s/{c.seconds:.1f}s")
    assert sum(faults.values()) >= 10 and sum(faults_a.values()) >= 1, faults
    assert "transient error" in a.stderr + b.stderr + c.stderr or "retry" in (a.stderr + b.stderr + c.stderr).lower()


def test_full_zero3_two_nodes_kill9_resume(s3, assets, reference_full, tmp_path):
    """ZeRO-3 full fine-tuning as two torchrun "nodes" of 1 process each (separate scratch disks, as two
    pods): each node uploads its own files, COMMITTED waits for both nodes' markers. After kill -9 both
    resume from S3 and the losses equal the reference's (1 node x 2 processes: same world size and batch)."""
    out = "runs/full-two-nodes"
    manifest = _job(s3, assets, "full-two-nodes", out, method="full", zero=3, nodes=2, procs=1)
    a = run_job(manifest, tmp_path / "a", s3.env(), procs=1, nnodes=2, until=_first_checkpoint_before_the_end)
    assert a.returncode == -signal.SIGKILL, a.stderr[-3000:]
    resume = max(_committed(s3, out))
    assert resume < STEPS
    best = ck.newest_committed(_store(s3), f"s3://{s3.bucket}/{out}/checkpoints")[0]
    files = best.manifest["files"]
    assert best.manifest["nodes"] == 2 and best.manifest["worldSize"] == 2
    assert {files["rng_state_0.pth"]["node"], files["rng_state_1.pth"]["node"]} == {0, 1}
    assert files["trainer_state.json"]["node"] == 0  # written by node 0 only, uploaded once
    assert sorted(f["node"] for n, f in files.items() if "optim_states" in n) == [0, 1], files  # a ZeRO-3 shard per rank
    assert not [n for n in files if n.endswith(CONSOLIDATED)], files  # no gathered full model per checkpoint

    b = run_job(manifest, tmp_path / "b", s3.env(), procs=1, nnodes=2)
    assert b.returncode == 0, b.stderr[-3000:]
    assert b.of("resumed")[0]["step"] == resume
    worst = assert_matches_reference(b, reference_full, resume, STEPS)
    node1 = next(p for p in (tmp_path / "b" / "scratch-node1" / "resume").glob("step-*") if p.is_dir())
    assert (node1 / "rng_state_1.pth").exists() and (node1 / "trainer_state.json").exists()
    print(f"\nZeRO-3 full, 2 nodes: killed at step {max(a.losses())}, resumed from {resume}, "
          f"max |dloss| {worst:.2e}, runs {a.seconds:.1f}s/{b.seconds:.1f}s")


def test_wrong_bucket_or_credentials_fail_fast_with_exit_3(s3, assets, tmp_path):
    """A typo in the output bucket, or a bad key, stops the job at once: exit 3 and one clear line."""
    import subprocess
    import sys
    import time

    import yaml
    from harness import ROOT

    cases = {
        "bucket": (_job(s3, assets, "bad-bucket", "x", procs=1).copy(), {}, "BucketNotFound", "no-such-bucket-kt"),
        "secret": (_job(s3, assets, "bad-secret", "runs/bad-secret", procs=1), {"AWS_SECRET_ACCESS_KEY": "wrong"}, "StorageAccessDenied", "AWS_ACCESS_KEY_ID"),
    }
    cases["bucket"][0]["spec"]["output"]["uri"] = "s3://no-such-bucket-kt/run"
    procs = {}
    t0 = time.monotonic()
    for name, (manifest, env_over, _, _) in cases.items():
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(manifest))
        env = s3.env(KUBETUNE_SCRATCH=str(tmp_path / name), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", **env_over)
        procs[name] = subprocess.Popen([sys.executable, "-m", "kubetune_trainer", "--config", str(cfg)], cwd=ROOT, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, p in procs.items():
        out, _ = p.communicate(timeout=240)
        _, _, reason, hint = cases[name]
        assert p.returncode == contract.PERMANENT, out[-3000:]
        line = [l for l in out.splitlines() if l.startswith("kubetune: error:")]
        assert line and line[-1].startswith(f"kubetune: error: {reason}: ") and hint in line[-1], out[-3000:]
        assert "transient error" not in out, "permanent errors must not be retried"
        assert not (tmp_path / name / "cache").exists(), "the output is checked before any model/data download"
        print(f"\n{name}: exit {p.returncode}: {line[-1]}")
    print(f"\nfail-fast runs finished in {time.monotonic() - t0:.1f}s")

