"""Issue 11, through the real operator (Kopf in a thread) against the emulated API.

What a real cluster does that the operator must survive: a namesake's leftovers
after `kubectl delete` + `apply`, disruptions that are not failures, an operator
restart while jobs run, a job deleted while the operator is down, and watches
of pods and Jobs that must be selected by the API server, not by the operator.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from support import kubelet
from support.cluster import EmulatedCluster, wait_for
from support.emulator import KubeEmulator
from support.manifests import job_manifest

NS = "semantics"
QUERIES: list[tuple[str, str, dict[str, Any]]] = []  # (verb, plural, query) of every request


class QueryRecordingEmulator(KubeEmulator):
    async def _handle(self, request: Any) -> Any:
        if request.resource is not None and request.resource.plural:
            verb = "watch" if request.params.get("watch") == "true" else str(request.method).lower()
            QUERIES.append((verb, request.resource.plural, dict(request.params)))
        return await super()._handle(request)


class RecordingCluster(EmulatedCluster):
    def _make_emulator(self) -> KubeEmulator:
        return QueryRecordingEmulator(keep_history=self.keep_history)


@pytest.fixture(scope="module")
def cluster():
    with RecordingCluster() as c:
        c.ensure_namespace(NS)
        yield c


def status(cluster, name):
    return (cluster.get("FineTuneJob", NS, name) or {}).get("status") or {}


def condition(cluster, name, ctype):
    return next((c for c in status(cluster, name).get("conditions") or [] if c["type"] == ctype), None)


def running(cluster, name, attempt=1):
    job = wait_for(lambda: cluster.get("Job", NS, f"{name}-a{attempt}"), message=f"Job {name}-a{attempt}")
    pods = [kubelet.run(cluster, p) for p in kubelet.create_pods(cluster, job)]
    wait_for(lambda: status(cluster, name).get("phase") == "Running", message=f"{name} Running")
    return job, pods


def operator_writes(cluster, since):
    """Status patches and Events the operator made after call number ``since``."""
    calls = cluster.operator_calls()[since:]
    return ([c for c in calls if c.resource == "finetunejobs" and c.verb == "patch"],
            [c for c in calls if c.resource == "events" and c.verb in ("create", "patch")])


def test_pods_and_jobs_are_selected_server_side(cluster):
    QUERIES.clear()
    with cluster.operator(namespaces=(NS,)):
        cluster.create(job_manifest("selected", NS))
        running(cluster, "selected")
    reads = [(verb, plural, q) for verb, plural, q in QUERIES if plural in ("pods", "jobs") and verb in ("get", "watch")]
    lists_and_watches = [(verb, plural, q) for verb, plural, q in reads if verb == "watch" or "labelSelector" in q or "limit" in q]
    assert {(verb, plural) for verb, plural, _ in lists_and_watches} >= {("watch", "pods"), ("watch", "jobs")}
    for verb, plural, query in lists_and_watches:
        assert query.get("labelSelector") == "kubetune.io/job", (verb, plural, query)


def test_namespace_globs_watch_the_children_of_matching_namespaces_only(cluster):
    """With namespace globs the Job and pod watches are cluster-wide (as the re-list) and selected
    server-side; a matching namespace's job sees its pods and runs, another namespace's job is not touched."""
    for ns in ("team-a", "elsewhere"):
        cluster.ensure_namespace(ns)
    # Globs are a command-line mode: Kopf lists and watches namespaces to find the matching ones, which
    # the chart's cluster-wide role does not grant (docs/operator.md, "Permissions the operator needs").
    rule = {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}
    if cluster.get("ClusterRole", None, "glob-namespaces") is None:
        cluster.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                        "metadata": {"name": "glob-namespaces"}, "rules": [rule]})
        cluster.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                        "metadata": {"name": "glob-namespaces"},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "glob-namespaces"},
                        "subjects": [{"kind": "ServiceAccount", "name": "kubetune-operator", "namespace": "kubetune-system"}]})
    QUERIES.clear()
    with cluster.operator(namespaces=("team-*",)) as op:
        cluster.create(job_manifest("globbed", "team-a"))
        job = wait_for(lambda: cluster.get("Job", "team-a", "globbed-a1"), message="Job globbed-a1")
        for pod in kubelet.create_pods(cluster, job):
            kubelet.run(cluster, pod)
        wait_for(lambda: ((cluster.get("FineTuneJob", "team-a", "globbed") or {}).get("status") or {}).get("phase") == "Running",
                 message="globbed Running: its pods were seen")
        cluster.create(job_manifest("ignored", "elsewhere"))
        # A labelled Job in a namespace the globs do not match reaches the cluster-wide watch; it is dropped.
        cluster.create({"apiVersion": "batch/v1", "kind": "Job",
                        "metadata": {"name": "stray", "namespace": "elsewhere", "labels": {"kubetune.io/job": "stray"}},
                        "spec": {"template": {"spec": {"restartPolicy": "Never",
                                                       "containers": [{"name": "c", "image": "busybox"}]}}}})
        time.sleep(1.0)
        assert not [key for key in op.reconciler.states if key[0] == "elsewhere"], list(op.reconciler.states)
        assert cluster.get("Job", "elsewhere", "ignored-a1") is None
        assert not ((cluster.get("FineTuneJob", "elsewhere", "ignored") or {}).get("status") or {}).get("phase")
    watches = [(plural, q) for verb, plural, q in QUERIES if verb == "watch" and plural in ("pods", "jobs")]
    assert {plural for plural, _ in watches} == {"pods", "jobs"}
    assert all(q.get("labelSelector") == "kubetune.io/job" for _, q in watches), watches


def leftover_job(cluster, name):
    """What `kubectl delete ftj x && kubectl apply -f x.yaml` leaves while garbage collection lags:
    the deleted namesake's Complete Job and its failed pod, owned by a UID that no longer exists."""
    from kubetune_operator import builders
    from kubetune_operator.settings import OperatorSettings

    gone = job_manifest(name, NS)
    gone["metadata"]["uid"] = "uid-of-the-deleted-namesake"
    job = cluster.create(builders.build_batch_job(gone, OperatorSettings(), 1))
    pods = kubelet.create_pods(cluster, job)
    kubelet.terminate(cluster, pods[0], 3, message="kubetune: error: DatasetNotFound: s3://data/train.jsonl does not exist")
    kubelet.complete_job(cluster, job, pods[1:])
    return job, pods


def test_a_deleted_namesakes_leftovers_are_waited_for_then_it_runs(cluster):
    name = "namesake"
    cluster.pause_gc()  # the lag: the leftovers' owner is gone, the garbage collector has not got to them yet
    old_job, old_pods = leftover_job(cluster, name)
    with cluster.operator(namespaces=(NS,)):
        cluster.create(job_manifest(name, NS))
        blocked = wait_for(lambda: condition(cluster, name, "AttemptBlocked"), message="AttemptBlocked")
        assert (blocked["status"], blocked["reason"]) == ("True", "WaitingForLeftovers") and f"Job {name}-a1" in blocked["message"]
        time.sleep(1.0)
        st = status(cluster, name)
        assert st.get("phase") == "Pending", f"a leftover Complete Job or failed pod must decide nothing: {st.get('phase')}/{st.get('reason')}"
        old_uid = old_job["metadata"]["uid"]
        assert cluster.get("Job", NS, f"{name}-a1")["metadata"]["uid"] == old_uid, "the leftover is neither adopted nor deleted"
        assert ("Normal", "WaitingForLeftovers") in [(e["type"], e["reason"]) for e in cluster.events(NS, name)]
        # The garbage collector catches up.
        cluster.resume_gc()
        for pod in old_pods:
            cluster.delete("Pod", NS, pod["metadata"]["name"])
        # The old Job only (a UID precondition): the collector may have removed it already and the operator
        # created the new job's own namesake-a1, which a delete by name would take (CI saw that: attempt 2).
        cluster.delete("Job", NS, f"{name}-a1", uid=old_job["metadata"]["uid"])
        new_job = wait_for(lambda: (lambda j: j if j and j["metadata"]["uid"] != old_uid else None)(cluster.get("Job", NS, f"{name}-a1")),
                           timeout=45, message="the new job's own attempt")
        new_uid = cluster.get("FineTuneJob", NS, name)["metadata"]["uid"]
        assert new_job["metadata"]["ownerReferences"][0]["uid"] == new_uid
        running(cluster, name)
        assert condition(cluster, name, "AttemptBlocked")["status"] == "False"


def test_a_drain_restarts_without_counting(cluster):
    name = "drained"
    with cluster.operator(namespaces=(NS,)):
        cluster.create(job_manifest(name, NS, runPolicy={"maxRestarts": 0, "backoffSeconds": 0}))
        job, pods = running(cluster, name)
        # The drained pod is evicted and gone before the operator looks: only the Job's verdict shows why.
        cluster.delete("Pod", NS, pods[0]["metadata"]["name"])
        kubelet.fail_job(cluster, job, "PodFailurePolicy",
                         f"Pod {NS}/{pods[0]['metadata']['name']} has condition DisruptionTarget matching FailJob rule at index 2")
        wait_for(lambda: cluster.get("Job", NS, f"{name}-a2"), message="attempt 2")
        st = status(cluster, name)
        assert st["restarts"] == 0 and st["attempt"] == 2 and st["phase"] != "Failed"


def test_an_operator_restart_writes_nothing_for_running_jobs(cluster):
    names = [f"steady-{i}" for i in range(20)]
    with cluster.operator(namespaces=(NS,)):
        for name in names:
            cluster.create(job_manifest(name, NS))
        for name in names:
            running(cluster, name)
        time.sleep(0.5)
    since = len(cluster.operator_calls())
    with cluster.operator(namespaces=(NS,)) as op:
        wait_for(lambda: all((NS, n) in op.reconciler.states for n in names), message="all jobs seen")
        time.sleep(3.0)  # every loop has synced and decided at least once
        patches, events = operator_writes(cluster, since)
    assert patches == [] and events == []
    assert all(status(cluster, n).get("phase") == "Running" for n in names)


def test_a_job_deleted_while_the_operator_is_down_goes(cluster):
    name = "orphaned"
    with cluster.operator(namespaces=(NS,)):
        cluster.create(job_manifest(name, NS))
        wait_for(lambda: cluster.get("Job", NS, f"{name}-a1"), message="attempt 1")
    assert not cluster.get("FineTuneJob", NS, name)["metadata"].get("finalizers")
    cluster.delete("FineTuneJob", NS, name)
    assert cluster.get("FineTuneJob", NS, name) is None


def test_observed_generation_follows_a_run_policy_edit(cluster):
    name = "edited"
    with cluster.operator(namespaces=(NS,)):
        cluster.create(job_manifest(name, NS))
        running(cluster, name)
        cluster.patch("FineTuneJob", NS, name, {"spec": {"runPolicy": {"maxRestarts": 7, "backoffSeconds": 0}}})
        wait_for(lambda: status(cluster, name).get("observedGeneration") == 2, message="observedGeneration 2")


def test_a_missing_peering_object_is_reported_with_what_to_do(cluster, caplog):
    from kubetune_operator.settings import OperatorSettings

    settings = OperatorSettings(standalone=False, peering_name="nobody-created-this", peering_required=True, peering_priority=10,
                                metrics_port=0, health_port=0)
    # A peered operator of one namespace: the chart's RBAC for that (HA, namespaced: KopfPeering rules).
    cluster.install_operator_rbac({"replicaCount": 2, "watch": {"scope": "namespaced", "namespaces": [NS]}})
    with caplog.at_level(logging.ERROR, logger="kubetune.operator"), cluster.operator(settings=settings, namespaces=(NS,)):
        wait_for(lambda: [r for r in caplog.records if "does not exist" in r.getMessage()], message="the peering error")
    message = next(r.getMessage() for r in caplog.records if "does not exist" in r.getMessage())
    assert "'nobody-created-this'" in message and "KopfPeering" in message and "--standalone" in message
