"""Resolve the model and datasets of a job to local paths, once per node.

- local paths and ``file://`` pass through (checked to exist);
- ``s3://`` objects or prefixes are downloaded with concurrent ranged GETs,
  verified (sha256 metadata, else single-part MD5 ETag, else size), into a
  node-local cache under ``$KUBETUNE_SCRATCH/cache/`` keyed by the URI and the
  objects' ETags: a restart on the same node with unchanged objects downloads
  nothing, a changed object gets a fresh entry;
- ``hf://org/name`` goes through ``huggingface_hub.snapshot_download`` (when the
  hub is reachable; ``HF_TOKEN`` from ``spec.storage.hubSecretRef``);
- a ``.gguf`` model file (local or S3) is converted once to a Hugging Face
  folder by :func:`kubetune_trainer.gguf.convert_to_hf`.

Once per node, not once per rank: every rank on the node calls the same
function; an exclusive file lock in the cache lets the first one download
while the others wait, then find the ready marker and return at once. No
collective is involved, so this works before ``torch.distributed`` is set up.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune_api.contract import PermanentError

from .storage import ObjectInfo, ObjectNotFound, S3Storage, Storage, is_s3, join, local_path, split_s3

log = logging.getLogger("kubetune.fetch")

READY = ".kubetune-ready.json"
LOCK_TIMEOUT_S = float(os.environ.get("KUBETUNE_FETCH_LOCK_TIMEOUT", 6 * 3600))


def scratch_dir() -> Path:
    return Path(os.environ.get("KUBETUNE_SCRATCH", "/tmp/kubetune-scratch"))


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _s3_for(spec: Any) -> S3Storage:
    return S3Storage.from_spec(getattr(spec, "storage", None))


class _NodeOnce:
    """Run a fill function into ``entry`` once per node: lock, check marker, fill, mark."""

    def __init__(self, entry: Path):
        self.entry = entry
        self.marker = entry / READY

    def ready(self) -> dict | None:
        try:
            return json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None

    def run(self, fill: Callable[[Path], None], record: dict[str, Any]) -> Path:
        if self.ready() == record:
            return self.entry
        from filelock import FileLock, Timeout

        self.entry.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.entry) + ".lock")
        try:
            with lock.acquire(timeout=LOCK_TIMEOUT_S):
                if self.ready() == record:  # another rank on this node filled it while we waited
                    return self.entry
                if self.entry.exists():  # a half-filled entry from a killed attempt
                    shutil.rmtree(self.entry)
                tmp = self.entry.with_name(self.entry.name + ".partial")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                t0 = time.monotonic()
                fill(tmp)
                (tmp / READY).write_text(json.dumps(record))
                os.replace(tmp, self.entry)
                log.info("cached %s in %.1fs", self.entry, time.monotonic() - t0)
                return self.entry
        except Timeout as e:
            raise RuntimeError(f"timed out after {LOCK_TIMEOUT_S:.0f}s waiting for another process to fill {self.entry}") from e


# ------------------------------------------------------------------ s3
def _s3_objects(storage: Storage, uri: str) -> tuple[bool, list[ObjectInfo]]:
    """(is_single_object, objects). A URI is an object if it exists as a key, else a prefix."""
    try:
        head = storage.head(uri)
        return True, [ObjectInfo(uri.rsplit("/", 1)[-1], head.size, head.etag, head.sha256)]
    except ObjectNotFound:
        pass
    objs = [o for o in storage.list(uri) if not o.name.endswith("/")]
    return False, objs


def fetch_s3(storage: Storage, uri: str, what: str, reason: str, scratch: Path | None = None) -> Path:
    """Download an s3:// object or prefix into the node cache; return the local file or folder."""
    scratch = Path(scratch or scratch_dir())
    # No HeadBucket first: read-only model buckets often grant GetObject/ListBucket on a
    # prefix only; a missing bucket or bad key surfaces from HEAD/LIST just as clearly.
    single, objs = _s3_objects(storage, uri)
    if not objs:
        raise PermanentError(f"{what} {uri} not found: no object and no objects under that prefix", reason)
    record = {"uri": uri, "objects": [[o.name, o.size, o.etag] for o in objs]}
    entry = scratch / "cache" / f"{_key(record)}"

    def fill(tmp: Path) -> None:
        for o in objs:
            src = uri if single else join(uri, o.name)
            storage.download_file(src, tmp / o.name, info=ObjectInfo(src, o.size, o.etag, o.sha256) if single else None)

    out = _NodeOnce(entry).run(fill, record)
    return out / objs[0].name if single else out


# ------------------------------------------------------------------ hub
def fetch_hf(repo: str, revision: str | None, repo_type: str, what: str, reason: str, scratch: Path | None = None) -> Path:
    scratch = Path(scratch or scratch_dir())
    entry = scratch / "cache" / f"hf-{_key(repo, revision, repo_type)}"
    record = {"hf": repo, "revision": revision, "type": repo_type}

    def fill(tmp: Path) -> None:
        try:
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
        except ImportError as e:  # pragma: no cover - huggingface_hub ships with transformers
            raise PermanentError(f"hf:// sources need huggingface_hub: {e}", reason) from e
        try:
            snapshot_download(repo_id=repo, revision=revision, repo_type=repo_type, local_dir=str(tmp),
                              token=os.environ.get("HF_TOKEN") or None)
        except GatedRepoError as e:
            raise PermanentError(f"{what} hf://{repo} is gated: accept its licence and give the job an HF_TOKEN "
                                 f"(spec.storage.hubSecretRef)", "HubAccessDenied") from e
        except RevisionNotFoundError as e:
            raise PermanentError(f"{what} hf://{repo} has no revision {revision!r}", reason) from e
        except RepositoryNotFoundError as e:
            raise PermanentError(f"{what} hf://{repo} not found on the Hub (or private without HF_TOKEN)", reason) from e
        shutil.rmtree(tmp / ".cache", ignore_errors=True)

    return _NodeOnce(entry).run(fill, record)


# ------------------------------------------------------------------ public
def _gguf_to_hf(gguf_file: Path, scratch: Path, dtype: str | None) -> Path:
    from . import gguf

    st = gguf_file.stat()
    entry = scratch / "cache" / f"gguf-{_key(str(gguf_file.resolve()), st.st_size, st.st_mtime_ns, dtype)}"
    record = {"gguf": str(gguf_file), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "dtype": dtype}

    def fill(tmp: Path) -> None:
        out = gguf.convert_to_hf(gguf_file, tmp / "model", dtype=dtype)
        for p in Path(out).iterdir():
            os.replace(p, tmp / p.name)
        shutil.rmtree(tmp / "model", ignore_errors=True)

    return _NodeOnce(entry).run(fill, record)


def model_source(spec: Any) -> str:
    """``spec.model.source``; a ``model.from`` nobody resolved is a permanent error saying who resolves it."""
    source: str | None = spec.model.source
    if source is None:
        ref = spec.model.from_.fine_tune_job if getattr(spec.model, "from_", None) else "?"
        raise PermanentError(
            f"spec.model.from (FineTuneJob {ref}) was not resolved to a model: the operator and `kubetune run` "
            "resolve it before the trainer starts; run the manifest through one of them, or set spec.model.source",
            "InvalidSpec",
        )
    return source


def resolve_model(spec: Any, scratch: str | os.PathLike | None = None) -> Path:
    """``spec.model.source`` -> a local Hugging Face model folder (a FineTuneJobSpec or anything with .model/.storage)."""
    scratch = Path(scratch or scratch_dir())
    model = spec.model
    source = model_source(spec)
    dtype = None if model.dtype == "auto" else model.dtype
    if source.startswith("hf://"):
        return fetch_hf(source[len("hf://"):], model.revision, "model", "model", "ModelNotFound", scratch)
    if is_s3(source):
        path = fetch_s3(_s3_for(spec), source.rstrip("/"), "model", "ModelNotFound", scratch)
    else:
        path = local_path(source).expanduser()
        if not path.exists():
            raise PermanentError(f"model path {path} does not exist (spec.model.source)", "ModelNotFound")
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _gguf_to_hf(path, scratch, dtype)
    if path.is_dir() and not (path / "config.json").exists():
        raise PermanentError(f"model folder {source} has no config.json: not a Hugging Face model folder", "ModelNotFound")
    return path


ADAPTER_CONFIG = "adapter_config.json"


def resolve_adapter(spec: Any, scratch: str | os.PathLike | None = None) -> Path | None:
    """``spec.model.adapter`` -> a local PEFT adapter folder (holding adapter_config.json), or None when unset."""
    uri: str | None = spec.model.adapter
    if uri is None:
        return None
    scratch = Path(scratch or scratch_dir())
    if uri.startswith("hf://"):
        path = fetch_hf(uri[len("hf://"):], None, "model", "adapter", "AdapterNotFound", scratch)
    elif is_s3(uri):
        path = fetch_s3(_s3_for(spec), uri.rstrip("/"), "adapter", "AdapterNotFound", scratch)
    else:
        path = local_path(uri).expanduser()
        if not path.exists():
            raise PermanentError(f"adapter path {path} does not exist (spec.model.adapter)", "AdapterNotFound")
    if not (path.is_dir() and (path / ADAPTER_CONFIG).is_file()):
        raise PermanentError(f"spec.model.adapter {uri} holds no {ADAPTER_CONFIG}: not a PEFT adapter folder "
                             "(an earlier job's adapter is at <output>/final/adapter)", "AdapterNotFound")
    return path


def resolve_dataset(uri: str, spec: Any = None, scratch: str | os.PathLike | None = None) -> Path | str:
    """A dataset URI -> a local file or folder. ``hf://`` datasets become a local snapshot folder."""
    scratch = Path(scratch or scratch_dir())
    if uri.startswith("hf://"):
        repo = uri[len("hf://"):]
        if repo.startswith("datasets/"):
            repo = repo[len("datasets/"):]
        return fetch_hf(repo, None, "dataset", "dataset", "DatasetNotFound", scratch)
    if is_s3(uri):
        split_s3(uri)
        return fetch_s3(_s3_for(spec), uri, "dataset", "DatasetNotFound", scratch)
    path = local_path(uri).expanduser()
    if not path.exists():
        raise PermanentError(f"dataset {uri} does not exist", "DatasetNotFound")
    return path
