"""FineTuneSweep: the CRD (schema + CEL) and the pydantic model reject the same manifests, at the same field;
`kubetune validate` handles sweeps; what only code can check (a choice that breaks the template) is reported."""
from __future__ import annotations

import copy

import pytest
import yaml
from api_manifests import REPO, base
from pydantic import ValidationError

from kubetune_api import sweep as sweep_api
from kubetune_api.contract import validation_messages
from kubetune_api.validation import cel_problems, crd_schema, prepare, schema_problems, validate_file, validate_manifest

KIND = sweep_api.KIND


def sweep(**spec):
    template = base()["spec"]
    doc = {
        "apiVersion": "kubetune.io/v1alpha1", "kind": KIND, "metadata": {"name": "lr-sweep"},
        "spec": {
            "template": template, "algorithm": "random", "maxTrials": 4, "parallelism": 2,
            "parameters": [
                {"path": "training.learningRate", "type": "float", "min": 1e-5, "max": 1e-3, "log": True},
                {"path": "method.lora.r", "type": "categorical", "values": [4, 8, 16]},
            ],
        },
    }
    doc["spec"].update(spec)
    return doc


def admission_problems(doc):
    prepared = prepare(crd_schema(KIND), doc)
    structural = schema_problems(prepared, KIND)
    return structural + cel_problems(prepared, schema_errors=structural, kind=KIND)


def model_errors(doc):
    try:
        sweep_api.load_sweep(doc)
    except ValidationError as e:
        return validation_messages(e)
    return []


def param(**p):
    return {"parameters": [{"path": "training.learningRate", "type": "float", "min": 1e-5, "max": 1e-3, **p}]}


CASES = [
    # (id, spec overrides, field path both layers must name)
    ("unknown-path", {"parameters": [{"path": "training.learningRat", "type": "float", "min": 0.1, "max": 1}]},
     "spec.parameters[0].path"),
    ("output-uri-not-sweepable", {"parameters": [{"path": "output.uri", "type": "categorical", "values": ["a"]}]},
     "spec.parameters[0].path"),
    ("categorical-without-values", {"parameters": [{"path": "method.lora.r", "type": "categorical"}]},
     "spec.parameters[0].values"),
    ("values-on-float", param(values=[1e-4]), "spec.parameters[0].values"),
    ("min-not-below-max", param(min=1e-3, max=1e-3), "spec.parameters[0].min"),
    ("float-without-max", {"parameters": [{"path": "training.learningRate", "type": "float", "min": 1e-5}]},
     "spec.parameters[0].min"),
    ("log-with-zero-min", param(min=0.0, log=True), "spec.parameters[0].log"),
    ("log-with-step", param(log=True, step=1e-5), "spec.parameters[0].log"),
    ("min-on-categorical", {"parameters": [{"path": "method.lora.r", "type": "categorical", "values": [4], "min": 1}]},
     "spec.parameters[0].type"),
    ("value-not-scalar", {"parameters": [{"path": "method.lora.r", "type": "categorical", "values": [{"r": 4}]}]},
     "spec.parameters[0].values"),
    ("random-without-max-trials", {"maxTrials": None}, "spec.maxTrials"),
    ("grid-float-without-step", {"algorithm": "grid", "maxTrials": None, "parallelism": 1}, "spec.parameters"),
    ("duplicate-path", {"parameters": [{"path": "method.lora.r", "type": "categorical", "values": [4]}] * 2},
     "spec.parameters"),
    ("parallelism-above-max-trials", {"maxTrials": 2, "parallelism": 3}, "spec.parallelism"),
    ("zero-parallelism", {"parallelism": 0}, "spec.parallelism"),
    ("too-many-trials", {"maxTrials": 1001}, "spec.maxTrials"),
    ("bad-direction", {"objective": {"direction": "up"}}, "spec.objective.direction"),
    ("bad-early-stopping", {"earlyStopping": {"type": "hyperband"}}, "spec.earlyStopping.type"),
    ("invalid-template", {"template": {**base()["spec"], "training": {"globalBatchSize": 16}}},
     "spec.template.training"),
]


@pytest.mark.parametrize(("overrides", "path"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_admission_and_model_reject_the_same_manifest(overrides, path):
    doc = sweep()
    for key, value in overrides.items():
        if value is None:
            doc["spec"].pop(key)
        else:
            doc["spec"][key] = copy.deepcopy(value)
    admission = admission_problems(doc)
    assert any(p.path == path for p in admission), admission
    model = model_errors(doc)
    assert any(m.startswith(path) for m in model), model
    assert any(p.path == path for p in validate_manifest(doc))


def test_name_too_long_for_trial_names_is_rejected_by_both():
    doc = sweep()
    doc["metadata"]["name"] = "s" * (sweep_api.MAX_SWEEP_NAME_LENGTH + 1)
    assert [p.path for p in admission_problems(doc)] == ["metadata.name"]
    assert model_errors(doc)[0].startswith("metadata.name: ")
    doc["metadata"]["name"] = "s" * sweep_api.MAX_SWEEP_NAME_LENGTH
    assert admission_problems(doc) == [] and model_errors(doc) == []


def test_valid_sweep_passes_every_layer():
    doc = sweep(objective={"metric": "exactMatch", "direction": "maximize"},
                earlyStopping={"type": "successiveHalving", "minSteps": 10, "reductionFactor": 2})
    assert admission_problems(doc) == []
    assert model_errors(doc) == []
    assert validate_manifest(doc) == []
    parsed = sweep_api.load_sweep(doc).spec
    assert parsed.early_stopping.type == "successiveHalving" and parsed.max_failed_trials == 1


def test_choice_that_breaks_the_template_is_named():
    # globalBatchSize 16 with microBatchSize 2: a choice of 3 cannot be divided.
    doc = sweep(parameters=[{"path": "training.globalBatchSize", "type": "categorical", "values": [16, 3]}])
    problems = validate_manifest(doc)
    assert [p.path for p in problems] == ["spec.parameters[0].values[1]"]
    assert "training.globalBatchSize=3" in problems[0].message and "divisible" in problems[0].message


def test_sweepable_paths_come_from_the_job_model():
    paths = sweep_api.sweepable_paths()
    assert {"training.learningRate", "method.lora.r", "model.source", "method.type", "training.epochs"} <= set(paths)
    assert "output.uri" not in paths and "suspend" not in paths and "env" not in paths
    enum = crd_schema(KIND)["properties"]["spec"]["properties"]["parameters"]["items"]["properties"]["path"]["enum"]
    assert enum == list(paths)


def test_trial_spec_sets_parameters_and_its_own_output():
    template = base()["spec"]
    spec = sweep_api.trial_spec(template, {"training.learningRate": 3e-4, "method.lora.r": 32}, "s-t3")
    assert spec["training"]["learningRate"] == 3e-4 and spec["method"]["lora"]["r"] == 32
    assert spec["output"]["uri"] == "s3://out-bucket/runs/base/trials/s-t3"
    assert template["method"]["lora"]["r"] == 8 and "learningRate" not in template["training"]  # not mutated


def test_sweep_crd_printer_columns_and_short_name():
    crd = yaml.safe_load((REPO / "crds/finetunesweep.yaml").read_text())
    assert crd["spec"]["names"]["shortNames"] == ["fts"]
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Trials", "Best", "Objective", "Age"]


def test_template_is_immutable_but_parallelism_may_change():
    old = sweep()
    new = copy.deepcopy(old)
    new["spec"]["parallelism"] = 1
    schema = crd_schema(KIND)
    assert cel_problems(prepare(schema, new), prepare(schema, old), kind=KIND) == []
    new["spec"]["template"]["training"]["epochs"] = 2
    problems = cel_problems(prepare(schema, new), prepare(schema, old), kind=KIND)
    assert [p.path for p in problems] == ["spec.template"]
    assert "immutable" in problems[0].message


def test_kubetune_validate_reads_sweeps(tmp_path):
    good = tmp_path / "sweep.yaml"
    good.write_text(yaml.safe_dump(sweep()))
    assert validate_file(str(good)) == (0, [])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(sweep(parallelism=0)))
    code, lines = validate_file(str(bad))
    assert code == 1 and lines and all(line.startswith(f"{bad}: spec.parallelism") for line in lines)
