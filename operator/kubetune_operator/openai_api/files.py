"""Uploaded files: checked on upload with the trainer's own data rules, kept in a folder or an S3 bucket.

A file lives under a *scope* (the namespace on the cluster backend, ``local``
on the local backend) as two objects: ``<id>.jsonl`` (the bytes) and
``<id>.json`` (the ``file`` object). FineTuneJobs read the bytes by the URI
:meth:`FileStore.uri` gives: a path, or ``s3://bucket/prefix/<scope>/files/<id>.jsonl``.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import multiprocessing
import os
import re
import secrets
import signal
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from .errors import ApiError, invalid, not_found

PURPOSES = ("fine-tune", "fine-tune-results")
MAX_BAD_ROWS_SHOWN = 3
log = logging.getLogger("kubetune.api")


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


# What a file id can be (ours are file-<24 hex>): anything else names no file, and never reaches a path or a key.
_FILE_ID = re.compile(r"file-[A-Za-z0-9_-]{1,64}")


# ----------------------------------------------------------------- checking
def _trainer_data() -> Any:
    """The trainer's data module, where the trainer is installed (not in the operator image)."""
    try:
        return importlib.import_module("kubetune_trainer.data")
    except ImportError:
        return None


def _full_loader_available() -> bool:
    return importlib.util.find_spec("datasets") is not None


def check_training_file(path: str, filename: str) -> dict[str, Any]:
    """Raise a 400 naming the line and the rule when the file cannot be trained on; else {format, rows}.

    The rules are the trainer's (``kubetune_trainer.data``: format detection from
    the columns, per-row content checks). Where the ``datasets`` library is
    installed (the trainer's dependencies) the file is read by the trainer's own
    loader, in the loader's worker process (:class:`_LoaderProcess`: a file that
    crashes the reader costs that upload a 400, not the server); elsewhere (the
    torch-free operator image) line by line as JSON.
    """
    data = _trainer_data()
    if data is None:  # no trainer package at all: the shape alone
        return _check_shape(path, filename)
    if _full_loader_available():
        try:
            outcome = _LOADER.run(_LOADER_CHECK, path, filename)
        except BrokenProcessPool:
            log.warning("upload %r: the data reader's process died reading it (a new one starts for the next upload)", filename)
            raise invalid(f"{filename}: the data reader crashed on the file (its process died), so it cannot be checked "
                          f"or trained on; each line must be a JSON object of one training format", "file", "invalid_file") from None
        if "error" in outcome:
            raise invalid(outcome["error"], "file", "invalid_file")
        info: dict[str, Any] = outcome["info"]
        return info
    return _check_rows(data, _json_lines(path, filename), filename)


def _check_with_loader(path: str, filename: str) -> dict[str, Any]:
    """In the loader's process: read the file with the trainer's loader, then its rules.

    Answers ``{"info": {format, rows}}`` or ``{"error": message}`` (the message of the 400); values, not
    exceptions, cross back to the server.
    """
    from kubetune_api.contract import PermanentError

    data = _trainer_data()
    try:
        try:
            rows = data.load_rows(path)  # the path ends in .jsonl: the trainer reads it as JSON lines
        except PermanentError as e:
            raise invalid(f"{filename}: {str(e).replace(path, 'the file')} ({e.reason})", "file", "invalid_file") from None
        return {"info": _check_rows(data, rows, filename)}
    except ApiError as e:
        return {"error": e.message}


# What the loader's process runs for an upload (a module-level function: it is sent by name); tests swap it.
_LOADER_CHECK = _check_with_loader


def _check_rows(data: Any, rows: list[Any], filename: str) -> dict[str, Any]:
    from kubetune_api.contract import PermanentError

    if not rows:
        raise invalid(f"{filename}: the file is empty; a training file needs at least one row", "file", "invalid_file")
    try:
        fmt = data.detect_format(rows[0].keys())
    except PermanentError as e:
        raise invalid(f"{filename}: line 1: {e}", "file", "invalid_file") from None
    bad = []
    for n, row in enumerate(rows, start=1):
        try:
            if not isinstance(row, dict):
                raise data.BadRow("each line must be a JSON object")
            missing = set(rows[0].keys()) - set(row.keys())
            if fmt != data.detect_format(row.keys()) or missing:
                raise data.BadRow(f"its columns {sorted(row.keys())} do not fit the {fmt} format of line 1")
            data.check_row(row, fmt)
        except data.BadRow as e:
            bad.append(f"line {n}: {e}")
        except PermanentError as e:
            bad.append(f"line {n}: {e}")
    if bad:
        shown = "; ".join(bad[:MAX_BAD_ROWS_SHOWN]) + (f"; and {len(bad) - MAX_BAD_ROWS_SHOWN} more" if len(bad) > MAX_BAD_ROWS_SHOWN else "")
        raise invalid(f"{filename}: {len(bad)} of {len(rows)} rows cannot be trained on ({fmt} format): {shown}", "file", "invalid_file")
    return {"format": fmt, "rows": len(rows)}


class _LoaderProcess:
    """One long-lived worker process in which uploads are read by the trainer's loader (``datasets``, pyarrow).

    pyarrow's JSON reader can crash its process on some inputs (apache/arrow#11044,
    huggingface/datasets#6858): there, a crash is that upload's 400, not the end of
    the server. The process starts on the first upload, by spawn (nothing of the
    server's threads and locks inherited), and is kept, so the import of ``datasets``
    is paid once; after a crash the next upload starts a new one. Uploads are read one
    at a time. :func:`close_loader` stops it (the server's shutdown; otherwise at exit).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` in the worker; BrokenProcessPool when the worker died running it."""
        pool = self._pool_now()
        try:
            future = pool.submit(fn, *args)
        except BrokenProcessPool:  # it died before this call (between uploads): this call gets a new one
            self._discard(pool)
            pool = self._pool_now()
            future = pool.submit(fn, *args)
        try:
            return future.result()
        except BrokenProcessPool:
            self._discard(pool)
            raise

    def _pool_now(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_ignore_sigint)
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _ignore_sigint() -> None:
    """In the worker: Ctrl-C reaches the whole process group; the server stops its worker itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_LOADER = _LoaderProcess()


def close_loader() -> None:
    """Stop the loader's worker process, if one was started (a later upload starts a new one)."""
    _LOADER.close()


def _json_lines(path: str, filename: str) -> list[Any]:
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise invalid(f"{filename}: line {n} is not valid JSON: {e}", "file", "invalid_file") from None
    return rows


def _check_shape(path: str, filename: str) -> dict[str, Any]:
    """Without the trainer package: JSON objects with the columns of one known format."""
    rows = _json_lines(path, filename)
    if not rows:
        raise invalid(f"{filename}: the file is empty; a training file needs at least one row", "file", "invalid_file")
    formats = (("chat", {"messages"}), ("instruction", {"prompt", "completion"}), ("instruction", {"instruction", "output"}), ("text", {"text"}))
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not any(cols <= set(row) for _, cols in formats):
            raise invalid(f"{filename}: line {n}: need 'messages', 'prompt'+'completion', 'instruction'+'output' or 'text'", "file", "invalid_file")
    fmt = next(f for f, cols in formats if cols <= set(rows[0]))
    return {"format": fmt, "rows": len(rows)}


# -------------------------------------------------------------------- stores
class FileStore:
    """Files in a local folder (``root/<scope>/files/``)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def _dir(self, scope: str) -> Path:
        return self.root / scope / "files"

    def uri(self, scope: str, file_id: str) -> str:
        return str(self._dir(scope) / f"{file_id}.jsonl")

    def _write(self, scope: str, name: str, data: bytes) -> None:
        d = self._dir(scope)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(d / name)

    def _read(self, scope: str, name: str) -> bytes | None:
        try:
            return (self._dir(scope) / name).read_bytes()
        except FileNotFoundError:
            return None

    def _names(self, scope: str) -> list[str]:
        d = self._dir(scope)
        return [p.name for p in d.glob("file-*.json")] if d.exists() else []

    def _remove(self, scope: str, name: str) -> None:
        try:
            (self._dir(scope) / name).unlink()
        except FileNotFoundError:
            pass

    # The API's view.
    def create(self, scope: str, filename: str, purpose: str, data: bytes, check: bool = True) -> dict[str, Any]:
        if purpose not in PURPOSES:
            raise invalid(f"purpose {purpose!r} is not supported; kubetune takes 'fine-tune' files", "purpose", "unsupported")
        if not data:
            raise invalid(f"{filename}: the file is empty", "file", "invalid_file")
        file_id = new_file_id()
        if check:
            with tempfile.NamedTemporaryFile(suffix=".jsonl") as tmp:
                tmp.write(data)
                tmp.flush()
                info = check_training_file(tmp.name, filename)
        else:
            info = {}
        obj = {"object": "file", "id": file_id, "bytes": len(data), "created_at": int(time.time()), "filename": filename,
               "purpose": purpose, "status": "processed", "status_details": None, "expires_at": None}
        self._write(scope, f"{file_id}.jsonl", data)
        self._write(scope, f"{file_id}.json", json.dumps({**obj, "kubetune": info}).encode())
        return obj

    def get(self, scope: str, file_id: str, param: str | None = None) -> dict[str, Any]:
        if not _FILE_ID.fullmatch(file_id):
            raise not_found("file", file_id, param)
        raw = self._read(scope, f"{file_id}.json")
        if raw is None:
            raise not_found("file", file_id, param)
        obj: dict[str, Any] = json.loads(raw)
        obj.pop("kubetune", None)
        return obj

    def content(self, scope: str, file_id: str) -> bytes:
        self.get(scope, file_id)
        data = self._read(scope, f"{file_id}.jsonl")
        if data is None:
            raise not_found("file", file_id)
        return data

    def list(self, scope: str, purpose: str | None = None) -> list[dict[str, Any]]:
        out = []
        for name in self._names(scope):
            try:
                obj = self.get(scope, name[: -len(".json")])
            except ApiError:
                continue
            if purpose is None or obj["purpose"] == purpose:
                out.append(obj)
        return sorted(out, key=lambda o: (o["created_at"], o["id"]), reverse=True)

    def delete(self, scope: str, file_id: str) -> dict[str, Any]:
        self.get(scope, file_id)
        self._remove(scope, f"{file_id}.jsonl")
        self._remove(scope, f"{file_id}.json")
        return {"object": "file", "id": file_id, "deleted": True}


class S3FileStore(FileStore):
    """Files in an S3 bucket (``s3://bucket/prefix/<scope>/files/``), for the cluster backend: pods read them from there."""

    def __init__(self, uri: str, endpoint: str | None = None, region: str | None = None):
        import boto3  # type: ignore[import-untyped]

        if not uri.startswith("s3://"):
            raise ValueError(f"files location {uri!r}: expected s3://bucket/prefix")
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=region)

    def _key(self, scope: str, name: str) -> str:
        return "/".join(p for p in (self.prefix, scope, "files", name) if p)

    def uri(self, scope: str, file_id: str) -> str:
        return f"s3://{self.bucket}/{self._key(scope, file_id + '.jsonl')}"

    def _write(self, scope: str, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(scope, name), Body=data)

    def _read(self, scope: str, name: str) -> bytes | None:
        try:
            data: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(scope, name))["Body"].read()
            return data
        except self.client.exceptions.NoSuchKey:
            return None

    def _names(self, scope: str) -> list[str]:
        prefix = self._key(scope, "")
        names = []
        for pg in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            names += [o["Key"][len(prefix):] for o in pg.get("Contents", [])]
        return [n for n in names if n.startswith("file-") and n.endswith(".json")]

    def _remove(self, scope: str, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(scope, name))
