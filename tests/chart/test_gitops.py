"""GitOps: the Argo CD health check in docs/gitops.md, run in a Lua 5.1
interpreter (Argo CD's gopher-lua speaks Lua 5.1), and the operator's writes
to FineTuneJobs, recorded over a whole lifecycle (see chart_scenario.py),
never touching what the user's manifest in git owns."""
from __future__ import annotations

import json
import re

import pytest
import yaml
from chartkit import ROOT

from support.manifests import wrap


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
    obj = wrap({"suspend": False}, metadata={"name": "run", "namespace": "ml", "generation": generation})
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


# ----------------------------------------------------------------- writes
# What the operator may change on a FineTuneJob; everything else (spec, labels,
# other annotations, other finalizers) belongs to the user's manifest in git.
OWN_FINALIZER = "kubetune.io/finalizer"
OWN_ANNOTATION_PREFIX = "kubetune.io/"
SERVER_FIELDS = ("resourceVersion", "generation", "managedFields")


def _ftj_writes(cluster) -> list:
    from support.cluster import TEST_AGENT

    return [r for r in cluster.requests()
            if r.method.name in ("PATCH", "PUT") and r.resource is not None and r.resource.plural == "finetunejobs"
            and not r.headers.get("User-Agent", "").startswith(TEST_AGENT)]


def _version(cluster, namespace: str, name: str, resource_version: str) -> dict:
    """The FineTuneJob as it was at a resourceVersion (kmock keeps every version)."""
    obj = cluster.emulator.objects["kubetune.io/v1alpha1/finetunejobs", namespace, name]
    for version in obj.history:
        if version is not None and version.raw["metadata"]["resourceVersion"] == resource_version:
            return json.loads(json.dumps(version.raw))
    raise AssertionError(f"no version {resource_version} of {namespace}/{name} in the emulator's history")


def _gitops_violations(before: dict, after: dict) -> list[str]:
    problems = []
    if before.get("spec") != after.get("spec"):
        problems.append("changed spec")
    b, a = before.get("metadata") or {}, after.get("metadata") or {}
    if (b.get("labels") or {}) != (a.get("labels") or {}):
        problems.append(f"changed labels {b.get('labels')} -> {a.get('labels')}")
    ba, aa = b.get("annotations") or {}, a.get("annotations") or {}
    for key in set(ba) | set(aa):
        if ba.get(key) != aa.get(key) and not key.startswith(OWN_ANNOTATION_PREFIX):
            problems.append(f"changed annotation {key}")
    bf, af = b.get("finalizers") or [], a.get("finalizers") or []
    if [f for f in bf if f != OWN_FINALIZER] != [f for f in af if f != OWN_FINALIZER]:
        problems.append(f"changed finalizers it does not own: {bf} -> {af}")
    for key in set(b) | set(a):
        if key not in ("labels", "annotations", "finalizers", *SERVER_FIELDS) and b.get(key) != a.get(key):
            problems.append(f"changed metadata.{key}")
    for key in set(before) | set(after):
        if key not in ("spec", "metadata", "status") and before.get(key) != after.get(key):
            problems.append(f"changed {key}")
    return problems


@pytest.mark.parametrize("name", ["default", "ha", "ha-namespaced", "no-status-reporter"])
def test_operator_never_writes_what_gitops_owns(lifecycles, name):
    """Every PATCH/PUT the operator sent for a FineTuneJob during the whole
    lifecycle changes only status (through /status): no finalizer (issue 11),
    never spec, labels, annotations or others' metadata."""
    cluster, _, _ = lifecycles[name]
    writes = _ftj_writes(cluster)
    status_writes = [w for w in writes if w.subresource == "status"]
    main_writes = [w for w in writes if w.subresource is None]
    assert len(status_writes) >= 8, "the lifecycle did not exercise the operator's writes"
    # The operator adds no finalizer, so it never writes the object itself (only /status).
    assert main_writes == [], [(w.method.name, w.data) for w in main_writes]
    assert {w.subresource for w in writes} <= {None, "status"}
    for w in status_writes:
        ctype = w.headers.get("Content-Type", "")
        if isinstance(w.data, dict):
            assert set(w.data) == {"status"}, f"a status write also sends {set(w.data) - {'status'}}"
        else:
            assert "json-patch" in ctype
            for op in w.data:
                assert op["op"] == "test" or op["path"].startswith("/status"), f"status write touches {op['path']}"


def test_gitops_check_catches_violations():
    """The checker is not a rubber stamp."""
    before = wrap({"suspend": False}, metadata={
        "name": "x", "labels": {"team": "a"}, "annotations": {"argocd.argoproj.io/tracking-id": "t"},
        "finalizers": ["example.com/keep"], "resourceVersion": "1"})
    ok = json.loads(json.dumps(before))
    ok["metadata"]["finalizers"].append(OWN_FINALIZER)
    ok["metadata"]["annotations"]["kubetune.io/last-handled-configuration"] = "{}"
    ok["metadata"]["resourceVersion"] = "2"
    ok["status"] = {"phase": "Running"}
    assert _gitops_violations(before, ok) == []
    for path, value in [(("spec", "suspend"), True), (("metadata", "labels", "team"), "b"),
                        (("metadata", "annotations", "argocd.argoproj.io/tracking-id"), "u"),
                        (("metadata", "finalizers"), [OWN_FINALIZER]), (("metadata", "ownerReferences"), [{}])]:
        bad = json.loads(json.dumps(before))
        target = bad
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        assert _gitops_violations(before, bad), path
