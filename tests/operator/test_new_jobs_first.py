"""New jobs first: while a new job's first Job is not created yet, other jobs' loops hold their
status writes and Events (bench/operator_scale.py: a burst of 500 new jobs gets its Jobs sooner).
The hold is bounded, and a job never waits for itself."""
from __future__ import annotations

import asyncio

import pytest

from kubetune_operator import handlers
from kubetune_operator.handlers import Reconciler
from kubetune_operator.settings import OperatorSettings


def ftj(name: str) -> dict:
    return {"metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}"}}


def test_a_report_waits_for_other_new_jobs_then_goes():
    async def scenario() -> None:
        rt = Reconciler(OperatorSettings(standalone=True, metrics_port=0, health_port=0))
        assert await rt.new_jobs_first(ftj("old")) is False  # nobody waiting: no hold
        rt._unstarted(("ns", "new"), True)
        assert await rt.new_jobs_first(ftj("new")) is False  # its own first create never waits on itself
        held = asyncio.ensure_future(rt.new_jobs_first(ftj("old")))
        await asyncio.sleep(0.2)
        assert not held.done()  # the old job's status write waits while "new" has no Job
        rt._unstarted(("ns", "new"), False)
        assert await asyncio.wait_for(held, 1.0) is True
        assert rt.all_started.is_set() and not rt.unstarted

    asyncio.run(scenario())


def test_the_hold_is_bounded(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(handlers, "NEW_JOBS_FIRST_MAX_WAIT", 0.1)

    async def scenario() -> None:
        rt = Reconciler(OperatorSettings(standalone=True, metrics_port=0, health_port=0))
        rt._unstarted(("ns", "stuck"), True)  # e.g. its create keeps being refused elsewhere
        t0 = asyncio.get_running_loop().time()
        assert await rt.new_jobs_first(ftj("old")) is True
        assert asyncio.get_running_loop().time() - t0 < 1.0

    asyncio.run(scenario())



def test_held_reports_go_out_a_few_at_a_time_and_yield_again_to_new_jobs(monkeypatch: pytest.MonkeyPatch):
    """When the last new job of a burst got its Job, the held reports do not all go out at once: at most
    REPORTING_LANES loops act together, and one whose turn comes while another new job waits holds again."""
    monkeypatch.setattr(handlers, "REPORTING_LANES", 2)
    monkeypatch.setattr(handlers.phases, "decide", lambda observation: handlers.phases.Decision(status_patch={"x": 1}))

    async def scenario() -> None:
        rt = Reconciler(OperatorSettings(standalone=True, metrics_port=0, health_port=0))
        active, peak, acted = 0, 0, []

        async def act(st, ftj, decision, logger) -> bool:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.02)
            active -= 1
            acted.append(ftj["metadata"]["name"])
            return False  # the job is gone: the pass ends

        monkeypatch.setattr(rt, "act", act)
        states = []
        for i in range(10):
            st = rt.state("ns", f"old-{i}")
            st.see_ftj(ftj(f"old-{i}"))
            states.append(st)
        rt._unstarted(("ns", "new"), True)
        passes = [asyncio.ensure_future(rt.reconcile(st, handlers.log)) for st in states]
        await asyncio.sleep(0.1)
        assert acted == [] and active == 0  # all held while "new" has no Job
        rt._unstarted(("ns", "new"), False)
        await asyncio.sleep(0.005)
        assert active == 2  # two lanes act, the other eight queue
        rt._unstarted(("ns", "newer"), True)  # another new job arrives mid-wave
        await asyncio.sleep(0.1)
        assert len(acted) == 2 and active == 0  # the two that were acting finished; the next ones hold again
        rt._unstarted(("ns", "newer"), False)
        assert await asyncio.wait_for(asyncio.gather(*passes), 5.0) == [None] * 10
        assert peak == 2 and sorted(acted) == sorted(f"old-{i}" for i in range(10))

    asyncio.run(scenario())


def test_a_new_job_that_cannot_start_holds_nobody():
    """End to end: a new job blocked by a Job in the way says Pending (it never gets its first
    Job now), and another new job still gets its Job and status at once, not after the hold."""
    import time

    from support.cluster import EmulatedCluster, wait_for
    from support.manifests import job_manifest

    ns = "first"

    def phase(name: str) -> str | None:
        return ((cluster.get("FineTuneJob", ns, name) or {}).get("status") or {}).get("phase")

    with EmulatedCluster() as cluster:
        cluster.ensure_namespace(ns)
        with cluster.operator(namespaces=(ns,)):
            # Someone else's Job with the name and label the blocked job's first attempt needs.
            cluster.create({"apiVersion": "batch/v1", "kind": "Job", "metadata": {
                "name": "blocked-a1", "namespace": ns, "labels": {"kubetune.io/job": "blocked"}},
                "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}})
            cluster.create(job_manifest("blocked", ns))
            wait_for(lambda: phase("blocked") == "Pending", timeout=30, message="blocked job Pending")
            t0 = time.monotonic()
            cluster.create(job_manifest("free", ns))
            wait_for(lambda: phase("free"), timeout=30, message="status of the free job")
            assert time.monotonic() - t0 < handlers.NEW_JOBS_FIRST_MAX_WAIT
            assert cluster.get("Job", ns, "free-a1") is not None
            assert phase("blocked") == "Pending"
