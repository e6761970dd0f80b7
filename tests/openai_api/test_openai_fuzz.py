"""`kubetune api` never answers 5xx: Schemathesis fuzzing from the server's own OpenAPI schema (surfaces in
tests/support/fuzz_http.py; longer runs: bench/fuzz.py), and each 5xx the fuzzing found, kept as a regular test."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from kubetune_operator.openai_api import mapping
from support.fuzz import explore
from support.fuzz_http import SURFACES, world


@pytest.mark.parametrize("surface", SURFACES, ids=lambda s: s.name.split(":")[1].split("(")[0].strip())
def test_property(surface):
    result = explore(surface)
    assert result.tried == surface.examples


@pytest.fixture
def api(tmp_path):
    w = world(tmp_path)
    return TestClient(w.app, raise_server_exceptions=False), w.ids


def _create(client, ids, **fields):
    return client.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": ids["file"], **fields})


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_the_published_schema_describes_what_the_server_reads(api):
    client, _ = api
    schema = client.get("/v1/openapi.json").json()
    create = schema["paths"]["/v1/fine_tuning/jobs"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == mapping.CREATE_REQUEST_SCHEMA
    assert set(mapping.CREATE_REQUEST_SCHEMA["properties"]) == mapping.CREATE_FIELDS
    assert {p["name"] for p in create["parameters"]} == {"OpenAI-Project"} and create["security"] == [{"bearer": []}, {}]
    limit = next(p for p in schema["paths"]["/v1/fine_tuning/jobs"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["anyOf"][0] == {"type": "integer", "maximum": 100, "minimum": 1}
    # FastAPI's 422 describes an answer this server never gives: errors are 4xx in the API's shape.
    assert all("422" not in op["responses"] and "4XX" in op["responses"]
               for path, ops in schema["paths"].items() if path.startswith("/v1/") for op in ops.values())
    assert _error(client.get("/v1/fine_tuning/jobs", params={"limit": 0}), 400)["param"] == "limit"


# Found by the fuzzing: a `kubetune` spec fragment (or a kubetune.* metadata key) whose section is not an object
# crashed building the FineTuneJob (TypeError: argument of type 'int' is not iterable; list indices must be integers).
@pytest.mark.parametrize("fields", [
    {"kubetune": {"training": 5}},
    {"kubetune": {"training": []}},
    {"kubetune": {"dataset": "x"}},
    {"kubetune": {"model": 5}},  # was silently replaced by {"source": ...}
    {"metadata": {"kubetune.training": "5"}},
], ids=["training-int", "training-list", "dataset-string", "model-int", "metadata-key"])
def test_a_spec_section_that_is_not_an_object_is_refused_by_name(api, fields):
    client, ids = api
    section = next(iter(fields.get("kubetune") or {"training": None}))
    error = _error(_create(client, ids, **fields), 400)
    assert error["param"] == f"kubetune.{section}"
    assert error["message"].startswith(f"kubetune.{section} must be an object (a FineTuneJob spec section), got ")


def test_a_null_section_is_unset(api):
    client, ids = api
    r = _create(client, ids, kubetune={"training": None})
    assert r.status_code == 200, r.text


# Found by the fuzzing: fields that batch_size and learning_rate_multiplier compute with, of the wrong type
# (ValueError: invalid literal for int(); can't multiply sequence by float; unhashable type: 'list').
@pytest.mark.parametrize("fragment, param", [
    ({"training": {"microBatchSize": "x"}}, "kubetune.training.microBatchSize"),
    ({"training": {"microBatchSize": 2.5}}, "kubetune.training.microBatchSize"),
    ({"training": {"learningRate": "x"}}, "kubetune.training.learningRate"),
    ({"training": {"learningRate": [1]}}, "kubetune.training.learningRate"),
    ({"method": {"type": ["lora"]}}, "kubetune.method.type"),
], ids=["micro-string", "micro-fraction", "lr-string", "lr-list", "method-type-list"])
def test_fields_the_hyperparameters_compute_with_must_have_their_type(api, fragment, param):
    client, ids = api
    r = _create(client, ids, kubetune=fragment, hyperparameters={"batch_size": 8, "learning_rate_multiplier": 2})
    assert _error(r, 400)["param"] == param


def test_the_hyperparameters_still_compute_with_the_fragment(api, tmp_path):
    client, ids = api
    r = _create(client, ids, kubetune={"training": {"microBatchSize": 6, "learningRate": 0.001}},
                hyperparameters={"batch_size": 8, "learning_rate_multiplier": 2})
    assert r.status_code == 200, r.text
    stored = json.loads((tmp_path / "state" / "jobs" / r.json()["id"] / "job.json").read_text())
    training = stored["ftj"]["spec"]["training"]
    assert (training["globalBatchSize"], training["microBatchSize"], training["learningRate"]) == (8, 2, 0.002)


# Found by the fuzzing: a file id with a NUL byte or too long for a file name reached the file system
# (ValueError: embedded null byte; OSError: File name too long).
@pytest.mark.parametrize("file_id", ["file-\x00", "file-" + "a" * 300, "file-..", "file-a.b"], ids=["nul", "long", "dots", "dot"])
def test_a_file_id_no_file_can_have_is_not_found(api, file_id):
    client, ids = api
    quoted = file_id.replace("\x00", "%00")
    for method, url in [("GET", f"/v1/files/{quoted}"), ("GET", f"/v1/files/{quoted}/content"), ("DELETE", f"/v1/files/{quoted}")]:
        assert _error(client.request(method, url), 404)["code"] == "file_not_found"
    error = _error(client.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id}), 404)
    assert error["param"] == "training_file"


# Found by the fuzzing: a JSON \ud800 escape decodes to a lone surrogate, which the answer could not encode
# (PydanticSerializationError: surrogates not allowed), and a deeply nested body (RecursionError).
@pytest.mark.parametrize("field", ["suffix", "metadata", "kubetune"])
def test_a_lone_surrogate_escape_is_not_text(api, field):
    client, ids = api
    value = {"suffix": '"\\ud800"', "metadata": '{"a": "\\udfff"}', "kubetune": '{"podAnnotations": {"a": "x\\ud800"}}'}[field]
    body = f'{{"model": "tiny", "training_file": "{ids["file"]}", "{field}": {value}}}'
    error = _error(client.post("/v1/fine_tuning/jobs", content=body.encode()), 400)
    assert error["message"] == ("the request body is not valid JSON: a \\u escape gives a lone UTF-16 surrogate, "
                                "which is not a character")


@pytest.mark.parametrize("depth", [65, 900, 100_000])
def test_a_body_nested_deeper_than_any_request_needs_is_refused(api, depth):
    client, ids = api
    body = f'{{"model": "tiny", "training_file": "{ids["file"]}", "kubetune": {"[" * depth}{"]" * depth}}}'
    error = _error(client.post("/v1/fine_tuning/jobs", content=body.encode()), 400)
    assert error["message"] == "the request body is nested deeper than 64 levels"
