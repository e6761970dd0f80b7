"""Rank 0's progress reports: what a trainer pod may tell the operator, checked before it reaches status.

Trainer pods hold no Kubernetes API credential. Rank 0 posts its report to the
operator (``report_server``) with a projected service-account token whose
audience is :data:`AUDIENCE`, which the API server refuses for its own API. The
operator verifies the token by TokenReview, checks that it is bound to a pod
it owns (rank 0 of the job's current attempt, see :func:`check_sender`), then
parses the body here. Only these fields can come from a pod:

- ``progress`` (the keys of ``kubetune_api.status.Progress``, evalMetrics included),
- ``lastCheckpoint`` ``{step, uri, time}``, ``output`` ``{adapterUri, mergedUri,
  summaryUri, reportUri, baseModel, baseModelRevision, metrics}``: URIs must lie
  under the job's ``spec.output.uri`` (baseModel is a bounded model reference),
- ``plan`` ``{zeroStage, offload, gradientCheckpointing, microBatchSize,
  estimatedBytes, deviceBytes, device, fits}``: the memory plan the trainer
  runs with (``kubetune_api.status.PlanStatus``), decided at start-up,
- ``stage`` (``initializing``/``running``/``exporting``) and ``attempt``: inputs
  to the operator's phase decision (``Running`` -> ``Exporting``), never a phase.

Every value is typed and bounded; a report that breaks a rule is refused whole,
with a message naming the field. Unknown keys are ignored (a newer trainer).
Phase, conditions, restarts and attempt in status are the operator's alone.

No I/O here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kubetune_operator import builders
from kubetune_operator.observe import Obj, attempt_of, name_of, pod_job_uid
from kubetune_operator.status_writer import parse_time

# The audience of the trainer's projected token: only the operator accepts it.
AUDIENCE = builders.REPORT_AUDIENCE
MAX_BODY_BYTES = 16 * 1024
MAX_URI_LENGTH = 2048
MAX_METRICS = 64
MAX_NUMBER = 1e15
STAGES = ("initializing", "running", "exporting")
INT_PROGRESS = ("step", "totalSteps", "etaSeconds")
FLOAT_PROGRESS = ("epoch", "percent", "loss", "evalLoss", "learningRate", "tokensPerSecond", "mfu")
URI_KEYS = ("adapterUri", "mergedUri", "summaryUri", "reportUri")
# What the adapter applies to (the job's resolved model.source), read by a later job's model.from: a
# model reference, not under output.uri; bounded, printable, one line.
BASE_MODEL_KEYS = {"baseModel": MAX_URI_LENGTH, "baseModelRevision": 256}
OFFLOADS = ("none", "optimizer", "parameters")
MAX_MICRO_BATCH = 4096
MAX_DEVICE_NAME = 128
_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-/]{0,63}$")
# TokenReview's user.extra keys for a token bound to a pod (service-account token docs).
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


class InvalidReport(ValueError):
    """The report breaks a rule; the message names the field."""


@dataclasses.dataclass(frozen=True)
class TrainerReport:
    """A checked report: only the fields a pod may set, each typed and bounded."""

    attempt: int | None = None
    stage: str | None = None
    progress: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    last_checkpoint: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    output: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    plan: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_NUMBER:
        raise InvalidReport(f"{field}: expected an integer from 0 to {MAX_NUMBER:.0e}, got {value!r:.40}")
    return value


def _float(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or abs(value) > MAX_NUMBER:
        raise InvalidReport(f"{field}: expected a finite number, got {value!r:.40}")
    return float(value)


def _time(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) > 40 or parse_time(value) is None:
        raise InvalidReport(f"{field}: expected an RFC 3339 time, got {value!r:.60}")
    return value


def _uri(value: Any, field: str, output_uri: str) -> str:
    base = output_uri.rstrip("/")
    if not isinstance(value, str) or len(value) > MAX_URI_LENGTH or not base or not (value == base or value.startswith(base + "/")):
        raise InvalidReport(f"{field}: must lie under the job's spec.output.uri {base!r}, got {value!r:.120}")
    if any(part == ".." for part in value[len(base):].split("/")):
        raise InvalidReport(f"{field}: must not contain '..' segments")
    return value


def _metrics(metrics: Mapping[str, Any], field: str) -> dict[str, float]:
    if len(metrics) > MAX_METRICS:
        raise InvalidReport(f"{field}: {len(metrics)} entries; at most {MAX_METRICS}")
    checked = {}
    for key, value in metrics.items():
        if not _METRIC_NAME.match(str(key)):
            raise InvalidReport(f"{field}: {str(key)!r:.80} is not a metric name (letters, digits, _ . - /; at most 64)")
        checked[str(key)] = _float(value, f"{field}.{key}")
    return checked


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidReport(f"{field}: expected true or false, got {value!r:.40}")
    return value


def _plan(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The memory plan's decisions and numbers (status.PlanStatus), each checked."""
    plan: dict[str, Any] = {}
    if raw.get("zeroStage") is not None:
        plan["zeroStage"] = _int(raw["zeroStage"], "plan.zeroStage")
        if plan["zeroStage"] > 3:
            raise InvalidReport(f"plan.zeroStage: expected 0 to 3, got {plan['zeroStage']}")
    if raw.get("offload") is not None:
        if raw["offload"] not in OFFLOADS:
            raise InvalidReport(f"plan.offload: expected one of {', '.join(OFFLOADS)}, got {raw['offload']!r:.40}")
        plan["offload"] = raw["offload"]
    if raw.get("gradientCheckpointing") is not None:
        plan["gradientCheckpointing"] = _bool(raw["gradientCheckpointing"], "plan.gradientCheckpointing")
    if raw.get("microBatchSize") is not None:
        plan["microBatchSize"] = _int(raw["microBatchSize"], "plan.microBatchSize")
        if not 1 <= plan["microBatchSize"] <= MAX_MICRO_BATCH:
            raise InvalidReport(f"plan.microBatchSize: expected 1 to {MAX_MICRO_BATCH}, got {plan['microBatchSize']}")
    for key in ("estimatedBytes", "deviceBytes"):
        if raw.get(key) is not None:
            plan[key] = _int(raw[key], f"plan.{key}")
    device = raw.get("device")
    if device is not None:
        if not isinstance(device, str) or len(device) > MAX_DEVICE_NAME or not device.isprintable():
            raise InvalidReport(f"plan.device: expected a one-line string of at most {MAX_DEVICE_NAME} characters")
        plan["device"] = device
    if raw.get("fits") is not None:
        plan["fits"] = _bool(raw["fits"], "plan.fits")
    return plan


def _object(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidReport(f"{key}: expected an object")
    return value


def parse_report(raw: bytes, output_uri: str) -> TrainerReport:
    """Parse and check a report body (JSON). Raises InvalidReport naming the field."""
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidReport(f"the report has {len(raw)} bytes; at most {MAX_BODY_BYTES}")
    try:
        body = json.loads(raw or b"{}")
    except ValueError as e:
        raise InvalidReport(f"the report is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidReport("the report must be a JSON object")

    attempt = None if body.get("attempt") is None else _int(body["attempt"], "attempt")
    stage = body.get("stage")
    if stage is not None and stage not in STAGES:
        raise InvalidReport(f"stage: expected one of {', '.join(STAGES)}, got {stage!r:.40}")

    progress: dict[str, Any] = {}
    raw_progress = _object(body, "progress")
    for key in INT_PROGRESS:
        if raw_progress.get(key) is not None:
            progress[key] = _int(raw_progress[key], f"progress.{key}")
    for key in FLOAT_PROGRESS:
        if raw_progress.get(key) is not None:
            progress[key] = _float(raw_progress[key], f"progress.{key}")
    if "percent" in progress and not 0 <= progress["percent"] <= 100:
        raise InvalidReport(f"progress.percent: expected 0 to 100, got {progress['percent']}")
    if raw_progress.get("evalMetrics") is not None:
        progress["evalMetrics"] = _metrics(_object(raw_progress, "evalMetrics"), "progress.evalMetrics")
    if raw_progress.get("updatedAt") is not None:
        progress["updatedAt"] = _time(raw_progress["updatedAt"], "progress.updatedAt")

    checkpoint: dict[str, Any] = {}
    raw_checkpoint = _object(body, "lastCheckpoint")
    if raw_checkpoint.get("step") is not None:
        checkpoint["step"] = _int(raw_checkpoint["step"], "lastCheckpoint.step")
    if raw_checkpoint.get("uri") is not None:
        checkpoint["uri"] = _uri(raw_checkpoint["uri"], "lastCheckpoint.uri", output_uri)
    if raw_checkpoint.get("time") is not None:
        checkpoint["time"] = _time(raw_checkpoint["time"], "lastCheckpoint.time")

    output: dict[str, Any] = {}
    raw_output = _object(body, "output")
    for key in URI_KEYS:
        if raw_output.get(key) is not None:
            output[key] = _uri(raw_output[key], f"output.{key}", output_uri)
    for key, limit in BASE_MODEL_KEYS.items():
        value = raw_output.get(key)
        if value is not None:
            if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
                raise InvalidReport(f"output.{key}: expected a one-line string of at most {limit} characters")
            output[key] = value
    metrics = _metrics(_object(raw_output, "metrics"), "output.metrics")
    if metrics:
        output["metrics"] = metrics
    return TrainerReport(attempt=attempt, stage=stage, progress=progress, last_checkpoint=checkpoint, output=output,
                         plan=_plan(_object(body, "plan")))


def check_sender(*, pod_name: str | None, pod_uid: str | None, namespace: str, username: str,
                 pods: Sequence[Obj], job_uids: set[str], attempt: int) -> str | None:
    """Why a verified token may not report for this job (None: it may).

    The token must be a service account's of the job's namespace, bound to a pod
    this FineTuneJob owns (through its Job's UID): rank 0 (completion index 0) of
    the current attempt, not being deleted. Other ranks, earlier attempts and any
    other pod or credential are refused.
    """
    if not username.startswith(f"system:serviceaccount:{namespace}:"):
        return f"the token belongs to {username!r}, not to a service account of namespace {namespace!r}"
    if not pod_name:
        return "the token is not bound to a pod (use the pod's projected token)"
    pod = next((p for p in pods if name_of(p) == pod_name), None)
    if pod is None or pod_job_uid(pod) not in job_uids:
        return f"pod {pod_name} is not a pod of this job"
    if pod_uid and str((pod.get("metadata") or {}).get("uid") or "") != pod_uid:
        return f"pod {pod_name} was replaced (UID mismatch)"
    index = ((pod.get("metadata") or {}).get("annotations") or {}).get(builders.COMPLETION_INDEX_ANNOTATION)
    if index != "0":
        return f"pod {pod_name} is rank {index}, only rank 0 reports"
    if attempt_of(pod) != attempt:
        return f"pod {pod_name} belongs to attempt {attempt_of(pod)}, the job is at attempt {attempt}"
    # A pod being deleted (preempted, drained) still reports the checkpoint it commits on SIGTERM.
    return None
