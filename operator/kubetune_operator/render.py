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


def main(args: Any) -> int:
    from kubetune_operator import builders

    try:
        docs = [d for d in read_documents(args.file) if d]
    except Unreadable as e:
        print(f"kubetune: error: cannot read {args.file}: {e}", file=sys.stderr)
        return 2
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == api.KIND]
    if not jobs:
        print(f"kubetune: error: {args.file}: no {api.KIND} document found", file=sys.stderr)
        return 2
    out = []
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
