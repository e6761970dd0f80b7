"""Upload checks: the trainer's rules (with its loader, or line by line without `datasets`), or the
light shape check where the trainer is not installed (the operator image), and the folder store."""
from __future__ import annotations

import json
import os

import pytest

from kubetune_operator.openai_api import files
from kubetune_operator.openai_api.errors import ApiError

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
NO_ANSWER = {"messages": [{"role": "user", "content": "hi"}]}


def _write(tmp_path, rows) -> str:
    path = tmp_path / "f.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("mode", ["trainer-loader", "trainer-rules-without-datasets"])
def test_trainer_rules_name_the_bad_lines(tmp_path, monkeypatch, mode):
    if mode == "trainer-rules-without-datasets":
        monkeypatch.setattr(files, "_full_loader_available", lambda: False)
    assert files.check_training_file(_write(tmp_path, [CHAT, CHAT]), "ok.jsonl") == {"format": "chat", "rows": 2}
    with pytest.raises(ApiError) as e:
        files.check_training_file(_write(tmp_path, [CHAT, NO_ANSWER, CHAT, NO_ANSWER]), "bad.jsonl")
    assert e.value.param == "file" and "2 of 4 rows" in e.value.message
    assert "line 2: no assistant message" in e.value.message and "line 4" in e.value.message
    with pytest.raises(ApiError) as e:
        files.check_training_file(_write(tmp_path, [{"prompt": "q", "completion": "a"}, {"text": "t"}]), "mixed.jsonl")
    assert "line 2" in e.value.message


def test_without_the_trainer_the_shape_is_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_trainer_data", lambda: None)
    assert files.check_training_file(_write(tmp_path, [{"prompt": "q", "completion": "a"}]), "p.jsonl") == {"format": "instruction", "rows": 1}
    with pytest.raises(ApiError) as e:
        files.check_training_file(_write(tmp_path, [CHAT, "{oops"]), "broken.jsonl")
    assert "line 2 is not valid JSON" in e.value.message
    with pytest.raises(ApiError) as e:
        files.check_training_file(_write(tmp_path, [CHAT, {"question": "q"}]), "odd.jsonl")
    assert "line 2: need 'messages'" in e.value.message


def test_folder_store_round_trip(tmp_path):
    store = files.FileStore(tmp_path)
    a = store.create("ns", "a.jsonl", "fine-tune", json.dumps(CHAT).encode() + b"\n")
    b = store.create("ns", "b.csv", "fine-tune-results", b"step,train_loss\n1,2\n", check=False)
    assert {f["id"] for f in store.list("ns")} == {a["id"], b["id"]}
    assert {f["id"] for f in store.list("ns", purpose="fine-tune")} == {a["id"]}
    assert store.list("other") == []  # scopes (namespaces) do not see each other's files
    assert store.content("ns", b["id"]) == b"step,train_loss\n1,2\n"
    assert store.uri("ns", a["id"]).endswith(f"ns/files/{a['id']}.jsonl")
    assert store.delete("ns", a["id"]) == {"object": "file", "id": a["id"], "deleted": True}
    with pytest.raises(ApiError) as e:
        store.get("ns", a["id"])
    assert e.value.status == 404
    with pytest.raises(ApiError) as e:
        store.get("ns", "../../etc/passwd")
    assert e.value.status == 404
    with pytest.raises(ApiError) as e:
        store.create("ns", "x.jsonl", "assistants", b"{}\n")
    assert e.value.param == "purpose"


# Seen in a CI run: pyarrow's JSON reader (under the trainer's loader) died with SIGSEGV on an upload and took
# the whole process with it: the API server (any crafted upload a denial of service), and there pytest.
def test_a_file_that_crashes_the_reader_is_a_400_and_the_server_keeps_serving(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient
    from openai_helpers import CRASH_MARKER, check_or_crash

    from kubetune_operator.openai_api.local_backend import LocalBackend
    from kubetune_operator.openai_api.server import create_app

    monkeypatch.setattr(files, "_LOADER_CHECK", check_or_crash)  # runs in the loader's process: SIGSEGV there on the marker
    client = TestClient(create_app(LocalBackend(tmp_path / "state")), raise_server_exceptions=False)

    def upload(name: str, row: dict):
        return client.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": (name, json.dumps(row).encode() + b"\n")})

    crashing = {"messages": [{"role": "user", "content": CRASH_MARKER}, {"role": "assistant", "content": "hello"}]}
    for _ in range(2):  # a new worker after each crash: it crashes again, and is answered the same
        r = upload("evil.jsonl", crashing)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["param"], error["code"]) == ("file", "invalid_file")
        assert error["message"].startswith("evil.jsonl: the data reader crashed on the file")
    assert client.get("/healthz").json() == {"ok": True}
    ok = upload("good.jsonl", CHAT)
    assert ok.status_code == 200, ok.text
    assert [f["filename"] for f in client.get("/v1/files").json()["data"]] == ["good.jsonl"]
    bad = upload("bad.jsonl", NO_ANSWER)  # the rules still answer from the worker, as before
    assert bad.status_code == 400 and "line 1: no assistant message" in bad.json()["error"]["message"]


def test_the_loader_process_is_kept_between_uploads_and_stopped_by_close(tmp_path):
    path = _write(tmp_path, [CHAT])
    assert files.check_training_file(path, "a.jsonl") == {"format": "chat", "rows": 1}
    pid = files._LOADER.run(os.getpid)
    assert pid != os.getpid()
    assert files.check_training_file(path, "b.jsonl") == {"format": "chat", "rows": 1}
    assert files._LOADER.run(os.getpid) == pid  # one long-lived worker: `datasets` is imported once
    files.close_loader()
    assert not os.path.exists(f"/proc/{pid}"), "the worker outlived close_loader()"
    assert files.check_training_file(path, "c.jsonl") == {"format": "chat", "rows": 1}  # a later upload starts a new one
    assert files._LOADER.run(os.getpid) not in (pid, os.getpid())
