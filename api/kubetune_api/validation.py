"""Offline validation of FineTuneJob manifests: ``kubetune validate FILE...``.

Three layers, each reporting problems as ``spec.training.globalBatchSize: what
is wrong and what to do``:

1. **schema**: the CRD's openAPIV3Schema checked with jsonschema (Draft 4, as
   the API server does), after the API server's own preparation: null values
   of non-nullable fields pruned, schema defaults applied. Unknown fields are
   reported, as ``kubectl apply`` (strict field validation) does.
2. **cel**: every ``x-kubernetes-validations`` rule evaluated with cel-python
   at its node, on the defaulted object, exactly as admission would. Transition
   rules (those using ``oldSelf``) run only when an old object is given.
3. **model**: the pydantic model (what the trainer enforces) plus checks only
   code can do (S3 bucket names, Hub repo ids, metadata.name present).

A problem already reported at a field path by an earlier layer is not
repeated by a later one.
"""
from __future__ import annotations

import copy
import functools
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from . import spec as api

Path = tuple[str | int, ...]

EXIT_VALID, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


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
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif i in map_keys:
            out += f"[{seg}]"
        else:
            out += f".{seg}" if out else str(seg)
    return out


# ----------------------------------------------------------------- the schema
@functools.lru_cache(maxsize=1)
def crd_schema() -> dict[str, Any]:
    from .crd import openapi_schema

    return openapi_schema()


def _props(schema: dict[str, Any]) -> dict[str, Any]:
    return schema.get("properties") or {}


def _child_schema(schema: dict[str, Any], key: str | int) -> dict[str, Any] | None:
    if isinstance(key, int):
        return schema.get("items")
    if key in _props(schema):
        return _props(schema)[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def prepare(schema: dict[str, Any], value: Any, defaults: bool = True) -> Any:
    """What the API server does before validating: prune nulls of non-nullable fields, apply defaults."""
    value = copy.deepcopy(value)
    _prepare(schema, value, defaults)
    return value


def _prepare(schema: dict[str, Any], value: Any, defaults: bool) -> None:
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        for key in list(value):
            if value[key] is None and key in props and not props[key].get("nullable"):
                del value[key]
        if defaults:
            for key, sub in props.items():
                if key not in value and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
        for key, sub in props.items():
            if value.get(key) is not None:
                _prepare(sub, value[key], defaults)
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for v in value.values():
            _prepare(schema["additionalProperties"], v, defaults)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for v in value:
            _prepare(schema["items"], v, defaults)


# ------------------------------------------------------- layer 1: jsonschema
def _draft4(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD schema node as plain Draft 4 JSON schema (k8s extensions translated)."""
    out = {
        k: v
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") and k not in ("nullable", "default", "description", "properties",
                                                            "additionalProperties", "items")
    }
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = types + ["null"]
    if "properties" in node:
        out["properties"] = {k: _draft4(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _draft4(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        out["items"] = _draft4(node["items"])
    return out


@functools.lru_cache(maxsize=1)
def _schema_validator():
    import jsonschema

    draft4 = _draft4(crd_schema())
    jsonschema.Draft4Validator.check_schema(draft4)
    return jsonschema.Draft4Validator(draft4)


_PATTERN_HINTS = {
    api.QUANTITY_PATTERN: "must be a Kubernetes quantity like 32, 500m or 256Gi",
    api.CHECKPOINT_EVERY_PATTERN: "must be a step count (e.g. 500) or a duration like '90s', '30m' or '2h', above 0",
    api.ZERO_STAGE_PATTERN: "must be 0, 1, 2, 3 or 'auto'",
    api.DNS_LABEL_PATTERN: "must be lowercase letters, digits and '-', starting and ending with a letter or digit",
    api.DNS_SUBDOMAIN_PATTERN: "must be a DNS name: lowercase letters, digits, '-' and '.'",
    api.ENDPOINT_PATTERN: "must be an http:// or https:// URL, e.g. http://minio.minio.svc:9000",
    api.ENV_NAME_PATTERN: "must be a valid environment variable name (letters, digits, '_', '-', '.'; not starting with a digit)",
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _schema_error(err) -> list[Problem]:
    path = list(err.absolute_path)
    inst, kw, arg = err.instance, err.validator, err.validator_value
    where = render_path(path, _map_key_positions(path))
    if kw == "required":
        missing = re.match(r"'(.+)' is a required property", err.message)
        name = missing.group(1) if missing else str(arg)
        return [Problem(render_path(path + [name], _map_key_positions(path)), "required field is missing", "schema")]
    if kw == "additionalProperties" and arg is False:
        known = set(err.schema.get("properties", {}))
        return [
            Problem(
                render_path(path + [k], _map_key_positions(path)),
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
        msg = f"must be of type {want} (got {_type_name(inst)} {inst!r})"
    elif kw in ("minimum", "maximum"):
        exclusive = err.schema.get("exclusiveMinimum" if kw == "minimum" else "exclusiveMaximum")
        op = (">" if exclusive else ">=") if kw == "minimum" else ("<" if exclusive else "<=")
        msg = f"must be {op} {arg} (got {inst!r})"
    elif kw == "minLength":
        msg = "must not be empty" if arg == 1 else f"must be at least {arg} characters long"
    elif kw == "maxLength":
        msg = f"must be at most {arg} characters long (got {len(inst)})"
    elif kw == "pattern":
        msg = f"{_PATTERN_HINTS.get(arg, 'must match ' + arg)} (got {inst!r})"
    elif kw in ("maxItems", "minItems"):
        msg = f"must have {'at most' if kw == 'maxItems' else 'at least'} {arg} items (got {len(inst)})"
    elif kw == "maxProperties":
        msg = f"must have at most {arg} entries (got {len(inst)})"
    else:
        msg = err.message
    return [Problem(where, msg, "schema")]


def schema_problems(doc: dict[str, Any]) -> list[Problem]:
    """Layer 1 on a prepared (pruned, defaulted) document."""
    problems: list[Problem] = []
    for err in sorted(_schema_validator().iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        problems.extend(_schema_error(err))
    return problems


# -------------------------------------------------------------- layer 2: CEL
_OLD_SELF = re.compile(r"\boldSelf\b")


def _heterogeneous_eq(a: Any, b: Any):
    """CEL's equality: values of different types are unequal (cel-python raises instead)."""
    from celpy import celtypes

    try:
        return celtypes.BoolType(bool(a == b))
    except TypeError:
        return celtypes.BoolType(False)


def _heterogeneous_ne(a: Any, b: Any):
    from celpy import celtypes

    return celtypes.BoolType(not _heterogeneous_eq(a, b))


@functools.cache
def _cel_program(expr: str):
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(expr), functions={"_==_": _heterogeneous_eq, "_!=_": _heterogeneous_ne})


def to_cel(schema: dict[str, Any], value: Any, root: bool = False, lenient: bool = False):
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
        return celtypes.IntType(value) if isinstance(value, int) else celtypes.StringType(value)
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {value!r}")
        out = {}
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
        items: dict[int, Any] = {}
        for i, v in enumerate(value):
            _put(items, i, schema.get("items", {}), v, lenient)
        return celtypes.ListType(list(items.values()))
    if kind == "string" and isinstance(value, str):
        return celtypes.StringType(value)
    if kind == "boolean" and isinstance(value, bool):
        return celtypes.BoolType(value)
    if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return celtypes.IntType(value)
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return celtypes.DoubleType(float(value))
    raise TypeError(f"expected {kind}, got {value!r}")


def _put(out: dict, key: Any, schema: dict[str, Any], value: Any, lenient: bool) -> None:
    try:
        out[key] = to_cel(schema, value, lenient=lenient)
    except TypeError:
        if not lenient:
            raise


def _field_path(field_path: str) -> list[str]:
    """'.training.globalBatchSize' or ".a['b.c']" -> ['training', 'globalBatchSize'] / ['a', 'b.c']."""
    return [m.group(1) or m.group(2) for m in re.finditer(r"\.([A-Za-z0-9_]+)|\['([^']+)'\]", field_path)]


class RuleError(Exception):
    """A CEL rule that could not be evaluated on a value the schema accepted: a bug in the rule."""


def cel_problems(
    doc: dict[str, Any],
    old: dict[str, Any] | None = None,
    *,
    transitions_only: bool = False,
    schema_errors: Sequence[Problem] = (),
) -> list[Problem]:
    """Layer 2 on a prepared document; with ``old`` also the transition rules (an update).

    Rules at a node whose subtree has schema errors are skipped when they cannot
    run (a string where a number belongs); anywhere else a rule that cannot run
    raises RuleError: the schema accepted the value, so the rule is wrong.
    """
    problems: list[Problem] = []
    bad = [p.path for p in schema_errors]
    _cel_walk(crd_schema(), doc, old, (), problems, transitions_only, bad, root=True)
    return problems


def _subtree_has(bad: Sequence[str], path: Path) -> bool:
    prefix = render_path(path, _map_key_positions(path))
    return any(not prefix or b == prefix or b.startswith(prefix + ".") or b.startswith(prefix + "[") for b in bad)


def _cel_walk(schema, value, old, path: Path, problems: list[Problem], transitions_only: bool,
              bad: Sequence[str], root: bool = False) -> None:
    if value is None:
        return
    rules = schema.get("x-kubernetes-validations") or []
    if rules:
        activation = None
        for rule in rules:
            transition = bool(_OLD_SELF.search(rule["rule"]))
            if (transition and old is None) or (transitions_only and not transition):
                continue
            try:
                if activation is None:
                    lenient = _subtree_has(bad, path)
                    activation = {"self": to_cel(schema, value, root=root, lenient=lenient)}
                    if old is not None:
                        activation["oldSelf"] = to_cel(schema, old, root=root, lenient=lenient)
                ok = _evaluate(rule["rule"], activation, path)
            except (RuleError, TypeError) as e:
                if _subtree_has(bad, path):
                    continue
                raise RuleError(str(e)) from e
            if not ok:
                message = rule.get("message") or f"failed rule: {rule['rule']}"
                if rule.get("messageExpression"):
                    try:
                        message = str(_cel_program(rule["messageExpression"]).evaluate(activation))
                    except Exception:  # k8s falls back to message too
                        pass
                where = list(path) + _field_path(rule.get("fieldPath", ""))
                problems.append(Problem(render_path(where, _map_key_positions(where)), message, "cel"))
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if value.get(key) is not None:
                old_child = old.get(key) if isinstance(old, dict) else None
                _cel_walk(sub, value[key], old_child, path + (key,), problems, transitions_only, bad)
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, v in value.items():
            _cel_walk(schema["additionalProperties"], v, None, path + (key,), problems, transitions_only, bad)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            _cel_walk(schema["items"], v, None, path + (i,), problems, transitions_only, bad)


def _map_key_positions(path: Sequence[str | int]) -> frozenset[int]:
    """Positions in a path that are keys of a map (additionalProperties) rather than field names."""
    node, keys = crd_schema(), set()
    for i, seg in enumerate(path):
        if node is None:
            break
        if isinstance(seg, str) and seg not in _props(node) and isinstance(node.get("additionalProperties"), dict):
            keys.add(i)
        node = _child_schema(node, seg)
    return frozenset(keys)


def _evaluate(expr: str, activation: dict[str, Any], path: Path) -> bool:
    from celpy import celtypes

    try:
        result = _cel_program(expr).evaluate(activation)
    except Exception as e:
        raise RuleError(f"{render_path(path) or '<root>'}: rule {expr!r} failed to evaluate: {e}") from e
    if not isinstance(result, celtypes.BoolType):
        raise RuleError(f"{render_path(path) or '<root>'}: rule {expr!r} returned {result!r}, not a bool")
    return bool(result)


# ---------------------------------------------------------- layer 3: pydantic
_REL_PATH = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*): (.+)$", re.S)


def _pydantic_problem(err: dict[str, Any], doc: dict[str, Any]) -> Problem:
    node: dict[str, Any] | None = crd_schema()
    value: Any = doc
    path: list[str | int] = []
    map_keys: set[int] = set()
    for seg in err["loc"]:
        if node is None:
            break
        if isinstance(seg, int) and isinstance(value, list):
            path.append(seg)
            node, value = node.get("items"), (value[seg] if seg < len(value) else None)
        elif isinstance(seg, str) and seg in _props(node):
            path.append(seg)
            node, value = _props(node)[seg], (value.get(seg) if isinstance(value, dict) else None)
        elif isinstance(seg, str) and isinstance(value, dict) and seg in value:
            if isinstance(node.get("additionalProperties"), dict):
                map_keys.add(len(path))
                node = node["additionalProperties"]
            else:  # an unknown field
                node = None
            path.append(seg)
            value = value.get(seg)
        # anything else is a pydantic union/validator tag, not a field
    message = err["msg"]
    message = re.sub(r"^(Value error|Assertion failed), ", "", message)
    rel = _REL_PATH.match(message)
    if rel and err["type"] == "value_error":
        path.extend(rel.group(1).split("."))
        message = rel.group(2)
    if err["type"] == "missing":
        message = "required field is missing"
    elif err["type"] == "extra_forbidden":
        message = "unknown field"
    return Problem(render_path(path, frozenset(map_keys)), message, "model")


def model_problems(doc: dict[str, Any]) -> list[Problem]:
    """Layer 3a: the pydantic model on a pruned (not defaulted) document."""
    from pydantic import ValidationError

    try:
        api.load_job(doc)
    except ValidationError as e:
        return [_pydantic_problem(err, doc) for err in e.errors()]
    return []


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HUB_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _uri_problem(uri: Any, where: str) -> Problem | None:
    if not isinstance(uri, str):
        return None
    if uri.startswith("s3://"):
        bucket = uri[len("s3://"):].split("/", 1)[0]
        if not bucket:
            return Problem(where, f"{uri!r} has no bucket; write s3://bucket/prefix", "model")
        if not _BUCKET.match(bucket) or ".." in bucket or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket):
            return Problem(
                where,
                f"{bucket!r} is not a valid S3 bucket name (3-63 characters: lowercase letters, digits, '.', '-')",
                "model",
            )
    elif uri.startswith("hf://"):
        repo = uri[len("hf://"):]
        if not _HUB_REPO.match(repo):
            return Problem(where, f"{repo!r} is not a Hugging Face repo id; write hf://org/name", "model")
    elif uri.startswith("file://") and not uri[len("file://"):]:
        return Problem(where, "file:// needs a path, e.g. file:///data/train.jsonl", "model")
    return None


def code_problems(doc: dict[str, Any]) -> list[Problem]:
    """Layer 3b: what neither the schema nor CEL can express."""
    problems: list[Problem] = []
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    if not meta.get("name") and not meta.get("generateName"):
        problems.append(Problem("metadata.name", "required: give the job a name (or metadata.generateName)", "model"))
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}

    def get(*keys: str) -> Any:
        node: Any = spec
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    for keys in (("model", "source"), ("dataset", "train"), ("dataset", "eval"), ("output", "uri")):
        p = _uri_problem(get(*keys), "spec." + ".".join(keys))
        if p:
            problems.append(p)
    return problems


def warnings(doc: dict[str, Any]) -> list[Problem]:
    """Valid but probably not what was meant; printed, never failing. Call only on a valid manifest."""
    spec = api.load_job(doc).spec
    out: list[Problem] = []
    t, o, d, st = spec.training, spec.output, spec.distributed, spec.storage
    every = o.checkpoint_every_steps()
    if t.max_steps is not None and every is not None and every >= t.max_steps:
        out.append(Problem(
            "spec.output.checkpointEvery",
            f"{every} steps >= training.maxSteps ({t.max_steps}): no checkpoint before the end, so a failure or "
            "preemption restarts from scratch; checkpoint more often",
            "warning",
        ))
    if t.max_steps is not None and t.eval_every is not None and t.eval_every > t.max_steps:
        out.append(Problem("spec.training.evalEvery", f"{t.eval_every} > training.maxSteps ({t.max_steps}): "
                           "evaluation runs only at the end", "warning"))
    if spec.method.type == "qlora" and d.gpus_per_node == 0:
        out.append(Problem("spec.method.type", "qlora on CPU (gpusPerNode 0) runs bitsandbytes' slow CPU path: "
                           "fine for a wiring test, not for real training", "warning"))
    uris = [spec.model.source, spec.dataset.train, spec.dataset.eval or "", o.uri]
    uses_s3 = any(u.startswith("s3://") for u in uris)
    if not uses_s3 and (st.endpoint or st.secret_ref):
        out.append(Problem("spec.storage", "S3 settings are set but no URI uses s3://; they have no effect", "warning"))
    if uses_s3 and st.secret_ref is None and spec.service_account_name is None:
        out.append(Problem(
            "spec.storage.secretRef",
            "not set: S3 credentials must come from the pods' cloud identity (IRSA, workload identity); "
            "set storage.secretRef or serviceAccountName unless the nodes provide one",
            "warning",
        ))
    return out


# ------------------------------------------------------------------ together
def _related(a: str, b: str) -> bool:
    """Same field, or one inside the other (spec.resources / spec.resources.limits[memory])."""
    return a == b or any(x.startswith(y) and x[len(y)] in ".[" for x, y in ((a, b), (b, a)) if len(x) > len(y))


def _merge(schema: Iterable[Problem], cel: Iterable[Problem], model: Iterable[Problem]) -> list[Problem]:
    """One line per problem: CEL adds what the schema did not say about a path; the model layer
    (pydantic, which stops at a model's first field error) adds only paths unrelated to those."""
    out = list(dict.fromkeys(schema))
    paths = {p.path for p in out}
    out += [p for p in dict.fromkeys(cel) if p.path not in paths]
    reported = [p.path for p in out]
    out += [p for p in dict.fromkeys(model) if not any(_related(p.path, r) for r in reported)]
    return out


def validate_manifest(doc: Any) -> list[Problem]:
    """All problems of one FineTuneJob document (an empty list: valid)."""
    if not isinstance(doc, dict):
        return [Problem("", f"a manifest must be a mapping, not {_type_name(doc)}", "schema")]
    schema = crd_schema()
    pruned = prepare(schema, doc, defaults=False)
    defaulted = prepare(schema, doc, defaults=True)
    structural = schema_problems(defaulted)
    rules = cel_problems(defaulted, schema_errors=structural)
    return _merge(structural, rules, model_problems(pruned) + code_problems(pruned))


def validate_update(old: dict[str, Any], new: dict[str, Any]) -> list[Problem]:
    """Problems of updating ``old`` to ``new`` (all rules, transition rules included)."""
    schema = crd_schema()
    new_d, old_d = prepare(schema, new), prepare(schema, old)
    structural = schema_problems(new_d)
    return _merge(structural, cel_problems(new_d, old_d, schema_errors=structural), [])


class Unreadable(Exception):
    pass


def load_documents(path: str) -> list[Any]:
    """The YAML documents of a file ('-': standard input, e.g. from `helm template`)."""
    try:
        if path == "-":
            return [d for d in yaml.safe_load_all(sys.stdin) if d is not None]
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except OSError as e:
        raise Unreadable(f"cannot read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise Unreadable(f"not valid YAML: {' '.join(str(e).split())}") from e


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
                     if isinstance(item, dict) and item.get("kind") == api.KIND]
        elif not isinstance(d, dict) or d.get("kind") == api.KIND:
            jobs.append((where, d))
    if not jobs:
        return EXIT_INVALID, [f"{path}: no {api.KIND} document found (kind: {api.KIND})"]
    lines: list[str] = []
    notes: list[str] = []
    for where, doc in jobs:
        problems = validate_manifest(doc)
        lines.extend(f"{where}: {p}" for p in problems)
        if not problems:
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
