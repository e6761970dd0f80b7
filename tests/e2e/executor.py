"""A test-only kubelet + Job controller: runs the emulator's batch/v1 Jobs as local processes.

The operator under test creates Indexed Jobs in the API emulator; nothing
there runs them. ``PodExecutor`` plays the missing parts, through the same
HTTP API any controller uses:

- Job controller: for every unsuspended Job it creates one Pod object per
  completion index (labels and annotations from the template plus
  ``batch.kubernetes.io/job-completion-index``, ``job-name``, an owner
  reference to the Job), counts active/succeeded/failed pods and
  ``completedIndexes`` in the Job's status, marks it ``Complete`` (with
  ``SuccessCriteriaMet``) when every index succeeded, or ``Failed`` (with
  ``FailureTarget``; reason ``PodFailurePolicy`` when a ``FailJob`` rule
  matched the exit code, else ``BackoffLimitExceeded``) when failures exceed
  ``backoffLimit``, and then stops the remaining pods. ``spec.suspend`` stops
  the pods (condition ``Suspended``); unsuspending starts them again.
  Deleting a Job stops its processes. ``podFailurePolicy`` rules are
  evaluated in order, ``onExitCodes`` and ``onPodConditions`` (e.g.
  ``DisruptionTarget``), with the actions ``FailJob``, ``Ignore`` (the index
  gets a new pod, not counted) and ``Count``.
- a Pod object deleted by someone else (an eviction, a preemption, a drain:
  ``DisruptionTarget`` then a graceful delete) stops its process as the
  kubelet does: SIGTERM, SIGKILL after the grace period; the terminated
  status keeps the pod's other conditions (``DisruptionTarget``).
- kubelet: each Pod runs its first container as a local process built from
  the pod template: ``command``/``args`` with ``$(VAR)`` expansion, ``env``
  with ``value``, ``fieldRef`` (metadata.name/namespace/labels/annotations),
  ``secretKeyRef`` and ``configMapKeyRef`` (read from the emulator),
  ``envFrom``; volumes materialised as real folders under the pod's temp
  dir (``configMap`` and ``secret`` as files, ``emptyDir`` empty,
  ``projected`` service-account token + CA) with every mount path in args
  and env rewritten to its folder. The rendezvous host names
  ``<pod>.<subdomain>[.<ns>.svc[.cluster.local]]`` map to 127.0.0.1 and each
  declared container port to a free local port (one per Job, as all pods of a
  gang use the same port). Pod status goes Pending -> Running (container
  running) -> Succeeded/Failed with the container's terminated state (exit
  code, reason, and for ``FallbackToLogsOnError`` the log's last lines as
  message). Stopping a pod is SIGTERM to its process group, then SIGKILL
  after the grace period.
- projected service-account tokens come from a TokenRequest bound to the pod
  (audience and expiry from the volume source), as the kubelet gets them; pods
  also get ``KUBERNETES_SERVICE_HOST``/``PORT`` and ``KUBETUNE_API_SERVER``
  (the URL with its scheme: the emulator speaks plain HTTP).

Ignored, as a machine without containers cannot honour them: the image,
security contexts, resources, node selection. Processes run as the test user
with the test's Python (``python``/``torchrun`` resolve to the virtualenv).
"""
from __future__ import annotations

import base64
import copy
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

import requests

AGENT = "kubetune-tests/executor"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


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
    """One pod: its Pod object's name, its local folder and process."""

    def __init__(self, job_key: tuple[str, str], index: int, name: str, workdir: Path):
        self.job_key = job_key
        self.index = index
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / "container.log"
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.reported = False  # terminal status written to the API
        self.stopping_since: float | None = None
        self.deleted_by_api = False  # its Pod object was deleted (eviction, preemption): not stopped by the Job controller
        self.conditions: list[dict[str, Any]] = []  # the Pod object's conditions when it terminated
        self.grace = 30.0
        self.argv: list[str] = []
        self.env: dict[str, str] = {}
        self._tree_killed = False

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
        self._tree_killed = True

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM now; ``tick`` kills everything once the grace period is over."""
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()
            if grace is not None:
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


class JobRun:
    """What the executor tracks of one batch Job."""

    def __init__(self, job: dict[str, Any]):
        self.uid = job["metadata"]["uid"]
        self.namespace = job["metadata"]["namespace"]
        self.name = job["metadata"]["name"]
        self.pods: dict[int, PodProcess] = {}  # index -> current pod
        self.succeeded: set[int] = set()
        self.failed = 0
        self.finished: str | None = None  # Complete | Failed
        self.ports: dict[int, int] = {}  # container port -> local port
        self.start_time: str | None = None
        self.pod_seq = 0


# ------------------------------------------------------------------ executor
class PodExecutor:
    """Runs the Jobs of an emulated cluster as local processes; see the module docstring."""

    def __init__(
        self,
        api_url: str,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
        bin_dir: Path | None = None,
        interval: float = 0.1,
        grace_cap: float = 60.0,
        token: str | None = None,
    ):
        self.api_url = api_url.rstrip("/")
        self.workdir = Path(workdir)
        self.extra_env = dict(extra_env or {})
        self.bin_dir = Path(bin_dir or Path(sys.executable).parent)
        self.interval = interval
        self.grace_cap = grace_cap
        self.session = requests.Session()
        self.session.headers["User-Agent"] = AGENT
        if token:  # the emulated cluster's control-plane identity (EmulatedCluster.control_plane_token)
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.jobs: dict[str, JobRun] = {}  # uid -> run
        self.pods: list[PodProcess] = []  # every pod ever started (for tests: kill, inspect logs)
        self.errors: list[str] = []
        self._orphans: list[PodProcess] = []  # pods of deleted Jobs still shutting down
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pod-executor", daemon=True)
        self._lock = threading.RLock()
        self.on_pod_started: list[Callable[[PodProcess], None]] = []

    # ------------------------------------------------------------ API calls
    def _req(self, method: str, path: str, body: Any = None, ctype: str | None = None, ok404: bool = False) -> Any:
        headers = {"Content-Type": ctype} if ctype else {}
        r = self.session.request(method, self.api_url + path, json=body, headers=headers, timeout=30)
        if ok404 and r.status_code == 404:
            return None
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json() if r.content else None

    def _get(self, kind_path: str, ok404: bool = True) -> Any:
        return self._req("GET", kind_path, ok404=ok404)

    def _patch_status(self, path: str, status: dict[str, Any]) -> None:
        self._req("PATCH", path + "/status", {"status": status}, "application/merge-patch+json", ok404=True)

    @staticmethod
    def _job_path(ns: str, name: str) -> str:
        return f"/apis/batch/v1/namespaces/{ns}/jobs/{name}"

    @staticmethod
    def _pod_path(ns: str, name: str = "") -> str:
        return f"/api/v1/namespaces/{ns}/pods" + (f"/{name}" if name else "")

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
        self.session.close()

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
        jobs = self._req("GET", "/apis/batch/v1/jobs")["items"]
        live = {j["metadata"]["uid"]: j for j in jobs if not j["metadata"].get("deletionTimestamp")}
        for uid in list(self.jobs):
            if uid not in live:  # deleted: its pods go (the emulator GCs the Pod objects)
                run = self.jobs.pop(uid)
                for pod in run.pods.values():
                    pod.stop(self._grace_of(None))
                    self._orphans.append(pod)
        for pod in list(self._orphans):
            pod.tick()
            if pod.poll() is not None:
                self._orphans.remove(pod)
        for uid, job in live.items():
            run = self.jobs.get(uid)
            if run is None:
                run = self.jobs[uid] = JobRun(job)
            self._sync_job(run, job)

    def _grace_of(self, job: dict[str, Any] | None) -> float:
        if job is None:
            return 10.0
        g = ((job.get("spec") or {}).get("template") or {}).get("spec", {}).get("terminationGracePeriodSeconds", 30)
        return min(float(g), self.grace_cap)

    def _sync_job(self, run: JobRun, job: dict[str, Any]) -> None:
        spec = job.get("spec") or {}
        completions = int(spec.get("completions") or 1)
        suspended = bool(spec.get("suspend"))
        for pod in run.pods.values():
            pod.tick()

        # 0. the kubelet: a running pod whose Pod object was deleted (eviction, preemption) gets SIGTERM
        if any(p.poll() is None for p in run.pods.values()):
            objects = {o["metadata"]["name"]: o for o in self._req(
                "GET", self._pod_path(run.namespace) + f"?labelSelector=batch.kubernetes.io/controller-uid={run.uid}")["items"]}
            for pod in run.pods.values():
                obj = objects.get(pod.name)
                if pod.poll() is None and pod.stopping_since is None and pod.proc is not None and (
                        obj is None or obj["metadata"].get("deletionTimestamp")):
                    pod.deleted_by_api = True
                    grace = (obj or {}).get("metadata", {}).get("deletionGracePeriodSeconds")
                    pod.stop(min(float(grace), self.grace_cap) if grace is not None else self._grace_of(job))

        # 1. observe finished processes
        for index, pod in list(run.pods.items()):
            code = pod.poll()
            if code is None or pod.reported:
                continue
            pod.reported = True
            self._report_pod_terminated(run, pod, job)
            if pod.stopping_since is not None and not pod.deleted_by_api and (suspended or run.finished):
                continue  # we stopped it: not a failure of the Job (the pod is deleted)
            if code == 0:
                run.succeeded.add(index)
                continue
            action = self._policy_action(job, pod)[0]
            if action == "Ignore":
                del run.pods[index]  # not counted; the index gets a new pod
            elif action != "FailJob":
                run.failed += 1

        # 2. Job-level verdicts
        if run.finished is None:
            failure = self._failure_verdict(run, job)
            if failure:
                reason, message = failure
                run.finished = "Failed"
                for pod in run.pods.values():
                    if pod.poll() is None:
                        pod.stop(self._grace_of(job))
                self._write_job_status(run, job, extra_conditions=[
                    self._cond("FailureTarget", reason, message), self._cond("Failed", reason, message)])
                return
            if len(run.succeeded) >= completions:
                run.finished = "Complete"
                self._write_job_status(run, job, extra_conditions=[
                    self._cond("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                    self._cond("Complete", "CompletionsReached", "Reached expected number of succeeded pods")],
                    completion=True)
                return
        else:
            return

        # 3. suspend / resume
        if suspended:
            stopped_any = False
            for index, pod in list(run.pods.items()):
                if pod.poll() is None:
                    pod.stop(self._grace_of(job))
                    stopped_any = True
                    continue
                if not pod.reported:  # it ended after step 1 polled it: report it before its Pod goes
                    pod.reported = True
                    self._report_pod_terminated(run, pod, job)
                self._req("DELETE", self._pod_path(run.namespace, pod.name), ok404=True)
                del run.pods[index]
            if not stopped_any and not any(p.poll() is None for p in run.pods.values()):
                self._write_job_status(run, job, extra_conditions=[self._cond("Suspended", "JobSuspended", "Job suspended")])
            return

        # 4. start missing pods
        started = False
        for index in range(completions):
            if index in run.succeeded:
                continue
            pod = run.pods.get(index)
            if pod is not None and (pod.poll() is None or not pod.reported or pod.exit_code == 0):
                continue
            if pod is not None and pod.reported and pod.exit_code not in (None, 0):
                continue  # a failed pod of a Job that has not failed yet (backoffLimit > 0 is not emulated)
            self._start_pod(run, job, index)
            started = True
        if started or run.start_time is None:
            run.start_time = run.start_time or _now()
        self._write_job_status(run, job, extra_conditions=[self._cond("Suspended", "JobResumed", "Job resumed", status="False")]
                               if any(c.get("type") == "Suspended" for c in (job.get("status") or {}).get("conditions") or []) else [])

    @staticmethod
    def _policy_action(job: dict[str, Any], pod: PodProcess) -> tuple[str, int]:
        """The first podFailurePolicy rule the failed pod matches: (action, index); no match: Count."""
        for i, rule in enumerate(((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or []):
            on = rule.get("onExitCodes") or {}
            if on:
                values = set(on.get("values") or [])
                if pod.exit_code in values if on.get("operator", "In") == "In" else pod.exit_code not in values:
                    return rule.get("action", "Count"), i
            for pattern in rule.get("onPodConditions") or []:
                if any(c.get("type") == pattern.get("type") and c.get("status") == pattern.get("status", "True") for c in pod.conditions):
                    return rule.get("action", "Count"), i
        return "Count", -1

    def _failure_verdict(self, run: JobRun, job: dict[str, Any]) -> tuple[str, str] | None:
        spec = job.get("spec") or {}
        for pod in run.pods.values():
            if not pod.reported or pod.exit_code in (None, 0) or (pod.stopping_since is not None and not pod.deleted_by_api):
                continue
            action, i = self._policy_action(job, pod)
            if action == "FailJob":
                return "PodFailurePolicy", (f"Container {(spec.get('template') or {}).get('spec', {}).get('containers', [{}])[0].get('name', 'trainer')} "
                                            f"for pod {run.namespace}/{pod.name} failed with exit code {pod.exit_code} matching FailJob rule at index {i}")
        backoff = int(spec.get("backoffLimit", 6))
        if run.failed > backoff:
            return "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        return None

    @staticmethod
    def _cond(ctype: str, reason: str, message: str, status: str = "True") -> dict[str, Any]:
        now = _now()
        return {"type": ctype, "status": status, "reason": reason, "message": message, "lastProbeTime": now, "lastTransitionTime": now}

    def _write_job_status(self, run: JobRun, job: dict[str, Any], extra_conditions: list[dict[str, Any]], completion: bool = False) -> None:
        active = sum(1 for p in run.pods.values() if p.proc is not None and p.poll() is None)
        status: dict[str, Any] = {
            "active": active,
            "succeeded": len(run.succeeded),
            "failed": run.failed,
            "ready": active,
            "completedIndexes": _ranges(sorted(run.succeeded)) if run.succeeded else None,
        }
        if run.start_time:
            status["startTime"] = run.start_time
        if completion:
            status["completionTime"] = _now()
        old = job.get("status") or {}
        conds = [c for c in old.get("conditions") or [] if c.get("type") not in {c2["type"] for c2 in extra_conditions}]
        conds += extra_conditions
        if conds or old.get("conditions"):
            status["conditions"] = conds or None
        comparable = {k: v for k, v in status.items() if k != "conditions"}
        unchanged = all(old.get(k) == v for k, v in comparable.items()) and not extra_conditions
        same_conds = [{k: c.get(k) for k in ("type", "status", "reason")} for c in old.get("conditions") or []] == \
                     [{k: c.get(k) for k in ("type", "status", "reason")} for c in conds]
        if unchanged or (same_conds and all(old.get(k) == v for k, v in comparable.items())):
            return
        self._patch_status(self._job_path(run.namespace, run.name), status)

    # ------------------------------------------------------------------ pods
    def _start_pod(self, run: JobRun, job: dict[str, Any], index: int) -> None:
        template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
        tmeta = template.get("metadata") or {}
        pspec = template.get("spec") or {}
        run.pod_seq += 1
        name = f"{run.name}-{index}-{run.pod_seq:05d}"
        hostname = f"{run.name}-{index}"
        labels = dict(tmeta.get("labels") or {})
        labels.update({"job-name": run.name, "batch.kubernetes.io/job-name": run.name, INDEX_LABEL: str(index),
                       "controller-uid": run.uid, "batch.kubernetes.io/controller-uid": run.uid})
        annotations = dict(tmeta.get("annotations") or {})
        annotations[INDEX_ANNOTATION] = str(index)
        pod_obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": run.namespace,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": run.name, "uid": run.uid,
                                     "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": {**pspec, "hostname": hostname, "nodeName": "local-executor"},
        }
        created = self._req("POST", self._pod_path(run.namespace), pod_obj, "application/json")
        workdir = self.workdir / run.namespace / name
        workdir.mkdir(parents=True, exist_ok=True)
        pod = PodProcess((run.namespace, run.name), index, name, workdir)
        pod.grace = self._grace_of(job)
        run.pods[index] = pod
        self.pods.append(pod)
        container = (pspec.get("containers") or [{}])[0]
        try:
            argv, env = self._materialise(run, created, pspec, container, hostname, workdir)
        except ConfigError as e:
            self._patch_status(self._pod_path(run.namespace, name), {
                "phase": "Pending",
                "containerStatuses": [{"name": container.get("name", "c"), "ready": False, "restartCount": 0,
                                       "image": container.get("image", ""), "imageID": "",
                                       "state": {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}}],
            })
            return
        pod.argv, pod.env = argv, env
        (workdir / "command.sh").write_text(shlex.join(argv) + "\n")
        log = open(pod.log_path, "ab")
        try:
            pod.proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            pod.exit_code = 128
            log.write(f"executor: cannot start {argv[0]}: {e}\n".encode())
        finally:
            log.close()
        pod.started_at = _now()
        self._patch_status(self._pod_path(run.namespace, name), {
            "phase": "Running",
            "startTime": pod.started_at,
            "podIP": "127.0.0.1",
            "hostIP": "127.0.0.1",
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": pod.started_at}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{"name": container.get("name", "c"), "ready": True, "started": True, "restartCount": 0,
                                   "image": container.get("image", ""), "imageID": "",
                                   "state": {"running": {"startedAt": pod.started_at}}}],
        })
        for hook in self.on_pod_started:
            hook(pod)

    def _report_pod_terminated(self, run: JobRun, pod: PodProcess, job: dict[str, Any]) -> None:
        code = pod.exit_code
        container = (((job.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or [{}])[0]
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": pod.started_at or _now(),
            "finishedAt": pod.finished_at or _now(),
        }
        if code not in (None, 0) and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            terminated["message"] = pod.log_tail()
        if code == 137 or code == 143:
            terminated["signal"] = code - 128
        obj = self._get(self._pod_path(run.namespace, pod.name)) or {}
        kept = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") not in ("Ready", "ContainersReady")]
        pod.conditions = kept
        self._patch_status(self._pod_path(run.namespace, pod.name), {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": kept + [{"type": t, "status": "False", "reason": "PodCompleted", "lastTransitionTime": _now()}
                                  for t in ("Ready", "ContainersReady")],
            "containerStatuses": [{"name": container.get("name", "c"), "ready": False, "started": False, "restartCount": 0,
                                   "image": container.get("image", ""), "imageID": "", "state": {"terminated": terminated}}],
        })

    def _pod_token(self, ns: str, pod: dict[str, Any], pspec: dict[str, Any], source: dict[str, Any]) -> str:
        """A projected service-account token, as the kubelet gets it: a TokenRequest bound to the pod."""
        sa = pspec.get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": int(source.get("expirationSeconds") or 3600),
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"], "uid": pod["metadata"].get("uid")},
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        try:
            answer = self._req("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
                               {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        except RuntimeError as e:
            raise ConfigError(f"serviceaccount token for {sa}: {e}") from None
        return str(answer["status"]["token"])

    # -------------------------------------------------- template -> process
    def _materialise(self, run: JobRun, pod: dict[str, Any], pspec: dict[str, Any], container: dict[str, Any],
                     hostname: str, workdir: Path) -> tuple[list[str], dict[str, str]]:
        ns = run.namespace
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
                        (d / sat.get("path", "token")).write_text(self._pod_token(ns, pod, pspec, sat))
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
            if cp not in run.ports:
                run.ports[cp] = _free_port()
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
            for cp, local in run.ports.items():
                value = re.sub(r"(?:(?<=[=:])|^)" + str(cp) + r"\b", str(local), value)
            return value

        env: dict[str, str] = {}
        index = pod["metadata"]["annotations"][INDEX_ANNOTATION]
        env["JOB_COMPLETION_INDEX"] = index  # the Job controller sets it for Indexed Jobs
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
        cm = self._get(f"/api/v1/namespaces/{ns}/configmaps/{ref['name']}")
        if cm is None:
            if ref.get("optional"):
                return {}
            raise ConfigError(f'configmap "{ref["name"]}" not found')
        return dict(cm.get("data") or {})

    def _secret_data(self, ns: str, name: str, optional: bool | None) -> dict[str, str]:
        secret = self._get(f"/api/v1/namespaces/{ns}/secrets/{name}")
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
                    "spec.nodeName": "local-executor", "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
                    "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}.get(path, "")
        for key, loader in (("secretKeyRef", "secret"), ("configMapKeyRef", "configmap")):
            if key in src:
                ref = src[key]
                data = (self._secret_data(ns, ref["name"], True) if loader == "secret"
                        else self._configmap_data(ns, {"name": ref["name"], "optional": True}))
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


def _ranges(indexes: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the Job's completedIndexes format)."""
    out, start, prev = [], None, None
    for i in indexes:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(out)
