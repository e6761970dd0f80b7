"""``spec.model.from`` for ``kubetune run``: the earlier job is a run folder next to this one.

A local run keeps its resolved manifest (``finetunejob.yaml``) in its run folder
(``.kubetune/runs/<name>/`` by default) and, when it ends, ``result.json``: its
outcome and the exported URIs, the local counterpart of a FineTuneJob's status.
``resolve_local`` reads the earlier job's folder into a
:class:`kubetune_operator.lineage.Earlier` and lets the same pure function as the
operator decide.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from kubetune_operator import lineage
from kubetune_operator.localrun.manifest import RunError

RESULT = "result.json"
MANIFEST = "finetunejob.yaml"


def runs_root(run_dir: str | os.PathLike[str] | None) -> Path:
    """Where the run folders are: the parent of this run's folder (``.kubetune/runs`` by default)."""
    return Path(run_dir).resolve().parent if run_dir else (Path(".kubetune") / "runs").resolve()


def read_result(run_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((run_dir / RESULT).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_result(run_dir: Path, record: dict[str, Any]) -> None:
    tmp = run_dir / (RESULT + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, run_dir / RESULT)


def local_earlier(runs: Path, name: str) -> lineage.Earlier | None:
    """The run folder ``runs/name`` as an Earlier (None: no such run)."""
    folder = runs / name
    try:
        doc = yaml.safe_load((folder / MANIFEST).read_text())
    except (OSError, yaml.YAMLError):
        return None
    spec = (doc or {}).get("spec") or {} if isinstance(doc, dict) else {}
    result = read_result(folder)
    output = (result or {}).get("output") or {}
    model = spec.get("model") or {}
    return lineage.Earlier(
        name=name,
        phase=(result or {}).get("phase") or "unfinished (it has no result.json yet)",
        reason=(result or {}).get("reason"),
        method=(spec.get("method") or {}).get("type") or "lora",
        adapter_uri=output.get("adapterUri"),
        merged_uri=output.get("mergedUri"),
        summary_uri=output.get("summaryUri"),
        base_model=output.get("baseModel") or model.get("source"),
        base_model_revision=output.get("baseModelRevision") or model.get("revision"),
        step=(result or {}).get("step"),
        namespace=None,
        uid=None,
    )


def resolve_local(doc: dict[str, Any], method_type: str, run_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The manifest with ``spec.model.from`` resolved from the earlier run folder; RunError when it cannot be."""
    name = lineage.from_job_name(doc.get("spec") or {})
    if name is None:
        return doc
    runs = runs_root(run_dir)
    result = lineage.resolve(doc["spec"]["model"], method_type, local_earlier(runs, name), name=name)
    if isinstance(result, lineage.Refusal):
        where = f" (looked in {runs / name})" if result.reason == lineage.FROM_JOB_NOT_FOUND else ""
        raise RunError(f"{result.reason}: {result.message}{where}")
    resolved = lineage.apply(doc, result)
    resolved["metadata"]["annotations"][lineage.LINEAGE_ANNOTATION] = json.dumps(
        {**result.lineage, "runDir": str(runs / name)}, sort_keys=True)
    return resolved
