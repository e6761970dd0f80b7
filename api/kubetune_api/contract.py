"""What the trainer, the operator and ``kubetune run`` agree on, in one place.

Exit codes of the trainer (the operator and ``kubetune run`` read them):

- ``OK`` (0): training and export finished.
- ``PERMANENT`` (3): a retry cannot fix it (invalid config, unreadable or
  malformed data, model not found, wrong bucket or credentials). The job fails
  at once with the reason the trainer printed last.
- ``PREEMPTED`` (75, EX_TEMPFAIL): the trainer was asked to stop (SIGTERM),
  committed a checkpoint and exited; restart/resume without counting a failure.
- anything else (1, 137 for kill -9 / OOM, 139, ...): transient; the operator
  restarts the gang, which resumes from the last committed checkpoint.

The error line: before exiting ``PERMANENT`` the trainer prints one line
``kubetune: error: <Reason>: <message>`` to stderr; the operator finds the last
such line in the pod's termination message and turns it into the job's
``Failed`` reason and message (:func:`format_error_line`, :func:`parse_error_line`).

The spec fields that may change after creation, the longest job name, and the
one function that turns a pydantic validation error into field-path messages
live here too, so no component keeps its own copy.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic is a core dependency, but keep the import lazy for the CLI's start-up
    from pydantic import ValidationError

OK = 0
PERMANENT = 3
PREEMPTED = 75

# The reason used when nothing more specific is known.
DEFAULT_PERMANENT_REASON = "InvalidSpec"

ERROR_PREFIX = "kubetune: error: "
_ERROR_LINE = re.compile(r"kubetune: error: ([A-Za-z][A-Za-z0-9]*): (.*)")

# spec fields that may change after creation; every other spec field is immutable
# (enforced by CEL transition rules generated in crd.py, and by the operator).
MUTABLE_SPEC_FIELDS = ("suspend", "runPolicy")

# metadata.name must fit the names the operator derives from it (Service, Job
# "<name>-a<attempt>", pod hostnames "<name>-a<attempt>-<index>", all DNS-1035
# labels of at most 63 characters): with up to 4 digits of attempt and of
# index that leaves 52 characters for the name.
MAX_JOB_NAME_LENGTH = 52
DNS_LABEL_MAX = 63


class PermanentError(Exception):
    """An error a retry cannot fix. The trainer exits with PERMANENT."""

    def __init__(self, message: str, reason: str = DEFAULT_PERMANENT_REASON):
        super().__init__(message)
        self.reason = reason


def format_error_line(reason: str, message: object) -> str:
    """The one line a component prints before exiting PERMANENT."""
    return f"{ERROR_PREFIX}{reason}: {message}"


def parse_error_line(text: str | None) -> tuple[str, str] | None:
    """(reason, message) of the last error line in ``text`` (a log tail), or None."""
    found = None
    for line in (text or "").splitlines():
        m = _ERROR_LINE.search(line)
        if m:
            found = (m.group(1), m.group(2).strip())
    return found


def last_error_line(text: str | None) -> str | None:
    """The last raw ``kubetune: error:`` line of ``text``, stripped, or None."""
    found = [line.strip() for line in (text or "").splitlines() if line.strip().startswith(ERROR_PREFIX)]
    return found[-1] if found else None


def error_path(loc: Iterable[Any]) -> str:
    """A pydantic error location as a field path: ('spec', 'env', 0, 'name') -> 'spec.env[0].name'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_messages(error: ValidationError, prefix: str = "") -> list[str]:
    """One '<field path>: <message>' line per problem in a pydantic ValidationError.

    ``prefix`` is prepended to each path (e.g. 'spec' when the model parsed
    was the spec alone). Errors raised by our own cross-field validators
    already start with their relative path ('training.globalBatchSize: ...');
    that path is joined onto the location instead of repeated.
    """
    lines = []
    for err in error.errors():
        path = error_path(([prefix] if prefix else []) + list(err.get("loc", ())))
        msg = str(err.get("msg", ""))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        head, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(\[[0-9]+\])?(\.[A-Za-z][A-Za-z0-9]*(\[[0-9]+\])?)*", head):
            path = f"{path}.{head}" if path else head
            msg = rest
        lines.append(f"{path}: {msg}" if path else msg)
    return lines
