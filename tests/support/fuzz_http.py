"""HTTP surface: ``kubetune api`` (the OpenAI-compatible fine-tuning API) fuzzed from its own OpenAPI schema.

Schemathesis turns the schema the server publishes (``/v1/openapi.json``)
into requests, valid ones and ones that break the schema (wrong types,
missing and extra fields, odd path segments, headers, multipart parts).
Each example is a short sequence of such requests against a fresh local
backend (in-process, over ASGI; no job is ever launched) that already holds
a training file and jobs that are queued, paused and cancelled, so the
requests reach past "not found": a path id is swapped for one of those with
some probability, a job-creation body for one that names the known model
and file, with a generated ``kubetune`` spec fragment, and an upload's bytes
for JSON lines of the data surface's rows (tests/support/fuzz_data.py).

The answer must never be a 5xx: a 2xx, or a 4xx in the API's error shape
with a message (what the ``openai`` client shows the caller).
"""
from __future__ import annotations

import functools
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from kubetune_operator.openai_api.mapping import CREATE_FIELDS
from support import fuzz_data
from support.fuzz import Surface

# Routine noise at fuzzing rates: python-multipart warns of each bad part header, datasets of each unreadable file.
for _name in ("python_multipart", "datasets"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)

ROLES = ("file", "queued", "paused", "cancelled")
TRAIN_ROWS = b'{"prompt": "two plus three is", "completion": " five"}\n{"prompt": "the cat sat on", "completion": " the mat"}\n'
GOOD_ROWS = [  # one per format
    {"text": "the cat sat on the mat"},
    {"prompt": "two plus three is", "completion": " five"},
    {"instruction": "say hi", "input": "", "output": "hi"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
]
# A small local template, as `kubetune api --job-template` gives one (tests/openai_api/openai_helpers.py).
TEMPLATE = {
    "dataset": {"maxSeqLength": 64, "packing": False},
    "method": {"type": "lora", "lora": {"r": 8}},
    "training": {"precision": "fp32", "gradientCheckpointing": False, "microBatchSize": 4},
    "distributed": {"nodes": 1, "gpusPerNode": 0},
}


@functools.cache
def schema() -> Any:
    """The server's published schema, loaded by Schemathesis (the same for every backend)."""
    import schemathesis
    from fastapi.testclient import TestClient

    from kubetune_operator.openai_api.server import create_app

    published = TestClient(create_app(_NoBackend())).get("/v1/openapi.json").json()
    return schemathesis.openapi.from_dict(published)


class _NoBackend:
    """Only for reading the schema: no route is called."""


@functools.cache
def spec_sections() -> tuple[str, ...]:
    from kubetune_api.spec import FineTuneJobSpec

    return tuple(sorted(f.alias or name for name, f in FineTuneJobSpec.model_fields.items()))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def kubetune_fragments(draw: st.DrawFn) -> dict[str, Any]:
    """A spec fragment over the real section names: sections of the wrong type, unknown or misspelt fields."""
    sections = spec_sections()
    fragment: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(sections), max_size=3, unique=True)):
        fragment[section] = draw(st.one_of(json_values, st.dictionaries(st.text(max_size=16), json_values, max_size=3)))
    return fragment


# Ids of the right prefix that no client of ours makes: control characters, dots, very long, not ASCII.
odd_ids = st.builds(lambda prefix, rest: "!" + prefix + rest, st.sampled_from(["file-", "ftjob-", ""]),
                    st.one_of(st.text(st.characters(codec="utf-8", exclude_characters="/?#"), max_size=12),
                              st.sampled_from(["\x00", "..", "a" * 300, "%2e%2e", " "])))


@dataclass
class Request:
    case: Any  # schemathesis.Case
    roles: dict[str, str]  # path parameter -> the known object whose id replaces it, or an odd id ("!" + the id)
    known_body: bool  # a job-creation body: model and files replaced by the known ones
    fragment: dict[str, Any] | None
    upload: bytes | None  # an upload's file replaced by JSON lines (rows of the data surface)


@st.composite
def requests_(draw: st.DrawFn) -> Request:
    import schemathesis

    mode = draw(st.sampled_from([schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]))
    case = draw(schema().as_strategy(mode))
    roles = {name: draw(st.one_of(st.sampled_from(ROLES), odd_ids)) for name in (case.path_parameters or {}) if draw(st.booleans())}
    creating = case.operation.label == "POST /v1/fine_tuning/jobs" and isinstance(case.body, dict)
    known = creating and draw(st.integers(0, 3)) > 0
    fragment = draw(st.one_of(st.none(), kubetune_fragments(), kubetune_fragments())) if known else None
    upload = None
    if case.operation.label == "POST /v1/files" and isinstance(case.body, dict) and draw(st.booleans()):
        good = st.builds(lambda row, n: [row] * n, st.sampled_from(GOOD_ROWS), st.integers(1, 3))
        lines = draw(st.one_of(good, good, fuzz_data.rows))
        upload = "\n".join(json.dumps(line) for line in lines).encode() + draw(st.sampled_from([b"\n", b"", b"\n{", b"\xff"]))
    return Request(case, roles, known, fragment, upload)


sequences = st.lists(requests_(), min_size=1, max_size=4)


@dataclass
class World:
    app: Any
    ids: dict[str, str]
    backend: Any


def world(root: Path, *, api_key: str | None = None) -> World:
    """A fresh local backend (not started: jobs stay where they are put) holding one file and three jobs."""
    from kubetune_operator.openai_api.local_backend import LocalBackend
    from kubetune_operator.openai_api.server import Caller, create_app

    (root / "model").mkdir()
    backend = LocalBackend(root / "state", catalogue={"tiny": str(root / "model")}, template=TEMPLATE)
    caller = Caller(token=api_key, project=None)
    ids = {"file": backend.create_file(caller, "train.jsonl", "fine-tune", TRAIN_ROWS)["id"]}
    body = {"model": "tiny", "training_file": ids["file"], "hyperparameters": {"n_epochs": 1}}
    for role in ("queued", "paused", "cancelled"):
        ids[role] = backend.create_job(caller, body)["id"]
    backend.pause_job(caller, ids["paused"])
    backend.cancel_job(caller, ids["cancelled"])
    return World(create_app(backend, api_key=api_key), ids, backend)


def _describe(case: Any) -> str:
    return (f"{case.method} {case.formatted_path} query={case.query!r} headers={case.headers!r} "
            f"body={case.body!r:.600}")


def _check_answer(status: int, content: bytes, what: str) -> None:
    if status >= 500:
        raise AssertionError(f"{status} for {what}: {content[:500]!r}")
    if status >= 400:
        try:
            error = json.loads(content)["error"]
        except (ValueError, KeyError, TypeError):
            raise AssertionError(f"{status} not in the API's error shape for {what}: {content[:300]!r}") from None
        if not isinstance(error.get("message"), str) or not error["message"]:
            raise AssertionError(f"{status} without a message for {what}: {content[:300]!r}")


def run_sequence(requests: list[Request], *, api_key: str | None = None) -> list[tuple[str, int]]:
    """Send the requests in order to a fresh world; fail on any 5xx or on a 4xx not in the API's error shape."""
    from requests.exceptions import InvalidHeader

    answers = []
    with tempfile.TemporaryDirectory(prefix="kubetune-fuzz-http-") as tmp:
        w = world(Path(tmp), api_key=api_key)
        for req in requests:
            case = req.case
            for name, role in req.roles.items():
                case.path_parameters[name] = role[1:] if role.startswith("!") else w.ids[role]
            if req.known_body:
                case.body = {**case.body, "model": "tiny", "training_file": w.ids["file"]}
                if req.fragment is not None:
                    case.body["kubetune"] = req.fragment
            if req.upload is not None:
                case.body = {**case.body, "file": req.upload}
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
            try:
                response = case.call(app=w.app, headers=headers)
            except InvalidHeader:
                continue  # a header value no HTTP client sends (CR/LF in it): refused before it leaves
            answers.append((case.operation.label, response.status_code))
            _check_answer(response.status_code, response.content, _describe(case))
    return answers


def check_sequence(requests: list[Request]) -> None:
    run_sequence(requests)


def check_sequence_with_key(requests: list[Request]) -> None:
    run_sequence(requests, api_key="sk-fuzz")


# Job-creation bodies as bytes, beyond what a JSON encoder of the schema's values sends: \u escapes of lone
# surrogates, nesting deeper than any request needs, bytes that are not JSON. "@file" becomes the known file's id.
surrogate_text = st.text(st.characters(codec=None, categories=["Cs", "Cc", "Lo"]), min_size=1, max_size=4)
raw_values = st.recursive(st.one_of(json_values, surrogate_text),
                          lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=8), inner, max_size=2)),
                          max_leaves=6)


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["field", "deep", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    body: dict[str, Any] = {"model": "tiny", "training_file": "@file"}
    field = draw(st.sampled_from(sorted(CREATE_FIELDS)))
    if kind == "deep":
        depth = draw(st.integers(1, 5000))
        value: Any = draw(st.sampled_from([[], {}, 1]))
        wrap = draw(st.sampled_from(["list", "dict"]))
        for _ in range(min(depth, 200)):
            value = [value] if wrap == "list" else {"a": value}
        text = json.dumps(value)
        if depth > 200:  # deeper than json.dumps can write: by hand
            opening, closing = ("[", "]") if wrap == "list" else ('{"a":', "}")
            text = opening * (depth - 200) + text + closing * (depth - 200)
        return json.dumps({**body, field: "@value"}).replace('"@value"', text).encode()
    body[field] = draw(raw_values)
    return json.dumps(body).encode()  # ensure_ascii: a lone surrogate is written as its \u escape


def check_raw_bodies(bodies: list[bytes]) -> None:
    from fastapi.testclient import TestClient

    with tempfile.TemporaryDirectory(prefix="kubetune-fuzz-http-") as tmp:
        w = world(Path(tmp))
        client = TestClient(w.app, raise_server_exceptions=False)
        for body in bodies:
            body = body.replace(b'"@file"', json.dumps(w.ids["file"]).encode())
            r = client.post("/v1/fine_tuning/jobs", content=body, headers={"content-type": "application/json"})
            _check_answer(r.status_code, r.content, f"POST /v1/fine_tuning/jobs body={body[:300]!r}")


SURFACES = [
    Surface("http: kubetune api from its OpenAPI schema (local backend)", sequences, check_sequence, examples=40),
    Surface("http: kubetune api with --api-key", sequences, check_sequence_with_key, examples=10),
    Surface("http: raw job-creation bodies (escapes, nesting, bytes)", st.lists(raw_bodies(), min_size=1, max_size=4),
            check_raw_bodies, examples=20),
]
