"""Worker for test_local_save.py (under torchrun, 2 ranks): ZeRO-2 fp32, a checkpoint saved through
LocalWriter, loaded into an engine built from other weights; writes what the test compares (rank 0).

    torchrun --nproc-per-node 2 master_copy_worker.py OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from kubetune_trainer import tiny
from kubetune_trainer.local_save import FP32_MASTER_KEY, LocalWriter

CONFIG = {
    "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "steps_per_print": 10**9,
    "zero_optimization": {"stage": 2, "load_from_fp32_weights": False},  # as dsconfig.py sets it for fp32
    "zero_allow_untested_optimizer": True, "checkpoint": {"use_node_local_storage": True},
}


def engine(tok, seed: int):
    model = tiny.build_model(tok, hidden=32, layers=2, seed=seed)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    eng, *_ = deepspeed.initialize(model=model, optimizer=optim, config=CONFIG)
    return eng


def train(eng, steps, vocab: int) -> list[float]:
    losses = []
    for step in steps:
        g = torch.Generator().manual_seed(1000 * step + dist.get_rank())
        ids = torch.randint(0, vocab, (2, 16), generator=g)
        loss = eng(input_ids=ids, labels=ids).loss
        eng.backward(loss)
        eng.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    out = Path(sys.argv[1])
    deepspeed.init_distributed(dist_backend="gloo")
    tok = tiny.build_tokenizer()
    a = engine(tok, seed=0)
    train(a, range(3), len(tok))
    writer = LocalWriter()
    with writer.overlapped(a):
        a.save_checkpoint(str(out / "ckpt"), tag="t")
    writer.wait()
    master = [t.clone() for t in a.optimizer.single_partition_of_fp32_groups]
    after_a = train(a, range(3, 6), len(tok))

    b = engine(tok, seed=1)  # other weights: everything must come from the checkpoint
    b.load_checkpoint(str(out / "ckpt"), tag="t")
    same_master = all(torch.equal(x, y) for x, y in zip(b.optimizer.single_partition_of_fp32_groups, master))
    after_b = train(b, range(3, 6), len(tok))
    shard = torch.load(out / "ckpt" / "t" / f"zero_pp_rank_{dist.get_rank()}_mp_rank_00_optim_states.pt",
                       weights_only=False)["optimizer_state_dict"]
    flags = torch.tensor([float(same_master), float(FP32_MASTER_KEY in shard)])
    dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps({
            "same_master_ranks": int(flags[0]), "ranks_with_master_copy": int(flags[1]),
            "after_a": after_a, "after_b": after_b}))


if __name__ == "__main__":
    main()
