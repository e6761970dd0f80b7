"""The Helm chart's RBAC for the operator, rendered by the real helm, installed in the emulated cluster.

With ``Semantics.rbac`` (the default) every request is authorized from the RBAC
objects stored in the cluster. ``EmulatedCluster`` stores these: the
(Cluster)Roles and bindings ``helm template charts/kubetune`` renders for the
operator's ServiceAccount (``OPERATOR_USER``), so the operator under test may do
exactly what an installed chart lets it do, no more. Tests whose operator
settings need more of the chart (peering for HA, per-job NetworkPolicies) pass
the chart values that turn it on, as a user would.

helm comes from ``scripts/get-tools.sh`` (the pinned binary in ``.tools/``);
a rendering is cached per process and per values.
"""
from __future__ import annotations

import functools
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
RELEASE = "kubetune"
OPERATOR_NAMESPACE = "kubetune-system"
OPERATOR_SERVICE_ACCOUNT = "kubetune-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@functools.lru_cache(maxsize=1)
def helm_binary() -> Path:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "get-tools.sh")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"the emulated cluster's RBAC comes from the Helm chart, and scripts/get-tools.sh could not "
                           f"fetch helm:\n{out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1]) / "helm"


@functools.lru_cache(maxsize=16)
def _render(values_json: str) -> tuple[str, ...]:
    values = json.loads(values_json)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values, f)
        f.flush()
        out = subprocess.run([str(helm_binary()), "template", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE,
                              "-f", f.name], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{out.stderr}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(json.dumps(d) for d in yaml.load_all(out.stdout, Loader=loader) if d and d.get("kind") in RBAC_KINDS)


def operator_rbac(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart's RBAC objects rendered with ``values`` (the operator's ServiceAccount is ``OPERATOR_USER``)."""
    merged = {**(values or {}), "serviceAccount": {**(values or {}).get("serviceAccount", {}), "name": OPERATOR_SERVICE_ACCOUNT}}
    return [json.loads(d) for d in _render(json.dumps(merged, sort_keys=True))]
