"""GitOps: the Argo CD health check in docs/gitops.md, run in a Lua 5.1
interpreter (Argo CD's gopher-lua speaks Lua 5.1)."""
from __future__ import annotations

import re

import pytest
import yaml

from chartkit import ROOT


def _health_script() -> str:
    doc = (ROOT / "docs" / "gitops.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)
    for block in blocks:
        cm = yaml.safe_load(block)
        if isinstance(cm, dict) and cm.get("kind") == "ConfigMap":
            return cm["data"]["resource.customizations.health.kubetune.io_FineTuneJob"]
    raise AssertionError("docs/gitops.md has no argocd-cm block with the FineTuneJob health check")


@pytest.fixture(scope="module")
def health():
    from lupa import lua51  # dev extra: a Lua 5.1 interpreter

    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    check = runtime.eval(f"function(obj)\n{_health_script()}\nend")

    def to_lua(value):
        if isinstance(value, dict):
            return runtime.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return runtime.table_from([to_lua(v) for v in value])
        return value

    def run(obj: dict) -> tuple[str, str]:
        hs = check(to_lua(obj))
        return hs["status"], hs["message"]

    return run


def job(status: dict | None = None, generation: int = 1) -> dict:
    obj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
           "metadata": {"name": "run", "namespace": "ml", "generation": generation},
           "spec": {"suspend": False}}
    if status is not None:
        obj["status"] = status
    return obj


@pytest.mark.parametrize("phase,health_status", [
    ("Succeeded", "Healthy"),
    ("Failed", "Degraded"),
    ("Suspended", "Suspended"),
    ("Pending", "Progressing"),
    ("Queued", "Progressing"),
    ("Initializing", "Progressing"),
    ("Running", "Progressing"),
    ("Restarting", "Progressing"),
    ("Exporting", "Progressing"),
])
def test_phase_maps_to_argocd_health(health, phase, health_status):
    status, message = health(job({"phase": phase, "observedGeneration": 1}))
    assert status == health_status
    assert message.startswith(phase)


def test_message_carries_reason_message_and_progress(health):
    assert health(job({"phase": "Failed", "observedGeneration": 1, "reason": "BackoffLimitExceeded",
                       "message": "3 restarts, last: pod run-0 OOMKilled"})) == (
        "Degraded", "Failed: BackoffLimitExceeded: 3 restarts, last: pod run-0 OOMKilled")
    assert health(job({"phase": "Running", "observedGeneration": 1, "progress": {"percent": 42.25, "step": 10}})) == (
        "Progressing", "Running (42.2%)")


def test_no_status_or_stale_status_is_progressing(health):
    assert health(job())[0] == "Progressing"
    assert health(job({}))[0] == "Progressing"
    # A Succeeded status about generation 1 says nothing about generation 2.
    status, message = health(job({"phase": "Succeeded", "observedGeneration": 1}, generation=2))
    assert status == "Progressing" and "generation 2" in message
