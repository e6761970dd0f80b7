"""Operator settings, read once from environment variables.

Every variable is documented here and in docs/operator.md; the Helm chart sets
them on the operator Deployment. Unset variables take the defaults shown.

- ``KUBETUNE_TRAINER_IMAGE`` (default: ghcr.io/kubetune/kubetune-trainer:<version>): Trainer image
  for jobs that set no spec.image.
- ``KUBETUNE_IMAGE_PULL_POLICY`` (default: IfNotPresent): Pull policy for jobs that set no
  spec.imagePullPolicy.
- ``KUBETUNE_IMAGE_PULL_SECRETS`` (default: (none)): Comma-separated Secret names added as
  imagePullSecrets to trainer pods.
- ``KUBETUNE_DEFAULT_STORAGE_ENDPOINT`` (default: (none)): S3 endpoint for jobs whose
  spec.storage.endpoint is unset (e.g. an in-cluster MinIO).
- ``KUBETUNE_DEFAULT_STORAGE_REGION`` (default: (none)): S3 region for jobs whose
  spec.storage.region is unset.
- ``KUBETUNE_DEFAULT_STORAGE_SECRET`` (default: (none)): Secret (in the job's namespace) with AWS_*
  keys for jobs whose spec.storage.secretRef is unset.
- ``KUBETUNE_WATCH_NAMESPACES`` (default: (none: cluster-wide)): Comma-separated namespaces (globs
  allowed) to watch; empty means the whole cluster. The CLI's --namespace/--all-namespaces override
  it.
- ``KUBETUNE_PEERING_NAME`` (default: kubetune): Kopf peering object shared by operator replicas
  (only one replica acts at a time).
- ``KUBETUNE_STANDALONE`` (default: false): true: no peering (a single replica, or tests).
- ``KUBETUNE_PEERING_PRIORITY`` (default: random per process): Kopf peering priority: the live
  replica with the highest priority acts, the others stand by (Kopf pauses replicas of equal
  priority, so each replica needs its own).
- ``KUBETUNE_METRICS_PORT`` (default: 9090): Port of the Prometheus /metrics endpoint (0 disables).
- ``KUBETUNE_HEALTH_PORT`` (default: 8080): Port of the liveness endpoint /healthz (0 disables).
- ``KUBETUNE_RUN_AS_USER`` (default: 1000): UID of the trainer containers (they must not run as
  root).
- ``KUBETUNE_RUN_AS_GROUP`` (default: 1000): GID of the trainer containers.
- ``KUBETUNE_FS_GROUP`` (default: 1000): fsGroup of the trainer pods (owns the scratch volume).
- ``KUBETUNE_RENDEZVOUS_PORT`` (default: 29500): torchrun master port on rank 0's pod.
- ``KUBETUNE_NETWORK_POLICY`` (default: false): true: each job gets a NetworkPolicy, owned by its
  FineTuneJob, under which its trainer pods accept connections (rendezvous, NCCL/gloo) only from
  that job's own pods.
- ``KUBETUNE_STATUS_REPORTER`` (default: true): Rank 0 reports progress, the last checkpoint and the
  output to the operator's report endpoint with a projected token of audience kubetune.io/report,
  which the API server refuses (pods hold no Kubernetes API credential). false: no token at all,
  progress only in logs.
- ``KUBETUNE_REPORT_PORT`` (default: 8443): Port of the report endpoint (0 disables it).
- ``KUBETUNE_REPORT_URL`` (default: (none)): The report endpoint's URL as trainer pods reach it (the
  chart sets its Service's, e.g. https://kubetune-report.kubetune.svc:8443); unset: pods get no
  token and report only to their logs. An http:// URL needs KUBETUNE_REPORT_INSECURE_HTTP=true.
- ``KUBETUNE_REPORT_TLS_CERT`` (default: (none)): PEM certificate (chain) the report endpoint serves
  HTTPS with; its names must include the host of KUBETUNE_REPORT_URL. Re-read when the file
  changes (cert-manager renewals).
- ``KUBETUNE_REPORT_TLS_KEY`` (default: (none)): PEM private key of KUBETUNE_REPORT_TLS_CERT.
- ``KUBETUNE_REPORT_CA`` (default: (none)): PEM CA certificate(s) trainer pods verify the report
  endpoint against: copied into each job's ConfigMap (no Secret reaches the pods). Required with an
  https:// URL.
- ``KUBETUNE_REPORT_INSECURE_HTTP`` (default: false): true: serve and post reports over plain HTTP,
  so the pods' report tokens and reports travel unencrypted (a warning is logged). Only for a
  network that encrypts by itself (a service mesh's mTLS) or for trying things out.
- ``KUBETUNE_REPORT_INTERVAL_SECONDS`` (default: 1): A job's reports are accepted at most this often
  (more often: 429 with Retry-After); bounds the status writes a pod can cause.
- ``KUBETUNE_MAX_BACKOFF_SECONDS`` (default: 3600): Cap of the doubling restart backoff.
- ``KUBETUNE_RESYNC_SECONDS`` (default: 60): A job is re-reconciled at least this often even without
  events.
- ``KUBETUNE_LOG_FORMAT`` (default: json): Operator log format: json (one object per line) or plain.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Literal

from kubetune_operator import __version__

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
# KUBETUNE_REPORT_CA as last read: path -> ((mtime_ns, size), PEM). A Secret or ConfigMap
# volume swaps its files atomically, so a changed stat means a changed bundle.
_ca_cache: dict[str, tuple[tuple[int, int], str]] = {}
DEFAULT_TRAINER_IMAGE = f"ghcr.io/kubetune/kubetune-trainer:{__version__}"


def _bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{name}={value!r}: expected true or false")


def _int(value: str, name: str, minimum: int = 0) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected an integer") from None
    if n < minimum:
        raise ValueError(f"{name}={value!r}: must be at least {minimum}")
    return n


def _list(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip())


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    image_pull_policy: PullPolicy = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    default_storage_endpoint: str | None = None
    default_storage_region: str | None = None
    default_storage_secret: str | None = None
    watch_namespaces: tuple[str, ...] = ()
    peering_name: str = "kubetune"
    # Named explicitly (KUBETUNE_PEERING_NAME, --peering): the object must exist. Otherwise Kopf's
    # auto-detection: peering when the object exists, standalone when it does not.
    peering_required: bool = False
    standalone: bool = False
    peering_priority: int | None = None  # None: a random one per process
    metrics_port: int = 9090
    health_port: int = 8080
    run_as_user: int = 1000
    run_as_group: int = 1000
    fs_group: int = 1000
    rendezvous_port: int = 29500
    status_reporter: bool = True
    network_policy: bool = False
    report_port: int = 8443
    report_url: str | None = None
    report_tls_cert: str | None = None
    report_tls_key: str | None = None
    report_ca: str | None = None
    report_insecure_http: bool = False
    report_interval_seconds: float = 1.0
    max_backoff_seconds: int = 3600
    resync_seconds: float = 60.0
    log_format: str = "json"

    @property
    def reports_progress(self) -> bool:
        """Trainer pods get a report token and the endpoint's URL (report.py)."""
        return self.status_reporter and bool(self.report_url)

    @property
    def report_serves_tls(self) -> bool:
        """The report endpoint serves HTTPS (a certificate and key are given)."""
        return bool(self.report_tls_cert and self.report_tls_key)

    def report_ca_pem(self) -> str | None:
        """The PEM bundle of KUBETUNE_REPORT_CA (None: not set); re-read when the file changes.

        Raises ValueError naming the setting when the file cannot be read or holds no certificate.
        """
        path = self.report_ca
        if not path:
            return None
        try:
            st = os.stat(path)
            cached = _ca_cache.get(path)
            if cached is not None and cached[0] == (st.st_mtime_ns, st.st_size):
                return cached[1]
            with open(path, encoding="ascii") as f:
                pem = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"KUBETUNE_REPORT_CA={path!r}: cannot read the CA certificate ({e})") from None
        if _PEM_CERTIFICATE not in pem:
            raise ValueError(f"KUBETUNE_REPORT_CA={path!r}: holds no PEM certificate ({_PEM_CERTIFICATE} ...)")
        _ca_cache[path] = ((st.st_mtime_ns, st.st_size), pem)
        return pem

    def __post_init__(self) -> None:
        if (problem := self.report_channel_problem()) is not None:
            raise ValueError(problem)

    def report_channel_problem(self) -> str | None:
        """Why these settings would expose the report token (None: they do not).

        Secure by default: the token and reports travel over TLS that trainer pods
        verify against KUBETUNE_REPORT_CA, unless KUBETUNE_REPORT_INSECURE_HTTP says
        otherwise. Only combinations are checked here; the files at operator start.
        """
        if bool(self.report_tls_cert) != bool(self.report_tls_key):
            return ("KUBETUNE_REPORT_TLS_CERT and KUBETUNE_REPORT_TLS_KEY go together: give both "
                    "(the serving certificate and its key) or neither")
        if not self.reports_progress:
            return None
        url = str(self.report_url)
        if url.startswith("http://"):
            if not self.report_insecure_http:
                return (f"KUBETUNE_REPORT_URL={url!r} is plain HTTP: trainer pods would send their report token "
                        "unencrypted. Serve TLS (KUBETUNE_REPORT_TLS_CERT, KUBETUNE_REPORT_TLS_KEY, KUBETUNE_REPORT_CA; "
                        "the Helm chart does) with an https:// URL, or set KUBETUNE_REPORT_INSECURE_HTTP=true to accept that")
            if self.report_serves_tls and self.report_port:
                return (f"KUBETUNE_REPORT_URL={url!r} is plain HTTP but the endpoint serves HTTPS "
                        "(KUBETUNE_REPORT_TLS_CERT is set): use an https:// URL")
            return None
        if not self.report_ca:
            return (f"KUBETUNE_REPORT_URL={url!r} needs KUBETUNE_REPORT_CA: the CA certificate trainer pods "
                    "verify the report endpoint against (the Helm chart sets it)")
        if self.report_port and not self.report_serves_tls:
            return (f"KUBETUNE_REPORT_URL={url!r} is https:// but the endpoint has no certificate to serve: "
                    "set KUBETUNE_REPORT_TLS_CERT and KUBETUNE_REPORT_TLS_KEY")
        return None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            v = env.get(name)
            return v if v not in (None, "") else None

        kw: dict[str, Any] = {}
        if (v := get("KUBETUNE_TRAINER_IMAGE")) is not None:
            kw["trainer_image"] = v
        if (v := get("KUBETUNE_IMAGE_PULL_POLICY")) is not None:
            if v not in ("Always", "IfNotPresent", "Never"):
                raise ValueError(f"KUBETUNE_IMAGE_PULL_POLICY={v!r}: expected Always, IfNotPresent or Never")
            kw["image_pull_policy"] = v
        if (v := get("KUBETUNE_IMAGE_PULL_SECRETS")) is not None:
            kw["image_pull_secrets"] = _list(v)
        kw["default_storage_endpoint"] = get("KUBETUNE_DEFAULT_STORAGE_ENDPOINT")
        kw["default_storage_region"] = get("KUBETUNE_DEFAULT_STORAGE_REGION")
        kw["default_storage_secret"] = get("KUBETUNE_DEFAULT_STORAGE_SECRET")
        if (v := get("KUBETUNE_WATCH_NAMESPACES")) is not None:
            kw["watch_namespaces"] = _list(v)
        if (v := get("KUBETUNE_PEERING_NAME")) is not None:
            kw["peering_name"] = v
            kw["peering_required"] = True
        if (v := get("KUBETUNE_STANDALONE")) is not None:
            kw["standalone"] = _bool(v, "KUBETUNE_STANDALONE")
        if (v := get("KUBETUNE_PEERING_PRIORITY")) is not None:
            kw["peering_priority"] = _int(v, "KUBETUNE_PEERING_PRIORITY")
        for name, field in (
            ("KUBETUNE_METRICS_PORT", "metrics_port"),
            ("KUBETUNE_HEALTH_PORT", "health_port"),
            ("KUBETUNE_RUN_AS_USER", "run_as_user"),
            ("KUBETUNE_RUN_AS_GROUP", "run_as_group"),
            ("KUBETUNE_FS_GROUP", "fs_group"),
            ("KUBETUNE_RENDEZVOUS_PORT", "rendezvous_port"),
            ("KUBETUNE_MAX_BACKOFF_SECONDS", "max_backoff_seconds"),
        ):
            if (v := get(name)) is not None:
                kw[field] = _int(v, name)
        if kw.get("run_as_user") == 0:
            raise ValueError("KUBETUNE_RUN_AS_USER=0: trainer pods must not run as root")
        if (v := get("KUBETUNE_STATUS_REPORTER")) is not None:
            kw["status_reporter"] = _bool(v, "KUBETUNE_STATUS_REPORTER")
        if (v := get("KUBETUNE_NETWORK_POLICY")) is not None:
            kw["network_policy"] = _bool(v, "KUBETUNE_NETWORK_POLICY")
        if (v := get("KUBETUNE_REPORT_PORT")) is not None:
            kw["report_port"] = _int(v, "KUBETUNE_REPORT_PORT")
        if (v := get("KUBETUNE_REPORT_URL")) is not None:
            if not v.startswith(("http://", "https://")):
                raise ValueError(f"KUBETUNE_REPORT_URL={v!r}: expected an http:// or https:// URL of the operator's report Service")
            kw["report_url"] = v.rstrip("/")
        for name, field in (("KUBETUNE_REPORT_TLS_CERT", "report_tls_cert"), ("KUBETUNE_REPORT_TLS_KEY", "report_tls_key"),
                            ("KUBETUNE_REPORT_CA", "report_ca")):
            kw[field] = get(name)
        if (v := get("KUBETUNE_REPORT_INSECURE_HTTP")) is not None:
            kw["report_insecure_http"] = _bool(v, "KUBETUNE_REPORT_INSECURE_HTTP")
        if (v := get("KUBETUNE_REPORT_INTERVAL_SECONDS")) is not None:
            try:
                kw["report_interval_seconds"] = float(v)
            except ValueError:
                raise ValueError(f"KUBETUNE_REPORT_INTERVAL_SECONDS={v!r}: expected seconds (a number >= 0)") from None
            if kw["report_interval_seconds"] < 0:
                raise ValueError(f"KUBETUNE_REPORT_INTERVAL_SECONDS={v!r}: expected seconds (a number >= 0)")
        if (v := get("KUBETUNE_RESYNC_SECONDS")) is not None:
            kw["resync_seconds"] = float(_int(v, "KUBETUNE_RESYNC_SECONDS", minimum=1))
        if (v := get("KUBETUNE_LOG_FORMAT")) is not None:
            if v not in ("json", "plain"):
                raise ValueError(f"KUBETUNE_LOG_FORMAT={v!r}: expected json or plain")
            kw["log_format"] = v
        return cls(**kw)
