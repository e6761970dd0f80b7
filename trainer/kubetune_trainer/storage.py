"""Storage: one interface, two implementations, chosen by the URI.

Everything the trainer reads or writes outside the node goes through a
:class:`Storage`: checkpoints, the final model, fetched models and data.
:func:`storage_for` picks the implementation from a URI:

- :class:`LocalStorage` for local paths and ``file://`` URIs (``kubetune run``
  and tests): atomic writes by rename, sha256 computed on upload and checked on
  download, the same errors as S3 (:class:`ObjectNotFound`,
  :class:`ChecksumMismatch`, :class:`~kubetune_api.contract.PermanentError`).
- :class:`S3Storage` for ``s3://`` URIs (AWS, MinIO, Ceph RGW, GCS's S3 API):

  - endpoint, region and addressing style come from ``spec.storage``;
    credentials only from boto3's default chain (the standard ``AWS_*``
    environment variables, which the pod fills from the job's Secret, or the
    pod's cloud identity: IRSA web identity, instance/pod metadata). Never
    from the manifest.
  - transient errors (5xx, throttling, dropped connections, short reads) are
    retried twice over: per HTTP request by botocore's ``standard`` retry mode,
    and per whole operation by :func:`_retrying` with exponential backoff and
    jitter, which also covers what botocore cannot retry (a body cut off while
    streaming, a checksum mismatch, a multipart upload that failed as a whole).
  - large files go up as concurrent multipart uploads (boto3 ``TransferConfig``)
    and come down as concurrent ranged GETs pinned to one ETag (``IfMatch``):
    :meth:`S3Storage.download_file` → :meth:`S3Storage._get_ranged`; an object
    replaced mid-download is detected (412), not silently mixed.
  - every uploaded file carries its sha256 (object metadata ``sha256``; the
    checkpoint manifest keeps it too) and downloads verify it. A file up to
    ``multipart_threshold`` goes up as one PUT, read and hashed once: that same
    sha256 is the request's SigV4 payload hash (botocore would hash the body a
    second time for it, :func:`_known_digest_signer`), so the server still
    checks the bytes it received against it.
  - errors a retry cannot fix become :class:`~kubetune_api.contract.PermanentError`
    with reason ``BucketNotFound``, ``StorageAccessDenied``,
    ``StorageCredentialsMissing`` or ``StorageMisconfigured``; a missing object
    is :class:`ObjectNotFound`.

A subclass implements the primitives (``check_access``, ``head``,
``read_bytes``, ``write_bytes``, ``list``, ``list_dirs``, ``delete``,
``_delete_tree``, ``upload_file``, ``download_file``); the composites
(``exists``, JSON, ``delete_prefix``, many-file transfers) live once in the base.
Instances are thread-safe, and picklable: the checkpoint uploader process gets a copy (see uploader.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kubetune_api.contract import PermanentError

if TYPE_CHECKING:
    from kubetune_api.spec import StorageSpec

log = logging.getLogger("kubetune.storage")

T = TypeVar("T")

MiB = 1024 * 1024
_HASH_BLOCK = 8 * MiB
_FILES_IN_PARALLEL = 4  # many-file transfers: files at once (big S3 files also split into parts)
_UPLOAD_CONCURRENCY = 8  # threads per multipart upload
_UPLOAD_PART_SIZE = 16 * MiB
_RANGED_MIN_PART = 8 * MiB  # ranged downloads: one stream per 8 MiB ...
_RANGED_MAX_STREAMS = 16  # ... up to 16 streams
_RANGED_MAX_PART = 64 * MiB  # ranges above this are split further (retry granularity)
_RANGE_ALIGN = 64 * 1024

Manifest = dict[str, dict[str, Any]]  # relative name -> {"size": int, "sha256": str}


class StorageError(Exception):
    """A storage operation failed after all retries (transient: a restart may succeed)."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """The object (or prefix) does not exist."""


class ChecksumMismatch(StorageError):
    """Downloaded bytes do not match the recorded checksum."""


class _Transient(Exception):
    """Internal: an error worth retrying at the operation level.

    ``final`` is the StorageError subclass raised once retries are exhausted.
    """

    def __init__(self, message: str, final: type[StorageError] = StorageError):
        super().__init__(message)
        self.final = final


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object. ``name`` is relative to the listed prefix (or the full URI for ``head``)."""

    name: str
    size: int
    etag: str | None = None
    sha256: str | None = None


# ------------------------------------------------------------------ helpers
def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise PermanentError(f"{uri!r} has no bucket name; expected s3://bucket/prefix", "InvalidSpec")
    return bucket, key


def local_path(uri: str) -> Path:
    """'file:///x/y' or '/x/y' -> Path('/x/y')."""
    if is_s3(uri):
        raise ValueError(f"not a local path or file:// URI: {uri!r}")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return Path(uri)


def join(base: str, *parts: str) -> str:
    """Join URI/path segments with single slashes (works for s3:// and paths)."""
    out = base.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def _hash_file(path: str | os.PathLike[str], h: Any) -> str:
    with open(path, "rb") as f:
        while True:
            block = f.read(_HASH_BLOCK)
            if not block:
                return h.hexdigest()
            h.update(block)


def sha256_file(path: str | os.PathLike[str]) -> str:
    return _hash_file(path, hashlib.sha256())


def md5_file(path: str | os.PathLike[str]) -> str:
    return _hash_file(path, hashlib.md5(usedforsecurity=False))


def _retrying(
    op: Callable[[], T],
    what: str,
    attempts: int,
    base_delay: float,
    max_delay: float = 20.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``op``; on :class:`_Transient` wait (exponential backoff, full jitter) and retry."""
    for attempt in range(1, attempts + 1):
        try:
            return op()
        except _Transient as e:
            if attempt == attempts:
                raise e.final(f"{what}: giving up after {attempts} attempts: {e}") from e
            delay = random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))
            log.warning("%s: transient error (attempt %d/%d), retrying in %.2fs: %s", what, attempt, attempts, delay, e)
            sleep(delay)
    raise AssertionError("unreachable")


_KNOWN_DIGEST_SIGNER = "kubetune-s3v4-known-digest"


def _known_digest_signer(signature_version: str, signing_name: str, context: dict[str, Any], **_: Any) -> str | None:
    """botocore ``choose-signer.s3.PutObject`` hook: SigV4 whose payload hash is the body's known sha256.

    S3 SigV4 signs the sha256 of the body (always over plain HTTP, and over HTTPS without a checksum
    header), and botocore computes it by reading the whole body again. Our PUTs of a file carry that
    very digest in their ``sha256`` metadata (:meth:`S3Storage.upload_file` hashed the bytes it sends),
    so the signer takes it from there: the server compares it with the bytes it got, as before, and
    each byte is hashed once. Requests without the metadata (JSON markers) are signed as usual.
    """
    import botocore.auth

    if signing_name != "s3" or signature_version not in ("v4", "s3v4") or context.get("auth_type") not in (None, "v4"):
        return None  # anonymous, S3 Express, SigV4a...: botocore's own choice
    if _KNOWN_DIGEST_SIGNER not in botocore.auth.AUTH_TYPE_MAPS:

        class KnownDigestS3SigV4Auth(botocore.auth.S3SigV4Auth):
            def payload(self, request: Any) -> str:
                digest = request.headers.get("x-amz-meta-sha256")
                if isinstance(digest, bytes):
                    digest = digest.decode()
                if (digest and len(digest) == 64 and self._should_sha256_sign_payload(request)
                        and not self._is_streaming_checksum_payload(request)):
                    return str(digest)
                return str(super().payload(request))

        botocore.auth.AUTH_TYPE_MAPS[_KNOWN_DIGEST_SIGNER] = KnownDigestS3SigV4Auth
    return _KNOWN_DIGEST_SIGNER


def _temp_beside(dest: Path) -> Path:
    """A hidden temporary name next to ``dest``: renamed over it when complete, skipped by listings."""
    return dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex}")


# ------------------------------------------------------------------ the interface
class Storage(ABC):
    """Where checkpoints, the final model and fetched inputs live; see the module docstring."""

    #: files transferred at once by :meth:`upload_files` / :meth:`download_files`
    files_in_parallel: int = _FILES_IN_PARALLEL

    # ------------------------------------------------ primitives
    @abstractmethod
    def check_access(self, uri: str, write: bool = False) -> None:
        """Fail fast (PermanentError) if the location is missing or the credentials are wrong.

        With ``write=True`` a small probe object is written and deleted under
        ``uri``, so a read-only credential is caught before hours of training.
        """

    @abstractmethod
    def head(self, uri: str) -> ObjectInfo:
        """Size (and ETag, sha256 where recorded) of one object; ObjectNotFound if absent."""

    @abstractmethod
    def read_bytes(self, uri: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write one small object; readers see the old or the new bytes, never a part."""

    @abstractmethod
    def list(self, prefix_uri: str, recursive: bool = True) -> list[ObjectInfo]:
        """Objects under a prefix ('dir'), names relative to it, sorted."""

    @abstractmethod
    def list_dirs(self, prefix_uri: str) -> list[str]:
        """Immediate 'sub-directory' names under a prefix, sorted."""

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Delete one object; deleting a missing one is not an error."""

    @abstractmethod
    def _delete_tree(self, prefix_uri: str) -> int:
        """Delete everything under a prefix; returns how many objects went."""

    @abstractmethod
    def upload_file(self, local: str | os.PathLike[str], uri: str, sha256: str | None = None) -> ObjectInfo:
        """Upload one file; returns its size and sha256 (computed unless given)."""

    @abstractmethod
    def download_file(
        self,
        uri: str,
        dest: str | os.PathLike[str],
        *,
        sha256: str | None = None,
        ranged: bool = True,
        info: ObjectInfo | None = None,
    ) -> ObjectInfo:
        """Download one object to ``dest`` atomically and verify it against ``sha256`` when given.

        Returns what was verified in ``ObjectInfo.sha256`` (None if only the
        size could be checked). ``info`` is the object's ``head`` when the
        caller already has it; ``ranged`` allows concurrent range requests.
        """

    # ------------------------------------------------ composites
    def exists(self, uri: str) -> bool:
        try:
            self.head(uri)
            return True
        except ObjectNotFound:
            return False

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes(uri, json.dumps(obj, indent=1, sort_keys=True).encode())

    def delete_prefix(self, prefix_uri: str, first: str | None = None) -> int:
        """Delete everything under a prefix; the relative name ``first`` goes before the rest.

        Checkpoint retention passes the commit marker as ``first``: dying half
        way then leaves an uncommitted (ignored) checkpoint, never a committed
        but incomplete one.
        """
        if first:
            self.delete(join(prefix_uri, first))
        return self._delete_tree(prefix_uri)

    def upload_files(self, files: dict[str, Path], prefix_uri: str, sha256s: dict[str, str] | None = None) -> Manifest:
        """Upload {relative name: local file} concurrently; returns the manifest {name: {size, sha256}}."""
        sha256s = sha256s or {}
        manifest: Manifest = {}
        with ThreadPoolExecutor(self.files_in_parallel, thread_name_prefix="kubetune-put") as ex:
            futs = {name: ex.submit(self.upload_file, path, join(prefix_uri, name), sha256s.get(name)) for name, path in files.items()}
            for name, fut in futs.items():
                info = fut.result()
                manifest[name] = {"size": info.size, "sha256": info.sha256}
        return manifest

    def download_files(self, prefix_uri: str, manifest: Manifest, dest_dir: str | os.PathLike[str]) -> None:
        """Download the files named in a manifest under a prefix, verifying each sha256."""
        dest_dir = Path(dest_dir)
        with ThreadPoolExecutor(self.files_in_parallel, thread_name_prefix="kubetune-dl") as ex:
            futs = [
                ex.submit(self.download_file, join(prefix_uri, name), dest_dir / name, sha256=meta.get("sha256"))
                for name, meta in sorted(manifest.items())
            ]
            for fut in futs:
                fut.result()


def storage_for(uri: str, storage_spec: StorageSpec | None = None, **s3_tuning: Any) -> Storage:
    """The storage for a URI: :class:`S3Storage` for ``s3://`` (configured from ``spec.storage``), else :class:`LocalStorage`."""
    if is_s3(uri):
        return S3Storage.from_spec(storage_spec, **s3_tuning)
    return LocalStorage()


# ------------------------------------------------------------------ local paths
class LocalStorage(Storage):
    """Local paths and ``file://`` URIs, with the same guarantees as S3 (atomic, checksummed)."""

    def check_access(self, uri: str, write: bool = False) -> None:
        if not write:
            return
        p = local_path(uri)
        try:
            p.mkdir(parents=True, exist_ok=True)
            probe = p / f".kubetune-probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise PermanentError(f"cannot write to {uri}: {e}", "StorageAccessDenied") from e

    def head(self, uri: str) -> ObjectInfo:
        p = local_path(uri)
        if not p.is_file():
            raise ObjectNotFound(f"{uri} not found")
        return ObjectInfo(uri, p.stat().st_size)

    def read_bytes(self, uri: str) -> bytes:
        try:
            return local_path(uri).read_bytes()
        except FileNotFoundError as e:
            raise ObjectNotFound(f"{uri} not found") from e

    def write_bytes(self, uri: str, data: bytes) -> None:
        p = local_path(uri)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_beside(p)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    def list(self, prefix_uri: str, recursive: bool = True) -> list[ObjectInfo]:
        root = local_path(prefix_uri)
        if not root.is_dir():
            return []
        it: Iterable[Path] = root.rglob("*") if recursive else root.iterdir()
        out = [ObjectInfo(p.relative_to(root).as_posix(), p.stat().st_size) for p in it if p.is_file() and ".tmp-" not in p.name]
        return sorted(out, key=lambda o: o.name)

    def list_dirs(self, prefix_uri: str) -> list[str]:
        root = local_path(prefix_uri)
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def delete(self, uri: str) -> None:
        local_path(uri).unlink(missing_ok=True)

    def _delete_tree(self, prefix_uri: str) -> int:
        root = local_path(prefix_uri)
        if not root.is_dir():
            return 0
        n = sum(1 for p in root.rglob("*") if p.is_file())
        shutil.rmtree(root, ignore_errors=True)
        return n

    def upload_file(self, local: str | os.PathLike[str], uri: str, sha256: str | None = None) -> ObjectInfo:
        src = Path(local)
        digest = sha256 or sha256_file(src)
        dst = local_path(uri)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_beside(dst)
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return ObjectInfo(uri, src.stat().st_size, None, digest)

    def download_file(
        self,
        uri: str,
        dest: str | os.PathLike[str],
        *,
        sha256: str | None = None,
        ranged: bool = True,
        info: ObjectInfo | None = None,
    ) -> ObjectInfo:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = local_path(uri)
        if not src.is_file():
            raise ObjectNotFound(f"{uri} not found")
        tmp = _temp_beside(dest)
        shutil.copyfile(src, tmp)
        got = sha256_file(tmp)
        if sha256 and got != sha256:
            tmp.unlink()
            raise ChecksumMismatch(f"{uri}: sha256 {got} != expected {sha256}")
        os.replace(tmp, dest)
        return ObjectInfo(uri, dest.stat().st_size, None, got)


# ------------------------------------------------------------------ S3
class S3Storage(Storage):
    """``s3://`` URIs on any S3-compatible server; see the module docstring for retries and checksums."""

    def __init__(
        self,
        endpoint: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        *,
        concurrency: int | None = None,
        part_size: int | None = None,
        multipart_threshold: int = 64 * MiB,
        request_attempts: int = 6,
        operation_attempts: int = 5,
        base_delay: float = 0.25,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ):
        self.endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        self.region = region
        self.addressing_style = addressing_style
        # None = chosen per object (ranged_plan); uploads then use 8 threads and 16 MiB parts.
        self.fixed_concurrency = max(1, concurrency) if concurrency is not None else None
        self.fixed_part_size = max(1, part_size) if part_size is not None else None
        self.concurrency = self.fixed_concurrency or _UPLOAD_CONCURRENCY  # threads per upload (multipart parts)
        self.part_size = self.fixed_part_size or _UPLOAD_PART_SIZE  # multipart parts are at least 5 MiB
        self.multipart_threshold = multipart_threshold
        self.request_attempts = request_attempts
        self.operation_attempts = operation_attempts
        self.base_delay = base_delay
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.files_in_parallel = max(1, min(_FILES_IN_PARALLEL, self.concurrency))
        self._client: Any = None
        self._client_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable, for the checkpoint uploader process: the settings travel, the client is rebuilt there."""
        state = dict(self.__dict__)
        state["_client"] = None
        del state["_client_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client_lock = threading.Lock()

    @classmethod
    def from_spec(cls, storage_spec: StorageSpec | None = None, **kwargs: Any) -> S3Storage:
        """Build from a ``spec.storage`` (StorageSpec) or None (AWS defaults).

        Transfer tuning from the environment, overriding the defaults:
        ``KUBETUNE_S3_CONCURRENCY`` (threads per transfer; default: ranged
        downloads choose from the object size, see :meth:`ranged_plan`, uploads 8)
        and ``KUBETUNE_S3_PART_SIZE_MB`` (ranged-GET and multipart part size;
        default: chosen from the object size, uploads 16).
        """
        if "KUBETUNE_S3_CONCURRENCY" in os.environ:
            kwargs.setdefault("concurrency", int(os.environ["KUBETUNE_S3_CONCURRENCY"]))
        if "KUBETUNE_S3_PART_SIZE_MB" in os.environ:
            kwargs.setdefault("part_size", int(float(os.environ["KUBETUNE_S3_PART_SIZE_MB"]) * MiB))
        if storage_spec is None:
            return cls(**kwargs)
        return cls(
            endpoint=storage_spec.endpoint,
            region=storage_spec.region,
            addressing_style=storage_spec.addressing_style,
            **kwargs,
        )

    # ------------------------------------------------ client and errors
    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use."""
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                cfg: dict[str, Any] = dict(
                    retries={"max_attempts": self.request_attempts, "mode": "standard"},
                    s3={"addressing_style": self.addressing_style},
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    max_pool_connections=max(10, 2 * self.concurrency, self.files_in_parallel * _RANGED_MAX_STREAMS + 4),
                    user_agent_extra="kubetune",
                )
                if self.endpoint:
                    # Third-party S3 servers (older MinIO, Ceph RGW, GCS) reject or mangle
                    # the CRC trailers boto3 >= 1.36 sends by default; our own sha256 per
                    # file covers integrity end to end instead.
                    cfg["request_checksum_calculation"] = "when_required"
                    cfg["response_checksum_validation"] = "when_required"
                session = boto3.session.Session()
                client = session.client(
                    "s3",
                    endpoint_url=self.endpoint,
                    region_name=self.region or session.region_name or "us-east-1",
                    config=Config(**cfg),
                )
                client.meta.events.register("choose-signer.s3.PutObject", _known_digest_signer)
                self._client = client
            return self._client

    def _where(self) -> str:
        return f" at endpoint {self.endpoint}" if self.endpoint else ""

    def _call(self, what: str, uri: str, fn: Callable[[], T]) -> T:
        """One S3 call with error translation; transient errors become _Transient."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            ParamValidationError,
            PartialCredentialsError,
        )

        try:
            return fn()
        except ClientError as e:
            raise self._translate(e, what, uri) from e
        except ParamValidationError as e:  # a bucket or key S3 cannot have: no retry makes it valid
            detail = " ".join(str(e).split())
            raise PermanentError(f"{uri!r} is not a valid S3 location ({what}): {detail}", "InvalidSpec") from e
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise PermanentError(
                f"no S3 credentials found for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                f"(from the Secret named in spec.storage.secretRef) or give the pod a cloud identity ({e})",
                "StorageCredentialsMissing",
            ) from e
        except BotoCoreError as e:  # connection errors, read timeouts, bodies cut off while streaming
            raise _Transient(f"{what} {uri}: {e}") from e
        except (OSError, ConnectionError) as e:  # urllib3 protocol errors surface as OSError subclasses
            raise _Transient(f"{what} {uri}: {e}") from e

    def _translate(self, e: Any, what: str, uri: str) -> Exception:
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        bucket = split_s3(uri)[0]
        if code == "NoSuchBucket" or (what == "head bucket" and status == 404):
            return PermanentError(
                f"bucket {bucket!r} does not exist{self._where()} ({what} {uri}); "
                f"check output.uri / the source URI and spec.storage.endpoint",
                "BucketNotFound",
            )
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                    "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
                    "InvalidClientTokenId", "403") or status == 403:
            return PermanentError(
                f"access denied to {uri}{self._where()} ({what}: {code or status}); check the credentials "
                f"in the Secret named by spec.storage.secretRef (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) "
                f"or the pod identity's permissions on bucket {bucket!r}",
                "StorageAccessDenied",
            )
        if code in ("NoSuchKey", "NotFound", "404") or status == 404:
            return ObjectNotFound(f"{uri} not found{self._where()}")
        if code in ("PreconditionFailed", "412") or status == 412:
            return _Transient(f"{uri} changed while it was being read ({what})")
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException") or status == 301:
            return PermanentError(
                f"bucket {bucket!r} is in another region or needs another endpoint ({code}); "
                f"set spec.storage.region / spec.storage.endpoint",
                "StorageMisconfigured",
            )
        if status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout", "InternalError",
                                                       "ServiceUnavailable", "RequestTimeTooSkewed"):
            return _Transient(f"{what} {uri}: {code or status}")
        return StorageError(f"{what} {uri} failed{self._where()}: {code or status}: {err.get('Message', e)}")

    def _op(self, what: str, uri: str, fn: Callable[[], T]) -> T:
        """An operation retried as a whole on transient failures."""
        return _retrying(lambda: self._call(what, uri, fn), f"{what} {uri}", self.operation_attempts, self.base_delay)

    @staticmethod
    def _dir_prefix(key: str) -> str:
        return key.rstrip("/") + "/" if key else ""

    # ------------------------------------------------ primitives
    def check_access(self, uri: str, write: bool = False) -> None:
        bucket, _ = split_s3(uri)
        self._op("head bucket", uri, lambda: self.client.head_bucket(Bucket=bucket))
        if write:
            probe = join(uri, f".kubetune-probe-{uuid.uuid4().hex}")
            self.write_bytes(probe, b"")
            self.delete(probe)

    def head(self, uri: str) -> ObjectInfo:
        return self._op("head", uri, lambda: self._head_once(uri))

    def _head_once(self, uri: str) -> ObjectInfo:
        bucket, key = split_s3(uri)
        r = self.client.head_object(Bucket=bucket, Key=key)
        return ObjectInfo(uri, int(r["ContentLength"]), r.get("ETag", "").strip('"') or None, (r.get("Metadata") or {}).get("sha256"))

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)

        def get() -> bytes:
            r = self.client.get_object(Bucket=bucket, Key=key)
            data = r["Body"].read()
            if len(data) != int(r["ContentLength"]):
                raise _Transient(f"short read of {uri}: {len(data)} of {r['ContentLength']} bytes")
            return data

        return self._op("get", uri, get)

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_s3(uri)
        self._op("put", uri, lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data))

    def list(self, prefix_uri: str, recursive: bool = True) -> list[ObjectInfo]:
        bucket, key = split_s3(prefix_uri)
        prefix = self._dir_prefix(key)

        def list_all() -> list[ObjectInfo]:
            out = []
            kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if not recursive:
                kw["Delimiter"] = "/"
            for page in self.client.get_paginator("list_objects_v2").paginate(**kw):
                for o in page.get("Contents", []):
                    out.append(ObjectInfo(o["Key"][len(prefix):], int(o["Size"]), o.get("ETag", "").strip('"') or None))
            return out

        return sorted(self._op("list", prefix_uri, list_all), key=lambda o: o.name)

    def list_dirs(self, prefix_uri: str) -> list[str]:
        bucket, key = split_s3(prefix_uri)
        prefix = self._dir_prefix(key)

        def list_all() -> list[str]:
            out = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                for cp in page.get("CommonPrefixes", []):
                    out.append(cp["Prefix"][len(prefix):].rstrip("/"))
            return out

        return sorted(self._op("list", prefix_uri, list_all))

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        self._op("delete", uri, lambda: self.client.delete_object(Bucket=bucket, Key=key))

    def _delete_tree(self, prefix_uri: str) -> int:
        bucket, key = split_s3(prefix_uri)
        prefix = self._dir_prefix(key)
        names = [o.name for o in self.list(prefix_uri)]
        for i in range(0, len(names), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": prefix + n} for n in names[i:i + 1000]]

            def delete_batch(batch: list[dict[str, str]] = batch) -> None:
                r = self.client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                errors = r.get("Errors") or []
                if errors:
                    raise _Transient(f"{len(errors)} objects not deleted, e.g. {errors[0]}")

            self._op("delete", prefix_uri, delete_batch)
        return len(names)

    def upload_file(self, local: str | os.PathLike[str], uri: str, sha256: str | None = None) -> ObjectInfo:
        """Multipart and concurrent above ``multipart_threshold``; the sha256 goes into the object's metadata.

        Up to the threshold: one PUT of the file's bytes, read once and hashed once (the digest also
        signs the request, see :func:`_known_digest_signer`).
        """
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig

        src = Path(local)
        size = src.stat().st_size
        bucket, key = split_s3(uri)
        if size <= self.multipart_threshold:
            data = src.read_bytes()
            digest = sha256 or hashlib.sha256(data).hexdigest()
            self._op("upload", uri, lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data,
                                                                   Metadata={"sha256": digest}))
            return ObjectInfo(uri, len(data), None, digest)
        digest = sha256 or sha256_file(src)
        cfg = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=max(self.part_size, 5 * MiB),
            max_concurrency=self.concurrency,
            use_threads=True,
        )

        def up() -> None:
            try:
                self.client.upload_file(str(src), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}}, Config=cfg)
            except S3UploadFailedError as e:
                # s3transfer wraps the ClientError as text; recover the permanent cases.
                msg = str(e)
                if "NoSuchBucket" in msg:
                    raise PermanentError(f"bucket {bucket!r} does not exist{self._where()} (upload {uri})", "BucketNotFound") from e
                if any(c in msg for c in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "(403)")):
                    raise PermanentError(f"access denied uploading {uri}{self._where()}: {msg}", "StorageAccessDenied") from e
                raise _Transient(msg) from e

        self._op("upload", uri, up)
        return ObjectInfo(uri, size, None, digest)

    def download_file(
        self,
        uri: str,
        dest: str | os.PathLike[str],
        *,
        sha256: str | None = None,
        ranged: bool = True,
        info: ObjectInfo | None = None,
    ) -> ObjectInfo:
        """Download one object, pinned to one ETag, and verify it.

        Verification uses, in order: ``sha256`` (from a manifest), the object's
        ``sha256`` metadata (written by :meth:`upload_file`), or the ETag when it
        is a plain MD5 (single-part uploads). Objects big enough for two ranges
        (:meth:`ranged_plan`) come down as concurrent ranged GETs
        (:meth:`_get_ranged`) when ``ranged``.
        The whole download is retried on transient errors, a checksum mismatch
        included.
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def attempt() -> ObjectInfo:
            head = info if (info is not None and info.etag) else self._call("head", uri, lambda: self._head_once(uri))
            tmp = _temp_beside(dest)
            try:
                part_size, streams = self.ranged_plan(head.size)
                if ranged and streams > 1 and head.size > part_size:
                    self._get_ranged(uri, tmp, head, part_size, streams)
                else:
                    self._get_whole(uri, tmp, head)
                verified = self._verify(uri, tmp, head, sha256)
                os.replace(tmp, dest)
                return ObjectInfo(uri, head.size, head.etag, verified)
            finally:
                tmp.unlink(missing_ok=True)

        return _retrying(attempt, f"download {uri}", self.operation_attempts, self.base_delay)

    # ------------------------------------------------ download internals
    def _verify(self, uri: str, path: Path, head: ObjectInfo, expected: str | None) -> str | None:
        size = path.stat().st_size
        if size != head.size:
            raise _Transient(f"{uri}: got {size} bytes, expected {head.size}")
        want = expected or head.sha256
        if want:
            got = sha256_file(path)
            if got != want:
                raise _Transient(f"{uri}: sha256 mismatch (got {got}, expected {want})", ChecksumMismatch)
            return got
        if head.etag and "-" not in head.etag and len(head.etag) == 32:
            got_md5 = md5_file(path)
            if got_md5 != head.etag:
                raise _Transient(f"{uri}: MD5 {got_md5} does not match ETag {head.etag}", ChecksumMismatch)
            return None
        log.info("%s: multipart object without a sha256; only its size (%d bytes) was verified", uri, size)
        return None

    @staticmethod
    def _get_kwargs(uri: str, head: ObjectInfo) -> dict[str, Any]:
        """GetObject arguments pinned to the ETag seen by HEAD: a replaced object answers 412."""
        bucket, key = split_s3(uri)
        kw: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if head.etag:
            kw["IfMatch"] = f'"{head.etag}"'
        return kw

    def _get_whole(self, uri: str, tmp: Path, head: ObjectInfo) -> None:
        kw = self._get_kwargs(uri, head)

        def get() -> None:
            r = self.client.get_object(**kw)
            with open(tmp, "wb") as f:
                for chunk in r["Body"].iter_chunks(MiB):
                    f.write(chunk)

        self._call("get", uri, get)

    def ranged_plan(self, size: int) -> tuple[int, int]:
        """(range size, concurrent streams) for downloading an object of ``size`` bytes.

        Each connection to S3 is limited (tens of MB/s to ~100 MB/s), so speed comes
        from parallel streams; each range costs a request and a time to first byte,
        so ranges should be few and large. The rule: one stream per
        ``_RANGED_MIN_PART`` (8 MiB, the range size AWS recommends) up to
        ``_RANGED_MAX_STREAMS``, the object split evenly over them so every stream
        makes exactly one request; ranges capped at ``_RANGED_MAX_PART`` so a failed
        range re-downloads little (bigger objects get more ranges than streams).
        Values given to the constructor (or KUBETUNE_S3_CONCURRENCY /
        KUBETUNE_S3_PART_SIZE_MB) win.
        """
        if self.fixed_part_size is not None:
            ranges = -(-size // self.fixed_part_size)
            return self.fixed_part_size, self.fixed_concurrency or max(1, min(_RANGED_MAX_STREAMS, ranges))
        streams = self.fixed_concurrency or max(1, min(_RANGED_MAX_STREAMS, size // _RANGED_MIN_PART))
        part = -(-size // streams)  # ceil: each stream one range
        part = -(-part // _RANGE_ALIGN) * _RANGE_ALIGN
        return max(1, min(part, _RANGED_MAX_PART)), streams

    def _get_ranged(self, uri: str, tmp: Path, head: ObjectInfo, part_size: int, streams: int) -> None:
        """Concurrent ranged GETs of ``part_size`` bytes into one preallocated file, each range retried on its own."""
        size = head.size
        with open(tmp, "wb") as f:
            f.truncate(size)
        fd = os.open(tmp, os.O_WRONLY)
        try:
            def fetch(start: int) -> None:
                end = min(start + part_size, size) - 1
                kw = {**self._get_kwargs(uri, head), "Range": f"bytes={start}-{end}"}

                def get_range() -> None:
                    r = self.client.get_object(**kw)
                    pos = start
                    for chunk in r["Body"].iter_chunks(MiB):
                        os.pwrite(fd, chunk, pos)
                        pos += len(chunk)
                    if pos != end + 1:
                        raise _Transient(f"short range read {start}-{end}: got {pos - start} bytes")

                _retrying(lambda: self._call("get range", uri, get_range), f"get {uri} bytes {start}-{end}",
                          self.operation_attempts, self.base_delay)

            with ThreadPoolExecutor(streams, thread_name_prefix="kubetune-get") as ex:
                for fut in [ex.submit(fetch, s) for s in range(0, size, part_size)]:
                    fut.result()
        finally:
            os.close(fd)
