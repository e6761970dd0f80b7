"""phases.decide over generated observed state never raises and is idempotent (deciding twice on the
same observation gives the same decision); surface in tests/support/fuzz_decide.py, longer runs:
bench/fuzz.py."""
from __future__ import annotations

from support.fuzz import explore
from support.fuzz_decide import SURFACES


def test_property():
    (surface,) = SURFACES
    assert explore(surface).tried == surface.examples
