"""phases.decide over generated observed state never raises and is idempotent (deciding twice on the
same observation gives the same decision); surface in tests/support/fuzz_decide.py, longer runs:
bench/fuzz.py."""
from __future__ import annotations

from support.fuzz import explore
from support.fuzz_decide import SURFACES


def test_property():
    (surface,) = SURFACES
    assert explore(surface).tried == surface.examples


def test_a_start_time_without_an_offset_is_utc():
    """Found by bench/fuzz.py: a naive startTime (no 'Z') made the deadline check compare naive and aware
    datetimes (TypeError, a crash loop of the handler); it is read as UTC."""
    import datetime as dt

    from kubetune_operator import phases
    from kubetune_operator.observe import Observation
    from kubetune_operator.settings import OperatorSettings
    from support.manifests import job_manifest

    ftj = job_manifest("j", "ml", runPolicy={"maxRestarts": 0, "backoffSeconds": 0, "activeDeadlineSeconds": 1})
    ftj["metadata"].update(uid="u-1", generation=1)
    ftj["status"] = {"phase": "Pending", "attempt": 0, "startTime": "2026-01-01T12:00:00"}
    now = dt.datetime(2026, 1, 1, 12, 0, 5, tzinfo=dt.UTC)
    decision = phases.decide(Observation.of(ftj, now=now, settings=OperatorSettings()))
    assert (decision.status_patch["phase"], decision.status_patch["reason"]) == ("Failed", "DeadlineExceeded")
