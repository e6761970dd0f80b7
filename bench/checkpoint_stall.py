"""Checkpoint stall: mean step time with checkpoints every few steps ÷ without, in one run.

    .venv/bin/python bench/checkpoint_stall.py [--steps 40] [--every 5] [--hidden 256] [--layers 4]

Runs the real trainer (2 processes under torchrun, DeepSpeed ZeRO-2, full
fine-tuning of a small Llama built on the fly) three times against moto S3 on
127.0.0.1, same data and seed:

- ``none``: no checkpoint during the run;
- ``background``: a checkpoint every ``--every`` steps, uploaded by the
  background thread while training continues (what kubetune does);
- ``sync``: the same, but the training thread waits for each upload and
  commit (what a naive implementation does), for comparison.

Step time = interval between consecutive optimizer-step ends on rank 0
(the Trainer saves between them, so a save's stall is inside the interval);
the first ``--warmup`` steps are left out. Goal: background/none <= 1.05
(the last line printed).

On this kind of CPU-only machine the training, the upload thread and the
moto server share 2 cores, so the upload competes with training for CPU; on
a GPU node it competes with nothing but the PCIe copy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "api"), str(ROOT / "trainer")]


# ------------------------------------------------------------------ worker (under torchrun)
def worker(config: str, mode: str, times_path: str) -> int:
    from transformers import TrainerCallback

    from kubetune_trainer import train

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t: list[float] = []
            self.saves: list[float] = []

        def on_step_end(self, args, state, control, **kw):
            self.t.append(time.perf_counter())

        def on_save(self, args, state, control, **kw):
            self.saves.append(time.perf_counter() - self.t[-1])  # local save time of this rank

        def on_train_end(self, args, state, control, **kw):
            if state.is_world_process_zero:
                Path(times_path).write_text(json.dumps({"ends": self.t, "save_seconds": self.saves}))

    original = train.checkpoint_manager

    def instrumented(spec, rt, reporters):
        mgr = original(spec, rt, reporters)
        timer = StepTimer()
        callbacks = mgr.callbacks
        mgr.callbacks = lambda: [*callbacks(), timer]
        if mode == "sync":
            on_saved = mgr.on_saved

            def saved_then_wait(step):
                on_saved(step)
                mgr.drain()

            mgr.on_saved = saved_then_wait
        return mgr

    train.checkpoint_manager = instrumented
    return train.main(["--config", config])


# ------------------------------------------------------------------ driver
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--modes", default="none,background,sync")
    ap.add_argument("--worker", nargs=3, metavar=("CONFIG", "MODE", "TIMES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)

    import logging

    import boto3
    import yaml
    from moto.server import ThreadedMotoServer

    from kubetune_trainer import tiny

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
               OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(ROOT / "trainer"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket="bench")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny.save_tiny_model(tmp / "model", hidden=args.hidden, layers=args.layers)
        tiny.write_instruction_dataset(tmp / "train.jsonl", n=512)
        n_params = sum(os.path.getsize(p) for p in (tmp / "model").glob("*.safetensors")) / 4
        for mode in args.modes.split(","):
            manifest = {
                "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": f"stall-{mode}"},
                "spec": {
                    "model": {"source": str(tmp / "model")},
                    "dataset": {"train": str(tmp / "train.jsonl"), "evalFraction": 0.0, "packing": False, "maxSeqLength": 64},
                    "method": {"type": "full"},
                    "training": {"maxSteps": args.steps, "globalBatchSize": 8, "microBatchSize": 2, "learningRate": 1e-4,
                                 "seed": 1, "precision": "fp32", "gradientCheckpointing": False},
                    "distributed": {"nodes": 1, "gpusPerNode": 0, "processesPerNode": 2, "zeroStage": 2},
                    "output": {"uri": f"s3://bench/{mode}", "checkpointEvery": args.every if mode != "none" else 10**8,
                               "keepLast": 2, "export": "merged"},
                    "storage": {"endpoint": endpoint, "region": "us-east-1", "addressingStyle": "path"},
                },
            }
            cfg = tmp / f"{mode}.yaml"
            cfg.write_text(yaml.safe_dump(manifest))
            times = tmp / f"{mode}.times.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                   f"--master-port={29400 + len(results) * 7}", str(Path(__file__).resolve()), "--worker", str(cfg), mode, str(times)]
            t0 = time.monotonic()
            p = subprocess.run(cmd, cwd=ROOT, env=dict(env, KUBETUNE_SCRATCH=str(tmp / f"scratch-{mode}")),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if p.returncode != 0:
                print(p.stdout[-4000:])
                raise SystemExit(f"{mode} run failed with {p.returncode}")
            data = json.loads(times.read_text())
            ends = data["ends"]
            steps = [b - a for a, b in zip(ends[args.warmup:], ends[args.warmup + 1:])]
            results[mode] = {"mean": statistics.mean(steps), "median": statistics.median(steps),
                             "save": statistics.mean(data["save_seconds"]) if data["save_seconds"] else 0.0,
                             "wall": time.monotonic() - t0}
    server.stop()

    ckpt_mb = n_params * 4 * 4 / 1e6  # fp32 weights + fp32 master + Adam m, v (ZeRO-2, over both ranks)
    print(f"model ~{n_params / 1e6:.1f}M params (checkpoint ~{ckpt_mb:.0f} MB), {args.steps} steps, "
          f"checkpoint every {args.every}, 2 ranks ZeRO-2 fp32, moto S3 on 127.0.0.1")
    for mode, r in results.items():
        print(f"  {mode:<10}: mean step {r['mean'] * 1e3:7.1f} ms, median {r['median'] * 1e3:7.1f} ms, "
              f"local save {r['save'] * 1e3:6.1f} ms, run {r['wall']:.0f}s")
    if "none" in results:  # kubetune's own mode last: the last line is the ratio the goal is about
        for mode in sorted((m for m in results if m != "none"), key=lambda m: m == "background"):
            print(f"ratio {mode}/none = {results[mode]['mean'] / results['none']['mean']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
