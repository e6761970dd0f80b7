"""Search space -> the parameters of trial ``index``. Pure: no I/O, no clock, no hidden state.

Grid: every combination of the parameters' values, in order (the first
parameter varies slowest). Random and bayesian (TPE): Optuna samplers over a
study rebuilt from the trials the sweep's status records (finished ones with
their objective, pruned ones with their intermediate values, running ones as
running), seeded per trial index. The same status always gives the same
suggestion, so an operator restart resumes the sweep exactly.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from kubetune_api.sweep import FineTuneSweepSpec, SweepParameter, TrialStatus

# Seeds of different trials must differ (a fresh sampler with one seed repeats its first draw).
_SEED_STRIDE = 1_000_003


def grid_values(parameter: SweepParameter) -> list[Any]:
    """The values of one parameter on a grid."""
    if parameter.type == "categorical":
        return list(parameter.values or [])
    assert parameter.min is not None and parameter.max is not None
    if parameter.type == "int":
        step = int(parameter.step or 1)
        return list(range(int(math.ceil(parameter.min)), int(math.floor(parameter.max)) + 1, step))
    assert parameter.step is not None
    count = int(math.floor((parameter.max - parameter.min) / parameter.step + 1e-9)) + 1
    return [round(parameter.min + k * parameter.step, 12) for k in range(count)]


def grid(spec: FineTuneSweepSpec) -> list[dict[str, Any]]:
    """Every combination, in order."""
    axes = [grid_values(p) for p in spec.parameters]
    return [dict(zip((p.path for p in spec.parameters), combo, strict=True)) for combo in itertools.product(*axes)]


def grid_size(spec: FineTuneSweepSpec) -> int:
    return math.prod(len(grid_values(p)) for p in spec.parameters)


def max_trials(spec: FineTuneSweepSpec) -> int:
    """Trials in all: maxTrials, and for a grid never more than its size."""
    if spec.algorithm == "grid":
        size = grid_size(spec)
        return min(spec.max_trials, size) if spec.max_trials is not None else size
    assert spec.max_trials is not None
    return spec.max_trials


def _distributions(spec: FineTuneSweepSpec) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for p in spec.parameters:
        if p.type == "categorical":
            out[p.path] = CategoricalDistribution(list(p.values or []))
        elif p.type == "int":
            assert p.min is not None and p.max is not None
            out[p.path] = IntDistribution(int(math.ceil(p.min)), int(math.floor(p.max)), log=p.log, step=int(p.step or 1))
        else:
            assert p.min is not None and p.max is not None
            out[p.path] = FloatDistribution(p.min, p.max, log=p.log, step=p.step)
    return out


def study(spec: FineTuneSweepSpec, trials: Sequence[TrialStatus], index: int) -> Any:
    """An in-memory Optuna study holding the recorded trials, with the sampler for trial ``index``."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = spec.seed * _SEED_STRIDE + index
    sampler: Any
    if spec.algorithm == "bayesian":
        # With fewer finished trials than this, TPE samples at random (Optuna's default is 10).
        startup = max(2, min(10, max_trials(spec) // 3))
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    s = optuna.create_study(sampler=sampler, direction=spec.objective.direction)
    dists = _distributions(spec)
    for t in trials:
        params = {k: v for k, v in t.parameters.items() if k in dists}
        if set(params) != set(dists):
            continue  # recorded under another search space: nothing to learn from
        inter = {r.step: r.value for r in t.intermediate}
        if t.phase == "Succeeded" and t.objective is not None:
            s.add_trial(create_trial(params=params, distributions=dists, value=t.objective, intermediate_values=inter))
        elif t.phase == "Pruned":
            s.add_trial(create_trial(params=params, distributions=dists, state=TrialState.PRUNED, intermediate_values=inter))
        elif t.phase == "Failed":
            s.add_trial(create_trial(params=params, distributions=dists, state=TrialState.FAIL))
        else:
            s.add_trial(create_trial(params=params, distributions=dists, state=TrialState.RUNNING, intermediate_values=inter))
    return s


def suggest(spec: FineTuneSweepSpec, trials: Sequence[TrialStatus], index: int) -> dict[str, Any]:
    """The parameters of trial ``index`` (``path -> value``), given the trials recorded so far."""
    if spec.algorithm == "grid":
        return grid(spec)[index]
    s = study(spec, trials, index)
    asked = s.ask(_distributions(spec))
    return {p.path: _plain(asked.params[p.path]) for p in spec.parameters}


def _plain(value: Any) -> Any:
    """numpy scalars (Optuna may hand them back) as plain Python values for JSON."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value
