"""spec.env / spec.envFrom as Kubernetes has them, and storage.endpoint without
credentials: the forms people write are accepted by every layer (schema, CEL,
pydantic) and passed to the pods unchanged; the invalid forms are in
test_api_invalid.py, each refused by the CRD and by pydantic alike."""
from __future__ import annotations

import copy

import pytest
from api_manifests import base

from kubetune_api.validation import cel_problems, crd_schema, model_problems, prepare, schema_problems, validate_manifest

VALID = {
    "literal": {"env": [{"name": "NCCL_DEBUG", "value": "INFO"}]},
    "empty-literal-with-value-from": {"env": [{"name": "K", "value": "", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
    "secret-key": {"env": [{"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}}]},
    "optional-secret-key": {"env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token", "optional": True}}}]},
    "configmap-key": {"env": [{"name": "NCCL_IB_HCA", "valueFrom": {"configMapKeyRef": {"name": "fabric", "key": "ib.hca"}}}]},
    "field-ref-label": {"env": [{"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}}]},
    "field-ref-node": {"env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]},
    "env-from-secret": {"envFrom": [{"secretRef": {"name": "mlflow-credentials"}, "prefix": "MLFLOW_"}]},
    "env-from-configmap": {"envFrom": [{"configMapRef": {"name": "nccl", "optional": True}}]},
    "endpoint-with-port-and-path": {"storage": {"endpoint": "https://minio.example.com:9000/s3", "secretRef": {"name": "s3"}}},
    "endpoint-at-in-path": {"storage": {"endpoint": "https://gateway.example.com/tenants/a@b", "secretRef": {"name": "s3"}}},
}


def _doc(spec_patch: dict) -> dict:
    doc = base()
    for key, value in spec_patch.items():
        doc["spec"][key] = {**doc["spec"].get(key, {}), **value} if isinstance(value, dict) else copy.deepcopy(value)
    return doc


@pytest.mark.parametrize("name", list(VALID))
def test_valid_forms_pass_every_layer(name):
    doc = _doc(VALID[name])
    assert validate_manifest(doc) == []
    prepared = prepare(crd_schema(), doc)
    assert schema_problems(prepared) == [] and cel_problems(prepared, schema_errors=[]) == []
    assert model_problems(prepare(crd_schema(), doc, defaults=False)) == []


@pytest.mark.parametrize("name", ["secret-key", "configmap-key", "field-ref-label", "literal", "env-from-secret"])
def test_env_reaches_the_pod_as_written(name):
    from kubetune_operator import builders

    doc = _doc(VALID[name])
    doc["metadata"]["uid"] = "u-1"
    (job,) = [o for o in builders.build_objects(doc) if o["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    for var in VALID[name].get("env", []):
        assert env[var["name"]] == var
    assert container.get("envFrom", []) == VALID[name].get("envFrom", [])
    # The ConfigMap holds the reference, never a value looked up from it.
    (cm,) = [o for o in builders.build_objects(doc) if o["kind"] == "ConfigMap"]
    for var in VALID[name].get("env", []):
        if "valueFrom" in var:
            assert '"valueFrom"' in cm["data"][builders.CONFIG_KEY]


def test_pydantic_and_cel_say_the_same_about_credentials_in_the_endpoint():
    doc = _doc({"storage": {"endpoint": "https://AKIAEXAMPLE:s3cr3t@minio.example.com"}})
    prepared = prepare(crd_schema(), doc)
    cel = [p for p in cel_problems(prepared, schema_errors=schema_problems(prepared)) if p.path == "spec.storage.endpoint"]
    model = [p for p in model_problems(prepare(crd_schema(), doc, defaults=False)) if p.path == "spec.storage.endpoint"]
    assert cel and model
    assert "must not carry credentials" in cel[0].message and "must not carry credentials" in model[0].message
    # The message never repeats the secret it refuses.
    for p in cel + model:
        assert "s3cr3t" not in p.message
