"""The status writer: turns transitions into one status merge-patch and the Events to post.

``phases.decide`` calls :meth:`StatusWriter.transition` and friends; the
writer keeps the phase condition of every phase consistent (the entered one
True, the others False), stamps ``lastTransitionTime`` only when a condition's
status changes, and sets ``observedGeneration``. Nothing is written when
nothing changed: a patch that would not change the object is never made.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any, Literal

from kubetune_operator import reasons as R

EventType = Literal["Normal", "Warning"]


def rfc3339(t: dt.datetime) -> str:
    """RFC 3339 in UTC with milliseconds (backoff due times are computed from these)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(s: str | None) -> dt.datetime | None:
    """An RFC 3339 time of the status; one without an offset is UTC (compared with the aware ``now``)."""
    if not s:
        return None
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except (ValueError, TypeError):
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


class StatusWriter:
    """Accumulates a status merge-patch and the events of transitions."""

    def __init__(self, status: Mapping[str, Any], now: dt.datetime, generation: int | None) -> None:
        self.status = status
        self.now = now
        self.generation = generation
        self.patch: dict[str, Any] = {}
        self.events: list[Event] = []
        self.entered: tuple[str, str] | None = None  # (phase, reason) of the last transition
        self.conditions = [dict(c) for c in (status.get("conditions") or []) if isinstance(c, dict)]
        self._dirty_conditions = False

    def get(self, key: str) -> Any:
        return self.patch.get(key, self.status.get(key))

    def set(self, key: str, value: Any) -> None:
        if self.status.get(key) != value or key in self.patch:
            self.patch[key] = value

    def event(self, type: EventType, reason: str, message: str) -> None:
        self.events.append(Event(type, reason, message))

    def condition(self, ctype: str) -> dict[str, Any] | None:
        for c in self.conditions:
            if c.get("type") == ctype:
                return c
        return None

    def condition_true(self, ctype: str) -> bool:
        return (self.condition(ctype) or {}).get("status") == "True"

    def set_condition(self, ctype: str, status: str, reason: str, message: str) -> bool:
        """Set one condition; -> whether anything changed."""
        c = self.condition(ctype)
        if c and c.get("status") == status and c.get("reason") == reason and c.get("message") == message:
            return False
        same_status = c is not None and c.get("status") == status and c.get("lastTransitionTime")
        new = {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": c["lastTransitionTime"] if c is not None and same_status else rfc3339(self.now),
        }
        if self.generation is not None:
            new["observedGeneration"] = self.generation
        if c:
            self.conditions[self.conditions.index(c)] = new
        else:
            self.conditions.append(new)
        self._dirty_conditions = True
        return True

    def transition(self, phase: str, reason: str, message: str) -> bool:
        """Enter (phase, reason); no-op when already there. -> whether it changed."""
        c = self.condition(phase)
        same = (self.get("phase") == phase and self.get("reason") == reason
                and c is not None and c.get("status") == "True" and c.get("reason") == reason)
        if same:
            return False
        self.set("phase", phase)
        self.set("reason", reason)
        self.set("message", message)
        self.set_condition(phase, "True", reason, message)
        for other in R.PHASES:
            if other != phase and self.condition_true(other):
                self.set_condition(other, "False", reason, f"now {phase}: {message}")
        if phase in (R.INITIALIZING, R.RUNNING) and not self.get("startTime"):
            self.set("startTime", rfc3339(self.now))
        if phase in R.TERMINAL and not self.get("completionTime"):
            self.set("completionTime", rfc3339(self.now))
        etype: EventType = "Normal" if reason in R.NORMAL_REASONS or phase == R.SUCCEEDED else "Warning"
        self.event(etype, reason, f"{phase}: {message}")
        self.entered = (phase, reason)
        return True

    def finish(self) -> dict[str, Any]:
        """The merge-patch of everything set (empty when nothing changed)."""
        if self._dirty_conditions:
            self.patch["conditions"] = self.conditions
        # Every generation is acknowledged, also one that changed nothing else (a runPolicy edit).
        if self.generation is not None and self.status.get("observedGeneration") != self.generation:
            self.patch["observedGeneration"] = self.generation
        return self.patch
