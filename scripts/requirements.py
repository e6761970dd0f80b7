"""Print the requirements of one part of kubetune, read from pyproject.toml.

    python scripts/requirements.py operator       # core dependencies + the operator extra
    python scripts/requirements.py operator api   # ... + the `kubetune api` server's (the operator image)
    python scripts/requirements.py trainer        # core dependencies + the trainer extra

The Dockerfile installs these in a layer of their own, before the kubetune
wheel (installed with --no-deps), so a source change does not reinstall the
dependencies. Standard library only: it runs in the bare base images.
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(extra: str, pyproject: Path, *more: str) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project["optional-dependencies"]
    out = list(project["dependencies"])
    for name in (extra, *more):
        if name not in extras or name == "dev":
            raise SystemExit(f"unknown image part {name!r}: expected one of {', '.join(sorted(set(extras) - {'dev'}))}")
        out += extras[name]
    return out


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    print("\n".join(requirements(argv[0], pyproject, *argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
