"""Rank 0's Kubernetes status reporter: progress into the FineTuneJob's status.

Enabled by ``KUBETUNE_REPORTER=kubernetes`` (the operator sets it). It merge-
patches ``/apis/kubetune.io/v1alpha1/namespaces/<ns>/finetunejobs/<name>/status``
with the pod's service-account token: the only thing the job's Role allows.
Plain HTTPS (urllib), no Kubernetes client.

What goes where (the team contract's records and events):
- progress record -> ``status.progress`` (keys as in spec.Progress; unset keys
  are left alone, never cleared);
- ``{"event": "phase", "phase": "Running" | "Exporting"}`` -> ``status.phase``
  (the operator confirms it with a condition and an Event; ``Initializing`` is
  the operator's to say, so it is not written);
- ``{"event": "checkpoint", step, uri, time}`` -> ``status.lastCheckpoint``;
- ``{"event": "exported", adapterUri, mergedUri, summaryUri, reportUri, baseModel, baseModelRevision, metrics}``
  -> ``status.output`` (baseModel: what the adapter applies to, read by a later job's model.from).

Training never waits for the API: calls return at once, a background thread
sends. Progress is rate-limited to one patch per ``KUBETUNE_STATUS_INTERVAL``
seconds (default 10; the latest record wins); events are sent at once with the
pending progress. Errors are logged (rate-limited) and retried with backoff,
never raised. ``close()`` flushes what is pending, waiting at most a few seconds.

Environment: ``KUBETUNE_JOB_NAME``, ``KUBETUNE_JOB_NAMESPACE`` (required);
``KUBERNETES_SERVICE_HOST``/``_PORT`` (set by Kubernetes) or
``KUBETUNE_API_SERVER`` (a URL; tests and local runs); the token and CA from
``/var/run/secrets/kubernetes.io/serviceaccount`` (``KUBETUNE_SA_DIR``
overrides); ``KUBETUNE_STATUS_INTERVAL``.
"""
from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("kubetune.k8s_status")

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TRAINER_PHASES = ("Running", "Exporting")
PROGRESS_KEYS = ("step", "totalSteps", "epoch", "percent", "loss", "evalLoss", "evalMetrics", "learningRate",
                 "tokensPerSecond", "mfu", "etaSeconds", "updatedAt")


def status_patch_for_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The status fields one trainer event sets (empty when it sets none)."""
    kind = event.get("event")
    if kind == "phase" and event.get("phase") in TRAINER_PHASES:
        return {"phase": event["phase"]}
    if kind == "checkpoint":
        ref = {k: event.get(k) for k in ("step", "uri", "time") if event.get(k) is not None}
        return {"lastCheckpoint": ref} if ref else {}
    if kind == "exported":
        out = {k: event.get(k) for k in ("adapterUri", "mergedUri", "summaryUri", "reportUri", "baseModel", "baseModelRevision") if event.get(k)}
        metrics = {k: float(v) for k, v in (event.get("metrics") or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if metrics:
            out["metrics"] = metrics
        return {"output": out} if out else {}
    return {}


def progress_patch(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in PROGRESS_KEYS if record.get(k) is not None}


class KubernetesStatusReporter:
    def __init__(
        self,
        server: str,
        namespace: str,
        name: str,
        token_file: str | None = None,
        ca_file: str | None = None,
        min_interval: float = 10.0,
        timeout: float = 10.0,
    ):
        self.url = f"{server.rstrip('/')}/apis/kubetune.io/v1alpha1/namespaces/{namespace}/finetunejobs/{name}/status"
        self.token_file = token_file
        self.min_interval = min_interval
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if self.url.startswith("https://"):
            self._ssl = ssl.create_default_context(cafile=ca_file if ca_file and os.path.exists(ca_file) else None)
        self._lock = threading.Condition()
        self._pending_progress: dict[str, Any] | None = None
        self._pending_status: dict[str, Any] = {}
        self._urgent = False
        self._closing = False
        self._last_sent = 0.0
        self._failures = 0
        self._last_warning = 0.0
        self.sent = 0  # successful patches (for tests and logs)
        self._thread = threading.Thread(target=self._run, name="kubetune-status", daemon=True)
        self._thread.start()

    # -------------------------------------------------------- reporter API
    def progress(self, record: dict) -> None:
        patch = progress_patch(record)
        if not patch:
            return
        with self._lock:
            self._pending_progress = {**(self._pending_progress or {}), **patch}
            self._lock.notify()

    def event(self, event: dict) -> None:
        patch = status_patch_for_event(event)
        if not patch:
            return
        with self._lock:
            for key, value in patch.items():
                if isinstance(value, dict) and isinstance(self._pending_status.get(key), dict):
                    self._pending_status[key] = {**self._pending_status[key], **value}
                else:
                    self._pending_status[key] = value
            self._urgent = True
            self._lock.notify()

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closing = True
            self._urgent = True
            self._lock.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------- sender
    def _take(self) -> dict[str, Any] | None:
        status = dict(self._pending_status)
        if self._pending_progress:
            status["progress"] = self._pending_progress
        self._pending_status, self._pending_progress, self._urgent = {}, None, False
        return status or None

    def _restore(self, status: dict[str, Any]) -> None:
        """Put a failed patch back, under anything newer that arrived meanwhile."""
        progress = status.pop("progress", None)
        if progress:
            self._pending_progress = {**progress, **(self._pending_progress or {})}
        self._pending_status = {**status, **self._pending_status}

    def _run(self) -> None:
        while True:
            with self._lock:
                while True:
                    has_work = bool(self._pending_status or self._pending_progress)
                    if self._closing and (not has_work or self._failures >= 3):
                        return
                    backoff = min(60.0, 2.0 ** self._failures) if self._failures else 0.0
                    due = self._last_sent + max(self.min_interval if not self._urgent else 0.0, backoff)
                    wait = due - time.monotonic()
                    if has_work and wait <= 0:
                        break
                    self._lock.wait(timeout=wait if has_work else None)
                status = self._take()
            if status is None:
                continue
            ok = self._send({"status": status})
            with self._lock:
                self._last_sent = time.monotonic()
                if ok:
                    self._failures = 0
                    self.sent += 1
                else:
                    self._failures += 1
                    self._restore(status)

    def _token(self) -> str | None:
        if not self.token_file:
            return None
        try:
            with open(self.token_file) as f:  # re-read: projected tokens rotate
                return f.read().strip()
        except OSError:
            return None

    def _send(self, body: dict[str, Any]) -> bool:
        headers = {"Content-Type": "application/merge-patch+json", "Accept": "application/json", "User-Agent": "kubetune-trainer"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="PATCH", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                resp.read()
            return True
        except urllib.error.HTTPError as e:
            detail = f"HTTP {e.code}"
            try:
                detail += ": " + json.loads(e.read() or b"{}").get("message", "")
            except (ValueError, AttributeError):
                pass
            self._warn(f"status patch refused ({detail})")
        except Exception as e:  # network, TLS, timeouts: never fatal to training
            self._warn(f"status patch failed: {e}")
        return False

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
    server = env.get("KUBETUNE_API_SERVER")
    if not server:
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("no API server: KUBERNETES_SERVICE_HOST (in a pod) or KUBETUNE_API_SERVER is unset")
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    sa_dir = env.get("KUBETUNE_SA_DIR", SA_DIR)
    interval = float(env.get("KUBETUNE_STATUS_INTERVAL", "10"))
    return KubernetesStatusReporter(
        server, namespace, name,
        token_file=os.path.join(sa_dir, "token"),
        ca_file=os.path.join(sa_dir, "ca.crt"),
        min_interval=interval,
    )
