"""Layer 1: the CRD's openAPIV3Schema checked with jsonschema (Draft 4, as the
API server does), after the API server's own preparation: null values of
non-nullable fields pruned, schema defaults applied. Unknown fields are
reported, as ``kubectl apply`` (strict field validation) does.
"""
from __future__ import annotations

import copy
import functools
import re
from typing import Any

from .. import common
from .. import spec as api
from .problems import Problem, Schema, props, schema_path, type_name


@functools.lru_cache(maxsize=2)
def crd_schema(kind: str = api.KIND) -> Schema:
    """The openAPIV3Schema of the generated CRD of ``kind`` (FineTuneJob or FineTuneSweep)."""
    from ..crd import openapi_schema

    return openapi_schema(kind)


def prepare(schema: Schema, value: Any, defaults: bool = True) -> Any:
    """What the API server does before validating: prune nulls of non-nullable fields, apply defaults."""
    value = copy.deepcopy(value)
    _prepare(schema, value, defaults)
    return value


def _prepare(schema: Schema, value: Any, defaults: bool) -> None:
    if isinstance(value, dict) and "properties" in schema:
        fields = schema["properties"]
        for key in list(value):
            if value[key] is None and key in fields and not fields[key].get("nullable"):
                del value[key]
        if defaults:
            for key, sub in fields.items():
                if key not in value and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
        for key, sub in fields.items():
            if value.get(key) is not None:
                _prepare(sub, value[key], defaults)
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for v in value.values():
            _prepare(schema["additionalProperties"], v, defaults)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for v in value:
            _prepare(schema["items"], v, defaults)


def draft4(node: Schema) -> Schema:
    """A CRD schema node as plain Draft 4 JSON schema (k8s extensions translated)."""
    out = {
        k: v
        for k, v in node.items()
        if not k.startswith("x-kubernetes-")
        and k not in ("nullable", "default", "description", "properties", "additionalProperties", "items")
    }
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = types + ["null"]
    if "properties" in node:
        out["properties"] = {k: draft4(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = draft4(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        out["items"] = draft4(node["items"])
    return out


@functools.lru_cache(maxsize=2)
def _validator(kind: str) -> Any:
    import jsonschema

    schema = draft4(crd_schema(kind))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


PATTERN_HINTS = {
    common.QUANTITY_PATTERN: "must be a Kubernetes quantity like 32, 500m or 256Gi",
    common.CHECKPOINT_EVERY_PATTERN: "must be a step count (e.g. 500) or a duration like '90s', '30m' or '2h', above 0",
    common.ZERO_STAGE_PATTERN: "must be 0, 1, 2, 3 or 'auto'",
    common.DNS_LABEL_PATTERN: "must be lowercase letters, digits and '-', starting and ending with a letter or digit",
    common.DNS_SUBDOMAIN_PATTERN: "must be a DNS name: lowercase letters, digits, '-' and '.'",
    common.ENDPOINT_PATTERN: "must be an http:// or https:// URL, e.g. http://minio.minio.svc:9000",
    common.ENV_NAME_PATTERN: (
        "must be a valid environment variable name (letters, digits, '_', '-', '.'; not starting with a digit)"
    ),
}


def _problems(err: Any, kind: str) -> list[Problem]:
    """The Problems of one jsonschema ValidationError."""
    schema = crd_schema(kind)
    path = list(err.absolute_path)
    inst, kw, arg = err.instance, err.validator, err.validator_value
    where = schema_path(schema, path)
    if kw == "required":
        missing = re.match(r"'(.+)' is a required property", err.message)
        name = missing.group(1) if missing else str(arg)
        return [Problem(schema_path(schema, [*path, name]), "required field is missing", "schema")]
    if kw == "additionalProperties" and arg is False:
        known = set(props(err.schema))
        return [
            Problem(
                schema_path(schema, [*path, k]),
                f"unknown field (known fields here: {', '.join(sorted(known))})",
                "schema",
            )
            for k in inst
            if k not in known
        ]
    if kw == "enum":
        msg = f"must be one of {', '.join(repr(a) for a in arg)} (got {inst!r})"
    elif kw == "type":
        want = " or ".join(arg) if isinstance(arg, list) else arg
        msg = f"must be of type {want} (got {type_name(inst)} {inst!r})"
    elif kw in ("minimum", "maximum"):
        exclusive = err.schema.get("exclusiveMinimum" if kw == "minimum" else "exclusiveMaximum")
        op = (">" if exclusive else ">=") if kw == "minimum" else ("<" if exclusive else "<=")
        msg = f"must be {op} {arg} (got {inst!r})"
    elif kw == "minLength":
        msg = "must not be empty" if arg == 1 else f"must be at least {arg} characters long"
    elif kw == "maxLength":
        msg = f"must be at most {arg} characters long (got {len(inst)})"
    elif kw == "pattern":
        msg = f"{PATTERN_HINTS.get(arg, 'must match ' + arg)} (got {inst!r})"
    elif kw in ("maxItems", "minItems"):
        msg = f"must have {'at most' if kw == 'maxItems' else 'at least'} {arg} items (got {len(inst)})"
    elif kw == "maxProperties":
        msg = f"must have at most {arg} entries (got {len(inst)})"
    else:
        msg = err.message
    return [Problem(where, msg, "schema")]


def schema_problems(doc: dict[str, Any], kind: str = api.KIND) -> list[Problem]:
    """Layer 1 on a prepared (pruned, defaulted) document."""
    problems: list[Problem] = []
    for err in sorted(_validator(kind).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        problems.extend(_problems(err, kind))
    reported = {p.path for p in problems}
    problems += [p for p in _int64_problems(doc, (), crd_schema(kind)) if p.path not in reported]
    return problems


# Kubernetes integers are int64: the API server refuses a number outside.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _int64_problems(value: Any, path: tuple[str | int, ...], schema: Schema) -> list[Problem]:
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        return [Problem(schema_path(schema, path), f"must fit a 64-bit integer (got {value})", "schema")]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [p for key, v in items for p in _int64_problems(v, (*path, key), schema)]
