"""The operator's child cache (handlers.JobState) against the orderings a real API server allows.

A list answered before a DELETED event, or the GET that follows a 409, can hand the
operator a copy of an object that is already gone. No later watch event corrects
such a copy, so the job would wait on a ghost until the next resync re-list (60 s).
"""
from __future__ import annotations

from kubetune_operator.handlers import GONE_UIDS_KEPT, JobState


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
