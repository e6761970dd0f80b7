"""docs/api.md names every spec and status field, so the reference stays complete as fields are added."""
from __future__ import annotations

import re

from api_manifests import REPO

from kubetune_api.validation import crd_schema


def _names(node, depth):
    for name, sub in (node.get("properties") or {}).items():
        yield name
        if depth > 1:
            target = sub["items"] if isinstance(sub.get("items"), dict) and "properties" in sub["items"] else sub
            yield from _names(target, depth - 1)


def test_docs_mention_every_field():
    doc = (REPO / "docs" / "api.md").read_text()
    words = set(re.findall(r"[A-Za-z][A-Za-z0-9]*", doc))
    schema = crd_schema()["properties"]
    fields = set(_names(schema["spec"], 3)) | set(_names(schema["status"], 2))
    missing = sorted(f for f in fields if f not in words)
    assert not missing, f"docs/api.md does not mention: {missing}"


def test_sweep_docs_mention_every_sweep_field():
    doc = (REPO / "docs" / "sweep.md").read_text()
    words = set(re.findall(r"[A-Za-z][A-Za-z0-9]*", doc))
    schema = crd_schema("FineTuneSweep")["properties"]
    spec = {k: v for k, v in schema["spec"]["properties"].items() if k != "template"}
    fields = set(_names({"properties": spec}, 3)) | set(_names(schema["status"], 3))
    missing = sorted(f for f in fields if f not in words)
    assert not missing, f"docs/sweep.md does not mention: {missing}"
