"""Worker for test_evaluation_exactness.py: evaluate one LoRA model (base view and tuned) on one eval set, write JSON.

    python eval_exactness_worker.py MODEL_DIR DATA.jsonl OUT.json            # one plain process
    torchrun --nproc-per-node 2 eval_exactness_worker.py ... --zero3          # 2 ranks, parameters partitioned

The LoRA weights are initialised non-zero (seeded), so the base view and the
tuned model give different numbers, as after training.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune_api.evaluation import EvaluationSpec
from kubetune_api.spec import DatasetSpec
from kubetune_trainer import data, evaluation


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--zero3", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    net = model
    if a.zero3:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "fp16": {"enabled": False}}
        engine, *_ = deepspeed.initialize(model=model, config=config)
        net = engine.module
    rows = data.load_rows(a.data)
    spec = DatasetSpec(train=a.data, max_seq_length=128)
    sets = [evaluation.build_eval_set("validation", rows, "chat", tok, spec)]
    ev = EvaluationSpec(samples=5, decoding={"max_new_tokens": 10})
    with evaluation.base_view(net) as base_model:
        base = evaluation.evaluate_model(base_model, sets, "chat", tok, ev, "cpu", synced=a.zero3, seed=0)
    tuned = evaluation.evaluate_model(net, sets, "chat", tok, ev, "cpu", synced=a.zero3, seed=0)
    metrics, per_row = evaluation.combine(sets, tuned, base, "chat", tok, ev, 0)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(a.out, "w") as f:
            json.dump({"metrics": metrics, "rows": per_row, "world": int(os.environ.get("WORLD_SIZE", "1"))}, f)
    if a.zero3:  # as the trainer does (train.leave_process_group): not left to interpreter shutdown
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
