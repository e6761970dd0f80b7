"""Checkpoint stall: mean step time with checkpoints every few steps ÷ without, in one run.

    .venv/bin/python bench/checkpoint_stall.py [--steps 40] [--every 5] [--rounds 2] [--modes none,background,sync]
                                               [--ranks 2] [--s3-nice 0]

Runs the real trainer (2 processes under torchrun, DeepSpeed ZeRO-2, full
fine-tuning of a small Llama built on the fly) against moto S3 on
127.0.0.1, same data and seed, in these arms:

- ``none``: no checkpoint during the run;
- ``background``: a checkpoint every ``--every`` steps, saved locally (the
  files written off the training thread, local_save.py) and uploaded by the
  node's uploader process while training continues (what kubetune does);
- ``sync``: the same, but the training thread waits for each upload and
  commit (what a naive implementation does), for comparison.

The arms take turns ``--rounds`` times (none, background, sync, none, ...),
so a change in the machine's load falls on each about alike; each arm's
step intervals are pooled over its rounds and the per-round ratios printed.

Step time = interval between consecutive optimizer-step ends on rank 0
(the Trainer saves between them, so a save's stall is inside the interval);
the first ``--warmup`` steps are left out. Goal: background/none <= 1.05
(the last line printed). Work the background merely postpones is not free:
each arm also reports the time from its last step to the end of training,
which includes waiting for the last checkpoints' uploads and commit.

The breakdown shows where rank 0's training thread spends each checkpoint
(DeepSpeed's save and its parts, RNG and trainer state, kubetune's hand-off),
steps with and without a save, the training thread's CPU time per step, the
CPU seconds of the trainer processes (uploader included) and of the S3 server.

The S3 server (moto) runs as a process of its own, so its CPU time is
reported apart from the trainer's; ``--s3-nice 19`` lowers its priority, so
it takes only the CPU the training leaves (an object store on a cluster runs
on other machines and takes none). The uploader's own CPU time per checkpoint
comes from the trainer's log line ("uploaded ... uploader CPU Xs").

On this kind of CPU-only machine the training, the uploader and the moto
server share 2 cores (with whatever else runs), so the upload competes with
training for CPU; on a GPU node it competes with nothing but the PCIe copy.
``--ranks 1`` leaves one core to the writer, the uploader and moto (closer to
a GPU node's idle host cores); the training thread still shares the memory
bus and caches with them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
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
    import functools

    from transformers import Trainer, TrainerCallback, TrainerState

    from kubetune_trainer import train

    phases: dict[str, float] = {}  # where rank 0's training thread spends its checkpoint time, summed

    def timed(owner: type, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, name, wrapper)

    from deepspeed.runtime.engine import DeepSpeedEngine

    timed(Trainer, "_save_checkpoint", "trainer save (total)")
    timed(DeepSpeedEngine, "save_checkpoint", "deepspeed save_checkpoint")
    timed(DeepSpeedEngine, "_save_checkpoint", "  model states (rank 0)")
    timed(DeepSpeedEngine, "_save_zero_checkpoint", "  optimizer shard")
    timed(Trainer, "_save_rng_state", "rng state")
    timed(TrainerState, "save_to_json", "trainer_state.json")

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t: list[float] = []
            self.cpu: list[float] = []  # training thread CPU time at each step end
            self.saved_at: list[int] = []  # index into t of the step whose interval holds a save
            self.saves: list[float] = []

        def on_step_end(self, args, state, control, **kw):
            self.t.append(time.perf_counter())
            self.cpu.append(time.thread_time())

        def on_save(self, args, state, control, **kw):
            self.saves.append(time.perf_counter() - self.t[-1])  # local save time of this rank
            self.saved_at.append(len(self.t))

        def on_train_end(self, args, state, control, **kw):
            if state.is_world_process_zero:  # after the checkpoint callback's drain: the last uploads are done
                Path(times_path).write_text(json.dumps({
                    "ends": self.t, "cpu": self.cpu, "saved_at": self.saved_at, "save_seconds": self.saves,
                    "phases": phases, "process_cpu": time.process_time(), "tail": time.perf_counter() - self.t[-1]}))

    original = train.checkpoint_manager

    def instrumented(spec, rt, reporters):
        mgr = original(spec, rt, reporters)
        timer = StepTimer()
        callbacks = mgr.callbacks
        mgr.callbacks = lambda: [*callbacks(), timer]
        on_saved = mgr.on_saved

        def on_saved_timed(step):
            t0 = time.perf_counter()
            on_saved(step)
            if mode == "sync":
                mgr.drain()
            label = "kubetune on_saved" + (" + wait for upload" if mode == "sync" else "")
            phases[label] = phases.get(label, 0.0) + time.perf_counter() - t0

        mgr.on_saved = on_saved_timed
        return mgr

    train.checkpoint_manager = instrumented
    return train.main(["--config", config])


# ------------------------------------------------------------------ driver
def free_port() -> int:
    import socket

    with socket.socket() as s:  # other engineers' runs share this machine: no fixed port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--modes", default="none,background,sync")
    ap.add_argument("--rounds", type=int, default=2, help="run the arms this many times, in turn")
    ap.add_argument("--ranks", type=int, default=2, help="training processes (torchrun --nproc-per-node)")
    ap.add_argument("--s3-nice", type=int, default=0,
                    help="nice value of the S3 server process (19: it gets only what the training leaves, as a server "
                         "on another machine would take nothing from this one)")
    ap.add_argument("--worker", nargs=3, metavar=("CONFIG", "MODE", "TIMES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)

    import logging

    import boto3

    from kubetune_trainer import tiny

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
               OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(ROOT / "trainer"))
    # DeepSpeed's CPU op is built per source path under a lock; as in scripts/test.sh, one cache per checkout,
    # so a run from another checkout (or a killed build's stale lock) cannot leave this one waiting.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions" /
                                               f"checkout-{hashlib.md5(str(ROOT).encode()).hexdigest()[:12]}"))
    server = start_s3_server(args.s3_nice)
    endpoint = server.endpoint
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket="bench")

    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny.save_tiny_model(tmp / "model", hidden=args.hidden, layers=args.layers)
        tiny.write_instruction_dataset(tmp / "train.jsonl", n=512)
        n_params = sum(os.path.getsize(p) for p in (tmp / "model").glob("*.safetensors")) / 4
        for rnd in range(args.rounds):  # arms take turns, so a change in the machine's load hits each about alike
            for mode in args.modes.split(","):
                runs.setdefault(mode, []).append(run_arm(args, tmp, env, server, mode, rnd))
    server.stop()

    ckpt_mb = n_params * 4 * 4 / 1e6  # fp32 weights + fp32 master + Adam m, v (ZeRO-2, over both ranks)
    print(f"model ~{n_params / 1e6:.1f}M params (checkpoint ~{ckpt_mb:.0f} MB), {args.steps} steps, "
          f"checkpoint every {args.every}, {args.ranks} rank(s) ZeRO-2 fp32, moto S3 on 127.0.0.1 (own process, nice "
          f"{args.s3_nice}), {args.rounds} round(s)")
    results = {mode: pool(rs) for mode, rs in runs.items()}
    for mode, r in results.items():
        print(f"  {mode:<10}: mean step {r['mean'] * 1e3:7.1f} ms, median {r['median'] * 1e3:7.1f} ms, "
              f"local save {r['save'] * 1e3:6.1f} ms, runs {'+'.join(f'{w:.0f}' for w in r['walls'])}s")
    print("breakdown (rank 0; per-checkpoint times are means over its checkpoints):")
    for mode, r in results.items():
        save_iv = f"{r['save_iv'] * 1e3:7.1f} ms" if r["save_iv"] is not None else "      -   "
        print(f"  {mode:<10}: step with a save {save_iv}, step without {r['plain_iv'] * 1e3:7.1f} ms, "
              f"training-thread CPU/step {r['cpu_step'] * 1e3:6.1f} ms; CPU s per run: trainer processes "
              f"{r['trainer_cpu']:.1f}, S3 server {r['server_cpu']:.1f}; {r['saves']} checkpoints"
              + (f", upload {statistics.mean(r['uploads']):.2f}s each (node 0)" if r["uploads"] else "")
              + (f", uploader CPU {statistics.mean(r['upload_cpu']):.2f}s each" if r["upload_cpu"] else "")
              + f"; after the last step until training ended (the last uploads) {r['tail'] * 1e3:.0f} ms")
        for label, seconds in r["phases"].items():
            print(f"      {label:<34} {seconds * 1e3:7.1f} ms")
        if "none" in results and mode != "none" and r["saves"]:
            per_step = (r["phases"].get("trainer save (total)", 0.0) + r["phases"].get("kubetune on_saved", 0.0)) / args.every
            print(f"      training thread in checkpoint code: {per_step * 1e3:.1f} ms per step "
                  f"= {per_step / results['none']['mean']:.1%} of a step without checkpoints")
    if "none" in results:  # kubetune's own mode last: the last line is the ratio the goal is about
        others = sorted((m for m in results if m != "none"), key=lambda m: m == "background")
        if args.rounds > 1:
            for mode in others:
                each = [b["mean"] / a["mean"] for a, b in zip(runs["none"], runs[mode])]
                print(f"per round: ratio {mode}/none = {', '.join(f'{x:.3f}' for x in each)}")
        for mode in others:
            print(f"ratio {mode}/none = {results[mode]['mean'] / results['none']['mean']:.3f}")
    return 0


class S3Server:
    """moto's S3 server as a process of its own, so its CPU time is its own (not the bench's) and its
    priority can be lowered: on a cluster the object store runs elsewhere and takes no training CPU."""

    def __init__(self, proc: subprocess.Popen, endpoint: str):
        import psutil

        self.proc, self.endpoint, self.ps = proc, endpoint, psutil.Process(proc.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_s3_server(nice: int) -> S3Server:
    import socket

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: os.nice(nice))
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return S3Server(proc, f"http://127.0.0.1:{port}")
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the moto S3 server did not start (exit {proc.poll()})") from None
            time.sleep(0.1)


def run_arm(args: argparse.Namespace, tmp: Path, env: dict, server: S3Server, mode: str, rnd: int) -> dict:
    """One training run under torchrun; its step intervals, save phases and CPU use."""
    import yaml

    name = f"{mode}-{rnd}"
    manifest = {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": f"stall-{mode}"},
        "spec": {
            "model": {"source": str(tmp / "model")},
            "dataset": {"train": str(tmp / "train.jsonl"), "evalFraction": 0.0, "packing": False, "maxSeqLength": 64},
            "method": {"type": "full"},
            "training": {"maxSteps": args.steps, "globalBatchSize": 8, "microBatchSize": 2, "learningRate": 1e-4,
                         "seed": 1, "precision": "fp32", "gradientCheckpointing": False},
            "distributed": {"nodes": 1, "gpusPerNode": 0, "processesPerNode": args.ranks, "zeroStage": 2},
            "output": {"uri": f"s3://bench/{name}", "checkpointEvery": args.every if mode != "none" else 10**8,
                       "keepLast": 2, "export": "merged"},
            "storage": {"endpoint": server.endpoint, "region": "us-east-1", "addressingStyle": "path"},
        },
    }
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(manifest))
    times = tmp / f"{name}.times.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.ranks}", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", str(Path(__file__).resolve()), "--worker", str(cfg), mode, str(times)]
    t0 = time.monotonic()
    kids0, server0 = resource.getrusage(resource.RUSAGE_CHILDREN), server.cpu()
    p = subprocess.run(cmd, cwd=ROOT, env=dict(env, KUBETUNE_SCRATCH=str(tmp / f"scratch-{name}")),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kids1, server1 = resource.getrusage(resource.RUSAGE_CHILDREN), server.cpu()
    if p.returncode != 0:
        print(p.stdout[-4000:])
        raise SystemExit(f"{name} run failed with {p.returncode}")
    data = json.loads(times.read_text())
    ends, cpu, w = data["ends"], data["cpu"], args.warmup
    with_save = set(data["saved_at"])  # interval i (ends[i-1] -> ends[i]) holds the save made after step end i-1
    return {"steps": [b - a for a, b in zip(ends[w:], ends[w + 1:])],
            "save_iv": [ends[i] - ends[i - 1] for i in range(w + 1, len(ends)) if i in with_save],
            "plain_iv": [ends[i] - ends[i - 1] for i in range(w + 1, len(ends)) if i not in with_save],
            "cpu_steps": [b - a for a, b in zip(cpu[w:], cpu[w + 1:])],
            "save_seconds": data["save_seconds"], "phases": data["phases"], "saves": len(data["saved_at"]),
            "server_cpu": server1 - server0, "tail": data["tail"],
            "trainer_cpu": (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime),
            "uploads": [float(x) for x in re.findall(r"uploaded step-\d+ \(.*?\) in ([0-9.]+)s", p.stdout)],
            "upload_cpu": [float(x) for x in re.findall(r"uploaded step-\d+ \(.*?\) in [0-9.]+s, uploader CPU ([0-9.]+)s",
                                                        p.stdout)],
            "wall": time.monotonic() - t0,
            "mean": statistics.mean([b - a for a, b in zip(ends[w:], ends[w + 1:])])}


def pool(rs: list[dict]) -> dict:
    """One arm's rounds together: means over all their step intervals."""
    steps = [x for r in rs for x in r["steps"]]
    save_iv = [x for r in rs for x in r["save_iv"]]
    saves = sum(r["saves"] for r in rs)
    phases: dict[str, float] = {}
    for r in rs:
        for k, v in r["phases"].items():
            phases[k] = phases.get(k, 0.0) + v
    return {"mean": statistics.mean(steps), "median": statistics.median(steps),
            "save": statistics.mean([x for r in rs for x in r["save_seconds"]] or [0.0]),
            "save_iv": statistics.mean(save_iv) if save_iv else None,
            "plain_iv": statistics.mean([x for r in rs for x in r["plain_iv"]]),
            "cpu_step": statistics.mean([x for r in rs for x in r["cpu_steps"]]),
            "phases": {k: v / max(1, saves) for k, v in phases.items()}, "saves": saves,
            "server_cpu": statistics.mean(r["server_cpu"] for r in rs),
            "trainer_cpu": statistics.mean(r["trainer_cpu"] for r in rs),
            "uploads": [x for r in rs for x in r["uploads"]], "upload_cpu": [x for r in rs for x in r["upload_cpu"]],
            "tail": statistics.mean(r["tail"] for r in rs), "walls": [r["wall"] for r in rs]}


if __name__ == "__main__":
    sys.exit(main())
