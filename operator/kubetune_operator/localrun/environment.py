"""``spec.env`` and ``spec.envFrom`` for ``kubetune run``: what a trainer pod would get, on one machine.

The trainer processes inherit this shell's environment; on top of it:

- ``value``: set as written (it replaces the shell's variable of that name);
- ``valueFrom.secretKeyRef`` / ``configMapKeyRef``: there is no cluster to
  read a Secret or ConfigMap from, so the variable keeps the value this shell
  exports under the same name (``export WANDB_API_KEY=...`` before
  ``kubetune run``). Not exported: the run is refused before anything starts,
  naming the field, unless the reference is ``optional: true`` (then the
  variable stays unset, as in a pod);
- ``valueFrom.fieldRef``: the local stand-in of the pod field
  (:data:`FIELD_STAND_INS`);
- ``envFrom``: without the cluster the keys are unknown; the shell's
  variables pass as they are, and a note says so;
- names the operator sets itself (``AWS_*``, ``HF_TOKEN``, ``KUBETUNE_*``) are
  refused, as the operator refuses them: the same manifest must run in both
  places. Locally, S3 and Hub credentials come from the shell.

Values are never printed: notes and errors name variables and references only.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping

from kubetune_api import spec as api
from kubetune_operator import builders

LOCAL_IP = "127.0.0.1"

# fieldRef path -> what it means on this machine (documented in docs/quickstart.md).
FIELD_STAND_INS: dict[str, str] = {
    "metadata.name": "<job>-<node group>",
    "metadata.namespace": "metadata.namespace of the manifest, else default",
    "metadata.uid": "a UUID derived from the job and node group",
    "metadata.labels['KEY']": "spec.podLabels plus kubetune.io/job",
    "metadata.annotations['KEY']": "spec.podAnnotations",
    "spec.nodeName": "this machine's host name",
    "spec.serviceAccountName": "spec.serviceAccountName, else default",
    "status.hostIP, status.hostIPs, status.podIP, status.podIPs": LOCAL_IP,
}
_MAP_FIELD = re.compile(r"^metadata\.(labels|annotations)\['([^'\]]+)'\]$")


class EnvError(ValueError):
    """spec.env cannot be satisfied on this machine; the message names each field."""


def _field_value(path: str, job: api.FineTuneJob, rank: int, hostname: str) -> str:
    name = job.metadata.name or "job"
    spec = job.spec
    mapped = _MAP_FIELD.match(path)
    if mapped:
        source = {**spec.pod_labels, builders.LABEL_JOB: name} if mapped.group(1) == "labels" else spec.pod_annotations
        return str(source.get(mapped.group(2), ""))  # a missing key reads as empty, as in a pod
    simple: dict[str, Callable[[], str]] = {
        "metadata.name": lambda: f"{name}-{rank}",
        "metadata.namespace": lambda: job.metadata.namespace or "default",
        "metadata.uid": lambda: str(uuid.uuid5(uuid.NAMESPACE_URL, f"kubetune-run/{name}/{rank}")),
        "spec.nodeName": lambda: hostname,
        "spec.serviceAccountName": lambda: spec.service_account_name or "default",
    }
    if path in simple:
        return simple[path]()
    if path.startswith("status."):  # hostIP(s), podIP(s): every rank is on this machine
        return LOCAL_IP
    raise EnvError(f"fieldRef {path!r} has no local stand-in")  # the API model's pattern allows no other path


def check_spec_env(job: api.FineTuneJob, shell_env: Mapping[str, str]) -> list[str]:
    """Notes for the run's announcement; EnvError listing every entry this machine cannot satisfy."""
    problems = [
        f"spec.env[{i}].name: {name} is set by kubetune itself (the operator refuses it too); remove it. "
        f"Locally, S3 and Hub credentials come from this shell's AWS_* and HF_TOKEN"
        for i, name in builders.reserved_env(job)
    ]
    notes: list[str] = []
    for i, var in enumerate(job.spec.env):
        source = var.value_from
        ref = None if source is None else (source.secret_key_ref or source.config_map_key_ref)
        if source is None or ref is None:
            continue
        kind, field = ("Secret", "secretKeyRef") if source.secret_key_ref else ("ConfigMap", "configMapKeyRef")
        where = f"spec.env[{i}].valueFrom.{field}"
        if var.name in shell_env:
            notes.append(f"{var.name}: taken from this shell's environment (on a cluster: {kind} {ref.name}, key {ref.key})")
        elif ref.optional:
            notes.append(f"{var.name}: not set ({where} is optional and this shell does not export {var.name})")
        else:
            problems.append(
                f"{where}: {var.name} comes from {kind} {ref.name} (key {ref.key}) on a cluster, and kubetune run "
                f"has no cluster to read it from. Export {var.name} in this shell (the trainer inherits it), "
                f"or set optional: true to run without it"
            )
    for i, source_from in enumerate(job.spec.env_from):
        obj = source_from.secret_ref or source_from.config_map_ref
        kind = "Secret" if source_from.secret_ref else "ConfigMap"
        prefix = f" (prefix {source_from.prefix})" if source_from.prefix else ""
        notes.append(
            f"spec.envFrom[{i}]: {kind} {obj.name if obj else '?'}{prefix} cannot be read without a cluster; "
            f"this shell's variables pass to the trainer as they are, so export the ones the job needs"
        )
    if problems:
        raise EnvError("\n".join(problems))
    return notes


def spec_env_values(job: api.FineTuneJob, *, rank: int, hostname: str) -> dict[str, str]:
    """The variables spec.env sets for node group ``rank``: literal values and pod fields.

    References to Secrets and ConfigMaps add nothing: their variables are the
    shell's own, which the trainer inherits (so no secret value is ever held here).
    """
    out: dict[str, str] = {}
    for var in job.spec.env:
        source = var.value_from
        if source is None:
            out[var.name] = var.value or ""
        elif source.field_ref is not None:
            out[var.name] = _field_value(source.field_ref.field_path, job, rank, hostname)
    return out
