"""A Kubernetes API emulator on top of kmock that behaves like a real cluster, for the real operator in tests.

kmock's ``KubernetesEmulator`` serves objects over real HTTP; this subclass adds
what a real API server, garbage collector, Job controller and kubelet do (see
README.md in this folder for the upstream document each behaviour follows,
the switches in ``Semantics`` and which are on by default):

Always on:
- metadata on create: ``uid``, ``resourceVersion`` (one global counter),
  ``creationTimestamp``, ``generation``, ``namespace`` from the URL,
  ``generateName``; ``201 Created``; ``409 AlreadyExists``;
- PATCH as merge-patch (also for ``strategic-merge-patch+json``: no list
  merging) or JSON patch; a failed JSON-patch ``test`` answers ``422``;
  every write bumps ``resourceVersion``; ``generation`` grows with ``spec``;
- resourceVersion preconditions: PUT, a merge patch carrying
  ``metadata.resourceVersion`` and DELETE ``preconditions`` answer 409
  Conflict when stale;
- the ``status`` subresource: ``/status`` writes change only ``.status``,
  main-resource writes never change it; ``status`` is dropped on create;
- deletion: finalizers and ``deletionTimestamp``; ``propagationPolicy``
  Background (dependents collected after the owner is gone), Foreground (the
  owner waits with the ``foregroundDeletion`` finalizer until its blocking
  dependents are gone) and Orphan (``orphan`` finalizer; dependents lose
  their owner reference);
- the eviction API (``POST pods/<name>/eviction``): ``DisruptionTarget=True``
  (reason ``EvictionByEvictionAPI``), then a graceful delete;
- TokenRequest (``serviceaccounts/<name>/token``) and TokenReview;
- watches: from a ``resourceVersion`` the events since then are replayed; a
  resourceVersion older than the event window (or before
  ``expire_watches()``) gets an ``ERROR`` event with a 410 Expired Status;
  ``expire_watches()`` ends every open watch that way; ``watch_outage()``
  holds other clients' list/watch requests meanwhile (objects deleted then
  produce no DELETED event for them);
- label selectors (``a=b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``,
  ``a notin (x)``) and ``metadata.name``/``metadata.namespace`` field
  selectors on list and watch;
- fault injection (``inject``): 429 with Retry-After, 500, 503, or a delay
  (a timeout for a client that waits less);
- a record of every API request: ``calls`` holds ``ApiCall(verb, group,
  resource, subresource, namespace, name, user_agent, status, query, user)``.

On by default, switchable (``Semantics``): graceful pod deletion, the
job-tracking finalizer, asynchronous garbage collection, the Job controller,
server-side validation of built-in objects and of FineTuneJobs (defaulting,
pruning, schema, CEL), RBAC for every bearer token.
"""
from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import datetime as dt
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, enums, rendering

# group/version/plural -> (Kind, namespaced, subresources)
BUILTIN_RESOURCES: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "v1/namespaces": ("Namespace", False, ("status",)),
    "v1/pods": ("Pod", True, ("status", "log", "eviction")),
    "v1/services": ("Service", True, ("status",)),
    "v1/configmaps": ("ConfigMap", True, ()),
    "v1/secrets": ("Secret", True, ()),
    "v1/serviceaccounts": ("ServiceAccount", True, ("token",)),
    "v1/events": ("Event", True, ()),
    "events.k8s.io/v1/events": ("Event", True, ()),
    "batch/v1/jobs": ("Job", True, ("status",)),
    "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", True, ()),
    "rbac.authorization.k8s.io/v1/roles": ("Role", True, ()),
    "rbac.authorization.k8s.io/v1/rolebindings": ("RoleBinding", True, ()),
    "rbac.authorization.k8s.io/v1/clusterroles": ("ClusterRole", False, ()),
    "rbac.authorization.k8s.io/v1/clusterrolebindings": ("ClusterRoleBinding", False, ()),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False, ("status",)),
    "authentication.k8s.io/v1/tokenreviews": ("TokenReview", False, ()),
    "coordination.k8s.io/v1/leases": ("Lease", True, ()),
    "kopf.dev/v1/kopfpeerings": ("KopfPeering", True, ()),
    "kopf.dev/v1/clusterkopfpeerings": ("ClusterKopfPeering", False, ()),
    "kubetune.io/v1alpha1/finetunejobs": ("FineTuneJob", True, ("status",)),
    "kubetune.io/v1alpha1/finetunesweeps": ("FineTuneSweep", True, ("status",)),
}
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")
TEST_AGENT = "kubetune-tests"  # the test client's User-Agent (never held by watch_outage)
JOB_TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
FOREGROUND_FINALIZER = "foregroundDeletion"
ORPHAN_FINALIZER = "orphan"
ADMIN_GROUP = "system:masters"
# The audiences the API server accepts (--api-audiences, by default its issuer); a service-account
# token requested for another audience (TokenRequest spec.audiences) authenticates nowhere else.
API_AUDIENCES = ("https://kubernetes.default.svc", "https://kubernetes.default.svc.cluster.local")


@dataclasses.dataclass
class Semantics:
    """Real-cluster behaviours that can be switched (README.md: the upstream document each follows).

    Every switch is on by default: the emulated cluster is never kinder than a real one.
    A test whose subject truly needs one off says so, e.g. ``Semantics(job_controller=False)``
    with a one-line reason; ``Semantics.lenient()`` turns all of them off.
    """

    # A deleted pod that runs keeps running with deletionTimestamp and deletionGracePeriodSeconds
    # until the kubelet reports it terminated (a test: kubelet.terminate) or its grace period ends
    # (then it is killed: phase Failed, exit code 137). Pods never scheduled go at once.
    graceful_pod_deletion: bool = True
    # Pods owned by a Job carry batch.kubernetes.io/job-tracking until the Job controller has
    # accounted them (terminal phase) or their Job is gone.
    job_tracking_finalizer: bool = True
    # Garbage collection runs in the background, gc_delay after the owner went, not inside the
    # owner's DELETE; pause_gc() holds it (a namesake's leftovers still there).
    async_gc: bool = True
    gc_delay: float = 0.05
    # The emulator runs the Job controller: pods for Indexed Jobs, podFailurePolicy, backoffLimit,
    # activeDeadlineSeconds, suspend, FailureTarget/SuccessCriteriaMet before Failed/Complete.
    job_controller: bool = True
    # Built-in objects are validated as the API server does (422 Invalid with causes).
    validate_builtins: bool = True
    # FineTuneJob writes are pruned, defaulted, schema- and CEL-validated (the CRD's rules).
    validate_custom_resources: bool = True
    # Every request needs a bearer token (401 otherwise) and is authorized by RBAC objects (403);
    # EmulatedCluster stores the Helm chart's RBAC for the operator's ServiceAccount.
    rbac: bool = True
    # A grace period of N seconds lasts min(N, max_grace_seconds) here, so tests stay fast.
    max_grace_seconds: float = 2.0

    @classmethod
    def switches(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.type in ("bool", bool)]

    @classmethod
    def faithful(cls, **overrides: Any) -> Semantics:
        return cls(**{**dict.fromkeys(cls.switches(), True), **overrides})

    @classmethod
    def lenient(cls, **overrides: Any) -> Semantics:
        """Every switch off (kmock plus the always-on behaviours): for comparisons, never as a test's default."""
        return cls(**{**dict.fromkeys(cls.switches(), False), **overrides})

    @classmethod
    def default(cls) -> Semantics:
        """What a cluster gets when a test names no semantics: all switches on, unless
        $KUBETUNE_TEST_SEMANTICS says otherwise: 'faithful' (all on), 'lenient' (all off), a comma-separated
        list of switch names (exactly those on), or of '-name' entries (all on but those)."""
        import os

        names = [n.strip() for n in os.environ.get("KUBETUNE_TEST_SEMANTICS", "").split(",") if n.strip()]
        if not names or names == ["faithful"]:
            return cls()
        if names == ["lenient"]:
            return cls.lenient()
        off = {n[1:] for n in names if n.startswith("-")}
        on = {n for n in names if not n.startswith("-")}
        unknown = (on | off) - set(cls.switches())
        if unknown or (on and off):
            raise ValueError(f"KUBETUNE_TEST_SEMANTICS={os.environ['KUBETUNE_TEST_SEMANTICS']!r}: 'faithful', 'lenient', "
                             f"switch names to turn on, or '-name' to turn off (not both); known: {cls.switches()}")
        if off:
            return cls.faithful(**dict.fromkeys(off, False))
        return cls.lenient(**dict.fromkeys(on, True))


@dataclasses.dataclass(frozen=True)
class ApiCall:
    """One API request, as RBAC sees it."""

    verb: str
    group: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None  # for create: the name in the body
    user_agent: str = dataclasses.field(default="", compare=False)
    status: int = dataclasses.field(default=0, compare=False)  # the HTTP status answered
    query: str = dataclasses.field(default="", compare=False)  # the raw query string
    user: str = dataclasses.field(default="", compare=False)  # the authenticated user ("" without a token)
    t: float = dataclasses.field(default=0.0, compare=False)  # time.monotonic() when answered

    @property
    def key(self) -> tuple:
        return (self.verb, self.group, self.resource, self.subresource, self.namespace, self.name)

    @property
    def params(self) -> dict[str, str]:
        import urllib.parse

        return dict(urllib.parse.parse_qsl(self.query, keep_blank_values=True))


@dataclasses.dataclass
class Fault:
    """An injected failure: requests matching ``match`` get ``status`` (after ``delay`` seconds)."""

    match: Callable[[ApiCall], bool]
    status: int | None = 500  # None: only the delay
    times: int | None = 1  # None: until cleared
    delay: float = 0.0
    retry_after: int | None = None
    reason: str | None = None  # the Status reason (default: by status code)
    message: str | None = None  # the Status message (default: 'injected fault: HTTP <status>')
    hits: int = 0


@dataclasses.dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    pod: tuple[str, str] | None = None  # (namespace, name) the token is bound to


def _error(status: int, reason: str, message: str, details: dict[str, Any] | None = None) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details or {})


# --------------------------------------------------------------- selectors
_SET_EXPR = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(selector: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def match_labels(selector: str | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics for the forms listed in the module docstring."""
    if not selector:
        return True
    for term in _split_selector(selector):
        m = _SET_EXPR.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in" and labels.get(key) not in values:
                return False
            if op == "notin" and key in labels and labels[key] in values:
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "==" in term or "=" in term:
            key, value = (s.strip() for s in re.split("==?", term, maxsplit=1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def match_fields(selector: str | None, obj: dict[str, Any]) -> bool:
    if not selector:
        return True
    meta = obj.get("metadata") or {}
    for term in _split_selector(selector):
        neg = "!=" in term
        key, value = (s.strip() for s in re.split("!=|==?", term, maxsplit=1))
        actual = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}.get(key)
        if key.startswith("involvedObject."):  # the Event fields the API server indexes
            actual = (obj.get("involvedObject") or {}).get(key[len("involvedObject."):])
        if (actual == value) == neg:
            return False
    return True


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")



def _later(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_pod(key: Any) -> bool:
    return key[0].plural == "pods" and not key[0].group


def _terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _controller_ref(body: dict[str, Any]) -> dict[str, Any] | None:
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator, made to behave like a real API server and its controllers."""

    keep_history: bool = True  # False keeps only the latest version of each object (benchmarks)
    semantics: Semantics = attrs.field(factory=Semantics.default)
    event_window: int = 10000  # events kept per resource for watches from a resourceVersion
    calls: list[ApiCall] = attrs.field(factory=list, init=False)
    faults: list[Fault] = attrs.field(factory=list, init=False)
    tokens: dict[str, Identity] = attrs.field(factory=dict, init=False)
    gc_paused: bool = attrs.field(default=False, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _compacted_rv: int = attrs.field(default=0, init=False)
    _events: dict[Any, collections.deque] = attrs.field(factory=dict, init=False)
    # Per resource, the newest resourceVersion dropped from its event window: a watch from before it is 410.
    _trimmed_rv: dict[Any, int] = attrs.field(factory=dict, init=False)
    _uids: dict[str, Any] = attrs.field(factory=dict, init=False)  # uid -> object key
    _outage: threading.Event = attrs.field(factory=threading.Event, init=False)
    _gc_wake: asyncio.Event | None = attrs.field(default=None, init=False)
    _tasks: set = attrs.field(factory=set, init=False)
    _job_queue: set = attrs.field(factory=set, init=False)
    _job_wake: asyncio.Event | None = attrs.field(default=None, init=False)
    _loop: Any = attrs.field(default=None, init=False)
    job_counted: dict[str, set[str]] = attrs.field(factory=dict, init=False)  # Job uid -> pod uids accounted
    # (plural, namespace, name) -> time.monotonic() of the last successful create (latency benchmarks)
    created_at: dict[tuple[str, str | None, str], float] = attrs.field(factory=dict, init=False)
    # (plural, namespace, name) -> time.monotonic() when the object was last removed from storage
    removed_at: dict[tuple[str, str | None, str], float] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, (kind, namespaced, subresources) in BUILTIN_RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(
                kind=kind,
                namespaced=namespaced,
                verbs=VERBS,
                subresources=subresources,
                singular=kind.lower(),
            )

    # ----------------------------------------------------------- helpers
    def _info(self, res: Any) -> kmock.ResourceInfo:
        # Declared resources only (kmock's discovery also scans every stored object: O(n) per call).
        for r, info in self.resources._resources.items():
            if r == res:
                return info
        raise kmock.KubernetesResourceNotFoundError()

    @staticmethod
    def res(key: str) -> Any:
        """kmock's resource for 'group/version/plural' ('v1/pods' for the core group)."""
        parts = key.split("/")
        return kmock.resource("", parts[0], parts[1]) if len(parts) == 2 else kmock.resource(*parts)

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _live(self, key: Any) -> dict[str, Any] | None:
        if key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else obj.raw

    def live_objects(self, plural_key: str, namespace: str | None = None) -> list[dict[str, Any]]:
        res = self.res(plural_key)
        return [o.raw for (r, ns, _), o in list(self._objects.items())
                if r == res and not o.deleted and (namespace is None or ns == namespace)]

    def _store(self, key: Any, body: dict[str, Any]) -> None:
        if key not in self._objects:
            self._objects[key] = body
            return
        obj = self._objects[key]
        if self.keep_history or obj.deleted:
            obj.history.append(body)
        else:
            obj.history[-1] = body

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _emit(self, res: Any, etype: str, body: dict[str, Any]) -> None:
        log = self._events.setdefault(res, collections.deque(maxlen=self.event_window))
        if len(log) == log.maxlen:
            self._trimmed_rv[res] = log[0][0]
        log.append((int(body["metadata"]["resourceVersion"]), etype, body))
        await self._buses[res].put({"type": etype, "object": body})
        if self.semantics.job_controller or self.semantics.job_tracking_finalizer:
            self._job_event(res, body)

    # ---------------------------------------------------------- parsing
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's path parser reads /api/v1/namespaces[/<name>] as a namespace prefix with no
        # resource (and fails on the bare list path); serve Namespace objects like any other.
        parts = raw_request.path.strip("/").split("/")
        is_namespace = parts[:3] == ["api", "v1", "namespaces"] and (
            len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))
        )
        if not is_namespace:
            return await super().__call__(raw_request)
        await raw_request.read()
        try:
            data = await raw_request.json()
        except ValueError:
            data = None
        method = enums.method(raw_request.method)
        name = parts[3] if len(parts) >= 4 else None
        query = dict(raw_request.query)
        if method == enums.method.GET and query.get("watch") == "true":
            action = enums.action.WATCH
        elif name is None:
            action = enums.action.LIST if method == enums.method.GET else enums.action.CREATE if method == enums.method.POST else None
        else:
            action = {enums.method.GET: enums.action.FETCH, enums.method.PATCH: enums.action.UPDATE,
                      enums.method.DELETE: enums.action.DELETE, enums.method.PUT: enums.action.UPDATE}.get(method)
        request = rendering.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url, method=raw_request.method,
            params=query, headers=dict(raw_request.headers), cookies=dict(raw_request.cookies),
            data=data, body=await raw_request.read(), text=await raw_request.text(),
            action=action, resource=kmock.resource("", "v1", "namespaces"), namespace=None,
            name=name, subresource=parts[4] if len(parts) == 5 else None,
        )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as e:
            return await self._render_error(e)


    # ---------------------------------------------------------- dispatch
    def _authenticate(self, request: rendering.Request) -> Identity | None:
        auth = request.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            ident = self.tokens.get(auth[len("Bearer "):].strip())
            if ident is not None and ident.audiences and not set(ident.audiences) & set(API_AUDIENCES):
                return None  # a token for another audience (e.g. kubetune.io/report): 401 here
            if ident is not None and ident.pod is not None and self._bound_pod(ident) is None:
                return None  # a bound token dies with its pod
            return ident
        return None

    def _bound_pod(self, ident: Identity) -> dict[str, Any] | None:
        if ident.pod is None:
            return None
        return next((p for p in self.live_objects("v1/pods", ident.pod[0]) if p["metadata"]["name"] == ident.pod[1]), None)

    def _fault(self, call: ApiCall) -> Fault | None:
        for f in list(self.faults):
            if f.times is not None and f.hits >= f.times:
                continue
            if f.match(call):
                f.hits += 1
                return f
        return None

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or res.plural is None:
            return await apps.RawHandler._handle(self, request)  # discovery, /version, user reactions
        verb = {
            enums.action.LIST: "list", enums.action.WATCH: "watch", enums.action.FETCH: "get",
            enums.action.CREATE: "create", enums.action.UPDATE: "patch", enums.action.DELETE: "delete",
        }.get(request.action) if request.action is not None else None
        if request.method == enums.method.PUT and request.name:
            verb = "update"
        if request.action is None and request.method == enums.method.POST and request.name and request.subresource:
            verb = "create"  # pods/<name>/eviction, serviceaccounts/<name>/token
        if verb is None:
            return await apps.RawHandler._handle(self, request)
        name = request.name
        if verb == "create" and isinstance(request.data, dict) and not request.subresource:
            name = (request.data.get("metadata") or {}).get("name")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        agent = request.headers.get("User-Agent", "")
        who = self._authenticate(request)
        query = request._raw_request.query_string if request._raw_request is not None else ""

        def call_with(status: int) -> ApiCall:
            return ApiCall(verb, res.group or "", res.plural, request.subresource, request.namespace, name,
                           agent, status, query, who.user if who else "", time.monotonic())

        def record(status: int) -> None:
            self.calls.append(call_with(status))

        try:
            self._info(res)
            if self.semantics.rbac:
                if who is None:
                    raise _error(401, "Unauthorized", "Unauthorized")
                from support import rbac

                if not rbac.authorize(self, who, call_with(0)):
                    raise _error(403, "Forbidden", rbac.forbidden_message(who, call_with(0)),
                                 {"name": name or "", "group": res.group or "", "kind": res.plural})
            fault = self._fault(call_with(0))
            if fault is not None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status:
                    record(fault.status)
                    return self._fault_response(fault)
            if verb in ("list", "watch") and self._outage.is_set() and not agent.startswith(TEST_AGENT):
                while self._outage.is_set():
                    await asyncio.sleep(0.01)
            if verb == "watch":
                record(200)
                return await self._watch(request)
            async with self._lock:
                if request.subresource == "eviction" and verb == "create":
                    body, status = await self._do_evict(request)
                elif request.subresource == "token" and verb == "create":
                    body, status = await self._do_token(request)
                elif res.plural == "tokenreviews":
                    body, status = self._do_token_review(request)
                else:
                    body, status = await getattr(self, f"_do_{verb}")(request)
            record(status)
            return aiohttp.web.json_response(body, status=status)
        except kmock.KubernetesError as e:
            record(e.status)
            return await self._render_error(e)

    def _fault_response(self, fault: Fault) -> aiohttp.web.Response:
        reasons = {403: "Forbidden", 409: "Conflict", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
                   503: "ServiceUnavailable", 504: "Timeout"}
        status = int(fault.status or 500)
        body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": status,
                "reason": fault.reason or reasons.get(status, "InternalError"),
                "message": fault.message or f"injected fault: HTTP {status}",
                "details": {"retryAfterSeconds": fault.retry_after} if fault.retry_after is not None else {}}
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        return aiohttp.web.json_response(body, status=status, headers=headers)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, kmock.KubernetesError):
            # The API server's Status: no traceback in details (kmock puts one where details are empty).
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": exc.status,
                "reason": exc.reason or "Unknown", "message": exc.message or "", "details": exc.details or {},
            }, status=exc.status)
        return await super()._render_error(exc)

    # ------------------------------------------------------------- verbs
    async def _do_get(self, request: rendering.Request) -> tuple[dict, int]:
        if request.subresource not in (None, "status"):
            raise _error(404, "NotFound", f"subresource {request.subresource} is not served by the emulator")
        body = self._live((request.resource, request.namespace, request.name))
        if body is None:
            raise _error(404, "NotFound", f'{request.resource.plural} "{request.name}" not found',
                         {"name": request.name, "group": request.resource.group or "", "kind": request.resource.plural})
        return body, 200

    def _select(self, request: rendering.Request) -> list[dict[str, Any]]:
        labels = request.params.get("labelSelector")
        fields = request.params.get("fieldSelector")
        out = []
        for (res, ns, _name), obj in self._objects.items():
            if res != request.resource or obj.deleted:
                continue
            if request.namespace is not None and ns != request.namespace:
                continue
            body = obj.raw
            if match_labels(labels, (body.get("metadata") or {}).get("labels") or {}) and match_fields(fields, body):
                out.append(body)
        return out

    async def _do_list(self, request: rendering.Request) -> tuple[dict, int]:
        kind = self._info(request.resource).kind or "Object"
        api_version = f"{request.resource.group}/{request.resource.version}".lstrip("/")
        return {
            "apiVersion": api_version,
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": self._select(request),
        }, 200

    async def _do_create(self, request: rendering.Request) -> tuple[dict, int]:
        body = copy.deepcopy(request.data) if isinstance(request.data, dict) else None
        if body is None:
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        strict = request.params.get("fieldValidation") == "Strict"
        return await self.create_object(request.resource, request.namespace, body, strict=strict), 201

    async def create_object(self, res: Any, namespace: str | None, body: dict[str, Any], strict: bool = False) -> dict[str, Any]:
        """Create as the API server does (validation, metadata, ADDED event); the caller holds the lock."""
        info = self._info(res)
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise _error(422, "Invalid", "metadata.name: Required value")
        if info.namespaced:
            ns = namespace or meta.get("namespace")
            if not ns:
                raise _error(422, "Invalid", "metadata.namespace: Required value")
            if meta.get("namespace") and meta["namespace"] != ns:
                raise _error(400, "BadRequest", "the namespace of the object does not match the namespace of the URL")
            meta["namespace"] = ns
        else:
            ns = None
        key = (res, ns, meta["name"])
        if "status" in info.subresources:
            body.pop("status", None)
        body = self._validate(res, info, body, None, None, strict)
        meta = body["metadata"]
        if self._live(key) is not None:
            raise _error(409, "AlreadyExists", f'{res.plural} "{meta["name"]}" already exists',
                         {"name": meta["name"], "group": res.group or "", "kind": res.plural})
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta.pop("deletionTimestamp", None)
        meta.pop("deletionGracePeriodSeconds", None)
        if (self.semantics.job_tracking_finalizer and _is_pod(key) and (_controller_ref(body) or {}).get("kind") == "Job"
                and JOB_TRACKING_FINALIZER not in (meta.get("finalizers") or [])):
            meta["finalizers"] = [*(meta.get("finalizers") or []), JOB_TRACKING_FINALIZER]
        meta["resourceVersion"] = self._bump()
        self._store(key, body)
        self._uids[meta["uid"]] = key
        self.created_at[(res.plural, ns, meta["name"])] = time.monotonic()
        await self._emit(res, "ADDED", body)
        if self.semantics.async_gc and meta.get("ownerReferences"):
            self._wake_gc()  # an object whose owners are gone already is collected too
        return body

    def _validate(self, res: Any, info: Any, new: dict[str, Any], old: dict[str, Any] | None,
                  subresource: str | None, strict: bool) -> dict[str, Any]:
        from support import apivalidation

        if res.group == "kubetune.io":
            if self.semantics.validate_custom_resources:
                return apivalidation.custom_resource(new, old, subresource, kind=info.kind)
            return new
        if self.semantics.validate_builtins and subresource is None:
            apivalidation.builtin(info.kind, res.group or "", new, old, strict)
        return new

    def _apply_patch(self, old: dict[str, Any], request: rendering.Request) -> dict[str, Any]:
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        data = request.data
        if ctype == "application/json-patch+json" or isinstance(data, list):
            try:
                return jsonpatch.apply_patch(copy.deepcopy(old), data, in_place=False)
            except jsonpatch.JsonPatchTestFailed as e:
                raise _error(422, "Invalid", f"the JSON patch test failed: {e}") from None
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise _error(422, "Invalid", f"the JSON patch cannot be applied: {e}") from None
        if ctype == "application/apply-patch+yaml":
            raise _error(415, "UnsupportedMediaType", "server-side apply is not emulated")
        if not isinstance(data, dict):
            raise _error(400, "BadRequest", "a merge patch must be a JSON object")
        rv = (data.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"].get("resourceVersion"):
            raise _conflict(request.resource, request.name)
        return _merge(old, data)

    async def write_object(self, key: Any, old: dict[str, Any], new: dict[str, Any], subresource: str | None = None,
                           strict: bool = False) -> dict[str, Any]:
        """Store an update as the API server does (status subresource, generation, validation, MODIFIED)."""
        res = key[0]
        info = self._info(res)
        new = copy.deepcopy(new)
        meta = new.setdefault("metadata", {})
        # Immutable metadata stays as it was.
        for k in ("name", "namespace", "uid", "creationTimestamp", "deletionGracePeriodSeconds"):
            if k in old.get("metadata", {}):
                meta[k] = old["metadata"][k]
        if "status" in info.subresources:
            if subresource == "status":
                new = {**copy.deepcopy(old), "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
            else:
                new = {**new, "status": old.get("status")} if "status" in old else {k: v for k, v in new.items() if k != "status"}
            meta = new["metadata"]
        new = self._validate(res, info, new, old, subresource, strict)
        meta = new["metadata"]
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation") or 1) + 1
        else:
            meta["generation"] = old["metadata"].get("generation", 1)
        if old["metadata"].get("deletionTimestamp"):
            meta["deletionTimestamp"] = old["metadata"]["deletionTimestamp"]
        else:
            meta.pop("deletionTimestamp", None)  # only DELETE sets it
        meta["resourceVersion"] = self._bump()
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not self._lingering(key, new):
            await self._remove(key, new)
            return new
        self._store(key, new)
        await self._emit(res, "MODIFIED", new)
        return new

    def _lingering(self, key: Any, body: dict[str, Any]) -> bool:
        """A pod in graceful termination whose containers still run."""
        return (_is_pod(key) and bool((body.get("metadata") or {}).get("deletionGracePeriodSeconds"))
                and not _terminal(body))

    async def _do_patch(self, request: rendering.Request) -> tuple[dict, int]:
        if request.subresource not in (None, "status"):
            raise _error(404, "NotFound", f"subresource {request.subresource} is not served by the emulator")
        old, _ = await self._do_get(request)
        new = self._apply_patch(old, request)
        key = (request.resource, request.namespace, request.name)
        strict = request.params.get("fieldValidation") == "Strict"
        return await self.write_object(key, old, new, request.subresource, strict), 200

    async def _do_update(self, request: rendering.Request) -> tuple[dict, int]:
        old, _ = await self._do_get(request)
        body = copy.deepcopy(request.data) if isinstance(request.data, dict) else None
        if body is None:
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise _conflict(request.resource, request.name)
        key = (request.resource, request.namespace, request.name)
        strict = request.params.get("fieldValidation") == "Strict"
        return await self.write_object(key, old, body, request.subresource, strict), 200

    async def _do_delete(self, request: rendering.Request) -> tuple[dict, int]:
        key = (request.resource, request.namespace, request.name)
        body = self._live(key)
        if body is None:
            raise _error(404, "NotFound", f'{request.resource.plural} "{request.name}" not found',
                         {"name": request.name, "group": request.resource.group or "", "kind": request.resource.plural})
        options = request.data if isinstance(request.data, dict) else {}
        pre = options.get("preconditions") or {}
        if (pre.get("resourceVersion") and pre["resourceVersion"] != body["metadata"].get("resourceVersion")) or (
                pre.get("uid") and pre["uid"] != body["metadata"].get("uid")):
            raise _conflict(request.resource, request.name, "precondition failed")
        policy = options.get("propagationPolicy") or request.params.get("propagationPolicy") or "Background"
        if options.get("orphanDependents") is True:
            policy = "Orphan"
        grace = options.get("gracePeriodSeconds", request.params.get("gracePeriodSeconds"))
        return await self.delete_object(key, body, policy, None if grace is None else int(grace)), 200

    async def delete_object(self, key: Any, body: dict[str, Any], policy: str = "Background",
                            grace: int | None = None) -> dict[str, Any]:
        """DELETE as the API server does; the caller holds the lock."""
        meta = body["metadata"]
        if _is_pod(key) and self.semantics.graceful_pod_deletion:
            if grace is None:
                grace = int((body.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
            scheduled = (body.get("status") or {}).get("phase") == "Running" or any(
                c.get("type") == "PodScheduled" and c.get("status") == "True"
                for c in (body.get("status") or {}).get("conditions") or [])
            if meta.get("deletionTimestamp"):
                if grace == 0 and self._lingering(key, body):
                    await self._kill(key, meta.get("uid"))
                return self._live(key) or body
            if grace > 0 and scheduled and not _terminal(body):
                new = copy.deepcopy(body)
                new["metadata"]["deletionTimestamp"] = _later(grace)
                new["metadata"]["deletionGracePeriodSeconds"] = grace
                new["metadata"]["resourceVersion"] = self._bump()
                self._store(key, new)
                await self._emit(key[0], "MODIFIED", new)
                uid = meta.get("uid")
                loop = asyncio.get_running_loop()
                loop.call_later(min(grace, self.semantics.max_grace_seconds),
                                lambda: self._spawn(self._grace_expired(key, uid)))
                return new
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and FOREGROUND_FINALIZER not in finalizers and not meta.get("deletionTimestamp"):
            finalizers.append(FOREGROUND_FINALIZER)
        if policy == "Orphan" and ORPHAN_FINALIZER not in finalizers and not meta.get("deletionTimestamp"):
            finalizers.append(ORPHAN_FINALIZER)
        if finalizers:
            if meta.get("deletionTimestamp"):
                return body
            new = copy.deepcopy(body)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["finalizers"] = finalizers
            new["metadata"]["resourceVersion"] = self._bump()
            self._store(key, new)
            await self._emit(key[0], "MODIFIED", new)
            if FOREGROUND_FINALIZER in finalizers or ORPHAN_FINALIZER in finalizers:
                await self._gc_soon()
            return new
        return await self._remove(key, body)

    async def _grace_expired(self, key: Any, uid: str | None) -> None:
        async with self._lock:
            await self._kill(key, uid)

    async def _kill(self, key: Any, uid: str | None) -> None:
        """The kubelet after the grace period: SIGKILL (exit code 137), phase Failed."""
        body = self._live(key)
        if body is None or body["metadata"].get("uid") != uid or not self._lingering(key, body):
            return
        new = copy.deepcopy(body)
        st = new.setdefault("status", {})
        st["phase"] = "Failed"
        for cs in st.get("containerStatuses") or []:
            if "terminated" not in (cs.get("state") or {}):
                cs["state"] = {"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": _now()}}
                cs["ready"] = False
        await self.write_object(key, body, new, "status")

    async def _remove(self, key: Any, body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = self._bump()
        obj = self._objects[key]
        if not obj.deleted:
            self._store(key, body)
        obj.delete()
        self._uids.pop(body["metadata"].get("uid"), None)
        self.removed_at[(key[0].plural, key[1], key[2])] = time.monotonic()
        await self._emit(key[0], "DELETED", body)
        await self._gc_soon(body)
        return body

    # --------------------------------------------------- garbage collector
    def _wake_gc(self) -> None:
        if self._gc_wake is None:
            self._gc_wake = asyncio.Event()
            self._spawn(self._gc_loop())
        self._gc_wake.set()

    async def _gc_soon(self, removed: dict[str, Any] | None = None) -> None:
        if self.semantics.async_gc:
            self._wake_gc()
        else:
            await self._gc_pass()

    async def _gc_loop(self) -> None:
        assert self._gc_wake is not None
        while True:
            await self._gc_wake.wait()
            self._gc_wake.clear()
            await asyncio.sleep(self.semantics.gc_delay)
            while self.gc_paused:
                await asyncio.sleep(0.02)
            async with self._lock:
                again = await self._gc_pass()
            if again:
                self._gc_wake.set()

    def _still(self, key: Any, body: dict[str, Any]) -> dict[str, Any] | None:
        live = self._live(key)
        if live is None or live["metadata"].get("uid") != body["metadata"].get("uid"):
            return None
        return live

    async def _gc_pass(self) -> bool:
        """One pass of the garbage collector over every object with owners (or deletion finalizers)."""
        changed = False
        items = [(k, o.raw) for k, o in list(self._objects.items()) if not o.deleted]
        fg = {b["metadata"].get("uid") for _, b in items
              if b["metadata"].get("deletionTimestamp") and FOREGROUND_FINALIZER in (b["metadata"].get("finalizers") or [])}
        orphaning = {b["metadata"].get("uid") for _, b in items
                     if b["metadata"].get("deletionTimestamp") and ORPHAN_FINALIZER in (b["metadata"].get("finalizers") or [])}
        for key, body in items:
            refs = body["metadata"].get("ownerReferences") or []
            if not refs:
                continue
            if any(r.get("uid") in orphaning for r in refs):
                body = self._still(key, body)
                if body is None:
                    continue
                new = copy.deepcopy(body)
                kept = [r for r in refs if r.get("uid") not in orphaning]
                if kept:
                    new["metadata"]["ownerReferences"] = kept
                else:
                    new["metadata"].pop("ownerReferences", None)
                body = await self.write_object(key, body, new)
                refs, changed = kept, True
                if not refs:
                    continue
            gone = all(r.get("uid") not in self._uids for r in refs)
            if (gone or any(r.get("uid") in fg for r in refs)) and not body["metadata"].get("deletionTimestamp"):
                body = self._still(key, body)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    continue
                # Dependents of a foreground deletion go in the foreground too (they block their owner).
                await self.delete_object(key, body, "Foreground" if not gone else "Background")
                changed = True
        items = [(k, o.raw) for k, o in list(self._objects.items()) if not o.deleted]
        blocking = {r.get("uid") for _, b in items for r in (b["metadata"].get("ownerReferences") or []) if r.get("blockOwnerDeletion")}
        for key, body in items:
            meta = body["metadata"]
            fins = meta.get("finalizers") or []
            if not meta.get("deletionTimestamp") or not ({FOREGROUND_FINALIZER, ORPHAN_FINALIZER} & set(fins)):
                continue
            drop = {ORPHAN_FINALIZER} if ORPHAN_FINALIZER in fins else set()
            if FOREGROUND_FINALIZER in fins and meta.get("uid") not in blocking:
                drop.add(FOREGROUND_FINALIZER)
            if not drop:
                continue
            body = self._still(key, body)
            if body is None:
                continue
            new = copy.deepcopy(body)
            new["metadata"]["finalizers"] = [f for f in fins if f not in drop]
            await self.write_object(key, body, new)
            changed = True
        return changed

    def pause_gc(self) -> None:
        """Hold the garbage collector (only with ``semantics.async_gc``): dependents of deleted owners stay."""
        self.gc_paused = True

    def resume_gc(self) -> None:
        self.gc_paused = False
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_gc)

    # ------------------------------------------------------------ eviction
    async def _do_evict(self, request: rendering.Request) -> tuple[dict, int]:
        if request.resource.plural != "pods":
            raise _error(404, "NotFound", "eviction is a pods subresource")
        key = (request.resource, request.namespace, request.name)
        body = self._live(key)
        if body is None:
            raise _error(404, "NotFound", f'pods "{request.name}" not found', {"name": request.name, "kind": "pods"})
        options = (request.data or {}).get("deleteOptions") or {} if isinstance(request.data, dict) else {}
        if not body["metadata"].get("deletionTimestamp") and not _terminal(body):
            body = await self.write_object(key, body, with_condition(body, {
                "type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                "message": "Eviction API: evicting", "lastTransitionTime": _now()}), "status")
        live = self._live(key)
        if live is not None:
            grace = options.get("gracePeriodSeconds")
            await self.delete_object(key, live, options.get("propagationPolicy") or "Background",
                                     None if grace is None else int(grace))
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success", "code": 201}, 201

    # -------------------------------------------------------------- tokens
    def issue_token(self, user: str, groups: Iterable[str] = (), audiences: Iterable[str] = (),
                    pod: tuple[str, str] | None = None) -> str:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = Identity(user, tuple(groups), tuple(audiences), pod)
        return token

    def service_account_token(self, namespace: str, name: str, audiences: Iterable[str] = (),
                              pod: tuple[str, str] | None = None) -> str:
        groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated")
        return self.issue_token(f"system:serviceaccount:{namespace}:{name}", groups, audiences, pod)

    async def _do_token(self, request: rendering.Request) -> tuple[dict, int]:
        if request.resource.plural != "serviceaccounts":
            raise _error(404, "NotFound", "token is a serviceaccounts subresource")
        # The ServiceAccount controller makes `default` in every namespace.
        default = request.name == "default" and any(
            n["metadata"]["name"] == request.namespace for n in self.live_objects("v1/namespaces"))
        if self._live((request.resource, request.namespace, request.name)) is None and not default:
            raise _error(404, "NotFound", f'serviceaccounts "{request.name}" not found', {"name": request.name, "kind": "serviceaccounts"})
        spec = dict(((request.data or {}) if isinstance(request.data, dict) else {}).get("spec") or {})
        ref = spec.get("boundObjectRef") or {}
        pod = (request.namespace, ref["name"]) if ref.get("kind") == "Pod" and ref.get("name") else None
        if pod is not None and not any(p["metadata"]["name"] == pod[1] for p in self.live_objects("v1/pods", pod[0])):
            raise _error(404, "NotFound", f'pods "{pod[1]}" not found', {"name": pod[1], "kind": "pods"})
        audiences = spec.get("audiences") or ["https://kubernetes.default.svc"]
        token = self.service_account_token(request.namespace, request.name, audiences, pod)
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "metadata": {"name": request.name, "namespace": request.namespace}, "spec": spec,
                "status": {"token": token, "expirationTimestamp": _later(int(spec.get("expirationSeconds") or 3600))}}, 201

    def _do_token_review(self, request: rendering.Request) -> tuple[dict, int]:
        spec = dict(((request.data or {}) if isinstance(request.data, dict) else {}).get("spec") or {})
        ident = self.tokens.get(spec.get("token") or "")
        wanted = spec.get("audiences") or []
        # Without spec.audiences the API server's own audiences are meant (TokenReview docs).
        wanted = wanted or list(API_AUDIENCES)
        audiences = ident.audiences or tuple(API_AUDIENCES) if ident is not None else ()
        pod = self._bound_pod(ident) if ident is not None and ident.pod else None
        ok = ident is not None and bool(set(wanted) & set(audiences)) and (ident.pod is None or pod is not None)
        status: dict[str, Any] = {"authenticated": ok}
        if ok and ident is not None:
            extra = {"authentication.kubernetes.io/pod-name": [ident.pod[1]],
                     "authentication.kubernetes.io/pod-uid": [pod["metadata"]["uid"]]} if ident.pod and pod else {}
            status["user"] = {"username": ident.user, "groups": list(ident.groups), "extra": extra}
            status["audiences"] = [a for a in audiences if a in wanted]
        else:
            status["error"] = ("invalid bearer token" if ident is None else
                               "token audiences do not match" if not set(wanted) & set(audiences) else "the pod the token is bound to is gone")
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": spec, "status": status}, 201

    # ------------------------------------------------------ Job controller
    def _job_event(self, res: Any, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        if res.plural == "jobs" and res.group == "batch":
            self._job_queue.add(("job", meta.get("namespace"), meta.get("name")))
        elif res.plural == "pods" and not res.group:
            ref = _controller_ref(body)
            if not ref or ref.get("kind") != "Job":
                return
            owner = self._uids.get(ref.get("uid"))
            if owner is not None:
                self._job_queue.add(("job", owner[1], owner[2]))
            else:
                self._job_queue.add(("pod", meta.get("namespace"), meta.get("name")))
        else:
            return
        self.kick_job_controller()

    def kick_job_controller(self, item: tuple[str, str, str] | None = None) -> None:
        if item is not None:
            self._job_queue.add(item)
        if self._job_wake is None:
            self._job_wake = asyncio.Event()
            self._spawn(self._job_loop())
        self._job_wake.set()

    async def _job_loop(self) -> None:
        from support import jobcontroller

        assert self._job_wake is not None
        while True:
            await self._job_wake.wait()
            self._job_wake.clear()
            await asyncio.sleep(0.01)
            queue, self._job_queue = self._job_queue, set()
            async with self._lock:
                for item in sorted(queue, key=str):
                    try:
                        await jobcontroller.sync(self, item)
                    except Exception:  # a controller bug must show, not kill the loop silently
                        import traceback

                        traceback.print_exc()

    # ------------------------------------------------------------- watch
    async def expire_watches(self) -> None:
        """etcd compaction: every open watch ends with an ERROR 410 Expired event, and a watch
        from any resourceVersion seen so far gets the same; clients must list again."""
        async with self._lock:
            self._compacted_rv = self._rv
            self._events.clear()
            for res in list(self._buses):
                await self._buses[res].put({"type": "__EXPIRE__", "object": {}})

    def _expired(self, since: int) -> dict[str, Any]:
        return {"type": "ERROR", "object": {
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": 410, "reason": "Expired",
            "message": f"too old resource version: {since} ({self._compacted_rv or self._rv})"}}

    async def _watch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        labels = request.params.get("labelSelector")
        fields = request.params.get("fieldSelector")
        timeout = request.params.get("timeoutSeconds")

        def wanted(body: dict[str, Any]) -> bool:
            meta = body.get("metadata") or {}
            if request.namespace is not None and meta.get("namespace") != request.namespace:
                return False
            if request.name is not None and meta.get("name") != request.name:
                return False
            return match_labels(labels, meta.get("labels") or {}) and match_fields(fields, body)

        expired = False
        async with self._lock:
            since_s = request.params.get("resourceVersion")
            since = int(since_s) if since_s and since_s.isdigit() else 0
            backlog: list[dict[str, Any]] = []
            log = self._events.get(res) or ()
            # resourceVersions are global: the next event of this resource may be far above `since`.
            if since > 0 and since < max(self._compacted_rv, self._trimmed_rv.get(res, 0)):
                expired = True
            elif since > 0:
                backlog = [{"type": t, "object": b} for rv, t, b in log if rv > since and wanted(b)]
            else:
                backlog = [{"type": "ADDED", "object": b} for b in self._select(request) if wanted(b)]
            mark = await self._buses[res].mark()

        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)

        async def pump() -> None:
            if expired:
                await response.write(json.dumps(self._expired(since)).encode() + b"\n")
                return
            for ev in backlog:
                await response.write(json.dumps(ev).encode() + b"\n")
            async for ev in mark:
                if ev["type"] == "__EXPIRE__":
                    await response.write(json.dumps(self._expired(since)).encode() + b"\n")
                    return
                if wanted(ev["object"]):
                    await response.write(json.dumps(ev).encode() + b"\n")

        try:
            if timeout and timeout.isdigit():
                try:
                    await asyncio.wait_for(pump(), timeout=int(timeout))
                except TimeoutError:
                    pass
            else:
                await pump()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            await self._buses[res].unmark(mark)
        try:
            await response.write_eof()
        except ConnectionError:
            pass
        return response

    # ------------------------------------------------------ test helpers
    def calls_by(self, user_agent_prefix: str) -> list[ApiCall]:
        return [c for c in list(self.calls) if c.user_agent.startswith(user_agent_prefix)]

    def inject(self, match: Callable[[ApiCall], bool] | None = None, *, verb: str | None = None,
               resource: str | None = None, user_agent: str | None = None, status: int | None = 500,
               times: int | None = 1, delay: float = 0.0, retry_after: int | None = None,
               reason: str | None = None, message: str | None = None) -> Fault:
        """Fail matching requests: ``status`` (429, 500, 503...), after ``delay`` seconds, ``times`` times.

        ``resource`` is 'plural' or 'plural/subresource'; ``user_agent`` a prefix (Kopf's is 'kopf/').
        """
        def default(call: ApiCall) -> bool:
            res = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
            return ((verb is None or call.verb == verb) and (resource is None or res == resource)
                    and (user_agent is None or call.user_agent.startswith(user_agent)))

        fault = Fault(match or default, status, times, delay, retry_after, reason, message)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def start_watch_outage(self) -> None:
        """Hold every list and watch request (but the test client's) until end_watch_outage()."""
        self._outage.set()

    def end_watch_outage(self) -> None:
        self._outage.clear()


def with_condition(body: dict[str, Any], condition: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``body`` with ``condition`` set in status.conditions (replacing one of its type)."""
    new = copy.deepcopy(body)
    st = new.setdefault("status", {})
    st["conditions"] = [c for c in st.get("conditions") or [] if c.get("type") != condition["type"]] + [condition]
    return new


def _conflict(res: Any, name: str | None, why: str = "the object has been modified") -> kmock.KubernetesError:
    group = f".{res.group}" if res.group else ""
    return _error(409, "Conflict",
                  f'Operation cannot be fulfilled on {res.plural}{group} "{name}": {why}; '
                  "please apply your changes to the latest version and try again",
                  {"name": name or "", "group": res.group or "", "kind": res.plural})


def _merge(old: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(old) if isinstance(old, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def rbac_rules(calls: Iterable[ApiCall]) -> set[tuple[str, str, str]]:
    """(verb, group, resource[/subresource]) triples: what a Role must allow for these calls."""
    return {(c.verb, c.group, f"{c.resource}/{c.subresource}" if c.subresource else c.resource) for c in calls}
