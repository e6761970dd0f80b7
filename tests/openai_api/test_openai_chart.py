"""The Helm chart deploys `kubetune api` (off by default), with no privilege beyond TokenReview."""
from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from chart.chartkit import ROOT, Helm, find, the
from kubetune_operator.openai_api.main import add_arguments

VALUES = {"api": {
    "enabled": True, "files": "s3://ml-bucket/uploads", "s3Endpoint": "http://minio.storage:9000", "s3SecretName": "api-s3",
    "models": {"smollm2-135m": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
    "jobTemplate": {"storage": {"endpoint": "http://minio.storage:9000", "secretRef": {"name": "s3-creds"}}},
}}


@pytest.fixture(scope="module")
def helm(tmp_path_factory) -> Helm:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "get-tools.sh")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return Helm(Path(out.stdout.strip().splitlines()[-1]) / "helm", tmp_path_factory.mktemp("helm-api"))


def _api_objects(objs: list[dict]) -> list[dict]:
    return [o for o in objs if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "api"]


def test_off_by_default_and_refused_without_an_s3_location(helm):
    assert not _api_objects(helm.template({}))
    out = helm.run("template", "kt", str(ROOT / "charts" / "kubetune"), values={"api": {"enabled": True}})
    assert out.returncode != 0 and "api.files must be s3://bucket/prefix" in out.stderr


def test_enabled_it_runs_the_cluster_backend_with_only_token_review(helm, monkeypatch):
    import kubernetes_validate

    objs = helm.template(VALUES)
    api = _api_objects(objs)
    assert sorted(o["kind"] for o in api) == ["ClusterRoleBinding", "ConfigMap", "Deployment", "Service", "ServiceAccount"]
    for obj in api:
        kubernetes_validate.validate(obj, "1.33", strict=True)

    sa = the(api, "ServiceAccount")["metadata"]["name"]
    # Its one grant: the built-in TokenReview role. No Role or RoleBinding of the chart names it.
    binding = the(api, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "system:auth-delegator" and binding["subjects"][0]["name"] == sa
    assert not [b for b in find(objs, "RoleBinding") + find(objs, "ClusterRoleBinding")
                if b is not binding and any(s.get("name") == sa for s in b["subjects"])]

    deployment = the(api, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == sa
    assert container["image"] == the([o for o in objs if o not in api], "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    service = the(api, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "api"

    # The container's command line and environment, read by `kubetune api`'s own argument parser.
    assert container["command"] == ["kubetune"] and container["args"][0] == "api"
    env = {e["name"]: e.get("value") for e in container["env"]}
    for key in [k for k in os.environ if k.startswith("KUBETUNE_API_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if value is not None:
            monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(container["args"][1:])
    assert (args.backend, args.host, args.port, args.token_review) == ("cluster", "0.0.0.0", 8000, "on")
    assert (args.files, args.output, args.s3_endpoint) == ("s3://ml-bucket/uploads", "s3://ml-bucket/uploads", "http://minio.storage:9000")
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert secret_env["AWS_ACCESS_KEY_ID"] == {"name": "api-s3", "key": "AWS_ACCESS_KEY_ID"}

    # The mounted configuration is what --models and --job-template read.
    data = the(api, "ConfigMap")["data"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")["mountPath"]
    assert args.models == f"{mount}/models.yaml" and args.job_template == f"{mount}/job-template.yaml"
    assert yaml.safe_load(data["models.yaml"]) == VALUES["api"]["models"]
    assert yaml.safe_load(data["job-template.yaml"]) == VALUES["api"]["jobTemplate"]
