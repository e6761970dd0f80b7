"""``kubetune validate FILE...``: one line per problem (and per warning).

Exit codes: 0 every file valid, 1 a file invalid (or without a FineTuneJob),
2 a file unreadable or not YAML. Multi-document files and kubectl's ``List``
are supported; ``-`` reads standard input (e.g. from ``helm template``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import spec as api
from .. import sweep as sweep_api
from ..documents import Unreadable, read_documents
from .checks import warnings
from .manifest import KINDS, validate_manifest

EXIT_VALID, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


def load_documents(path: str) -> list[Any]:
    """The non-empty YAML documents of a file ('-': standard input); Unreadable says why not."""
    return [d for d in read_documents(path) if d is not None]


def validate_file(path: str) -> tuple[int, list[str]]:
    """(exit code, output lines) for one file; multi-document YAML supported."""
    try:
        docs = load_documents(path)
    except Unreadable as e:
        return EXIT_UNREADABLE, [f"{path}: {e}"]
    jobs: list[tuple[str, Any]] = []
    for i, d in enumerate(docs):
        where = path if len(docs) == 1 else f"{path}#{i + 1}"
        if isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):  # kubectl's List
            jobs += [(f"{where}: items[{j}]", item) for j, item in enumerate(d["items"])
                     if isinstance(item, dict) and item.get("kind") in KINDS]
        elif not isinstance(d, dict) or d.get("kind") in KINDS:
            jobs.append((where, d))
    if not jobs:
        return EXIT_INVALID, [f"{path}: no {api.KIND} or {sweep_api.KIND} document found (kind: {api.KIND})"]
    lines: list[str] = []
    notes: list[str] = []
    for where, doc in jobs:
        problems = validate_manifest(doc)
        lines.extend(f"{where}: {p}" for p in problems)
        if not problems:
            if doc.get("kind") == sweep_api.KIND:  # the template's warnings, at their place in the sweep
                job = {**doc, "apiVersion": api.API_VERSION, "kind": api.KIND, "spec": doc["spec"]["template"]}
                notes.extend(f"{where}: {p.path.replace('spec.', 'spec.template.', 1)}: warning: {p.message}"
                             for p in warnings(job))
            else:
                notes.extend(f"{where}: {p.path}: warning: {p.message}" for p in warnings(doc))
    return (EXIT_INVALID if lines else EXIT_VALID), lines + notes


def validate_files_cli(files: Sequence[str]) -> int:
    """``kubetune validate``: one line per problem (and per warning); 0 valid, 1 invalid, 2 a file unreadable."""
    code = EXIT_VALID
    for path in files:
        rc, lines = validate_file(path)
        for line in lines:
            print(line)
        if rc == EXIT_VALID:
            print(f"{path}: valid")
        code = max(code, rc)
    return code
