"""The one factory for FineTuneJob manifests in tests.

Presets are valid jobs for the situations tests need; keyword arguments replace
whole top-level spec fields (``storage={}`` really means an empty storage
section), so a test states exactly what it changes. ``merged`` does the
same but merges a dict into the preset's section instead of replacing it.

    finetunejob("llama", "ml")                                 # 2 nodes x 8 GPUs, LoRA, S3
    finetunejob("base-job", preset="single-gpu")               # what API tests mutate
    finetunejob("t", preset="minimal")                         # only the required fields
    wrap(spec_dict, name="t")                                  # a spec built by the test
"""
from __future__ import annotations

import copy
from typing import Any

API_VERSION = "kubetune.io/v1alpha1"
KIND = "FineTuneJob"

PRESETS: dict[str, dict[str, Any]] = {
    # A gang on a cluster: 2 nodes x 8 GPUs, LoRA, S3 with a credentials Secret.
    "cluster": {
        "model": {"source": "hf://org/model"},
        "dataset": {"train": "s3://data/train.jsonl"},
        "training": {"maxSteps": 100, "globalBatchSize": 16},
        "distributed": {"nodes": 2, "gpusPerNode": 8},
        "output": {"uri": "s3://out/run"},
        "storage": {"secretRef": {"name": "s3-creds"}},
        "runPolicy": {"maxRestarts": 2, "backoffSeconds": 0},
    },
    # One GPU, LoRA r=8: the valid base that API tests mutate into invalid ones.
    "single-gpu": {
        "model": {"source": "hf://org/model"},
        "dataset": {"train": "s3://data-bucket/train.jsonl"},
        "method": {"type": "lora", "lora": {"r": 8}},
        "training": {"epochs": 1, "globalBatchSize": 16, "microBatchSize": 2},
        "distributed": {"nodes": 1, "gpusPerNode": 1},
        "output": {"uri": "s3://out-bucket/runs/base"},
        "storage": {"secretRef": {"name": "s3-credentials"}},
    },
    # Only what the API requires; everything else defaulted.
    "minimal": {
        "model": {"source": "hf://org/model"},
        "dataset": {"train": "s3://bucket/train.jsonl"},
        "training": {"epochs": 1},
        "output": {"uri": "s3://bucket/out"},
    },
}


def spec(preset: str = "cluster", **fields: Any) -> dict[str, Any]:
    """A preset's spec with whole top-level fields replaced."""
    out = copy.deepcopy(PRESETS[preset])
    out.update(copy.deepcopy(fields))
    return out


def merged(base: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """``base`` with dict sections merged one level deep (other values replaced)."""
    out = copy.deepcopy(base)
    for key, value in sections.items():
        out[key] = {**out[key], **value} if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def wrap(spec_dict: dict[str, Any], name: str | None = None, namespace: str | None = None,
         metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A FineTuneJob manifest around a spec."""
    meta = dict(metadata or {})
    if name is not None:
        meta["name"] = name
    if namespace is not None:
        meta["namespace"] = namespace
    out: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND}
    if meta:
        out["metadata"] = meta
    out["spec"] = spec_dict
    return out


def finetunejob(name: str, namespace: str | None = None, *, preset: str = "cluster", **fields: Any) -> dict[str, Any]:
    """A valid FineTuneJob from a preset; keyword arguments replace top-level spec fields."""
    return wrap(spec(preset, **fields), name=name, namespace=namespace)


def job_manifest(name: str, namespace: str, **fields: Any) -> dict[str, Any]:
    """The cluster preset in a namespace (what most operator tests create)."""
    return finetunejob(name, namespace, preset="cluster", **fields)
