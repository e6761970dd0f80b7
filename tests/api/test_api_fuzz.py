"""Bad manifests never crash: property-based fuzzing of `kubetune validate`, `render`, `run`'s reading and
the operator's parse (surfaces in tests/support/fuzz_manifests.py; longer runs: bench/fuzz.py), and each
crash the fuzzing found, kept as a regular test."""
from __future__ import annotations

import copy
from argparse import Namespace

import pytest
import yaml

from kubetune_api.validation import validate_manifest
from kubetune_operator import builders, render
from kubetune_operator.cli import main as kubetune
from kubetune_operator.localrun.manifest import load_manifest
from kubetune_operator.localrun.manifest import validate_manifest as run_parse
from support.fuzz import explore
from support.fuzz_manifests import BASE, BILLION_LAUGHS, SURFACES


@pytest.mark.parametrize("surface", SURFACES, ids=lambda s: s.name.split(":")[0] + ":" + s.name.split(":")[1][:30])
def test_property(surface):
    result = explore(surface)
    assert result.tried == surface.examples


def _base() -> dict:
    return copy.deepcopy(BASE)


def _validate(tmp_path, capsys, data: bytes) -> tuple[int, list[str]]:
    f = tmp_path / "job.yaml"
    f.write_bytes(data)
    rc = kubetune(["validate", str(f)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert all(line.startswith(f"{f}: ") for line in lines), lines
    return rc, [line[len(f"{f}: "):] for line in lines]


def test_huge_integer_is_out_of_range_not_a_cel_overflow(tmp_path, capsys):
    job = _base()
    job["spec"]["method"]["lora"]["r"] = 99999999999999999999
    assert _validate(tmp_path, capsys, yaml.safe_dump(job).encode()) == (
        1, ["spec.method.lora.r: must be <= 1024 (got 99999999999999999999)"])


def test_integer_beyond_int64_in_an_unbounded_field(tmp_path, capsys):
    job = _base()
    job["spec"]["tolerations"] = [{"key": "a", "effect": "NoExecute", "tolerationSeconds": 2**64}]
    assert _validate(tmp_path, capsys, yaml.safe_dump(job).encode()) == (
        1, [f"spec.tolerations[0].tolerationSeconds: must fit a 64-bit integer (got {2**64})"])


def test_integer_too_long_to_read(tmp_path, capsys):
    rc, lines = _validate(tmp_path, capsys, b"apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nx: " + b"9" * 5000)
    assert rc == 2 and lines[0].startswith("not valid YAML: ")


@pytest.mark.parametrize("data, offset", [
    (b"apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: \xff\xfe}\n", 68),
    (b"\xfe\xff\x00a", 0),
], ids=["latin-1-byte-in-a-name", "utf-16-bom"])
def test_bytes_that_are_not_utf8(tmp_path, capsys, data, offset):
    rc, lines = _validate(tmp_path, capsys, data)
    assert rc == 2
    assert lines == [f"not UTF-8 text: byte 0x{data[offset]:02x} at offset {offset} cannot be decoded; save the file as UTF-8"]


def test_utf8_bom_is_fine(tmp_path, capsys):
    assert _validate(tmp_path, capsys, b"\xef\xbb\xbf" + yaml.safe_dump(_base()).encode()) == (0, ["valid"])


def test_empty_spec_reports_only_the_missing_sections(tmp_path, capsys):
    job = _base()
    job["spec"] = {}
    rc, lines = _validate(tmp_path, capsys, yaml.safe_dump(job).encode())
    assert rc == 1
    assert lines == [f"spec.{s}: required field is missing" for s in ("model", "dataset", "training", "output")]


@pytest.mark.parametrize("text, needle", [
    (BILLION_LAUGHS, "more than 100000 values"),
    ("a: " + "[" * 70 + "]" * 70 + "\n", "nested deeper than 64 levels"),
    ("a: " + "[" * 1200 + "]" * 1200 + "\n", "nested deeper than 64 levels"),
], ids=["billion-laughs", "nested-70", "nested-1200"])
def test_documents_no_manifest_needs_are_refused(tmp_path, capsys, text, needle):
    rc, lines = _validate(tmp_path, capsys, text.encode())
    assert rc == 2 and lines == [f"not a manifest: {needle}" if "values" not in needle
                                 else "not a manifest: more than 100000 values (YAML aliases that expand without end?)"]


def test_empty_map_key_is_refused_at_admission_too():
    job = _base()
    job["spec"]["podAnnotations"] = {"": ""}
    problems = validate_manifest(job)
    assert [(p.path, p.layer) for p in problems] == [("spec.podAnnotations", "cel")]
    assert problems[0].message == "every key of podAnnotations must be 1 to 317 characters long"


def test_null_for_a_defaulted_field_is_unset_for_run_and_validate_alike():
    job = _base()
    job["spec"]["training"]["globalBatchSize"] = None  # the API server prunes it; the default 16 applies
    assert validate_manifest(job) == []
    assert run_parse(job).spec.training.global_batch_size == 16


@pytest.mark.parametrize("metadata", [True, None, [], {"name": 7}], ids=["bool", "null", "list", "int-name"])
def test_operator_parse_and_render_refuse_odd_metadata(tmp_path, capsys, metadata):
    job = _base()
    job["metadata"] = metadata
    with pytest.raises(builders.InvalidJob, match="metadata.name is required"):
        builders.parse_runnable_job(job)
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(job))
    assert render.main(Namespace(file=str(f), namespace=None, attempt=1)) == 1
    assert capsys.readouterr().err.startswith("kubetune: error: ")


def test_run_reads_a_manifest_with_null_metadata(tmp_path):
    job = _base()
    job["metadata"] = None
    f = tmp_path / "my-job.yaml"
    f.write_text(yaml.safe_dump(job))
    assert load_manifest(f, cwd=tmp_path)["metadata"] == {"name": "my-job"}


def test_run_leaves_a_path_with_a_nul_character_as_written(tmp_path):
    job = _base()
    job["spec"]["dataset"]["train"] = "data/\x00train.jsonl"
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(job))
    assert load_manifest(f, cwd=tmp_path)["spec"]["dataset"]["train"] == "data/\x00train.jsonl"
