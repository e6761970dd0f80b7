"""storage.S3Storage and storage.LocalStorage against a real S3 HTTP server (moto, authenticated) and local paths."""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from kubetune_api.contract import PermanentError
from kubetune_trainer.storage import ChecksumMismatch, LocalStorage, MiB, ObjectNotFound, S3Storage, join, storage_for

pytestmark = pytest.mark.timeout(120)


def _store(endpoint: str, **kw) -> S3Storage:
    kw.setdefault("base_delay", 0.01)
    return S3Storage(endpoint=endpoint, region="us-east-1", addressing_style="path", **kw)


@pytest.fixture(params=["s3", "local"])
def root(request, s3, tmp_path):
    """The same tests through both back ends."""
    if request.param == "s3":
        return _store(s3.endpoint), f"s3://{s3.bucket}/t-{request.node.name.split('[')[0]}-{time.monotonic_ns()}"
    return LocalStorage(), f"file://{tmp_path}/store"


def test_roundtrip_list_delete(root, tmp_path):
    st, base = root
    st.write_json(join(base, "a/meta.json"), {"x": 1})
    f = tmp_path / "blob.bin"
    f.write_bytes(os.urandom(3 * MiB + 7))
    info = st.upload_file(f, join(base, "a/b/blob.bin"))
    assert info.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    assert st.read_json(join(base, "a/meta.json")) == {"x": 1}
    assert [o.name for o in st.list(base)] == ["a/b/blob.bin", "a/meta.json"]
    assert st.list_dirs(base) == ["a"]
    out = tmp_path / "dl" / "blob.bin"
    st.download_file(join(base, "a/b/blob.bin"), out, sha256=info.sha256)
    assert out.read_bytes() == f.read_bytes()
    with pytest.raises(ObjectNotFound):
        st.read_bytes(join(base, "nope"))
    assert not st.exists(join(base, "nope"))
    assert st.delete_prefix(join(base, "a")) == 2
    assert st.list(base) == []


def test_multipart_upload_and_concurrent_ranged_download_verified(s3, tmp_path):
    """A 13 MiB file goes up in 5 MiB parts (ETag 'md5-N') and comes down in concurrent ranges."""
    st = _store(s3.endpoint, part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=4)
    f = tmp_path / "big.bin"
    f.write_bytes(os.urandom(13 * MiB))
    uri = f"s3://{s3.bucket}/mp/big.bin"
    st.upload_file(f, uri)
    head = st.head(uri)
    assert head.etag.endswith("-3"), head  # three parts
    assert head.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    out = tmp_path / "big.out"
    got = st.download_file(uri, out)
    assert got.sha256 == head.sha256 and out.read_bytes() == f.read_bytes()


@pytest.mark.parametrize(("size", "fixed", "want"), [
    (5 * MiB, {}, (5 * MiB, 1)),  # one stream: too small to split
    (20 * MiB, {}, (10 * MiB, 2)),  # one stream per 8 MiB, split evenly
    (64 * MiB, {}, (8 * MiB, 8)),
    (200 * MiB, {}, (25 * MiB // 2, 16)),  # 16 streams at most
    (1024 * MiB, {}, (64 * MiB, 16)),
    (10 * 1024 * MiB, {}, (64 * MiB, 16)),  # ranges capped at 64 MiB: 160 ranges over 16 streams
    (64 * MiB, {"concurrency": 3}, (342 * 64 * 1024, 3)),  # 64 MiB / 3, rounded up to 64 KiB
    (64 * MiB, {"part_size": 4 * MiB, "concurrency": 2}, (4 * MiB, 2)),  # explicit settings win
    (3 * MiB + 11, {"part_size": MiB}, (MiB, 4)),  # a fixed range size: one stream per range, up to 16
], ids=["5MiB", "20MiB", "64MiB", "200MiB", "1GiB", "10GiB", "64MiB-3-streams", "64MiB-fixed", "fixed-range-size"])
def test_ranged_plan_from_object_size(size, fixed, want):
    """Ranged downloads pick range size and streams from the object size: each stream one range, 8 MiB or more."""
    part, streams = _store("http://unused", **fixed).ranged_plan(size)
    assert (part, streams) == want
    assert -(-size // part) >= streams or streams == 1  # no idle stream


def test_default_store_downloads_in_size_chosen_ranges(s3, tmp_path):
    """Without settings, a 20 MiB object comes down as 2 ranged GETs of 10 MiB, verified."""
    st = _store(s3.endpoint)
    f = tmp_path / "mid.bin"
    f.write_bytes(os.urandom(20 * MiB))
    uri = f"s3://{s3.bucket}/plan/mid.bin"
    st.upload_file(f, uri)
    seen = []
    st.client.meta.events.register("before-parameter-build.s3.GetObject", lambda params, **kw: seen.append(params.get("Range")))
    st.download_file(uri, tmp_path / "mid.out")
    assert sorted(seen) == [f"bytes=0-{10 * MiB - 1}", f"bytes={10 * MiB}-{20 * MiB - 1}"]
    assert (tmp_path / "mid.out").read_bytes() == f.read_bytes()


def test_download_detects_wrong_checksum(s3, tmp_path):
    st = _store(s3.endpoint, operation_attempts=2)
    uri = f"s3://{s3.bucket}/cs/x.bin"
    st.write_bytes(uri, b"hello")
    with pytest.raises(ChecksumMismatch, match="sha256 mismatch"):
        st.download_file(uri, tmp_path / "x.bin", sha256="0" * 64)
    assert not (tmp_path / "x.bin").exists()


def test_one_put_upload_hashes_each_byte_once_and_signs_with_that_digest(s3, tmp_path, monkeypatch):
    """A file below the multipart threshold goes up as one PUT whose SigV4 payload hash is the file's sha256
    (its ``sha256`` metadata): botocore does not hash the body a second time, and the (authenticating)
    server accepts the signature. A JSON marker, without that metadata, is signed from its body as before."""
    import botocore.auth

    hashed = []
    real = hashlib.sha256

    class Counting:  # botocore.auth's sha256, counting the bytes it hashes
        def __init__(self, data=b""):
            self.h = real(data)
            hashed.append(len(data))

        def update(self, data):
            hashed.append(len(data))
            self.h.update(data)

        def __getattr__(self, name):  # digest, copy, sizes (hmac uses it too)
            return getattr(self.h, name)

    st = _store(s3.endpoint)
    sent = []
    st.client.meta.events.register("before-send.s3.PutObject", lambda request, **kw: sent.append(request))
    monkeypatch.setattr(botocore.auth, "sha256", Counting)
    f = tmp_path / "shard.pt"
    f.write_bytes(os.urandom(3 * MiB + 11))
    uri = f"s3://{s3.bucket}/once/shard.pt"
    info = st.upload_file(f, uri)
    st.write_json(f"s3://{s3.bucket}/once/marker.json", {"run": "r"})

    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    assert info.sha256 == digest and info.size == f.stat().st_size
    assert sum(hashed) < 64 * 1024, f"botocore hashed {sum(hashed)} bytes (the 3 MiB body again?)"
    put, marker = sent
    assert put.headers["X-Amz-Content-SHA256"] in (digest, digest.encode())
    marker_digest = real(st.read_bytes(f"s3://{s3.bucket}/once/marker.json")).hexdigest()
    assert marker.headers["X-Amz-Content-SHA256"] in (marker_digest, marker_digest.encode())
    assert st.head(uri).sha256 == digest
    st.download_file(uri, tmp_path / "back.pt", sha256=digest)
    assert (tmp_path / "back.pt").read_bytes() == f.read_bytes()


def test_transient_errors_are_retried(s3, faults, tmp_path):
    """Every 3rd request fails (503 or a response cut off half way); all operations still succeed."""
    st = _store(s3.proxy.url, part_size=1 * MiB, concurrency=3, request_attempts=3)
    f = tmp_path / "f.bin"
    f.write_bytes(os.urandom(4 * MiB + 5))
    faults.reset(fail_every=3)
    base = f"s3://{s3.bucket}/faulty"
    for i in range(4):
        st.write_bytes(join(base, f"small-{i}"), b"x" * 100)
    st.upload_file(f, join(base, "f.bin"))
    for i in range(4):
        assert st.read_bytes(join(base, f"small-{i}")) == b"x" * 100
    st.download_file(join(base, "f.bin"), tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == f.read_bytes()
    assert len(st.list(base)) == 5
    assert faults.injected.get("GET cut", 0) >= 1 and faults.injected.get("PUT 503", 0) >= 1, faults.injected


def test_missing_bucket_is_permanent(s3):
    st = _store(s3.endpoint)
    with pytest.raises(PermanentError) as e:
        st.check_access("s3://no-such-bucket-kt/x")
    assert e.value.reason == "BucketNotFound" and "no-such-bucket-kt" in str(e.value)
    with pytest.raises(PermanentError) as e:
        st.write_bytes("s3://no-such-bucket-kt/x", b"1")
    assert e.value.reason == "BucketNotFound"


@pytest.mark.parametrize("key_id,secret", [("AKIAWRONGWRONGWRONG1", "x"), (None, "wrong-secret")])
def test_wrong_credentials_are_permanent_and_fast(s3, monkeypatch, key_id, secret):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id or s3.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    st = _store(s3.endpoint)
    t0 = time.monotonic()
    with pytest.raises(PermanentError) as e:
        st.check_access(f"s3://{s3.bucket}/x", write=True)
    assert e.value.reason == "StorageAccessDenied"
    assert "AWS_ACCESS_KEY_ID" in str(e.value)
    with pytest.raises(PermanentError):
        st.list(f"s3://{s3.bucket}/x")
    assert time.monotonic() - t0 < 5, "a permanent error must not be retried with backoff"


def test_missing_credentials_are_permanent(s3, monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    st = _store(s3.endpoint)
    with pytest.raises(PermanentError) as e:
        st.check_access(f"s3://{s3.bucket}/x")
    assert e.value.reason == "StorageCredentialsMissing"


def test_virtual_host_addressing_is_configurable(s3):
    """addressingStyle is passed to botocore: 'virtual' puts the bucket in the host name."""
    st = S3Storage(endpoint="http://s3.example.test:9000", region="us-east-1", addressing_style="virtual")
    req = st.client.meta.events
    seen = {}

    def capture(request, **_):
        seen["url"] = request.url
        raise RuntimeError("stop before sending")

    req.register("before-send.s3", capture)
    with pytest.raises(RuntimeError, match="stop before sending"):
        st.client.head_object(Bucket="mybucket", Key="k")
    assert seen["url"].startswith("http://mybucket.s3.example.test:9000/k")
    st2 = S3Storage(endpoint="http://s3.example.test:9000", region="us-east-1", addressing_style="path")
    st2.client.meta.events.register("before-send.s3", capture)
    with pytest.raises(RuntimeError, match="stop before sending"):
        st2.client.head_object(Bucket="mybucket", Key="k")
    assert seen["url"].startswith("http://s3.example.test:9000/mybucket/k")


def test_storage_for_picks_the_implementation_from_the_uri(tmp_path, monkeypatch):
    """s3:// gets S3Storage configured from spec.storage (and the transfer env); paths and file:// get LocalStorage."""
    from kubetune_api.spec import StorageSpec

    monkeypatch.setenv("KUBETUNE_S3_CONCURRENCY", "3")
    st = storage_for("s3://b/p", StorageSpec(endpoint="http://minio:9000", region="eu-west-1", addressing_style="path"))
    assert isinstance(st, S3Storage)
    assert (st.endpoint, st.region, st.addressing_style, st.concurrency) == ("http://minio:9000", "eu-west-1", "path", 3)
    assert isinstance(storage_for(str(tmp_path)), LocalStorage)
    assert isinstance(storage_for(f"file://{tmp_path}"), LocalStorage)
    # One implementation never silently serves the other's URIs.
    with pytest.raises(ValueError, match="not a local path"):
        LocalStorage().read_bytes("s3://b/k")
    with pytest.raises(ValueError, match="not an s3:// URI"):
        st.read_bytes(str(tmp_path / "k"))


def test_local_download_detects_wrong_checksum(tmp_path):
    st = LocalStorage()
    st.write_bytes(str(tmp_path / "x.bin"), b"hello")
    with pytest.raises(ChecksumMismatch):
        st.download_file(str(tmp_path / "x.bin"), tmp_path / "out" / "x.bin", sha256="0" * 64)
    assert not (tmp_path / "out" / "x.bin").exists() and list((tmp_path / "out").iterdir()) == []
