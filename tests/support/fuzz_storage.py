"""Storage inputs: the trainer's S3 storage (``kubetune_trainer.storage``)
against a real S3 HTTP endpoint (moto's ThreadedMotoServer, as in
tests/storage), fed URIs with odd characters, buckets and keys at and beyond
the length limits, and objects replaced while they are being downloaded.

The answer must be a success, or a PermanentError (a retry cannot fix it) or
a StorageError (retried, then given up) with a message naming the URI; a
download never leaves a file that is not exactly one version of the object,
nor a temporary file beside it.
"""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from typing import Any

from hypothesis import strategies as st

from support.fuzz import Surface

BUCKET = "kubetune-fuzz"


@functools.cache
def server() -> tuple[str, Any]:
    """A moto S3 server on 127.0.0.1 (started once per process) and a plain boto3 client for it."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("kubetune.storage").setLevel(logging.ERROR)

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return endpoint, client


def storage(**tuning: Any) -> Any:
    from kubetune_trainer.storage import S3Storage

    endpoint, _ = server()
    return S3Storage(endpoint=endpoint, region="us-east-1", addressing_style="path", base_delay=0.001,
                     operation_attempts=2, request_attempts=1, connect_timeout=2, read_timeout=5, **tuning)


key_chars = st.characters(codec="utf-8", exclude_categories=["Cs"])
buckets = st.one_of(
    st.just(BUCKET),
    st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789.-_AZ "), min_size=0, max_size=70),
    st.sampled_from(["ab", "a" * 63, "a" * 64, "192.168.0.1", "a..b", "-ab", "xn--ab", "missing-bucket-x"]),
)
keys = st.one_of(
    st.text(key_chars, max_size=40),
    st.sampled_from(["", "/", "a//b", "../../etc/passwd", "a/./b", "k" * 1024, "k" * 1025, "é" * 512, "é" * 513,
                     "with space/and?query#frag", "nul\x00byte", "trailing/"]),
)


@st.composite
def uri_cases(draw: st.DrawFn) -> dict[str, Any]:
    return {"uri": f"s3://{draw(buckets)}/{draw(keys)}", "data": draw(st.binary(max_size=64)),
            "op": draw(st.sampled_from(["write-read", "exists", "head", "list", "download", "split"]))}


def _answer_is_clear(fn: Any) -> Any:
    from kubetune_api.contract import PermanentError
    from kubetune_trainer.storage import StorageError

    try:
        return fn()
    except (PermanentError, StorageError) as e:
        assert str(e).strip(), f"{type(e).__name__} without a message"
        return e


def check_uri(case: dict[str, Any]) -> None:
    from kubetune_trainer.storage import split_s3

    uri, data, op = case["uri"], case["data"], case["op"]
    s = storage()
    if op == "split":
        _answer_is_clear(lambda: split_s3(uri))
    elif op == "write-read":
        wrote = _answer_is_clear(lambda: s.write_bytes(uri, data))
        if not isinstance(wrote, Exception):
            got = _answer_is_clear(lambda: s.read_bytes(uri))
            assert got == data, f"read back {got!r}, wrote {data!r}"
    elif op == "exists":
        assert isinstance(_answer_is_clear(lambda: s.exists(uri)), (bool, Exception))
    elif op == "head":
        _answer_is_clear(lambda: s.head(uri))
    elif op == "list":
        _answer_is_clear(lambda: s.list(uri))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            _answer_is_clear(lambda: s.download_file(uri, os.path.join(tmp, "f")))
            assert set(os.listdir(tmp)) <= {"f"}, os.listdir(tmp)


@st.composite
def changing_objects(draw: st.DrawFn) -> dict[str, Any]:
    size = draw(st.integers(1, 600))
    return {
        "key": f"changing/{draw(st.integers(0, 10**9))}",
        "old": draw(st.binary(min_size=size, max_size=size)),
        "new": draw(st.binary(max_size=700)),
        "after_gets": draw(st.integers(0, 3)),  # replace the object after this many GETs
        "ranged": draw(st.booleans()),
        "sha256_in_metadata": draw(st.booleans()),
        "part_size": draw(st.sampled_from([64, 100, 1000])),
    }


def check_changing_download(case: dict[str, Any]) -> None:
    """An object replaced mid-download: the file is one whole version, verified, or there is no file."""
    from kubetune_api.contract import PermanentError
    from kubetune_trainer.storage import StorageError

    _, client = server()
    key, old, new = case["key"], case["old"], case["new"]
    extra = {"Metadata": {"sha256": hashlib.sha256(old).hexdigest()}} if case["sha256_in_metadata"] else {}
    client.put_object(Bucket=BUCKET, Key=key, Body=old, **extra)
    s = storage(part_size=case["part_size"], concurrency=2)
    gets = [0]

    def replace_after_get(**_: Any) -> None:
        gets[0] += 1
        if gets[0] == case["after_gets"]:
            client.put_object(Bucket=BUCKET, Key=key, Body=new)  # no sha256 metadata: a plain replacement

    s.client.meta.events.register("after-call.s3.GetObject", replace_after_get)
    if case["after_gets"] == 0:
        client.put_object(Bucket=BUCKET, Key=key, Body=new)
    with tempfile.TemporaryDirectory() as tmp:
        dest = os.path.join(tmp, "model.bin")
        try:
            info = s.download_file(f"s3://{BUCKET}/{key}", dest, ranged=case["ranged"])
        except (PermanentError, StorageError) as e:
            assert str(e).strip()
            assert not os.path.exists(dest), "a failed download left a file"
        else:
            with open(dest, "rb") as f:
                got = f.read()
            assert got in (old, new), f"a download mixing versions: {len(got)} bytes"
            assert info.size == len(got)
        assert set(os.listdir(tmp)) <= {"model.bin"}, f"temporary files left: {os.listdir(tmp)}"


SURFACES = [
    Surface("storage: URIs, bucket and key limits", uri_cases(), check_uri, examples=15),
    Surface("storage: objects replaced mid-download", changing_objects(), check_changing_download, examples=10),
]
