"""Full fine-tuning: the base model's results come from step 0 and survive a restart (in-process, tiny model).

Attempt 1 evaluates the base at train begin (global step 0) and keeps the result in
<output>/eval-base.json; attempt 2 resumes at a later step (no base evaluation then) and
its final evaluation still shows the step-0 base next to the tuned model.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import torch
from trainer_helpers import write_json_chat

from kubetune_api.spec import load_job
from kubetune_trainer import data, evaluation, tiny
from kubetune_trainer.storage import LocalStorage
from support.manifests import wrap


def test_full_fine_tuning_base_is_kept_for_a_resumed_attempt(tokenizer, tmp_path):
    train, eval_ = write_json_chat(tmp_path / "train.jsonl", 8, 0), write_json_chat(tmp_path / "eval.jsonl", 4, 1)
    spec = load_job(wrap({
        "model": {"source": str(tmp_path / "model")}, "dataset": {"train": train, "eval": eval_, "maxSeqLength": 128},
        "method": {"type": "full"}, "training": {"maxSteps": 2, "globalBatchSize": 1},
        "evaluation": {"samples": 2, "decoding": {"maxNewTokens": 6}},
        "distributed": {"gpusPerNode": 0}, "output": {"uri": str(tmp_path / "out")},
    })).spec
    prepared = data.prepare(spec.dataset, tokenizer, train, eval_, 0, False)
    model = tiny.build_model(tokenizer)

    def attempt(step: int) -> evaluation.FinalEvaluation:
        fe = evaluation.FinalEvaluation(spec, prepared, tokenizer, str(tmp_path / "scratch"), 0, LocalStorage())
        [cb] = fe.callbacks(synced=False, device="cpu")
        cb.on_train_begin(None, SimpleNamespace(global_step=step), None, model=model)
        return fe

    first = attempt(0)
    base = first.base[evaluation.BASE]["validation"]["metrics"]
    assert json.loads((tmp_path / "out" / evaluation.BASE_RECORD).read_text())["validation"]["metrics"] == base
    with torch.no_grad():  # "training" between the attempts
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    second = attempt(5)
    assert evaluation.BASE not in second.base  # a resumed attempt does not evaluate the changed model as the base
    got = second.run(SimpleNamespace(model=model), tmp_path / "final")
    assert got["sets"]["validation"]["base"] == base
    assert got["sets"]["validation"]["tuned"]["loss"] != base["loss"]
    rows = [json.loads(l) for l in (tmp_path / "final" / "eval" / "validation.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("base" in r and "tuned" in r for r in rows) and "prediction" in rows[0]["base"]
