"""The emulated cluster for synchronous tests: the emulator in its own thread, a small client.

    with EmulatedCluster() as cluster:              # a real HTTP API on 127.0.0.1
        cluster.create(manifest)                     # POST, as kubectl would
        with cluster.operator():                     # the real operator, in a thread
            cluster.wait_for(lambda: cluster.get("Job", "ns", "x-a1"))

Everything here talks HTTP to the emulator, like any client would, so the
emulator's ``calls`` record both sides; the test client's requests carry the
User-Agent ``kubetune-tests`` and the operator's carry Kopf's.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kmock
import requests

from support.chart_rbac import OPERATOR_USER
from support.emulator import TEST_AGENT, ApiCall, Fault, KubeEmulator, Semantics

# The identity of the control-plane components tests play (the Job controller and kubelet of the e2e
# executor): not the subject of any test, so a cluster admin like the real ones' broad system roles.
CONTROL_PLANE_USER = "system:kube-controller-manager"

# kind -> (API prefix, plural, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Pod": ("/api/v1", "pods", True),
    "Service": ("/api/v1", "services", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Event": ("/api/v1", "events", True),
    "TokenReview": ("/apis/authentication.k8s.io/v1", "tokenreviews", False),
    "Job": ("/apis/batch/v1", "jobs", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "FineTuneJob": ("/apis/kubetune.io/v1alpha1", "finetunejobs", True),
    "FineTuneSweep": ("/apis/kubetune.io/v1alpha1", "finetunesweeps", True),
    "KopfPeering": ("/apis/kopf.dev/v1", "kopfpeerings", True),
    "ClusterKopfPeering": ("/apis/kopf.dev/v1", "clusterkopfpeerings", False),
}


class ApiError(Exception):
    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class EmulatedCluster:
    """A KubeEmulator served on a free port from a background thread with its own event loop."""

    def __init__(self, keep_history: bool = True, semantics: Semantics | None = None,
                 chart_values: dict[str, Any] | None = None, operator_rbac: bool = True):
        """``semantics``: default all on (``Semantics.default()``). With ``semantics.rbac`` the operator's
        ServiceAccount gets the RBAC the Helm chart renders with ``chart_values`` (``operator_rbac=False``:
        none, for a test that grants its own)."""
        self.keep_history = keep_history
        self.semantics = semantics or Semantics.default()
        self.chart_values = chart_values
        self.operator_rbac = operator_rbac
        self.operator_token: str | None = None  # the operator's bearer token (user OPERATOR_USER)
        self.control_plane_token: str | None = None  # for the Job controller/kubelet a test plays in a process
        self.emulator: KubeEmulator | None = None
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="kube-emulator", daemon=True)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = TEST_AGENT

    # ------------------------------------------------------------ lifecycle
    def _make_emulator(self) -> KubeEmulator:
        """The emulator this cluster serves; subclasses may serve a stricter one."""
        return KubeEmulator(keep_history=self.keep_history, semantics=self.semantics)

    def _main(self) -> None:
        async def serve() -> None:
            self._stop = asyncio.Event()
            async with self._make_emulator() as emu, kmock.Server(emu) as server:
                self.emulator = emu
                self.url = str(server.url).rstrip("/")
                self._loop = asyncio.get_running_loop()
                emu._loop = self._loop
                self._ready.set()
                await self._stop.wait()

        asyncio.run(serve())

    def start(self) -> EmulatedCluster:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the API emulator did not start")
        assert self.emulator is not None
        # The test client is a cluster admin; the operator gets its own identity (RBAC decides what it may do).
        admin = self.emulator.issue_token("kubernetes-admin", ("system:masters", "system:authenticated"))
        self.session.headers["Authorization"] = f"Bearer {admin}"
        self.operator_token = self.emulator.issue_token(
            OPERATOR_USER, ("system:serviceaccounts", "system:serviceaccounts:kubetune-system", "system:authenticated"))
        self.control_plane_token = self.emulator.issue_token(CONTROL_PLANE_USER, ("system:masters", "system:authenticated"))
        if self.semantics.rbac and self.operator_rbac:
            self.install_operator_rbac(self.chart_values)
        return self

    def install_operator_rbac(self, chart_values: dict[str, Any] | None = None) -> None:
        """Store the chart's RBAC for the operator's ServiceAccount, as `helm install` (or `helm upgrade`, on a
        cluster that has it already) with ``chart_values`` would."""
        from support.chart_rbac import operator_rbac

        for obj in operator_rbac(chart_values):
            meta = obj["metadata"]
            if self.get(obj["kind"], meta.get("namespace"), meta["name"]) is None:
                self.create(obj)
            else:
                self.request("PUT", self.path(obj["kind"], meta.get("namespace"), meta["name"]), obj)

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.session.close()

    def __enter__(self) -> EmulatedCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----------------------------------------------------------- the client
    def path(self, kind: str, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        prefix, plural, namespaced = KINDS[kind]
        p = prefix + (f"/namespaces/{namespace}" if namespaced and namespace else "") + f"/{plural}"
        if name:
            p += f"/{name}"
        if subresource:
            p += f"/{subresource}"
        return p

    def request(self, method: str, path: str, body: Any = None, content_type: str | None = None, **params: Any) -> Any:
        headers = {"Content-Type": content_type} if content_type else {}
        r = self.session.request(method, self.url + path, json=body, headers=headers, params=params or None, timeout=30)
        data = r.json() if r.content else None
        if r.status_code >= 400:
            raise ApiError(r.status_code, data)
        return data

    def create(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or (obj.get("metadata") or {}).get("namespace")
        return self.request("POST", self.path(obj["kind"], ns), obj)

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", self.path(kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else {}
        return self.request("GET", self.path(kind, namespace), **params)["items"]

    def patch(self, kind: str, namespace: str | None, name: str, patch: Any, subresource: str | None = None) -> dict[str, Any]:
        ctype = "application/json-patch+json" if isinstance(patch, list) else "application/merge-patch+json"
        return self.request("PATCH", self.path(kind, namespace, name, subresource), patch, content_type=ctype)

    def patch_status(self, kind: str, namespace: str | None, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.patch(kind, namespace, name, {"status": status}, subresource="status")

    def delete(self, kind: str, namespace: str | None, name: str, propagation: str = "Background",
               grace_seconds: int | None = None, uid: str | None = None) -> dict[str, Any] | None:
        """DELETE; None when it is not there. ``uid``: only that object (a precondition), None when
        the name now belongs to another one."""
        options: dict[str, Any] = {"propagationPolicy": propagation}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        try:
            return self.request("DELETE", self.path(kind, namespace, name), options)
        except ApiError as e:
            if e.status == 404 or (e.status == 409 and uid is not None):
                return None
            raise

    def events(self, namespace: str, involved_name: str | None = None) -> list[dict[str, Any]]:
        evs = self.list("Event", namespace)
        return [e for e in evs if involved_name is None or (e.get("involvedObject") or {}).get("name") == involved_name]

    # -------------------------------------------------------------- helpers
    @property
    def calls(self) -> list[ApiCall]:
        assert self.emulator is not None
        return list(self.emulator.calls)

    def operator_calls(self) -> list[ApiCall]:
        """Requests made by anything but the test client (i.e. the operator)."""
        return [c for c in self.calls if not c.user_agent.startswith(TEST_AGENT)]

    def login(self, **_: Any) -> Any:
        """A Kopf login handler for an operator pointed at this cluster."""
        import kopf

        return kopf.ConnectionInfo(server=self.url, insecure=True, default_namespace="default", token=self.operator_token)

    def write_kubeconfig(self, path: str, namespace: str = "default") -> str:
        """A kubeconfig whose current context is this cluster (for `kubetune operator`, kubectl)."""
        import yaml

        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": self.operator_token or "emulator-accepts-anything"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": namespace}}],
        }
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        return path

    # ------------------------------------------------ real-cluster behaviours
    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the emulator's loop (its own thread) and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def expire_watches(self) -> None:
        """End every open watch with 410 Gone (etcd compaction); clients must re-list."""
        assert self.emulator is not None
        self.run(self.emulator.expire_watches())

    @contextlib.contextmanager
    def watch_outage(self) -> Iterator[None]:
        """Watches end with 410 and other clients' lists/watches wait until the block ends:
        what changes meanwhile reaches them only by the re-list (no DELETED events)."""
        assert self.emulator is not None
        self.emulator.start_watch_outage()
        try:
            self.expire_watches()
            yield
        finally:
            self.emulator.end_watch_outage()

    @contextlib.contextmanager
    def admission_off(self) -> Iterator[None]:
        """FineTuneJob/FineTuneSweep writes skip the CRD's schema and CEL rules meanwhile: an object stored under an
        older CRD without today's rules, which only the operator's own checks can then refuse (InvalidSpec)."""
        assert self.emulator is not None
        before = self.emulator.semantics.validate_custom_resources
        self.emulator.semantics.validate_custom_resources = False
        try:
            yield
        finally:
            self.emulator.semantics.validate_custom_resources = before

    def pause_gc(self) -> None:
        assert self.emulator is not None
        self.emulator.pause_gc()

    def resume_gc(self) -> None:
        assert self.emulator is not None
        self.emulator.resume_gc()

    def inject(self, *args: Any, **kwargs: Any) -> Fault:
        """See KubeEmulator.inject: fail matching requests with 429/500/..., or delay them."""
        assert self.emulator is not None
        return self.emulator.inject(*args, **kwargs)

    def evict(self, namespace: str, pod: str, grace_seconds: int | None = None) -> Any:
        """POST pods/<pod>/eviction, as kubectl drain and the cluster autoscaler do."""
        body: dict[str, Any] = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": namespace}}
        if grace_seconds is not None:
            body["deleteOptions"] = {"gracePeriodSeconds": grace_seconds}
        return self.request("POST", self.path("Pod", namespace, pod, "eviction"), body)

    def token(self, user: str, groups: tuple[str, ...] = ()) -> str:
        assert self.emulator is not None
        return self.emulator.issue_token(user, groups)

    def service_account_token(self, namespace: str, name: str, audiences: tuple[str, ...] = (), pod: str | None = None) -> str:
        """A token of a ServiceAccount (bound to ``pod`` in ``namespace`` when given, as projected tokens are)."""
        assert self.emulator is not None
        return self.emulator.service_account_token(namespace, name, audiences, (namespace, pod) if pod else None)

    def as_token(self, token: str) -> EmulatedCluster:
        """A client of this cluster that authenticates with ``token`` (RBAC applies to it)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.session = requests.Session()
        other.session.headers["User-Agent"] = f"{TEST_AGENT}-as-token"
        other.session.headers["Authorization"] = f"Bearer {token}"
        return other

    def grant(self, user: str, rules: list[dict[str, Any]], namespace: str | None = None, name: str | None = None) -> None:
        """A (Cluster)Role with ``rules`` bound to ``user`` (a 'system:serviceaccount:ns:name' user is bound as that ServiceAccount)."""
        rbac = "rbac.authorization.k8s.io/v1"
        name = name or "grant-" + "".join(ch if ch.isalnum() else "-" for ch in user.lower()).strip("-")[:50]
        if user.startswith("system:serviceaccount:"):
            _, _, sa_ns, sa_name = user.split(":", 3)
            subject = {"kind": "ServiceAccount", "name": sa_name, "namespace": sa_ns}
        else:
            subject = {"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}
        kind = "Role" if namespace else "ClusterRole"
        meta = {"name": name, **({"namespace": namespace} if namespace else {})}
        self.create({"apiVersion": rbac, "kind": kind, "metadata": meta, "rules": rules})
        self.create({"apiVersion": rbac, "kind": f"{kind}Binding", "metadata": meta, "subjects": [subject],
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}})

    def ensure_namespace(self, name: str) -> None:
        if self.get("Namespace", None, name) is None:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    @contextlib.contextmanager
    def operator(self, settings: Any = None, namespaces: tuple[str, ...] = (), **kwargs: Any) -> Iterator[Any]:
        """The real operator in a thread with its own loop, pointed at this cluster."""
        from kubetune_operator.runner import OperatorThread
        from kubetune_operator.settings import OperatorSettings

        settings = settings or OperatorSettings(standalone=True, metrics_port=0, health_port=0)
        op = OperatorThread(settings, login=self.login, namespaces=namespaces, **kwargs)
        op.start()
        try:
            yield op
        finally:
            op.stop()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reporting_settings(**changes: Any) -> Any:
    """Operator settings for tests whose pods report progress: the report endpoint on a free local port,
    over HTTPS with this process's test CA (support/tls.py), as the chart installs it."""
    from kubetune_operator.settings import OperatorSettings
    from support.tls import local_pki

    port, pki = free_port(), local_pki()
    base: dict[str, Any] = {"standalone": True, "metrics_port": 0, "health_port": 0, "report_port": port,
                            "report_url": f"https://127.0.0.1:{port}", "report_interval_seconds": 0.0,
                            "report_tls_cert": str(pki.cert), "report_tls_key": str(pki.key), "report_ca": str(pki.ca)}
    return OperatorSettings(**{**base, **changes})


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, message: str = "") -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}; last value: {last!r}")
