"""Run the real trainer (2 processes under torchrun) against the test S3 server."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from support.manifests import wrap

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job(name: str, *, model: str, train: str, output: str, endpoint: str, method: str = "lora", zero: int = 2,
        steps: int = 12, every: int | str = 3, keep_last: int = 2, nodes: int = 1, procs: int = 2, grace: int = 60) -> dict:
    spec = {
        "model": {"source": model},
        "dataset": {"train": train, "evalFraction": 0.0, "packing": False, "maxSeqLength": 64},
        "method": {"type": method, **({"lora": {"r": 4, "dropout": 0.1}} if method == "lora" else {})},
        "training": {"maxSteps": steps, "globalBatchSize": 4, "microBatchSize": 1, "learningRate": 1e-3,
                     "seed": 7, "precision": "fp32", "gradientCheckpointing": False, "warmupRatio": 0.0,
                     "scheduler": "linear"},
        "distributed": {"nodes": nodes, "gpusPerNode": 0, "processesPerNode": procs, "zeroStage": zero},
        "output": {"uri": output, "checkpointEvery": every, "keepLast": keep_last,
                   "export": "adapter" if method != "full" else "merged"},
        "storage": {"endpoint": endpoint, "region": "us-east-1", "addressingStyle": "path"},
        "runPolicy": {"terminationGraceSeconds": grace},
    }
    return wrap(spec, name=name)


@dataclass
class Run:
    returncode: int
    events: list[dict]
    stderr: str
    seconds: float

    def losses(self) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in self.events if "event" not in e and e.get("loss") is not None}

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == kind]


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and all its descendants (torchrun starts workers in their own sessions)."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def run_job(manifest: dict, workdir: Path, env: dict, *, procs: int = 2, nnodes: int = 1,
            until: Callable[[list[dict]], bool] | None = None, send: int = signal.SIGKILL,
            timeout: float = 300, tag: str = "") -> Run:
    """Run one job under the exit-code-keeping torchrun; optionally signal it once ``until(events)`` holds.

    ``nnodes`` > 1 starts one launcher per "node" (static rendezvous on
    127.0.0.1), each with its own scratch folder, as separate pods would be.
    SIGKILL goes to every launcher and worker at once (nodes dying); SIGTERM
    goes to the launchers only, as the kubelet sends it to a container's main
    process. The result's return code is node 0's.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / f"job{tag}.yaml"
    cfg.write_text(yaml.safe_dump(manifest))
    progress = workdir / f"progress{tag}.jsonl"
    progress.unlink(missing_ok=True)
    port = free_port()
    launchers, logs = [], []
    t0 = time.monotonic()
    for node in range(nnodes):
        e = dict(env)
        e.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                 TRANSFORMERS_OFFLINE="1", KUBETUNE_PROGRESS_FILE=str(progress), PYTHONUNBUFFERED="1",
                 KUBETUNE_SCRATCH=str(workdir / (f"scratch-node{node}" if nnodes > 1 else "scratch")))
        cmd = [sys.executable, "-m", "kubetune_trainer.torchrun", f"--nproc-per-node={procs}", f"--nnodes={nnodes}",
               f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
               "-m", "kubetune_trainer", "--config", str(cfg)]
        log_path = workdir / (f"stderr{tag}.log" if node == 0 else f"stderr{tag}-node{node}.log")
        logs.append(log_path)
        out = open(log_path, "w")
        launchers.append((subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=out, stderr=subprocess.STDOUT), out))
    signalled = False
    try:
        while any(p.poll() is None for p, _ in launchers):
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"job did not finish in {timeout}s; see {workdir}/stderr{tag}.log")
            if until is not None and not signalled and until(read_events(progress)):
                for p, _ in launchers:
                    kill_tree(p.pid) if send == signal.SIGKILL else p.send_signal(send)
                signalled = True
            time.sleep(0.02)
    finally:
        for p, out in launchers:
            if p.poll() is None:
                kill_tree(p.pid)
            p.wait()
            out.close()
    stderr = "\n".join(path.read_text() for path in logs)
    return Run(launchers[0][0].returncode, read_events(progress), stderr, time.monotonic() - t0)
