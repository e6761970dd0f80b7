"""Shared manifests for the API tests (a plain module: tests/ has no packages)."""
from __future__ import annotations

import copy
from pathlib import Path

from support.manifests import finetunejob

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

# A valid LoRA job on one GPU: the base every invalid case mutates.
BASE = finetunejob("base-job", preset="single-gpu")


def base() -> dict:
    return copy.deepcopy(BASE)
