"""``kubetune render FILE.yaml``: the Kubernetes objects the operator would create, as YAML.

For review in GitOps pull requests: the same pure builders the operator runs
(``builders.build_objects``), with the operator settings taken from the same
``KUBETUNE_*`` environment variables the operator reads, so a reviewer can
render with the cluster's settings. Owner references are left out (they need
the live object's uid); everything else is exactly what the operator creates
for the given attempt.
"""
from __future__ import annotations

import sys
from typing import Any

import yaml

from kubetune_api import spec as api
from kubetune_api.documents import Unreadable, read_documents


def render(doc: dict[str, Any], namespace: str | None = None, attempt: int = 1, settings: Any = None) -> list[dict[str, Any]]:
    from kubetune_operator import builders
    from kubetune_operator.settings import OperatorSettings

    doc = dict(doc)
    meta = doc.get("metadata") or {}
    if isinstance(meta, dict):  # anything else: build_objects refuses it with InvalidJob
        meta = dict(meta)
        if namespace:
            meta["namespace"] = namespace
    doc["metadata"] = meta
    objects = builders.build_objects(doc, settings or OperatorSettings.from_env(), attempt=attempt)
    if namespace:
        for obj in objects:
            obj["metadata"]["namespace"] = namespace
    return objects


def render_sweep(doc: dict[str, Any], namespace: str | None = None) -> list[dict[str, Any]]:
    """The FineTuneJobs a FineTuneSweep starts first (its first ``parallelism`` trials), as the operator
    would create them (without owner references). Raises pydantic.ValidationError on an invalid sweep."""
    import datetime as dt

    from kubetune_api import sweep as sweep_api
    from kubetune_operator.sweeps.decide import SweepObservation, decide

    sweep_api.load_sweep(doc)
    doc = {**doc, "metadata": {**(doc.get("metadata") or {}), **({"namespace": namespace} if namespace else {})}, "status": {}}
    return decide(SweepObservation(doc, {}, dt.datetime.now(dt.UTC))).create


def main(args: Any) -> int:
    from kubetune_operator import builders

    try:
        docs = [d for d in read_documents(args.file) if d]
    except Unreadable as e:
        print(f"kubetune: error: cannot read {args.file}: {e}", file=sys.stderr)
        return 2
    from pydantic import ValidationError

    from kubetune_api import sweep as sweep_api
    from kubetune_api.contract import validation_messages

    out: list[dict[str, Any]] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == sweep_api.KIND:
            try:
                out += render_sweep(doc, args.namespace)
            except ValidationError as e:
                for line in validation_messages(e):
                    print(f"kubetune: error: {args.file}: {sweep_api.KIND}: {line}", file=sys.stderr)
                return 1
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == api.KIND]
    if not jobs and not out:
        print(f"kubetune: error: {args.file}: no {api.KIND} or {sweep_api.KIND} document found", file=sys.stderr)
        return 2
    for doc in jobs:
        try:
            out += render(doc, args.namespace, args.attempt)
        except (builders.InvalidJob, ValueError) as e:
            meta = doc.get("metadata")
            name = meta.get("name", "?") if isinstance(meta, dict) else "?"
            print(f"kubetune: error: {args.file}: {api.KIND} {name}: {e}", file=sys.stderr)
            return 1
    sys.stdout.write(yaml.safe_dump_all(out, sort_keys=False))
    return 0
