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
from collections.abc import Iterable, Sequence
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


# A cross-field validator's message starts with the path of the field it is
# about, relative to the model it runs on: "training.globalBatchSize: ...".
_RELATIVE_PATH = re.compile(r"([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*): (.+)", re.S)
# pydantic tags the errors of each member of a union (int | str) with the
# member's type; for a person they belong to the field itself.
_UNION_TAGS = {"int": "int_", "str": "string_", "float": "float_", "bool": "bool_"}


def field_errors(error: ValidationError, prefix: Sequence[str | int] = ()) -> list[tuple[tuple[str | int, ...], str]]:
    """(field path, message) per problem in a pydantic ValidationError.

    The path is the error's location, with ``prefix`` in front (e.g. 'spec'
    when the model parsed was the spec alone), without pydantic's union-member
    tags, and with the relative path a cross-field validator's message starts
    with joined on. Messages lose pydantic's 'Value error, ' prefix; a missing
    field says 'required field is missing', an unknown one 'unknown field'.
    """
    out = []
    for err in error.errors():
        loc: tuple[str | int, ...] = (*prefix, *err.get("loc", ()))
        kind = err.get("type", "")
        tag = _UNION_TAGS.get(loc[-1]) if loc and isinstance(loc[-1], str) else None
        if tag and kind.startswith(tag):
            loc = loc[:-1]
        msg = re.sub(r"^(Value error|Assertion failed), ", "", str(err.get("msg", "")))
        rel = _RELATIVE_PATH.fullmatch(msg)
        if rel and kind == "value_error":
            loc += tuple(rel.group(1).split("."))
            msg = rel.group(2)
        if kind == "missing":
            msg = "required field is missing"
        elif kind == "extra_forbidden":
            msg = "unknown field"
        out.append((loc, msg))
    return out


def validation_messages(error: ValidationError, prefix: str = "") -> list[str]:
    """One '<field path>: <message>' line per problem in a pydantic ValidationError (see :func:`field_errors`).

    The one formatting of pydantic errors: ``kubetune validate``, the operator,
    ``kubetune run`` and the trainer all print these lines.
    """
    lines = []
    for loc, msg in field_errors(error, (prefix,) if prefix else ()):
        path = error_path(loc)
        line = f"{path}: {msg}" if path else msg
        if line not in lines:
            lines.append(line)
    return lines
