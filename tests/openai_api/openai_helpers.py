"""Helpers of the `kubetune api` tests: start `kubetune api` as a subprocess on 127.0.0.1, wait for things.

A module with a name of its own (not conftest): test folders have no __init__.py, so every folder's
conftest.py is the module `conftest`, and importing from it picks whichever was loaded last.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]

# What every local test job starts from: tiny, CPU, short sequences, frequent checkpoints.
LOCAL_TEMPLATE = {
    "dataset": {"maxSeqLength": 64, "packing": False},
    "method": {"type": "lora", "lora": {"r": 8}},
    "training": {"precision": "fp32", "gradientCheckpointing": False, "microBatchSize": 4, "evalEvery": 8},
    "distributed": {"nodes": 1, "gpusPerNode": 0},
    "output": {"checkpointEvery": 4, "keepLast": 2},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def kubetune_api(*args: str, env: dict[str, str] | None = None, log: Path) -> Iterator[str]:
    """`kubetune api ARGS --port <free>` as a subprocess; yields its base URL (…/v1); stops it with Ctrl-C."""
    port = free_port()
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "kubetune_operator.cli", "api", "--host", "127.0.0.1", "--port", str(port), *args],
                            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if requests.get(f"{base}/healthz", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "kubetune api did not start:\n" + log.read_text()
            time.sleep(0.2)
        yield f"{base}/v1"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.2, what: str = ""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


# Stand-ins for the upload check that runs in `kubetune api`'s loader process (files._LOADER_CHECK), sent there by name.
CRASH_MARKER = "crash-the-reader"


def check_or_crash(path: str, filename: str):
    """The real check, except that a file holding CRASH_MARKER kills the process with SIGSEGV, as pyarrow's reader can."""
    import multiprocessing

    from kubetune_operator.openai_api import files

    assert multiprocessing.parent_process() is not None, "only in the loader's worker process, never in pytest's own"
    if CRASH_MARKER in Path(path).read_text(errors="replace"):
        os.kill(os.getpid(), signal.SIGSEGV)
    return files._check_with_loader(path, filename)
