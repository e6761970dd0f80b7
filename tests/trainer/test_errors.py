"""Every bad input stops the trainer with one clear line and exit code 3 (exitcodes.PERMANENT).

Most cases call the entry point's ``main`` in this process (the errors happen before any
process group exists); one case runs the real thing under torchrun, through
``kubetune_trainer.torchrun``, to show exit code 3 survives the launcher (plain torchrun
reports every worker failure as 1).
"""
from __future__ import annotations

import json
import subprocess

import pytest
from trainer_helpers import REPO, torchrun_cmd, trainer_env, write_job

from kubetune_api.contract import PERMANENT, PREEMPTED
from kubetune_trainer.torchrun import exit_code_for
from kubetune_trainer.train import main


def base_spec(model_dir, train) -> dict:
    return {
        "model": {"source": str(model_dir)},
        "dataset": {"train": str(train), "evalFraction": 0.1, "maxSeqLength": 64},
        "method": {"type": "lora"},
        "training": {"maxSteps": 2, "globalBatchSize": 2, "microBatchSize": 1},
        "distributed": {"gpusPerNode": 0, "processesPerNode": 2},
        "output": {"uri": "/tmp/unused-out"},
    }


def jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


GOOD = [{"prompt": f"what is {w} ?", "completion": f" {w}"} for w in ("one", "two", "three", "four")]


def case(tmp_path, name, tiny_model_dir):
    """(spec, expected stderr line) for each bad input."""
    spec = base_spec(tiny_model_dir, jsonl(tmp_path / "good.jsonl", GOOD))
    if name == "missing column":
        spec["dataset"].update(train=jsonl(tmp_path / "d.jsonl", [{"prompt": "x"}] * 3), format="instruction")
        return spec, "InvalidDataset: dataset.format is 'instruction' but column(s) ['completion'] are missing"
    if name == "columns fit no format":
        spec["dataset"]["train"] = jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}] * 3)
        return spec, "InvalidDataset: columns ['answer', 'question'] fit no known format"
    if name == "empty dataset":
        (tmp_path / "empty.jsonl").write_text("")
        spec["dataset"]["train"] = str(tmp_path / "empty.jsonl")
        return spec, "EmptyDataset: " + str(tmp_path / "empty.jsonl") + ": training dataset is empty"
    if name == "unknown file format":
        (tmp_path / "train.txt").write_text("hello\n")
        spec["dataset"]["train"] = str(tmp_path / "train.txt")
        return spec, "InvalidDataset: " + str(tmp_path / "train.txt") + ": unknown data file format '.txt'"
    if name == "model path missing":
        spec["model"]["source"] = str(tmp_path / "no-such-model")
        return spec, "ModelNotFound: model path " + str(tmp_path / "no-such-model") + " does not exist"
    if name == "sequence longer than max":
        long = GOOD + [{"prompt": "one two three " * 30, "completion": " x"}]
        spec["dataset"].update(train=jsonl(tmp_path / "d.jsonl", long), truncation="fail", evalFraction=0)
        return spec, "SequenceTooLong: d.jsonl line 5 has"
    if name == "bad row":
        rows = GOOD[:2] + [{"prompt": "x", "completion": 7}] + GOOD[2:]
        spec["dataset"].update(train=jsonl(tmp_path / "d.jsonl", rows), evalFraction=0)
        return spec, "InvalidDataset: d.jsonl line 3: 'completion' must be a string, got int"
    if name == "invalid config":
        spec["training"]["globalBatchSize"] = 3
        return spec, ("InvalidSpec: " + str(tmp_path / "job.yaml")
                      + ": spec.training.globalBatchSize: (3) must be divisible by microBatchSize x world size (1 x 2 = 2)")
    raise AssertionError(name)


CASES = ["missing column", "columns fit no format", "empty dataset", "unknown file format",
         "model path missing", "sequence longer than max", "bad row", "invalid config"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_exits_3_with_a_clear_line(name, tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("KUBETUNE_SCRATCH", str(tmp_path / "scratch"))
    spec, line = case(tmp_path, name, tiny_model_dir)
    rc = main(["--config", str(write_job(tmp_path / "job.yaml", spec))])
    err = capsys.readouterr().err
    assert rc == PERMANENT
    assert f"kubetune: error: {line}" in err, err[-2000:]


def test_exit_code_3_survives_torchrun(tmp_path, tiny_model_dir):
    spec, line = case(tmp_path, "missing column", tiny_model_dir)
    config = write_job(tmp_path / "job.yaml", spec)
    p = subprocess.run(torchrun_cmd(config, nproc=2), env=trainer_env(tmp_path / "scratch"), cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == PERMANENT, p.stderr[-3000:]
    # Each rank that gets to its error prints the one line, and nothing else says "error".
    # The first rank to exit 3 makes torchrun stop the other, which may be stopped before
    # it prints: one line or two, both correct.
    errors = [x for x in p.stderr.splitlines() if x.startswith("kubetune: error:")]
    assert 1 <= len(errors) <= 2 and all(x.startswith(f"kubetune: error: {line}") for x in errors), p.stderr[-3000:]


def test_launcher_exit_code_mapping():
    assert exit_code_for([1, PERMANENT]) == PERMANENT
    assert exit_code_for([-15, PREEMPTED]) == PREEMPTED
    assert exit_code_for([1, -9]) == 1


def test_unparsable_config_exits_3(tmp_path, capsys):
    bad = tmp_path / "job.yaml"
    bad.write_text("apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nspec: [unclosed\n")
    assert main(["--config", str(bad)]) == PERMANENT
    assert f"kubetune: error: InvalidSpec: {bad}:" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == PERMANENT
    assert "config file" in capsys.readouterr().err


def test_a_finished_run_destroys_its_process_group_before_exit(tmp_path, monkeypatch):
    """Left to interpreter shutdown, Gloo's threads can abort the process (SIGABRT, exit 134) after a
    run that finished: seen once in CI on a 2-rank run. main destroys the group after a normal end."""
    import torch.distributed as dist

    from kubetune_api.contract import OK
    from kubetune_trainer import train

    def fake_run(config: str) -> None:  # a run that set up its group (world size 1) and finished
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        dist.barrier()

    monkeypatch.setattr(train, "run", fake_run)
    try:
        assert main(["--config", "unused.yaml"]) == OK
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
