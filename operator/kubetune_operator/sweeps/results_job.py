"""The Job that writes a finished sweep's ``sweep.json`` and plots on a cluster. Pure: sweep -> objects.

The operator holds no storage credentials and no matplotlib, so it does not
write them itself: when a sweep finishes, it creates a ConfigMap
``<sweep>-results`` holding the sweep (spec and status, as JSON) and a one-pod
Job ``<sweep>-results`` in the trainer image that runs
``python -m kubetune_api.sweep_results`` on it, with the template's storage
Secret in its environment, exactly as the trials' pods get it. Both are owned
by the sweep. When the Job completes, the operator links the files in
``status.results``; when it fails, a ``ResultsWritten=False`` condition says so.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from kubetune_api import sweep as api

from .decide import LABEL_SWEEP

if TYPE_CHECKING:
    from kubetune_operator.settings import OperatorSettings

SWEEP_KEY = "sweep.json"
MOUNT_DIR = "/etc/kubetune-sweep"
# A ConfigMap holds at most 1 MiB; beyond this the intermediate results are left out (the plots then show no curves).
MAX_CONFIG_BYTES = 900_000


def results_name(sweep_name: str) -> str:
    """ConfigMap and Job of a sweep's results (a sweep name has at most 46 characters: this fits in 63)."""
    return f"{sweep_name}-results"


def _owned_metadata(sweep: dict[str, Any], name: str) -> dict[str, Any]:
    meta = sweep["metadata"]
    out: dict[str, Any] = {"name": name, "labels": {LABEL_SWEEP: meta["name"]}}
    if meta.get("namespace"):
        out["namespace"] = meta["namespace"]
    if meta.get("uid"):
        out["ownerReferences"] = [{"apiVersion": api.API_VERSION, "kind": api.KIND, "name": meta["name"], "uid": meta["uid"],
                                   "controller": True, "blockOwnerDeletion": True}]
    return out


def sweep_payload(sweep: dict[str, Any]) -> str:
    """The sweep as the results Job reads it: what sweep.json needs (no managedFields, annotations, ...)."""
    status: dict[str, Any] = dict(sweep.get("status") or {})
    doc = {"apiVersion": sweep.get("apiVersion"), "kind": sweep.get("kind"),
           "metadata": {"name": sweep["metadata"]["name"]}, "spec": sweep.get("spec") or {}, "status": status}
    text = json.dumps(doc, separators=(",", ":"))
    if len(text.encode()) > MAX_CONFIG_BYTES:
        status["trials"] = [{**t, "intermediate": []} for t in status.get("trials") or []]
        text = json.dumps(doc, separators=(",", ":"))
    return text


def build_results_objects(sweep: dict[str, Any], settings: OperatorSettings) -> list[dict[str, Any]]:
    """[ConfigMap, Job] that write the results of a finished sweep."""
    name = results_name(sweep["metadata"]["name"])
    template = sweep["spec"]["template"]
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _owned_metadata(sweep, name),
                  "data": {SWEEP_KEY: sweep_payload(sweep)}}
    env: list[dict[str, Any]] = [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "HOME", "value": "/tmp"},
                                 {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"}]
    secret = ((template.get("storage") or {}).get("secretRef") or {}).get("name")
    if secret:
        for key, optional in (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False), ("AWS_SESSION_TOKEN", True)):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}})
    container: dict[str, Any] = {
        "name": "results",
        "image": template.get("image") or settings.trainer_image,
        "command": ["python", "-m", "kubetune_api.sweep_results", f"{MOUNT_DIR}/{SWEEP_KEY}"],
        "env": env,
        "volumeMounts": [{"name": "sweep", "mountPath": MOUNT_DIR, "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if template.get("imagePullPolicy"):
        container["imagePullPolicy"] = template["imagePullPolicy"]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": settings.run_as_user, "runAsGroup": settings.run_as_group,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "sweep", "configMap": {"name": name}}, {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    pull_secrets = list(dict.fromkeys([*(template.get("imagePullSecrets") or []), *settings.image_pull_secrets]))
    if pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in pull_secrets]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": _owned_metadata(sweep, name),
           "spec": {"backoffLimit": 2, "template": {"metadata": {"labels": {LABEL_SWEEP: sweep["metadata"]["name"]}},
                                                    "spec": pod_spec}}}
    return [config_map, job]


def job_outcome(job: dict[str, Any] | None) -> str | None:
    """'Complete', 'Failed', or None while it runs (or when there is none)."""
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
            return str(c["type"])
    return None
