"""A stricter Kubernetes API emulator on top of kmock, for the real operator in tests.

kmock's ``KubernetesEmulator`` serves objects over real HTTP; this subclass adds
what Kopf and our operator rely on (see ../shared/TESTING.md):

- metadata on create: ``uid``, ``resourceVersion`` (one global counter),
  ``creationTimestamp``, ``generation``, ``namespace`` from the URL,
  ``generateName``; ``201 Created``; ``409`` when the name is taken;
- PATCH as merge-patch (also for ``strategic-merge-patch+json``: no list
  merging) or JSON patch; a failed JSON-patch ``test`` answers ``422``;
  every write bumps ``resourceVersion``; ``generation`` grows when ``spec``
  changes;
- the ``status`` subresource for resources that declare it: ``/status``
  writes change only ``.status``, writes to the main resource never do, and
  ``status`` is dropped on create (as the real API server does);
- PUT (replace) with a resourceVersion precondition (409 on mismatch);
- finalizers: DELETE sets ``deletionTimestamp``; the object goes when the last
  finalizer is removed;
- owner-reference garbage collection (background propagation): deleting an
  object deletes its dependents (matched by ``ownerReferences[].uid``), as the
  real garbage collector would, unless ``propagationPolicy: Orphan``;
- label selectors (``a=b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``,
  ``a notin (x)``) and ``metadata.name``/``metadata.namespace`` field
  selectors on list and watch;
- watch from a ``resourceVersion`` replays the events since then (no gap
  between Kopf's list and its watch); ``timeoutSeconds`` ends the stream;
- a record of every API request: ``calls`` holds ``ApiCall(verb, group,
  resource, subresource, namespace, name, user_agent, status)``, ``verb``
  being the RBAC verb (get, list, watch, create, update, patch, delete).

Not emulated: schema validation and defaulting, admission, server-side apply,
strategic-merge list semantics, dryRun, field managers, any controller (the
Job controller, the scheduler, the kubelet): tests play those parts by
creating pods and patching statuses.
"""
from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, enums, rendering

# group/version/plural -> (Kind, namespaced, subresources)
BUILTIN_RESOURCES: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "v1/namespaces": ("Namespace", False, ("status",)),
    "v1/pods": ("Pod", True, ("status", "log")),
    "v1/services": ("Service", True, ("status",)),
    "v1/configmaps": ("ConfigMap", True, ()),
    "v1/secrets": ("Secret", True, ()),
    "v1/serviceaccounts": ("ServiceAccount", True, ()),
    "v1/events": ("Event", True, ()),
    "events.k8s.io/v1/events": ("Event", True, ()),
    "batch/v1/jobs": ("Job", True, ("status",)),
    "rbac.authorization.k8s.io/v1/roles": ("Role", True, ()),
    "rbac.authorization.k8s.io/v1/rolebindings": ("RoleBinding", True, ()),
    "rbac.authorization.k8s.io/v1/clusterroles": ("ClusterRole", False, ()),
    "rbac.authorization.k8s.io/v1/clusterrolebindings": ("ClusterRoleBinding", False, ()),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False, ("status",)),
    "coordination.k8s.io/v1/leases": ("Lease", True, ()),
    "kopf.dev/v1/kopfpeerings": ("KopfPeering", True, ()),
    "kopf.dev/v1/clusterkopfpeerings": ("ClusterKopfPeering", False, ()),
    "kubetune.io/v1alpha1/finetunejobs": ("FineTuneJob", True, ("status",)),
}
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")


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

    @property
    def key(self) -> tuple:
        return (self.verb, self.group, self.resource, self.subresource, self.namespace, self.name)


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


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


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator, made strict enough for Kopf and the kubetune operator."""

    keep_history: bool = True  # False keeps only the latest version of each object (benchmarks)
    calls: list[ApiCall] = attrs.field(factory=list, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _events: dict[Any, collections.deque] = attrs.field(factory=dict, init=False)
    _uids: dict[str, Any] = attrs.field(factory=dict, init=False)  # uid -> object key
    # (plural, namespace, name) -> time.monotonic() of the last successful create (latency benchmarks)
    created_at: dict[tuple[str, str | None, str], float] = attrs.field(factory=dict, init=False)

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

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _live(self, key: Any) -> dict[str, Any] | None:
        if key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else obj.raw

    def _store(self, key: Any, body: dict[str, Any]) -> None:
        if key not in self._objects:
            self._objects[key] = body
            return
        obj = self._objects[key]
        if self.keep_history or obj.deleted:
            obj.history.append(body)
        else:
            obj.history[-1] = body

    async def _emit(self, res: Any, etype: str, body: dict[str, Any]) -> None:
        log = self._events.setdefault(res, collections.deque(maxlen=10000))
        log.append((int(body["metadata"]["resourceVersion"]), etype, body))
        await self._buses[res].put({"type": etype, "object": body})

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
    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or res.plural is None or request.action is None:
            return await apps.RawHandler._handle(self, request)  # discovery, /version, user reactions
        verb = {
            enums.action.LIST: "list", enums.action.WATCH: "watch", enums.action.FETCH: "get",
            enums.action.CREATE: "create", enums.action.UPDATE: "patch", enums.action.DELETE: "delete",
        }.get(request.action)
        if request.method == enums.method.PUT and request.name:
            verb = "update"
        if verb is None:
            return await apps.RawHandler._handle(self, request)
        name = request.name
        if verb == "create" and isinstance(request.data, dict):
            name = (request.data.get("metadata") or {}).get("name")

        def record(status: int) -> None:
            self.calls.append(ApiCall(verb, res.group or "", res.plural, request.subresource, request.namespace, name,
                                      request.headers.get("User-Agent", ""), status))

        try:
            self._info(res)
            if verb == "watch":
                record(200)
                return await self._watch(request)
            async with self._lock:
                body, status = await getattr(self, f"_do_{verb}")(request)
            record(status)
            return aiohttp.web.json_response(body, status=status)
        except kmock.KubernetesError as e:
            record(e.status)
            return await self._render_error(e)

    # ------------------------------------------------------------- verbs
    async def _do_get(self, request: rendering.Request) -> tuple[dict, int]:
        if request.subresource not in (None, "status"):
            raise _error(404, "NotFound", f"subresource {request.subresource} is not served by the emulator")
        body = self._live((request.resource, request.namespace, request.name))
        if body is None:
            raise _error(404, "NotFound", f'{request.resource.plural} "{request.name}" not found')
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
        res = request.resource
        body = copy.deepcopy(request.data) if isinstance(request.data, dict) else None
        if body is None:
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        info = self._info(res)
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise _error(422, "Invalid", "metadata.name: Required value")
        if info.namespaced:
            ns = request.namespace or meta.get("namespace")
            if not ns:
                raise _error(422, "Invalid", "metadata.namespace: Required value")
            if meta.get("namespace") and meta["namespace"] != ns:
                raise _error(400, "BadRequest", "the namespace of the object does not match the namespace of the URL")
            meta["namespace"] = ns
        else:
            ns = None
        key = (res, ns, meta["name"])
        if self._live(key) is not None:
            raise _error(409, "AlreadyExists", f'{res.plural} "{meta["name"]}" already exists')
        if "status" in info.subresources:
            body.pop("status", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta.pop("deletionTimestamp", None)
        meta["resourceVersion"] = self._bump()
        self._store(key, body)
        self._uids[meta["uid"]] = key
        self.created_at[(res.plural, ns, meta["name"])] = time.monotonic()
        await self._emit(res, "ADDED", body)
        return body, 201

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
        return _merge(old, data)

    async def _write(self, request: rendering.Request, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        res = request.resource
        info = self._info(res)
        meta = new.setdefault("metadata", {})
        # Immutable metadata stays as it was.
        for k in ("name", "namespace", "uid", "creationTimestamp"):
            if k in old.get("metadata", {}):
                meta[k] = old["metadata"][k]
        if "status" in info.subresources:
            if request.subresource == "status":
                new = {**copy.deepcopy(old), "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
                meta = new["metadata"]
            else:
                new = {**new, "status": old.get("status")} if "status" in old else {k: v for k, v in new.items() if k != "status"}
                meta = new["metadata"]
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation") or 1) + 1
        else:
            meta["generation"] = old["metadata"].get("generation", 1)
        if old["metadata"].get("deletionTimestamp"):
            meta["deletionTimestamp"] = old["metadata"]["deletionTimestamp"]
        meta["resourceVersion"] = self._bump()
        key = (res, request.namespace, request.name)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._remove(key, new)
            return new
        self._store(key, new)
        await self._emit(res, "MODIFIED", new)
        return new

    async def _do_patch(self, request: rendering.Request) -> tuple[dict, int]:
        if request.subresource not in (None, "status"):
            raise _error(404, "NotFound", f"subresource {request.subresource} is not served by the emulator")
        old, _ = await self._do_get(request)
        new = self._apply_patch(old, request)
        return await self._write(request, old, new), 200

    async def _do_update(self, request: rendering.Request) -> tuple[dict, int]:
        old, _ = await self._do_get(request)
        body = copy.deepcopy(request.data) if isinstance(request.data, dict) else None
        if body is None:
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise _error(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again")
        return await self._write(request, old, body), 200

    async def _do_delete(self, request: rendering.Request) -> tuple[dict, int]:
        key = (request.resource, request.namespace, request.name)
        body = self._live(key)
        if body is None:
            raise _error(404, "NotFound", f'{request.resource.plural} "{request.name}" not found')
        options = request.data if isinstance(request.data, dict) else {}
        policy = options.get("propagationPolicy") or request.params.get("propagationPolicy") or "Background"
        return await self._delete(key, body, orphan=policy == "Orphan"), 200

    async def _delete(self, key: Any, body: dict[str, Any], orphan: bool = False) -> dict[str, Any]:
        meta = body["metadata"]
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return body
            new = copy.deepcopy(body)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["resourceVersion"] = self._bump()
            self._store(key, new)
            await self._emit(key[0], "MODIFIED", new)
            return new
        return await self._remove(key, body, orphan=orphan)

    async def _remove(self, key: Any, body: dict[str, Any], orphan: bool = False) -> dict[str, Any]:
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = self._bump()
        obj = self._objects[key]
        if not obj.deleted:
            self._store(key, body)
        obj.delete()
        self._uids.pop(body["metadata"].get("uid"), None)
        await self._emit(key[0], "DELETED", body)
        if not orphan:
            await self._collect_garbage(body["metadata"].get("uid"))
        return body

    async def _collect_garbage(self, owner_uid: str | None) -> None:
        if not owner_uid:
            return
        dependents = [
            (key, obj.raw) for key, obj in list(self._objects.items())
            if not obj.deleted and any(ref.get("uid") == owner_uid for ref in (obj.raw.get("metadata") or {}).get("ownerReferences") or [])
        ]
        for key, body in dependents:
            if self._live(key) is not None:
                await self._delete(key, body)

    # ------------------------------------------------------------- watch
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

        async with self._lock:
            since = request.params.get("resourceVersion")
            backlog: list[dict[str, Any]] = []
            log = self._events.get(res) or ()
            if since and since.isdigit() and int(since) > 0 and (not log or log[0][0] <= int(since) + 1 or int(since) >= self._rv):
                backlog = [{"type": t, "object": b} for rv, t, b in log if rv > int(since) and wanted(b)]
            else:
                backlog = [{"type": "ADDED", "object": b} for b in self._select(request) if wanted(b)]
            mark = await self._buses[res].mark()

        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)

        async def pump() -> None:
            for ev in backlog:
                await response.write(json.dumps(ev).encode() + b"\n")
            async for ev in mark:
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
