"""Which running trials to stop early, from the intermediate results they reported. Pure.

- median (Optuna's MedianPruner rule): once ``minTrials`` trials have finished,
  a running trial whose latest intermediate value (at step s >= minSteps) is
  worse than the median of the finished trials' values at s (each one's last
  value at or before s) is pruned;
- successiveHalving (ASHA, Optuna's SuccessiveHalvingPruner rule): rungs at
  minSteps x reductionFactor^k; a trial that reaches a rung continues only when
  its value there (its first report at or after the rung) is among the best max(1, n // reductionFactor) of the n trials
  that reached that rung (including itself); otherwise it is pruned.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence

from kubetune_api.sweep import EarlyStopping, IntermediateResult, TrialStatus


def value_at(results: Sequence[IntermediateResult], step: int) -> float | None:
    """The last value reported at or before ``step``."""
    best = None
    for r in results:
        if r.step <= step and (best is None or r.step >= best.step):
            best = r
    return best.value if best else None


def value_reaching(results: Sequence[IntermediateResult], step: int) -> float | None:
    """The first value reported at or after ``step`` (when the trial reached that rung)."""
    after = [r for r in results if r.step >= step]
    return min(after, key=lambda r: r.step).value if after else None


def _worse(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "minimize" else a < b


def median_prune(trial: TrialStatus, finished: Sequence[TrialStatus], rule: EarlyStopping, direction: str) -> str | None:
    """A message when ``trial`` should be pruned by the median rule, else None."""
    if not trial.intermediate:
        return None
    last = max(trial.intermediate, key=lambda r: r.step)
    if last.step < rule.min_steps:
        return None
    peers = [v for t in finished if (v := value_at(t.intermediate, last.step)) is not None]
    if len(peers) < rule.min_trials:
        return None
    median = statistics.median(peers)
    if _worse(last.value, median, direction):
        return (f"{last.value:.4g} at step {last.step} is worse than the median {median:.4g} "
                f"of {len(peers)} finished trials at that step")
    return None


def rungs(rule: EarlyStopping, up_to: int) -> list[int]:
    """Rung steps minSteps x reductionFactor^k up to ``up_to``."""
    out, step = [], rule.min_steps
    while step <= up_to:
        out.append(step)
        step *= rule.reduction_factor
    return out


def halving_prune(trial: TrialStatus, others: Sequence[TrialStatus], rule: EarlyStopping, direction: str) -> str | None:
    """A message when ``trial`` should be pruned at the highest rung it reached, else None."""
    if not trial.intermediate:
        return None
    reached = max(r.step for r in trial.intermediate)
    top = rungs(rule, reached)
    if not top:
        return None
    rung = top[-1]
    mine = value_reaching(trial.intermediate, rung)
    assert mine is not None
    competing = [mine] + [v for t in others if (v := value_reaching(t.intermediate, rung)) is not None]
    keep = max(1, len(competing) // rule.reduction_factor)
    ranked = sorted(competing, reverse=direction == "maximize")
    if _worse(mine, ranked[keep - 1], direction):
        return (f"{mine:.4g} at rung step {rung} is not among the best {keep} of {len(competing)} "
                f"trials that reached it")
    return None


def to_prune(trials: Sequence[TrialStatus], rule: EarlyStopping, direction: str) -> dict[str, str]:
    """Running trials to prune now -> why."""
    if rule.type == "none":
        return {}
    out: dict[str, str] = {}
    finished = [t for t in trials if t.phase == "Succeeded"]
    for t in trials:
        if t.phase != "Running":
            continue
        if rule.type == "median":
            why = median_prune(t, finished, rule, direction)
        else:
            why = halving_prune(t, [o for o in trials if o.name != t.name and o.phase != "Failed"], rule, direction)
        if why:
            out[t.name] = why
    return out
