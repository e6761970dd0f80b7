"""Static checks are part of the test command: ruff over the repository, mypy over
the api and operator packages (configured in pyproject.toml)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_clean() -> None:
    p = _run("ruff", "check", "--output-format", "concise", ".")
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]


def test_mypy_clean() -> None:
    p = _run("mypy", "--no-error-summary")
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]
