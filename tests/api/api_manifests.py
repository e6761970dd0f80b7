"""Shared manifests for the API tests (a plain module: tests/ has no packages)."""
from __future__ import annotations

import copy
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

# A valid LoRA job on one GPU: the base every invalid case mutates.
BASE = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "base-job"},
    "spec": {
        "model": {"source": "hf://org/model"},
        "dataset": {"train": "s3://data-bucket/train.jsonl"},
        "method": {"type": "lora", "lora": {"r": 8}},
        "training": {"epochs": 1, "globalBatchSize": 16, "microBatchSize": 2},
        "distributed": {"nodes": 1, "gpusPerNode": 1},
        "output": {"uri": "s3://out-bucket/runs/base"},
        "storage": {"secretRef": {"name": "s3-credentials"}},
    },
}


def base() -> dict:
    return copy.deepcopy(BASE)
