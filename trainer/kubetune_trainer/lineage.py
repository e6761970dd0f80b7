"""Where a run started: the base model, the adapter it kept training, and the earlier job it came from.

``spec.model.from`` is resolved before the trainer starts (by the operator, or
``kubetune run``) into ``model.source`` and ``model.adapter``; the resolver
records what it used in the manifest's ``kubetune.io/lineage`` annotation (the
earlier job, the URIs, its summary). summary.json keeps all of it as
``lineage``, so a chain of jobs can be followed back summary by summary.
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from kubetune_api.model import LINEAGE_ANNOTATION

if TYPE_CHECKING:
    from kubetune_api.spec import FineTuneJob, FineTuneJobSpec

log = logging.getLogger("kubetune.lineage")


def resolved_from(job: FineTuneJob) -> dict[str, Any] | None:
    """The resolver's record of ``model.from`` (None for a job that did not start from an earlier one)."""
    annotations = (job.metadata.model_extra or {}).get("annotations") or {}
    raw = annotations.get(LINEAGE_ANNOTATION) if isinstance(annotations, dict) else None
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        log.warning("annotation %s is not JSON; lineage not recorded: %r", LINEAGE_ANNOTATION, raw[:200])
        return None
    return record if isinstance(record, dict) else None


def base_model(spec: FineTuneJobSpec) -> dict[str, str]:
    """The base model as the status reports it (status.output.baseModel): what a later job's model.from builds on."""
    out = {"baseModel": spec.model.source or ""}
    if spec.model.revision:
        out["baseModelRevision"] = spec.model.revision
    return {k: v for k, v in out.items() if v}


def lineage(job: FineTuneJob) -> dict[str, Any]:
    """summary.json's ``lineage``: base model, the adapter continued (if any), and the earlier job (if any)."""
    spec = job.spec
    return {
        "baseModel": spec.model.source,
        "baseModelRevision": spec.model.revision,
        "adapter": spec.model.adapter,
        "from": resolved_from(job),
    }
