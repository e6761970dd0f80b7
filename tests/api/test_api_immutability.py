"""Transition rules: the spec is immutable once created, except suspend and runPolicy.

The rules are evaluated with cel-python on (oldSelf, self) pairs, after the
API server's defaulting of both objects, as an update would be.
"""
from __future__ import annotations

import copy

import pytest
from api_manifests import base

from kubetune_api import spec as api
from kubetune_api.validation import crd_schema, validate_manifest, validate_update

# For every immutable spec field: a value that differs from the base manifest (and is valid).
CHANGES = {
    "model": {"source": "hf://org/other-model"},
    "dataset": {"train": "s3://data-bucket/train.jsonl", "maxSeqLength": 1024},
    "method": {"type": "lora", "lora": {"r": 16}},
    "training": {"epochs": 2, "globalBatchSize": 16, "microBatchSize": 2},
    "distributed": {"nodes": 2, "gpusPerNode": 1},
    "evaluation": {"samples": 8, "decoding": {"maxNewTokens": 32}},
    "output": {"uri": "s3://out-bucket/runs/base", "keepLast": 5},
    "storage": {"region": "eu-west-1"},
    "image": "registry.example.com/kubetune-trainer:v2",
    "imagePullPolicy": "Always",
    "imagePullSecrets": ["regcred"],
    "resources": {"requests": {"cpu": "8"}},
    "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
    "envFrom": [{"secretRef": {"name": "wandb"}}],
    "nodeSelector": {"pool": "gpu"},
    "tolerations": [{"key": "gpu", "operator": "Exists"}],
    "affinity": {"nodeAffinity": {}},
    "podAnnotations": {"sidecar.istio.io/inject": "false"},
    "podLabels": {"team": "a"},
    "serviceAccountName": "trainer-irsa",
    "priorityClassName": "high",
    "schedulerName": "volcano",
    "queueName": "team-a",
}


def _immutable_fields() -> list[str]:
    return [f for f in crd_schema()["properties"]["spec"]["properties"] if f not in api.MUTABLE_SPEC_FIELDS]


def test_every_immutable_field_has_a_change_case():
    missing = set(_immutable_fields()) - set(CHANGES)
    assert not missing, f"add a changed value for spec.{sorted(missing)} to CHANGES in {__file__}"


@pytest.mark.parametrize("field", _immutable_fields())
def test_changing_an_immutable_field_is_rejected(field):
    old, new = base(), base()
    new["spec"][field] = copy.deepcopy(CHANGES[field])
    assert validate_manifest(new) == [], "the changed manifest itself must be valid"
    problems = validate_update(old, new)
    assert [p.path for p in problems] == [f"spec.{field}"], problems
    assert "immutable once created; create a new FineTuneJob" in problems[0].message


@pytest.mark.parametrize("field", [f for f in CHANGES if f not in ("model", "dataset", "training", "output")])
def test_removing_a_field_is_a_change_too(field):
    old, new = base(), base()
    old["spec"][field] = copy.deepcopy(CHANGES[field])
    new["spec"].pop(field, None)
    problems = validate_update(old, new)
    assert [p.path for p in problems] == [f"spec.{field}"], problems


@pytest.mark.parametrize(
    "change",
    [
        {"suspend": True},
        {"runPolicy": {"maxRestarts": 10, "backoffSeconds": 5}},
        {"runPolicy": {"activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 60}},
        {"suspend": True, "runPolicy": {"terminationGraceSeconds": 600}},
    ],
    ids=["suspend", "restarts", "deadlines", "both"],
)
def test_suspend_and_run_policy_may_change(change):
    old, new = base(), base()
    new["spec"].update(copy.deepcopy(change))
    assert validate_update(old, new) == []
    assert validate_update(new, old) == []


def test_unchanged_and_explicit_defaults_are_not_changes():
    old = base()
    assert validate_update(old, base()) == []
    new = base()
    # writing out what the API server defaults is no change (GitOps tools re-apply such manifests)
    new["spec"]["method"]["lora"].update({"alpha": None, "dropout": 0.05, "targetModules": ["all-linear"]})
    new["spec"]["distributed"]["zeroStage"] = "auto"
    new["spec"]["resources"] = {"shmSize": "16Gi"}
    assert validate_update(old, new) == []


def test_zero_stage_int_to_string_counts_as_a_change():
    # CEL equality of 3 and "3" is false (different types), as in the API server
    old, new = base(), base()
    old["spec"]["distributed"]["zeroStage"] = 3
    new["spec"]["distributed"]["zeroStage"] = "3"
    assert [p.path for p in validate_update(old, new)] == ["spec.distributed"]


def test_transition_rules_do_not_run_on_create():
    job = base()
    job["spec"]["image"] = "x/y:z"
    assert validate_manifest(job) == []


def test_affinity_contents_are_invisible_to_cel():
    """A known limit, documented in docs/api.md: preserved unknown fields are not visible to CEL,
    so changing inside affinity is not caught at admission (adding or removing it is)."""
    old, new = base(), base()
    old["spec"]["affinity"] = {"nodeAffinity": {"a": 1}}
    new["spec"]["affinity"] = {"nodeAffinity": {"a": 2}}
    assert validate_update(old, new) == []
