"""The faithful test cluster itself (tests/support): each real-cluster behaviour, shown with plain
kubernetes-client calls, as any client would see it. README.md in tests/support names the upstream
document each one follows."""
import json
import time

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from support import kubelet
from support.cluster import ApiError, EmulatedCluster, wait_for
from support.emulator import JOB_TRACKING_FINALIZER, Semantics
from support.manifests import job_manifest

NS = "sem"


@pytest.fixture(scope="module")
def real():
    with EmulatedCluster(semantics=Semantics(max_grace_seconds=1.0)) as c:
        c.ensure_namespace(NS)
        yield c


def client_for(cluster, token=None):
    conf = kubernetes.client.Configuration()
    conf.host = cluster.url
    conf.api_key = {"authorization": f"Bearer {token or cluster.session.headers['Authorization'].split()[-1]}"}
    return kubernetes.client.ApiClient(conf)


@pytest.fixture(scope="module")
def api(real):
    c = client_for(real)
    return kubernetes.client.CoreV1Api(c), kubernetes.client.BatchV1Api(c), kubernetes.client.CustomObjectsApi(c)


def status_of(exc: ApiException) -> dict:
    return json.loads(exc.body)


def pod_body(name, **labels):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "trainer", "image": "img"}], "restartPolicy": "Never",
                     "terminationGracePeriodSeconds": 30}}


def indexed_job(name, completions=2, **spec):
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"completionMode": "Indexed", "completions": completions, "parallelism": completions,
                     "backoffLimit": spec.pop("backoffLimit", 0),
                     "template": {"spec": {"containers": [{"name": "trainer", "image": "img"}], "restartPolicy": "Never"}},
                     **spec}}


def job_pods(cluster, name):
    return sorted(cluster.list("Pod", NS, label_selector=f"batch.kubernetes.io/job-name={name}"),
                  key=lambda p: p["metadata"]["name"])


def cond(obj, ctype):
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype and c["status"] == "True"), None)


# -------------------------------------------------------------- pod termination
def test_deleted_running_pod_lingers_for_its_grace_period_until_the_kubelet_ends_it(real, api):
    core, _, _ = api
    core.create_namespaced_pod(NS, pod_body("linger"))
    kubelet.run(real, real.get("Pod", NS, "linger"))
    core.delete_namespaced_pod("linger", NS)
    pod = real.get("Pod", NS, "linger")
    assert pod["metadata"]["deletionTimestamp"] and pod["metadata"]["deletionGracePeriodSeconds"] == 30
    assert pod["status"]["phase"] == "Running"  # still running: SIGTERM, not gone
    kubelet.terminate(real, pod, 75)
    wait_for(lambda: real.get("Pod", NS, "linger") is None, message="pod gone once terminated")


def test_grace_period_ends_with_a_kill(real, api):
    core, _, _ = api
    core.create_namespaced_pod(NS, pod_body("stubborn"))
    kubelet.run(real, real.get("Pod", NS, "stubborn"))
    core.delete_namespaced_pod("stubborn", NS)
    wait_for(lambda: real.get("Pod", NS, "stubborn") is None, timeout=5, message="killed after the (capped) grace period")
    history = next(obj.history for key, obj in list(real.emulator._objects.items()) if key[2] == "stubborn")
    final = [v for v in history if v][-1]  # its last state: killed
    assert final["status"]["phase"] == "Failed"
    assert final["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137


def test_unscheduled_pod_goes_at_once(real, api):
    core, _, _ = api
    core.create_namespaced_pod(NS, pod_body("never-scheduled"))
    core.delete_namespaced_pod("never-scheduled", NS)
    assert real.get("Pod", NS, "never-scheduled") is None


# ----------------------------------------------------------------- eviction
def test_eviction_api_sets_disruption_target_then_deletes_gracefully(real, api):
    core, _, _ = api
    core.create_namespaced_pod(NS, pod_body("evictee"))
    kubelet.run(real, real.get("Pod", NS, "evictee"))
    core.create_namespaced_pod_eviction("evictee", NS, kubernetes.client.V1Eviction(
        metadata=kubernetes.client.V1ObjectMeta(name="evictee", namespace=NS)))
    pod = real.get("Pod", NS, "evictee")
    c = cond(pod, "DisruptionTarget")
    assert c and c["reason"] == "EvictionByEvictionAPI"
    assert pod["metadata"]["deletionTimestamp"] and pod["status"]["phase"] == "Running"


def test_scheduler_preemption_and_taint_eviction_mark_the_pod_first(real, api):
    core, _, _ = api
    for name, how in (("preempted", kubelet.preempt), ("tainted", kubelet.taint_evict)):
        core.create_namespaced_pod(NS, pod_body(name))
        kubelet.run(real, real.get("Pod", NS, name))
        how(real, real.get("Pod", NS, name))
        pod = real.get("Pod", NS, name)
        assert cond(pod, "DisruptionTarget")["reason"] == {"preempted": "PreemptionByScheduler", "tainted": "DeletionByTaintManager"}[name]
        assert pod["metadata"]["deletionTimestamp"]


# ----------------------------------------------------------- garbage collection
def _owner_and_dependent(real, name, block=True):
    owner = real.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": owner["metadata"]["uid"], "blockOwnerDeletion": block}
    dep = real.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-dep", "namespace": NS, "ownerReferences": [ref]}})
    return owner, dep


def test_background_gc_is_asynchronous(real, api):
    core, _, _ = api
    _owner_and_dependent(real, "bg")
    real.pause_gc()
    try:
        core.delete_namespaced_config_map("bg", NS, propagation_policy="Background")
        assert real.get("ConfigMap", NS, "bg") is None
        time.sleep(0.3)
        assert real.get("ConfigMap", NS, "bg-dep") is not None  # the collector has not run yet
    finally:
        real.resume_gc()
    wait_for(lambda: real.get("ConfigMap", NS, "bg-dep") is None, message="dependent collected")


def test_foreground_deletion_keeps_the_owner_until_blocking_dependents_are_gone(real, api):
    _, batch, _ = api
    batch.create_namespaced_job(NS, indexed_job("fg", completions=1))
    pods = wait_for(lambda: job_pods(real, "fg"))
    kubelet.run(real, pods[0])
    batch.delete_namespaced_job("fg", NS, propagation_policy="Foreground")
    job = real.get("Job", NS, "fg")
    assert job["metadata"]["deletionTimestamp"] and "foregroundDeletion" in job["metadata"]["finalizers"]
    pod = wait_for(lambda: (lambda p: p if p and p[0]["metadata"].get("deletionTimestamp") else None)(job_pods(real, "fg")))[0]
    assert real.get("Job", NS, "fg") is not None  # its pod is still terminating
    kubelet.terminate(real, pod, 75)
    wait_for(lambda: real.get("Job", NS, "fg") is None and not job_pods(real, "fg"), message="pod, then Job gone")


def test_orphan_propagation_keeps_dependents_without_the_owner_reference(real, api):
    core, _, _ = api
    _owner_and_dependent(real, "orph")
    core.delete_namespaced_config_map("orph", NS, propagation_policy="Orphan")
    wait_for(lambda: real.get("ConfigMap", NS, "orph") is None)
    time.sleep(0.2)
    dep = real.get("ConfigMap", NS, "orph-dep")
    assert dep is not None and not dep["metadata"].get("ownerReferences")


def test_an_object_created_for_a_vanished_owner_is_collected(real):
    real.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late", "namespace": NS, "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "gone", "uid": "00000000-dead-beef-0000-000000000000"}]}})
    wait_for(lambda: real.get("ConfigMap", NS, "late") is None, message="collected")


# ----------------------------------------------------------------- Job controller
def test_job_controller_creates_indexed_pods_with_tracking_finalizer_and_completes(real, api):
    _, batch, _ = api
    batch.create_namespaced_job(NS, indexed_job("ok", completions=2))
    pods = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(job_pods(real, "ok")))
    job = real.get("Job", NS, "ok")
    for i, p in enumerate(sorted(pods, key=lambda p: p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])):
        assert p["spec"]["hostname"] == f"ok-{i}"
        assert p["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] == job["metadata"]["uid"]
        assert p["metadata"]["ownerReferences"][0]["controller"] is True
        assert JOB_TRACKING_FINALIZER in p["metadata"]["finalizers"]
        assert p["spec"]["containers"][0]["env"][0]["name"] == "JOB_COMPLETION_INDEX"
    for p in pods:
        kubelet.run(real, p)
    kubelet.terminate(real, pods[0], 0)
    time.sleep(0.2)
    assert not cond(real.get("Job", NS, "ok"), "Complete")
    kubelet.terminate(real, pods[1], 0)
    job = wait_for(lambda: (lambda j: j if cond(j, "Complete") else None)(real.get("Job", NS, "ok")))
    assert cond(job, "SuccessCriteriaMet") and job["status"]["succeeded"] == 2 and job["status"]["completedIndexes"] == "0-1"
    wait_for(lambda: all(JOB_TRACKING_FINALIZER not in (p["metadata"].get("finalizers") or []) for p in job_pods(real, "ok")))


def test_job_controller_keeps_a_declared_job_completion_index_and_appends_it_elsewhere(real, api):
    """Upstream's addCompletionIndexEnvVariable (pkg/controller/job/indexed_job_utils.go): a container that declares
    JOB_COMPLETION_INDEX keeps its own; the others get it appended, after their own variables."""
    _, batch, _ = api
    job = indexed_job("envs", completions=1)
    own = {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}
    job["spec"]["template"]["spec"]["containers"] = [
        {"name": "trainer", "image": "img", "env": [{"name": "A", "value": "1"}, own]},
        {"name": "sidecar", "image": "img", "env": [{"name": "B", "value": "2"}]},
    ]
    batch.create_namespaced_job(NS, job)
    (pod,) = wait_for(lambda: job_pods(real, "envs") or None)
    trainer, sidecar = pod["spec"]["containers"]
    assert trainer["env"] == [{"name": "A", "value": "1"}, own]
    assert [e["name"] for e in sidecar["env"]] == ["B", "JOB_COMPLETION_INDEX"]
    assert sidecar["env"][1]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-completion-index']"


def test_pod_failure_policy_fail_job_sets_failure_target_before_failed(real, api):
    _, batch, _ = api
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [3]}}]}
    batch.create_namespaced_job(NS, indexed_job("pfp", completions=2, podFailurePolicy=policy))
    pods = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(job_pods(real, "pfp")))
    for p in pods:
        kubelet.run(real, p)
    kubelet.terminate(real, pods[0], 3)
    job = wait_for(lambda: (lambda j: j if cond(j, "FailureTarget") else None)(real.get("Job", NS, "pfp")))
    assert cond(job, "FailureTarget")["reason"] == "PodFailurePolicy"
    assert "failed with exit code 3 matching FailJob rule at index 0" in cond(job, "FailureTarget")["message"]
    assert not cond(job, "Failed")  # the other pod is still terminating
    other = wait_for(lambda: (lambda p: p if p and p["metadata"].get("deletionTimestamp") else None)(real.get("Pod", NS, pods[1]["metadata"]["name"])))
    kubelet.terminate(real, other, 75)
    job = wait_for(lambda: (lambda j: j if cond(j, "Failed") else None)(real.get("Job", NS, "pfp")))
    assert cond(job, "Failed")["reason"] == "PodFailurePolicy"


def test_pod_failure_policy_ignores_disruptions_and_replaces_the_pod(real, api):
    _, batch, _ = api
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    batch.create_namespaced_job(NS, indexed_job("ign", completions=1, podFailurePolicy=policy))
    pod = wait_for(lambda: job_pods(real, "ign"))[0]
    kubelet.run(real, pod)
    real.evict(NS, pod["metadata"]["name"])
    time.sleep(0.2)
    assert [p["metadata"]["name"] for p in job_pods(real, "ign")] == [pod["metadata"]["name"]]  # no replacement while terminating
    kubelet.terminate(real, real.get("Pod", NS, pod["metadata"]["name"]), 137)
    new = wait_for(lambda: [p for p in job_pods(real, "ign") if p["metadata"]["name"] != pod["metadata"]["name"]])
    assert new[0]["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "0"
    job = real.get("Job", NS, "ign")
    assert not (job["status"].get("failed")) and not cond(job, "FailureTarget")


def test_counted_failures_beyond_the_backoff_limit_fail_the_job(real, api):
    _, batch, _ = api
    batch.create_namespaced_job(NS, indexed_job("bol", completions=1, backoffLimit=0))
    pod = wait_for(lambda: job_pods(real, "bol"))[0]
    kubelet.run(real, pod)
    kubelet.terminate(real, pod, 1)
    job = wait_for(lambda: (lambda j: j if cond(j, "Failed") else None)(real.get("Job", NS, "bol")))
    assert cond(job, "FailureTarget")["reason"] == cond(job, "Failed")["reason"] == "BackoffLimitExceeded"
    assert job["status"]["failed"] == 1


def test_active_deadline_fails_the_job(real, api):
    _, batch, _ = api
    batch.create_namespaced_job(NS, indexed_job("ads", completions=1, activeDeadlineSeconds=1))
    wait_for(lambda: job_pods(real, "ads"))
    job = wait_for(lambda: (lambda j: j if cond(j, "Failed") else None)(real.get("Job", NS, "ads")), timeout=5)
    assert cond(job, "Failed")["reason"] == "DeadlineExceeded"


def test_suspend_deletes_active_pods_and_resume_recreates_them(real, api):
    _, batch, _ = api
    batch.create_namespaced_job(NS, indexed_job("sus", completions=2))
    pods = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(job_pods(real, "sus")))
    batch.patch_namespaced_job("sus", NS, {"spec": {"suspend": True}})
    job = wait_for(lambda: (lambda j: j if cond(j, "Suspended") else None)(real.get("Job", NS, "sus")))
    assert job["status"]["active"] == 0
    wait_for(lambda: not job_pods(real, "sus"), message="pending pods deleted")
    batch.patch_namespaced_job("sus", NS, {"spec": {"suspend": False}})
    new = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(job_pods(real, "sus")))
    assert {p["metadata"]["name"] for p in new}.isdisjoint(p["metadata"]["name"] for p in pods)


def test_pods_of_a_job_deleted_before_the_controller_accounted_them_lose_their_finalizer(real, api):
    """A pod deleted (finalizer held) and its Job deleted in the background before the Job controller looked
    again: the controller releases the orphan, as upstream's does on seeing the Job deleted. Before, the pod
    stayed Terminating for ever (and an operator waiting for its gang to be gone waited with it)."""
    _, batch, _ = api
    batch.create_namespaced_job(NS, indexed_job("gone", completions=2))
    pods = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(job_pods(real, "gone")))
    emu = real.emulator

    async def delete_pod_then_job() -> None:  # one step of the API server: no controller pass in between
        async with emu._lock:
            pod_key = (emu.res("v1/pods"), NS, pods[0]["metadata"]["name"])
            await emu.delete_object(pod_key, emu._live(pod_key))
            job_key = (emu.res("batch/v1/jobs"), NS, "gone")
            await emu.delete_object(job_key, emu._live(job_key), "Background")

    real.run(delete_pod_then_job())
    wait_for(lambda: not job_pods(real, "gone"), message=f"orphans released and collected (left: {job_pods(real, 'gone')})")


# ------------------------------------------------------------ watch and re-list
def test_watch_from_a_compacted_resource_version_gets_410(real, api):
    core, _, _ = api
    rv = core.list_namespaced_config_map(NS).metadata.resource_version
    real.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after", "namespace": NS}})
    real.expire_watches()
    w = kubernetes.watch.Watch()
    with pytest.raises(ApiException) as e:
        for _ in w.stream(core.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=2):
            pass
    assert e.value.status == 410


def test_objects_deleted_during_a_watch_outage_produce_no_deleted_event(real):
    import threading

    real.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "vanishing", "namespace": NS}})
    seen = []
    core = kubernetes.client.CoreV1Api(client_for(real))
    stop = threading.Event()

    def informer():  # list, watch; on 410 list again (what Kopf and client-go informers do)
        while not stop.is_set():
            lst = core.list_namespaced_config_map(NS)
            seen.append(("LIST", {i.metadata.name for i in lst.items}))
            try:
                for ev in kubernetes.watch.Watch().stream(core.list_namespaced_config_map, NS,
                                                          resource_version=lst.metadata.resource_version, timeout_seconds=1):
                    seen.append((ev["type"], ev["object"].metadata.name))
            except ApiException as e:
                seen.append(("ERROR", e.status))

    t = threading.Thread(target=informer, daemon=True)
    t.start()
    wait_for(lambda: seen)
    with real.watch_outage():
        real.delete("ConfigMap", NS, "vanishing")
    wait_for(lambda: any(kind == "LIST" and "vanishing" not in names for kind, names in seen[1:]), message="re-listed")
    stop.set()
    assert ("ERROR", 410) in seen
    assert ("DELETED", "vanishing") not in seen


# -------------------------------------------------------- optimistic concurrency
def test_stale_resource_version_writes_get_409(real, api):
    core, _, _ = api
    cm = core.create_namespaced_config_map(NS, {"metadata": {"name": "occ"}, "data": {"a": "1"}})
    core.patch_namespaced_config_map("occ", NS, {"data": {"a": "2"}})
    cm.data = {"a": "3"}
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_config_map("occ", NS, cm)  # carries the old resourceVersion
    assert e.value.status == 409 and status_of(e.value)["reason"] == "Conflict"
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_config_map("occ", NS, {"metadata": {"resourceVersion": cm.metadata.resource_version}, "data": {"a": "4"}})
    assert e.value.status == 409
    with pytest.raises(ApiException) as e:
        core.delete_namespaced_config_map("occ", NS, body=kubernetes.client.V1DeleteOptions(
            preconditions=kubernetes.client.V1Preconditions(resource_version=cm.metadata.resource_version)))
    assert e.value.status == 409


# ------------------------------------------------------------------- validation
def test_invalid_builtin_objects_get_422_with_the_api_servers_status(real, api):
    _, batch, _ = api
    bad = indexed_job("bad-restart")
    bad["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    bad["spec"]["podFailurePolicy"] = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3]}}]}
    with pytest.raises(ApiException) as e:
        batch.create_namespaced_job(NS, bad)
    st = status_of(e.value)
    assert e.value.status == 422 and st["kind"] == "Status" and st["reason"] == "Invalid"
    assert st["message"].startswith('Job.batch "bad-restart" is invalid: [spec.template.spec.restartPolicy: Unsupported value')
    assert st["details"]["kind"] == "Job" and st["details"]["group"] == "batch"
    assert {c["field"] for c in st["details"]["causes"]} == {"spec.template.spec.restartPolicy"}
    long_name = indexed_job("x" * 64)
    with pytest.raises(ApiException) as e:
        batch.create_namespaced_job(NS, long_name)
    assert e.value.status == 422 and "must be no more than 63 characters" in status_of(e.value)["message"]
    wrong_type = indexed_job("wrong-type")
    wrong_type["spec"]["completions"] = "two"
    from support.cluster import ApiError

    with pytest.raises(ApiError) as e2:
        real.request("POST", real.path("Job", NS), wrong_type)
    assert e2.value.status == 422 and e2.value.body["details"]["causes"][0]["field"] == "spec.completions"


def test_unknown_fields_are_refused_only_with_strict_field_validation(real):
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "strict"}, "bogus": 1}
    from support.cluster import ApiError

    with pytest.raises(ApiError) as e:
        real.request("POST", real.path("ConfigMap", NS) + "?fieldValidation=Strict", body)
    assert e.value.status == 422
    real.request("POST", real.path("ConfigMap", NS), body)


def test_finetunejob_writes_are_pruned_defaulted_and_cel_checked(real, api):
    _, _, custom = api
    m = job_manifest("crd", NS)
    m["spec"]["unknownField"] = 1
    created = custom.create_namespaced_custom_object("kubetune.io", "v1alpha1", NS, "finetunejobs", m)
    assert "unknownField" not in created["spec"]  # pruned
    assert created["spec"]["runPolicy"]["terminationGraceSeconds"]  # defaulted from the schema
    bad = job_manifest("crd-bad", NS, training={"maxSteps": 10, "epochs": 1, "globalBatchSize": 16})
    with pytest.raises(ApiException) as e:
        custom.create_namespaced_custom_object("kubetune.io", "v1alpha1", NS, "finetunejobs", bad)
    st = status_of(e.value)
    assert e.value.status == 422 and st["message"].startswith('FineTuneJob.kubetune.io "crd-bad" is invalid')
    assert any(c["field"].startswith("spec.training") for c in st["details"]["causes"])
    with pytest.raises(ApiException) as e:  # a transition rule: the model is immutable
        custom.patch_namespaced_custom_object("kubetune.io", "v1alpha1", NS, "finetunejobs", "crd", {"spec": {"model": {"source": "hf://other/model"}}})
    assert e.value.status == 422
    assert [c["field"] for c in status_of(e.value)["details"]["causes"]] == ["spec.model"]
    assert "immutable" in status_of(e.value)["message"]


def test_status_is_a_subresource(real, api):
    _, _, custom = api
    custom.create_namespaced_custom_object("kubetune.io", "v1alpha1", NS, "finetunejobs", job_manifest("sub", NS))
    custom.patch_namespaced_custom_object_status("kubetune.io", "v1alpha1", NS, "finetunejobs", "sub",
                                                 {"spec": {"suspend": True}, "status": {"phase": "Running"}})
    custom.patch_namespaced_custom_object("kubetune.io", "v1alpha1", NS, "finetunejobs", "sub",
                                          {"spec": {"suspend": True}, "status": {"phase": "Succeeded"}})
    obj = real.get("FineTuneJob", NS, "sub")
    assert obj["status"]["phase"] == "Running" and obj["spec"]["suspend"] is True
    assert obj["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as e:  # the status schema applies to status writes
        custom.patch_namespaced_custom_object_status("kubetune.io", "v1alpha1", NS, "finetunejobs", "sub", {"status": {"restarts": "many"}})
    assert e.value.status == 422


# ------------------------------------------------------------------------- RBAC
def test_every_request_is_authorized_for_its_token(real):
    user = f"system:serviceaccount:{NS}:reader"
    token = real.service_account_token(NS, "reader")
    core = kubernetes.client.CoreV1Api(client_for(real, token))
    with pytest.raises(ApiException) as e:
        core.list_namespaced_config_map(NS)
    st = status_of(e.value)
    assert e.value.status == 403 and st["reason"] == "Forbidden"
    assert st["message"] == (f'configmaps is forbidden: User "{user}" cannot list resource "configmaps" '
                             f'in API group "" in the namespace "{NS}"')
    real.grant(user, [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]},
                      {"apiGroups": ["kubetune.io"], "resources": ["finetunejobs/status"], "verbs": ["patch"], "resourceNames": ["mine"]}],
               namespace=NS)
    core.list_namespaced_config_map(NS)
    with pytest.raises(ApiException) as e:
        core.list_namespaced_config_map("default")  # a RoleBinding grants only in its namespace
    assert e.value.status == 403
    custom = kubernetes.client.CustomObjectsApi(client_for(real, token))
    with pytest.raises(ApiException) as e:  # resourceNames: only "mine"
        custom.patch_namespaced_custom_object_status("kubetune.io", "v1alpha1", NS, "finetunejobs", "sub", {"status": {}})
    assert e.value.status == 403
    with pytest.raises(ApiException) as e:
        kubernetes.client.CoreV1Api(client_for(real, "not-a-token")).list_namespaced_config_map(NS)
    assert e.value.status == 401


def test_token_request_and_token_review(real):
    real.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "rank0", "namespace": NS}})
    path = real.path("ServiceAccount", NS, "rank0", "token")
    with pytest.raises(ApiError) as missing:  # a token can only be bound to a pod that exists
        real.request("POST", path, {"spec": {"audiences": ["kubetune"], "boundObjectRef": {"kind": "Pod", "name": "p-0"}}})
    assert missing.value.status == 404
    pod = real.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p-0", "namespace": NS},
                       "spec": {"containers": [{"name": "c", "image": "i"}]}})
    tr = real.request("POST", path, {"spec": {"audiences": ["kubetune"], "boundObjectRef": {"kind": "Pod", "name": "p-0"}}})
    token = tr["status"]["token"]
    review = real.create({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": ["kubetune"]}})
    assert review["status"]["authenticated"] is True
    assert review["status"]["user"]["username"] == f"system:serviceaccount:{NS}:rank0"
    assert review["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["p-0"]
    assert review["status"]["user"]["extra"]["authentication.kubernetes.io/pod-uid"] == [pod["metadata"]["uid"]]
    wrong = real.create({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": ["other"]}})
    assert wrong["status"]["authenticated"] is False
    # Without spec.audiences the API server's own are meant: a token for another audience is not one of them.
    api = real.create({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
    assert api["status"]["authenticated"] is False
    # A bound token dies with its pod.
    real.delete("Pod", NS, "p-0", grace_seconds=0)
    wait_for(lambda: real.get("Pod", NS, "p-0") is None, message="pod gone")
    gone = real.create({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": ["kubetune"]}})
    assert gone["status"]["authenticated"] is False


def test_a_token_for_another_audience_is_refused_by_the_api_server():
    with EmulatedCluster(semantics=Semantics()) as c:  # RBAC is the subject: on whatever KUBETUNE_TEST_SEMANTICS says
        c.ensure_namespace("aud")
        c.grant("system:serviceaccount:aud:default", [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}], namespace="aud")
        assert c.as_token(c.service_account_token("aud", "default")).list("ConfigMap", "aud") == []
        with pytest.raises(ApiError) as refused:
            c.as_token(c.service_account_token("aud", "default", ("kubetune.io/report",))).list("ConfigMap", "aud")
        assert refused.value.status == 401


# ------------------------------------------------------------------------ faults
def test_fault_injection_429_500_and_timeouts(real, api):
    core, _, _ = api
    fault = real.inject(verb="list", resource="secrets", status=429, retry_after=2, times=None)
    with pytest.raises(ApiException) as e:
        core.list_namespaced_secret(NS)
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "2"
    real.emulator.faults.remove(fault)
    core.list_namespaced_secret(NS)
    real.inject(verb="get", resource="configmaps", status=500, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as e:
            core.read_namespaced_config_map("strict", NS)
        assert e.value.status == 500
    slow = real.inject(verb="list", resource="services", status=None, delay=1.0, times=None)
    import urllib3

    with pytest.raises((urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.MaxRetryError)):
        core.list_namespaced_service(NS, _request_timeout=0.2)  # the client's retries time out too
    assert slow.hits >= 1
    real.emulator.faults.remove(slow)
