"""The local checkpoint save, overlapped with training.

DeepSpeed writes its checkpoint files (module states, each rank's ZeRO
optimizer shard) through a pluggable checkpoint engine
(``engine.checkpoint_engine``, the hook its Nebula and decoupled engines use).
While the Trainer saves a checkpoint, :meth:`LocalWriter.overlapped` puts a
thin engine in front of DeepSpeed's own: ``save(state, path)`` copies the
state into host memory on the training thread (a memcpy; for GPU tensors the
device-to-host copy every ``torch.save`` does anyway) and queues the write;
DeepSpeed's own engine then writes the copy on a background thread while
training continues. The copy is taken before ``save`` returns, so the next
optimizer step cannot change what is written.

Ordering: a rank's files are written in the order they were saved, and
whatever :meth:`LocalWriter.then` queues after them (the rank's "saved"
marker, which the uploader waits for) runs only once they are on disk. At
most one checkpoint is in flight: a new save first waits for the previous
one's writes, so host memory holds one extra copy of a rank's state at most.
A failed write is kept in :attr:`LocalWriter.error`; the marker after it is
not written, and the training loop raises the error at its next step.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("kubetune.checkpoint")


def snapshot(obj: Any) -> Any:
    """A copy of a state dict whose tensors live in fresh host memory (containers copied, other leaves shared)."""
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return t.clone() if t.device.type == "cpu" else t.to("cpu", copy=True)
    if isinstance(obj, dict):
        out = copy.copy(obj)  # keeps OrderedDict and friends
        for k, v in obj.items():
            out[k] = snapshot(v)
        return out
    if isinstance(obj, list):
        return [snapshot(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(snapshot(v) for v in obj)
    return obj


class _SnapshotEngine:
    """Stands in for DeepSpeed's checkpoint engine during one save: ``save`` snapshots and queues."""

    def __init__(self, inner: Any, writer: LocalWriter):
        self._inner = inner
        self._writer = writer

    def save(self, state_dict: Any, path: str) -> None:
        state = snapshot(state_dict)
        self._writer.submit(lambda: self._inner.save(state, path))

    def __getattr__(self, name: str) -> Any:  # makedirs, create, commit, load, ...: DeepSpeed's own
        return getattr(self._inner, name)


class LocalWriter:
    """One background thread per training process that writes checkpoint files (see the module docstring)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @contextlib.contextmanager
    def overlapped(self, engine: Any) -> Iterator[None]:
        """While the block runs, DeepSpeed's ``engine`` snapshots its checkpoint state and writes it in the background."""
        self.wait()  # one checkpoint in flight at most
        inner = engine.checkpoint_engine
        engine.checkpoint_engine = _SnapshotEngine(inner, self)
        try:
            yield
        finally:
            engine.checkpoint_engine = inner

    def submit(self, write: Callable[[], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kubetune-ckpt-write", daemon=True)
            self._thread.start()
        self._queue.put(write)

    then = submit  # what runs after the writes queued so far (they run in order)

    def wait(self) -> None:
        """Until everything queued so far has run."""
        if self._thread is not None:
            self._queue.join()

    def _run(self) -> None:
        try:  # writes yield the CPU to the training thread (Linux: nice is per thread)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        while True:
            write = self._queue.get()
            try:
                if write is not None and self.error is None:  # after a failure nothing more is written
                    write()
            except BaseException as e:
                log.error("writing a checkpoint file failed: %s", e)
                self.error = e
            finally:
                self._queue.task_done()
