"""A small async Kubernetes REST client for the objects the operator owns.

It rides on Kopf's own API client (``kopf==1.45.2`` is pinned exactly), so it
shares Kopf's credentials vault: the login handler's credentials, re-login on
401, retries with backoff on 5xx/429/connection errors, and one connection
pool. Kopf does not export that client publicly; everything that touches its
internals is in this one file, so moving to another async client (e.g.
kubernetes_asyncio) changes nothing else.
"""
from __future__ import annotations

import asyncio
import builtins
import contextvars
import logging
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

import aiohttp
import kopf
from kopf._cogs.clients import api as _kopf_api
from kopf._cogs.clients import auth as _kopf_auth
from kopf._cogs.clients import errors as _kopf_errors
from kopf._core.reactor import orchestration as _kopf_orchestration

from kubetune_api import spec as ftj_api
from kubetune_api import sweep as sweep_api

APIError = _kopf_errors.APIError
NotFound = _kopf_errors.APINotFoundError
Conflict = _kopf_errors.APIConflictError


class Unreachable(APIError):
    """No answer from the API server: the connection was refused or dropped (an API server restart, a
    load balancer, a session Kopf closed when it logged in again), or the request timed out. Transient:
    callers retry it as they retry any failed request. Kopf's client raises these as aiohttp's own
    errors once its retries are spent (at once for creates, which it does not retry)."""

# kind -> (API path prefix, plural) for everything the operator reads or writes.
RESOURCES: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Event": ("/api/v1", "events"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Pod": ("/api/v1", "pods"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Job": ("/apis/batch/v1", "jobs"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    ftj_api.KIND: (f"/apis/{ftj_api.API_VERSION}", ftj_api.PLURAL),
    sweep_api.KIND: (f"/apis/{sweep_api.API_VERSION}", sweep_api.PLURAL),
}


def url(kind: str, namespace: str | None, name: str | None = None, subresource: str | None = None, **query: str) -> str:
    """The API path of a kind (cluster-wide when ``namespace`` is None), an object, a subresource."""
    prefix, plural = RESOURCES[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace is not None else f"{prefix}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    if query:
        path += "?" + urllib.parse.urlencode(query)
    return path


# Requests the operator has in flight at once (watches aside). Kopf's connection pool has no
# limit, and every job's loop sends its creates as soon as it runs: 500 new FineTuneJobs opened
# about 500 connections to the API server (bench/operator_scale.py), each a TCP handshake and a
# new handler on both sides. A bounded number of requests reuses a bounded number of kept-alive
# connections; 32 at ~10 ms per write is still thousands of requests per second.
MAX_REQUESTS_IN_FLIGHT = 32


class Kube:
    """create / get / merge-patch / delete on the operator's objects (dict in, dict out).

    At most ``max_in_flight`` requests at once; the others wait their turn in order.
    """

    def __init__(self, settings: kopf.OperatorSettings, logger: logging.Logger | None = None,
                 max_in_flight: int = MAX_REQUESTS_IN_FLIGHT):
        self.settings = settings
        self.logger = logger or logging.getLogger("kubetune.kube")
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._session: tuple[Any, Any, _kopf_auth.APIContext] | None = None

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request (``method``: get, post, patch, delete), at most ``max_in_flight`` at once;
        no answer at all raises Unreachable."""
        async with self._in_flight:
            try:
                return await self._request(method, path, **kwargs)
            except (aiohttp.ClientError, TimeoutError) as e:
                raise Unreachable(f"{method.upper()} {path}: {e!r}", status=0, headers={}) from e

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request through Kopf's ``request`` (its retries, backoffs and errors) with the session
        of the vault's current credentials, kept between requests: Kopf's own per-call wrapper walks
        the vault for every request, which cost about a quarter of a request's client CPU in a burst
        (bench/operator_scale.py). A 401 or a closed session does what that wrapper does: the
        credentials are invalidated (Kopf logs in again) and the request goes again with the new ones."""
        while True:
            key, info, context = await self._current_session()
            try:
                response = await _kopf_api.request(method, path, settings=self.settings, logger=self.logger,
                                                   context=context, **kwargs)
                async with response:
                    return await response.json()
            except (_kopf_errors.APIUnauthorizedError, _kopf_errors.APISessionClosed) as e:
                if self._session is not None and self._session[2] is context:
                    self._session = None
                await _kopf_auth.vault_var.get().invalidate(key, info, exc=e)  # raises if no login works

    async def _current_session(self) -> tuple[Any, Any, _kopf_auth.APIContext]:
        if self._session is not None and not self._session[2].session.closed:
            return self._session
        async for key, info, context in _kopf_auth.vault_var.get().extended(_kopf_auth.APIContext, "contexts"):
            self._session = (key, info, context)
            return self._session
        raise _kopf_errors.APIUnauthorizedError("no credentials left in Kopf's vault", status=401, headers={})

    async def _get(self, path: str) -> Any:
        return await self._call("get", path)

    async def get_path(self, path: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._get(path)
        except NotFound:
            return None
        return found

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._get(url(kind, namespace, name))
        except NotFound:
            return None
        return found

    async def list(self, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """The objects of ``kind`` in ``namespace`` matching a label selector."""
        found: dict[str, Any] = await self._get(url(kind, namespace, labelSelector=label_selector))
        items: list[dict[str, Any]] = found.get("items") or []
        return items

    async def list_with_version(self, kind: str, namespace: str | None, label_selector: str) -> tuple[builtins.list[dict[str, Any]], int]:
        """Every object of ``kind`` matching the selector (server-side), and the list's resourceVersion."""
        items: builtins.list[dict[str, Any]] = []
        token: str | None = None
        list_rv = 0
        while True:
            query = {"labelSelector": label_selector, "limit": "500"}
            if token:
                query["continue"] = token
            page: dict[str, Any] = await self._get(url(kind, namespace, **query))
            items += page.get("items") or []
            meta = page.get("metadata") or {}
            try:
                list_rv = int(meta.get("resourceVersion") or 0)
            except ValueError:
                list_rv = 0
            token = meta.get("continue")
            if not token:
                return items, list_rv

    async def create(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``obj``; if it exists already, return the existing one. -> (object, created)."""
        meta = obj["metadata"]
        try:
            # No client-side retries (Kopf retries even 403): a refusal must reach the decision at once;
            # the reconcile loop retries what is transient.
            created = await self._call("post", url(obj["kind"], meta["namespace"]), payload=obj, backoffs=[])
            return created, True
        except Conflict:
            if not meta.get("name"):
                raise  # a generated name: nothing to adopt
            existing = await self.get(obj["kind"], meta["namespace"], meta["name"])
            if existing is None:  # deleted in between: the caller's next reconcile retries
                raise
            return existing, False

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any], subresource: str | None = None) -> dict[str, Any] | None:
        try:
            patched: dict[str, Any] = await self._call("patch", url(kind, namespace, name, subresource), payload=patch,
                                                       headers={"Content-Type": "application/merge-patch+json"})
        except NotFound:
            return None
        return patched

    async def review_token(self, token: str, audience: str) -> dict[str, Any]:
        """TokenReview: who the API server says a bearer token belongs to. -> the review's status."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": token, "audiences": [audience]}}
        answer: dict[str, Any] = await self._call("post", "/apis/authentication.k8s.io/v1/tokenreviews", payload=review)
        return dict(answer.get("status") or {})

    async def delete(self, kind: str, namespace: str, name: str, propagation: str = "Background", uid: str | None = None) -> bool:
        """Delete (only the object with ``uid`` when given); False when it was already gone."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            await self._call("delete", url(kind, namespace, name), payload=options)
            return True
        except (NotFound, Conflict):  # gone, or the name now belongs to another object
            return False



class EssenceFreeDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """Kopf's annotation diff-base storage for an operator without change handlers: no essence.

    Kopf (1.45.2) builds an "essence" of every watched object at every watch event (a deep
    copy of the whole body) to find what changed for on.create/update/delete handlers and to
    reset daemons' idle timers. kubetune registers neither (``handlers.make_registry`` refuses
    change handlers with this storage), so the copies were pure cost: a FineTuneJob's status
    and a Job's pod template copied at every event, a large share of the operator's CPU when
    hundreds of jobs start at once.
    """

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})


class PauseToggle(Protocol):
    """Kopf's "operator paused" state (peering: a standby replica is paused); the two calls used here."""

    def is_on(self) -> bool: ...

    async def wait_for(self, state: bool, /) -> None: ...


_pause_sink: contextvars.ContextVar[Callable[[PauseToggle], None] | None] = contextvars.ContextVar("kubetune_pause_sink", default=None)
_install_lock = threading.Lock()


def capture_operator_pause(sink: Callable[[PauseToggle], None]) -> None:
    """Hand ``sink`` the operator-paused toggle of the Kopf operator started next in this context.

    Kopf (1.45.2) pauses a standby replica's watch streams and stops its daemons through one
    toggle, which it creates inside ``kopf.operator`` and gives only to its orchestrator and its
    own per-object processing. The FineTuneJob watch and reconcile loops are kubetune's own
    (handlers.Reconciler.watch_ftjs), so they need the same toggle to pause with Kopf. Kopf
    looks its orchestrator up by module attribute when it starts; this wraps it once per process
    and routes each call's toggle to the sink set in the calling context (each operator thread
    has its own).
    """
    with _install_lock:
        original = _kopf_orchestration.orchestrator
        if not getattr(original, "_kubetune_wrapped", False):
            def orchestrator(*args: Any, **kwargs: Any) -> Any:
                sink_now = _pause_sink.get()
                if sink_now is not None and kwargs.get("operator_paused") is not None:
                    sink_now(kwargs["operator_paused"])
                return original(*args, **kwargs)

            orchestrator._kubetune_wrapped = True  # type: ignore[attr-defined]
            _kopf_orchestration.orchestrator = orchestrator
    _pause_sink.set(sink)
