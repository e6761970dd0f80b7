"""Layer 2: every ``x-kubernetes-validations`` rule of the CRD evaluated with
cel-python at its node, on the defaulted object, exactly as admission would.
Transition rules (those using ``oldSelf``) run only when an old object is given.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from .. import spec as api
from .problems import Path, Problem, Schema, render_path, schema_path
from .schema import INT64_MAX, INT64_MIN, crd_schema

_OLD_SELF = re.compile(r"\boldSelf\b")


def _heterogeneous_eq(a: Any, b: Any) -> Any:
    """CEL's equality: values of different types are unequal (cel-python raises instead).

    An error operand (a field that is absent) stays an error, as in CEL: the
    rule then cannot be evaluated, rather than being false about fields the
    user never wrote."""
    from celpy import celtypes
    from celpy.evaluation import CELEvalError

    for operand in (a, b):
        if isinstance(operand, CELEvalError):
            return operand
    try:
        return celtypes.BoolType(bool(a == b))
    except TypeError:
        return celtypes.BoolType(False)


def _heterogeneous_ne(a: Any, b: Any) -> Any:
    from celpy import celtypes

    equal = _heterogeneous_eq(a, b)
    return equal if not isinstance(equal, celtypes.BoolType) else celtypes.BoolType(not equal)


@functools.cache
def program(expr: str) -> Any:
    """A compiled CEL expression (cached), with Kubernetes' equality across types."""
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(expr), functions={"_==_": _heterogeneous_eq, "_!=_": _heterogeneous_ne})


def to_cel(schema: Schema, value: Any, root: bool = False, lenient: bool = False) -> Any:
    """A YAML value as the CEL value the API server would bind, typed by the schema.

    Null-valued and unknown fields are absent (as in Kubernetes CEL); numbers of
    ``type: number`` are doubles even when written as integers; at the root,
    ``metadata`` exposes only name and generateName. ``lenient`` drops values
    of the wrong type (already reported by the schema layer) instead of raising.
    """
    from celpy import celtypes

    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(f"expected an integer or a string, got {value!r}")
        return _int(value) if isinstance(value, int) else celtypes.StringType(value)
    kind = schema.get("type")
    if kind is None and schema.get("x-kubernetes-preserve-unknown-fields"):
        return _untyped(value)
    if kind == "object":
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {value!r}")
        out: dict[Any, Any] = {}
        if "properties" in schema:
            for key, sub in schema["properties"].items():
                if value.get(key) is not None:
                    _put(out, celtypes.StringType(key), sub, value[key], lenient)
        elif isinstance(schema.get("additionalProperties"), dict):
            for key, v in value.items():
                _put(out, celtypes.StringType(key), schema["additionalProperties"], v, lenient)
        if root and isinstance(value.get("metadata"), dict):
            meta = {k: value["metadata"][k] for k in ("name", "generateName") if isinstance(value["metadata"].get(k), str)}
            out[celtypes.StringType("metadata")] = celtypes.MapType(
                {celtypes.StringType(k): celtypes.StringType(v) for k, v in meta.items()}
            )
        return celtypes.MapType(out)
    if kind == "array":
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {value!r}")
        items: dict[Any, Any] = {}
        for i, v in enumerate(value):
            _put(items, i, schema.get("items", {}), v, lenient)
        return celtypes.ListType(list(items.values()))
    if kind == "string" and isinstance(value, str):
        return celtypes.StringType(value)
    if kind == "boolean" and isinstance(value, bool):
        return celtypes.BoolType(value)
    if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return _int(value)
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return celtypes.DoubleType(float(value))
    raise TypeError(f"expected {kind}, got {value!r}")


def _untyped(value: Any) -> Any:
    """A value under an untyped node (x-kubernetes-preserve-unknown-fields), typed by what it is."""
    from celpy import celtypes

    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, list):
        return celtypes.ListType([_untyped(v) for v in value])
    if isinstance(value, dict):
        return celtypes.MapType({celtypes.StringType(str(k)): _untyped(v) for k, v in value.items()})
    raise TypeError(f"cannot bind {value!r} in CEL")


def _int(value: int) -> Any:
    """A CEL int; outside int64 (the schema layer reports it) it is a value of the wrong type."""
    from celpy import celtypes

    if not INT64_MIN <= value <= INT64_MAX:
        raise TypeError(f"{value} is outside the 64-bit integer range")
    return celtypes.IntType(value)


def _put(out: dict[Any, Any], key: Any, schema: Schema, value: Any, lenient: bool) -> None:
    try:
        out[key] = to_cel(schema, value, lenient=lenient)
    except TypeError:
        if not lenient:
            raise


def field_path(path: str) -> list[str]:
    """A rule's fieldPath as segments: '.training.globalBatchSize' -> ['training', 'globalBatchSize'],
    ".a['b.c']" -> ['a', 'b.c']."""
    return [m.group(1) or m.group(2) for m in re.finditer(r"\.([A-Za-z0-9_]+)|\['([^']+)'\]", path)]


class RuleError(Exception):
    """A CEL rule that could not be evaluated on a value the schema accepted: a bug in the rule."""


def cel_problems(
    doc: dict[str, Any],
    old: dict[str, Any] | None = None,
    *,
    transitions_only: bool = False,
    schema_errors: Sequence[Problem] = (),
    kind: str = api.KIND,
) -> list[Problem]:
    """Layer 2 on a prepared document; with ``old`` also the transition rules (an update).

    Rules at a node whose subtree has schema errors are skipped when they cannot
    run (a string where a number belongs); anywhere else a rule that cannot run
    raises RuleError: the schema accepted the value, so the rule is wrong.
    """
    problems: list[Problem] = []
    bad = [p.path for p in schema_errors]
    top = crd_schema(kind)
    _walk(top, doc, old, (), problems, transitions_only, bad, root=True, top=top)
    return problems


def _subtree_has(bad: Sequence[str], path: Path, top: Schema) -> bool:
    prefix = schema_path(top, path)
    return any(not prefix or b == prefix or b.startswith(prefix + ".") or b.startswith(prefix + "[") for b in bad)


def _walk(
    schema: Schema,
    value: Any,
    old: Any,
    path: Path,
    problems: list[Problem],
    transitions_only: bool,
    bad: Sequence[str],
    root: bool = False,
    top: Schema | None = None,
) -> None:
    top = top if top is not None else crd_schema()
    if value is None:
        return
    rules = schema.get("x-kubernetes-validations") or []
    if rules:
        activation: dict[str, Any] | None = None
        for rule in rules:
            transition = bool(_OLD_SELF.search(rule["rule"]))
            if (transition and old is None) or (transitions_only and not transition):
                continue
            try:
                if activation is None:
                    lenient = _subtree_has(bad, path, top)
                    activation = {"self": to_cel(schema, value, root=root, lenient=lenient)}
                    if old is not None:
                        activation["oldSelf"] = to_cel(schema, old, root=root, lenient=lenient)
                ok = _evaluate(rule["rule"], activation, path)
            except (RuleError, TypeError) as e:
                if _subtree_has(bad, path, top):
                    continue
                raise RuleError(str(e)) from e
            if not ok:
                message = rule.get("message") or f"failed rule: {rule['rule']}"
                if rule.get("messageExpression"):
                    try:
                        message = str(program(rule["messageExpression"]).evaluate(activation))
                    except Exception:  # k8s falls back to message too
                        pass
                where = [*path, *field_path(rule.get("fieldPath", ""))]
                problems.append(Problem(schema_path(top, where), message, "cel"))
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if value.get(key) is not None:
                old_child = old.get(key) if isinstance(old, dict) else None
                _walk(sub, value[key], old_child, (*path, key), problems, transitions_only, bad, top=top)
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, v in value.items():
            _walk(schema["additionalProperties"], v, None, (*path, key), problems, transitions_only, bad, top=top)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            _walk(schema["items"], v, None, (*path, i), problems, transitions_only, bad, top=top)


def _evaluate(expr: str, activation: dict[str, Any], path: Path) -> bool:
    from celpy import celtypes

    try:
        result = program(expr).evaluate(activation)
    except Exception as e:
        raise RuleError(f"{render_path(path) or '<root>'}: rule {expr!r} failed to evaluate: {e}") from e
    if not isinstance(result, celtypes.BoolType):
        raise RuleError(f"{render_path(path) or '<root>'}: rule {expr!r} returned {result!r}, not a bool")
    return bool(result)
