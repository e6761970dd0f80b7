"""Real 2-process trainer runs under torchrun (CPU, gloo, OMP_NUM_THREADS=1), one per method/ZeRO stage.

Each run: finishes (exit 0), its eval loss after training is below the eval loss
before training, and the exported artifact, reloaded here with transformers/PEFT,
gives the eval loss the trainer reported at the end (|diff| < RELOAD_TOL: both
are the same token-weighted fp32 computation, so only summation order differs).

Runs are module-scoped fixtures: each trains once and several tests read it.
"""
from __future__ import annotations

import json

import pytest
import torch
from trainer_helpers import free_port, run_trainer, torchrun_cmd, trainer_env, write_job

from kubetune_api.spec import load_job
from kubetune_trainer import data, evaluate, tiny
from support.manifests import wrap

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

RELOAD_TOL = 1e-4


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {
        "instruction": str(tiny.write_instruction_dataset(d / "instr.jsonl", n=128)),
        "chat": str(tiny.write_chat_dataset(d / "chat.jsonl", n=64)),
    }


def job_spec(model_dir, train: str, out, method: dict, zero: str, **training) -> dict:
    return {
        "model": {"source": str(model_dir)},
        "dataset": {"train": train, "evalFraction": 0.1, "maxSeqLength": 128},
        "method": method,
        "training": {"maxSteps": 8, "globalBatchSize": 8, "microBatchSize": 4, "gradientCheckpointing": False, **training},
        "distributed": {"gpusPerNode": 0, "processesPerNode": 2, "zeroStage": zero},
        "output": {"uri": str(out)},
    }


def reload_eval_loss(spec_dict: dict, model_dir, which: str) -> float:
    """Eval loss of the exported artifact, computed in this process on the run's own eval split."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    spec = load_job(wrap(spec_dict)).spec
    final = f"{spec.output.uri}/final"
    tok = AutoTokenizer.from_pretrained(f"{final}/{which}")
    prepared = data.prepare(spec.dataset, tok, spec.dataset.train, None, spec.training.seed, bool(spec.dataset.packing))
    if which == "merged":
        model = AutoModelForCausalLM.from_pretrained(f"{final}/merged", dtype=torch.float32)
    else:
        kw = {}
        if spec.method.type == "qlora":
            kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
        base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **kw)
        model = PeftModel.from_pretrained(base, f"{final}/adapter")
    collate = data.Collator(tok.pad_token_id)
    return evaluate.eval_loss(model, prepared.eval, collate, batch_size=4, device="cpu")["eval_loss"]


def check_run(run, spec_dict, model_dir, artifacts: tuple[str, ...]):
    assert run.rc == 0, run.log[-4000:]
    s = run.summary
    assert s["worldSize"] == 2 and s["steps"] == 8
    assert s["evalLoss"] < s["initialEvalLoss"], (s["initialEvalLoss"], s["evalLoss"])
    for which in artifacts:
        reloaded = reload_eval_loss(spec_dict, model_dir, which)
        print(f"{spec_dict['method']['type']} ZeRO-{s['zeroStage']} {which}: eval loss {s['initialEvalLoss']:.5f} -> "
              f"{s['evalLoss']:.7f}, reloaded {reloaded:.7f} (|diff| {abs(reloaded - s['evalLoss']):.1e}), run {run.seconds:.1f}s")
        assert abs(reloaded - s["evalLoss"]) < RELOAD_TOL, (which, reloaded, s["evalLoss"])
    return s


# --------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def lora_z2(tiny_model_dir, datasets, tmp_path_factory):
    w = tmp_path_factory.mktemp("lora_z2")
    spec = job_spec(tiny_model_dir, datasets["instruction"], w / "out", {"type": "lora", "lora": {"r": 8}}, "2",
                    learningRate=3e-3, generationEval={"samples": 4, "maxNewTokens": 4})
    spec["output"]["export"] = "both"
    return spec, run_trainer(w, spec)


@pytest.fixture(scope="module")
def full_z3(tiny_model_dir, datasets, tmp_path_factory):
    w = tmp_path_factory.mktemp("full_z3")
    spec = job_spec(tiny_model_dir, datasets["chat"], w / "out", {"type": "full"}, "3",
                    learningRate=2e-3, microBatchSize=2, gradientCheckpointing=True,
                    generationEval={"samples": 4, "maxNewTokens": 6})  # generate with synced ZeRO-3 ranks
    return spec, run_trainer(w, spec)


@pytest.fixture(scope="module")
def lora_z3(tiny_model_dir, datasets, tmp_path_factory):
    """LoRA under ZeRO-3, export both, with the evaluation stage generating (base view + tuned, synced ranks).

    The rank-0 merge once built the base inside zero.Init (a broadcast only rank 0 entered) while rank 1 sat
    in export's barrier: phase Exporting forever. The timeout turns such a hang into a failure."""
    w = tmp_path_factory.mktemp("lora_z3")
    spec = job_spec(tiny_model_dir, datasets["instruction"], w / "out", {"type": "lora", "lora": {"r": 8}}, "3",
                    learningRate=3e-3, generationEval={"samples": 4, "maxNewTokens": 4})
    spec["output"]["export"] = "both"
    return spec, run_trainer(w, spec, timeout=240)


@pytest.fixture(scope="module")
def prompt_z3(tiny_model_dir, datasets, tmp_path_factory):
    w = tmp_path_factory.mktemp("prompt_z3")
    spec = job_spec(tiny_model_dir, datasets["instruction"], w / "out",
                    {"type": "prompt-tuning", "promptTuning": {"numVirtualTokens": 8}}, "3", learningRate=3e-2)
    return spec, run_trainer(w, spec)


@pytest.fixture(scope="module")
def qlora_z2(tiny_model_dir, datasets, tmp_path_factory):
    w = tmp_path_factory.mktemp("qlora_z2")
    spec = job_spec(tiny_model_dir, datasets["instruction"], w / "out", {"type": "qlora", "lora": {"r": 8}}, "2",
                    learningRate=3e-3)
    return spec, run_trainer(w, spec)


# -------------------------------------------------------------------- tests
def test_lora_zero2(lora_z2, tiny_model_dir):
    spec, run = lora_z2
    s = check_run(run, spec, tiny_model_dir, ("adapter", "merged"))
    assert s["zeroStage"] == 2 and s["packing"] is True
    assert s["data"]["train"]["packed_rows"] < s["data"]["train"]["samples"]
    assert 0.0 <= s["exactMatch"] <= 1.0  # generation accuracy ran (the value itself is noise after 8 steps)


def test_full_zero3(full_z3, tiny_model_dir):
    spec, run = full_z3
    s = check_run(run, spec, tiny_model_dir, ("merged",))
    assert s["zeroStage"] == 3 and s["format"] == "chat"
    assert 0.0 <= s["exactMatch"] <= 1.0
    # ZeRO-3 export gathered real weights, not empty partitions
    assert (run.output / "final" / "merged" / "model.safetensors").stat().st_size > 400_000


def test_lora_zero3_exports_adapter_and_merged(lora_z3, tiny_model_dir):
    spec, run = lora_z3
    s = check_run(run, spec, tiny_model_dir, ("adapter", "merged"))
    assert s["zeroStage"] == 3
    # the merge reloads the base whole: real weights, not empty ZeRO-3 partitions
    assert (run.output / "final" / "merged" / "model.safetensors").stat().st_size > 400_000


def test_prompt_tuning_zero3(prompt_z3, tiny_model_dir):
    spec, run = prompt_z3
    s = check_run(run, spec, tiny_model_dir, ("adapter",))
    assert s["zeroStage"] == 3 and s["packing"] is False
    assert s["model"]["n_trainable"] == 8 * 64  # 8 virtual tokens x hidden 64


def test_qlora_wiring(qlora_z2, tiny_model_dir):
    spec, run = qlora_z2
    s = check_run(run, spec, tiny_model_dir, ("adapter",))
    assert s["model"]["quantized_modules"] == 2 * 7  # every linear layer of the 2 blocks is NF4 (lm_head stays)


def test_progress_records_have_exactly_the_status_fields(lora_z2):
    from kubetune_trainer.progress import PROGRESS_KEYS

    _, run = lora_z2
    progress = [r for r in run.records if "event" not in r]
    events = [r for r in run.records if "event" in r]
    assert progress and all(set(r) == set(PROGRESS_KEYS) for r in progress)
    last = [r for r in progress if r["loss"] is not None][-1]
    assert last["step"] == last["totalSteps"] == 8 and last["percent"] == 100.0
    assert last["tokensPerSecond"] > 0 and last["etaSeconds"] == 0
    phases = [e["phase"] for e in events if e["event"] == "phase"]
    assert phases == ["Initializing", "Running", "Exporting"]
    exported = [e for e in events if e["event"] == "exported"][-1]
    assert exported["adapterUri"].endswith("final/adapter") and exported["mergedUri"].endswith("final/merged")
    assert exported["metrics"]["evalLoss"] == pytest.approx(run.summary["evalLoss"])


def test_the_report_to_the_operator_carries_the_memory_plan(lora_z2):
    """The settings the run used and the plan's numbers go into rank 0's report (status.plan), as in summary.json."""
    from kubetune_trainer.k8s_status import report_fields_for_event

    _, run = lora_z2
    s = run.summary
    (event,) = [r for r in run.records if r.get("event") == "plan"]
    plan = report_fields_for_event(event)["plan"]
    assert plan == {"zeroStage": s["zeroStage"], "offload": s["offload"], "gradientCheckpointing": s["gradientCheckpointing"],
                    "microBatchSize": s["microBatchSize"], "estimatedBytes": s["memoryPlan"]["estimatedBytes"],
                    "deviceBytes": s["memoryPlan"]["deviceBytes"], "device": "cpu", "fits": True}
    assert 0 < plan["estimatedBytes"] < plan["deviceBytes"]


def test_tokens_seen_counts_only_real_tokens(lora_z2):
    """num_input_tokens_seen counts non-padding tokens: exactly the packed training tokens consumed."""
    _, run = lora_z2
    s = run.summary
    per_epoch = s["data"]["train"]["tokens"]
    rows = s["data"]["train"]["packed_rows"]
    rows_seen = s["steps"] * s["globalBatchSize"]
    full_epochs, rest = divmod(rows_seen, rows)
    assert full_epochs >= 1  # the tiny set is seen more than once
    assert per_epoch * full_epochs < s["tokensSeen"] <= per_epoch * (full_epochs + 1)


# ------------------------------------------------------- two torchrun "nodes"
def test_two_nodes_train_one_model(tiny_model_dir, datasets, tmp_path):
    """Two separate torchrun invocations (static rendezvous on 127.0.0.1, node rank 0 and 1), as two pods."""
    import subprocess
    import time

    spec = job_spec(tiny_model_dir, datasets["instruction"], tmp_path / "out", {"type": "lora", "lora": {"r": 8}}, "2",
                    learningRate=3e-3)
    spec["distributed"].update(nodes=2, processesPerNode=1)
    config = write_job(tmp_path / "job.yaml", spec)
    port = free_port()
    procs = []
    t0 = time.monotonic()
    for node in (0, 1):
        extra = ("--nnodes=2", f"--node-rank={node}", "--master-addr=127.0.0.1")
        cmd = torchrun_cmd(config, nproc=1, extra=extra)
        cmd[cmd.index(next(a for a in cmd if a.startswith("--master-port")))] = f"--master-port={port}"
        env = trainer_env(tmp_path / f"scratch{node}", tmp_path / "progress.jsonl" if node == 0 else None)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    print(f"two-node run: {time.monotonic() - t0:.1f}s")
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    s = json.loads((tmp_path / "out" / "final" / "summary.json").read_text())
    assert (s["worldSize"], s["nodes"], s["gradientAccumulation"]) == (2, 2, 1)
    assert s["evalLoss"] < s["initialEvalLoss"]
    assert abs(reload_eval_loss(spec, tiny_model_dir, "adapter") - s["evalLoss"]) < RELOAD_TOL
