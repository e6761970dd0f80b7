"""model.task: which tasks a model's config.json allows (kubetune_api.tasks), and `kubetune validate`
refusing an explicit task a local model cannot do, naming spec.model.task."""
from __future__ import annotations

import json

import pytest
import yaml
from api_manifests import base

from kubetune_api import tasks
from kubetune_api.spec import load_job
from kubetune_operator.cli import main as kubetune

# config.json excerpts of real models (model_type, architectures, is_encoder_decoder as their hubs ship them)
CONFIGS = {
    "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
    "gpt2": {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
    "all-MiniLM-L6-v2": {"model_type": "bert", "architectures": ["BertModel"]},
    "roberta-base": {"model_type": "roberta", "architectures": ["RobertaForMaskedLM"]},
    "deberta-v3": {"model_type": "deberta-v2"},
    "bert-sentiment": {"model_type": "bert", "architectures": ["BertForSequenceClassification"]},
    "t5-small": {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "is_encoder_decoder": True},
    "bart-base": {"model_type": "bart", "architectures": ["BartModel"], "is_encoder_decoder": True},
    "llama-classifier": {"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]},
    "pegasus-large": {"model_type": "pegasus", "architectures": ["PegasusForConditionalGeneration"],
                      "is_encoder_decoder": True},
}


@pytest.mark.parametrize(("name", "want"), [
    ("llama", ("causal-lm", "sequence-classification")),
    ("gpt2", ("causal-lm", "sequence-classification")),
    ("all-MiniLM-L6-v2", ("sequence-classification",)),
    ("roberta-base", ("sequence-classification",)),
    ("deberta-v3", ("sequence-classification",)),
    ("bert-sentiment", ("sequence-classification",)),
    ("t5-small", ("seq2seq", "sequence-classification")),
    ("bart-base", ("seq2seq", "sequence-classification")),
    ("llama-classifier", ("sequence-classification",)),
    ("pegasus-large", ("seq2seq",)),
])
def test_fitting_tasks_auto_picks_the_first(name, want):
    assert tasks.fitting_tasks(CONFIGS[name]) == want


def test_seq2seq_only_types_are_the_encoder_decoders_transformers_has_no_classifier_for():
    """SEQ2SEQ_ONLY_TYPES against transformers' own auto mappings: each has a seq2seq class and no
    sequence-classification class; mT5 and BART (in both) are not in it."""
    from transformers.models.auto import modeling_auto as auto

    seq2seq = set(auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
    classifiers = set(auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
    assert tasks.SEQ2SEQ_ONLY_TYPES <= seq2seq - classifiers
    assert {"t5", "mt5", "bart"} <= seq2seq & classifiers
    why = tasks.task_problem("sequence-classification", CONFIGS["pegasus-large"])
    assert why is not None and "set model.task to seq2seq" in why


def test_task_problem_names_what_fits():
    why = tasks.task_problem("seq2seq", CONFIGS["llama"])
    assert why is not None and "llama: LlamaForCausalLM" in why and "set model.task to causal-lm" in why
    assert tasks.task_problem("causal-lm", CONFIGS["all-MiniLM-L6-v2"]) is not None
    assert tasks.task_problem("auto", CONFIGS["t5-small"]) is None
    assert tasks.task_problem("sequence-classification", CONFIGS["llama"]) is None


def test_non_causal_tasks_default_packing_off():
    doc = base()
    doc["spec"]["model"]["task"] = "seq2seq"
    doc["spec"]["dataset"].pop("packing", None)
    assert load_job(doc).spec.dataset.packing is False
    doc["spec"]["model"]["task"] = "causal-lm"
    assert load_job(doc).spec.dataset.packing is True


@pytest.mark.parametrize(("model", "task", "ok"), [
    ("llama", "seq2seq", False),
    ("all-MiniLM-L6-v2", "causal-lm", False),
    ("t5-small", "causal-lm", False),
    ("all-MiniLM-L6-v2", "sequence-classification", True),
    ("t5-small", "seq2seq", True),
])
def test_validate_reads_a_local_models_config(model, task, ok, tmp_path, capsys):
    folder = tmp_path / model
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIGS[model]))
    doc = base()
    doc["spec"]["model"] = {"source": str(folder), "task": task}
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(doc))
    rc = kubetune(["validate", str(f)])
    out = capsys.readouterr().out
    if ok:
        assert rc == 0, out
    else:
        assert rc == 1 and f"{f}: spec.model.task: {task} does not fit the model" in out, out
