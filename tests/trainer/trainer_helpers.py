"""Helpers for the trainer tests: write a FineTuneJob, run the trainer under torchrun, read its outputs."""
from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from support.manifests import wrap

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_job(path: Path, spec: dict, name: str = "t") -> Path:
    path.write_text(yaml.safe_dump(wrap(spec, name=name)))
    return path


def trainer_env(scratch: Path, progress: Path | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", KUBETUNE_SCRATCH=str(scratch),
               TOKENIZERS_PARALLELISM="false")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if progress:
        env["KUBETUNE_PROGRESS_FILE"] = str(progress)
    return env


def torchrun_cmd(config: Path, nproc: int = 2, extra: tuple = ()) -> list[str]:
    return [sys.executable, "-m", "kubetune_trainer.torchrun", f"--nproc-per-node={nproc}",
            f"--master-port={free_port()}", *extra, "-m", "kubetune_trainer", "--config", str(config)]


class Run:
    """One finished trainer run: exit code, log, summary.json, progress records, wall time."""

    def __init__(self, workdir: Path, rc: int, log: str, seconds: float, output: Path):
        self.workdir, self.rc, self.log, self.seconds, self.output = workdir, rc, log, seconds, output
        summary = output / "final" / "summary.json"
        self.summary = json.loads(summary.read_text()) if summary.exists() else None
        progress = workdir / "progress.jsonl"
        self.records = [json.loads(l) for l in progress.read_text().splitlines()] if progress.exists() else []


def start_trainer(workdir: Path, spec: dict, nproc: int = 2) -> tuple[subprocess.Popen, float]:
    """Start torchrun (through kubetune_trainer.torchrun) with `nproc` CPU processes on one FineTuneJob."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_job(workdir / "job.yaml", spec)
    p = subprocess.Popen(torchrun_cmd(config, nproc), env=trainer_env(workdir / "scratch", workdir / "progress.jsonl"),
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return p, time.monotonic()


def kill_tree(pid: int) -> None:
    """Kill torchrun and its workers: they run in sessions of their own, and killing torchrun alone
    leaves them holding the output pipe open (a hung run would then hang the test)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def finish_trainer(started: tuple[subprocess.Popen, float], workdir: Path, spec: dict, timeout: int = 300) -> Run:
    p, t0 = started
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(p.pid)
        out, _ = p.communicate()
        out += f"\n[test] killed after {timeout}s: timed out"
    run = Run(workdir, p.returncode, out, time.monotonic() - t0, Path(spec["output"]["uri"]))
    (workdir / "log.txt").write_text(run.log)
    return run


def run_trainer(workdir: Path, spec: dict, nproc: int = 2, timeout: int = 300) -> Run:
    return finish_trainer(start_trainer(workdir, spec, nproc), workdir, spec, timeout)


COUNTRIES = {"france": "paris", "italy": "rome", "japan": "tokyo", "spain": "madrid", "peru": "lima", "chile": "santiago"}


def write_json_chat(path: Path, n: int, seed: int) -> str:
    """Chat rows whose answer is one line of JSON (three fields), for the evaluation tests."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            c = rng.choice(sorted(COUNTRIES))
            answer = json.dumps({"country": c, "capital": COUNTRIES[c], "size": rng.choice(["big", "small"])})
            msgs = [{"role": "user", "content": f"facts about {c} ?"}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return str(path)
