"""A test-only kubelet: runs the pods of the emulator's batch/v1 Jobs as local processes.

The operator under test creates Indexed Jobs in the API emulator, and the
emulator's own Job controller (``tests/support/jobcontroller.py``, on as in
every faithful cluster) makes their pods, counts their outcomes, evaluates
``podFailurePolicy``, sets ``FailureTarget``/``Failed``/``Complete``, handles
``suspend``, replaces pods and releases the job-tracking finalizer. Nothing
there runs the pods. ``PodExecutor`` is the missing node: it polls the Pods
owned by Jobs, through the same HTTP API a kubelet uses, and

- runs each Pending pod bound to it (no ``spec.nodeName``, as there is no
  scheduler, or its own ``node_name``) as a local process built from the pod
  spec: the first container's ``command``/``args`` with ``$(VAR)`` expansion,
  ``env`` with ``value``, ``fieldRef`` (metadata.name/namespace/uid/labels/
  annotations, spec.nodeName...), ``secretKeyRef`` and ``configMapKeyRef``
  (read from the emulator), ``envFrom``; volumes materialised as real folders
  under the pod's temp dir (``configMap`` and ``secret`` as files,
  ``emptyDir`` empty, ``projected`` service-account token + CA) with every
  mount path in args and env rewritten to its folder. The rendezvous host
  names ``<pod>.<subdomain>[.<ns>.svc[.cluster.local]]`` map to 127.0.0.1 and
  each declared container port to a free local port (one per Job, as all
  pods of a gang use the same port). A missing Secret/ConfigMap key leaves the
  pod Pending with ``CreateContainerConfigError`` (retried, as the kubelet does);
- reports the pod's status as a kubelet does, with ``support.kubelet``'s
  ``run``/``terminate``/``waiting`` (a status manager that writes over the
  version it read, so the eviction API's ``DisruptionTarget`` is never lost):
  Running (scheduled, ready, container running), then Succeeded/Failed with
  the container's terminated state (exit code, reason, and for
  ``FallbackToLogsOnError`` the log's last 80 lines, at most 2 KiB, as
  message), Ready False, the pod's other conditions kept;
- stops a pod whose Pod object is deleted (an eviction, a preemption, a drain,
  the Job controller on suspend or on the Job's verdict, the garbage
  collector after its Job went) as the kubelet does: SIGTERM to the
  container's main process, SIGKILL to every process of it once
  ``deletionGracePeriodSeconds`` (capped by ``grace_cap``) is over; the pod
  stays (terminating) until that terminated state is reported;
- gets projected service-account tokens from a TokenRequest bound to the pod
  (audience and expiry from the volume source), as the kubelet does; pods
  also get ``KUBERNETES_SERVICE_HOST``/``PORT`` and ``KUBETUNE_API_SERVER``
  (the URL with its scheme: the emulator speaks plain HTTP).

A grace period lasts at most ``grace_cap`` seconds, by default the cluster's
``max_grace_seconds``, after which the emulator ends a graceful deletion by
itself (the pod Failed, exit code 137: the fallback for pods no kubelet
runs). The executor sees a deletion up to one poll late, so it kills
``KILL_EARLY`` seconds before that: its SIGKILL and report come first, and no
process outlives its Pod object.

Ignored, as a machine without containers cannot honour them: the image,
security contexts, resources, probes, node selection. Processes run as the
test user with the test's Python (``python``/``torchrun`` resolve to the
virtualenv).
"""
from __future__ import annotations

import base64
import datetime as dt
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import kubelet
from support.cluster import ApiError, EmulatedCluster
from support.emulator import _controller_ref
from support.jobcontroller import CONTROLLER_UID, JOB_NAME
from support.kubelet import INDEX_ANNOTATION

AGENT = "kubetune-tests/executor"
CONFIG_RETRY_SECONDS = 1.0  # a pod Pending on CreateContainerConfigError is tried again after this
KILL_EARLY = 0.3  # seconds before the emulator's own end of a grace period (module docstring)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConfigError(Exception):
    """CreateContainerConfigError: a referenced Secret/ConfigMap key is missing."""


# --------------------------------------------------------------- pod process
class PodProcess:
    """One pod this node runs: its Pod object's identity, its local folder and process."""

    def __init__(self, pod: dict[str, Any], workdir: Path):
        meta = pod["metadata"]
        self.pod = pod  # the Pod object as it was when the executor started it
        self.uid: str = meta["uid"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        labels = meta.get("labels") or {}
        self.job_key = (self.namespace, labels.get(JOB_NAME) or labels.get("job-name") or "")
        self.job_uid = labels.get(CONTROLLER_UID) or ""
        index = (meta.get("annotations") or {}).get(INDEX_ANNOTATION) or labels.get(INDEX_ANNOTATION)
        self.index = int(index) if index is not None else -1
        self.workdir = workdir
        self.log_path = workdir / "container.log"
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.reported = False  # its terminated state was written to the API (or there was no Pod object left)
        self.stopping_since: float | None = None
        self.grace = 30.0
        self.argv: list[str] = []
        self.env: dict[str, str] = {}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        if self.proc is None:
            return self.exit_code
        if self.exit_code is None:
            rc = self.proc.poll()
            if rc is not None:
                self.exit_code = 128 - rc if rc < 0 else rc  # -9 -> 137, -15 -> 143: what a kubelet reports
                self.finished_at = _now()
        return self.exit_code

    def signal(self, sig: int) -> None:
        """Signal the container's main process (PID 1 of a container), as the kubelet's SIGTERM does."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def kill_all(self) -> None:
        """SIGKILL every process of the "container": the main one and all its descendants.

        torchrun starts its workers in their own sessions, so a process-group kill
        would miss them; a container runtime kills the whole cgroup.
        """
        if self.proc is None:
            return
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, grace: float) -> None:
        """SIGTERM now; ``tick`` kills everything once the grace period is over."""
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()
            self.grace = grace
            self.signal(signal.SIGTERM)

    def tick(self) -> None:
        if self.stopping_since is not None and time.monotonic() - self.stopping_since > self.grace:
            if self.poll() is None or _descendants(self.proc.pid if self.proc else -1):
                self.kill_all()

    def log_tail(self, lines: int = 80, limit: int = 2048) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return tail[-limit:]


# ------------------------------------------------------------------ executor
class PodExecutor:
    """The kubelet of one node that runs the Job pods of an emulated cluster as local processes; see the module docstring."""

    def __init__(
        self,
        cluster: EmulatedCluster,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
        bin_dir: Path | None = None,
        interval: float = 0.1,
        grace_cap: float | None = None,
        node_name: str = "local-executor",
    ):
        # The kubelet's identity: the cluster's control-plane token (EmulatedCluster.control_plane_token).
        assert cluster.control_plane_token, "start the cluster first"
        self.api = cluster.as_token(cluster.control_plane_token)
        self.api.session.headers["User-Agent"] = AGENT
        self.api_url = cluster.url.rstrip("/")
        self.workdir = Path(workdir)
        self.extra_env = dict(extra_env or {})
        self.bin_dir = Path(bin_dir or Path(sys.executable).parent)
        self.interval = interval
        self.grace_cap = grace_cap if grace_cap is not None else cluster.semantics.max_grace_seconds
        self.node_name = node_name
        self.pods: list[PodProcess] = []  # every pod ever started (for tests: kill, inspect logs)
        self.errors: list[str] = []
        self._live: dict[str, PodProcess] = {}  # uid -> a pod whose process runs or whose end is not reported yet
        self._started: set[str] = set()  # uids of the pods this node ran (a pod's container runs once: restartPolicy Never)
        self._ports: dict[str, dict[int, int]] = {}  # Job uid -> container port -> local port
        self._config_retry: dict[str, float] = {}  # uid -> when to try a CreateContainerConfigError pod again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pod-executor", daemon=True)
        self._lock = threading.RLock()
        self.on_pod_started: list[Callable[[PodProcess], None]] = []

    # ------------------------------------------------------------ lifecycle
    def start(self) -> PodExecutor:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        with self._lock:
            for pod in self.pods:
                pod.kill_all()
            for pod in self.pods:
                if pod.proc is not None:
                    try:
                        pod.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        pass
        self.api.session.close()

    def __enter__(self) -> PodExecutor:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self.sync()
            except Exception as e:  # keep running: a test asserts on errors if it cares
                self.errors.append(f"{type(e).__name__}: {e}")
                if len(self.errors) > 1000:
                    del self.errors[:500]
            self._stop.wait(self.interval)

    # ------------------------------------------------------------ test helpers
    def running_pods(self, job_name: str | None = None) -> list[PodProcess]:
        with self._lock:
            return [p for p in self.pods if p.poll() is None and p.proc is not None and (job_name is None or p.job_key[1] == job_name)]

    def kill_pod(self, pod: PodProcess) -> None:
        """What a node crash does to a pod: every process in it dies at once (SIGKILL); the rest follows."""
        pod.kill_all()

    # ------------------------------------------------------------------ sync
    def sync(self) -> None:
        """One pass of the kubelet's loop over the Job pods in the API."""
        objects = {p["metadata"]["uid"]: p for p in self.api.list("Pod", None, label_selector=CONTROLLER_UID)
                   if (_controller_ref(p) or {}).get("kind") == "Job"}
        for uid, pod in list(self._live.items()):
            self._sync_running(pod, objects.get(uid))
        for uid, obj in objects.items():
            if uid in self._started:
                continue
            spec, status, meta = obj.get("spec") or {}, obj.get("status") or {}, obj["metadata"]
            if meta.get("deletionTimestamp") or status.get("phase", "Pending") != "Pending":
                continue
            if spec.get("nodeName") not in (None, "", self.node_name):
                continue  # another node's pod
            if time.monotonic() < self._config_retry.get(uid, 0.0):
                continue
            self._start_pod(obj)

    def _grace(self, obj: dict[str, Any] | None, pod: PodProcess) -> float:
        """The deletion's grace period (DeleteOptions), else the pod's terminationGracePeriodSeconds; capped."""
        grace = ((obj or {}).get("metadata") or {}).get("deletionGracePeriodSeconds")
        if grace is None:
            grace = (pod.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        return max(0.0, min(float(grace), self.grace_cap) - KILL_EARLY)

    def _sync_running(self, pod: PodProcess, obj: dict[str, Any] | None) -> None:
        pod.tick()
        if pod.poll() is None and pod.stopping_since is None and (obj is None or obj["metadata"].get("deletionTimestamp")):
            pod.stop(self._grace(obj, pod))  # deleted (eviction, preemption, Job controller, GC): SIGTERM
        if pod.poll() is None:
            return
        if not pod.reported:
            pod.reported = True
            if obj is not None and (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                self._report_terminated(pod)
        if not _descendants(pod.proc.pid if pod.proc else -1) or pod.stopping_since is None:
            self._live.pop(pod.uid, None)

    def _report_terminated(self, pod: PodProcess) -> None:
        code = pod.exit_code if pod.exit_code is not None else 128
        container = ((pod.pod.get("spec") or {}).get("containers") or [{}])[0]
        message = ""
        if code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = pod.log_tail()
        try:
            kubelet.terminate(self.api, pod.pod, code, message=message, finished_at=pod.finished_at)
        except ApiError as e:
            if e.status != 404:
                raise  # 404: the Pod object is gone (force-deleted), nothing left to report to

    # ------------------------------------------------------------------ pods
    def _start_pod(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        workdir = self.workdir / meta["namespace"] / meta["name"]
        workdir.mkdir(parents=True, exist_ok=True)
        pod = PodProcess(obj, workdir)
        ports = self._ports.setdefault(pod.job_uid or pod.uid, {})
        try:
            argv, env = self._materialise(obj, ports, workdir)
        except ConfigError as e:
            self._config_retry[pod.uid] = time.monotonic() + CONFIG_RETRY_SECONDS
            current = ((obj.get("status") or {}).get("containerStatuses") or [{}])[0].get("state", {}).get("waiting") or {}
            if current.get("message") != str(e):
                try:
                    kubelet.waiting(self.api, obj, "CreateContainerConfigError", str(e))
                except ApiError as err:
                    if err.status != 404:
                        raise
            return
        self._config_retry.pop(pod.uid, None)
        pod.argv, pod.env = argv, env
        (workdir / "command.sh").write_text(shlex.join(argv) + "\n")
        log = open(pod.log_path, "ab")
        try:
            pod.proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            pod.exit_code = 128
            pod.finished_at = _now()
            log.write(f"executor: cannot start {argv[0]}: {e}\n".encode())
        finally:
            log.close()
        pod.started_at = _now()
        self.pods.append(pod)
        self._started.add(pod.uid)
        self._live[pod.uid] = pod
        try:
            kubelet.run(self.api, obj, started_at=pod.started_at, pod_ip="127.0.0.1")
        except ApiError as e:
            if e.status != 404:
                raise
            pod.stop(0.0)  # deleted before it was reported running: nothing may keep running for it
        for hook in self.on_pod_started:
            hook(pod)

    def _pod_token(self, ns: str, pod: dict[str, Any], source: dict[str, Any]) -> str:
        """A projected service-account token, as the kubelet gets it: a TokenRequest bound to the pod."""
        sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": int(source.get("expirationSeconds") or 3600),
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"], "uid": pod["metadata"].get("uid")},
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        try:
            answer = self.api.request("POST", self.api.path("ServiceAccount", ns, sa, "token"),
                                      {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        except ApiError as e:
            raise ConfigError(f"serviceaccount token for {sa}: {e}") from None
        return str(answer["status"]["token"])

    # -------------------------------------------------- template -> process
    def _materialise(self, pod: dict[str, Any], ports: dict[int, int], workdir: Path) -> tuple[list[str], dict[str, str]]:
        ns = pod["metadata"]["namespace"]
        pspec = pod.get("spec") or {}
        container = (pspec.get("containers") or [{}])[0]
        hostname = pspec.get("hostname") or pod["metadata"]["name"]
        # volumes -> folders
        volume_dirs: dict[str, Path] = {}
        for vol in pspec.get("volumes") or []:
            d = workdir / "volumes" / vol["name"]
            d.mkdir(parents=True, exist_ok=True)
            volume_dirs[vol["name"]] = d
            if "configMap" in vol:
                self._write_items(d, self._configmap_data(ns, vol["configMap"]), vol["configMap"].get("items"))
            elif "secret" in vol:
                self._write_items(d, self._secret_data(ns, vol["secret"].get("secretName"), vol["secret"].get("optional")),
                                  vol["secret"].get("items"))
            elif "projected" in vol:
                for src in vol["projected"].get("sources") or []:
                    if "serviceAccountToken" in src:
                        sat = src["serviceAccountToken"]
                        (d / sat.get("path", "token")).write_text(self._pod_token(ns, pod, sat))
                    elif "configMap" in src:
                        data = self._configmap_data(ns, {**src["configMap"], "optional": True})
                        self._write_items(d, data, src["configMap"].get("items"))
                    elif "secret" in src:
                        self._write_items(d, self._secret_data(ns, src["secret"].get("name"), True), src["secret"].get("items"))
            # emptyDir: the empty folder is all there is
        mounts = {}
        for m in container.get("volumeMounts") or []:
            target = volume_dirs.get(m["name"])
            if target is not None:
                mounts[m["mountPath"].rstrip("/") or "/"] = target / m.get("subPath", "") if m.get("subPath") else target

        # ports -> one free local port per Job and container port
        for p in container.get("ports") or []:
            cp = int(p["containerPort"])
            if cp not in ports:
                ports[cp] = _free_port()
        subdomain = pspec.get("subdomain")

        # One pass over all mount paths (longest first), so a rewritten path is
        # never rewritten again: /etc/kubetune becomes <pod>/volumes/config, which
        # lies under /tmp, itself a mount path of the trainer pods.
        mount_pattern = re.compile(
            r"(?<![\w.\-/])(" + "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True)) + r")(?=/|$|[\s:,;\"'])"
        ) if mounts else None

        def rewrite(value: str) -> str:
            if mount_pattern is not None:
                value = mount_pattern.sub(lambda m: str(mounts[m.group(1)]), value)
            if subdomain:
                value = re.sub(r"\b[a-z0-9]([a-z0-9\-]*[a-z0-9])?\." + re.escape(subdomain)
                               + r"(\." + re.escape(ns) + r"(\.svc(\.cluster\.local)?)?)?\b", "127.0.0.1", value)
            for cp, local in ports.items():
                value = re.sub(r"(?:(?<=[=:])|^)" + str(cp) + r"\b", str(local), value)
            return value

        env: dict[str, str] = {}  # JOB_COMPLETION_INDEX is in the container's env: the Job controller put it there
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                data = self._configmap_data(ns, {"name": src["configMapRef"]["name"], "optional": src["configMapRef"].get("optional")})
            else:
                data = self._secret_data(ns, src["secretRef"]["name"], src["secretRef"].get("optional"))
            env.update({prefix + k: v for k, v in data.items()})
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = _expand(item["value"], env)
            elif "valueFrom" in item:
                value = self._value_from(ns, pod, item["valueFrom"])
                if value is not None:
                    env[item["name"]] = value
        env = {k: rewrite(v) for k, v in env.items()}

        # the kubelet's own additions, and what reaching the emulator needs
        host, _, port = self.api_url.split("://", 1)[1].partition(":")
        base = {
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            # The "image" is the test's own Python environment: the source roots
            # scripts/test.sh puts first (this checkout's code), not whatever
            # editable install the shared virtualenv points at.
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
            "HOSTNAME": hostname,
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port or "80",
            # The emulator speaks plain HTTP, which in-cluster config (https://HOST:PORT) cannot
            # express; the trainer's reporter takes the full URL from here (k8s_status.py).
            "KUBETUNE_API_SERVER": self.api_url,
        }
        sa_dir = mounts.get("/var/run/secrets/kubernetes.io/serviceaccount")
        if sa_dir is not None:  # the projected token's folder; the reporter reads token (and ca.crt) there
            base["KUBETUNE_SA_DIR"] = str(sa_dir)
        extra = {k: v.replace("{pod_dir}", str(workdir)) for k, v in self.extra_env.items()}
        full_env = {**base, **extra, **env}

        argv = [_expand(a, env) for a in (container.get("command") or [])] + [_expand(a, env) for a in (container.get("args") or [])]
        if not argv:
            raise ConfigError("the container has no command (images' entrypoints are not known to the executor)")
        argv = [rewrite(a) for a in argv]
        exe = argv[0]
        if exe in ("python", "python3"):
            argv[0] = sys.executable
        elif "/" not in exe and (self.bin_dir / exe).exists():
            argv[0] = str(self.bin_dir / exe)
        return argv, full_env

    def _configmap_data(self, ns: str, ref: dict[str, Any]) -> dict[str, str]:
        cm = self.api.get("ConfigMap", ns, ref["name"])
        if cm is None:
            if ref.get("optional"):
                return {}
            raise ConfigError(f'configmap "{ref["name"]}" not found')
        return dict(cm.get("data") or {})

    def _secret_data(self, ns: str, name: str, optional: bool | None) -> dict[str, str]:
        secret = self.api.get("Secret", ns, name)
        if secret is None:
            if optional:
                return {}
            raise ConfigError(f'secret "{name}" not found')
        out = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        out.update(secret.get("stringData") or {})
        return out

    def _value_from(self, ns: str, pod: dict[str, Any], src: dict[str, Any]) -> str | None:
        if "fieldRef" in src:
            path = src["fieldRef"]["fieldPath"]
            meta = pod["metadata"]
            m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
            if m:
                return (meta.get(m.group(1)) or {}).get(m.group(2), "")
            return {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta.get("uid", ""),
                    "spec.nodeName": self.node_name, "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
                    "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}.get(path, "")
        for key, loader in (("secretKeyRef", "secret"), ("configMapKeyRef", "configmap")):
            if key in src:
                ref = src[key]
                data = (self._secret_data(ns, ref["name"], ref.get("optional")) if loader == "secret"
                        else self._configmap_data(ns, {"name": ref["name"], "optional": ref.get("optional")}))
                if ref["key"] in data:
                    return data[ref["key"]]
                if ref.get("optional"):
                    return None
                raise ConfigError(f'couldn\'t find key {ref["key"]} in {"Secret" if loader == "secret" else "ConfigMap"} {ns}/{ref["name"]}')
        if "resourceFieldRef" in src:
            return "0"
        return None

    @staticmethod
    def _write_items(d: Path, data: dict[str, str], items: list[dict[str, Any]] | None) -> None:
        pairs = [(i["key"], i.get("path", i["key"])) for i in items] if items else [(k, k) for k in data]
        for key, rel in pairs:
            if key in data:
                target = d / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[key])


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: defined variables expand, $$(VAR) escapes, unknown ones stay."""
    return re.sub(r"\$\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: m.group(0)[1:] if m.group(0).startswith("$$") else env.get(m.group(2), m.group(0)), value)
