"""Manifest surfaces: ``kubetune validate``, ``kubetune render``, ``kubetune run``'s
reading and the operator's parse_job, fed FineTuneJobs generated from the
CRD's own schema and then broken in the ways people and programs break them.

The instances come from :func:`from_crd`, a small generator over the CRD's
structural schema (hypothesis-jsonschema 0.23.1 fails on object schemas with
Hypothesis 6.170: ``'many' object has no attribute 'more'``).
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
from argparse import Namespace
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from kubetune_api import common
from kubetune_api import spec as api
from kubetune_api.contract import MAX_JOB_NAME_LENGTH
from kubetune_api.validation import (
    cel_problems,
    crd_schema,
    model_problems,
    prepare,
    schema_problems,
    validate_file,
    validate_manifest,
)
from support.fuzz import Surface
from support.manifests import finetunejob

INT64 = 2**63

# The valid one-GPU LoRA job the API tests mutate, from the one manifest factory.
BASE: dict[str, Any] = finetunejob("fuzz-job", preset="single-gpu")
REQUIRED_SECTIONS = ("model", "dataset", "training", "output")


# --------------------------------------------------------- valid instances
def _string(node: dict[str, Any]) -> st.SearchStrategy[str]:
    longest = min(node.get("maxLength", 40), 40)
    if "pattern" in node:
        return st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: len(s) <= node.get("maxLength", 10**6))
    return st.text(min_size=node.get("minLength", 0), max_size=max(longest, node.get("minLength", 0)))


def _integer(node: dict[str, Any]) -> st.SearchStrategy[int]:
    low = node.get("minimum", -INT64)
    high = node.get("maximum", INT64 - 1)
    return st.integers(low + (1 if node.get("exclusiveMinimum") else 0), high - (1 if node.get("exclusiveMaximum") else 0))


def from_crd(node: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values the CRD schema ``node`` accepts (before CEL rules), small lists and maps."""
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if node.get("x-kubernetes-int-or-string"):
        strings = _string(node)
        return st.one_of(_integer(node), strings) if "minimum" in node else strings
    if node.get("x-kubernetes-preserve-unknown-fields"):
        leaf = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.text(max_size=8))
        return st.dictionaries(st.text(max_size=8), st.recursive(leaf, lambda c: st.lists(c, max_size=2)
                                                                    | st.dictionaries(st.text(max_size=5), c, max_size=2),
                                                                    max_leaves=4), max_size=2)
    kind = node.get("type")
    if kind == "string":
        return _string(node)
    if kind == "integer":
        return _integer(node)
    if kind == "number":
        return st.floats(node.get("minimum"), node.get("maximum"), exclude_min=bool(node.get("exclusiveMinimum")),
                         exclude_max=bool(node.get("exclusiveMaximum")), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        item = from_crd(node["items"], depth + 1)
        keys = node.get("x-kubernetes-list-map-keys")
        return st.lists(item, min_size=node.get("minItems", 0), max_size=min(node.get("maxItems", 3), 3),
                        unique_by=(lambda x: tuple(x.get(k) for k in keys)) if keys else None)
    if kind == "object" and "properties" in node:
        required = set(node.get("required", ()))
        fields = {k: from_crd(v, depth + 1) for k, v in node["properties"].items()}
        return st.fixed_dictionaries({k: v for k, v in fields.items() if k in required},
                                     optional={k: v for k, v in fields.items() if k not in required})
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return st.dictionaries(st.text(max_size=12), from_crd(node["additionalProperties"], depth + 1),
                               max_size=min(node.get("maxProperties", 3), 3))
    return st.just({})


def _job(spec: dict[str, Any], name: str = "fuzz-job") -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}


names = st.from_regex(common.JOB_NAME_PATTERN, fullmatch=True).filter(lambda s: len(s) <= MAX_JOB_NAME_LENGTH)
generated_jobs = st.builds(_job, st.deferred(lambda: from_crd(crd_schema()["properties"]["spec"])), names)


def check_layers_agree(doc: dict[str, Any]) -> None:
    """An instance of the schema: CEL and pydantic agree on it, and validate's verdict is the trainer's."""
    schema = crd_schema()
    prepared = prepare(schema, doc)
    structural = schema_problems(prepared)
    assert structural == [], f"the generator made a schema-invalid instance: {structural}"
    cel = cel_problems(prepared)
    model = model_problems(prepare(schema, doc, defaults=False))
    assert bool(cel) == bool(model), f"CEL and pydantic disagree:\n  cel: {cel}\n  pydantic: {model}"
    _check_verdict(doc)


def _check_verdict(doc: Any) -> list[Any]:
    """validate never raises; it passes a document exactly when the trainer's parser does, and names fields."""
    problems = validate_manifest(doc)
    assert all(isinstance(p.message, str) and p.message for p in problems), problems
    if isinstance(doc, dict):
        assert all(p.path for p in problems), f"a problem without a field path: {problems}"
    try:
        api.load_job(doc)  # what the trainer and `kubetune run` enforce
        trainer_ok = True
    except Exception as e:  # pydantic's ValidationError only
        assert type(e).__name__ == "ValidationError", repr(e)
        trainer_ok = False
    if not trainer_ok:
        assert problems, "the trainer refuses what `kubetune validate` accepts"
    return problems


# ---------------------------------------------------------------- mutations
def _nested(depth: int) -> Any:
    value: Any = "deep"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


wild_values = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.sampled_from([INT64, -INT64 - 1, 10**20, -(10**30), 2**64 + 1]),
    st.floats(), st.sampled_from([float("inf"), float("-inf"), 1e308, -0.0]),
    st.text(max_size=30), st.text(st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "So", "Lo"]), max_size=12),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.integers(20, 80).map(_nested),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_jobs(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(draw(st.one_of(st.just(BASE), generated_jobs)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        *parents, last = path
        node = doc
        for p in parents:
            node = node[p]
        op = draw(st.sampled_from(["set", "set", "delete", "unknown", "empty"]))
        if op == "set":
            node[last] = draw(wild_values)
        elif op == "delete":
            del node[last]
        elif op == "unknown" and isinstance(node, dict):
            node[draw(st.text(min_size=1, max_size=10))] = draw(wild_values)
        else:
            node[last] = draw(st.sampled_from([{}, [], "", None, 0]))
        if not isinstance(doc, dict):
            break
    return doc


def check_mutated(doc: dict[str, Any]) -> None:
    _check_verdict(doc)
    _check_operator_and_run(doc)


def _check_operator_and_run(doc: Any) -> None:
    from kubetune_operator import builders
    from kubetune_operator.localrun.manifest import RunError
    from kubetune_operator.localrun.manifest import validate_manifest as run_parse

    for parse, refusal in ((builders.parse_runnable_job, builders.InvalidJob), (run_parse, RunError)):
        try:
            parse(doc)
        except refusal as e:
            assert str(e).strip(), f"{parse.__module__}: an empty refusal"


@st.composite
def emptied_sections(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A valid job with required sections removed, or an empty spec."""
    doc = copy.deepcopy(BASE)
    gone = tuple(draw(st.lists(st.sampled_from(REQUIRED_SECTIONS), min_size=1, unique=True)))
    for section in gone:
        del doc["spec"][section]
    if len(gone) == len(REQUIRED_SECTIONS) and draw(st.booleans()):
        doc["spec"] = {}
    return doc, tuple(s for s in REQUIRED_SECTIONS if s not in doc["spec"])


def check_no_follow_on_errors(case: tuple[dict[str, Any], tuple[str, ...]]) -> None:
    """A missing section is reported as missing, and nothing about fields the user did not write."""
    doc, gone = case
    problems = validate_manifest(doc)
    assert sorted(p.path for p in problems) == sorted(f"spec.{s}" for s in gone), problems
    assert all(p.message == "required field is missing" for p in problems), problems


# -------------------------------------------------------------- files
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


@st.composite
def manifest_files(draw: st.DrawFn) -> bytes:
    """The bytes of a manifest file: YAML of valid or broken jobs, then damaged as bytes."""
    docs = copy.deepcopy(draw(st.lists(st.one_of(st.just(BASE), mutated_jobs()), min_size=1, max_size=3)))
    if draw(st.booleans()):  # shared objects: safe_dump writes anchors and aliases
        shared = docs[0]["spec"].get("model") if isinstance(docs[0].get("spec"), dict) else None
        for d in docs[1:]:
            if isinstance(d.get("spec"), dict) and shared is not None:
                d["spec"]["model"] = shared
    text = yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=draw(st.booleans()))
    data = text.encode("utf-8")
    damage = draw(st.sampled_from(["none", "none", "bytes", "bom", "truncate", "laughs", "tabs", "other-kind"]))
    if damage == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    elif damage == "bom":
        data = b"\xef\xbb\xbf" + data
    elif damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "laughs":
        data = BILLION_LAUGHS.encode() + b"---\n" + data
    elif damage == "tabs":
        data = data.replace(b"  ", b"\t", 1)
    elif damage == "other-kind":
        data = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n" + data
    return data


def check_file(data: bytes) -> None:
    """`kubetune validate`, `kubetune render` and `kubetune run`'s reader on one file: a clear answer each."""
    from kubetune_operator import render
    from kubetune_operator.localrun.manifest import RunError, load_manifest

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "job.yaml")
        with open(path, "wb") as f:
            f.write(data)
        rc, lines = validate_file(path)
        assert rc in (0, 1, 2), rc
        assert lines if rc else True
        assert all(line.startswith(path) for line in lines), lines

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = render.main(Namespace(file=path, namespace=None, attempt=1))
        assert code in (0, 1, 2), code
        if code:
            assert err.getvalue().startswith("kubetune: error: "), err.getvalue()

        try:
            doc = load_manifest(path, cwd=Path(tmp))
        except RunError as e:
            assert str(e).strip()
        else:
            _check_operator_and_run(doc)


SURFACES = [
    Surface("manifest: generated from the CRD, layers agree", generated_jobs, check_layers_agree, examples=40),
    Surface("manifest: mutated (types, huge numbers, nesting, unicode)", mutated_jobs(), check_mutated, examples=60),
    Surface("manifest: missing sections, no follow-on errors", emptied_sections(), check_no_follow_on_errors,
            examples=20),
    Surface("manifest file: validate, render, run (bytes, aliases, documents)", manifest_files(), check_file,
            examples=40),
]
