"""Run the real trainer (2 processes under torchrun) against the test S3 server."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import yaml

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
        "training": {"maxSteps": steps, "globalBatchSize": 4 * nodes, "microBatchSize": 1, "learningRate": 1e-3,
                     "seed": 7, "precision": "fp32", "gradientCheckpointing": False, "warmupRatio": 0.0,
                     "scheduler": "linear"},
        "distributed": {"nodes": nodes, "gpusPerNode": 0, "processesPerNode": procs, "zeroStage": zero},
        "output": {"uri": output, "checkpointEvery": every, "keepLast": keep_last,
                   "export": "adapter" if method != "full" else "merged"},
        "storage": {"endpoint": endpoint, "region": "us-east-1", "addressingStyle": "path"},
        "runPolicy": {"terminationGraceSeconds": grace},
    }
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}


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


def run_job(manifest: dict, workdir: Path, env: dict, *, procs: int = 2, scratch: Optional[Path] = None,
            until: Optional[Callable[[list[dict]], bool]] = None, send: int = signal.SIGKILL,
            timeout: float = 240, nnodes: int = 1, node_rank: int = 0, port: Optional[int] = None,
            tag: str = "") -> Run:
    """Run one job under the exit-code-keeping torchrun; optionally signal it once ``until(events)`` holds.

    SIGKILL goes to the launcher and every worker at once (a node dying);
    SIGTERM goes to the launcher only, as the kubelet sends it to a
    container's main process.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / f"job{tag}.yaml"
    cfg.write_text(yaml.safe_dump(manifest))
    progress = workdir / f"progress{tag}.jsonl"
    progress.unlink(missing_ok=True)
    e = dict(env)
    e.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
             TRANSFORMERS_OFFLINE="1", KUBETUNE_PROGRESS_FILE=str(progress),
             KUBETUNE_SCRATCH=str(scratch or workdir / "scratch"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "kubetune_trainer.torchrun", f"--nproc-per-node={procs}", f"--nnodes={nnodes}",
           f"--node-rank={node_rank}", "--master-addr=127.0.0.1", f"--master-port={port or free_port()}",
           "-m", "kubetune_trainer", "--config", str(cfg)]
    t0 = time.monotonic()
    errf = open(workdir / f"stderr{tag}.log", "w")
    p = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=errf, stderr=subprocess.STDOUT, start_new_session=True)
    signalled = False
    try:
        while p.poll() is None:
            if time.monotonic() - t0 > timeout:
                kill_tree(p.pid)
                raise TimeoutError(f"job did not finish in {timeout}s; see {workdir}/stderr{tag}.log")
            if until is not None and not signalled and until(read_events(progress)):
                if send == signal.SIGKILL:
                    kill_tree(p.pid)
                else:
                    p.send_signal(send)
                signalled = True
            time.sleep(0.02)
    finally:
        errf.close()
        if p.poll() is None:
            kill_tree(p.pid)
        p.wait()
    return Run(p.returncode, read_events(progress), (workdir / f"stderr{tag}.log").read_text(), time.monotonic() - t0)
