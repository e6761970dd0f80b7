"""The FineTuneSweep API (kubetune.io/v1alpha1, short name ``fts``): hyperparameter
tuning and model selection over a FineTuneJob template.

A sweep holds a FineTuneJob spec (``spec.template``), a search space over its
fields by path (``spec.parameters``: ``training.learningRate`` log-uniform,
``method.lora.r`` a choice, ``model.source`` a choice for model selection), an
algorithm (grid, random, bayesian = Optuna's TPE), an objective metric the
trainer reports, how many trials in all and at once, and early stopping. Each
trial is a child FineTuneJob owned by the sweep. The study lives in the sweep's
status (every trial's parameters, phase, intermediate and final objective), so
the operator keeps no state of its own and a restart resumes exactly.

As in :mod:`.spec`, every CEL rule sits beside the pydantic validator that
enforces the same check (``tests/api/test_api_sweep.py`` checks they agree).
Which paths may be swept is derived from the FineTuneJob model itself
(:func:`sweepable_paths`): every scalar field, by its wire name.
"""
from __future__ import annotations

import functools
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from .common import JOB_NAME_PATTERN, ApiModel, CelRule, cel_rule, invalid, model_rules
from .contract import MAX_JOB_NAME_LENGTH
from .spec import API_VERSION, CATEGORIES, GROUP, VERSION, Condition, FineTuneJobSpec, ObjectMeta

KIND = "FineTuneSweep"
PLURAL = "finetunesweeps"
SINGULAR = "finetunesweep"
SHORT_NAMES = ["fts"]

# A trial's FineTuneJob is named <sweep>-t<index>; the index has at most 4 digits (MAX_TRIALS).
MAX_TRIALS = 1000
MAX_SWEEP_NAME_LENGTH = MAX_JOB_NAME_LENGTH - len("-t1000")
MAX_PARAMETERS = 16
MAX_VALUES = 64
# Intermediate results kept per trial in status (each a step and a value).
MAX_INTERMEDIATE = 100

SweepPhase = Literal["Pending", "Running", "Succeeded", "Failed"]
TrialPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Pruned"]
TRIAL_DONE_PHASES = ("Succeeded", "Failed", "Pruned")
Scalar = str | int | float | bool


# ------------------------------------------------------------ sweepable paths
def _scalar(annotation: Any) -> bool:
    """Whether a field's type is a scalar (or an optional scalar, or a Literal of scalars)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return True
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_scalar(a) for a in args)
    if origin is typing.Annotated:
        return _scalar(typing.get_args(annotation)[0])
    return annotation in (str, int, float, bool)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


@functools.cache
def sweepable_paths() -> tuple[str, ...]:
    """Every scalar field of a FineTuneJob spec by its wire path (``training.learningRate``), sorted.

    Fields a sweep must not vary per trial are left out: ``output.uri`` (the sweep
    gives each trial its own), ``suspend`` (the sweep's switch for pruning).
    """
    out: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            wire = field.alias or name
            path = f"{prefix}{wire}"
            sub = _model_of(field.annotation)
            if sub is not None:
                walk(sub, path + ".")
            elif _scalar(field.annotation):
                out.append(path)

    walk(FineTuneJobSpec, "")
    return tuple(sorted(p for p in out if p not in ("output.uri", "suspend")))


# ---------------------------------------------------------------- the spec
class SweepParameter(ApiModel):
    """One dimension of the search space: a FineTuneJob field by path and the values it may take."""

    model_config = model_rules(
        cel_rule(
            "self.type != 'categorical' || has(self.values)",
            "a categorical parameter needs values: list the choices, e.g. values: [8, 16, 32]",
            ".values",
        ),
        cel_rule(
            "self.type == 'categorical' || !has(self.values)",
            "values is only for type categorical; a float or int parameter takes min and max",
            ".values",
        ),
        cel_rule(
            "self.type == 'categorical' || (has(self.min) && has(self.max) && self.min < self.max)",
            "a float or int parameter needs min and max with min < max",
            ".min",
        ),
        cel_rule(
            "self.type != 'categorical' || (!has(self.min) && !has(self.max) && !has(self.step) && !self.log)",
            "min, max, step and log are for float and int parameters; a categorical one takes values",
            ".type",
        ),
        cel_rule(
            "!self.log || (has(self.min) && self.min > 0.0 && !has(self.step))",
            "log scale needs min > 0 and no step",
            ".log",
        ),
    )

    path: str = Field(
        max_length=128,
        json_schema_extra=lambda schema: schema.update(enum=list(sweepable_paths())),
        description=(
            "The FineTuneJob spec field to vary, by its YAML path, e.g. training.learningRate, method.lora.r, "
            "model.source. Any scalar field except output.uri and suspend."
        ),
    )
    type: Literal["float", "int", "categorical"] = Field(
        description="float (min..max), int (min..max, whole numbers) or categorical (one of values)."
    )
    min: float | None = Field(default=None, description="Lower bound (inclusive) of a float or int parameter.")
    max: float | None = Field(default=None, description="Upper bound (inclusive) of a float or int parameter.")
    step: float | None = Field(
        default=None, gt=0,
        description="Spacing of the values of a float or int parameter (int default 1). A grid over a float needs it.",
    )
    log: bool = Field(default=False, description="Sample on a log scale (e.g. learning rates); needs min > 0, no step.")
    values: list[Any] | None = Field(
        default=None, min_length=1, max_length=MAX_VALUES,
        json_schema_extra={
            "items": {"x-kubernetes-preserve-unknown-fields": True, "x-kubetune-scalar": True},
            "x-kubernetes-validations": [cel_rule(
                "self.all(v, type(v) == string || type(v) == int || type(v) == double || type(v) == bool)",
                "values must be strings, numbers or booleans",
            )],
        },
        description="The choices of a categorical parameter (strings, numbers or booleans), e.g. [8, 16, 32].",
    )

    @field_validator("path")
    @classmethod
    def _known_path(cls, v: str) -> str:
        if v not in sweepable_paths():
            raise ValueError(
                f"{v!r} is not a sweepable FineTuneJob field; use a scalar field's YAML path such as "
                "training.learningRate, method.lora.r or model.source"
            )
        return v

    @field_validator("values")
    @classmethod
    def _scalars(cls, v: list[Any] | None) -> list[Any] | None:
        if v is not None and not all(isinstance(x, (str, int, float, bool)) for x in v):
            raise ValueError("values must be strings, numbers or booleans")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SweepParameter:
        if self.type == "categorical":
            if self.values is None:
                raise invalid("values", "a categorical parameter needs values: list the choices, e.g. values: [8, 16, 32]")
            if self.min is not None or self.max is not None or self.step is not None or self.log:
                raise invalid("type", "min, max, step and log are for float and int parameters; a categorical one takes values")
            return self
        if self.values is not None:
            raise invalid("values", "values is only for type categorical; a float or int parameter takes min and max")
        if self.min is None or self.max is None or not self.min < self.max:
            raise invalid("min", "a float or int parameter needs min and max with min < max")
        if self.log and (self.min <= 0 or self.step is not None):
            raise invalid("log", "log scale needs min > 0 and no step")
        return self


class SweepObjective(ApiModel):
    """What a trial is judged by."""

    metric: str = Field(
        default="evalLoss", min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        description=(
            "A metric the trainer reports in the FineTuneJob's status.output.metrics (evalLoss, perplexity, "
            "exactMatch, or any metric the evaluation adds). Intermediate values for early stopping come from "
            "status.progress (evalLoss)."
        ),
    )
    direction: Literal["minimize", "maximize"] = Field(default="minimize", description="minimize (losses) or maximize (accuracy).")


class EarlyStopping(ApiModel):
    """Pruning of trials that are clearly worse, from the intermediate eval results they report."""

    type: Literal["none", "median", "successiveHalving"] = Field(
        default="none",
        description=(
            "none; median: stop a trial whose latest intermediate result is worse than the median of finished "
            "trials at the same step; successiveHalving: at steps minSteps x reductionFactor^k keep only the best "
            "1/reductionFactor of the trials that reached it."
        ),
    )
    min_steps: int = Field(default=1, ge=1, le=100_000_000, description="Never prune before this training step.")
    min_trials: int = Field(default=2, ge=1, le=MAX_TRIALS, description="median: finished trials needed before pruning.")
    reduction_factor: int = Field(default=3, ge=2, le=100, description="successiveHalving: the factor between rungs.")


def _sweep_rules() -> list[CelRule]:
    return [
        cel_rule(
            "self.algorithm == 'grid' || has(self.maxTrials)",
            "maxTrials is required for random and bayesian search (a grid defaults to its size)",
            ".maxTrials",
        ),
        cel_rule(
            "self.algorithm != 'grid' || self.parameters.all(p, p.type != 'float' || has(p.step))",
            "a grid needs every float parameter to have a step (or make it categorical with values)",
            ".parameters",
        ),
        cel_rule(
            "self.parameters.all(p, self.parameters.exists_one(q, q.path == p.path))",
            "each parameters[].path may appear only once",
            ".parameters",
        ),
        cel_rule(
            "!has(self.maxTrials) || self.parallelism <= self.maxTrials",
            "parallelism must not exceed maxTrials",
            ".parallelism",
        ),
    ]


class FineTuneSweepSpec(ApiModel):
    """A search over FineTuneJob settings: template, search space, algorithm, objective, budget."""

    model_config = model_rules(*_sweep_rules())

    template: FineTuneJobSpec = Field(
        description=(
            "The FineTuneJob spec every trial starts from; each trial sets the parameters on a copy and writes "
            "its output under <template.output.uri>/trials/<trial name>/."
        )
    )
    parameters: list[SweepParameter] = Field(
        min_length=1, max_length=MAX_PARAMETERS, description="The search space: the fields to vary and their ranges."
    )
    algorithm: Literal["grid", "random", "bayesian"] = Field(
        default="random",
        description="grid (every combination, in order), random, or bayesian (Optuna's TPE). Seeded and reproducible.",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the random and bayesian samplers.")
    objective: SweepObjective = Field(default_factory=SweepObjective, description="The metric to optimise and its direction.")
    max_trials: int | None = Field(
        default=None, ge=1, le=MAX_TRIALS, description="Trials in all. Required for random and bayesian; a grid defaults to its size."
    )
    parallelism: int = Field(default=1, ge=1, le=64, description="Trials running at once (each a FineTuneJob).")
    max_failed_trials: int = Field(
        default=1, ge=0, le=MAX_TRIALS,
        description="The sweep fails when more than this many trials fail (pruned trials do not count).",
    )
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping, description="Pruning of clearly worse trials.")

    @model_validator(mode="after")
    def _cross_field(self) -> FineTuneSweepSpec:
        if self.algorithm != "grid" and self.max_trials is None:
            raise invalid("maxTrials", "is required for random and bayesian search (a grid defaults to its size)")
        if self.algorithm == "grid" and any(p.type == "float" and p.step is None for p in self.parameters):
            raise invalid("parameters", "a grid needs every float parameter to have a step (or make it categorical with values)")
        paths = [p.path for p in self.parameters]
        if len(set(paths)) != len(paths):
            raise invalid("parameters", "each parameters[].path may appear only once")
        if self.max_trials is not None and self.parallelism > self.max_trials:
            raise invalid("parallelism", "must not exceed maxTrials")
        return self


# ---------------------------------------------------------------- the status
class IntermediateResult(ApiModel):
    """An intermediate value of the objective, as the trial reported it while training."""

    step: int = Field(description="Training step.")
    value: float = Field(description="The objective's value at that step.")


class TrialStatus(ApiModel):
    """One trial: its parameters, its FineTuneJob and how it went."""

    name: str = Field(description="The trial's FineTuneJob (<sweep>-t<index>).")
    index: int = Field(description="Trial number, from 0.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        description="Parameter path -> value.",
    )
    phase: TrialPhase = Field(default="Pending", description="Pending, Running, Succeeded, Failed or Pruned.")
    reason: str | None = Field(default=None, description="Why it failed or was pruned (CamelCase).")
    message: str | None = Field(default=None, description="Human-readable details.")
    objective: float | None = Field(default=None, description="Final objective (or the last intermediate one of a pruned trial).")
    best_step: int | None = Field(default=None, description="Step of the best intermediate objective.")
    intermediate: list[IntermediateResult] = Field(default_factory=list, description="Intermediate objectives reported while training.")
    output_uri: str | None = Field(default=None, description="Where the trial writes checkpoints and results.")
    start_time: str | None = Field(default=None, description="When the trial was created.")
    completion_time: str | None = Field(default=None, description="When it finished, failed or was pruned.")


class BestTrial(ApiModel):
    """The best finished trial so far."""

    name: str = Field(description="The trial's FineTuneJob.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}, description="Its parameters."
    )
    objective: float = Field(description="Its objective.")
    output_uri: str | None = Field(default=None, description="Its output prefix.")
    adapter_uri: str | None = Field(default=None, description="Its exported adapter.")
    merged_uri: str | None = Field(default=None, description="Its exported merged model.")
    summary_uri: str | None = Field(default=None, description="Its run summary JSON.")


class SweepResults(ApiModel):
    """Files written at the end of the sweep (by kubetune run; on a cluster by the sweep's results Job)."""

    summary_uri: str | None = Field(default=None, description="<output>/sweep.json: every trial.")
    plot_uris: list[str] = Field(default_factory=list, description="PNG plots: objective per trial, eval curves.")


class FineTuneSweepStatus(ApiModel):
    """Observed state of the sweep, written by the operator: the study itself."""

    phase: SweepPhase | None = Field(default=None, description="Pending, Running, Succeeded or Failed.")
    reason: str | None = Field(default=None, description="Reason for the phase (CamelCase).")
    message: str | None = Field(default=None, description="Human-readable details.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Latest observations, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    trials: list[TrialStatus] = Field(default_factory=list, description="Every trial started, in order.")
    progress: str | None = Field(default=None, description="Finished trials / maxTrials, e.g. 3/5.")
    best_trial: BestTrial | None = Field(default=None, description="The best finished trial.")
    results: SweepResults | None = Field(default=None, description="sweep.json and plots, when written.")
    start_time: str | None = Field(default=None, description="When the sweep started.")
    completion_time: str | None = Field(default=None, description="When it finished.")
    observed_generation: int | None = Field(default=None, description="Spec generation the status describes.")


class FineTuneSweep(ApiModel):
    """Hyperparameter tuning and model selection: trials of a FineTuneJob template, searched by an algorithm."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion", description="kubetune.io/v1alpha1")
    kind: Literal["FineTuneSweep"] = Field(description="FineTuneSweep")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: FineTuneSweepSpec = Field(description="Desired state.")
    status: FineTuneSweepStatus | None = Field(default=None, description="Observed state, written by the operator.")

    @field_validator("metadata")
    @classmethod
    def _name(cls, v: ObjectMeta) -> ObjectMeta:
        import re

        if v.name is not None and (len(v.name) > MAX_SWEEP_NAME_LENGTH or not re.match(JOB_NAME_PATTERN, v.name)):
            raise ValueError(f"name: {NAME_MESSAGE}")
        return v


NAME_MESSAGE = (
    f"metadata.name must be at most {MAX_SWEEP_NAME_LENGTH} characters of lowercase letters, digits and '-', "
    "starting with a letter: each trial's FineTuneJob is named <sweep>-t<index>"
)
ROOT_RULES = [
    {
        "rule": (
            f"!has(self.metadata.name) || (self.metadata.name.size() <= {MAX_SWEEP_NAME_LENGTH} "
            f"&& self.metadata.name.matches('{JOB_NAME_PATTERN}'))"
        ),
        "message": NAME_MESSAGE,
        "fieldPath": ".metadata.name",
    }
]


# ------------------------------------------------------------ trial specs
def trial_name(sweep_name: str, index: int) -> str:
    """The FineTuneJob of trial ``index``: ``<sweep>-t<index>``."""
    return f"{sweep_name}-t{index}"


def trial_output_uri(template: dict[str, Any], name: str) -> str:
    """Where a trial writes: ``<template.output.uri>/trials/<trial name>``."""
    return f"{str(template['output']['uri']).rstrip('/')}/trials/{name}"


def apply_parameters(template: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """A copy of a FineTuneJob spec (wire names) with each ``path: value`` set, creating sections as needed."""
    import copy

    spec = copy.deepcopy(template)
    for path, value in parameters.items():
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[leaf] = value
    return spec


def trial_spec(template: dict[str, Any], parameters: dict[str, Any], name: str) -> dict[str, Any]:
    """The spec of one trial: the template, its parameters set, its own output prefix."""
    spec = apply_parameters(template, parameters)
    spec["output"] = {**spec["output"], "uri": trial_output_uri(template, name)}
    return spec


def parameter_probes(parameter: SweepParameter) -> list[tuple[str, Any]]:
    """Values that show whether a parameter fits the template: each choice, or both bounds.

    -> (the field path of the value in the sweep, relative to the parameter; the value).
    """
    if parameter.type == "categorical":
        return [(f"values[{i}]", v) for i, v in enumerate(parameter.values or [])]
    assert parameter.min is not None and parameter.max is not None  # the model's validator ensures it
    if parameter.type == "int":
        return [("min", int(parameter.min)), ("max", int(parameter.max))]
    return [("min", parameter.min), ("max", parameter.max)]


def load_sweep(data: dict[str, Any]) -> FineTuneSweep:
    """Parse a FineTuneSweep manifest dict (camelCase wire names only; raises pydantic.ValidationError)."""
    return FineTuneSweep.model_validate(data, by_alias=True, by_name=False)


__all__ = [
    "API_VERSION", "CATEGORIES", "GROUP", "KIND", "PLURAL", "SINGULAR", "SHORT_NAMES", "VERSION", "MAX_TRIALS",
    "MAX_SWEEP_NAME_LENGTH", "TRIAL_DONE_PHASES", "SweepParameter", "SweepObjective", "EarlyStopping",
    "FineTuneSweepSpec", "IntermediateResult", "TrialStatus", "BestTrial", "SweepResults", "FineTuneSweepStatus",
    "FineTuneSweep", "load_sweep", "sweepable_paths", "Scalar", "trial_name", "trial_output_uri", "apply_parameters",
    "trial_spec", "parameter_probes",
]
