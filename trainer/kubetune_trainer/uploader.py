"""The checkpoint uploader: one helper process per node that hashes, uploads and commits checkpoints.

The training process only saves a checkpoint locally and hands its folder to
this process (``UploaderProcess.publish``); everything after that (sha256 of
each file, the S3 transfer with boto3's threads, the node marker, the commit
on global rank 0, retention) runs here, at a lower CPU priority and with its
own interpreter lock. In the training process the same work, even on a
background thread, took the GIL away from the training loop for the Python
parts of boto3 and competed at the same priority for the CPU.

Protocol (pickled messages over a ``multiprocessing`` connection on an
inherited file descriptor):

- parent → child: the :class:`~kubetune_trainer.checkpoint.Publisher` and
  logging settings first; then ``{"step", "dir", "run", "commit", "busy"}`` per
  checkpoint; ``None`` to stop.
- child → parent, per checkpoint: ``{"state": "uploaded", ...}``, then (when
  committing) ``{"state": "committed", "uri", "time"}``, or
  ``{"state": "failed", "type", "message", "reason"}``.

Lifetime: started by the training process, in a session of its own, and it
ignores SIGTERM and SIGINT: the trainer decides when it stops (a preempted
trainer still needs it to finish the preemption checkpoint). It exits on ``None``, when the connection closes, or
within a second of its parent dying (no orphan uploads). A checkpoint it did
not finish is never committed: the commit marker is written after all nodes'
files, by this process, last.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_api.contract import PermanentError

from .storage import ChecksumMismatch, ObjectNotFound, StorageError

if TYPE_CHECKING:
    from .checkpoint import Publisher

log = logging.getLogger("kubetune.checkpoint")

#: CPU priority of the uploader (``os.nice`` increment): training first, uploads take what is left.
NICE = 10

_ERRORS: dict[str, type[StorageError]] = {"StorageError": StorageError, "ObjectNotFound": ObjectNotFound,
                                          "ChecksumMismatch": ChecksumMismatch}


class UploaderProcess:
    """The training process's handle on its uploader process."""

    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection):
        self.proc = proc
        self.conn = conn
        self._lock = threading.Lock()

    @classmethod
    def start(cls, publisher: Publisher, rank: int = 0) -> UploaderProcess:
        parent, child = Pipe(duplex=True)
        # The child imports this checkout's code, whatever put it on sys.path (PYTHONPATH, a test, a bench).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.Popen([sys.executable, "-m", "kubetune_trainer.uploader", str(child.fileno())],
                                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # a signal to the trainer's process group is not for it
        child.close()
        parent.send({"publisher": publisher, "rank": rank, "level": logging.getLogger().getEffectiveLevel()})
        return cls(proc, parent)

    def publish(self, step: int, local_dir: Path, run_id: str, *, commit: bool, busy: set[int]) -> Iterator[dict[str, Any]]:
        """Hand over one saved checkpoint; yields the child's answers until it is done (raises if it failed or died)."""
        with self._lock:
            try:
                self.conn.send({"step": step, "dir": str(local_dir), "run": run_id, "commit": commit, "busy": sorted(busy)})
                while True:
                    answer = self.conn.recv()
                    if answer["state"] == "failed":
                        raise _rebuild(answer)
                    yield answer
                    if answer["state"] == "committed" or (answer["state"] == "uploaded" and not commit):
                        return
            except (EOFError, OSError) as e:
                raise StorageError(f"the checkpoint uploader process (pid {self.proc.pid}) {self._how_it_ended()} "
                                   f"while publishing step {step}; that checkpoint is not committed") from e

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the child to exit (it finishes nothing more); kill it if it does not within ``timeout``."""
        try:
            self.conn.send(None)
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.conn.close()

    def _how_it_ended(self) -> str:
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"


def _rebuild(answer: dict[str, Any]) -> BaseException:
    message = f"{answer['message']} (in the checkpoint uploader)"
    if answer.get("reason"):
        return PermanentError(message, str(answer["reason"]))
    kind = str(answer["type"])
    if kind in _ERRORS:
        return _ERRORS[kind](message)
    return StorageError(f"{kind}: {message}")


# ------------------------------------------------------------------ the child
def _exit_with_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(1.0)


def serve(conn: Connection) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    try:
        os.nice(NICE)
    except OSError:
        pass
    init = conn.recv()
    publisher: Publisher = init["publisher"]
    logging.basicConfig(level=init["level"], stream=sys.stderr,
                        format=f"%(asctime)s rank{init['rank']} uploader %(name)s %(levelname)s %(message)s")
    from .checkpoint import step_dirname
    from .storage import join

    _ = getattr(publisher.storage, "client", None)  # builds the S3 client now, not at the first checkpoint
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return 0
        if job is None:
            return 0
        step = job["step"]
        try:
            t0, cpu0 = time.monotonic(), time.process_time()
            manifest = publisher.upload(step, Path(job["dir"]), job["run"])
            conn.send({"state": "uploaded", "files": len(manifest), "bytes": sum(m["size"] for m in manifest.values()),
                       "seconds": time.monotonic() - t0, "cpu_seconds": time.process_time() - cpu0})
            if job["commit"]:
                marker = publisher.commit(step, job["run"], set(job["busy"]))
                conn.send({"state": "committed", "uri": join(publisher.root, step_dirname(step)), "time": marker["time"]})
        except Exception as e:  # the trainer raises it at its next step
            conn.send({"state": "failed", "type": type(e).__name__, "message": str(e), "reason": getattr(e, "reason", None)})


def main(argv: list[str]) -> int:
    conn = Connection(int(argv[0]))
    try:
        return serve(conn)
    except (EOFError, BrokenPipeError):  # the trainer went away
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
