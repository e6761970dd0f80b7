"""Build the CPU sweep demo of docs/sweep.md: two tiny base models, task data, and a FineTuneSweep over them.

    python scripts/sweep_demo.py demo/          # ~10 s on a CPU
    kubetune run demo/sweep.yaml                # 4 trials, 2 at once on 2 cores

The task is kubetune_trainer.tiny's "what is A plus B ?" -> the sum in words.
The two base models share one tokenizer: ``small`` is a random 1-layer Llama;
``pretrained`` is a 2-layer one trained for 30 steps on other rows of the same
task (so it starts far ahead). The sweep is a grid over those two models and
over the learning rate {1e-7 (far too small to learn anything in 12 steps),
0.01}; tests/e2e/test_local_sweep.py runs exactly this and checks the pick.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

TINY_LR, GOOD_LR = 1e-7, 0.01


def build(root: Path) -> Path:
    """Models and data under ``root``; -> the sweep manifest (absolute paths, so it runs from anywhere)."""
    import torch

    from kubetune_trainer import tiny

    root = root.resolve()
    tok = tiny.build_tokenizer()
    tiny.write_instruction_dataset(root / "data" / "train.jsonl", n=96, seed=0)
    tiny.write_instruction_dataset(root / "data" / "eval.jsonl", n=16, seed=1)
    small = tiny.build_model(tok, hidden=32, layers=1, heads=2, seed=1)
    small.save_pretrained(root / "models" / "small")
    tok.save_pretrained(root / "models" / "small")

    pretrained = tiny.build_model(tok, hidden=64, layers=2, seed=0)
    tiny.write_instruction_dataset(root / "data" / "pretrain.jsonl", n=256, seed=7)  # other rows than train and eval
    rows = [json.loads(line) for line in (root / "data" / "pretrain.jsonl").read_text().splitlines()]
    enc = tok([r["prompt"] + r["completion"] + tok.eos_token for r in rows], padding=True, return_tensors="pt")
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    opt = torch.optim.AdamW(pretrained.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        idx = torch.randint(0, len(rows), (32,), generator=gen)
        pretrained(input_ids=enc.input_ids[idx], attention_mask=enc.attention_mask[idx], labels=labels[idx]).loss.backward()
        opt.step()
        opt.zero_grad()
    pretrained.save_pretrained(root / "models" / "pretrained")
    tok.save_pretrained(root / "models" / "pretrained")

    sweep = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneSweep",
        "metadata": {"name": "lr-and-model"},
        "spec": {
            "algorithm": "grid",
            "parallelism": 2,
            "parameters": [
                {"path": "model.source", "type": "categorical",
                 "values": [str(root / "models" / "small"), str(root / "models" / "pretrained")]},
                {"path": "training.learningRate", "type": "categorical", "values": [TINY_LR, GOOD_LR]},
            ],
            "template": {
                "model": {"source": str(root / "models" / "small"), "dtype": "float32"},
                "dataset": {"train": str(root / "data" / "train.jsonl"), "eval": str(root / "data" / "eval.jsonl"),
                            "format": "instruction", "maxSeqLength": 64},
                "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["all-linear"]}},
                "training": {"maxSteps": 12, "learningRate": GOOD_LR, "globalBatchSize": 8, "microBatchSize": 8,
                             "precision": "fp32", "evalEvery": 4},
                "distributed": {"nodes": 1, "gpusPerNode": 0},
                "output": {"uri": str(root / "out"), "checkpointEvery": 100, "keepLast": 1},
            },
        },
    }
    manifest = root / "sweep.yaml"
    manifest.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="where the models, data and sweep.yaml go")
    args = parser.parse_args()
    print(build(args.dir))


if __name__ == "__main__":
    main()
