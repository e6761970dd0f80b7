"""``spec.model.from``: which earlier result a job starts from, as a pure function.

``resolve(model, method_type, earlier)`` reads the job's ``spec.model`` (wire
names), its ``method.type`` and what is known of the earlier job (an
:class:`Earlier`, built from a FineTuneJob's status by :func:`earlier_from_object`
in the operator, or from a local run folder by ``kubetune run``) and returns a
:class:`Resolution` (the ``spec.model`` to run: the earlier job's adapter on its
base model, or its merged model as the base; and the lineage record) or a
:class:`Refusal` with a stable reason. No I/O: the operator's handler and
``kubetune run`` look the earlier job up, this decides.

The resolved manifest (the trainer's config) carries no ``model.from``: its
``model.source``/``model.adapter`` say what to load, and the annotation
``kubetune.io/lineage`` what they came from; summary.json copies it.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from kubetune_api.model import LINEAGE_ANNOTATION
from kubetune_operator.reasons import FROM_JOB_NOT_FOUND, FROM_JOB_NOT_SUCCEEDED, FROM_JOB_UNUSABLE

__all__ = ["FROM_JOB_NOT_FOUND", "FROM_JOB_NOT_SUCCEEDED", "FROM_JOB_UNUSABLE", "LINEAGE_ANNOTATION", "Earlier",
           "Refusal", "Resolution", "apply", "earlier_from_object", "from_job_name", "resolve"]

# Method types that can keep training each other's adapters.
_ADAPTER_FAMILY = {"lora": "lora", "qlora": "lora", "prompt-tuning": "prompt-tuning",
                   "prefix-tuning": "prefix-tuning", "ia3": "ia3"}


@dataclasses.dataclass(frozen=True)
class Earlier:
    """What is known of the earlier job: its phase and the results it reported."""

    name: str
    phase: str | None = None
    reason: str | None = None
    method: str | None = None  # its method.type
    adapter_uri: str | None = None
    merged_uri: str | None = None
    summary_uri: str | None = None
    base_model: str | None = None  # what its adapter applies to
    base_model_revision: str | None = None
    step: int | None = None
    namespace: str | None = None
    uid: str | None = None


@dataclasses.dataclass(frozen=True)
class Resolution:
    model: dict[str, Any]  # the spec.model to run (wire names, no `from`)
    lineage: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


def earlier_from_object(ftj: Mapping[str, Any]) -> Earlier:
    """An Earlier from a FineTuneJob as the API shows it (status written by the operator and rank 0)."""
    meta = ftj.get("metadata") or {}
    spec = ftj.get("spec") or {}
    status = ftj.get("status") or {}
    output = status.get("output") or {}
    model = spec.get("model") or {}
    base, revision = output.get("baseModel"), output.get("baseModelRevision")
    if base is None and model.get("source"):  # reported before status.output.baseModel existed
        base, revision = model.get("source"), model.get("revision")
    step = (status.get("progress") or {}).get("step") or (status.get("lastCheckpoint") or {}).get("step")
    return Earlier(
        name=str(meta.get("name", "")), phase=status.get("phase"), reason=status.get("reason"),
        method=(spec.get("method") or {}).get("type") or "lora", adapter_uri=output.get("adapterUri"),
        merged_uri=output.get("mergedUri"), summary_uri=output.get("summaryUri"), base_model=base,
        base_model_revision=revision, step=step if isinstance(step, int) else None,
        namespace=meta.get("namespace"), uid=meta.get("uid"),
    )


def _where(earlier_name: str, namespace: str | None) -> str:
    return f"FineTuneJob {earlier_name}" + (f" in namespace {namespace}" if namespace else "")


def resolve(model: Mapping[str, Any], method_type: str, earlier: Earlier | None, *,
            name: str, namespace: str | None = None) -> Resolution | Refusal:
    """Where a job with ``spec.model.from`` (naming ``name``) starts, or why it cannot."""
    use = (model.get("from") or {}).get("use") or "auto"
    field = "spec.model.from.fineTuneJob"
    if earlier is None:
        return Refusal(FROM_JOB_NOT_FOUND, f"{field}: {_where(name, namespace)} does not exist; create and run it first, "
                                           "or fix the name")
    if earlier.phase != "Succeeded":
        state = earlier.phase or "not started"
        why = f" ({earlier.reason})" if earlier.reason and earlier.phase == "Failed" else ""
        return Refusal(FROM_JOB_NOT_SUCCEEDED, f"{field}: {_where(name, namespace)} is {state}{why}, not Succeeded: only a "
                                               "finished job's result can be continued; create this job after it succeeds")
    peft = method_type != "full"
    same_kind = peft and earlier.method is not None and _ADAPTER_FAMILY.get(earlier.method) == _ADAPTER_FAMILY.get(method_type)
    adapter_problem = None
    if not earlier.adapter_uri:
        adapter_problem = f"{_where(name, namespace)} exported no adapter (its output.export)"
    elif not same_kind:
        kinds = " or ".join(t for t, family in _ADAPTER_FAMILY.items() if family == _ADAPTER_FAMILY.get(earlier.method or ""))
        adapter_problem = (f"its adapter is a {earlier.method} adapter, which method.type {method_type!r} cannot keep "
                           f"training (method.type {kinds or 'of its kind'} can)")
    elif not earlier.base_model:
        adapter_problem = f"{_where(name, namespace)} reports no base model for its adapter (status.output.baseModel)"
    if use == "adapter" or (use == "auto" and adapter_problem is None):
        if adapter_problem is not None:
            return Refusal(FROM_JOB_UNUSABLE, f"spec.model.from.use: 'adapter': {adapter_problem}")
        new_model = {"source": earlier.base_model, "adapter": earlier.adapter_uri}
        if earlier.base_model_revision:
            new_model["revision"] = earlier.base_model_revision
        chosen = "adapter"
    else:
        if not earlier.merged_uri:
            detail = f"{_where(name, namespace)} exported no merged model"
            if use == "auto" and adapter_problem:
                detail += f", and {adapter_problem}"
            return Refusal(FROM_JOB_UNUSABLE, f"spec.model.from: {detail}; export what this job needs there "
                                              "(output.export: both) or choose another job")
        new_model = {"source": earlier.merged_uri}
        chosen = "merged"
    kept = {k: copy.deepcopy(v) for k, v in model.items() if k not in ("from", "source", "adapter", "revision")}
    lineage = {
        "fineTuneJob": name, "namespace": namespace, "uid": earlier.uid, "use": chosen,
        "adapterUri": earlier.adapter_uri, "mergedUri": earlier.merged_uri, "summaryUri": earlier.summary_uri,
        "baseModel": earlier.base_model, "step": earlier.step,
    }
    return Resolution(model={**kept, **new_model}, lineage={k: v for k, v in lineage.items() if v is not None})


def apply(manifest: Mapping[str, Any], resolution: Resolution) -> dict[str, Any]:
    """The manifest with ``spec.model`` resolved and the lineage annotation set (a copy)."""
    out = copy.deepcopy(dict(manifest))
    out["spec"] = {**out.get("spec", {}), "model": copy.deepcopy(resolution.model)}
    meta = dict(out.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), LINEAGE_ANNOTATION: json.dumps(resolution.lineage, sort_keys=True)}
    out["metadata"] = meta
    return out


def from_job_name(spec: Mapping[str, Any]) -> str | None:
    """The earlier job a spec names in model.from (None: it starts from model.source)."""
    ref = ((spec.get("model") or {}).get("from") or {}).get("fineTuneJob")
    return str(ref) if ref else None
