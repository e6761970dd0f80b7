"""Pure builders: a FineTuneJob -> the objects the operator creates. Fast, no I/O."""
import json
import re

import kubernetes_validate
import pytest

from kubetune_operator import builders
from kubetune_operator.settings import OperatorSettings
from support.manifests import job_manifest
from support.tls import local_pki

REPORTING = OperatorSettings(report_url="https://kubetune-report.kubetune.svc:8443", report_tls_cert=str(local_pki().cert),
                             report_tls_key=str(local_pki().key), report_ca=str(local_pki().ca))

def live(manifest, uid="uid-1", generation=1):
    manifest["metadata"].update(uid=uid, generation=generation)
    return manifest


def by_kind(objs):
    return {o["kind"]: o for o in objs}


def container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def test_objects_in_creation_order_all_owned_and_valid_strict():
    objs = builders.build_objects(live(job_manifest("llama", "ml")), REPORTING)
    # No per-job ServiceAccount, Role or RoleBinding: pods hold no API permission at all.
    assert [o["kind"] for o in objs] == ["ConfigMap", "Service", "Job"]
    for o in objs:
        assert o["metadata"]["namespace"] == "ml"
        assert o["metadata"]["labels"]["kubetune.io/job"] == "llama"
        assert o["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        kubernetes_validate.validate(o, "1.33", strict=True)  # raises on unknown fields or bad types


def test_rendering_without_a_live_object_has_no_owner_references():
    objs = builders.build_objects(job_manifest("offline", "ml"))
    assert all("ownerReferences" not in o["metadata"] for o in objs)


@pytest.mark.parametrize("nodes,gpus,procs,expected_procs", [(1, 0, None, 1), (4, 8, None, 8), (2, 0, 3, 3)])
def test_torchrun_gang_arguments(nodes, gpus, procs, expected_procs):
    dist = {"nodes": nodes, "gpusPerNode": gpus}
    if procs:
        dist["processesPerNode"] = procs
    ws = nodes * expected_procs
    job = builders.build_batch_job(live(job_manifest("g", "ml", distributed=dist, training={"maxSteps": 1, "globalBatchSize": ws})),
                                   OperatorSettings(rendezvous_port=29400), attempt=3)
    spec = job["spec"]
    assert spec["completions"] == spec["parallelism"] == nodes and spec["completionMode"] == "Indexed"
    c = container(job)
    assert c["args"][:5] == [f"--nnodes={nodes}", f"--nproc-per-node={expected_procs}", "--node-rank=$(JOB_COMPLETION_INDEX)",
                             "--master-addr=g-a3-0.g", "--master-port=29400"]
    assert c["args"][5:] == ["-m", "kubetune_trainer", "--config", "/etc/kubetune/finetunejob.json"]
    env = {e["name"]: e for e in c["env"]}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["KUBETUNE_ATTEMPT"]["value"] == "3"
    assert job["metadata"]["name"] == "g-a3" and job["metadata"]["labels"]["kubetune.io/attempt"] == "3"
    gpu = (c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu")
    assert gpu == (str(gpus) if gpus else None)


def test_resources_shm_scratch_and_scheduling_passthrough():
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}]}}}
    m = live(job_manifest("r", "ml", resources={"requests": {"cpu": "32", "memory": "200Gi"}, "limits": {"memory": "240Gi"},
                                                "shmSize": "64Gi", "scratchSize": "500Gi"},
                          affinity=affinity, priorityClassName="train", schedulerName="volcano",
                          tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                          imagePullPolicy="Always", image="registry.example.com/trainer:1"))
    job = builders.build_batch_job(m, OperatorSettings(image_pull_secrets=("regcred",)), 1)
    pod = job["spec"]["template"]["spec"]
    c = container(job)
    assert c["resources"] == {"requests": {"cpu": "32", "memory": "200Gi", "nvidia.com/gpu": "8"},
                              "limits": {"memory": "240Gi", "nvidia.com/gpu": "8"}}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert vols["scratch"]["emptyDir"] == {"sizeLimit": "500Gi"}

    assert pod["affinity"] == affinity and pod["priorityClassName"] == "train" and pod["schedulerName"] == "volcano"
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert c["image"] == "registry.example.com/trainer:1" and c["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["terminationGracePeriodSeconds"] == 300 and c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # torchrun must give the workers (nearly) the whole grace period to commit a checkpoint
    # after SIGTERM, and must pass their exit codes 3/75 through to the pod's status.
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert 250 <= int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) < 300
    assert c["command"] == ["python", "-m", "kubetune_trainer.torchrun"]


def test_trainer_root_filesystem_is_read_only_with_bounded_writable_volumes():
    """readOnlyRootFilesystem: the trainer writes only to /scratch (HOME and
    HF_HOME point there), /tmp and /dev/shm, each an emptyDir with a sizeLimit,
    so a runaway job is evicted instead of filling the node's disk."""
    job = [o for o in builders.build_objects(live(job_manifest("ro", "ml"))) if o["kind"] == "Job"][0]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    writable = {path: name for path, name in mounts.items() if "emptyDir" in vols[name]}
    assert set(writable) == {builders.SCRATCH_DIR, "/tmp", "/dev/shm"}
    assert all(vols[name]["emptyDir"].get("sizeLimit") for name in writable.values())
    assert vols["scratch"]["emptyDir"] == {"sizeLimit": builders.DEFAULT_SCRATCH_SIZE}  # no scratchSize in the spec
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOME"].startswith(builders.SCRATCH_DIR + "/") and env["HF_HOME"].startswith(builders.SCRATCH_DIR + "/")
    # Read-only mounts stay read-only.
    for m in container["volumeMounts"]:
        if "emptyDir" not in vols[m["name"]]:
            assert m.get("readOnly") is True, m

def test_operator_defaults_fill_storage_and_image_and_show_in_the_config():
    m = live(job_manifest("d", "ml", storage={"region": "eu-west-1"}))
    settings = OperatorSettings(trainer_image="trainer:dev", default_storage_endpoint="http://minio:9000",
                                default_storage_region="us-east-1", default_storage_secret="team-s3")
    objs = by_kind(builders.build_objects(m, settings))
    config = builders.manifest_from_config_map(objs["ConfigMap"])
    assert config["spec"]["storage"] == {"endpoint": "http://minio:9000", "region": "eu-west-1", "addressingStyle": "auto",
                                         "secretRef": {"name": "team-s3"}}
    assert config["spec"]["image"] == "trainer:dev" and config["spec"]["training"]["learningRate"] == 2e-4
    env = {e["name"]: e for e in container(objs["Job"])["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "team-s3"
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_no_storage_secret_means_no_credentials_in_env_and_no_reporter_means_no_token():
    m = live(job_manifest("n", "ml", storage={}))
    job = builders.build_batch_job(m, OperatorSettings(status_reporter=False), 1)
    env = {e["name"] for e in container(job)["env"]}
    assert not env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KUBETUNE_REPORTER"}
    assert "report-token" not in {v["name"] for v in job["spec"]["template"]["spec"]["volumes"]}
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]  # the namespace's default, without a token
    # Reporting on, but no endpoint URL to give the pods: no token either.
    unreachable = builders.build_batch_job(m, OperatorSettings(), 1)
    assert "report-token" not in {v["name"] for v in unreachable["spec"]["template"]["spec"]["volumes"]}
    assert "KUBETUNE_REPORTER" not in {e["name"] for e in container(unreachable)["env"]}


def test_report_token_has_the_kubetune_audience_and_no_api_token_is_mounted():
    job = builders.build_batch_job(live(job_manifest("t", "ml")), REPORTING, 1)
    pod = job["spec"]["template"]["spec"]
    token = next(v for v in pod["volumes"] if v["name"] == "report-token")
    assert token["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "kubetune.io/report", "path": "token", "expirationSeconds": 3600}}]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    mounts = {m["mountPath"] for m in container(job)["volumeMounts"]}
    assert "/var/run/secrets/kubetune.io/report" in mounts
    assert "/var/run/secrets/kubernetes.io/serviceaccount" not in mounts  # client libraries find no in-cluster credential
    env = {e["name"]: e.get("value") for e in container(job)["env"]}
    assert env["KUBETUNE_REPORT_URL"] == "https://kubetune-report.kubetune.svc:8443"
    assert env["KUBETUNE_REPORT_CA"] == f"{builders.CONFIG_DIR}/{builders.REPORT_CA_KEY}"
    assert builders.build_config_map(live(job_manifest("t", "ml")), REPORTING)["data"][builders.REPORT_CA_KEY] == local_pki().ca.read_text()
    assert env["KUBETUNE_REPORT_TOKEN"] == "/var/run/secrets/kubetune.io/report/token" and env["KUBETUNE_REPORTER"] == "kubernetes"


def test_kueue_and_suspend_create_the_job_suspended():
    assert builders.build_batch_job(live(job_manifest("k", "ml", queueName="q")), OperatorSettings(), 1)["spec"]["suspend"] is True
    assert builders.build_batch_job(live(job_manifest("s", "ml", suspend=True)), OperatorSettings(), 1)["spec"]["suspend"] is True
    plain = builders.build_batch_job(live(job_manifest("p", "ml")), OperatorSettings(), 1)
    assert plain["spec"]["suspend"] is False and "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]


def test_spec_hashes_name_changed_fields_and_ignore_mutable_ones():
    a = job_manifest("h", "ml")
    b = job_manifest("h", "ml", training={"maxSteps": 200, "globalBatchSize": 16}, suspend=True, runPolicy={"maxRestarts": 9})
    ha = builders.spec_hashes(builders.normalized_spec(a))
    hb = builders.spec_hashes(builders.normalized_spec(b))
    assert {k for k in ha if ha[k] != hb[k]} == {"training"}
    assert "suspend" not in ha and "runPolicy" not in ha
    job = builders.build_batch_job(live(a), OperatorSettings(), 1)
    assert json.loads(job["metadata"]["annotations"][builders.ANNOTATION_SPEC_HASHES]) == ha


@pytest.mark.parametrize("mutate,needle", [
    (lambda m: m["metadata"].update(name="x" * 53), "at most 52"),
    (lambda m: m["spec"]["training"].update(globalBatchSize=10), "globalBatchSize"),
    (lambda m: m["spec"].pop("model"), "model"),
    (lambda m: m["spec"].update(unknownField=1), "unknownField"),
])
def test_invalid_manifests_raise_with_the_field_path(mutate, needle):
    m = job_manifest("bad", "ml")
    mutate(m)
    with pytest.raises(builders.InvalidJob, match=needle):
        builders.build_objects(m)


def test_settings_from_env_and_errors():
    s = OperatorSettings.from_env({
        "KUBETUNE_TRAINER_IMAGE": "img:1", "KUBETUNE_WATCH_NAMESPACES": "a, b,", "KUBETUNE_STANDALONE": "true",
        "KUBETUNE_METRICS_PORT": "0", "KUBETUNE_STATUS_REPORTER": "false", "KUBETUNE_RESYNC_SECONDS": "5",
        "KUBETUNE_DEFAULT_STORAGE_SECRET": "s3", "KUBETUNE_IMAGE_PULL_SECRETS": "r1,r2",
    })
    assert (s.trainer_image, s.watch_namespaces, s.standalone, s.metrics_port, s.status_reporter, s.resync_seconds) == \
        ("img:1", ("a", "b"), True, 0, False, 5.0)
    r = OperatorSettings.from_env({"KUBETUNE_REPORT_URL": "http://kubetune-report.kubetune.svc:8443/", "KUBETUNE_REPORT_PORT": "9443",
                                   "KUBETUNE_REPORT_INTERVAL_SECONDS": "2.5", "KUBETUNE_REPORT_INSECURE_HTTP": "true"})
    assert (r.report_url, r.report_port, r.report_interval_seconds, r.reports_progress, r.report_insecure_http) == \
        ("http://kubetune-report.kubetune.svc:8443", 9443, 2.5, True, True)
    assert s.default_storage_secret == "s3" and s.image_pull_secrets == ("r1", "r2")
    assert OperatorSettings.from_env({}) == OperatorSettings()
    for env, needle in [({"KUBETUNE_METRICS_PORT": "x"}, "integer"), ({"KUBETUNE_STANDALONE": "maybe"}, "true or false"),
                        ({"KUBETUNE_RUN_AS_USER": "0"}, "root"), ({"KUBETUNE_IMAGE_PULL_POLICY": "Sometimes"}, "Always"),
                        ({"KUBETUNE_REPORT_URL": "kubetune-report:8443"}, "http:// or https://"),
                        ({"KUBETUNE_REPORT_INTERVAL_SECONDS": "-1"}, "seconds")]:
        with pytest.raises(ValueError, match=needle):
            OperatorSettings.from_env(env)


def test_env_pull_secrets_pod_labels_and_annotations_pass_through():
    m = live(job_manifest("p", "ml", env=[{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "HF_HOME", "value": "/models"}],
                          imagePullSecrets=["team-registry"], podLabels={"cost-center": "ml-42"},
                          podAnnotations={"sidecar.istio.io/inject": "false"}))
    job = builders.build_batch_job(m, OperatorSettings(image_pull_secrets=("regcred", "team-registry")), 1)
    tmpl = job["spec"]["template"]
    env = {e["name"]: e.get("value") for e in container(job)["env"]}
    assert env["NCCL_DEBUG"] == "INFO" and env["HF_HOME"] == "/models" and env["KUBETUNE_JOB_NAME"] == "p"
    assert [e["name"] for e in container(job)["env"]].count("HF_HOME") == 1
    assert tmpl["spec"]["imagePullSecrets"] == [{"name": "team-registry"}, {"name": "regcred"}]
    assert tmpl["metadata"]["labels"]["cost-center"] == "ml-42" and tmpl["metadata"]["labels"]["kubetune.io/job"] == "p"
    assert tmpl["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    kubernetes_validate.validate(job, "1.33", strict=True)


def test_user_service_account_runs_the_pods_and_gets_no_role():
    m = live(job_manifest("irsa", "ml", serviceAccountName="s3-reader", storage={}))
    objs = by_kind(builders.build_objects(m, REPORTING))
    assert set(objs) == {"ConfigMap", "Service", "Job"}
    assert objs["Job"]["spec"]["template"]["spec"]["serviceAccountName"] == "s3-reader"
    assert objs["Job"]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("spec,needle", [
    ({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}, "spec.env[0].name: AWS_SECRET_ACCESS_KEY is set by the operator"),
    ({"env": [{"name": "KUBETUNE_JOB_NAME", "value": "x"}]}, "KUBETUNE_JOB_NAME"),
    ({"podLabels": {"kubetune.io/job": "other"}}, "reserved"),
])
def test_operator_owned_env_and_labels_are_refused(spec, needle):
    with pytest.raises(builders.InvalidJob, match=re.escape(needle)):
        builders.build_objects(job_manifest("o", "ml", **spec))


def _pod(job, index, **labels):
    """A pod of a batch Job as the Job controller makes it (the template's labels, plus its own)."""
    tmpl = job["spec"]["template"]["metadata"]
    return {"metadata": {"name": f"{job['metadata']['name']}-{index}", "namespace": job["metadata"]["namespace"],
                         "labels": {**tmpl["labels"], "batch.kubernetes.io/job-completion-index": str(index), **labels}}}


def test_network_policy_lets_only_the_jobs_own_pods_in_on_every_port():
    from support.netpol import ingress_allowed

    settings = OperatorSettings(network_policy=True, rendezvous_port=29500)
    a = builders.build_objects(live(job_manifest("run-a", "ml")), settings)
    b = builders.build_objects(live(job_manifest("run-b", "ml"), uid="uid-2"), settings)
    assert [o["kind"] for o in a] == ["ConfigMap", "Service", "NetworkPolicy", "Job"]
    policy_a, policy_b = (by_kind(objs)["NetworkPolicy"] for objs in (a, b))
    assert policy_a["metadata"]["name"] == "run-a-gang" and policy_a["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    kubernetes_validate.validate(policy_a, "1.33", strict=True)
    rank0, rank1 = (_pod(by_kind(a)["Job"], i) for i in (0, 1))
    other = _pod(by_kind(b)["Job"], 0)
    outsider = {"metadata": {"name": "notebook", "namespace": "ml", "labels": {"app": "jupyter"}}}
    # A second job's pods in the same namespace, and the same job's name in another namespace.
    elsewhere = {"metadata": {**rank1["metadata"], "namespace": "ml-other"}}
    policies = [policy_a, policy_b]
    for port in (29500, 41873):  # rendezvous, and an ephemeral NCCL/gloo port
        assert ingress_allowed(policies, rank1, rank0, port) and ingress_allowed(policies, rank0, rank1, port)
        for intruder in (other, outsider, elsewhere):
            assert not ingress_allowed(policies, intruder, rank0, port), (intruder["metadata"], port)
        assert ingress_allowed(policies, _pod(by_kind(b)["Job"], 1), other, port)
    assert ingress_allowed(policies, rank0, outsider, 8888), "pods the policies do not select stay open"
    # Off (the default): no policy at all.
    assert "NetworkPolicy" not in by_kind(builders.build_objects(live(job_manifest("run-c", "ml")), OperatorSettings()))


def test_network_policy_model_is_not_blind():
    """The ingress model used above refuses and admits as the NetworkPolicy docs say."""
    from support.netpol import ingress_allowed, selects

    pod = lambda name, ns="ml", **labels: {"metadata": {"name": name, "namespace": ns, "labels": labels}}  # noqa: E731
    web, client = pod("web", app="web"), pod("client", role="client")
    deny_all = {"metadata": {"namespace": "ml"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    allow_clients_80 = {"metadata": {"namespace": "ml"}, "spec": {
        "podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": 80}]}]}}
    assert ingress_allowed([], client, web, 80)
    assert not ingress_allowed([deny_all], client, web, 80)
    assert ingress_allowed([deny_all, allow_clients_80], client, web, 80)  # policies add up
    assert not ingress_allowed([deny_all, allow_clients_80], client, web, 81)
    assert not ingress_allowed([allow_clients_80], pod("client", ns="other", role="client"), web, 80)
    assert selects({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}, {})
    assert not selects({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x"]}]}, {})


def test_resolved_manifest_fills_operator_defaults_without_touching_the_parsed_job():
    """The operator passes the job it parsed once per generation; the ConfigMap's manifest gets the
    operator's defaults, the parsed job keeps none of them (the next attempt resolves it again)."""
    settings = OperatorSettings(default_storage_endpoint="http://s3.example:9000", default_storage_region="eu-1",
                                default_storage_secret="s3-creds", trainer_image="registry.example/trainer:1")
    manifest = job_manifest("defaults", "ns")
    del manifest["spec"]["storage"]["secretRef"]
    parsed = builders.parse_runnable_job(manifest)
    before = parsed.model_dump()
    out = builders.resolved_manifest(manifest, settings, parsed)
    assert parsed.model_dump() == before
    assert out == builders.resolved_manifest(manifest, settings)
    storage, spec = out["spec"]["storage"], out["spec"]
    assert (storage["endpoint"], storage["region"], storage["secretRef"]) == ("http://s3.example:9000", "eu-1", {"name": "s3-creds"})
    assert spec["image"] == "registry.example/trainer:1" and spec["imagePullPolicy"] == settings.image_pull_policy
    assert spec["training"]["learningRate"] == parsed.spec.training.resolved_learning_rate(parsed.spec.method.type)
    assert spec["distributed"]["processesPerNode"] == parsed.spec.distributed.procs_per_node()
