"""The per-job reconcile loops: kubetune's own tasks, started from its own FineTuneJob watch
(handlers.Reconciler.watch_ftjs), with the semantics Kopf's daemons had: one loop per unfinished
job, none for a finished one, stopped when a higher-priority peer pauses the replica and started
again when it resumes. Real operator threads against the emulated cluster."""
import time

import pytest

from kubetune_operator import handlers
from kubetune_operator.settings import OperatorSettings
from support import kubelet
from support.cluster import EmulatedCluster, wait_for
from support.manifests import job_manifest


def phase(cluster, ns, name):
    return ((cluster.get("FineTuneJob", ns, name) or {}).get("status") or {}).get("phase")


def finished(cluster, ns, name, **spec):
    cluster.create(job_manifest(name, ns, **spec))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    cond = {"type": "Succeeded", "status": "True", "reason": "Completed", "message": "done",
            "lastTransitionTime": now, "observedGeneration": 1}
    cluster.patch_status("FineTuneJob", ns, name, {
        "phase": "Succeeded", "reason": "Completed", "message": "done", "attempt": 1, "restarts": 0,
        "startTime": now, "completionTime": now, "observedGeneration": 1, "conditions": [cond]})


def test_finished_jobs_get_no_loop_and_a_ttl_keeps_one_until_it_deletes_the_job(cluster):
    ns = "loops"
    cluster.ensure_namespace(ns)
    for i in range(20):
        finished(cluster, ns, f"done-{i}")
    finished(cluster, ns, "expiring", runPolicy={"ttlSecondsAfterFinished": 5})
    cluster.create(job_manifest("live", ns))
    settings = OperatorSettings(standalone=True, metrics_port=0, health_port=0)
    with cluster.operator(settings, namespaces=(ns,)) as op:
        rt = op.reconciler
        wait_for(lambda: cluster.get("Job", ns, "live-a1"), message="the unfinished job's Job")
        # The TTL (an hour past completion + 5 s) has elapsed: its loop deletes the job, then ends.
        wait_for(lambda: cluster.get("FineTuneJob", ns, "expiring") is None, message="the expired job deleted")
        wait_for(lambda: set(rt.loops) == {(ns, "live")}, message="only the unfinished job has a loop")
        assert all((ns, f"done-{i}") in rt.states for i in range(20))  # seen, but no task

        # The live job finishes: its loop writes Succeeded, sees that it is no longer needed, and ends.
        job = cluster.get("Job", ns, "live-a1")
        pods = [kubelet.run(cluster, p) for p in kubelet.create_pods(cluster, job)]
        kubelet.complete_job(cluster, job, pods)
        wait_for(lambda: phase(cluster, ns, "live") == "Succeeded", message="Succeeded")
        wait_for(lambda: not rt.loops, message="no loop left")
        assert not rt.states[(ns, "live")].loop_active


def test_the_finalizer_an_earlier_operator_set_is_removed_and_no_other(cluster):
    ns = "legacy"
    cluster.ensure_namespace(ns)
    manifest = job_manifest("old", ns)
    manifest["metadata"]["finalizers"] = [handlers.FINALIZER, "example.com/keep"]
    cluster.create(manifest)
    with cluster.operator(namespaces=(ns,)):
        wait_for(lambda: cluster.get("FineTuneJob", ns, "old")["metadata"].get("finalizers") == ["example.com/keep"],
                 message="kubetune's finalizer removed")
        wait_for(lambda: cluster.get("Job", ns, "old-a1"), message="and the job runs")


@pytest.fixture
def peered_cluster():
    # The chart's RBAC for two peered replicas of one namespace (KopfPeering rules).
    with EmulatedCluster(chart_values={"replicaCount": 2, "watch": {"scope": "namespaced", "namespaces": ["peer"]}}) as c:
        yield c


def test_a_replica_paused_by_a_higher_priority_peer_stops_its_loops_and_resumes_them(peered_cluster):
    from kubetune_operator.runner import OperatorThread

    cluster, ns, name = peered_cluster, "peer", "handover"
    cluster.ensure_namespace(ns)
    cluster.create({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "kubetune", "namespace": ns}})
    low = OperatorThread(OperatorSettings(standalone=False, peering_name="kubetune", peering_priority=50,
                                          metrics_port=0, health_port=0), login=cluster.login, namespaces=(ns,)).start()
    high = None
    try:
        cluster.create(job_manifest(name, ns))
        wait_for(lambda: phase(cluster, ns, name) == "Initializing", timeout=30, message="the only replica handles it")
        state = low.reconciler.states[(ns, name)]
        assert state.loop_active and (ns, name) in low.reconciler.loops

        # A replica of higher priority appears: Kopf pauses this one, and with it the job's loop.
        high = OperatorThread(OperatorSettings(standalone=False, peering_name="kubetune", peering_priority=100,
                                               metrics_port=0, health_port=0), login=cluster.login, namespaces=(ns,)).start()
        wait_for(lambda: not low.reconciler.loops and not state.loop_active, timeout=30, message="the paused replica's loop stopped")
        wait_for(lambda: (ns, name) in high.reconciler.loops, timeout=30, message="the new replica runs the loop")

        # The paused replica does not act: a pod failure is handled once, by the active one.
        job = cluster.get("Job", ns, f"{name}-a1")
        pods = kubelet.create_pods(cluster, job)
        kubelet.terminate(cluster, pods[0], 1)
        wait_for(lambda: cluster.get("Job", ns, f"{name}-a2"), timeout=15, message="the active replica restarts the gang")
        assert not low.reconciler.loops

        # It leaves: the paused replica resumes, lists the jobs again and starts the loop.
        high.stop()
        high = None
        wait_for(lambda: (ns, name) in low.reconciler.loops and low.reconciler.states[(ns, name)].loop_active, timeout=30,
                 message="the remaining replica resumed the loop")
    finally:
        for op in (high, low):
            if op is not None:
                op.stop()
    created = [c.name for c in cluster.operator_calls() if c.verb == "create" and c.resource == "jobs" and c.status == 201]
    assert created == [f"{name}-a1", f"{name}-a2"]


def test_a_loop_that_fails_outside_a_pass_is_said_and_started_again(cluster, monkeypatch, caplog):
    """A bug that escapes the loop itself (a pass's own errors are retried inside it) must not leave the job
    without a loop until its next event: the error is logged and the loop starts again (Kopf retried a daemon)."""
    ns = "crashing"
    cluster.ensure_namespace(ns)
    monkeypatch.setattr(handlers, "LOOP_RESTART_S", 0.2)
    original, calls = handlers.Reconciler.run_job, []

    async def first_one_fails(self, *args, **kwargs):
        calls.append(args[1])
        if len(calls) == 1:
            raise RuntimeError("a bug outside the reconcile pass")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(handlers.Reconciler, "run_job", first_one_fails)
    cluster.create(job_manifest("phoenix", ns))
    with cluster.operator(namespaces=(ns,)):
        wait_for(lambda: cluster.get("Job", ns, "phoenix-a1"), timeout=10, message="the restarted loop created the Job")
    assert calls[:2] == ["phoenix", "phoenix"]
    assert any("the loop of crashing/phoenix ended with an error" in r.getMessage() for r in caplog.records)
