"""Bad training data never crashes the data stage: property-based fuzzing of the JSONL/JSON/CSV/Parquet
readers and every row format (surface in tests/support/fuzz_data.py; longer runs: bench/fuzz.py), and
each crash the fuzzing found, kept as a regular test."""
from __future__ import annotations

import pytest

from kubetune_api.contract import PermanentError, parse_error_line
from kubetune_api.spec import DatasetSpec
from kubetune_trainer import data
from support.fuzz import explore
from support.fuzz_data import SURFACES


@pytest.mark.parametrize("surface", SURFACES, ids=lambda s: s.name.split(":")[0])
def test_property(surface):
    assert explore(surface).tried == surface.examples


def test_csv_with_a_nul_column_is_one_error_line(tmp_path, tokenizer):
    """datasets explains a column mismatch over several paragraphs; the error line must stay one line,
    or the operator reads only its first line from the termination message."""
    path = tmp_path / "train.csv"
    path.write_bytes(b"\x00\r\n")
    with pytest.raises(PermanentError) as e:
        data.prepare(DatasetSpec(train=str(path), eval_fraction=0), tokenizer, str(path), None, seed=0, packing=False,
                     cache_dir=str(tmp_path / "cache"))
    assert e.value.reason == "InvalidDataset"
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{path}: cannot read dataset: ")
    assert parse_error_line(f"kubetune: error: {e.value.reason}: {e.value}") == (e.value.reason, str(e.value))


def test_parquet_string_that_is_not_utf8_is_one_error_line(tmp_path, tokenizer):
    """Found by bench/fuzz.py (seed 20261130): a Parquet string column holding a byte that is not UTF-8
    (0x80) is read without complaint, and failed only as the rows became Python strings: a traceback
    (UnicodeDecodeError) instead of the InvalidDataset line."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"text": "AAAA the cat sat on the mat"}] * 3), sink, compression="none")
    raw = sink.getvalue()
    at = raw.index(b"AAAA")
    path = tmp_path / "train.parquet"
    path.write_bytes(raw[:at] + b"\x80" + raw[at + 1:])
    with pytest.raises(PermanentError) as e:
        data.prepare(DatasetSpec(train=str(path), eval_fraction=0), tokenizer, str(path), None, seed=0, packing=False,
                     cache_dir=str(tmp_path / "cache"))
    assert e.value.reason == "InvalidDataset"
    assert str(e.value).startswith(f"{path}: cannot read dataset: UnicodeDecodeError: ") and "\n" not in str(e.value)
