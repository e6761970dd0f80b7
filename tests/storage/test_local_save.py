"""The local checkpoint save overlapped with training (local_save.py): what is written is the state at
save time, in order, the rank's "saved" marker last; a failed write stops training with a clear error."""
from __future__ import annotations

import threading
import types

import pytest
import torch

from kubetune_trainer import checkpoint as ck
from kubetune_trainer.local_save import LocalWriter

pytestmark = pytest.mark.timeout(60)


class _Engine:
    """DeepSpeed's checkpoint engine as the writer sees it: save/makedirs/commit."""

    def __init__(self, gate: threading.Event | None = None, fail: Exception | None = None):
        self.gate, self.fail, self.dirs = gate, fail, []

    def save(self, state_dict, path):
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        torch.save(state_dict, path)

    def makedirs(self, path, exist_ok=False):
        self.dirs.append(path)


def test_overlapped_save_writes_the_state_of_save_time_in_the_background(tmp_path):
    gate = threading.Event()
    inner = _Engine(gate)
    engine = types.SimpleNamespace(checkpoint_engine=inner)
    weights = torch.zeros(4)
    optim = {"state": {0: {"exp_avg": torch.ones(4)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    writer = LocalWriter()
    with writer.overlapped(engine):
        engine.checkpoint_engine.makedirs(str(tmp_path / "global_step5"), exist_ok=True)  # DeepSpeed's own, at once
        engine.checkpoint_engine.save({"module": weights}, str(tmp_path / "model.pt"))
        engine.checkpoint_engine.save({"optimizer": optim}, str(tmp_path / "optim.pt"))
    assert engine.checkpoint_engine is inner and inner.dirs == [str(tmp_path / "global_step5")]
    marker = tmp_path / "saved"
    writer.then(lambda: marker.write_text("run"))

    # Training goes on: the next optimizer step changes the live tensors before anything is written.
    weights += 1
    optim["state"][0]["exp_avg"].mul_(3)
    optim["param_groups"][0]["lr"] = 0.2
    assert not (tmp_path / "model.pt").exists() and not marker.exists()

    gate.set()
    writer.wait()
    assert torch.equal(torch.load(tmp_path / "model.pt")["module"], torch.zeros(4))
    saved = torch.load(tmp_path / "optim.pt")["optimizer"]
    assert torch.equal(saved["state"][0]["exp_avg"], torch.ones(4)) and saved["param_groups"][0]["lr"] == 0.1
    assert marker.read_text() == "run" and writer.error is None


def test_failed_write_leaves_no_marker_and_stops_training(tmp_path):
    topo = ck.Topology(rank=0, local_rank=1, world_size=2, local_world_size=2, node=0, nodes=1)
    spec = types.SimpleNamespace(
        output=types.SimpleNamespace(uri=str(tmp_path / "out"), keep_last=1, checkpoint_every_steps=lambda: 5,
                                     checkpoint_every_seconds=lambda: None),
        storage=None, run_policy=types.SimpleNamespace(termination_grace_seconds=30))
    mgr = ck.CheckpointManager(spec, tmp_path / "scratch", topology=topo)
    (mgr.local_root / "checkpoint-5").mkdir(parents=True)
    engine = types.SimpleNamespace(checkpoint_engine=_Engine(fail=OSError(28, "No space left on device")))
    with mgr.writer.overlapped(engine):
        engine.checkpoint_engine.save({"w": torch.ones(2)}, str(mgr.local_root / "checkpoint-5" / "optim.pt"))
    mgr.on_saved(5)  # local rank 1: its marker is what the node's uploader waits for
    with pytest.raises(ck.StorageError, match="writing the local checkpoint failed: .*No space left on device"):
        mgr.drain()
    assert not list((mgr.local_root / "checkpoint-5").glob(f"{ck.LOCAL_MARKER}*"))
    assert mgr.step_flags(6)[2], "the failure reaches every rank at the next step"


def test_next_checkpoint_reuses_the_host_buffers_only_after_the_previous_writes(tmp_path):
    """The second checkpoint's snapshot is copied into the first one's host buffers (no fresh 46 MB per save),
    and not before the first checkpoint's files are written: what each file holds is its own save's state."""
    gate = threading.Event()
    inner = _Engine(gate)
    engine = types.SimpleNamespace(checkpoint_engine=inner)
    weights, moments = torch.zeros(8), torch.ones(3, 4)
    writer = LocalWriter()
    with writer.overlapped(engine):
        engine.checkpoint_engine.save({"module": weights, "m": moments}, str(tmp_path / "a.pt"))
    first = {i: buf.data_ptr() for i, buf in enumerate(writer.buffers._buffers)}
    weights += 1
    moments.mul_(5)

    second = threading.Thread(target=lambda: _save_in(writer, engine, {"module": weights, "m": moments},
                                                      tmp_path / "b.pt"))
    second.start()
    second.join(0.5)
    assert second.is_alive(), "the second save must wait for the first checkpoint's writes"
    gate.set()
    second.join(10)
    writer.wait()

    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert torch.equal(a["module"], torch.zeros(8)) and torch.equal(a["m"], torch.ones(3, 4))
    assert torch.equal(b["module"], torch.ones(8)) and torch.equal(b["m"], torch.full((3, 4), 5.0))
    assert {i: buf.data_ptr() for i, buf in enumerate(writer.buffers._buffers)} == first and len(first) == 2
    assert writer.buffers.reused == 2


def _save_in(writer: LocalWriter, engine, state, path) -> None:
    with writer.overlapped(engine):
        engine.checkpoint_engine.save(state, str(path))


def test_snapshot_buffers_follow_a_changed_state():
    """A tensor whose shape or dtype changed gets a buffer of its own; buffers a smaller state no longer uses go."""
    from kubetune_trainer.local_save import SnapshotBuffers, snapshot

    pool = SnapshotBuffers()
    pool.start()
    snapshot({"a": torch.ones(4), "b": torch.ones(2, dtype=torch.float64), "c": torch.ones(1)}, pool)
    pool.finish()
    pool.start()
    out = snapshot({"a": torch.full((4,), 2.0), "b": torch.ones(3, dtype=torch.float64)}, pool)
    pool.finish()
    assert torch.equal(out["a"], torch.full((4,), 2.0)) and out["b"].shape == (3,)
    assert pool.reused == 1 and len(pool._buffers) == 2
