"""fetch: models and datasets from s3:// (once per node, cached by ETag), local paths, the GGUF hook."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import types

import pytest

from kubetune_api.contract import PermanentError
from kubetune_trainer import fetch
from kubetune_trainer.storage import MiB

pytestmark = pytest.mark.timeout(120)


def _spec(source: str, endpoint: str):
    storage = types.SimpleNamespace(endpoint=endpoint, region="us-east-1", addressing_style="path")
    model = types.SimpleNamespace(source=source, dtype="auto", revision=None)
    return types.SimpleNamespace(model=model, storage=storage)


def _upload_model(s3, prefix: str, weights: bytes) -> dict[str, bytes]:
    files = {"config.json": json.dumps({"model_type": "llama"}).encode(), "model.safetensors": weights,
             "tokenizer/tokenizer.json": b"{}"}
    c = s3.client()
    for name, data in files.items():
        c.put_object(Bucket=s3.bucket, Key=f"{prefix}/{name}", Body=data)
    return files


def _resolve_in_child(source, endpoint, scratch, env, q):
    os.environ.update(env, KUBETUNE_S3_PART_SIZE_MB="1")  # several ranged GETs per file
    q.put(str(fetch.resolve_model(_spec(source, endpoint), scratch)))


def _object_gets(proxy, prefix: str) -> list[str]:
    return [p for m, p in proxy.requests if m == "GET" and f"/{prefix}/" in p and "list-type" not in p and "prefix=" not in p]


def test_model_downloaded_once_per_node_and_cached_by_etag(s3, faults, tmp_path):
    files = _upload_model(s3, "models/tiny", os.urandom(3 * MiB + 11))
    src = f"s3://{s3.bucket}/models/tiny"
    scratch = tmp_path / "scratch"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    env = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    # Two "ranks" of one node resolve the same model at the same time.
    procs = [ctx.Process(target=_resolve_in_child, args=(src, s3.proxy.url, str(scratch), env, q)) for _ in range(2)]
    for p in procs:
        p.start()
    paths = {q.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(paths) == 1
    local = paths.pop()
    for name, data in files.items():
        assert open(os.path.join(local, name), "rb").read() == data
    gets = _object_gets(faults, "models/tiny")
    # config + tokenizer: one GET each; 3 MiB weights: 4 ranged GETs of 1 MiB; nothing twice.
    assert len(gets) == 6, gets

    # A restart on the same node: nothing downloaded again.
    faults.reset()
    assert str(fetch.resolve_model(_spec(src, s3.proxy.url), scratch)) == local
    assert _object_gets(faults, "models/tiny") == []

    # The object changed (new ETag): a fresh cache entry with the new bytes.
    s3.client().put_object(Bucket=s3.bucket, Key="models/tiny/model.safetensors", Body=b"new weights")
    again = fetch.resolve_model(_spec(src, s3.proxy.url), scratch)
    assert str(again) != local and (again / "model.safetensors").read_bytes() == b"new weights"


def test_dataset_single_object_keeps_its_name_and_is_verified(s3, tmp_path):
    body = b'{"text": "hello"}\n' * 100
    s3.client().put_object(Bucket=s3.bucket, Key="data/train.jsonl", Body=body)
    spec = _spec("unused", s3.endpoint)
    path = fetch.resolve_dataset(f"s3://{s3.bucket}/data/train.jsonl", spec, tmp_path)
    assert path.name == "train.jsonl" and path.read_bytes() == body


def test_missing_sources_are_permanent_errors(s3, tmp_path):
    spec = _spec(str(tmp_path / "nope"), s3.endpoint)
    with pytest.raises(PermanentError) as e:
        fetch.resolve_model(spec, tmp_path)
    assert e.value.reason == "ModelNotFound"
    with pytest.raises(PermanentError) as e:
        fetch.resolve_dataset(f"s3://{s3.bucket}/data/missing.jsonl", spec, tmp_path)
    assert e.value.reason == "DatasetNotFound"
    with pytest.raises(PermanentError) as e:
        fetch.resolve_model(_spec("s3://no-such-bucket-kt/m", s3.endpoint), tmp_path)
    assert e.value.reason == "BucketNotFound"
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(PermanentError, match="config.json"):
        fetch.resolve_model(_spec(str(tmp_path / "notamodel"), s3.endpoint), tmp_path)


def test_local_paths_pass_through(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert fetch.resolve_model(_spec(f"file://{tmp_path}/m", None), tmp_path / "s") == tmp_path / "m"
    (tmp_path / "d.jsonl").write_text("{}\n")
    assert fetch.resolve_dataset(str(tmp_path / "d.jsonl"), None, tmp_path / "s") == tmp_path / "d.jsonl"


def test_gguf_source_is_converted_once_through_the_hook(tmp_path, monkeypatch):
    """fetch hands .gguf files to kubetune_trainer.gguf.convert_to_hf once and caches the result."""
    from kubetune_trainer import gguf

    calls = []

    def fake_convert(path, out_dir, dtype=None):
        calls.append((str(path), dtype))
        os.makedirs(out_dir)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            f.write('{"converted": true}')
        return out_dir

    monkeypatch.setattr(gguf, "convert_to_hf", fake_convert)
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF....")
    spec = _spec(str(src), None)
    spec.model.dtype = "bfloat16"
    a = fetch.resolve_model(spec, tmp_path / "s")
    b = fetch.resolve_model(spec, tmp_path / "s")
    assert a == b and json.loads((a / "config.json").read_text()) == {"converted": True}
    assert calls == [(str(src), "bfloat16")]


def test_hf_source_goes_through_snapshot_download_once(tmp_path, monkeypatch):
    """hf://org/name -> huggingface_hub.snapshot_download(repo, revision) into the node cache, once."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, revision=None, repo_type=None, local_dir=None, token=None):
        calls.append((repo_id, revision, repo_type))
        with open(os.path.join(local_dir, "config.json"), "w") as f:
            f.write("{}")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    spec = _spec("hf://org/model", None)
    spec.model.revision = "abc123"
    a = fetch.resolve_model(spec, tmp_path)
    b = fetch.resolve_model(spec, tmp_path)
    assert a == b and (a / "config.json").exists()
    assert calls == [("org/model", "abc123", "model")]
    d = fetch.resolve_dataset("hf://datasets/org/data", None, tmp_path)
    assert calls[-1] == ("org/data", None, "dataset") and d.is_dir()


def test_adapter_from_s3_is_fetched_as_a_folder_and_a_prefix_without_adapter_config_is_refused(s3, tmp_path):
    """spec.model.adapter = an earlier job's s3://.../final/adapter (issue 15): the same once-per-node cache as models."""
    files = {"adapter_config.json": json.dumps({"peft_type": "LORA", "r": 8}).encode(),
             "adapter_model.safetensors": os.urandom(4096)}
    c = s3.client()
    for name, data in files.items():
        c.put_object(Bucket=s3.bucket, Key=f"runs/a/final/adapter/{name}", Body=data)
    c.put_object(Bucket=s3.bucket, Key="runs/a/final/summary.json", Body=b"{}")

    def spec(adapter):
        out = _spec("unused", s3.endpoint)
        out.model.adapter = adapter
        return out

    path = fetch.resolve_adapter(spec(f"s3://{s3.bucket}/runs/a/final/adapter/"), tmp_path)
    assert {p.name: p.read_bytes() for p in path.iterdir() if not p.name.startswith(".")} == files
    assert fetch.resolve_adapter(spec(None), tmp_path) is None
    with pytest.raises(PermanentError, match="holds no adapter_config.json") as e:
        fetch.resolve_adapter(spec(f"s3://{s3.bucket}/runs/a/final"), tmp_path)  # the final folder, not its adapter
    assert e.value.reason == "AdapterNotFound"
    with pytest.raises(PermanentError) as e:
        fetch.resolve_adapter(spec(f"s3://{s3.bucket}/runs/missing/final/adapter"), tmp_path)
    assert e.value.reason == "AdapterNotFound"
