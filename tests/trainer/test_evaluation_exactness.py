"""The final evaluation's metrics are the same on 2 ranks under ZeRO-3 as in one plain process, on the same rows.

Loss sums, token counts, token accuracy, every generated answer and every
aggregate (exact match, ROUGE-L, JSON field match), for the base view and
the tuned model: compared for equality, not within a tolerance.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_helpers import REPO, free_port, trainer_env, write_json_chat

from kubetune_trainer import evaluation

pytestmark = [pytest.mark.distributed]

WORKER = Path(__file__).with_name("eval_exactness_worker.py")


def test_two_ranks_under_zero3_equal_one_process(tiny_model_dir, tmp_path):
    rows = write_json_chat(tmp_path / "eval.jsonl", 7, 3)  # odd: one rank gets a spare call
    env = trainer_env(tmp_path / "scratch")
    single, multi = tmp_path / "single.json", tmp_path / "multi.json"
    p = subprocess.run([sys.executable, str(WORKER), str(tiny_model_dir), rows, str(single)], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
                        str(WORKER), str(tiny_model_dir), rows, str(multi), "--zero3"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    one, two = json.loads(single.read_text()), json.loads(multi.read_text())
    assert (one["world"], two["world"]) == (1, 2)
    assert two["metrics"] == one["metrics"]
    assert two["rows"] == one["rows"]
    sets = one["metrics"]["sets"]["validation"]
    assert sets["base"]["loss"] != sets["tuned"]["loss"]  # the two views really are different models
    assert sets["tuned"]["generations"] == 5 and sets["tuned"]["jsonRows"] == 5
    # and the aggregate is the plain computation over the per-row numbers
    recs = one["rows"]["validation"]
    assert sets["tuned"]["loss"] == evaluation.loss_metrics([r["tuned"] for r in recs])["loss"]
