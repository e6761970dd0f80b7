"""Pure builders: a FineTuneJob manifest -> the Kubernetes objects that run it.

No I/O here: every function takes dicts and settings and returns dicts, so the
operator, `kubetune render` and the unit tests share one truth.

Per job (names derived from the FineTuneJob's name ``N``):
- ConfigMap ``N-config``: the resolved manifest (defaults filled), the
  trainer's ``--config``;
- headless Service ``N``: DNS for the gang, ``<N>-a<k>-<index>.N``;
- with ``KUBETUNE_NETWORK_POLICY``: NetworkPolicy ``N-gang``, under which the
  job's pods accept connections only from the job's own pods;
- per attempt ``k``: an Indexed batch/v1 Job ``N-a<k>``, one pod per node.
"""
from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kubetune_api import contract
from kubetune_api import spec as api
from kubetune_operator.settings import OperatorSettings

# Labels and annotations the operator sets on what it creates.
LABEL_JOB = "kubetune.io/job"  # FineTuneJob name
LABEL_ATTEMPT = "kubetune.io/attempt"  # attempt number of a batch Job and its pods
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_SPEC_HASHES = "kubetune.io/spec-hashes"  # per-field hashes of the spec an attempt was built from
ANNOTATION_GENERATION = "kubetune.io/generation"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

CONTAINER = "trainer"
CONFIG_KEY = "finetunejob.json"  # JSON is YAML too: the trainer reads either
CONFIG_DIR = "/etc/kubetune"
SCRATCH_DIR = "/scratch"
# Rank 0's report credential: a projected token of the pod's service account with an audience
# only the operator accepts (the API server refuses it), mounted away from the API token's path.
REPORT_AUDIENCE = "kubetune.io/report"
REPORT_TOKEN_DIR = "/var/run/secrets/kubetune.io/report"
REPORT_TOKEN_SECONDS = 3600
# The CA trainer pods verify the report endpoint against: a key of the job's ConfigMap
# (mounted at CONFIG_DIR), so pods get it without any Secret.
REPORT_CA_KEY = "report-ca.crt"
# The container's root filesystem is read-only; these are its only writable
# places besides /dev/shm. Scratch holds the model cache and checkpoints before
# upload, so its limit is large; a pod that exceeds a sizeLimit is evicted
# instead of filling the node's disk.
DEFAULT_SCRATCH_SIZE = "100Gi"
TMP_DIR = "/tmp"
TMP_SIZE = "8Gi"
PERMANENT_EXIT_CODE = contract.PERMANENT
MAX_NAME_LENGTH = contract.MAX_JOB_NAME_LENGTH

# Environment variables the operator sets in trainer pods (the trainer's contract);
# spec.env may not set them. Other KUBETUNE_* names are the operator's too, except these.
OPERATOR_ENV = frozenset({
    "JOB_COMPLETION_INDEX", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN",
})
USER_KUBETUNE_ENV = frozenset({"KUBETUNE_STATUS_INTERVAL"})

MUTABLE_SPEC_FIELDS = contract.MUTABLE_SPEC_FIELDS


class InvalidJob(ValueError):
    """A manifest the operator cannot run; the message says what and where."""


# ------------------------------------------------------------------- names
def service_name(job: str) -> str:
    return job


def config_map_name(job: str) -> str:
    return f"{job}-config"


def network_policy_name(job: str) -> str:
    return f"{job}-gang"


def batch_job_name(job: str, attempt: int) -> str:
    return f"{job}-a{attempt}"


def rank0_address(job: str, attempt: int) -> str:
    """DNS name of rank 0's pod (resolves inside the job's namespace)."""
    return f"{batch_job_name(job, attempt)}-0.{service_name(job)}"


# ------------------------------------------------------------------ parsing
def parse_runnable_job(job_dict: dict[str, Any]) -> api.FineTuneJob:
    """Validate a manifest with the API model and the operator's own rules; raise InvalidJob with field paths."""
    from pydantic import ValidationError

    meta = job_dict.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not name or not isinstance(name, str):
        raise InvalidJob("metadata.name is required (a string)")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidJob(
            f"metadata.name {name!r} has {len(name)} characters; at most {MAX_NAME_LENGTH} fit "
            f"the pod hostnames '<name>-a<attempt>-<index>' (63). Use a shorter name."
        )
    body = {k: v for k, v in job_dict.items() if k in ("apiVersion", "kind", "metadata", "spec")}
    try:
        job = api.load_job(body)
    except ValidationError as e:
        raise InvalidJob("; ".join(contract.validation_messages(e))) from None
    for i, var_name in reserved_env(job):
        raise InvalidJob(f"spec.env[{i}].name: {var_name} is set by the operator; remove it "
                         f"(credentials come from spec.storage.secretRef / hubSecretRef)")
    for key in job.spec.pod_labels:
        if key.startswith("kubetune.io/"):
            raise InvalidJob(f"spec.podLabels: {key!r}: the kubetune.io/ prefix is reserved for the operator's own labels")
    return job


def reserved_env(job: api.FineTuneJob) -> list[tuple[int, str]]:
    """(index, name) of each spec.env entry naming a variable the operator sets itself (`kubetune run` refuses them too)."""
    return [(i, var.name) for i, var in enumerate(job.spec.env)
            if var.name in OPERATOR_ENV or var.name.startswith("KUBETUNE_") and var.name not in USER_KUBETUNE_ENV]


def resolved_manifest(job_dict: dict[str, Any], settings: OperatorSettings, parsed: api.FineTuneJob | None = None) -> dict[str, Any]:
    """The manifest with every default filled in: what the trainer reads as --config.

    Operator-level defaults (storage endpoint/region/secret, image) are applied
    here so the ConfigMap shows exactly what the job runs with. ``parsed``: the
    manifest already parsed by ``parse_runnable_job`` (not modified here).
    """
    job = parsed if parsed is not None else parse_runnable_job(job_dict)
    spec = job.spec
    # Copies of only the parts that change (a deep copy of the whole job took most of this
    # function's time); ``parsed`` itself is left as it was.
    storage: dict[str, Any] = {}
    if spec.storage.endpoint is None and settings.default_storage_endpoint:
        storage["endpoint"] = settings.default_storage_endpoint
    if spec.storage.region is None and settings.default_storage_region:
        storage["region"] = settings.default_storage_region
    if spec.storage.secret_ref is None and settings.default_storage_secret:
        storage["secret_ref"] = api.SecretRef(name=settings.default_storage_secret)
    # Method-dependent defaults made explicit, so the ConfigMap shows what runs.
    changes: dict[str, Any] = {
        "storage": spec.storage.model_copy(update=storage),
        "training": spec.training.model_copy(update={"learning_rate": spec.training.resolved_learning_rate(spec.method.type)}),
        "distributed": spec.distributed.model_copy(update={"processes_per_node": spec.distributed.procs_per_node()}),
    }
    if spec.image is None:
        changes["image"] = settings.trainer_image
    if spec.image_pull_policy is None:
        changes["image_pull_policy"] = settings.image_pull_policy
    job = job.model_copy(update={"spec": spec.model_copy(update=changes)})
    spec = job.spec
    meta = job_dict.get("metadata") or {}
    out = job.model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"status", "metadata"})
    out["metadata"] = {k: meta[k] for k in ("name", "namespace") if meta.get(k)}
    recorded = (meta.get("annotations") or {}).get(api.LINEAGE_ANNOTATION)
    if recorded and spec.model.from_ is None:  # where a resolved model.from led (kubetune_operator.lineage)
        out["metadata"]["annotations"] = {api.LINEAGE_ANNOTATION: recorded}
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": out.pop("metadata"), **out}


def normalized_spec(job_dict: dict[str, Any]) -> dict[str, Any]:
    """The spec with the API model's defaults filled (no operator defaults): what a user asked for."""
    return parse_runnable_job(job_dict).spec.model_dump(by_alias=True, exclude_none=True, mode="json")


# Canonical JSON for the hashes; one encoder (json.dumps with options builds a new one per call).
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def spec_hashes(spec: dict[str, Any]) -> dict[str, str]:
    """Short hashes of each immutable top-level field of a normalized spec (to name what changed)."""
    return {
        key: hashlib.sha256(_CANONICAL_JSON.encode(value).encode()).hexdigest()[:12]
        for key, value in sorted(spec.items())
        if key not in MUTABLE_SPEC_FIELDS
    }


# ----------------------------------------------------------------- objects
def owner_reference(job_dict: dict[str, Any]) -> dict[str, Any] | None:
    meta = job_dict.get("metadata") or {}
    if not meta.get("uid"):
        return None  # rendering offline: no live owner yet
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job_dict: dict[str, Any], name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta = job_dict.get("metadata") or {}
    labels = {
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/managed-by": "kubetune-operator",
        LABEL_JOB: meta["name"],
    }
    labels.update(extra_labels or {})
    out: dict[str, Any] = {"name": name, "labels": labels}
    if meta.get("namespace"):
        out["namespace"] = meta["namespace"]
    owner = owner_reference(job_dict)
    if owner:
        out["ownerReferences"] = [owner]
    return out


def spec_hashes_annotation(job_dict: dict[str, Any]) -> str:
    return spec_hashes_json(spec_hashes(normalized_spec(job_dict)))


def spec_hashes_json(hashes: Mapping[str, str]) -> str:
    """The annotation's text for hashes made by ``spec_hashes``."""
    return json.dumps(dict(hashes), sort_keys=True, separators=(",", ":"))


def build_config_map(job_dict: dict[str, Any], settings: OperatorSettings, manifest: dict[str, Any] | None = None,
                     hashes: str | None = None) -> dict[str, Any]:
    manifest = manifest or resolved_manifest(job_dict, settings)
    meta = _metadata(job_dict, config_map_name(job_dict["metadata"]["name"]))
    meta["annotations"] = {ANNOTATION_SPEC_HASHES: hashes or spec_hashes_annotation(job_dict)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {CONFIG_KEY: json.dumps(manifest, indent=2), **_report_ca_data(settings)},
    }


def _reports_over_tls(settings: OperatorSettings) -> bool:
    return settings.reports_progress and str(settings.report_url).startswith("https://")


def _report_ca_data(settings: OperatorSettings) -> dict[str, str]:
    pem = settings.report_ca_pem() if _reports_over_tls(settings) else None
    return {REPORT_CA_KEY: pem} if pem else {}


def build_service(job_dict: dict[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    name = job_dict["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job_dict, service_name(name)),
        "spec": {
            "clusterIP": "None",
            # Ranks resolve each other before any of them is ready.
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: name},
            "ports": [{"name": "rendezvous", "port": settings.rendezvous_port, "targetPort": settings.rendezvous_port, "protocol": "TCP"}],
        },
    }


def build_network_policy(job_dict: dict[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """Ingress to this job's pods only from this job's pods, on every port.

    No port list: torchrun's rendezvous port is only the first connection; NCCL
    and gloo then connect between ranks on ephemeral ports. Egress is left alone
    (S3, the Hub, the operator's report endpoint). NetworkPolicies add up, so another
    policy selecting these pods (a namespace-wide allow) would widen this one.
    """
    name = job_dict["metadata"]["name"]
    own_pods = {"matchLabels": {LABEL_JOB: name}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(job_dict, network_policy_name(name)),
        "spec": {
            "podSelector": own_pods,
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": own_pods}]}],
        },
    }


def pod_service_account(job_dict: dict[str, Any]) -> str | None:
    """The ServiceAccount trainer pods run as: spec.serviceAccountName (None: the namespace's default)."""
    return (job_dict.get("spec") or {}).get("serviceAccountName") or None


def _quantity(v: Any) -> str:
    return str(v)


def _shutdown_timeout(spec: dict[str, Any]) -> int:
    grace = int(spec["runPolicy"]["terminationGraceSeconds"])
    return max(5, grace - max(5, grace // 10))


def _container_env(job_dict: dict[str, Any], spec: dict[str, Any], settings: OperatorSettings, attempt: int) -> list[dict[str, Any]]:
    meta = job_dict["metadata"]
    env: list[dict[str, Any]] = [
        # Set by the Job controller too; declared here so $(JOB_COMPLETION_INDEX) in args
        # is defined by the template itself (and by any executor that reads it).
        {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}},
        },
        {"name": "KUBETUNE_JOB_NAME", "value": meta["name"]},
        {"name": "KUBETUNE_JOB_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "KUBETUNE_ATTEMPT", "value": str(attempt)},
        {"name": "KUBETUNE_SCRATCH", "value": SCRATCH_DIR},
        {"name": "HF_HOME", "value": f"{SCRATCH_DIR}/hf"},
        {"name": "HOME", "value": f"{SCRATCH_DIR}/home"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # After SIGTERM, torchrun waits this long for the workers (which checkpoint,
        # commit and exit 75) before killing them; torch's default of 30 s would cut a
        # commit short. Keep a margin inside the pod's grace period.
        {"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "value": str(_shutdown_timeout(spec))},
    ]
    if settings.reports_progress:
        env += [
            {"name": "KUBETUNE_REPORTER", "value": "kubernetes"},
            {"name": "KUBETUNE_REPORT_URL", "value": str(settings.report_url)},
            {"name": "KUBETUNE_REPORT_TOKEN", "value": f"{REPORT_TOKEN_DIR}/token"},
            # The trainer sends its token only over TLS verified against this CA, or over plain
            # HTTP when the operator was told so (settings.report_channel_problem).
            {"name": "KUBETUNE_REPORT_CA", "value": f"{CONFIG_DIR}/{REPORT_CA_KEY}"} if _reports_over_tls(settings)
            else {"name": "KUBETUNE_REPORT_INSECURE_HTTP", "value": "true"},
        ]
    storage = spec.get("storage") or {}
    secret = (storage.get("secretRef") or {}).get("name")
    if secret:
        for key, optional in (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False), ("AWS_SESSION_TOKEN", True)):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}})
    hub = (storage.get("hubSecretRef") or {}).get("name")
    if hub:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": hub, "key": "HF_TOKEN"}}})
    # spec.env last: it may replace the convenience defaults (HOME, HF_HOME, ...), never
    # the contract variables (parse_runnable_job refuses those).
    # A valueFrom entry passes through as the reference it is: the Secret's value
    # reaches only the pod (through the kubelet), never the operator.
    user = {e["name"]: e for e in spec.get("env") or []}
    env = [e for e in env if e["name"] not in user] + [
        {"name": n, "valueFrom": copy.deepcopy(e["valueFrom"])} if e.get("valueFrom") else {"name": n, "value": e.get("value") or ""}
        for n, e in user.items()
    ]
    return env


def build_batch_job(
    job_dict: dict[str, Any],
    settings: OperatorSettings,
    attempt: int,
    recorded_spec_hashes: str | None = None,
    manifest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Indexed Job of one attempt: ``nodes`` pods, each running torchrun.

    For a restart, ``job_dict`` carries the spec stored in the ConfigMap and
    ``recorded_spec_hashes`` the ConfigMap's annotation, so every attempt runs
    the spec the job started with.
    """
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    manifest = manifest or resolved_manifest(job_dict, settings)
    spec = manifest["spec"]
    name = manifest["metadata"]["name"]
    dist = spec["distributed"]
    nodes = int(dist["nodes"])
    gpus = int(dist["gpusPerNode"])
    procs = int(dist.get("processesPerNode") or max(gpus, 1))
    rp = spec["runPolicy"]
    res = spec["resources"]
    jname = batch_job_name(name, attempt)

    requests = {k: _quantity(v) for k, v in (res.get("requests") or {}).items()}
    limits = {k: _quantity(v) for k, v in (res.get("limits") or {}).items()}
    if gpus:
        requests["nvidia.com/gpu"] = str(gpus)
        limits["nvidia.com/gpu"] = str(gpus)
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits

    args = [
        f"--nnodes={nodes}",
        f"--nproc-per-node={procs}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        f"--master-addr={rank0_address(name, attempt)}",
        f"--master-port={settings.rendezvous_port}",
        "-m",
        "kubetune_trainer",
        "--config",
        f"{CONFIG_DIR}/{CONFIG_KEY}",
    ]
    volume_mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(name)}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.get("shmSize", "16Gi")}},
        {"name": "scratch", "emptyDir": {"sizeLimit": res.get("scratchSize") or DEFAULT_SCRATCH_SIZE}},
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
    ]
    if settings.reports_progress:
        # No Kubernetes API credential: the one token a trainer pod holds has the audience
        # REPORT_AUDIENCE, which the API server refuses; the operator accepts it only from
        # rank 0 of the current attempt (report.check_sender). Every rank mounts it (one
        # template for the gang); the others' tokens are refused.
        volumes.append(
            {
                "name": "report-token",
                "projected": {
                    "defaultMode": 0o444,
                    "sources": [{"serviceAccountToken": {"audience": REPORT_AUDIENCE, "path": "token",
                                                         "expirationSeconds": REPORT_TOKEN_SECONDS}}],
                },
            }
        )
        volume_mounts.append({"name": "report-token", "mountPath": REPORT_TOKEN_DIR, "readOnly": True})

    container = {
        "name": CONTAINER,
        "image": spec["image"],
        "imagePullPolicy": spec["imagePullPolicy"],
        # torchrun that keeps the trainer's exit codes (3 permanent, 75 preempted);
        # plain torchrun reports every failure as 1.
        "command": ["python", "-m", "kubetune_trainer.torchrun"],
        "args": args,
        "env": _container_env(job_dict, spec, settings, attempt),
        # Whole Secrets/ConfigMaps; Kubernetes gives env precedence over envFrom,
        # so they cannot replace the operator's variables.
        **({"envFrom": copy.deepcopy(spec["envFrom"])} if spec.get("envFrom") else {}),
        "ports": [{"name": "rendezvous", "containerPort": settings.rendezvous_port, "protocol": "TCP"}],
        "volumeMounts": volume_mounts,
        # The trainer's last stderr line ("kubetune: error: <reason>: <message>") becomes
        # the terminated state's message, which the operator turns into the job's reason.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            # Writable: /scratch (HOME, HF_HOME, checkpoints), /tmp, /dev/shm.
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if resources:
        container["resources"] = resources

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": service_name(name),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": int(rp["terminationGraceSeconds"]),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_group,
            "fsGroup": settings.fs_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if pod_service_account(job_dict):
        pod_spec["serviceAccountName"] = pod_service_account(job_dict)
    if spec.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(spec["nodeSelector"])
    if spec.get("tolerations"):
        pod_spec["tolerations"] = copy.deepcopy(spec["tolerations"])
    if spec.get("affinity"):
        pod_spec["affinity"] = copy.deepcopy(spec["affinity"])
    if spec.get("priorityClassName"):
        pod_spec["priorityClassName"] = spec["priorityClassName"]
    if spec.get("schedulerName"):
        pod_spec["schedulerName"] = spec["schedulerName"]
    pull_secrets = list(dict.fromkeys([*(spec.get("imagePullSecrets") or []), *settings.image_pull_secrets]))
    if pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in pull_secrets]

    attempt_labels = {LABEL_ATTEMPT: str(attempt)}
    job_meta = _metadata(job_dict, jname, attempt_labels)
    queue = spec.get("queueName")
    if queue:
        job_meta["labels"][LABEL_KUEUE_QUEUE] = queue
    job_meta["annotations"] = {
        ANNOTATION_SPEC_HASHES: recorded_spec_hashes or spec_hashes_annotation(job_dict),
    }
    generation = (job_dict.get("metadata") or {}).get("generation")
    if generation is not None:
        job_meta["annotations"][ANNOTATION_GENERATION] = str(generation)

    pod_meta: dict[str, Any] = {"labels": {
        **(spec.get("podLabels") or {}),
        **{k: v for k, v in job_meta["labels"].items() if k != LABEL_KUEUE_QUEUE},
    }}
    if spec.get("podAnnotations"):
        pod_meta["annotations"] = dict(spec["podAnnotations"])
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job_meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            # Gang semantics belong to the operator: the Job controller never retries one pod.
            "backoffLimit": 0,
            "podFailurePolicy": pod_failure_policy(),
            # Kueue admits a queued Job by unsuspending it; spec.suspend starts it stopped.
            "suspend": bool(queue) or bool(spec.get("suspend")),
            "template": {"metadata": pod_meta, "spec": pod_spec},
        },
    }


def pod_failure_policy() -> dict[str, Any]:
    """How the Job controller ends an attempt, with a verdict that names why.

    Every rule is FailJob (the gang is the operator's to restart), so the Job's
    Failed condition says which rule matched even when its pods are gone: exit
    code 3 (permanent), exit code 75 (checkpointed after SIGTERM) and the
    DisruptionTarget condition (eviction, preemption, drain, node shutdown) in
    that order; anything else fails the Job through backoffLimit 0.
    """
    def on_exit(code: int) -> dict[str, Any]:
        return {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [code]}}

    return {"rules": [
        on_exit(PERMANENT_EXIT_CODE),
        on_exit(contract.PREEMPTED),
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def build_job_independent_objects(job_dict: dict[str, Any], settings: OperatorSettings,
                                  manifest: dict[str, Any] | None = None, hashes: str | None = None) -> list[dict[str, Any]]:
    """The objects created once per FineTuneJob (not per attempt), in creation order."""
    objs = [build_config_map(job_dict, settings, manifest, hashes), build_service(job_dict, settings)]
    if settings.network_policy:
        objs.append(build_network_policy(job_dict, settings))  # before any pod exists
    return objs


def build_objects(job_dict: dict[str, Any], settings: OperatorSettings | None = None, attempt: int = 1) -> list[dict[str, Any]]:
    """Everything the operator creates for a FineTuneJob's given attempt, in creation order.

    Raises InvalidJob when the manifest cannot run. ``kubetune render`` prints this.
    """
    settings = settings or OperatorSettings()
    manifest = resolved_manifest(job_dict, settings)
    hashes = spec_hashes_annotation(job_dict)
    return build_job_independent_objects(job_dict, settings, manifest, hashes) + [
        build_batch_job(job_dict, settings, attempt, hashes, manifest)
    ]


def manifest_from_config_map(cm: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved manifest stored in a job's ConfigMap (the spec an attempt started with)."""
    manifest: dict[str, Any] = json.loads((cm.get("data") or {})[CONFIG_KEY])
    return manifest
