"""Rank 0's progress reporter: posts progress to the operator, which alone writes status.

Enabled by ``KUBETUNE_REPORTER=kubernetes`` (the operator sets it). The pod
holds no Kubernetes API credential: it posts its report as JSON to the
operator's report endpoint (``KUBETUNE_REPORT_URL`` +
``/v1/namespaces/<ns>/finetunejobs/<name>/report``) with a projected token of
audience ``kubetune.io/report`` (``KUBETUNE_REPORT_TOKEN``, re-read on every
send: the kubelet rotates it). The operator verifies the token (TokenReview and
pod membership: rank 0 of the current attempt), checks every field and copies
it into status (operator/kubetune_operator/report.py). urllib, no Kubernetes
client.

The token goes only over HTTPS verified against ``KUBETUNE_REPORT_CA`` (the CA
in the job's ConfigMap; the system's trust store is not used, so only the
operator's certificate is accepted, for the URL's host name). Plain HTTP only
with ``KUBETUNE_REPORT_INSECURE_HTTP=true`` (the operator sets it when it was
told so), with a warning; otherwise the reporter refuses to start and progress
stays in the logs.

Each report carries the whole state so far, so a lost or refused one is made up
by the next:
- ``progress``: the progress records merged (keys as in spec.Progress; unset keys
  are kept, never cleared);
- ``stage``: ``initializing`` | ``running`` | ``exporting`` from the trainer's phase
  events (the operator decides the phase);
- ``lastCheckpoint``: ``{step, uri, time}`` of the last ``checkpoint`` event;
- ``output``: ``{adapterUri, mergedUri, summaryUri, reportUri, baseModel,
  baseModelRevision, metrics}`` of ``exported`` (baseModel: what the adapter
  applies to, read by a later job's model.from);
- ``plan``: ``{zeroStage, offload, gradientCheckpointing, microBatchSize,
  estimatedBytes, deviceBytes, device, fits}`` of the ``plan`` event: the settings
  the run uses and the memory plan's numbers (status.plan);
- ``attempt``: ``KUBETUNE_ATTEMPT``.

Training never waits for the operator: calls return at once, a background
thread sends. Progress is rate-limited to one report per
``KUBETUNE_STATUS_INTERVAL`` seconds (default 10; the latest record wins);
events are sent at once. A refusal or an error is logged (rate-limited) and
retried with backoff (``Retry-After`` honoured), never raised. ``close()``
flushes what is pending, waiting at most a few seconds.

Environment: ``KUBETUNE_JOB_NAME``, ``KUBETUNE_JOB_NAMESPACE``,
``KUBETUNE_REPORT_URL``, ``KUBETUNE_REPORT_TOKEN`` (required);
``KUBETUNE_REPORT_CA`` (the CA bundle, for an https URL) or
``KUBETUNE_REPORT_INSECURE_HTTP`` (for an http URL); ``KUBETUNE_ATTEMPT``,
``KUBETUNE_STATUS_INTERVAL``.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("kubetune.k8s_status")

STAGES = {"Initializing": "initializing", "Running": "running", "Exporting": "exporting"}
PLAN_KEYS = ("zeroStage", "offload", "gradientCheckpointing", "microBatchSize", "estimatedBytes", "deviceBytes", "device",
             "fits")
PROGRESS_KEYS = ("step", "totalSteps", "epoch", "percent", "loss", "evalLoss", "evalMetrics", "learningRate",
                 "tokensPerSecond", "mfu", "etaSeconds", "updatedAt")


def report_fields_for_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The report fields one trainer event sets (empty when it sets none)."""
    kind = event.get("event")
    if kind == "phase" and event.get("phase") in STAGES:
        return {"stage": STAGES[event["phase"]]}
    if kind == "checkpoint":
        ref = {k: event.get(k) for k in ("step", "uri", "time") if event.get(k) is not None}
        return {"lastCheckpoint": ref} if ref else {}
    if kind == "plan":
        plan = {k: event[k] for k in PLAN_KEYS if event.get(k) is not None}
        return {"plan": plan} if plan else {}
    if kind == "exported":
        out = {k: event.get(k) for k in ("adapterUri", "mergedUri", "summaryUri", "reportUri", "baseModel", "baseModelRevision") if event.get(k)}
        metrics = {k: float(v) for k, v in (event.get("metrics") or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if metrics:
            out["metrics"] = metrics
        return {"output": out} if out else {}
    return {}


def progress_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in PROGRESS_KEYS if record.get(k) is not None}


def _tls_context(url: str, ca_file: str | None, allow_insecure_http: bool) -> ssl.SSLContext | None:
    """How to reach ``url`` without handing the token to anyone but the operator.

    https: a context trusting only ``ca_file`` (host name checked); http: None, and only
    when ``allow_insecure_http``. Raises ValueError otherwise: no report is ever sent.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme == "https":
        if not ca_file:
            raise ValueError("KUBETUNE_REPORT_CA is unset: refusing to send the report token to an https endpoint "
                             "that cannot be verified (the operator sets it to the CA in the job's ConfigMap)")
        try:
            context = ssl.create_default_context(cafile=ca_file)  # only this CA: no system trust store
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"KUBETUNE_REPORT_CA={ca_file}: cannot load the CA certificate ({e})") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context
    if scheme == "http":
        if not allow_insecure_http:
            raise ValueError(f"KUBETUNE_REPORT_URL={url.split('/v1/')[0]} is plain HTTP: refusing to send the report "
                             "token unencrypted (KUBETUNE_REPORT_INSECURE_HTTP=true allows it)")
        log.warning("sending progress reports and the report token over plain HTTP (KUBETUNE_REPORT_INSECURE_HTTP=true)")
        return None
    raise ValueError(f"KUBETUNE_REPORT_URL={url.split('/v1/')[0]}: expected an https:// URL")


class KubernetesStatusReporter:
    def __init__(
        self,
        url: str,
        namespace: str,
        name: str,
        token_file: str | None = None,
        ca_file: str | None = None,
        attempt: int | None = None,
        min_interval: float = 10.0,
        timeout: float = 10.0,
        allow_insecure_http: bool = False,
    ):
        quote = urllib.parse.quote
        self.url = f"{url.rstrip('/')}/v1/namespaces/{quote(namespace, safe='')}/finetunejobs/{quote(name, safe='')}/report"
        self.token_file = token_file
        self.min_interval = min_interval
        self.timeout = timeout
        self._ssl = _tls_context(self.url, ca_file, allow_insecure_http)
        self._lock = threading.Condition()
        self._state: dict[str, Any] = {"attempt": attempt} if attempt is not None else {}
        self._dirty = False
        self._urgent = False
        self._closing = False
        self._last_sent = 0.0
        self._not_before = 0.0  # Retry-After
        self._failures = 0
        self._last_warning = 0.0
        self.sent = 0  # accepted reports (for tests and logs)
        self._thread = threading.Thread(target=self._run, name="kubetune-status", daemon=True)
        self._thread.start()

    # -------------------------------------------------------- reporter API
    def progress(self, record: dict) -> None:
        fields = progress_fields(record)
        if not fields:
            return
        with self._lock:
            self._state["progress"] = {**self._state.get("progress", {}), **fields}
            self._dirty = True
            self._lock.notify()

    def event(self, event: dict) -> None:
        fields = report_fields_for_event(event)
        if not fields:
            return
        with self._lock:
            for key, value in fields.items():
                if isinstance(value, dict) and isinstance(self._state.get(key), dict):
                    self._state[key] = {**self._state[key], **value}
                else:
                    self._state[key] = value
            self._dirty = self._urgent = True
            self._lock.notify()

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closing = True
            self._urgent = True
            self._lock.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------- sender
    def _run(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._closing and (not self._dirty or self._failures >= 3):
                        return
                    backoff = min(60.0, 2.0 ** (self._failures - 1)) if self._failures else 0.0
                    due = max(self._last_sent + max(self.min_interval if not self._urgent else 0.0, backoff), self._not_before)
                    wait = due - time.monotonic()
                    if self._dirty and wait <= 0:
                        break
                    self._lock.wait(timeout=wait if self._dirty else None)
                report = copy.deepcopy(self._state)
                self._dirty = self._urgent = False
            ok, retry_after = self._send(report)
            with self._lock:
                self._last_sent = time.monotonic()
                self._not_before = self._last_sent + retry_after if retry_after else 0.0
                if ok:
                    self._failures = 0
                    self.sent += 1
                else:
                    # Rate-limited or a standby replica: not a failure, just later.
                    self._failures = self._failures if retry_after else self._failures + 1
                    self._dirty = True

    def _token(self) -> str | None:
        if not self.token_file:
            return None
        try:
            with open(self.token_file) as f:  # re-read: projected tokens rotate
                return f.read().strip()
        except OSError:
            return None

    def _send(self, report: dict[str, Any]) -> tuple[bool, float]:
        """POST one report. -> (accepted, seconds to wait before the next try when the answer says so)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "kubetune-trainer"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url, data=json.dumps(report).encode(), method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                resp.read()
            return True, 0.0
        except urllib.error.HTTPError as e:
            retry_after = 0.0
            if e.code in (429, 503):
                try:
                    retry_after = max(0.1, float(e.headers.get("Retry-After") or 1))
                except ValueError:
                    retry_after = 1.0
            detail = f"HTTP {e.code}"
            try:
                detail += ": " + json.loads(e.read() or b"{}").get("message", "")
            except (ValueError, AttributeError):
                pass
            if e.code != 429:
                self._warn(f"progress report refused ({detail})")
            return False, retry_after
        except Exception as e:  # network, TLS, timeouts: never fatal to training
            self._warn(f"progress report failed: {e}")
        return False, 0.0

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning("%s; progress stays in the logs, retrying", message)


def reporter_from_env(env: Mapping[str, str] = os.environ) -> KubernetesStatusReporter:
    name = env.get("KUBETUNE_JOB_NAME")
    namespace = env.get("KUBETUNE_JOB_NAMESPACE")
    if not name or not namespace:
        raise RuntimeError("KUBETUNE_JOB_NAME and KUBETUNE_JOB_NAMESPACE must be set for KUBETUNE_REPORTER=kubernetes")
    url, token = env.get("KUBETUNE_REPORT_URL"), env.get("KUBETUNE_REPORT_TOKEN")
    if not url or not token:
        raise RuntimeError("KUBETUNE_REPORT_URL and KUBETUNE_REPORT_TOKEN must be set for KUBETUNE_REPORTER=kubernetes "
                           "(the operator sets both when it runs with KUBETUNE_REPORT_URL)")
    attempt = env.get("KUBETUNE_ATTEMPT")
    return KubernetesStatusReporter(
        url, namespace, name,
        token_file=token,
        ca_file=env.get("KUBETUNE_REPORT_CA") or None,
        allow_insecure_http=(env.get("KUBETUNE_REPORT_INSECURE_HTTP") or "").strip().lower() in ("1", "true", "yes", "on"),
        attempt=int(attempt) if attempt and attempt.isdigit() else None,
        min_interval=float(env.get("KUBETUNE_STATUS_INTERVAL", "10")),
    )
