"""Reading manifest files: the one YAML reader of ``kubetune validate``,
``render``, ``run`` and the trainer's config.

Whatever the bytes, the answer is the documents or one :class:`Unreadable`
error saying what is wrong in words (never a traceback): a file that cannot
be opened, bytes that are not UTF-8, text that is not YAML, nesting deeper
than any manifest needs, or aliases that expand to more values than any
manifest has (the "billion laughs" document, which would otherwise make every
later walk over the document take forever).
"""
from __future__ import annotations

import os
import sys
from typing import Any

import yaml

MAX_DEPTH = 64  # a FineTuneJob nests about 8 levels (affinity is the deepest)
MAX_VALUES = 100_000  # counted as a walk sees them: an alias counts each time it is used


class Unreadable(ValueError):
    """A manifest file that cannot be read as YAML documents; the message says why, without the path."""


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes ('-': standard input)."""
    try:
        if str(path) == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Unreadable(f"cannot read: {e.strerror or e}") from None


def parse_documents(data: bytes) -> list[Any]:
    """The YAML documents in ``data`` (None for an empty document, as PyYAML gives it)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Unreadable(
            f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} cannot be decoded; save the file as UTF-8"
        ) from None
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise Unreadable(f"not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise Unreadable(f"not a manifest: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # a scalar PyYAML cannot construct, e.g. an integer of more than 4300 digits
        raise Unreadable(f"not valid YAML: {e}") from None
    budget = [MAX_VALUES]
    for doc in docs:
        _check_size(doc, 0, budget)
    return docs


def read_documents(path: str | os.PathLike[str]) -> list[Any]:
    """The YAML documents of a file ('-': standard input, e.g. from ``helm template``)."""
    return parse_documents(read_bytes(path))


def check_size(value: Any) -> None:
    """Refuse a parsed document (YAML, or JSON as an HTTP body) nested deeper or holding more values than a manifest needs."""
    _check_size(value, 0, [MAX_VALUES])


def _check_size(value: Any, depth: int, budget: list[int]) -> None:
    if depth > MAX_DEPTH:
        raise Unreadable(f"not a manifest: nested deeper than {MAX_DEPTH} levels")
    budget[0] -= 1
    if budget[0] < 0:
        raise Unreadable(f"not a manifest: more than {MAX_VALUES} values (YAML aliases that expand without end?)")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_size(k, depth + 1, budget)
            _check_size(v, depth + 1, budget)
    elif isinstance(value, list):
        for v in value:
            _check_size(v, depth + 1, budget)
