"""Property-based fuzzing of kubetune's input surfaces (Hypothesis).

A :class:`Surface` is a place where a person or a program hands kubetune
input: a strategy that generates such input, and a check that runs kubetune
on it and fails (raises) when the answer is anything but a clear error or a
success. The test suite explores each surface with a fixed seed and a small
number of examples (:func:`explore`); ``bench/fuzz.py`` explores them longer
and counts inputs tried and failures found.

The strategies live beside their surface: ``fuzz_manifests``, ``fuzz_data``,
``fuzz_storage`` and ``fuzz_decide`` in this package.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st


@dataclass(frozen=True)
class Surface:
    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], None]
    examples: int = 40  # what the test suite tries; bench/fuzz.py tries more


@dataclass
class Result:
    name: str
    tried: int = 0
    failures: list[str] = field(default_factory=list)


def explore(surface: Surface, *, examples: int | None = None, seed_value: int = 20, raise_failures: bool = True) -> Result:
    """Run ``surface.check`` on ``examples`` generated inputs (fixed seed, no example database).

    With ``raise_failures`` the first failure propagates, Hypothesis's
    minimal falsifying example printed with it (the test suite); otherwise
    failures are counted and described (bench/fuzz.py).
    """
    result = Result(surface.name)

    def body(value: Any) -> None:
        result.tried += 1
        surface.check(value)

    test = settings(
        max_examples=examples or surface.examples,
        deadline=None,
        database=None,
        print_blob=False,
        report_multiple_bugs=not raise_failures,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.large_base_example],
    )(seed(seed_value)(given(surface.strategy)(body)))
    try:
        test()
    except BaseException as e:  # noqa: B036 - an ExceptionGroup of distinct failures is counted too
        if raise_failures or isinstance(e, KeyboardInterrupt):
            raise
        errors = list(e.exceptions) if isinstance(e, BaseExceptionGroup) else [e]
        result.failures = [f"{type(x).__name__}: {str(x).splitlines()[0] if str(x) else ''}" for x in errors]
    return result
