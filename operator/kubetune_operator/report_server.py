"""The report endpoint: rank 0 posts progress here; the operator alone writes status.

``POST /v1/namespaces/<ns>/finetunejobs/<name>/report`` with ``Authorization:
Bearer <token>`` and a JSON body (report.py says what it may hold). Answers:

- 204: accepted; the job's reconcile loop copies it into status;
- 400: the body breaks a rule (the message names the field); 413: too large;
- 401: no token, or TokenReview does not authenticate it for audience
  ``kubetune.io/report``;
- 403: the token is not bound to rank 0 of the job's current attempt;
- 404: no such job here; 409: the job is finished;
- 429 (Retry-After): reports come faster than ``report_interval_seconds``;
- 503: this replica does not run the job's loop (a standby replica, or not
  synced yet): retry, the Service picks a replica again.

TokenReview answers are cached for a minute per token, so a report costs no
API call but the status write its loop makes.

TLS: with ``KUBETUNE_REPORT_TLS_CERT``/``_KEY`` the endpoint serves HTTPS only
(TLS 1.2 or newer); trainer pods verify it against ``KUBETUNE_REPORT_CA`` (the
CA travels in each job's ConfigMap). The files are checked every
``CERT_RELOAD_SECONDS`` and reloaded when they change (cert-manager renews by
rewriting the Secret), without dropping the listener. Plain HTTP only with
``KUBETUNE_REPORT_INSECURE_HTTP=true``, and a warning.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import ssl
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kubetune_operator import reasons as R
from kubetune_operator import report
from kubetune_operator.kube import APIError

if TYPE_CHECKING:
    from kubetune_operator.handlers import Reconciler

log = logging.getLogger("kubetune.report")
REVIEW_CACHE_SECONDS = 60.0
REVIEW_CACHE_SIZE = 10_000
CERT_RELOAD_SECONDS = 60.0
ROUTE = "/v1/namespaces/{namespace}/finetunejobs/{name}/report"


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status, headers=headers)


class ReportServer:
    """Serves the report endpoint of one operator run (see the module docstring)."""

    def __init__(self, rt: Reconciler) -> None:
        self.rt = rt
        self.port: int | None = None  # bound port, once started
        self._runner: web.AppRunner | None = None
        self._reviews: dict[str, tuple[float, dict[str, Any]]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._cert_loaded: tuple[tuple[int, int], ...] = ()
        self._reloader: asyncio.Task[None] | None = None
        self.accepted = 0
        self.refused = 0

    def tls_context(self) -> ssl.SSLContext | None:
        """The server TLS context from the settings' certificate and key (None: plain HTTP).

        Raises ValueError naming the setting when the files cannot be loaded.
        """
        settings = self.rt.settings
        if not settings.report_serves_tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_certificate(context)
        return context

    def _load_certificate(self, context: ssl.SSLContext) -> None:
        cert, key = str(self.rt.settings.report_tls_cert), str(self.rt.settings.report_tls_key)
        stamp = self._cert_stamp()
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"KUBETUNE_REPORT_TLS_CERT={cert!r} / KUBETUNE_REPORT_TLS_KEY={key!r}: cannot load the "
                             f"report endpoint's certificate and key ({e})") from None
        self._cert_loaded = stamp

    def _cert_stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in (self.rt.settings.report_tls_cert, self.rt.settings.report_tls_key):
            try:
                st = os.stat(str(path))
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((0, 0))
        return tuple(stamps)

    def reload_certificate(self) -> bool:
        """Load the certificate and key again when their files changed; True when it did.

        New connections get the new certificate; a failed load keeps the old one.
        """
        if self._ssl is None or self._cert_stamp() == self._cert_loaded:
            return False
        try:
            self._load_certificate(self._ssl)
        except ValueError as e:
            log.warning(f"{e}; still serving the previous certificate")
            return False
        log.info("report endpoint: reloaded its TLS certificate")
        return True

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(CERT_RELOAD_SECONDS)
            self.reload_certificate()

    async def start(self, port: int, host: str = "0.0.0.0") -> None:
        self._ssl = self.tls_context()
        app = web.Application(client_max_size=report.MAX_BODY_BYTES)
        app.router.add_post(ROUTE, self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self._ssl)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        if self._ssl is not None:
            self._reloader = asyncio.create_task(self._reload_loop(), name="kubetune-report-cert-reload")
        log.info(f"report endpoint listening on :{self.port} ({'HTTPS' if self._ssl else 'plain HTTP'})")

    async def stop(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            self._reloader = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        response = await self._handle(request)
        if response.status == 204:
            self.accepted += 1
        else:
            self.refused += 1
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return _error(401, "a bearer token is required (the pod's projected report token)")
        if (request.content_length or 0) > report.MAX_BODY_BYTES:
            return _error(413, f"at most {report.MAX_BODY_BYTES} bytes")
        st = self.rt.states.get((namespace, name))
        ftj = st.ftj if st is not None else None
        if st is None or ftj is None:
            return _error(404, f"no FineTuneJob {namespace}/{name} is handled here")
        if not st.loop_active:
            return _error(503, "this operator replica does not run this job's loop; retry", **{"Retry-After": "1"})
        status = ftj.get("status") or {}
        if status.get("phase") in R.TERMINAL:
            return _error(409, f"FineTuneJob {namespace}/{name} is {status.get('phase')}")

        review = await self._review(auth[7:].strip())
        if review is None:
            return _error(503, "cannot reach the API server to review the token; retry", **{"Retry-After": "2"})
        if not review.get("authenticated"):
            return _error(401, f"token not accepted for audience {report.AUDIENCE}: {review.get('error') or 'unauthenticated'}")
        user = review.get("user") or {}
        extra = user.get("extra") or {}
        why = report.check_sender(
            pod_name=next(iter(extra.get(report.POD_NAME_EXTRA) or []), None),
            pod_uid=next(iter(extra.get(report.POD_UID_EXTRA) or []), None),
            namespace=namespace, username=str(user.get("username") or ""),
            pods=tuple(st.pods.values()), job_uids=st.owned_job_uids(ftj), attempt=int(status.get("attempt") or 0),
        )
        if why is not None:
            log.warning(f"report for {namespace}/{name} refused: {why}")
            return _error(403, why)

        parsed = st.parsed(ftj).job
        if parsed is None:
            return _error(409, f"FineTuneJob {namespace}/{name} has an invalid spec")
        now = time.monotonic()
        wait = st.report_accepted_at + self.rt.settings.report_interval_seconds - now
        if wait > 0:
            return _error(429, f"at most one report per {self.rt.settings.report_interval_seconds}s",
                          **{"Retry-After": str(max(1, math.ceil(wait)))})
        raw = await request.read()
        try:
            st.report = report.parse_report(raw, parsed.spec.output.uri)
        except report.InvalidReport as e:
            log.warning(f"report for {namespace}/{name} refused: {e}")
            return _error(400, str(e))
        st.report_accepted_at = now
        st.wake.set()
        return web.Response(status=204)

    async def _review(self, token: str) -> dict[str, Any] | None:
        """TokenReview of ``token`` for the report audience (cached); None when the API cannot be asked."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._reviews.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        assert self.rt.kube is not None
        try:
            answer = await asyncio.wait_for(self.rt.kube.review_token(token, report.AUDIENCE), timeout=10)
        except (TimeoutError, APIError) as e:
            log.warning(f"TokenReview failed: {e!r}")
            return None
        if len(self._reviews) >= REVIEW_CACHE_SIZE:
            self._reviews = {k: v for k, v in self._reviews.items() if v[0] > now}
            if len(self._reviews) >= REVIEW_CACHE_SIZE:
                self._reviews.clear()
        # A refused token is cached briefly too: a pod retrying with it costs no review each time.
        self._reviews[key] = (now + (REVIEW_CACHE_SECONDS if answer.get("authenticated") else 5.0), answer)
        return answer
