"""Training-data surface: the trainer's data stage (``kubetune_trainer.data.prepare``:
read JSONL/JSON/CSV/Parquet, detect the format, render, tokenize, mask, pack)
fed generated files in every format, with malformed lines, wrong types,
missing keys, empty files, a BOM, huge rows, binary bytes and truncation.

The answer must be prepared samples or a PermanentError with a known reason
and one line that says what is wrong (the trainer prints it and exits 3, see
tests/trainer/test_errors.py); with ``badRows: skip`` a bad row is counted and
skipped, never fatal. No model is trained: the tiny tokenizer of
``kubetune_trainer.tiny`` is built once.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import os
import tempfile
from typing import Any

from hypothesis import strategies as st

from support.fuzz import Surface

REASONS = {"InvalidDataset", "EmptyDataset", "SequenceTooLong", "DatasetNotFound"}
KEYS = ["text", "prompt", "completion", "instruction", "input", "output", "messages", "label", ""]
ROLES = ["user", "assistant", "system", "tool", "", "ASSISTANT"]


@functools.cache
def tokenizer() -> Any:
    from kubetune_trainer import tiny

    return tiny.build_tokenizer()


scalars = st.one_of(
    st.text(max_size=40), st.text(st.characters(categories=["Cc", "Cf", "Zs", "So", "Lo", "Cs"], codec="utf-8"), max_size=8),
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.just("word " * 3000),
)
messages = st.lists(
    st.one_of(st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": st.one_of(st.text(max_size=30), scalars)}),
              st.dictionaries(st.sampled_from(["role", "content", "name"]), scalars, max_size=3), scalars),
    max_size=4,
)
rows = st.lists(st.dictionaries(st.sampled_from(KEYS), st.one_of(scalars, messages, st.lists(scalars, max_size=2)),
                                max_size=4), max_size=8)
good_rows = st.lists(st.sampled_from([
    {"text": "the cat sat on the mat"},
    {"prompt": "two plus three is", "completion": " five"},
    {"instruction": "say hi", "input": "", "output": "hi"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
]), min_size=1, max_size=6)


def _serialize(fmt: str, data: list[dict[str, Any]]) -> bytes:
    if fmt == "jsonl":
        return "\n".join(json.dumps(r) for r in data).encode()
    if fmt == "json":
        return json.dumps(data).encode()
    if fmt == "csv":
        out = io.StringIO()
        columns = sorted({k for r in data for k in r})
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for r in data:
            writer.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})
        return out.getvalue().encode("utf-8", "surrogatepass")
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    try:
        pq.write_table(pa.Table.from_pylist(data), sink)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):  # mixed types, or a struct Parquet cannot hold: as strings
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([{k: json.dumps(v) for k, v in r.items()} for r in data]), sink)
    return sink.getvalue()


@st.composite
def data_files(draw: st.DrawFn) -> dict[str, Any]:
    fmt = draw(st.sampled_from(["jsonl", "json", "csv", "parquet"]))
    content = draw(st.one_of(good_rows, rows))
    try:
        data = _serialize(fmt, content)
    except (UnicodeEncodeError, ValueError, OverflowError):
        data = _serialize(fmt, [{"text": "surrogates cannot be written"}])
    damage = draw(st.sampled_from(["none", "none", "none", "bom", "bytes", "truncate", "empty", "blank-lines"]))
    if damage == "bom":
        data = b"\xef\xbb\xbf" + data
    elif damage == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    elif damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "empty":
        data = b""
    elif damage == "blank-lines":
        data = data.replace(b"\n", b"\n\n")
    return {
        "fmt": fmt, "bytes": data,
        "format": draw(st.sampled_from(["auto", "text", "instruction", "chat"])),
        "bad_rows": draw(st.sampled_from(["fail", "skip"])),
        "truncation": draw(st.sampled_from(["truncate", "drop", "fail"])),
        "max_seq_length": draw(st.sampled_from([16, 24, 64, 2048])),
        "eval_fraction": draw(st.sampled_from([0.0, 0.2])),
        "train_on_prompt": draw(st.booleans()),
        "packing": draw(st.booleans()),
    }


def check_prepare(case: dict[str, Any]) -> None:
    from kubetune_api.contract import PermanentError
    from kubetune_api.spec import DatasetSpec
    from kubetune_trainer import data

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"train.{case['fmt']}")
        with open(path, "wb") as f:
            f.write(case["bytes"])
        spec = DatasetSpec(train=path, format=case["format"], bad_rows=case["bad_rows"], truncation=case["truncation"],
                           max_seq_length=case["max_seq_length"], eval_fraction=case["eval_fraction"],
                           train_on_prompt=case["train_on_prompt"])
        try:
            prepared = data.prepare(spec, tokenizer(), path, None, seed=0, packing=case["packing"],
                                    cache_dir=os.path.join(tmp, "cache"))
        except PermanentError as e:
            message = str(e)
            assert e.reason in REASONS, (e.reason, message)
            assert message and "\n" not in message, f"not one line: {message!r}"
            if case["bad_rows"] == "skip":
                assert "badRows: skip" not in message, message
            return
        stats = prepared.train_stats
        assert prepared.train and stats.samples > 0
        assert stats.bad_rows + stats.samples + stats.dropped_too_long + stats.dropped_no_loss_tokens <= stats.rows
        if case["bad_rows"] == "fail":
            assert stats.bad_rows == 0
        limit = case["max_seq_length"]
        assert all(len(s["input_ids"]) <= limit for s in prepared.train), "a sample longer than maxSeqLength"


SURFACES = [Surface("training data: JSONL/JSON/CSV/Parquet readers and formats", data_files(), check_prepare,
                    examples=60)]
