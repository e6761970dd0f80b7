"""The HTTP layer of `kubetune api` in-process (FastAPI's TestClient), over a backend that records calls."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from kubetune_operator.openai_api.errors import not_found
from kubetune_operator.openai_api.server import Caller, create_app


class RecordingBackend:
    def __init__(self):
        self.callers: list[Caller] = []

    def list_jobs(self, caller):
        self.callers.append(caller)
        return [{"id": f"ftjob-{i}", "object": "fine_tuning.job", "metadata": {"team": "a" if i % 2 else "b"}} for i in range(5)]

    def get_job(self, caller, job_id):
        raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")

    def create_job(self, caller, body):
        return {"id": "ftjob-new", "echo": body}


@pytest.fixture
def backend():
    return RecordingBackend()


def test_api_key_is_required_when_set_and_the_project_header_reaches_the_backend(backend):
    client = TestClient(create_app(backend, api_key="secret"))
    r = client.get("/v1/fine_tuning/jobs")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = client.get("/v1/fine_tuning/jobs", headers={"Authorization": "Bearer secret", "OpenAI-Project": "team-a"})
    assert r.status_code == 200 and backend.callers[-1] == Caller(token="secret", project="team-a")


def test_errors_have_the_api_shape_and_are_not_retried(backend):
    client = TestClient(create_app(backend))
    r = client.get("/v1/fine_tuning/jobs/ftjob-x")
    assert r.status_code == 404 and r.headers["x-should-retry"] == "false"
    assert r.json() == {"error": {"message": "No such fine-tuning job: 'ftjob-x'", "type": "invalid_request_error",
                                  "param": "fine_tuning_job_id", "code": "fine_tuning_job_not_found"}}
    r = client.post("/v1/fine_tuning/jobs", content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.get("/v1/models")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = client.delete("/v1/fine_tuning/jobs")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = client.get("/v1/fine_tuning/jobs", params={"limit": "lots"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    r = client.post("/v1/files", data={"purpose": "fine-tune"})  # no file part
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"


def test_job_list_filters_by_metadata_and_pages(backend):
    client = TestClient(create_app(backend))
    r = client.get("/v1/fine_tuning/jobs", params={"metadata[team]": "a", "limit": 1})
    body = r.json()
    assert [j["id"] for j in body["data"]] == ["ftjob-1"] and body["has_more"] and body["object"] == "list"
    r = client.get("/v1/fine_tuning/jobs", params={"metadata[team]": "a", "after": "ftjob-1"})
    assert [j["id"] for j in r.json()["data"]] == ["ftjob-3"] and not r.json()["has_more"]
