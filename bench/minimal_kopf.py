"""The baseline of bench/operator_scale.py: the smallest useful Kopf controller.

For every FineTuneJob it creates one batch Job (owned by it) and nothing else:
no status, no events of its own, no per-job task. It uses Kopf's own API client,
as kubetune's operator does, so the ratio measures what kubetune adds on top of
Kopf, not a difference of HTTP clients.

    KUBECONFIG=... python -m kopf run bench/minimal_kopf.py --namespace NS --standalone
"""
from __future__ import annotations

import logging
from typing import Any

import kopf
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import errors as kopf_errors

SETTINGS: list[kopf.OperatorSettings] = []


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False  # the baseline posts no Kubernetes Events
    settings.posting.level = logging.WARNING
    SETTINGS.append(settings)


@kopf.on.create("kubetune.io", "v1alpha1", "finetunejobs")
async def create_job(body: kopf.Body, name: str, namespace: str, logger: logging.Logger, **_: Any) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{name}-a1", "namespace": namespace,
            "ownerReferences": [{"apiVersion": body["apiVersion"], "kind": body["kind"], "name": name,
                                 "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {"completionMode": "Indexed", "completions": 1, "parallelism": 1, "backoffLimit": 0,
                 "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "trainer", "image": "trainer"}]}}},
    }
    try:
        await kopf_api.post(f"/apis/batch/v1/namespaces/{namespace}/jobs", payload=job, settings=SETTINGS[0], logger=logger)
    except kopf_errors.APIConflictError:
        pass
