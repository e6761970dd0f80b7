"""Kopf handlers: watch, observe, decide (phases.decide), act. Small on purpose.

One daemon per FineTuneJob runs its reconcile loop: read the freshest known
state, ask ``phases.decide`` what to do, do it, sleep until an event, a due
time or the resync interval. Watches on batch Jobs and pods labelled
``kubetune.io/job`` (Reconciler.watch_children: Kopf's watch stream, without its
per-object handler machinery) keep an in-memory view of what each FineTuneJob
owns and wake its loop, so a reconcile costs no API reads.

Idempotence: every attempt's Job has a deterministic name (``<job>-a<k>``);
the number of a restart's attempt is written to status before its Job is
created (a new job's first attempt needs no record: no status means attempt
1); a create that meets an existing object adopts it (409 -> GET) if this
FineTuneJob's UID owns it. The same event twice, or an operator restart
anywhere in between, never makes a second Job.

Cost per new job (bench/operator_scale.py): one parse of its spec per
generation, the ConfigMap and Service created together, then the Job, then one
status write and its Event; watch events that only echo the loop's own writes
do not wake it. New jobs first: while a new job waits for its first Job, other
loops hold their status writes and Events (at most NEW_JOBS_FIRST_MAX_WAIT per
pass), and only REPORTING_LANES of them act at once, each checking for new
jobs again when its turn comes, so a burst of new jobs reaches the scheduler
before the reports about it.

What the operator writes on a FineTuneJob: its status (progress, lastCheckpoint
and output copied from rank 0's checked reports, which the report endpoint,
``report_server``, receives; pods hold no API credential) and, when the TTL
after finishing elapses, the deletion. Never spec, labels, annotations or a
finalizer.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import fnmatch
import functools
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, cast

import kopf
from kopf._cogs.clients import watching as kopf_watching
from kopf._cogs.structs import references as kopf_references
from kopf._core.intents.handlers import DaemonHandler

from kubetune_api import spec as api
from kubetune_operator import builders, lineage, observe, phases
from kubetune_operator import reasons as R
from kubetune_operator.kube import APIError, EssenceFreeDiffBaseStorage, Kube, PauseToggle, url
from kubetune_operator.metrics import Metrics
from kubetune_operator.observe import Observation, ParsedSpec, Rejection
from kubetune_operator.report import TrainerReport
from kubetune_operator.report_server import ReportServer
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status_writer import rfc3339

# Not set on FineTuneJobs any more; named so Kopf removes it from jobs an older operator finalized.
FINALIZER = "kubetune.io/finalizer"
FTJ = (api.GROUP, api.VERSION, api.PLURAL)
CHILD_RESOURCES = (("batch", "v1", "jobs"), ("", "v1", "pods"))
CHILD_KINDS = {"jobs": "Job", "pods": "Pod"}
# A child watch that failed for good (403 after an RBAC change, an ERROR event) is restarted after this long.
CHILD_WATCH_RETRY_S = 5.0
GONE_UIDS_KEPT = 1024  # per job name: deleted children remembered, see JobState.see
# New jobs first: while some new job's first Job is not created yet, other loops hold their
# status writes and Events this long at most (a steady stream of new jobs must not starve them).
NEW_JOBS_FIRST_MAX_WAIT = 5.0
# Loops past their first create that act at once (status writes, Events, restarts, deletions).
# The others queue, and each checks again for waiting new jobs when its turn comes: the moment
# the last new job of a burst got its Job, hundreds of held reports must not all go out at once,
# ahead of the next new jobs (bench/operator_scale.py: such a wave of 206 status writes and Events
# in the middle of a burst made every later job wait behind it).
REPORTING_LANES = 4
# A loop asked to stop (its job finished, the replica paused) gets this long to end its pass before it
# is cancelled (a pass is a few API calls; Kopf gave its daemons 5 s the same way). At exit, less.
LOOP_STOP_GRACE_S = 5.0
LOOP_EXIT_GRACE_S = 2.0
EVENT_SOURCE = "kubetune-operator"  # source.component / reportingComponent of the operator's Events
LOOP_RESTART_S = 30.0  # a loop that ended with an unexpected error starts again after this long
log = logging.getLogger("kubetune.operator")
# Kopf hands handlers a LoggerAdapter bound to the object.
Logger = logging.Logger | logging.LoggerAdapter[Any]


def _rv(obj: dict[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _same_version(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """The very version already held (the operator's own write, then its watch event)."""
    return old is not None and _rv(new) != 0 and _rv(new) == _rv(old) and \
        (new.get("metadata") or {}).get("uid") == (old.get("metadata") or {}).get("uid")


def _has_glob(namespaces: tuple[str, ...]) -> bool:
    return any(ch in ns for ns in namespaces for ch in "*?[]!,")


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
        # UIDs of the batch Jobs this FineTuneJob owned, so pods of a Job already gone still count as ours.
        self.job_uids: set[str] = set()
        # The last refusal of a create by the API server (None once a create succeeds).
        self.rejection: Rejection | None = None
        # Rank 0's last checked report (report_server), and when it was accepted (monotonic).
        self.report: TrainerReport | None = None
        self.report_accepted_at = -math.inf
        # This replica runs the job's reconcile loop (a standby replica refuses reports).
        self.loop_active = False
        # UIDs of children seen deleted. A UID never comes back, so an older copy of such an object
        # (a list answered before the DELETED event, the GET after a 409) must not re-enter a cache
        # that no later event would correct. Insertion-ordered, bounded.
        self.gone_uids: dict[str, None] = {}

    def owned_job_uids(self, ftj: dict[str, Any]) -> set[str]:
        """UIDs of the batch Jobs this FineTuneJob owns (controller reference), seen now or before."""
        uid = str((ftj.get("metadata") or {}).get("uid") or "")
        self.job_uids |= {str(j["metadata"].get("uid")) for j in self.jobs.values() if observe.controller_uid(j) == uid and uid}
        return set(self.job_uids)

    def observation(self, ftj: dict[str, Any], now: dt.datetime, settings: OperatorSettings,
                    earlier: dict[str, Any] | None = None) -> Observation:
        return Observation.of(
            ftj, jobs=tuple(self.jobs.values()), pods=tuple(self.pods.values()), now=now, settings=settings,
            parsed=self.parsed(ftj), known_job_uids=self.owned_job_uids(ftj), rejection=self.rejection, earlier=earlier,
            report=self.report,
        )

    def earlier_job_name(self, ftj: dict[str, Any]) -> str | None:
        """The FineTuneJob spec.model.from names, while it matters: the job is unfinished and has no live Job."""
        job = self.parsed(ftj).job
        if job is None or job.spec.model.from_ is None or (ftj.get("status") or {}).get("phase") in R.TERMINAL:
            return None
        if any(not observe.deleting(j) for j in self.jobs.values()):
            return None
        return job.spec.model.from_.fine_tune_job

    def parsed(self, ftj: dict[str, Any]) -> ParsedSpec:
        """The spec parsed once per generation (the API server bumps it on every spec change)."""
        meta = ftj.get("metadata") or {}
        key: Any = (meta.get("uid"), meta.get("generation"), meta.get("name"))
        if not (meta.get("uid") and meta.get("generation")):
            key = (meta.get("name"), repr(ftj.get("spec")))
        if self._parsed is None or self._parsed[0] != key:
            self._parsed = (key, observe.parse_spec(ftj))
        return self._parsed[1]

    def see_ftj(self, body: dict[str, Any]) -> bool:
        """Keep the freshest FineTuneJob. -> whether it is news (not the version already held)."""
        old_uid = (self.ftj or {}).get("metadata", {}).get("uid")
        if old_uid and old_uid != (body.get("metadata") or {}).get("uid"):
            self.ftj = body  # a namesake: another object, resourceVersions do not compare
            self.reset_owner()
            return True
        if _fresher(body, self.ftj):
            news = not _same_version(body, self.ftj)
            self.ftj = body
            return news
        return False

    def reset_owner(self) -> None:
        """Forget what belonged to the previous FineTuneJob of this name (not the child caches)."""
        self._parsed = None
        self.job_uids = set()
        self.rejection = None
        self.report = None
        self.report_accepted_at = -math.inf

    def see(self, store: dict[str, dict[str, Any]], body: dict[str, Any], deleted: bool = False) -> bool:
        """Keep the freshest summary of a Job or pod. -> whether it is news (a change, or gone)."""
        meta = body["metadata"]
        name, uid = meta["name"], str(meta.get("uid") or "")
        if deleted:
            cached = store.get(name)
            news = False
            if cached is None or not uid or str(cached["metadata"].get("uid") or "") in ("", uid):
                news = store.pop(name, None) is not None
            if uid:
                self.gone_uids[uid] = None
                while len(self.gone_uids) > GONE_UIDS_KEPT:
                    del self.gone_uids[next(iter(self.gone_uids))]
            return news
        if uid and uid in self.gone_uids:
            return False  # a stale copy of an object already deleted
        cached = store.get(name)
        if _fresher(body, cached):
            store[name] = observe.summarize(body)
            return not _same_version(body, cached)
        return False

    def forget_vanished(self, store: dict[str, dict[str, Any]], listed: set[str], list_rv: int) -> None:
        """A re-list is the truth: drop what it no longer shows (a watch gap loses DELETED events),
        unless the cached object is newer than the list (seen by a watch or a create since)."""
        for name in [n for n, obj in store.items() if n not in listed and (list_rv == 0 or _rv(obj) <= list_rv)]:
            store.pop(name, None)


class LoopStop:
    """Asks a reconcile loop to stop: true once set; ``wait()`` returns then (as Kopf's DaemonStopped)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


@dataclasses.dataclass(eq=False)
class JobLoop:
    """One FineTuneJob's reconcile loop: the UID it serves, its task, its stop request."""

    uid: str
    stop: LoopStop = dataclasses.field(default_factory=LoopStop)
    task: asyncio.Task[None] | None = None
    respawn: bool = False  # start a loop again when this one ends (a namesake, a resume)


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
        # No decision before the child caches hold a full list of Jobs and pods (an operator
        # restart must not see "no Job, no pods" and flap running jobs).
        self.synced = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._resync_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._relist_task: asyncio.Task[None] | None = None
        self._relist_again = False  # a Kopf re-list came while ours was pending or in flight
        self.report_server = ReportServer(self)
        # New jobs whose first attempt is not created yet. A burst of new jobs gets its Jobs (so
        # its pods to the scheduler) before any loop spends the API server and this process on
        # status writes and Events, which only report; see new_jobs_first.
        self.unstarted: set[tuple[str, str]] = set()
        self.all_started = asyncio.Event()
        self.all_started.set()
        self.reporting = asyncio.Semaphore(REPORTING_LANES)
        # The per-job reconcile loops (one per unfinished FineTuneJob), started by watch_ftjs.
        self.loops: dict[tuple[str, str], JobLoop] = {}
        # Kopf's operator-paused toggle (peering: this replica stands by), from runner.run_operator.
        self.paused: PauseToggle | None = None
        # Events about FineTuneJobs, posted in order by one task (post_event).
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._event_poster: asyncio.Task[None] | None = None
        self._closing = False
        # Called with every FineTuneJob body the watch delivers (the sweeps wake on their trials').
        self.ftj_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._finalizer_patches: set[tuple[Any, Any]] = set()

    def state(self, namespace: str, name: str) -> JobState:
        key = (namespace, name)
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = JobState()
        return st

    # ------------------------------------------------------------ caches
    async def ensure_synced(self, logger: Logger) -> None:
        """List Jobs and pods once before the first decision; then re-list every resync while jobs run."""
        if self.synced.is_set():
            return
        async with self._sync_lock:
            if self.synced.is_set():
                return
            while True:
                try:
                    await self.relist()
                    break
                except APIError as e:
                    self.metrics.api_errors.labels("list").inc()
                    logger.warning(f"listing the jobs' Jobs and pods failed, retrying: {e!r}")
                    await asyncio.sleep(5.0)
            self.synced.set()
            self._resync_task = asyncio.create_task(self._resync_children())

    async def relist(self) -> None:
        """Replace the child caches with a fresh server-side-selected list (drops what vanished)."""
        assert self.kube is not None
        for kind in ("Job", "Pod"):
            listed: dict[tuple[str, str], set[str]] = {}
            list_rvs: list[int] = []
            for scope in self._child_scopes():
                items, list_rv = await self.kube.list_with_version(kind, scope, builders.LABEL_JOB)
                list_rvs.append(list_rv)
                for obj in items:
                    meta = obj.get("metadata") or {}
                    ns, owner = meta.get("namespace"), (meta.get("labels") or {}).get(builders.LABEL_JOB)
                    if not ns or not owner or not self._watched(ns):
                        continue
                    st = self.state(ns, owner)
                    st.see(st.jobs if kind == "Job" else st.pods, obj)
                    listed.setdefault((ns, owner), set()).add(meta["name"])
            for key, st in list(self.states.items()):
                st.forget_vanished(st.jobs if kind == "Job" else st.pods, listed.get(key, set()), min(list_rvs, default=0))

    def _child_scopes(self) -> list[str | None]:
        """Where Jobs and pods are listed and watched: each namespace of an exact list, else cluster-wide
        (None; with namespace globs, what does not match is dropped by ``_watched``)."""
        return list(self.namespaces) if self.namespaces and not _has_glob(self.namespaces) else [None]

    def _watched(self, namespace: str) -> bool:
        return not self.namespaces or any(fnmatch.fnmatchcase(namespace, pattern) for pattern in self.namespaces)

    async def _resync_children(self) -> None:
        """Re-list at the resync interval, only while some job is not finished (finished jobs cost nothing)."""
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            active = [st for st in list(self.states.values()) if st.ftj and (st.ftj.get("status") or {}).get("phase") not in R.TERMINAL]
            if not active:
                continue
            try:
                await self.relist()
            except APIError as e:
                self.metrics.api_errors.labels("list").inc()
                log.warning(f"re-listing the jobs' Jobs and pods failed: {e!r}")
                continue
            for st in active:
                st.wake.set()

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.add(asyncio.create_task(coro))

    async def close(self) -> None:
        self._closing = True
        await self.stop_loops("the operator is stopping", LOOP_EXIT_GRACE_S)
        await self.flush_events(LOOP_EXIT_GRACE_S)
        if self._event_poster is not None:
            self._event_poster.cancel()
        for task in [self._resync_task, self._relist_task, *self._tasks]:
            if task is not None:
                task.cancel()
        await self.report_server.stop()

    async def check_peering(self) -> None:
        """Say clearly when the peering object is missing: Kopf would only log a debug line per keep-alive."""
        assert self.kube is not None
        name = self.settings.peering_name
        # A list by name: the chart grants list/watch/patch on peerings, not get.
        query = "?" + urllib.parse.urlencode({"fieldSelector": f"metadata.name={name}"})
        paths = ([f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings" for ns in self.namespaces]
                 if self.namespaces and not _has_glob(self.namespaces) else ["/apis/kopf.dev/v1/clusterkopfpeerings"])
        for path in paths:
            try:
                found = await self.kube.get_path(path + query)
            except APIError as e:
                log.error(f"cannot read the peering object {name!r} at {path} ({e.status}): replicas cannot coordinate. "
                          f"Grant list/watch/patch on it, or run a single replica with --standalone (KUBETUNE_STANDALONE=true).")
                continue
            if (found is None or not found.get("items")) and not self.settings.peering_required:
                log.warning(f"no peering object {name!r} ({path}): running standalone, as Kopf does when its default "
                            f"peering object is absent. For several replicas create it, or set --peering/KUBETUNE_PEERING_NAME.")
            elif found is None or not found.get("items"):
                log.error(f"peering object {name!r} ({path}) does not exist: replicas cannot see each other, so more than one may act. "
                          f"Create it (the Helm chart does: a {'KopfPeering' if 'namespaces' in path else 'ClusterKopfPeering'} "
                          f"named {name!r}), set --peering/KUBETUNE_PEERING_NAME to an existing one, "
                          f"or run a single replica with --standalone (KUBETUNE_STANDALONE=true).")

    # ------------------------------------------------------------ the loop
    async def run_job(self, namespace: str, name: str, body: dict[str, Any], stopped: LoopStop, logger: Logger) -> None:
        st = self.state(namespace, name)
        st.see_ftj(body)
        uid = (body.get("metadata") or {}).get("uid")
        stop_task = asyncio.ensure_future(stopped.wait())
        if not (body.get("status") or {}).get("phase"):
            self._unstarted((namespace, name), True)
        try:
            await self.ensure_synced(logger)
            st.loop_active = True
            while not stopped:
                if st.ftj is None or (st.ftj.get("metadata") or {}).get("uid") != uid:
                    break  # deleted (no finalizer holds it), or replaced by a namesake with its own loop
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
            self._unstarted((namespace, name), False)
            st.loop_active = False
            stop_task.cancel()
            if self.states.get((namespace, name)) is st and st.ftj is not None and (st.ftj.get("metadata") or {}).get("deletionTimestamp"):
                self.states.pop((namespace, name), None)

    async def reconcile(self, st: JobState, logger: Logger) -> float | None:
        """Decide and act until nothing is left to do now. -> seconds to the next pass (None: on events)."""
        hold_until = asyncio.get_running_loop().time() + NEW_JOBS_FIRST_MAX_WAIT
        lane = False  # holding one of the reporting lanes
        steps = 0
        try:
            while steps < 10:  # every step changes what decide sees; a longer chain would be a bug
                steps += 1
                ftj = st.ftj
                if ftj is None or (ftj.get("metadata") or {}).get("deletionTimestamp"):
                    return None
                earlier = await self.earlier_job(ftj, st.earlier_job_name(ftj))
                decision = phases.decide(st.observation(ftj, dt.datetime.now(dt.UTC), self.settings, earlier))
                if decision.confirm_gone and await self.confirm_gone(st, ftj, decision.confirm_gone, logger):
                    continue  # the cache held something already gone: decide again on the corrected view
                if not decision.status_after_create:
                    # Past its first create, or unable to make it now (leftovers, a refusal): nobody waits on it.
                    self._unstarted((ftj["metadata"]["namespace"], ftj["metadata"]["name"]), False)
                if decision.empty:
                    return decision.requeue_after
                if not decision.status_after_create:
                    if not lane:
                        await self.reporting.acquire()
                        lane = True
                    if await self.new_jobs_first(ftj, hold_until):
                        steps -= 1  # a wait is not a step
                        continue  # it waited: decide again on what is known now
                if not await self.act(st, ftj, decision, logger):
                    return None
            logger.warning("reconcile did not settle after 10 steps; retrying shortly")
            return 1.0
        finally:
            if lane:
                self.reporting.release()

    def _unstarted(self, key: tuple[str, str], waiting: bool) -> None:
        if waiting:
            self.unstarted.add(key)
            self.all_started.clear()
        else:
            self.unstarted.discard(key)
            if not self.unstarted:
                self.all_started.set()

    async def new_jobs_first(self, ftj: dict[str, Any], until: float | None = None) -> bool:
        """Wait while other new jobs wait for their first Job, until the loop time ``until`` (default:
        NEW_JOBS_FIRST_MAX_WAIT from now). -> whether it waited. Only reporting waits: a new job's own
        first create never does."""
        meta = ftj.get("metadata") or {}
        if not self.unstarted - {(meta.get("namespace"), meta.get("name"))}:
            return False
        loop = asyncio.get_running_loop()
        remaining = (loop.time() + NEW_JOBS_FIRST_MAX_WAIT if until is None else until) - loop.time()
        if remaining <= 0:
            return False  # held long enough: a steady stream of new jobs must not starve reports
        try:
            await asyncio.wait_for(self.all_started.wait(), remaining)
        except TimeoutError:
            pass
        return True

    async def confirm_gone(self, st: JobState, ftj: dict[str, Any], objects: list[tuple[str, str]], logger: Logger) -> bool:
        """Read back the cached leftovers an attempt has waited on; drop those the API no longer has
        (or has only as a new object of the same name). -> whether the cache changed."""
        assert self.kube is not None
        ns = ftj["metadata"]["namespace"]
        changed = False
        for kind, obj_name in objects:
            store = st.jobs if kind == "Job" else st.pods
            cached = store.get(obj_name)
            if cached is None:
                continue
            found = await self.kube.get(kind, ns, obj_name)
            cached_uid = cached["metadata"].get("uid")
            if found is None or found["metadata"].get("uid") != cached_uid:
                logger.info(f"{ns}/{ftj['metadata']['name']}: {kind} {obj_name} was cached but is gone; its DELETED event was missed")
                st.see(store, cached, deleted=True)
                if found is not None:
                    st.see(store, found)
                changed = True
        return changed

    async def earlier_job(self, ftj: dict[str, Any], name: str | None) -> dict[str, Any] | None:
        """The FineTuneJob ``name`` in ftj's namespace, read from the API (a list by name: the
        operator lists and watches FineTuneJobs; its watch cache may not have seen it yet)."""
        if name is None:
            return None
        assert self.kube is not None
        namespace = (ftj.get("metadata") or {}).get("namespace")
        found = await self.kube.get_path(url(api.KIND, namespace, fieldSelector=f"metadata.name={name}"))
        items = (found or {}).get("items") or []
        return dict(items[0]) if items else None

    async def act(self, st: JobState, ftj: dict[str, Any], plan: phases.Decision, logger: Logger) -> bool:
        """Carry out a decision. -> whether to decide again (False: the FineTuneJob is gone)."""
        assert self.kube is not None
        meta = ftj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if plan.status_after_create:
            # A new job's first attempt: nothing to record before its Job (a fixed name, claimed
            # by UID), so the objects go first and the next decision writes what came of it.
            try:
                await self.create_attempt(st, ftj, 1, logger, plan.resolution)
            finally:
                self._unstarted((ns, name), False)  # created, adopted or refused: it had its turn
            return True
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
            # Preconditioned on the UID: never a namesake that took the name meanwhile.
            job_uid = (st.jobs.get(job_name) or {}).get("metadata", {}).get("uid")
            await self.kube.delete("Job", ns, job_name, propagation="Background", uid=job_uid)
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
            self.post_event(ftj, ev.type, ev.reason, ev.message)
        if plan.create_attempt:
            await self.create_attempt(st, ftj, plan.create_attempt, logger, plan.resolution)
        if plan.delete_self:
            await self.kube.delete(api.KIND, ns, name, propagation="Background")
            logger.info(f"{ns}/{name}: ttlSecondsAfterFinished elapsed; deleted")
            return False
        return True

    async def create_attempt(self, st: JobState, ftj: dict[str, Any], attempt: int, logger: Logger,
                             resolution: lineage.Resolution | None = None) -> None:
        """Ensure the per-job objects (recreating any that were deleted, with an Event), then the attempt's Job.

        A create that meets an existing object adopts it only if this FineTuneJob's UID
        controls it and it is not being deleted; anything else is left alone and reported
        to the next decision as in the way. A refusal (422, 403) is reported the same way.
        """
        assert self.kube is not None
        meta = ftj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        config_map = await self.kube.get("ConfigMap", ns, builders.config_map_name(name)) if attempt > 1 else None
        chosen = phases.attempt_spec(ftj, attempt, config_map)
        # The live spec is parsed already (once per generation); a restart's stored spec is not.
        live = st.parsed(ftj) if chosen.source.get("spec") is ftj.get("spec") else None
        parsed = live.job if live is not None else None
        # Hashes of the spec as the user wrote it.
        hashes = chosen.spec_hashes or (builders.spec_hashes_json(live.hashes) if live is not None and parsed is not None
                                        else builders.spec_hashes_annotation(chosen.source))
        if resolution is not None and lineage.from_job_name(chosen.source.get("spec") or {}):
            chosen = dataclasses.replace(chosen, source=lineage.apply(chosen.source, resolution))
            parsed = None
        manifest = builders.resolved_manifest(chosen.source, self.settings, parsed)
        independent = builders.build_job_independent_objects(chosen.source, self.settings, manifest, hashes)
        job = builders.build_batch_job(chosen.source, self.settings, attempt, hashes, manifest)
        for obj in [*independent, job]:
            obj["metadata"]["namespace"] = ns
        # The per-job objects at once (none needs another), then the Job that mounts them.
        answers = await asyncio.gather(*(self.kube.create(obj) for obj in independent), return_exceptions=True)
        for obj, answer in zip(independent, answers, strict=True):
            if isinstance(answer, BaseException) and not isinstance(answer, APIError):
                raise answer
            if not self._created(st, ftj, obj, answer, attempt, logger):
                return
        try:
            answer = await self.kube.create(job)
        except APIError as e:
            answer = e
        if self._created(st, ftj, job, answer, attempt, logger):
            st.rejection = None

    def _created(self, st: JobState, ftj: dict[str, Any], obj: dict[str, Any],
                 answer: tuple[dict[str, Any], bool] | BaseException, attempt: int, logger: Logger) -> bool:
        """Take in the API server's answer to one create. -> whether the object is there and this job's."""
        meta = ftj["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta.get("uid")
        kind, obj_name = obj["kind"], obj["metadata"]["name"]
        if isinstance(answer, BaseException):
            if not isinstance(answer, APIError) or answer.status not in (403, 422):
                raise answer
            e = answer
            previous = st.rejection
            count = previous.count + 1 if previous and (previous.kind, previous.name, previous.code) == (kind, obj_name, e.status) else 1
            st.rejection = Rejection(code=e.status or 0, kind=kind, name=obj_name, message=str(e.message or e),
                                     at=dt.datetime.now(dt.UTC), count=count)
            logger.warning(f"the API server refused {kind} {ns}/{obj_name} ({e.status}): {e.message or e}")
            return False
        found, created = answer
        if not created and (observe.controller_uid(found) != uid or observe.deleting(found)):
            # Not ours, or on its way out: never adopted. The decision waits and tries again.
            why = "being deleted" if observe.deleting(found) else "owned by another object"
            st.rejection = Rejection(code=409, kind=kind, name=obj_name, message=f"{kind} {obj_name} exists, {why}",
                                     at=dt.datetime.now(dt.UTC))
            if kind == "Job" and builders.LABEL_JOB in (found.get("metadata") or {}).get("labels", {}):
                st.see(st.jobs, found)  # its watch events say when it is gone
            logger.info(f"{ns}/{name}: {kind} {obj_name} exists, {why}; waiting")
            return False
        if kind == "Job":
            st.see(st.jobs, found)
            st.job_uids.add(str(found["metadata"].get("uid")))
            logger.info(f"{'created' if created else 'adopted'} Job {ns}/{obj_name} (attempt {attempt})")
        elif created and attempt > 1:
            message = f"{kind} {obj_name} was missing before attempt {attempt}; recreated"
            self.post_event(ftj, "Warning", "Recreated", message)
            logger.warning(f"{ns}/{name}: {message}")
        return True


    # ------------------------------------------------------------- events
    def on_ftj_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if event_type == "DELETED":
            st = self.states.get(key)  # type: ignore[arg-type]
            if st is not None and (st.ftj is None or (st.ftj.get("metadata") or {}).get("uid") == meta.get("uid")):
                # The loop ends by itself (there is no finalizer to wait for it). The child caches
                # stay: a namesake created next sees the leftovers until they are collected.
                st.ftj = None
                st.reset_owner()
                st.wake.set()
                if not st.jobs and not st.pods:
                    self.states.pop(key, None)  # type: ignore[arg-type]
            return
        st = self.state(*key)  # type: ignore[arg-type]
        if st.see_ftj(dict(body)):  # not the echo of the loop's own status write
            st.wake.set()
        self._relist_after_kopf_relist(event_type)

    def on_child_event(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(builders.LABEL_JOB)
        if not owner:
            return
        st = self.state(meta.get("namespace"), owner)  # type: ignore[arg-type]
        if st.see(st.jobs if kind == "Job" else st.pods, dict(body), deleted=event_type == "DELETED"):
            st.wake.set()  # not the echo of an object the loop created or patched itself
        self._relist_after_kopf_relist(event_type)

    # ------------------------------------------------------------ Events
    def post_event(self, ftj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about a FineTuneJob in the background; Events go out in the order posted.

        The operator's own poster (not ``kopf.event``): it sends through this run's API client, whose
        session is kept between requests, and needs no Kopf handler context, which the job loops,
        plain tasks, do not have. A refused Event is logged and dropped: it only reports.
        """
        meta = ftj.get("metadata") or {}
        now = rfc3339(dt.datetime.now(dt.UTC))
        self._events.put_nowait({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
            "involvedObject": {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": meta.get("name"),
                               "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": EVENT_SOURCE}, "reportingComponent": EVENT_SOURCE,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        })
        if self._event_poster is None or self._event_poster.done():
            self._event_poster = asyncio.create_task(self._post_events(), name="event poster")

    async def _post_events(self) -> None:
        while True:
            event = await self._events.get()
            assert self.kube is not None
            try:
                await self.kube.create(event)
            except APIError as e:
                self.metrics.api_errors.labels("event").inc()
                log.warning(f"posting the Event {event['reason']} about {event['metadata']['namespace']}/"
                            f"{event['involvedObject']['name']} failed ({e.status}): {e.message or e}")

    async def flush_events(self, timeout: float) -> None:
        """Give the Events still queued up to ``timeout`` seconds to go out (at exit)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._events.empty() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    # ------------------------------------------------------ FineTuneJobs
    async def watch_ftjs(self, settings: kopf.OperatorSettings) -> None:
        """Stream FineTuneJobs into the job states and keep one reconcile loop per unfinished job.

        Kopf's watch stream (list, then watch; 410 Gone re-lists; reconnects) paused with Kopf's
        own toggle, so a standby replica neither sees nor acts, read directly: neither Kopf's
        per-event handler machinery nor its daemons, whose processing of each FineTuneJob event
        (causes, handler state, a logger and patch objects per event, the daemon's spawn checks)
        was the largest single cost left in a burst of new jobs (bench/operator_scale.py). The
        loops are plain tasks with Kopf's daemon semantics: one per job, started when a job needs
        one (``needs_a_loop``), stopped when it no longer does, when the replica pauses and when
        the operator exits; a namesake's loop starts only after the old one has ended.
        """
        ref = kopf_references.Resource(group=api.GROUP, version=api.VERSION, plural=api.PLURAL, kind=api.KIND, namespaced=True)
        tasks = [self._watch_ftj(settings, ref, scope) for scope in self._child_scopes()]
        if self.paused is not None:
            tasks.append(self._follow_pause(self.paused))
        await asyncio.gather(*tasks)

    async def _watch_ftj(self, settings: kopf.OperatorSettings, ref: kopf_references.Resource, namespace: str | None) -> None:
        def handle(event_type: str | None, body: dict[str, Any]) -> None:
            self.on_ftj_event(event_type, body)
            for listener in self.ftj_listeners:
                listener(body)
            if event_type != "DELETED":
                self._ensure_loop(body)

        await self._stream(settings, ref, namespace, handle, paused=self.paused)

    async def _stream(self, settings: kopf.OperatorSettings, ref: kopf_references.Resource, namespace: str | None,
                      handle: Callable[[str | None, dict[str, Any]], None], paused: PauseToggle | None = None) -> None:
        """Feed ``handle`` every event of Kopf's watch stream of ``ref`` in one scope, forever (paused with
        ``paused`` when given); a refused watch (403) or an ERROR event is said and the watch tried again."""
        while True:
            try:
                async for raw in kopf_watching.infinite_watch(
                        settings=settings, resource=ref, namespace=cast(kopf_references.NamespaceName | None, namespace),
                        operator_paused=cast(Any, paused)):
                    if not isinstance(raw, dict) or raw.get("type") == "BOOKMARK":
                        continue  # Kopf's end-of-list marker; a bookmark only carries a resourceVersion
                    body = cast(dict[str, Any], raw["object"])
                    if not self._watched(str((body.get("metadata") or {}).get("namespace") or "")):
                        continue  # a cluster-wide watch for namespace globs: only the matching ones
                    handle(raw.get("type"), body)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.metrics.api_errors.labels("watch").inc()
                where = f"in {namespace}" if namespace else "cluster-wide"
                log.warning(f"watching {ref.plural} {where} failed, retrying in {CHILD_WATCH_RETRY_S:.0f}s: {e!r}")
                await asyncio.sleep(CHILD_WATCH_RETRY_S)

    def _ensure_loop(self, body: dict[str, Any]) -> None:
        """Start, keep or stop the job's loop after an event about it."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if FINALIZER in (meta.get("finalizers") or ()):
            self._remove_legacy_finalizer(body)
        wanted = needs_a_loop(status=body.get("status") or {}, spec=body.get("spec") or {}) and not meta.get("deletionTimestamp")
        running = self.loops.get(key)
        if running is not None:
            if running.uid != meta.get("uid"):
                running.respawn = True  # a namesake: its loop starts once the old one has seen the change and ended
            elif not wanted:
                running.stop.set()
            elif running.stop:
                running.respawn = True  # stopping (the replica paused and resumed meanwhile): start again after
            return
        if wanted and not self._closing and not (self.paused is not None and self.paused.is_on()):
            self._start_loop(key, body)

    def _start_loop(self, key: tuple[str, str], body: dict[str, Any]) -> None:
        meta = body["metadata"]
        loop = JobLoop(uid=str(meta.get("uid") or ""))
        logger = logging.LoggerAdapter(log, {"k8s_ref": {"namespace": key[0], "name": key[1]}})
        loop.task = asyncio.create_task(self.run_job(key[0], key[1], body, loop.stop, logger), name=f"loop {key[0]}/{key[1]}")
        self.loops[key] = loop
        loop.task.add_done_callback(functools.partial(self._loop_ended, key, loop))

    def _loop_ended(self, key: tuple[str, str], loop: JobLoop, _task: asyncio.Task[None] | None = None) -> None:
        if self.loops.get(key) is loop:
            del self.loops[key]
        if loop.task is not None and not loop.task.cancelled() and loop.task.exception() is not None:
            # A bug outside a pass (a pass's own errors are retried inside the loop): said, and the loop
            # starts again later, as Kopf retried a failed daemon.
            log.error(f"the loop of {key[0]}/{key[1]} ended with an error; starting it again in {LOOP_RESTART_S:.0f}s",
                      exc_info=loop.task.exception())
            asyncio.get_running_loop().call_later(LOOP_RESTART_S, self._restart_loop, key)
            return
        if loop.respawn:
            self._restart_loop(key)  # the namesake, or the same job after a pause and resume

    def _restart_loop(self, key: tuple[str, str]) -> None:
        st = self.states.get(key)
        if st is not None and st.ftj is not None and key not in self.loops:
            self._ensure_loop(st.ftj)

    async def stop_loops(self, reason: str, grace: float) -> None:
        """Ask every loop to stop, wait up to ``grace`` seconds, then cancel what is left."""
        loops = list(self.loops.values())
        for loop in loops:
            loop.respawn = False
            loop.stop.set()
        tasks = [loop.task for loop in loops if loop.task is not None]
        if not tasks:
            return
        log.info(f"stopping {len(tasks)} reconcile loop(s): {reason}")
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=grace)

    async def _follow_pause(self, paused: PauseToggle) -> None:
        """A replica that Kopf pauses (a higher-priority peer appeared) stops its loops, as Kopf stops its daemons;
        when it resumes, the FineTuneJob watch lists again and the loops start from what it shows."""
        while True:
            await paused.wait_for(True)
            await self.stop_loops("this replica is paused (peering)", LOOP_STOP_GRACE_S)
            await paused.wait_for(False)

    def _remove_legacy_finalizer(self, body: dict[str, Any]) -> None:
        """Operators before issue 11 put FINALIZER on every FineTuneJob; remove it (once per version seen),
        with the body's resourceVersion as the precondition, so no other finalizer is lost."""
        meta = body["metadata"]
        key = (meta.get("uid"), meta.get("resourceVersion"))
        if key in self._finalizer_patches or self.kube is None:
            return
        self._finalizer_patches.add(key)
        kept = [f for f in meta.get("finalizers") or () if f != FINALIZER]

        async def remove() -> None:
            assert self.kube is not None
            try:
                await self.kube.merge_patch(api.KIND, meta["namespace"], meta["name"],
                                            {"metadata": {"finalizers": kept or None, "resourceVersion": meta.get("resourceVersion")}})
                log.info(f"{meta['namespace']}/{meta['name']}: removed the finalizer {FINALIZER} an earlier operator set")
            except APIError as e:  # 409: changed meanwhile; its next event tries again
                log.info(f"{meta['namespace']}/{meta['name']}: removing the finalizer {FINALIZER} failed ({e.status}); retrying on its next event")
            finally:
                self._finalizer_patches.discard(key)

        self.background(remove())

    async def watch_children(self, settings: kopf.OperatorSettings) -> None:
        """Stream the jobs' Jobs and pods into the child caches, one watch per kind and scope.

        Kopf's own watch stream (list, then watch from its resourceVersion; 410 Gone starts
        over with a list; reconnects; the label selector from ``settings.watching``) feeds
        ``on_child_event`` directly, without Kopf's per-object workers and handler machinery:
        a child event only updates a cache and wakes a loop, and that machinery cost about
        1 ms of operator CPU per event (bench/operator_scale.py), on the most numerous
        events a cluster sends. The scopes are those of ``relist``.
        """
        await asyncio.gather(*(self._watch_child(settings, resource, scope)
                               for resource in CHILD_RESOURCES for scope in self._child_scopes()))

    async def _watch_child(self, settings: kopf.OperatorSettings, resource: tuple[str, str, str], namespace: str | None) -> None:
        group, version, plural = resource
        ref = kopf_references.Resource(group=group, version=version, plural=plural, kind=CHILD_KINDS[plural], namespaced=True)
        await self._stream(settings, ref, namespace,
                           lambda event_type, body: self.on_child_event(CHILD_KINDS[plural], event_type, body))

    def _relist_after_kopf_relist(self, event_type: str | None) -> None:
        """Kopf re-lists after a watch ended with 410 Gone; what vanished meanwhile gets no DELETED
        event, so list the children once ourselves (debounced: one re-list per burst). FineTuneJob
        lists count too: when every child vanished, the children's re-list has nothing to show."""
        if event_type is None and self.synced.is_set():
            if self._relist_task is None:
                self._relist_task = asyncio.create_task(self._relist_soon())
            else:
                # One is pending or in flight: its list may already have been answered from before
                # this re-list (what vanished since would then stay cached), so list once more after it.
                self._relist_again = True

    async def _relist_soon(self) -> None:
        try:
            again = True
            while again:
                self._relist_again = False
                await asyncio.sleep(1.0)
                await self.relist()
                for st in list(self.states.values()):
                    st.wake.set()
                again = self._relist_again
        except APIError as e:
            log.warning(f"re-listing the jobs' Jobs and pods failed: {e!r}")
        finally:
            self._relist_task = None


def make_registry(rt: Reconciler) -> kopf.OperatorRegistry:
    """All handlers of one operator run, bound to its Reconciler (no global state)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def configure(*, settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        # Kopf keeps handler progress only when a handler is retried; keep it in
        # annotations of our own prefix (status fields outside the CRD schema are pruned).
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.io")
        # No change handlers (see the check below make_registry's registrations): no essence to build.
        settings.persistence.diffbase_storage = EssenceFreeDiffBaseStorage(prefix="kubetune.io", key="last-handled-configuration")
        settings.posting.level = logging.INFO
        settings.background.instant_exit_timeout = 2.0
        # Server-side selection: Kopf puts these into every list and watch of Jobs and pods
        # (keys as (group, version, plural): a "batch/v1/jobs" string is not parsed as Jobs).
        for resource in CHILD_RESOURCES:
            settings.watching.label_selectors[resource] = builders.LABEL_JOB
        if rt.namespaces and not _has_glob(rt.namespaces):
            # An exact list of namespaces (the chart's namespaced mode) needs no cluster-scoped
            # access: do not list namespaces or watch CRDs (which would be refused and retried).
            settings.scanning.disabled = True
        rt.kube = Kube(settings, logging.getLogger("kubetune.kube"))
        rt.background(rt.watch_children(settings))  # the jobs' Jobs and pods (not through Kopf's handlers)
        rt.background(rt.watch_ftjs(settings))  # FineTuneJobs and their loops (neither through Kopf's handlers)
        if not rt.settings.standalone and not rt.settings.peering_required:
            settings.peering.name = rt.settings.peering_name  # auto-detected, as Kopf does with its default
        if not rt.settings.standalone:
            rt.background(rt.check_peering())
        if rt.settings.reports_progress and str(rt.settings.report_url).startswith("http://"):
            log.warning("KUBETUNE_REPORT_INSECURE_HTTP=true: trainer pods send their report tokens and reports over "
                        "plain HTTP, readable and forgeable on the network path; serve TLS unless the network "
                        "encrypts by itself (a service mesh's mTLS)")
        if rt.settings.reports_progress:
            try:
                rt.settings.report_ca_pem()  # trainer pods get it in their ConfigMap: fail here, not per job
            except ValueError as e:
                raise kopf.PermanentError(str(e)) from e
        if rt.settings.reports_progress and rt.settings.report_port:
            try:
                await rt.report_server.start(rt.settings.report_port)
            except ValueError as e:  # the certificate or key
                raise kopf.PermanentError(str(e)) from e
            except OSError as e:
                raise kopf.PermanentError(f"cannot serve the report endpoint on port {rt.settings.report_port} ({e}); "
                                          f"free the port or set KUBETUNE_REPORT_PORT") from e
        if rt.settings.status_reporter and not rt.settings.report_url:
            log.warning("KUBETUNE_REPORT_URL is unset: trainer pods get no report token and report progress only to "
                        "their logs. Set it to the URL of the operator's report Service (the Helm chart does).")

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        await rt.close()

    if rt.login_fn is not None:
        @kopf.on.login(registry=registry)
        def login(**kwargs: Any) -> Any:
            return rt.login_fn(**kwargs)  # type: ignore[misc]

    _without_finalizers(registry)

    from kubetune_operator.sweeps import handlers as sweep_handlers  # FineTuneSweeps (issue 13)

    sweep_handlers.register(registry, rt)
    if registry._changing._handlers:
        # EssenceFreeDiffBaseStorage gives Kopf no essence to diff: such handlers would never see a change.
        raise RuntimeError("on.create/update/delete/resume/field handlers need Kopf's diff-base storage; "
                           "replace EssenceFreeDiffBaseStorage in handlers.make_registry's startup")
    return registry


def needs_a_loop(*, status: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """A job has a reconcile loop while it is not finished, or until its TTL deletes it.

    Finished jobs cost nothing: no task, no timer, no request at resync.
    """
    if status.get("phase") not in R.TERMINAL:
        return True
    return (spec.get("runPolicy") or {}).get("ttlSecondsAfterFinished") is not None


def _without_finalizers(registry: kopf.OperatorRegistry) -> None:
    """No finalizer on FineTuneJobs: owner references clean up, and a job must be deletable
    while the operator is down. ``kopf.daemon`` always asks for one (kopf 1.45.2, pinned), only
    so it can stop the daemon before the object goes; our loop ends by itself on deletion."""
    spawning = registry._spawning
    spawning._handlers[:] = [
        dataclasses.replace(h, requires_finalizer=False) if isinstance(h, DaemonHandler) else h for h in spawning._handlers
    ]
