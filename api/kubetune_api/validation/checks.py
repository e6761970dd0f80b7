"""Layer 3: the pydantic model (what the trainer and ``kubetune run`` enforce),
plus what neither the schema nor CEL can express (S3 bucket names, Hub repo
ids, metadata.name present), plus warnings: valid, but probably not what was
meant.
"""
from __future__ import annotations

import re
from typing import Any

from .. import spec as api
from .. import sweep as sweep_api
from .. import tasks
from ..contract import validation_messages
from .problems import Problem, pydantic_problems
from .schema import crd_schema


def model_problems(doc: dict[str, Any], kind: str = api.KIND) -> list[Problem]:
    """The pydantic model on a pruned (not defaulted) document."""
    from pydantic import ValidationError

    try:
        if kind == sweep_api.KIND:
            sweep_api.load_sweep(doc)
        else:
            api.load_job(doc)
    except ValidationError as e:
        return pydantic_problems(e, doc, crd_schema(kind))
    return []


def sweep_problems(doc: dict[str, Any]) -> list[Problem]:
    """What only code can check in a sweep: every choice (and both bounds) of every parameter
    must give a valid FineTuneJob when set on the template; the URIs of the template. Call on a
    document the model accepts."""
    from pydantic import ValidationError

    sweep = sweep_api.load_sweep(doc)
    template = doc["spec"]["template"]
    problems: list[Problem] = []
    for i, parameter in enumerate(sweep.spec.parameters):
        for where, value in sweep_api.parameter_probes(parameter):
            try:
                api.FineTuneJobSpec.model_validate(
                    sweep_api.apply_parameters(template, {parameter.path: value}), by_alias=True, by_name=False
                )
            except ValidationError as e:
                first = validation_messages(e)[0]
                problems.append(Problem(
                    f"spec.parameters[{i}].{where}",
                    f"{parameter.path}={value!r} makes the trial's FineTuneJob invalid: {first}",
                    "model",
                ))
    job = {"metadata": doc.get("metadata"), "spec": template}
    problems += [
        Problem(p.path.replace("spec.", "spec.template.", 1), p.message, p.layer)
        for p in code_problems(job) if p.path.startswith("spec.")
    ]
    return problems


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HUB_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _uri_problem(uri: Any, where: str) -> Problem | None:
    if not isinstance(uri, str):
        return None
    if uri.startswith("s3://"):
        bucket = uri[len("s3://"):].split("/", 1)[0]
        if not bucket:
            return Problem(where, f"{uri!r} has no bucket; write s3://bucket/prefix", "model")
        if not _BUCKET.match(bucket) or ".." in bucket or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket):
            return Problem(
                where,
                f"{bucket!r} is not a valid S3 bucket name (3-63 characters: lowercase letters, digits, '.', '-')",
                "model",
            )
    elif uri.startswith("hf://"):
        repo = uri[len("hf://"):]
        if not _HUB_REPO.match(repo):
            return Problem(where, f"{repo!r} is not a Hugging Face repo id; write hf://org/name", "model")
    elif uri.startswith("file://") and not uri[len("file://"):]:
        return Problem(where, "file:// needs a path, e.g. file:///data/train.jsonl", "model")
    return None


def code_problems(doc: dict[str, Any]) -> list[Problem]:
    """What neither the schema nor CEL can express."""
    problems: list[Problem] = []
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    if not meta or (not meta.get("name") and not meta.get("generateName")):
        problems.append(Problem("metadata.name", "required: give the job a name (or metadata.generateName)", "model"))
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}

    def get(*keys: str) -> Any:
        node: Any = spec
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    for keys in (("model", "source"), ("dataset", "train"), ("dataset", "eval"), ("output", "uri")):
        p = _uri_problem(get(*keys), "spec." + ".".join(keys))
        if p:
            problems.append(p)
    task_problem = _local_model_task_problem(get("model", "source"), get("model", "task"))
    if task_problem:
        problems.append(task_problem)
    return problems


def _local_model_task_problem(source: Any, task: Any) -> Problem | None:
    """An explicit model.task the model cannot do, when the model is a local folder with a config.json."""
    import json
    import os

    if not isinstance(source, str) or not isinstance(task, str) or task == "auto" or "://" in source.replace("file://", ""):
        return None
    config_path = os.path.join(source.removeprefix("file://"), "config.json")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None  # not here (a path inside the trainer's image) or not readable: the trainer checks it
    why = tasks.task_problem(task, config) if isinstance(config, dict) else None
    return Problem("spec.model.task", why, "model") if why else None


def warnings(doc: dict[str, Any]) -> list[Problem]:
    """Valid but probably not what was meant; printed, never failing. Call only on a valid manifest."""
    spec = api.load_job(doc).spec
    out: list[Problem] = []
    t, o, d, st = spec.training, spec.output, spec.distributed, spec.storage
    every = o.checkpoint_every_steps()
    if t.max_steps is not None and every is not None and every >= t.max_steps:
        out.append(Problem(
            "spec.output.checkpointEvery",
            f"{every} steps >= training.maxSteps ({t.max_steps}): no checkpoint before the end, so a failure or "
            "preemption restarts from scratch; checkpoint more often",
            "warning",
        ))
    if t.max_steps is not None and t.eval_every is not None and t.eval_every > t.max_steps:
        out.append(Problem("spec.training.evalEvery", f"{t.eval_every} > training.maxSteps ({t.max_steps}): "
                           "evaluation runs only at the end", "warning"))
    if spec.method.type == "qlora" and d.gpus_per_node == 0:
        out.append(Problem("spec.method.type", "qlora on CPU (gpusPerNode 0) runs bitsandbytes' slow CPU path: "
                           "fine for a wiring test, not for real training", "warning"))
    uris = [spec.model.source or "", spec.model.adapter or "", spec.dataset.train, spec.dataset.eval or "", o.uri]
    uses_s3 = any(u.startswith("s3://") for u in uris)
    if not uses_s3 and (st.endpoint or st.secret_ref):
        out.append(Problem("spec.storage", "S3 settings are set but no URI uses s3://; they have no effect", "warning"))
    if uses_s3 and st.secret_ref is None and spec.service_account_name is None:
        out.append(Problem(
            "spec.storage.secretRef",
            "not set: S3 credentials must come from the pods' cloud identity (IRSA, workload identity); "
            "set storage.secretRef or serviceAccountName unless the nodes provide one",
            "warning",
        ))
    return out
