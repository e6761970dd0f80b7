"""The operator's child cache (handlers.JobState) against the orderings a real API server allows.

A list answered before a DELETED event, or the GET that follows a 409, can hand the
operator a copy of an object that is already gone. No later watch event corrects
such a copy, so the job would wait on a ghost until the next resync re-list (60 s).
"""
from __future__ import annotations

from typing import Any

from kubetune_operator.handlers import GONE_UIDS_KEPT, JobState
from support import kubelet
from support.cluster import EmulatedCluster, wait_for
from support.emulator import KubeEmulator
from support.manifests import job_manifest


def job(name: str, uid: str, rv: int) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": str(rv),
                         "labels": {"kubetune.io/job": "x"}}, "status": {}}


def test_a_stale_copy_of_a_deleted_child_does_not_come_back():
    st = JobState()
    st.see(st.jobs, job("x-a1", "old", 10))
    st.see(st.jobs, job("x-a1", "old", 12), deleted=True)
    st.see(st.jobs, job("x-a1", "old", 10))  # the re-list's answer, older than the DELETED event
    assert "x-a1" not in st.jobs


def test_a_late_deleted_event_of_the_old_object_keeps_the_new_namesake():
    st = JobState()
    st.see(st.jobs, job("x-a1", "new", 20))  # created by the operator, seen before the old one's event
    st.see(st.jobs, job("x-a1", "old", 12), deleted=True)
    assert st.jobs["x-a1"]["metadata"]["uid"] == "new"


def test_a_new_object_of_the_same_name_is_seen():
    st = JobState()
    st.see(st.pods, job("x-a1-0", "old", 10), deleted=True)
    st.see(st.pods, job("x-a1-0", "new", 30))
    assert st.pods["x-a1-0"]["metadata"]["uid"] == "new"


def test_the_memory_of_deleted_uids_is_bounded():
    st = JobState()
    for i in range(GONE_UIDS_KEPT + 10):
        st.see(st.pods, job(f"p{i}", f"u{i}", i + 1), deleted=True)
    assert len(st.gone_uids) == GONE_UIDS_KEPT and "u0" not in st.gone_uids


# ---------------------------------------------------------------- the race through the real operator


NS = "lost-delete"


class LostDeleteEmulator(KubeEmulator):
    """Never tells watchers that the Job named ``lose`` was deleted: a cache that missed a DELETED
    event, however it happened (a watch broken at the wrong moment, a re-list raced)."""

    lose: str | None = None

    async def _emit(self, res: Any, etype: str, body: dict[str, Any]) -> None:
        if etype == "DELETED" and res.plural == "jobs" and body["metadata"]["name"] == self.lose:
            return
        await super()._emit(res, etype, body)


class LostDeleteCluster(EmulatedCluster):
    def _make_emulator(self) -> KubeEmulator:
        return LostDeleteEmulator(keep_history=self.keep_history)


def test_an_attempt_waiting_on_a_leftover_reads_it_back_and_runs_once_it_is_gone():
    from kubetune_operator import builders
    from kubetune_operator.settings import OperatorSettings

    name = "missed"
    with LostDeleteCluster() as cluster:
        cluster.ensure_namespace(NS)
        cluster.pause_gc()
        gone = job_manifest(name, NS)
        gone["metadata"]["uid"] = "uid-of-the-deleted-namesake"
        old = cluster.create(builders.build_batch_job(gone, OperatorSettings(), 1))
        kubelet.complete_job(cluster, old, kubelet.create_pods(cluster, old))
        settings = OperatorSettings(standalone=True, metrics_port=0, health_port=0, resync_seconds=300)
        with cluster.operator(settings=settings, namespaces=(NS,)):
            cluster.create(job_manifest(name, NS))
            wait_for(lambda: any(c["type"] == "AttemptBlocked" and c["status"] == "True"
                                 for c in ((cluster.get("FineTuneJob", NS, name) or {}).get("status") or {}).get("conditions") or []),
                     message="AttemptBlocked")
            emulator = cluster.emulator
            assert isinstance(emulator, LostDeleteEmulator)
            emulator.lose = f"{name}-a1"
            cluster.resume_gc()
            for pod in cluster.list("Pod", NS):
                cluster.delete("Pod", NS, pod["metadata"]["name"])
            cluster.delete("Job", NS, f"{name}-a1")
            # Without reading back, the job would wait for the next resync (300 s here).
            new = wait_for(lambda: (lambda j: j if j and j["metadata"]["uid"] != old["metadata"]["uid"] else None)(
                cluster.get("Job", NS, f"{name}-a1")), timeout=30, message="the new job's own attempt")
            assert new["metadata"]["ownerReferences"][0]["uid"] == cluster.get("FineTuneJob", NS, name)["metadata"]["uid"]
