"""Every example manifest validates in every layer, and `kubetune validate` exits 0 on it."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from api_manifests import EXAMPLES, REPO

from kubetune_api import spec as api
from kubetune_api import sweep as sweep_api
from kubetune_api.validation import cel_problems, crd_schema, prepare, schema_problems, validate_manifest

REQUIRED = {
    "quickstart-cpu.yaml",
    "lora-8b-2x8-s3-kueue.yaml",
    "qlora-1gpu.yaml",
    "full-zero3-offload.yaml",
    "prompt-tuning.yaml",
    "sweep-lora-lr-rank.yaml",
    "bert-classification.yaml",
    "t5-seq2seq.yaml",
}


def test_required_examples_exist():
    assert REQUIRED <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid_in_every_layer(path):
    text = path.read_text()
    assert text.startswith("#"), "each example starts with a comment saying what it needs and costs"
    header = text.split("apiVersion:")[0].lower()
    assert "needs" in header and "cost" in header
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert docs and all(d["kind"] in (api.KIND, sweep_api.KIND) for d in docs)
    for doc in docs:
        kind = doc["kind"]
        prepared = prepare(crd_schema(kind), doc)
        assert schema_problems(prepared, kind) == []
        assert cel_problems(prepared, kind=kind) == []
        (sweep_api.load_sweep if kind == sweep_api.KIND else api.load_job)(doc)  # pydantic
        assert validate_manifest(doc) == []


CLAIMS = {
    "quickstart-cpu.yaml": lambda s: s.distributed.gpus_per_node == 0 and s.method.type == "lora"
    and "://" not in s.output.uri,
    "lora-8b-2x8-s3-kueue.yaml": lambda s: (s.distributed.nodes, s.distributed.gpus_per_node) == (2, 8)
    and s.output.uri.startswith("s3://") and bool(s.storage.secret_ref) and bool(s.queue_name)
    and s.method.type == "lora",
    "qlora-1gpu.yaml": lambda s: s.method.type == "qlora" and s.distributed.world_size() == 1,
    "full-zero3-offload.yaml": lambda s: s.method.type == "full" and s.distributed.zero_stage == "3"
    and s.distributed.offload == "parameters" and s.output.export == "merged",
    "prompt-tuning.yaml": lambda s: s.method.type == "prompt-tuning" and s.dataset.packing is False
    and s.output.export == "adapter",
    "bert-classification.yaml": lambda s: s.model.task == "sequence-classification" and s.dataset.packing is False
    and s.dataset.format == "classification" and s.distributed.gpus_per_node == 0,
    "t5-seq2seq.yaml": lambda s: s.model.task == "seq2seq" and s.method.type == "lora" and s.dataset.packing is False
    and s.evaluation.samples > 0,
}


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_example_says_what_it_claims(name):
    assert CLAIMS[name](api.load_job_file(str(REPO / "examples" / name)).spec)


def test_sweep_example_sweeps_lora_learning_rate_and_rank():
    doc = yaml.safe_load((REPO / "examples" / "sweep-lora-lr-rank.yaml").read_text())
    s = sweep_api.load_sweep(doc).spec
    assert {p.path for p in s.parameters} == {"training.learningRate", "method.lora.r"}
    assert s.template.method.type == "lora" and s.parallelism == 2 and s.early_stopping.type != "none"


def test_kubetune_validate_exits_0_on_all_examples():
    # the installed console script, as a user runs it
    out = subprocess.run(
        [sys.executable, "-m", "kubetune_operator.cli", "validate", *map(str, EXAMPLES)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(": valid") == len(EXAMPLES)
