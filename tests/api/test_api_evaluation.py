"""spec.evaluation: defaults, the older training.generationEval spelling, decoding settings, both validators."""
from __future__ import annotations

from api_manifests import base

from kubetune_api.spec import load_job
from kubetune_api.validation import validate_manifest


def test_defaults_compare_base_and_tuned_without_generation():
    ev = load_job(base()).spec.evaluation
    assert (ev.samples, ev.baseline, ev.report, ev.test) == (0, True, True, None)
    assert ev.decoding.strategy == "greedy" and ev.decoding.generate_kwargs() == {"do_sample": False, "num_beams": 1}


def test_generation_eval_is_the_older_spelling_of_evaluation_samples():
    m = base()
    m["spec"]["training"]["generationEval"] = {"samples": 12, "maxNewTokens": 20}
    ev = load_job(m).spec.evaluation
    assert (ev.samples, ev.decoding.max_new_tokens) == (12, 20)
    m["spec"]["evaluation"] = {"samples": 3}  # the new field wins
    assert load_job(m).spec.evaluation.samples == 3


def test_a_full_evaluation_block_passes_schema_cel_and_pydantic():
    m = base()
    m["spec"]["dataset"]["evalFraction"] = 0
    m["spec"]["evaluation"] = {"test": "s3://data/test.jsonl", "samples": 64, "baseline": False, "reportRows": 3,
                               "decoding": {"strategy": "sample", "temperature": 0.7, "topP": 0.9, "maxNewTokens": 128}}
    assert validate_manifest(m) == []
    d = load_job(m).spec.evaluation.decoding
    assert d.generate_kwargs() == {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "num_beams": 1}
    m["spec"]["evaluation"]["decoding"] = {"strategy": "beam"}
    assert load_job(m).spec.evaluation.decoding.generate_kwargs() == {"do_sample": False, "num_beams": 4}
