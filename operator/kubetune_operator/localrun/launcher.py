"""The torchrun subprocesses of one local run: start, poll, stop with a checkpoint, kill."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from kubetune_operator.localrun.planning import LocalPlan, node_env, torchrun_command


def _worker_pids(parent: int) -> list[int]:
    """Children of a torchrun process (its worker processes), from /proc."""
    pids = []
    for task in Path(f"/proc/{parent}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return pids


class Launcher:
    """The torchrun subprocesses of one local run."""

    def __init__(self, plan: LocalPlan, python: str = sys.executable, env: Mapping[str, str] | None = None) -> None:
        self.plan = plan
        self.python = python
        self.base_env = env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []

    def start(self) -> None:
        for g in self.plan.groups:
            g.scratch.mkdir(parents=True, exist_ok=True)
            log = open(g.log, "ab")
            self.logs.append(log)
            # Own session: a Ctrl-C at the terminal reaches only us; we decide what the trainers get.
            self.procs.append(subprocess.Popen(
                torchrun_command(self.plan, g, self.python), env=node_env(self.plan, g, self.base_env),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            ))

    def poll(self) -> list[int | None]:
        return [p.poll() for p in self.procs]

    def terminate_workers(self) -> None:
        """SIGTERM to the trainer processes themselves: they checkpoint and exit 75.

        Not to torchrun: it would forward the signal and then SIGKILL its workers
        after 30 s, which may cut a checkpoint upload short.
        """
        for p in self.procs:
            if p.poll() is not None:
                continue
            workers = _worker_pids(p.pid)
            targets = workers or [p.pid]
            for pid in targets:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                for pid in _worker_pids(p.pid):
                    try:
                        os.killpg(pid, signal.SIGKILL)  # workers lead their own process groups
                    except (ProcessLookupError, PermissionError):
                        pass
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c is not None for c in self.poll()):
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        for log in self.logs:
            log.close()
