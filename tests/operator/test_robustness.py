"""Operator restarts, many jobs at once, metrics and liveness: the real operator against the emulator."""
import socket
import time

import pytest
import requests

from kubetune_operator import builders, runner
from kubetune_operator.settings import OperatorSettings
from support import kubelet
from support.cluster import EmulatedCluster, wait_for
from support.manifests import job_manifest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phase(cluster, ns, name):
    return ((cluster.get("FineTuneJob", ns, name) or {}).get("status") or {}).get("phase")


def job_creations(cluster, ns):
    return [c for c in cluster.operator_calls() if c.verb == "create" and c.resource == "jobs" and c.namespace == ns]


def test_restarting_the_operator_mid_flight_creates_no_duplicates(cluster):
    ns, name = "restart", "survivor"
    cluster.ensure_namespace(ns)
    settings = OperatorSettings(standalone=True, metrics_port=0, health_port=0)
    cluster.create(job_manifest(name, ns, runPolicy={"maxRestarts": 3, "backoffSeconds": 1}))

    # 1. The operator crashed after writing attempt 1 to status and creating the Job, before
    #    anything else: a new operator adopts that Job instead of making another.
    cluster.patch_status("FineTuneJob", ns, name, {"phase": "Pending", "reason": "Accepted", "attempt": 1, "restarts": 0})
    owner = cluster.get("FineTuneJob", ns, name)
    for obj in builders.build_objects(owner, settings):
        cluster.create(obj, namespace=ns)
    with cluster.operator(settings, namespaces=(ns,)):
        wait_for(lambda: phase(cluster, ns, name) == "Initializing", message="adopted the existing attempt")
    assert [j["metadata"]["name"] for j in cluster.list("Job", ns)] == [f"{name}-a1"]

    # 2. Stopped and started again with nothing new: still one Job, no new status transition.
    before = cluster.get("FineTuneJob", ns, name)["status"]
    with cluster.operator(settings, namespaces=(ns,)):
        time.sleep(0.5)
    assert [j["metadata"]["name"] for j in cluster.list("Job", ns)] == [f"{name}-a1"]
    assert cluster.get("FineTuneJob", ns, name)["status"]["conditions"] == before["conditions"]

    # 3. A pod fails while no operator runs; the operator that sees it counts one restart and
    #    is stopped during the backoff; the next one creates attempt 2 exactly once.
    job = cluster.get("Job", ns, f"{name}-a1")
    pods = [kubelet.run(cluster, p) for p in kubelet.create_pods(cluster, job)]
    kubelet.terminate(cluster, pods[0], 1)
    with cluster.operator(settings, namespaces=(ns,)):
        wait_for(lambda: phase(cluster, ns, name) == "Restarting", message="Restarting")
    st = cluster.get("FineTuneJob", ns, name)["status"]
    assert st["restarts"] == 1 and st["attempt"] == 2
    with cluster.operator(settings, namespaces=(ns,)):
        wait_for(lambda: cluster.get("Job", ns, f"{name}-a2"), timeout=5, message="attempt 2")
        wait_for(lambda: phase(cluster, ns, name) == "Initializing", message="Initializing")
    with cluster.operator(settings, namespaces=(ns,)):
        time.sleep(0.5)
    st = cluster.get("FineTuneJob", ns, name)["status"]
    assert st["restarts"] == 1 and st["attempt"] == 2
    assert [j["metadata"]["name"] for j in cluster.list("Job", ns)] == [f"{name}-a2"]
    # Every operator that started may have POSTed a Job its watch had not listed yet; the API
    # answered 409 and the operator adopted it. Exactly one POST of attempt 2 succeeded, none of attempt 1.
    created = [(c.name, c.status) for c in job_creations(cluster, ns) if c.status == 201]
    assert created == [(f"{name}-a2", 201)]
    assert {c.status for c in job_creations(cluster, ns)} <= {201, 409}


def test_an_operator_stopped_before_a_new_jobs_first_status_write_adopts_its_objects(cluster):
    """A new job's objects are created before its first status write (nothing to record before
    the Job: its name is fixed, it is claimed by UID). An operator stopped in between leaves a
    job with no status and all its objects; the next one adopts them, writes one status, posts nothing twice."""
    ns, name = "restart-new", "fresh"
    cluster.ensure_namespace(ns)
    settings = OperatorSettings(standalone=True, metrics_port=0, health_port=0)
    cluster.create(job_manifest(name, ns))
    owner = cluster.get("FineTuneJob", ns, name)
    for obj in builders.build_objects(owner, settings):
        cluster.create(obj, namespace=ns)
    with cluster.operator(settings, namespaces=(ns,)):
        wait_for(lambda: phase(cluster, ns, name) == "Initializing", message="adopted the existing attempt")
        time.sleep(0.5)
    st = cluster.get("FineTuneJob", ns, name)["status"]
    assert st["attempt"] == 1 and st["restarts"] == 0 and st["activeJob"] == f"{name}-a1" and st["reason"] == "PodsStarting"
    assert [j["metadata"]["name"] for j in cluster.list("Job", ns)] == [f"{name}-a1"]
    # The Job was in the listed cache before the first decision: taken as the attempt's, nothing created again.
    assert not [c for c in cluster.operator_calls() if c.namespace == ns and c.verb == "create" and c.resource != "events"]
    writes = [c for c in cluster.operator_calls() if c.namespace == ns and c.resource == "finetunejobs" and c.verb == "patch"]
    assert len(writes) == 1


def test_two_hundred_jobs_created_at_once_are_all_reconciled(cluster):
    ns, n = "many", 200
    cluster.ensure_namespace(ns)
    for i in range(n):
        cluster.create(job_manifest(f"job-{i:03d}", ns, distributed={"nodes": 1, "gpusPerNode": 1}, training={"maxSteps": 10, "globalBatchSize": 1}))
    t0 = time.monotonic()
    with cluster.operator(namespaces=(ns,)):
        def all_initializing():
            items = cluster.list("FineTuneJob", ns)
            return sum(1 for o in items if (o.get("status") or {}).get("phase") == "Initializing") == n
        wait_for(all_initializing, timeout=150, interval=0.5, message=f"{n} jobs Initializing")
        elapsed = time.monotonic() - t0
    jobs = cluster.list("Job", ns)
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(f"job-{i:03d}-a1" for i in range(n))
    print(f"\n{n} FineTuneJobs reconciled to Initializing in {elapsed:.1f}s")


def test_metrics_and_liveness_endpoints(cluster):
    ns = "metrics"
    cluster.ensure_namespace(ns)
    mport, hport = free_port(), free_port()
    settings = OperatorSettings(standalone=True, metrics_port=mport, health_port=hport)
    with cluster.operator(settings, namespaces=(ns,)):
        cluster.create(job_manifest("observed", ns, training={"maxSteps": 10, "globalBatchSize": 16}))
        wait_for(lambda: phase(cluster, ns, "observed") == "Initializing")
        with cluster.admission_off():  # an InvalidSpec failure needs a FineTuneJob admission did not refuse
            cluster.create(job_manifest("broken", ns, training={"maxSteps": 10, "globalBatchSize": 10}))
        wait_for(lambda: phase(cluster, ns, "broken") == "Failed")
        text = wait_for(lambda: (lambda t: t if 'kubetune_failures_total{reason="InvalidSpec"} 1.0' in t else None)(
            requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text))
        assert 'kubetune_jobs{phase="Initializing"} 1.0' in text and 'kubetune_jobs{phase="Failed"} 1.0' in text
        assert "kubetune_reconcile_duration_seconds_count" in text
        # "observed" went from no status straight to Initializing (its Job created at once); "broken" failed first.
        assert 'kubetune_transitions_total{phase="Initializing",reason="PodsStarting"} 1.0' in text
        assert 'kubetune_transitions_total{phase="Pending"' not in text
        assert requests.get(f"http://127.0.0.1:{hport}/healthz", timeout=5).status_code == 200


def test_kubetune_operator_command_runs_from_a_kubeconfig(cluster, tmp_path):
    """The CLI entry point as a process: kubeconfig login, namespaced watch, JSON logs, clean SIGTERM exit."""
    import json
    import os
    import signal
    import subprocess
    import sys

    ns = "cli"
    cluster.ensure_namespace(ns)
    env = dict(os.environ, KUBECONFIG=cluster.write_kubeconfig(str(tmp_path / "kubeconfig")), KUBETUNE_LOG_FORMAT="json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetune_operator.cli", "operator", "--namespace", ns, "--standalone",
         "--metrics-port", "0", "--health-port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        cluster.create(job_manifest("from-cli", ns))
        wait_for(lambda: cluster.get("Job", ns, "from-cli-a1"), timeout=30, message="Job created by the CLI operator")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(line["message"].startswith("starting: namespaces cli, standalone") for line in lines), out
    assert any("from-cli -> Initializing" in line["message"] for line in lines), out



def test_the_operator_process_keeps_the_garbage_collector_off_its_start_up_objects():
    """`kubetune operator` freezes what start-up loaded and raises the first GC threshold (runner.tune_gc);
    run in a child process, as the command does, so this test process keeps its own GC settings."""
    import subprocess
    import sys

    code = ("import gc; from kubetune_operator import runner; before = (gc.get_freeze_count(), *gc.get_threshold()); "
            "runner.tune_gc(); print(*before, gc.get_freeze_count(), *gc.get_threshold())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    frozen_before, _, gen1_before, gen2_before, frozen, gen0, gen1, gen2 = map(int, out)
    assert frozen_before == 0 and frozen > 10_000  # the imported modules, Kopf and the API models: out of every collection
    assert (gen0, gen1, gen2) == (runner.GC_GEN0_THRESHOLD, gen1_before, gen2_before)


@pytest.fixture
def peered_cluster():
    # Its own cluster: the chart's RBAC for two peered replicas of one namespace (KopfPeering rules).
    with EmulatedCluster(chart_values={"replicaCount": 2, "watch": {"scope": "namespaced", "namespaces": ["peer"]}}) as c:
        yield c


def test_two_peered_replicas_one_acts_and_the_other_takes_over(peered_cluster):
    """Kopf peering: the highest-priority replica works, the other stands by and takes over when it leaves.

    The active replica starts first, so the standby meets it in its first look at the peering
    object (two replicas starting in the same instant can both run for a moment: Kopf's peering
    is not a lock, see docs/operator.md)."""
    from kubetune_operator.runner import OperatorThread

    cluster = peered_cluster

    ns, name = "peer", "ha"
    cluster.ensure_namespace(ns)
    cluster.create({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "kubetune", "namespace": ns}})
    high = OperatorSettings(standalone=False, peering_name="kubetune", peering_priority=100, metrics_port=0, health_port=0)
    low = OperatorSettings(standalone=False, peering_name="kubetune", peering_priority=50, metrics_port=0, health_port=0)
    peers = lambda: len((cluster.get("KopfPeering", ns, "kubetune") or {}).get("status") or {})  # noqa: E731
    active = OperatorThread(high, login=cluster.login, namespaces=(ns,)).start()
    standby = None
    try:
        wait_for(lambda: peers() == 1, message="active registered")
        # Kopf starts paused until it has seen the peers; this one sees a higher one and stays so.
        standby = OperatorThread(low, login=cluster.login, namespaces=(ns,)).start()
        wait_for(lambda: peers() == 2, message="standby registered")
        cluster.create(job_manifest(name, ns, runPolicy={"maxRestarts": 1, "backoffSeconds": 0}))
        wait_for(lambda: phase(cluster, ns, name) == "Initializing", message="handled")
        # Handled = the FineTuneJob reached the reconciler (its child caches may be listed by any replica).
        handled = lambda op: getattr(op.reconciler.states.get((ns, name)), "ftj", None) is not None  # noqa: E731
        assert not handled(standby) and handled(active)
        active.stop()
        active = None
        # The active replica left: the standby resumes and handles what happens next.
        job = cluster.get("Job", ns, f"{name}-a1")
        pods = kubelet.create_pods(cluster, job)
        kubelet.terminate(cluster, pods[0], 1)
        wait_for(lambda: cluster.get("Job", ns, f"{name}-a2"), timeout=15, message="the standby restarts the gang")
    finally:
        for op in (active, standby):
            if op is not None:
                op.stop()
    assert [(c.name, c.status) for c in job_creations(cluster, ns) if c.status == 201] == [(f"{name}-a1", 201), (f"{name}-a2", 201)]
