"""Tracker keys from Secrets never leak: a FineTuneJob whose W&B key comes from
a Secret (env valueFrom.secretKeyRef) and whose MLflow credentials come from a
whole Secret (envFrom, prefixed) runs through the real operator and trainer;
then every object the operator and the pods wrote to the API (every version
of every object, every request body), every operator log record, every pod's
log and every file in S3 (summary.json included) are searched for the secret
values. (The tracker itself stays off: wandb is not installed here, and
MLflow 3 refuses the file store; the variables reach the trainer processes
all the same, which is what a tracker reads.) The pods' environments must hold them (so the search is not looking
for something that never got anywhere), and a literal env value must show up
in the ConfigMap (so the search finds what is there) but not in summary.json.
"""
from __future__ import annotations

import base64
import json
import logging
import secrets

import pytest
from e2e_jobs import BUCKET, NAMESPACE, finetunejob

from support.cluster import TEST_AGENT

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]

WANDB_KEY = "wandb-" + secrets.token_hex(20)
MLFLOW_TOKEN = "mlflow-" + secrets.token_hex(20)
LITERAL = "literal-" + secrets.token_hex(8)  # a non-secret env value, expected in the ConfigMap


def _forms(secret: str) -> list[bytes]:
    """The value as text, and as the base64 a Secret's data carries."""
    return [secret.encode(), base64.b64encode(secret.encode())]


def _leaks(blob: bytes, where: str) -> list[str]:
    return [f"{where}: {name}" for name, secret in (("W&B key", WANDB_KEY), ("MLflow token", MLFLOW_TOKEN))
            for form in _forms(secret) if form in blob]


def _secret(name: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NAMESPACE},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_tracker_keys_from_secrets_appear_in_nothing_kubetune_writes(e2e, tmp_path, caplog):
    cluster, executor, s3 = e2e["cluster"], e2e["executor"], e2e["s3"]
    caplog.set_level(logging.DEBUG)
    name = "e2e-secrets"
    cluster.create(_secret("wandb", {"api-key": WANDB_KEY}))
    cluster.create(_secret("mlflow-credentials", {"TRACKING_TOKEN": MLFLOW_TOKEN}))
    job = finetunejob(
        name, e2e["inputs"], s3.endpoint,
        training={"maxSteps": 4, "evalEvery": 2},
        output={"checkpointEvery": 2},
        env=[
            {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}},
            {"name": "MLFLOW_TRACKING_URI", "value": "https://mlflow.example.com"},
            {"name": "TEAM_NOTE", "value": LITERAL},
        ],
        envFrom=[{"secretRef": {"name": "mlflow-credentials"}, "prefix": "MLFLOW_"}],
    )
    cluster.create(job)

    def phase():
        return ((cluster.get("FineTuneJob", NAMESPACE, name) or {}).get("status") or {}).get("phase")

    from support.cluster import wait_for

    pods = lambda: [p for p in executor.pods if p.job_key == (NAMESPACE, f"{name}-a1")]  # noqa: E731
    try:
        wait_for(lambda: phase() in ("Succeeded", "Failed"), timeout=300, interval=0.5, message="the job finishes")
    finally:
        context = "\n\n".join(f"--- {p.name} (exit {p.exit_code}) ---\n{p.log_tail(40, 4000)}" for p in pods())
    assert phase() == "Succeeded", context

    # The pods really had the values (through the kubelet's secretKeyRef/envFrom).
    assert len(pods()) == 2
    for pod in pods():
        assert pod.env["WANDB_API_KEY"] == WANDB_KEY and pod.env["MLFLOW_TRACKING_TOKEN"] == MLFLOW_TOKEN

    leaks: list[str] = []
    # Every version of every object in the API, except the two Secrets themselves.
    seen_literal_in_configmap = False
    for key, obj in list(cluster.emulator.objects.items()):
        for version in obj.history:
            if version is None:
                continue
            raw = version.raw
            if raw.get("kind") == "Secret" or "/secrets" in str(key[0]):
                continue
            blob = json.dumps(raw).encode()
            leaks += _leaks(blob, f"{key[0]} {key[1]}/{key[2]}")
            if raw.get("kind") == "ConfigMap" and LITERAL.encode() in blob:
                seen_literal_in_configmap = True
    assert seen_literal_in_configmap, "the search would not even find a literal env value in the job's ConfigMap"
    # Every request body anyone but the test sent to the API (status patches, Events, creates).
    for request in list(cluster.emulator):
        if request.headers.get("User-Agent", "").startswith(TEST_AGENT):
            continue
        where = f"request {request.method.name} {getattr(request.resource, 'plural', None)} {request.name}"
        leaks += _leaks(json.dumps(request.data, default=str).encode(), where)
    # The operator's log records (it runs in this process).
    for record in caplog.records:
        leaks += _leaks(record.getMessage().encode(), f"operator log {record.name}")
    # Every pod's log (torchrun, DeepSpeed and the trainer, all ranks).
    for pod in pods():
        leaks += _leaks(pod.log_path.read_bytes(), f"log of {pod.name}")
    # Everything the job put in S3: checkpoints, the adapter, summary.json.
    keys = s3.keys(f"runs/{name}/")
    assert f"runs/{name}/final/summary.json" in keys
    for key in keys:
        body = s3.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        leaks += _leaks(body, f"s3://{BUCKET}/{key}")
    assert not leaks, "secret values found in:\n" + "\n".join(sorted(set(leaks)))

    # summary.json keeps the references and redacts literal values.
    summary = json.loads(s3.client.get_object(Bucket=BUCKET, Key=f"runs/{name}/final/summary.json")["Body"].read())
    env = {e["name"]: e for e in summary["spec"]["env"]}
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "wandb", "key": "api-key", "optional": None}
    assert env["TEAM_NOTE"]["value"] == "<redacted>"
    assert LITERAL not in json.dumps(summary)
    assert summary["spec"]["envFrom"][0]["secretRef"]["name"] == "mlflow-credentials"


def test_search_helper_finds_both_forms():
    """The search is not blind: it finds a value as text and as base64."""
    assert _leaks(f"token={WANDB_KEY}".encode(), "x") and _leaks(base64.b64encode(MLFLOW_TOKEN.encode()), "y")
    assert not _leaks(b"nothing here", "z")
