"""Upload checks: the trainer's rules (with its loader, or line by line without `datasets`), or the
light shape check where the trainer is not installed (the operator image), and the folder store."""
from __future__ import annotations

import json

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
