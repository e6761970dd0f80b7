"""Reading the manifest for ``kubetune run``: the file, ``--set`` overrides, validation."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from kubetune_api import contract
from kubetune_api import spec as api
from kubetune_api.documents import Unreadable, read_documents


class RunError(Exception):
    """A problem with the manifest or the machine, reported before anything starts."""


def _set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = doc
    for k in keys[:-1]:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = cur[k] = {}
        cur = nxt
    cur[keys[-1]] = value


def is_local(uri: str) -> bool:
    return not uri.startswith(("s3://", "hf://"))


def _absolute(uri: str, base: Path) -> str:
    """Local paths (and file:// URIs) made absolute against ``base``; remote URIs unchanged."""
    if not is_local(uri):
        return uri
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    try:
        return str((base / os.path.expanduser(path)).resolve())
    except (OSError, ValueError):  # e.g. a NUL character: left as written, the trainer reports it not found
        return uri


def first_document(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """The first document of ``kind`` in ``path``, or a RunError naming the file."""
    try:
        docs = [d for d in read_documents(path) if d]
    except Unreadable as e:
        raise RunError(f"{path}: {e}") from None
    doc = next((d for d in docs if isinstance(d, dict) and d.get("kind") == kind), None)
    if doc is None:
        raise RunError(f"{path}: no {kind} document found")
    return doc


def load_manifest(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """Read the first FineTuneJob in ``path``, apply ``overrides`` (dotted camelCase paths), make local paths absolute."""
    doc = first_document(path, api.KIND)
    for key, value in (overrides or {}).items():
        _set_path(doc, key, value)
    cwd = cwd or Path.cwd()
    spec: dict[str, Any] = doc["spec"] if isinstance(doc.get("spec"), dict) else {}
    for section, field in (("model", "source"), ("model", "adapter"), ("dataset", "train"), ("dataset", "eval"), ("output", "uri")):
        value = spec[section].get(field) if isinstance(spec.get(section), dict) else None
        if isinstance(value, str) and value:
            spec[section][field] = _absolute(value, cwd)
    if doc.get("metadata") is None:
        doc["metadata"] = {}
    if isinstance(doc["metadata"], dict):  # anything else is reported by validate_manifest
        doc["metadata"].setdefault("name", Path(path).stem)
    return doc


def validate_manifest(doc: dict[str, Any]) -> api.FineTuneJob:
    """The manifest read by the API model; RunError with one field-path line per problem."""
    from pydantic import ValidationError

    try:
        return api.load_job(doc)
    except ValidationError as e:
        lines = [f"  {line}" for line in contract.validation_messages(e)]
        raise RunError("the manifest is not a valid FineTuneJob:\n" + "\n".join(lines)) from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set training.maxSteps=10`` -> {'spec.training.maxSteps': 10}; values are YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RunError(f"--set {item!r}: expected KEY=VALUE, e.g. training.maxSteps=10")
        key = key if key.startswith(("spec.", "metadata.")) else f"spec.{key}"
        out[key] = yaml.safe_load(value) if value != "" else ""
    return out


