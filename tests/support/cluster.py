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

from support.emulator import ApiCall, KubeEmulator

TEST_AGENT = "kubetune-tests"

# kind -> (API prefix, plural, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Pod": ("/api/v1", "pods", True),
    "Service": ("/api/v1", "services", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Event": ("/api/v1", "events", True),
    "Job": ("/apis/batch/v1", "jobs", True),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "FineTuneJob": ("/apis/kubetune.io/v1alpha1", "finetunejobs", True),
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

    def __init__(self, keep_history: bool = True):
        self.keep_history = keep_history
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
        return KubeEmulator(keep_history=self.keep_history)

    def _main(self) -> None:
        async def serve() -> None:
            self._stop = asyncio.Event()
            async with self._make_emulator() as emu, kmock.Server(emu) as server:
                self.emulator = emu
                self.url = str(server.url).rstrip("/")
                self._loop = asyncio.get_running_loop()
                self._ready.set()
                await self._stop.wait()

        asyncio.run(serve())

    def start(self) -> EmulatedCluster:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the API emulator did not start")
        return self

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

    def delete(self, kind: str, namespace: str | None, name: str, propagation: str = "Background") -> dict[str, Any] | None:
        try:
            return self.request("DELETE", self.path(kind, namespace, name), {"propagationPolicy": propagation})
        except ApiError as e:
            if e.status == 404:
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

        return kopf.ConnectionInfo(server=self.url, insecure=True, default_namespace="default")

    def write_kubeconfig(self, path: str, namespace: str = "default") -> str:
        """A kubeconfig whose current context is this cluster (for `kubetune operator`, kubectl)."""
        import yaml

        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "emulator-accepts-anything"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": namespace}}],
        }
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        return path

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
