"""Pure mappings between the OpenAI fine-tuning API and FineTuneJobs. No I/O.

- :func:`parse_create_request`: the body of ``POST /fine_tuning/jobs`` -> a
  checked :class:`JobRequest` (unsupported parts refused with the field named);
- :func:`build_manifest`: a ``JobRequest`` -> a FineTuneJob manifest, checked by
  the API model itself (:func:`check_manifest`), errors mapped back to the
  request's field names;
- :func:`job_object`: a FineTuneJob (manifest + status, as stored in the cluster
  or kept by the local backend) -> the ``fine_tuning.job`` object;
- :func:`checkpoint_object`, :func:`status_events`, :func:`page`: checkpoints,
  events derived from a status, cursor pagination.

A FineTuneJob made through this API carries the OpenAI-side view of the request
(model name, file ids, hyperparameters as asked, suffix, metadata) in one
annotation, so the job object can be rebuilt from the FineTuneJob alone: the
cluster backend keeps no state of its own.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
from datetime import UTC, datetime
from typing import Any

import yaml

from kubetune_api import spec as api
from kubetune_api.contract import validation_messages

from .errors import ApiError, invalid, unsupported

REQUEST_ANNOTATION = "openai.kubetune.io/request"
CANCELLED_ANNOTATION = "openai.kubetune.io/cancelled"
RESULT_FILES_ANNOTATION = "openai.kubetune.io/result-files"
MANAGED_LABEL = "openai.kubetune.io/managed"
JOB_PREFIX = "ftjob-"

# name -> (integer?, lowest, highest): each also takes "auto".
HYPERPARAMETER_LIMITS: dict[str, tuple[bool, float, float]] = {
    "n_epochs": (True, 1, 50), "batch_size": (True, 1, 4096), "learning_rate_multiplier": (False, 1e-6, 100.0)}
HYPERPARAMETERS = tuple(HYPERPARAMETER_LIMITS)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_HYPERPARAMETERS_SCHEMA: dict[str, Any] = _nullable({
    "type": "object",
    "additionalProperties": False,
    "properties": {
        name: {"anyOf": [{"const": "auto"}, {"type": "integer" if integer else "number", "minimum": low, "maximum": high}]}
        for name, (integer, low, high) in HYPERPARAMETER_LIMITS.items()
    },
})
# The body of ``POST /fine_tuning/jobs`` as the server publishes it (its OpenAPI schema); parse_create_request checks
# the same rules by hand, so each refusal names the field and what to do.
CREATE_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "FineTuningJobCreate",
    "required": ["model", "training_file"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string", "minLength": 1,
                  "description": "a name from the server's model catalogue, or a model source: a path, s3:// or hf:// URI"},
        "training_file": {"type": "string", "minLength": 1, "description": "the id of a file uploaded with purpose fine-tune"},
        "validation_file": _nullable({"type": "string"}),
        "hyperparameters": _HYPERPARAMETERS_SCHEMA,
        "method": _nullable({
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"const": "supervised"},
                "supervised": _nullable({"type": "object", "properties": {"hyperparameters": _HYPERPARAMETERS_SCHEMA}}),
            },
        }),
        "suffix": _nullable({"type": "string", "minLength": 1, "maxLength": 64}),
        "seed": _nullable({"type": "integer", "minimum": 0, "maximum": 2**31 - 1}),
        "metadata": _nullable({"type": "object", "maxProperties": 16, "propertyNames": {"maxLength": 64},
                               "additionalProperties": {"type": "string", "maxLength": 512},
                               "description": "kubetune.<spec field path> keys set FineTuneJob fields, e.g. kubetune.distributed.nodes"}),
        "integrations": _nullable({"type": "array", "maxItems": 0, "description": "not supported: leave it out or empty"}),
        "kubetune": _nullable({"type": "object", "description": "a FineTuneJob spec fragment (camelCase), e.g. {\"method\": {\"type\": \"full\"}}"}),
    },
}
# The request's top-level fields this server understands; anything else is refused by name.
CREATE_FIELDS = frozenset(CREATE_REQUEST_SCHEMA["properties"])
# Set from the request itself; an extra may not override them.
PROTECTED_PATHS = ("model.source", "dataset.train", "dataset.eval", "output.uri")
# Short names accepted as metadata keys, besides any `kubetune.<spec path>`.
METADATA_ALIASES = {"kubetune.method": "method.type", "kubetune.nodes": "distributed.nodes", "kubetune.gpus": "distributed.gpusPerNode"}
METADATA_PREFIX = "kubetune."

# spec path (prefix) -> the request field a person should fix.
_PARAMS = (
    ("model", "model"),
    ("dataset.train", "training_file"),
    ("dataset.eval", "validation_file"),
    ("training.epochs", "hyperparameters.n_epochs"),
    ("training.maxSteps", "hyperparameters.n_epochs"),
    ("training.globalBatchSize", "hyperparameters.batch_size"),
    ("training.microBatchSize", "hyperparameters.batch_size"),
    ("training.learningRate", "hyperparameters.learning_rate_multiplier"),
    ("training.seed", "seed"),
)


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """A checked ``POST /fine_tuning/jobs`` body."""

    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=lambda: dict.fromkeys(HYPERPARAMETERS, "auto"))
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)  # a camelCase spec fragment

    def annotation(self) -> str:
        """What the job object needs later and the FineTuneJob cannot say by itself."""
        return json.dumps({
            "model": self.model, "training_file": self.training_file, "validation_file": self.validation_file,
            "hyperparameters": self.hyperparameters, "suffix": self.suffix, "metadata": self.metadata,
        }, sort_keys=True)


# ------------------------------------------------------------------ request
def _number(value: Any, param: str, *, integer: bool, low: float, high: float) -> int | float | str:
    if value == "auto" or value is None:
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise invalid(f"{param} must be {kind} or \"auto\", got {value!r}", param, "invalid_hyperparameter")
    if not (low <= value <= high) or math.isnan(value):
        raise invalid(f"{param} must be between {low:g} and {high:g} (or \"auto\"), got {value!r}", param, "invalid_hyperparameter")
    return int(value) if integer else float(value)


def _hyperparameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise invalid(f"{where} must be an object with n_epochs, batch_size, learning_rate_multiplier", where)
    unknown = sorted(set(raw) - set(HYPERPARAMETERS))
    if unknown:
        raise unsupported(f"{where}.{unknown[0]} is not supported; supervised jobs take {', '.join(HYPERPARAMETERS)}", f"{where}.{unknown[0]}")
    out = {}
    for key, value in raw.items():
        integer, low, high = HYPERPARAMETER_LIMITS[key]
        out[key] = _number(value, f"hyperparameters.{key}", integer=integer, low=low, high=high)
    return out


def _metadata_extras(metadata: dict[str, str]) -> dict[str, Any]:
    """``kubetune.<spec path>`` metadata keys -> a spec fragment (values read as YAML scalars)."""
    fragment: dict[str, Any] = {}
    for key, value in metadata.items():
        if not key.startswith(METADATA_PREFIX):
            continue
        path = METADATA_ALIASES.get(key, key[len(METADATA_PREFIX):])
        if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9]*(\.[a-zA-Z][a-zA-Z0-9]*)*", path):
            raise invalid(f"metadata key {key!r}: expected kubetune.<spec field path>, e.g. kubetune.distributed.nodes", f"metadata.{key}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        _set(fragment, path, parsed)
    return fragment


def parse_create_request(body: Any) -> JobRequest:
    """Check the body of ``POST /fine_tuning/jobs``; unsupported parts are refused, never ignored."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        raise unsupported(f"{unknown[0]} is not supported by kubetune's fine-tuning API", unknown[0])
    for field in ("model", "training_file"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise invalid(f"{field} is required (a string)", field, "missing_required_parameter")
    validation = body.get("validation_file")
    if validation is not None and not isinstance(validation, str):
        raise invalid("validation_file must be a file id", "validation_file")
    if body.get("integrations"):
        raise unsupported("integrations (Weights & Biases) are not supported; set the trainer's tracker with kubetune.training.tracker", "integrations")

    hyper = _hyperparameters(body.get("hyperparameters"), "hyperparameters")
    method = body.get("method")
    if method is not None:
        if not isinstance(method, dict) or not isinstance(method.get("type"), str):
            raise invalid("method must be an object with a type", "method")
        if method["type"] != "supervised":
            raise unsupported(f"method.type {method['type']!r} is not supported; kubetune runs supervised fine-tuning only", "method.type")
        supervised = method.get("supervised") or {}
        if not isinstance(supervised, dict):
            raise invalid("method.supervised must be an object", "method.supervised")
        from_method = _hyperparameters(supervised.get("hyperparameters"), "method.supervised.hyperparameters")
        for key, value in from_method.items():
            if key in hyper and hyper[key] != value:
                raise invalid(f"hyperparameters.{key} and method.supervised.hyperparameters.{key} disagree; set one", f"hyperparameters.{key}")
        hyper.update(from_method)
    hyper = {key: hyper.get(key, "auto") for key in HYPERPARAMETERS}

    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not 1 <= len(suffix) <= 64):
        raise invalid("suffix must be a string of 1 to 64 characters", "suffix")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31 - 1):
        raise invalid("seed must be an integer between 0 and 2147483647", "seed")

    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or len(metadata) > 16 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()):
        raise invalid("metadata must be at most 16 string keys (64 chars) with string values (512 chars)", "metadata")

    extras = _metadata_extras(metadata)
    fragment = body.get("kubetune")
    if fragment is not None:
        if not isinstance(fragment, dict):
            raise invalid("kubetune must be an object: a FineTuneJob spec fragment, e.g. {\"method\": {\"type\": \"full\"}}", "kubetune")
        extras = _merge(extras, fragment)
    for path in PROTECTED_PATHS:
        if _get(extras, path) is not None:
            raise invalid(f"kubetune.{path} is set from the request ({_param_for(path)}); leave it out of the extras", f"kubetune.{path}")
    return JobRequest(model=body["model"], training_file=body["training_file"], validation_file=validation,
                      hyperparameters=hyper, suffix=suffix, seed=seed, metadata=dict(metadata), extras=extras)


def resolve_model(model: str, catalogue: dict[str, str]) -> str:
    """A model name from the server's catalogue, or a source as spec.model.source takes it."""
    if model in catalogue:
        return catalogue[model]
    if model.startswith(("s3://", "hf://", "/", "./", "~", "file://")):
        return model
    known = ", ".join(sorted(catalogue)) or "none configured"
    raise ApiError(404, f"The model {model!r} does not exist: use a catalogue name ({known}), a path, s3:// or hf:// URI",
                   param="model", code="model_not_found")


# ----------------------------------------------------------------- manifest
def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def _get(doc: dict[str, Any], dotted: str) -> Any:
    cur: Any = doc
    for key in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(key)
    return cur


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = doc
    for k in keys[:-1]:
        if not isinstance(cur.get(k), dict):
            cur[k] = {}
        cur = cur[k]
    cur[keys[-1]] = value


def _param_for(spec_path: str) -> str:
    path = spec_path[len("spec."):] if spec_path.startswith("spec.") else spec_path
    for prefix, param in _PARAMS:
        if path == prefix or path.startswith(prefix + "."):
            return param
    return f"kubetune.{path}"


def build_manifest(
    req: JobRequest,
    *,
    name: str,
    namespace: str | None,
    model_source: str,
    train_uri: str,
    eval_uri: str | None,
    output_uri: str,
    template: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The FineTuneJob for a request: the server's template, then the extras, then the request's own fields."""
    spec = _merge(copy.deepcopy(template or {}), req.extras)
    for section in ("model", "dataset", "output", "training"):
        _object_section(spec, section)
    _set(spec, "model.source", model_source)
    _set(spec, "dataset.train", train_uri)
    if eval_uri:
        _set(spec, "dataset.eval", eval_uri)
    else:
        (spec.get("dataset") or {}).pop("eval", None)
    _set(spec, "output.uri", output_uri)
    training = spec.setdefault("training", {})
    hp = req.hyperparameters
    steps_from_extras = _get(req.extras, "training.maxSteps") is not None
    if hp["n_epochs"] != "auto":
        if steps_from_extras:
            raise invalid("hyperparameters.n_epochs and kubetune.training.maxSteps both set the length of training; set one", "hyperparameters.n_epochs")
        training["epochs"] = hp["n_epochs"]
        training.pop("maxSteps", None)
    elif steps_from_extras:
        training.pop("epochs", None)
    elif "epochs" not in training and "maxSteps" not in training:
        training["epochs"] = 3
    if hp["batch_size"] != "auto":
        training["globalBatchSize"] = hp["batch_size"]
        if training.get("microBatchSize") != "auto":  # 'auto': the memory plan picks one that divides it
            micro = _number_field(training, "microBatchSize", integer=True)
            training["microBatchSize"] = math.gcd(hp["batch_size"], max(1, int(micro or 1)))
    if hp["learning_rate_multiplier"] != "auto":
        method = _get(spec, "method.type") or "lora"
        if not isinstance(method, str):
            raise invalid(f"kubetune.method.type must be a string (lora, full, ...), got {method!r}", "kubetune.method.type")
        base = _number_field(training, "learningRate", integer=False) or _default_learning_rate(method)
        training["learningRate"] = base * hp["learning_rate_multiplier"]
    if req.seed is not None:
        training["seed"] = req.seed
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {MANAGED_LABEL: "true"},
        "annotations": {REQUEST_ANNOTATION: req.annotation()},
    }
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": f"{api.GROUP}/{api.VERSION}", "kind": api.KIND, "metadata": metadata, "spec": spec}


def _object_section(spec: dict[str, Any], section: str) -> None:
    """A spec section the request writes into must be an object (null: not set); never silently replaced."""
    value = spec.get(section)
    if value is None:
        spec.pop(section, None)
    elif not isinstance(value, dict):
        raise invalid(f"kubetune.{section} must be an object (a FineTuneJob spec section), got {json.dumps(value)[:80]}",
                      f"kubetune.{section}")


def _number_field(training: dict[str, Any], field: str, *, integer: bool) -> int | float | None:
    """A training field the request's hyperparameters compute with; a wrong type is answered here, by name."""
    value = training.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise invalid(f"kubetune.training.{field} must be {kind}, got {json.dumps(value)[:80]}", f"kubetune.training.{field}")
    return value


def _default_learning_rate(method: str) -> float:
    try:
        return api.TrainingSpec.model_validate({"maxSteps": 1}).resolved_learning_rate(method)
    except KeyError:
        raise invalid(f"unknown method type {method!r}", "kubetune.method.type") from None


def check_manifest(manifest: dict[str, Any]) -> api.FineTuneJob:
    """The API model's own checks; the first problem answered with the request field to fix."""
    from pydantic import ValidationError

    try:
        return api.load_job(manifest)
    except ValidationError as e:
        lines = validation_messages(e)
        first = lines[0] if lines else str(e)
        path = first.split(":", 1)[0]
        raise invalid(f"the job is not valid: {'; '.join(lines)}", _param_for(path), "invalid_job") from None


# --------------------------------------------------------------- job object
def parse_time(value: str | None) -> int | None:
    """RFC 3339 -> Unix seconds (None stays None)."""
    if not value:
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def request_of(ftj: dict[str, Any]) -> dict[str, Any]:
    raw = ((ftj.get("metadata") or {}).get("annotations") or {}).get(REQUEST_ANNOTATION)
    try:
        out = json.loads(raw) if raw else {}
    except ValueError:
        out = {}
    return out if isinstance(out, dict) else {}


# FineTuneJob phase -> OpenAI status. "paused" is the API's newer status for pause/resume.
PHASE_STATUS = {
    None: "validating_files",
    "Pending": "validating_files",
    "Queued": "queued",
    "Initializing": "running",
    "Running": "running",
    "Restarting": "running",
    "Exporting": "running",
    "Suspended": "paused",
    "Succeeded": "succeeded",
    "Failed": "failed",
}
FINAL = ("succeeded", "failed", "cancelled")

# Trainer/operator reasons whose fix is a request field.
_REASON_PARAMS = {
    "InvalidDataset": "training_file", "DatasetNotFound": "training_file", "EmptyDataset": "training_file",
    "SequenceTooLong": "training_file", "ModelNotFound": "model", "InvalidModel": "model",
}


def status_of(ftj: dict[str, Any]) -> str:
    annotations = (ftj.get("metadata") or {}).get("annotations") or {}
    if annotations.get(CANCELLED_ANNOTATION) and ((ftj.get("status") or {}).get("phase") not in ("Succeeded", "Failed")):
        return "cancelled"
    return PHASE_STATUS.get((ftj.get("status") or {}).get("phase"), "running")


def fine_tuned_model(status: dict[str, Any]) -> str | None:
    """The exported artifact: the merged model where there is one, else the adapter."""
    out = status.get("output") or {}
    return out.get("mergedUri") or out.get("adapterUri")


def _integral(x: Any) -> Any:
    return int(x) if isinstance(x, float) and x.is_integer() else x


def job_object(ftj: dict[str, Any], now: float) -> dict[str, Any]:
    """The ``fine_tuning.job`` object for a FineTuneJob."""
    meta, spec, status = ftj.get("metadata") or {}, ftj.get("spec") or {}, ftj.get("status") or {}
    req = request_of(ftj)
    training = spec.get("training") or {}
    method_type = (spec.get("method") or {}).get("type", "lora")
    state = status_of(ftj)
    asked = req.get("hyperparameters") or {}
    lr = training.get("learningRate")
    hyper = {
        "n_epochs": _integral(training["epochs"]) if training.get("epochs") is not None else asked.get("n_epochs", "auto"),
        "batch_size": training.get("globalBatchSize", 16),
        "learning_rate_multiplier": (lr / _default_learning_rate(method_type)) if lr else 1.0,
    }
    error = None
    if state == "failed":
        reason = status.get("reason") or "Failed"
        error = {"code": reason, "message": status.get("message") or "the job failed", "param": _REASON_PARAMS.get(reason)}
    progress = status.get("progress") or {}
    estimated_finish = None
    if state == "running" and progress.get("etaSeconds") is not None:
        base = parse_time(progress.get("updatedAt")) or now
        estimated_finish = int(base + progress["etaSeconds"])
    metrics = (status.get("output") or {}).get("metrics") or {}
    trained = metrics.get("tokensSeen")
    try:
        result_files = json.loads((meta.get("annotations") or {}).get(RESULT_FILES_ANNOTATION) or "[]")
    except ValueError:
        result_files = []
    return {
        "object": "fine_tuning.job",
        "id": meta.get("name"),
        "created_at": parse_time(meta.get("creationTimestamp")) or int(now),
        "finished_at": parse_time(status.get("completionTime")) if state in FINAL else None,
        "model": req.get("model") or (spec.get("model") or {}).get("source"),
        "fine_tuned_model": fine_tuned_model(status) if state == "succeeded" else None,
        "organization_id": meta.get("namespace") or "local",
        "status": state,
        "training_file": req.get("training_file") or (spec.get("dataset") or {}).get("train"),
        "validation_file": req.get("validation_file"),
        "hyperparameters": hyper,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        "trained_tokens": int(trained) if trained is not None and state == "succeeded" else None,
        "estimated_finish": estimated_finish,
        "error": error,
        "result_files": result_files if isinstance(result_files, list) else [],
        "seed": training.get("seed", 42),
        "metadata": req.get("metadata") or None,
        "suffix": req.get("suffix"),
        "integrations": [],
        # kubetune's own view, for people who want more than the API says.
        "kubetune": {"phase": status.get("phase"), "method": method_type, "progress": progress or None,
                     "nodes": (spec.get("distributed") or {}).get("nodes", 1),
                     "gpusPerNode": (spec.get("distributed") or {}).get("gpusPerNode", 1)},
    }


# ------------------------------------------------------- checkpoints, events
def checkpoint_object(job_id: str, step: int, uri: str, created_at: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """One ``fine_tuning.job.checkpoint``; ``fine_tuned_model_checkpoint`` is where the checkpoint is."""
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": f"ftckpt-{job_id[len(JOB_PREFIX):] if job_id.startswith(JOB_PREFIX) else job_id}-{step}",
        "created_at": created_at,
        "fine_tuned_model_checkpoint": uri,
        "fine_tuning_job_id": job_id,
        "step_number": step,
        "metrics": {"step": float(step), "train_loss": metrics.get("loss"), "valid_loss": metrics.get("evalLoss"),
                    "full_valid_loss": metrics.get("fullEvalLoss")},
    }


def event(created_at: int, message: str, *, level: str = "info", type: str = "message", data: dict[str, Any] | None = None,
          ident: str | None = None) -> dict[str, Any]:
    """A ``fine_tuning.job.event``; without ``ident`` the id is a hash of its content (stable across reads)."""
    if ident is None:
        ident = hashlib.sha1(f"{created_at}|{message}|{type}".encode()).hexdigest()[:24]
    return {"object": "fine_tuning.job.event", "id": f"ftevent-{ident}", "created_at": created_at, "level": level,
            "message": message, "data": data or {}, "type": type}


def progress_message(p: dict[str, Any]) -> str:
    total = f"/{p['totalSteps']}" if p.get("totalSteps") else ""
    parts = [f"Step {p.get('step')}{total}"]
    if p.get("loss") is not None:
        parts.append(f"training loss={p['loss']:.4f}")
    if p.get("evalLoss") is not None:
        parts.append(f"validation loss={p['evalLoss']:.4f}")
    return ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]


def progress_data(p: dict[str, Any]) -> dict[str, Any]:
    return {"step": p.get("step"), "total_steps": p.get("totalSteps"), "train_loss": p.get("loss"), "valid_loss": p.get("evalLoss")}


def status_events(ftj: dict[str, Any], k8s_events: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Events of a cluster job: its Kubernetes Events plus what its status says (conditions, progress,
    checkpoint, end), newest first. Ids are content hashes, so pagination holds across reads."""
    meta, status = ftj.get("metadata") or {}, ftj.get("status") or {}
    created = parse_time(meta.get("creationTimestamp")) or int(now)
    out = [event(created, f"Created fine-tuning job: {meta.get('name')}")]
    for ev in k8s_events:
        when = parse_time(ev.get("lastTimestamp") or ev.get("eventTime") or (ev.get("metadata") or {}).get("creationTimestamp")) or created
        level = "warn" if ev.get("type") == "Warning" else "info"
        out.append(event(when, f"{ev.get('reason')}: {ev.get('message')}", level=level))
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        when = parse_time(cond.get("lastTransitionTime")) or created
        text = cond.get("type", "")
        if cond.get("reason"):
            text += f" ({cond['reason']})"
        if cond.get("message"):
            text += f": {cond['message']}"
        out.append(event(when, text, level="error" if cond.get("type") == "Failed" else "info"))
    phase = status.get("phase")
    if phase:
        ended = parse_time(status.get("completionTime")) if phase in ("Succeeded", "Failed") else None
        when = ended or parse_time((status.get("progress") or {}).get("updatedAt")) or parse_time(status.get("startTime")) or created
        text = f"Phase {phase}" + (f" ({status['reason']})" if status.get("reason") else "") + (f": {status['message']}" if status.get("message") else "")
        out.append(event(when, text, level="error" if phase == "Failed" else "info"))
    progress = status.get("progress") or {}
    if progress.get("step") is not None:
        when = parse_time(progress.get("updatedAt")) or created
        out.append(event(when, progress_message(progress), type="metrics", data=progress_data(progress)))
    ckpt = status.get("lastCheckpoint") or {}
    if ckpt.get("step") is not None:
        out.append(event(parse_time(ckpt.get("time")) or created, f"Checkpoint committed at step {ckpt['step']}: {ckpt.get('uri')}"))
    if phase == "Succeeded" and fine_tuned_model(status):
        out.append(event(parse_time(status.get("completionTime")) or created, f"The job has successfully completed: {fine_tuned_model(status)}"))
    seen: set[str] = set()
    unique = []
    for e in out:
        if e["id"] not in seen:
            seen.add(e["id"])
            unique.append(e)
    # Newest first; equal times keep the order above (creation, then what follows from it), reversed.
    return [e for _, e in sorted(enumerate(unique), key=lambda ie: (ie[1]["created_at"], ie[0]), reverse=True)]


def page(items: list[dict[str, Any]], after: str | None, limit: int | None, default_limit: int = 20) -> dict[str, Any]:
    """Cursor pagination as the API does it: the items after the one whose id is ``after``."""
    size = default_limit if limit is None else limit
    if not 1 <= size <= 100:
        raise invalid("limit must be between 1 and 100", "limit")
    start = 0
    if after:
        ids = [i["id"] for i in items]
        if after not in ids:
            raise invalid(f"after: no item with id {after!r} in this list", "after")
        start = ids.index(after) + 1
    chunk = items[start:start + size]
    return {"object": "list", "data": chunk, "has_more": start + size < len(items)}
