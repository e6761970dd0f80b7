"""Kopf handlers: watch, observe, decide (phases.decide), act. Small on purpose.

One daemon per FineTuneJob runs its reconcile loop: read the freshest known
state, ask ``phases.decide`` what to do, do it, sleep until an event, a due
time or the resync interval. Event handlers on batch Jobs and pods labelled
``kubetune.io/job`` keep an in-memory view of what each FineTuneJob owns and
wake its loop, so a reconcile costs no API reads.

Idempotence: every attempt's Job has a deterministic name (``<job>-a<k>``);
the attempt number is written to status before its Job is created; a create
that meets an existing object adopts it (409 -> GET). The same event twice, or
an operator restart anywhere in between, never makes a second Job.

What the operator writes on a FineTuneJob: its status (never progress,
lastCheckpoint or output: those are the trainer's), Kopf's finalizer
``kubetune.io/finalizer`` while its daemon runs, and, when the TTL after
finishing elapses, the deletion. Never spec, labels or annotations.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import kopf

from kubetune_api import spec as api
from kubetune_operator import builders, observe, phases
from kubetune_operator.kube import APIError, Kube
from kubetune_operator.metrics import Metrics
from kubetune_operator.observe import Observation, ParsedSpec
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status_writer import rfc3339

FINALIZER = "kubetune.io/finalizer"
FTJ = (api.GROUP, api.VERSION, api.PLURAL)
log = logging.getLogger("kubetune.operator")
# Kopf hands handlers a LoggerAdapter bound to the object.
Logger = logging.Logger | logging.LoggerAdapter[Any]


def _rv(obj: dict[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _fresher(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """resourceVersions are opaque by contract but etcd revisions in practice; compare when numeric."""
    return old is None or _rv(new) == 0 or _rv(old) == 0 or _rv(new) >= _rv(old)


class JobState:
    """What the operator knows about one FineTuneJob and the objects it owns."""

    def __init__(self) -> None:
        self.ftj: dict[str, Any] | None = None
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.wake = asyncio.Event()
        self._parsed: tuple[Any, ParsedSpec] | None = None

    def parsed(self, ftj: dict[str, Any]) -> ParsedSpec:
        """The spec parsed once per generation (the API server bumps it on every spec change)."""
        meta = ftj.get("metadata") or {}
        key: Any = (meta.get("uid"), meta.get("generation"), meta.get("name"))
        if not (meta.get("uid") and meta.get("generation")):
            key = (meta.get("name"), repr(ftj.get("spec")))
        if self._parsed is None or self._parsed[0] != key:
            self._parsed = (key, observe.parse_spec(ftj))
        return self._parsed[1]

    def see_ftj(self, body: dict[str, Any]) -> None:
        if _fresher(body, self.ftj):
            self.ftj = body

    def see(self, store: dict[str, dict[str, Any]], body: dict[str, Any], deleted: bool = False) -> None:
        name = body["metadata"]["name"]
        if deleted:
            store.pop(name, None)
        elif _fresher(body, store.get(name)):
            store[name] = observe.summarize(body)


class Reconciler:
    """Shared state of one operator run (settings, API client, metrics, job states) and the per-job loop."""

    def __init__(self, settings: OperatorSettings, login: Callable[..., Any] | None = None) -> None:
        self.settings = settings
        self.login_fn = login
        self.states: dict[tuple[str, str], JobState] = {}
        self.metrics = Metrics(lambda: [(s.ftj.get("status") or {}).get("phase") or "Pending" for s in list(self.states.values()) if s.ftj])
        self.kube: Kube | None = None
        # The namespaces this run watches (empty: cluster-wide); set by runner.run_operator.
        self.namespaces: tuple[str, ...] = ()

    def state(self, namespace: str, name: str) -> JobState:
        key = (namespace, name)
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = JobState()
        return st

    # ------------------------------------------------------------ the loop
    async def run_job(self, namespace: str, name: str, body: dict[str, Any], stopped: kopf.DaemonStopped, logger: Logger) -> None:
        st = self.state(namespace, name)
        st.see_ftj(body)
        stop_task = asyncio.ensure_future(stopped.wait())
        try:
            while not stopped:
                st.wake.clear()
                t0 = time.perf_counter()
                try:
                    requeue = await self.reconcile(st, logger)
                except APIError as e:
                    self.metrics.api_errors.labels("reconcile").inc()
                    logger.warning(f"reconcile of {namespace}/{name} failed, retrying: {e!r}")
                    requeue = 5.0
                except Exception:  # a bug or an unexpected answer must not kill the job's loop
                    self.metrics.api_errors.labels("unexpected").inc()
                    logger.exception(f"reconcile of {namespace}/{name} failed unexpectedly, retrying in 30s")
                    requeue = 30.0
                finally:
                    self.metrics.reconcile_seconds.observe(time.perf_counter() - t0)
                if stopped:
                    break
                timeout = self.settings.resync_seconds if requeue is None else min(requeue, self.settings.resync_seconds)
                if timeout <= 0 or st.wake.is_set():
                    continue
                wake_task = asyncio.ensure_future(st.wake.wait())
                try:
                    await asyncio.wait({wake_task, stop_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    wake_task.cancel()
        finally:
            stop_task.cancel()
            if self.states.get((namespace, name)) is st and st.ftj is not None and (st.ftj.get("metadata") or {}).get("deletionTimestamp"):
                self.states.pop((namespace, name), None)

    async def reconcile(self, st: JobState, logger: Logger) -> float | None:
        """Decide and act until nothing is left to do now. -> seconds to the next pass (None: on events)."""
        for _ in range(10):  # every step changes what decide sees; a longer chain would be a bug
            ftj = st.ftj
            if ftj is None or (ftj.get("metadata") or {}).get("deletionTimestamp"):
                return None
            observation = Observation(
                ftj=ftj, parsed=st.parsed(ftj), jobs=tuple(st.jobs.values()), pods=tuple(st.pods.values()),
                now=dt.datetime.now(dt.UTC), settings=self.settings,
            )
            decision = phases.decide(observation)
            if decision.empty:
                return decision.requeue_after
            if not await self.act(st, ftj, decision, logger):
                return None
        logger.warning("reconcile did not settle after 10 steps; retrying shortly")
        return 1.0

    async def act(self, st: JobState, ftj: dict[str, Any], plan: phases.Decision, logger: Logger) -> bool:
        """Carry out a decision. -> whether to decide again (False: the FineTuneJob is gone)."""
        assert self.kube is not None
        meta = ftj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        # The decision goes to status first: if the operator stops right after, the next
        # one resumes from it (an attempt number already bumped, a restart already counted).
        if plan.status_patch:
            patched = await self.kube.merge_patch(api.KIND, ns, name, {"status": plan.status_patch}, subresource="status")
            if patched is None:
                return False
            st.see_ftj(patched)
            if plan.entered:
                phase, reason = plan.entered
                self.metrics.transitions.labels(phase, reason).inc()
                if phase == "Failed":
                    self.metrics.failures.labels(reason).inc()
                logger.info(f"{ns}/{name} -> {phase} ({reason}): {plan.status_patch.get('message', '')}")
            if plan.restart_counted is not None:
                self.metrics.restarts.labels("true" if plan.restart_counted else "false").inc()
        for job_name in plan.delete_jobs:
            await self.kube.delete("Job", ns, job_name, propagation="Background")
            # Not waiting for the watch: the next decide must not see it as current.
            if job_name in st.jobs:
                st.jobs[job_name]["metadata"]["deletionTimestamp"] = rfc3339(dt.datetime.now(dt.UTC))
            logger.info(f"deleted Job {ns}/{job_name}")
        if plan.suspend_job is not None:
            job_name, value = plan.suspend_job
            patched = await self.kube.merge_patch("Job", ns, job_name, {"spec": {"suspend": value}})
            if patched:
                st.see(st.jobs, patched)
            logger.info(f"set spec.suspend={value} on Job {ns}/{job_name}")
        for ev in plan.events:
            kopf.event(cast(kopf.Body, ftj), type=ev.type, reason=ev.reason, message=ev.message[:1024])
        if plan.create_attempt:
            await self.create_attempt(st, ftj, plan.create_attempt, logger)
        if plan.delete_self:
            await self.kube.delete(api.KIND, ns, name, propagation="Background")
            logger.info(f"{ns}/{name}: ttlSecondsAfterFinished elapsed; deleted")
            return False
        return True

    async def create_attempt(self, st: JobState, ftj: dict[str, Any], attempt: int, logger: Logger) -> None:
        assert self.kube is not None
        meta = ftj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        config_map = await self.kube.get("ConfigMap", ns, builders.config_map_name(name)) if attempt > 1 else None
        chosen = phases.attempt_spec(ftj, attempt, config_map)
        source = chosen.source
        manifest = builders.resolved_manifest(source, self.settings)
        hashes = chosen.spec_hashes or builders.spec_hashes_annotation(source)
        objects = builders.build_job_independent_objects(source, self.settings, manifest, hashes) if chosen.create_job_objects else []
        for obj in objects:
            obj["metadata"]["namespace"] = ns
            _, created = await self.kube.create(obj)
            if created:
                logger.debug(f"created {obj['kind']} {ns}/{obj['metadata']['name']}")
        batch = builders.build_batch_job(source, self.settings, attempt, hashes, manifest)
        batch["metadata"]["namespace"] = ns
        job, created = await self.kube.create(batch)
        st.see(st.jobs, job)
        logger.info(f"{'created' if created else 'found existing'} Job {ns}/{batch['metadata']['name']} (attempt {attempt})")

    # ------------------------------------------------------------- events
    def on_ftj_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if event_type == "DELETED":
            self.states.pop(key, None)  # type: ignore[arg-type]
            return
        st = self.state(*key)  # type: ignore[arg-type]
        st.see_ftj(dict(body))
        st.wake.set()

    def on_child_event(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(builders.LABEL_JOB)
        if not owner:
            return
        st = self.state(meta.get("namespace"), owner)  # type: ignore[arg-type]
        st.see(st.jobs if kind == "Job" else st.pods, dict(body), deleted=event_type == "DELETED")
        st.wake.set()


def make_registry(rt: Reconciler) -> kopf.OperatorRegistry:
    """All handlers of one operator run, bound to its Reconciler (no global state)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def configure(*, settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        # Kopf keeps handler progress only when a handler is retried; keep it in
        # annotations of our own prefix (status fields outside the CRD schema are pruned).
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kubetune.io", key="last-handled-configuration")
        settings.posting.level = logging.INFO
        settings.background.instant_exit_timeout = 2.0
        settings.watching.label_selectors["batch/v1/jobs"] = builders.LABEL_JOB
        settings.watching.label_selectors["v1/pods"] = builders.LABEL_JOB
        if rt.namespaces and not any(ch in ns for ns in rt.namespaces for ch in "*?[]!,"):
            # An exact list of namespaces (the chart's namespaced mode) needs no cluster-scoped
            # access: do not list namespaces or watch CRDs (which would be refused and retried).
            settings.scanning.disabled = True
        rt.kube = Kube(settings, logging.getLogger("kubetune.kube"))

    if rt.login_fn is not None:
        @kopf.on.login(registry=registry)
        def login(**kwargs: Any) -> Any:
            return rt.login_fn(**kwargs)  # type: ignore[misc]

    @kopf.on.event(*FTJ, registry=registry)
    async def finetunejob_event(*, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        rt.on_ftj_event(event.get("type"), dict(body))

    @kopf.on.event("batch", "v1", "jobs", labels={builders.LABEL_JOB: kopf.PRESENT}, registry=registry)
    async def job_event(*, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        rt.on_child_event("Job", event.get("type"), dict(body))

    @kopf.on.event("", "v1", "pods", labels={builders.LABEL_JOB: kopf.PRESENT}, registry=registry)
    async def pod_event(*, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        rt.on_child_event("Pod", event.get("type"), dict(body))

    @kopf.daemon(*FTJ, registry=registry, cancellation_backoff=5.0, cancellation_timeout=30.0, cancellation_polling=1.0)
    async def reconcile(*, body: kopf.Body, meta: kopf.Meta, stopped: kopf.DaemonStopped, logger: Logger, **_: Any) -> None:
        await rt.run_job(meta["namespace"], meta["name"], dict(body), stopped, logger)

    from kubetune_operator.sweeps import handlers as sweep_handlers  # FineTuneSweeps (issue 13)

    sweep_handlers.register(registry, rt)
    return registry
