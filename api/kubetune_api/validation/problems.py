"""A problem found in a manifest, how its field path is written, and how a
pydantic error becomes one.

Every layer reports ``Problem``s; ``kubetune validate`` prints each as
``spec.training.globalBatchSize: what is wrong and what to do``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..contract import field_errors

Path = tuple[str | int, ...]
Schema = dict[str, Any]


@dataclass(frozen=True)
class Problem:
    path: str  # e.g. "spec.training.globalBatchSize" ("" for the whole document)
    message: str
    layer: str  # "schema" | "cel" | "model"; "warning" for warnings()

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def render_path(path: Sequence[str | int], map_keys: frozenset[int] = frozenset()) -> str:
    """('spec', 'tolerations', 0, 'value') -> 'spec.tolerations[0].value'; map keys as [key]."""
    out = ""
    for i, seg in enumerate(path):
        if isinstance(seg, int) or i in map_keys:
            out += f"[{seg}]"
        else:
            out += f".{seg}" if out else str(seg)
    return out


def type_name(value: Any) -> str:
    """The YAML name of a value's type, for messages."""
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


# ------------------------------------------------------- walking the schema
def props(schema: Schema) -> dict[str, Schema]:
    found: dict[str, Schema] = schema.get("properties") or {}
    return found


def child_schema(schema: Schema, key: str | int) -> Schema | None:
    """The schema of ``key`` (a field, a map key or a list index) under ``schema``."""
    if isinstance(key, int):
        items: Schema | None = schema.get("items")
        return items
    if key in props(schema):
        return props(schema)[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def map_key_positions(schema: Schema, path: Sequence[str | int]) -> frozenset[int]:
    """Positions in a path that are keys of a map (additionalProperties) rather than field names."""
    node: Schema | None = schema
    keys = set()
    for i, seg in enumerate(path):
        if node is None:
            break
        if isinstance(seg, str) and seg not in props(node) and isinstance(node.get("additionalProperties"), dict):
            keys.add(i)
        node = child_schema(node, seg)
    return frozenset(keys)


def schema_path(schema: Schema, path: Sequence[str | int]) -> str:
    """A path rendered with the map keys the schema knows of."""
    return render_path(path, map_key_positions(schema, path))


# --------------------------------------------------------- pydantic errors
def pydantic_problems(error: ValidationError, doc: dict[str, Any], schema: Schema) -> list[Problem]:
    """One 'model' Problem per pydantic error, its path and message from
    :func:`kubetune_api.contract.field_errors`, written against the CRD schema:
    map keys as ``limits[memory]``, anything that is no field of the document
    (pydantic's validator tags) left out."""
    return [_located(loc, message, doc, schema) for loc, message in field_errors(error)]


def _located(loc: Path, message: str, doc: dict[str, Any], schema: Schema) -> Problem:
    node: Schema | None = schema
    value: Any = doc
    path: list[str | int] = []
    map_keys: set[int] = set()
    for seg in loc:
        if node is None:
            break
        if isinstance(seg, int) and isinstance(value, list):
            path.append(seg)
            node, value = node.get("items"), (value[seg] if seg < len(value) else None)
        elif isinstance(seg, str) and seg in props(node):
            path.append(seg)
            node, value = props(node)[seg], (value.get(seg) if isinstance(value, dict) else None)
        elif isinstance(seg, str) and isinstance(value, dict) and seg in value:
            if isinstance(node.get("additionalProperties"), dict):
                map_keys.add(len(path))
                node = node["additionalProperties"]
            else:  # an unknown field
                node = None
            path.append(seg)
            value = value.get(seg)
        # anything else is a pydantic union/validator tag, not a field
    return Problem(render_path(path, frozenset(map_keys)), message, "model")


# --------------------------------------------------------------- together
def related(a: str, b: str) -> bool:
    """Same field, or one inside the other (spec.resources / spec.resources.limits[memory])."""
    return a == b or any(x.startswith(y) and x[len(y)] in ".[" for x, y in ((a, b), (b, a)) if len(x) > len(y))


def merge(schema: Iterable[Problem], cel: Iterable[Problem], model: Iterable[Problem]) -> list[Problem]:
    """One line per problem: CEL adds what the schema did not say about a path; the model layer
    (pydantic, which stops at a model's first field error) adds only paths unrelated to those."""
    out = list(dict.fromkeys(schema))
    paths = {p.path for p in out}
    out += [p for p in dict.fromkeys(cel) if p.path not in paths]
    reported = [p.path for p in out]
    out += [p for p in dict.fromkeys(model) if not any(related(p.path, r) for r in reported)]
    return out
