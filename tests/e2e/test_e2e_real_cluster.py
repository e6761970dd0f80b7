"""End to end on the faithful cluster (issue 11): the real operator, real trainer pods, and a cluster that
deletes pods gracefully and collects garbage asynchronously, as a real one does (tests/support/README.md).

The namesake test failed on the operator before issue 11's fixes (the recreated job adopted the deleted
job's Complete Job); it passes since the operator claims children by owner UID.
"""
from __future__ import annotations

import base64
import time

import pytest
from e2e_jobs import KEY_ID, NAMESPACE, SECRET, finetunejob
from test_e2e_operator import StatusRecorder, _fail_context, _pods_of, _progress_file_records

from support.emulator import Semantics

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster():
    from support.cluster import EmulatedCluster

    # A pod deleted (evicted, preempted) keeps running for its grace period (up to 30 s here); the garbage
    # collector is asynchronous; the emulator's Job controller makes and accounts the pods, and the pod
    # executor is their kubelet (tests/e2e/executor.py).
    with EmulatedCluster(semantics=Semantics(max_grace_seconds=30)) as c:
        c.ensure_namespace(NAMESPACE)
        c.create({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": NAMESPACE},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in
                     {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}.items()},
        })
        yield c


def test_drain_of_one_pod_mid_run_resumes_from_the_checkpoint_with_restarts_0(e2e):
    """The evicted rank gets DisruptionTarget and SIGTERM, checkpoints and exits 75 (DisruptionTarget kept); the
    operator restarts the gang from the checkpoint, uncounted: it deletes the Job (whose controller may or may not
    have set FailureTarget by its podFailurePolicy first: both orders happen), the garbage collector deletes the
    other rank gracefully, and attempt 2 starts once both pods are gone. The operator seeing only the evicted pod,
    or only the Job's condition, is tested in tests/operator/test_real_cluster.py."""
    cluster, executor, s3 = e2e["cluster"], e2e["executor"], e2e["s3"]
    name = "e2e-drain"
    job = finetunejob(name, e2e["inputs"], s3.endpoint, training={"maxSteps": 12, "evalEvery": 6}, output={"checkpointEvery": 3},
                      runPolicy={"maxRestarts": 0, "backoffSeconds": 0, "terminationGraceSeconds": 30})
    with StatusRecorder(cluster, name) as rec:
        cluster.create(job)
        rec.wait_for(lambda s: (s.get("lastCheckpoint") or {}).get("step"), 180, "a committed checkpoint")
        victim = [p for p in executor.running_pods(f"{name}-a1") if p.index == 1][0]
        cluster.evict(NAMESPACE, victim.name)  # kubectl drain: DisruptionTarget, SIGTERM, checkpoint, exit 75
        try:
            final = rec.wait_for(lambda s: s.get("phase") == "Succeeded", 300, "phase Succeeded after the drain")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{_fail_context(executor, name + '-a1')}") from None
    assert final["restarts"] == 0 and final["attempt"] >= 2
    assert victim.exit_code == 75, _fail_context(executor, f"{name}-a1")
    second = [p for p in _pods_of(executor, f"{name}-a{final['attempt']}") if p.index == 0][0]
    resumed = [e for e in _progress_file_records(second) if e.get("event") == "resumed"]
    assert resumed and resumed[0]["step"] >= 3, resumed
    assert final["progress"]["step"] == 12


def test_delete_and_recreate_of_a_namesake_trains_from_scratch_and_succeeds(e2e):
    cluster, s3 = e2e["cluster"], e2e["s3"]
    name = "e2e-again"
    job = finetunejob(name, e2e["inputs"], s3.endpoint, output={"uri": f"s3://kubetune-e2e/runs/{name}-1"})
    with StatusRecorder(cluster, name) as rec:
        cluster.create(job)
        rec.wait_for(lambda s: s.get("phase") == "Succeeded", 240, "the first job Succeeded")
    cluster.pause_gc()  # kubectl delete + apply: the garbage collector has not caught up yet
    try:
        cluster.delete("FineTuneJob", NAMESPACE, name)
        while cluster.get("FineTuneJob", NAMESPACE, name) is not None:
            time.sleep(0.1)
        again = finetunejob(name, e2e["inputs"], s3.endpoint, output={"uri": f"s3://kubetune-e2e/runs/{name}-2"})
        new = cluster.create(again)
        with StatusRecorder(cluster, name) as rec:
            time.sleep(3.0)
            early = rec.latest
            cluster.resume_gc()
            final = rec.wait_for(lambda s: s.get("phase") in ("Succeeded", "Failed"), 300, "the second job finished")
    finally:
        cluster.resume_gc()
    assert early.get("phase") not in ("Succeeded", "Failed"), early
    assert final["phase"] == "Succeeded", final
    owned = [j for j in cluster.list("Job", NAMESPACE) if j["metadata"]["ownerReferences"][0]["uid"] == new["metadata"]["uid"]]
    assert owned, "no Job of the new FineTuneJob ever ran"
    assert s3.keys(f"runs/{name}-2/final/adapter/adapter_config.json")
