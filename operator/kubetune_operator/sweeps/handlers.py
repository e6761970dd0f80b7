"""Kopf handlers of FineTuneSweeps: observe, ``decide``, act. Thin on purpose.

One daemon per sweep: list the FineTuneJobs labelled with the sweep and owned
by its UID, ask :func:`.decide.decide` what to do, write status first (the
trials it records are the study), then create the trials' FineTuneJobs (a
create that meets an existing one adopts it), suspend pruned ones, and post
Events only after the status write succeeded. Events on the trials' FineTuneJobs
wake the sweep's loop; otherwise it re-reads every resync interval.

API calls: list finetunejobs (label kubetune.io/sweep), create finetunejobs,
patch finetunejobs (spec.suspend of a pruned trial), patch finetunesweeps/status;
once finished: create a ConfigMap and a batch Job <sweep>-results (results_job.py)
and list batch Jobs (label kubetune.io/sweep) until that Job is done;
Kopf lists and watches finetunesweeps and patches its finalizer onto them.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING, Any, cast

import kopf

from kubetune_api import spec as job_api
from kubetune_api import sweep as api
from kubetune_operator.kube import APIError

from .decide import LABEL_SWEEP, SweepDecision, SweepObservation, decide, owned_by, results_settled
from .results_job import build_results_objects, results_name

if TYPE_CHECKING:
    from kubetune_operator.handlers import Reconciler

FTS = (api.GROUP, api.VERSION, api.PLURAL)
FTJ = (job_api.GROUP, job_api.VERSION, job_api.PLURAL)
Logger = logging.Logger | logging.LoggerAdapter[Any]
RESULTS_POLL_SECONDS = 5.0  # how often a finished sweep looks at its results Job


def _rv(obj: dict[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class SweepController:
    """The sweeps of one operator run: their freshest bodies and wake-up events."""

    def __init__(self, rt: Reconciler) -> None:
        self.rt = rt
        self.bodies: dict[tuple[str, str], dict[str, Any]] = {}
        self.wakes: dict[tuple[str, str], asyncio.Event] = {}

    def wake(self, key: tuple[str, str]) -> asyncio.Event:
        return self.wakes.setdefault(key, asyncio.Event())

    def see(self, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        old = self.bodies.get(key)  # type: ignore[arg-type]
        if old is None or _rv(body) == 0 or _rv(body) >= _rv(old):
            self.bodies[key] = body  # type: ignore[index]

    async def run(self, namespace: str, name: str, body: dict[str, Any], stopped: kopf.DaemonStopped, logger: Logger) -> None:
        key = (namespace, name)
        self.see(body)
        wake = self.wake(key)
        try:
            while not stopped:
                wake.clear()
                try:
                    finished = await self.reconcile(key, logger)
                except APIError as e:
                    logger.warning(f"sweep {namespace}/{name}: reconcile failed, retrying: {e!r}")
                    finished = False
                if finished or stopped:
                    return
                # A finished sweep waits for its results Job, whose events do not reach us (the
                # operator's Job watch selects kubetune.io/job): poll it more often than resync.
                done = (self.bodies.get(key, {}).get("status") or {}).get("phase") in ("Succeeded", "Failed")
                timeout = min(RESULTS_POLL_SECONDS, self.rt.settings.resync_seconds) if done else self.rt.settings.resync_seconds
                try:
                    await asyncio.wait_for(wake.wait(), timeout=timeout)
                except TimeoutError:
                    pass
        finally:
            self.bodies.pop(key, None)
            self.wakes.pop(key, None)

    async def reconcile(self, key: tuple[str, str], logger: Logger) -> bool:
        """Decide and act until nothing is left to do now. -> whether the sweep is finished."""
        kube = self.rt.kube
        assert kube is not None
        namespace, name = key
        for _ in range(20):
            sweep = self.bodies[key]
            if (sweep.get("metadata") or {}).get("deletionTimestamp"):
                return True
            listed = await kube.list(job_api.KIND, namespace, f"{LABEL_SWEEP}={name}")
            children = {c["metadata"]["name"]: c for c in listed if owned_by(c, sweep)}
            status = sweep.get("status") or {}
            results_job = None
            if status.get("phase") in ("Succeeded", "Failed") and not results_settled(status):
                jobs = await kube.list("Job", namespace, f"{LABEL_SWEEP}={name}")
                results_job = next((j for j in jobs if j["metadata"]["name"] == results_name(name) and owned_by(j, sweep)), None)
            decision = decide(SweepObservation(sweep, children, dt.datetime.now(dt.UTC), results_by_job=True, results_job=results_job))
            if decision.empty:
                return results_settled(status)
            if not await self.act(key, sweep, decision, logger):
                return True
        return False

    async def act(self, key: tuple[str, str], sweep: dict[str, Any], decision: SweepDecision, logger: Logger) -> bool:
        """Carry out one decision. -> False when the sweep is gone."""
        kube = self.rt.kube
        assert kube is not None
        namespace, name = key
        if decision.status_patch:
            patched = await kube.merge_patch(api.KIND, namespace, name, {"status": decision.status_patch}, subresource="status")
            if patched is None:
                return False
            self.see(patched)
            phase = decision.status_patch.get("phase")
            if phase:
                logger.info(f"sweep {namespace}/{name} -> {phase}: {decision.status_patch.get('message', '')}")
        for manifest in decision.create:
            manifest["metadata"]["namespace"] = namespace
            _, created = await kube.create(manifest)
            logger.info(f"{'created' if created else 'found existing'} FineTuneJob {namespace}/{manifest['metadata']['name']}")
        if decision.create_results:
            for obj in build_results_objects(self.bodies.get(key, sweep), self.rt.settings):
                obj["metadata"]["namespace"] = namespace
                _, created = await kube.create(obj)
                logger.info(f"{'created' if created else 'found existing'} {obj['kind']} {namespace}/{obj['metadata']['name']} "
                            "(writes sweep.json and the plots)")
        for trial in decision.suspend:
            await kube.merge_patch(job_api.KIND, namespace, trial, {"spec": {"suspend": True}})
            logger.info(f"suspended FineTuneJob {namespace}/{trial} (pruned or sweep stopped)")
        for ev in decision.events:
            kopf.event(cast(kopf.Body, self.bodies.get(key, sweep)), type=ev.type, reason=ev.reason, message=ev.message[:1024])
        return True

    def on_sweep_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if event_type == "DELETED":
            self.bodies.pop(key, None)  # type: ignore[arg-type]
            return
        if key in self.bodies:
            self.see(body)
        self.wake(key).set()  # type: ignore[arg-type]

    def on_trial_event(self, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        sweep = (meta.get("labels") or {}).get(LABEL_SWEEP)
        if sweep:
            self.wake((meta.get("namespace"), sweep)).set()  # type: ignore[arg-type]


def register(registry: kopf.OperatorRegistry, rt: Reconciler) -> SweepController:
    """Add the FineTuneSweep handlers to an operator's registry."""
    ctl = SweepController(rt)

    @kopf.on.event(*FTS, registry=registry)
    async def finetunesweep_event(*, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        ctl.on_sweep_event(event.get("type"), dict(body))

    # Trials' events come from the operator's own FineTuneJob watch (handlers.Reconciler.watch_ftjs).
    rt.ftj_listeners.append(ctl.on_trial_event)

    @kopf.daemon(*FTS, registry=registry, cancellation_backoff=5.0, cancellation_timeout=30.0, cancellation_polling=1.0)
    async def reconcile_sweep(*, body: kopf.Body, meta: kopf.Meta, stopped: kopf.DaemonStopped, logger: Logger, **_: Any) -> None:
        await ctl.run(meta["namespace"], meta["name"], dict(body), stopped, logger)

    return ctl
