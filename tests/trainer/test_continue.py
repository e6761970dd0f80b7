"""Continual learning (issue 15): a job that keeps training an earlier job's adapter, or starts
from its merged model, run through `kubetune run` with the real trainer (CPU, 2 processes, ZeRO-2).

- job A trains a LoRA adapter on task data and exports adapter + merged model;
- job B names A in ``spec.model.from``: `kubetune run` resolves it from A's run folder
  to A's adapter on A's base model; B starts at A's final eval loss (same eval rows,
  same weights: only float noise) and improves further on new rows of the task; its
  summary names A and the adapter it continued;
- A's merged model as ``model.source`` goes through the trainer's fetch and model stages and
  starts at A's final eval loss too (in-process: no third torchrun).

The cheap refusals (adapter of the wrong kind, adapter settings the spec contradicts, a
folder that is not an adapter, model.from naming a run that is missing or unfinished)
are checked in-process, before any torch process starts.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from kubetune_api.contract import PermanentError
from kubetune_api.spec import load_job
from kubetune_operator import localrun
from kubetune_trainer import fetch, model, tiny
from support.manifests import wrap

# Same eval rows, same weights, same batch composition: only the order of float sums can differ.
START_TOL = 1e-4


def job_doc(name: str, model_section: dict, train: Path, eval_: Path, out: Path, procs: int = 2) -> dict:
    return wrap({
        "model": model_section,
        "dataset": {"train": str(train), "eval": str(eval_), "maxSeqLength": 128},
        "method": {"type": "lora", "lora": {"r": 8}},
        "training": {"maxSteps": 8, "globalBatchSize": 8, "microBatchSize": 4, "learningRate": 3e-3,
                     "gradientCheckpointing": False},
        "distributed": {"gpusPerNode": 0, "processesPerNode": procs, "zeroStage": "2"},
        "output": {"uri": str(out), "export": "both"},
    }, name=name)


def run_local(doc: dict, runs: Path, scratch: Path) -> tuple[int, str]:
    path = runs.parent / f"{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = io.StringIO()
    rc = localrun.run(path, run_dir=runs / doc["metadata"]["name"], scratch=scratch, stream=out, cpu_count=2)
    return rc, out.getvalue()


def summary(out: Path) -> dict:
    return json.loads((out / "final" / "summary.json").read_text())


@pytest.fixture(scope="module")
def chain(tiny_model_dir, tmp_path_factory):
    w = tmp_path_factory.mktemp("continue")
    runs = w / "runs"
    runs.mkdir()
    eval_rows = tiny.write_instruction_dataset(w / "eval.jsonl", n=32, seed=7)
    first = tiny.write_instruction_dataset(w / "train-a.jsonl", n=96, seed=1)
    new = tiny.write_instruction_dataset(w / "train-b.jsonl", n=96, seed=2)  # new rows of the same task
    # A on one process, B on two: the adapter continues under another world size too.
    rc_a, log_a = run_local(job_doc("job-a", {"source": str(tiny_model_dir)}, first, eval_rows, w / "out-a", procs=1),
                            runs, w / "scratch")
    assert rc_a == 0, log_a + (runs / "job-a" / "node-0.log").read_text()[-3000:]
    rc_b, log_b = run_local(job_doc("job-b", {"from": {"fineTuneJob": "job-a"}}, new, eval_rows, w / "out-b"), runs, w / "scratch")
    assert rc_b == 0, log_b + (runs / "job-b" / "node-0.log").read_text()[-3000:]
    return {"w": w, "runs": runs, "a": summary(w / "out-a"), "b": summary(w / "out-b"), "model": tiny_model_dir,
            "data": (new, eval_rows)}


@pytest.mark.distributed
@pytest.mark.slow
def test_job_b_continues_job_a_adapter_from_its_final_eval_loss_and_improves(chain):
    a, b, w = chain["a"], chain["b"], chain["w"]
    print(f"A: eval loss {a['initialEvalLoss']:.6f} -> {a['evalLoss']:.6f}; "
          f"B (continues A's adapter): {b['initialEvalLoss']:.6f} -> {b['evalLoss']:.6f} "
          f"(|B start - A end| {abs(b['initialEvalLoss'] - a['evalLoss']):.1e})")
    assert a["evalLoss"] < a["initialEvalLoss"]
    assert abs(b["initialEvalLoss"] - a["evalLoss"]) < START_TOL, (b["initialEvalLoss"], a["evalLoss"])
    assert b["evalLoss"] < b["initialEvalLoss"], (b["initialEvalLoss"], b["evalLoss"])
    # B's evaluation compares with the model before B's first step, A's adapter, not the bare base model
    ev_a, ev_b = a["evaluation"]["sets"]["validation"], b["evaluation"]["sets"]["validation"]
    assert abs(ev_b["base"]["loss"] - ev_a["tuned"]["loss"]) < START_TOL, (ev_b["base"], ev_a["tuned"])
    assert ev_b["tuned"]["loss"] < ev_b["base"]["loss"]
    # B's summary names A and what of A it continued.
    lineage = b["lineage"]
    adapter_a = str(w / "out-a" / "final" / "adapter")
    assert lineage["from"]["fineTuneJob"] == "job-a" and lineage["from"]["use"] == "adapter"
    assert lineage["adapter"] == adapter_a == lineage["from"]["adapterUri"]
    assert lineage["baseModel"] == str(chain["model"]) and lineage["from"]["summaryUri"] == str(w / "out-a" / "final" / "summary.json")
    assert lineage["from"]["step"] == a["steps"]
    assert a["lineage"]["from"] is None and a["lineage"]["adapter"] is None  # A started from the base model
    # The adapter kept its own settings (rank 8 from A) and trained the same number of parameters.
    assert b["model"]["n_trainable"] == a["model"]["n_trainable"]
    result_a = json.loads((chain["runs"] / "job-a" / "result.json").read_text())
    assert result_a["phase"] == "Succeeded" and result_a["output"]["baseModel"] == str(chain["model"])


@pytest.mark.distributed
@pytest.mark.slow
def test_merged_output_of_an_earlier_job_is_a_base_model(chain):
    """A's final/merged as model.source, through the trainer's own stages (fetch, tokenizer, model with a
    new LoRA adapter, whose zero-initialised B leaves the outputs unchanged): A's final eval loss."""
    from kubetune_trainer import data, evaluate

    a, w = chain["a"], chain["w"]
    train, eval_rows = chain["data"]
    merged = w / "out-a" / "final" / "merged"
    spec = load_job(job_doc("job-c", {"source": str(merged)}, train, eval_rows, w / "out-c", procs=1)).spec
    model_dir = fetch.resolve_model(spec, w / "scratch-c")
    assert model_dir == merged
    tok = model.load_tokenizer(str(model_dir), spec)
    net, info = model.load_model(spec, str(model_dir), "fp32", gradient_checkpointing=False)
    prepared = data.prepare(spec.dataset, tok, str(train), str(eval_rows), spec.training.seed, bool(spec.dataset.packing))
    start = evaluate.eval_loss(net, prepared.eval, data.Collator(tok.pad_token_id), batch_size=4, device="cpu")["eval_loss"]
    print(f"C (A's merged model as base, new LoRA): starts at {start:.6f}; A ended at {a['evalLoss']:.6f}")
    assert info.n_trainable == a["model"]["n_trainable"]  # a fresh r=8 adapter on the merged weights
    assert abs(start - a["evalLoss"]) < START_TOL, (start, a["evalLoss"])


# ------------------------------------------------------------- refusals, in-process
def adapter_dir(tmp_path: Path, **config) -> Path:
    d = tmp_path / "adapter"
    d.mkdir(exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
                                                       "target_modules": ["q_proj", "v_proj"], **config}))
    return d


def spec_with(adapter: Path, method: dict):
    return load_job(wrap({
        "model": {"source": "/models/base", "adapter": str(adapter)}, "dataset": {"train": "/d/train.jsonl"},
        "method": method, "training": {"maxSteps": 1}, "output": {"uri": "/tmp/out"},
    }, name="t")).spec


@pytest.mark.parametrize("method, field", [
    ({"type": "prompt-tuning"}, "spec.method.type"),
    ({"type": "ia3"}, "spec.method.type"),
    ({"type": "lora", "lora": {"r": 16}}, "spec.method.lora.r"),
    ({"type": "lora", "lora": {"targetModules": ["q_proj"]}}, "spec.method.lora.targetModules"),
    ({"type": "lora", "lora": {"dropout": 0.2}}, "spec.method.lora.dropout"),
], ids=["prompt-tuning", "ia3", "rank", "target-modules", "dropout"])
def test_adapter_of_another_kind_or_settings_is_refused_naming_the_field(tmp_path, method, field):
    with pytest.raises(PermanentError) as e:
        model.check_adapter(spec_with(adapter_dir(tmp_path), method), str(adapter_dir(tmp_path)))
    assert e.value.reason == "InvalidSpec" and str(e.value).startswith(f"{field}: "), str(e.value)


def test_adapter_that_matches_is_accepted_and_a_folder_without_config_is_not_an_adapter(tmp_path):
    d = adapter_dir(tmp_path)
    for method in ({"type": "lora"}, {"type": "qlora"}, {"type": "lora", "lora": {"r": 8, "targetModules": ["v_proj", "q_proj"]}}):
        assert model.check_adapter(spec_with(d, method), str(d))["r"] == 8
    empty = tmp_path / "not-an-adapter"
    empty.mkdir()
    with pytest.raises(PermanentError, match="holds no adapter_config.json") as e:
        fetch.resolve_adapter(spec_with(empty, {"type": "lora"}), tmp_path / "scratch")
    assert e.value.reason == "AdapterNotFound"


def test_model_from_a_missing_or_unfinished_local_run_fails_at_once(tmp_path, capsys):
    runs = tmp_path / "runs"
    doc = job_doc("later", {"from": {"fineTuneJob": "earlier"}}, tmp_path / "t.jsonl", tmp_path / "e.jsonl", tmp_path / "out")
    runs.mkdir()
    rc, _ = run_local(doc, runs, tmp_path / "scratch")
    err = capsys.readouterr().err
    assert rc == 2 and "FromJobNotFound: spec.model.from.fineTuneJob: FineTuneJob earlier does not exist" in err, err
    assert not (runs / "later" / "node-0.log").exists()  # nothing started

    # A run folder without a result: started, never finished.
    (runs / "earlier").mkdir()
    (runs / "earlier" / "finetunejob.yaml").write_text(yaml.safe_dump(job_doc("earlier", {"source": "/m"}, tmp_path, tmp_path, tmp_path)))
    rc, _ = run_local(doc, runs, tmp_path / "scratch")
    err = capsys.readouterr().err
    assert rc == 2 and "FromJobNotSucceeded" in err and "unfinished" in err, err

    (runs / "earlier" / "result.json").write_text(json.dumps({"phase": "Failed", "reason": "DatasetNotFound", "output": {}}))
    rc, _ = run_local(doc, runs, tmp_path / "scratch")
    err = capsys.readouterr().err
    assert rc == 2 and "FineTuneJob earlier is Failed (DatasetNotFound), not Succeeded" in err, err
