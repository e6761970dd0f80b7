"""`kubetune validate`: exit codes, output format, multi-document files, de-duplication, auto values."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from api_manifests import EXAMPLES, REPO, base

from kubetune_api import spec as api
from kubetune_api.validation import validate_manifest
from kubetune_operator.cli import main as kubetune


def _kubetune_binary() -> list[str]:
    script = Path(sys.executable).parent / "kubetune"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kubetune_operator.cli"]


def test_console_script_exit_codes(tmp_path):
    bad = base()
    bad["spec"]["training"]["globalBatchSize"] = 15
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(yaml.safe_dump(bad))
    good = str(EXAMPLES[0])
    ok = subprocess.run([*_kubetune_binary(), "validate", good], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    res = subprocess.run([*_kubetune_binary(), "validate", good, str(bad_file)], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert res.returncode == 1
    assert f"{bad_file}: spec.training.globalBatchSize: training.globalBatchSize (15) must be divisible" in res.stdout
    assert "x world size (2); use a multiple of it" in res.stdout


def test_reads_standard_input():
    text = yaml.safe_dump_all([base(), {**base(), "metadata": {"name": "Bad_Name"}}])
    res = subprocess.run([*_kubetune_binary(), "validate", "-"], input=text, capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert res.returncode == 1
    assert res.stdout.startswith("-#2: metadata.name: metadata.name must be at most 52 characters"), res.stdout


def test_multi_document_file(tmp_path, capsys):
    good, bad = base(), base()
    bad["spec"]["method"]["type"] = "ia3"  # leaves a lora block behind
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}, "stringData": {"A": "b"}}
    f = tmp_path / "all.yaml"
    f.write_text(yaml.safe_dump_all([secret, good, bad]))
    assert kubetune(["validate", str(f)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [
        f"{f}#3: spec.method.lora: method.lora is only for method.type lora or qlora; remove it or change method.type"
    ]


def test_kubectl_list_of_jobs(tmp_path, capsys):
    bad = base()
    bad["spec"]["queueName"] = "Team A"
    f = tmp_path / "list.yaml"
    f.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [base(), bad]}))
    assert kubetune(["validate", str(f)]) == 1
    assert capsys.readouterr().out.startswith(f"{f}: items[1]: spec.queueName: must be lowercase letters")


@pytest.mark.parametrize(
    "name, content, needle",
    [("missing.yaml", None, "cannot read"), ("broken.yaml", "spec: [unclosed\n", "not valid YAML")],
    ids=["missing-file", "not-yaml"],
)
def test_unreadable_and_unparsable_files_exit_2(tmp_path, capsys, name, content, needle):
    f = tmp_path / name
    if content is not None:
        f.write_text(content)
    assert kubetune(["validate", str(f)]) == 2
    assert capsys.readouterr().out.startswith(f"{f}: {needle}")
    assert kubetune(["validate", str(f), str(EXAMPLES[0])]) == 2  # the worst file sets the exit code
    out = capsys.readouterr().out
    assert f"{f}: {needle}" in out
    assert f"{EXAMPLES[0]}: valid" in out


def test_file_without_a_job_is_invalid(tmp_path, capsys):
    f = tmp_path / "cm.yaml"
    f.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert kubetune(["validate", str(f)]) == 1
    assert "no FineTuneJob or FineTuneSweep document found" in capsys.readouterr().out


def test_one_line_per_problem_across_layers():
    job = base()
    job["spec"]["training"]["maxSteps"] = 10  # epochs and maxSteps: CEL and pydantic both say so
    job["spec"]["distributed"]["zeroStage"] = 5  # schema maximum and pydantic literal both say so
    problems = validate_manifest(job)
    assert sorted(p.path for p in problems) == ["spec.distributed.zeroStage", "spec.training"]
    by_path = {p.path: p for p in problems}
    assert by_path["spec.training"].layer == "cel"
    assert by_path["spec.distributed.zeroStage"].layer == "schema"


def test_null_is_pruned_like_the_api_server():
    job = base()
    job["spec"]["distributed"]["nodes"] = None  # not nullable: the API server drops it and defaults to 1
    job["spec"]["model"]["revision"] = None  # nullable: null means unset
    assert validate_manifest(job) == []


@pytest.mark.parametrize("stage", [0, 1, 2, 3, "0", "3", "auto"])
def test_zero_stage_accepts_numbers_and_strings(stage):
    job = base()
    job["spec"]["distributed"]["zeroStage"] = stage
    assert validate_manifest(job) == []
    assert api.load_job(job).spec.distributed.zero_stage == str(stage)


@pytest.mark.parametrize(
    "method, export, packing",
    [("full", "merged", True), ("lora", "adapter", True), ("prompt-tuning", "adapter", False),
     ("prefix-tuning", "adapter", False), ("ia3", "adapter", True)],
)
def test_auto_values_resolve_at_parse(method, export, packing):
    job = base()
    job["spec"]["method"] = {"type": method}
    parsed = api.load_job(job).spec
    assert (parsed.output.export, parsed.dataset.packing) == (export, packing)
    assert validate_manifest(job) == []


def test_snake_case_keys_are_unknown_fields_for_the_trainer_too():
    job = base()
    job["spec"]["training"]["max_steps"] = 5
    with pytest.raises(Exception, match="max_steps"):
        api.load_job(job)
    # Python code may still build models by field name
    assert api.TrainingSpec(max_steps=5).max_steps == 5


def _warnings_for(tmp_path, capsys, doc) -> list[str]:
    f = tmp_path / "w.yaml"
    f.write_text(yaml.safe_dump(doc))
    assert kubetune(["validate", str(f)]) == 0  # warnings never fail
    return [line for line in capsys.readouterr().out.splitlines() if ": warning: " in line]


def test_warning_line_names_the_field_and_what_to_do(tmp_path, capsys):
    no_secret = base()
    del no_secret["spec"]["storage"]
    assert _warnings_for(tmp_path, capsys, no_secret) == [
        f"{tmp_path / 'w.yaml'}: spec.storage.secretRef: warning: not set: S3 credentials must come from the pods' "
        "cloud identity (IRSA, workload identity); set storage.secretRef or serviceAccountName unless the nodes provide one"
    ]


def _no_secret(spec: dict) -> None:
    del spec["storage"]


def _checkpoint_and_eval_after_the_end(spec: dict) -> None:
    spec["training"] = {"maxSteps": 100, "evalEvery": 500, "globalBatchSize": 16}
    spec["output"]["checkpointEvery"] = 100


def _local_qlora_on_cpu_with_s3_settings(spec: dict) -> None:
    spec.update(model={"source": "models/m"}, dataset={"train": "d.jsonl"}, output={"uri": "out"},
                storage={"endpoint": "http://minio:9000"}, method={"type": "qlora"}, distributed={"gpusPerNode": 0})


@pytest.mark.parametrize(
    "mutate, paths",
    [
        (_no_secret, ["spec.storage.secretRef"]),
        (_checkpoint_and_eval_after_the_end, ["spec.output.checkpointEvery", "spec.training.evalEvery"]),
        (_local_qlora_on_cpu_with_s3_settings, ["spec.method.type", "spec.storage"]),
    ],
    ids=["no-secret-ref", "checkpoint-and-eval-after-the-end", "local-qlora-on-cpu-with-s3-settings"],
)
def test_warnings_are_printed_but_do_not_fail(tmp_path, capsys, mutate, paths):
    job = base()
    mutate(job["spec"])
    assert [line.split(": ")[1] for line in _warnings_for(tmp_path, capsys, job)] == paths


def test_examples_have_no_warnings(capsys):
    assert kubetune(["validate", *map(str, EXAMPLES)]) == 0
    assert ": warning: " not in capsys.readouterr().out
