"""The checkpoint protocol on storage, without training: commit markers, resume choice, retention.

Runs against moto S3 and a local folder alike.
"""
from __future__ import annotations

import logging
import re
import time
import types

import pytest

from kubetune_trainer import checkpoint as ck
from kubetune_trainer.storage import LocalStorage, S3Storage, Storage, join

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["s3", "local"])
def store(request, s3, tmp_path):
    if request.param == "s3":
        st = S3Storage(endpoint=s3.endpoint, region="us-east-1", addressing_style="path", base_delay=0.01)
        return st, f"s3://{s3.bucket}/proto-{time.monotonic_ns()}/checkpoints"
    return LocalStorage(), f"{tmp_path}/out/checkpoints"


def _put(st: Storage, root: str, step: int, committed: bool, run: str = "r1") -> str:
    uri = join(root, ck.step_dirname(step))
    st.write_bytes(join(uri, "global_step/optim.pt"), b"x" * step)
    st.write_json(join(uri, "trainer_state.json"), {"global_step": step})
    if committed:
        st.write_json(join(uri, ck.COMMITTED), ck.commit_marker(step, run, 1, 2, {0: {"trainer_state.json": {"size": 1, "sha256": "0"}}}))
    return uri


def _steps(st, root):
    return [(c.step, c.committed) for c in ck.list_checkpoints(st, root)]


def test_uncommitted_checkpoint_is_ignored_on_resume(store):
    st, root = store
    _put(st, root, 3, True)
    _put(st, root, 6, True)
    _put(st, root, 9, False)  # upload cut off: no marker
    best, ignored = ck.newest_committed(st, root)
    assert best.step == 6 and best.manifest["step"] == 6
    assert [c.step for c in ignored] == [9]


def test_nothing_committed_means_fresh_start(store):
    st, root = store
    assert ck.newest_committed(st, root) == (None, [])
    _put(st, root, 4, False)
    best, ignored = ck.newest_committed(st, root)
    assert best is None and [c.step for c in ignored] == [4]


def test_retention_keeps_last_and_never_zero(store):
    st, root = store
    _put(st, root, 2, False)  # leftover of a killed attempt, older than the newest commit
    _put(st, root, 3, True)
    _put(st, root, 6, True)
    _put(st, root, 9, True)
    _put(st, root, 12, False)  # newer, maybe being uploaded right now
    assert ck.apply_retention(st, root, keep_last=2) == [2, 3]
    assert _steps(st, root) == [(6, True), (9, True), (12, False)]
    # keepLast 1 leaves the newest committed one, never zero; the newer uncommitted one stays.
    assert ck.apply_retention(st, root, keep_last=1) == [6]
    assert _steps(st, root) == [(9, True), (12, False)]
    assert ck.apply_retention(st, root, keep_last=1) == []
    assert _steps(st, root) == [(9, True), (12, False)]


def test_retention_without_any_commit_deletes_nothing(store):
    st, root = store
    _put(st, root, 3, False)
    _put(st, root, 6, False)
    assert ck.apply_retention(st, root, keep_last=1) == []
    assert _steps(st, root) == [(3, False), (6, False)]


def test_retention_spares_busy_uploads(store):
    st, root = store
    _put(st, root, 3, False)
    _put(st, root, 6, True)
    assert ck.apply_retention(st, root, keep_last=1, busy={3}) == []
    assert _steps(st, root) == [(3, False), (6, True)]


def test_retention_deletes_the_marker_first(store, monkeypatch):
    """Dying half way through deleting leaves an uncommitted (ignored) checkpoint, never a committed partial one."""
    st, root = store
    _put(st, root, 3, True)
    _put(st, root, 6, True)
    order = []
    real_delete = st.delete

    def spy_delete(uri):
        order.append(uri.rsplit("/", 1)[-1])
        return real_delete(uri)

    monkeypatch.setattr(st, "delete", spy_delete)
    ck.apply_retention(st, root, keep_last=1)
    assert order and order[0] == ck.COMMITTED


def _spec(output: str, endpoint=None, every="30m", keep_last=2):
    from kubetune_api.spec import OutputSpec, RunPolicy, StorageSpec

    return types.SimpleNamespace(
        output=OutputSpec(uri=output, checkpoint_every=every, keep_last=keep_last),
        storage=StorageSpec(endpoint=endpoint, region="us-east-1", addressing_style="path"),
        run_policy=RunPolicy(termination_grace_seconds=30),
    )


def test_manager_upload_commit_and_resume_download(s3, tmp_path, caplog):
    """One node, one process: save -> background upload -> COMMITTED with sha256s -> resume downloads and verifies."""
    out = f"s3://{s3.bucket}/mgr-{time.monotonic_ns()}"
    events = []
    reporters = types.SimpleNamespace(event=events.append, close=lambda: None)
    topo = ck.Topology(rank=0, local_rank=0, world_size=1, local_world_size=1, node=0, nodes=1)
    mgr = ck.CheckpointManager(_spec(out, s3.endpoint, every=2), tmp_path / "scratch", reporters, topology=topo)
    assert mgr.prepare_resume() is None
    local = mgr.local_root / "checkpoint-2"
    (local / "global_step2").mkdir(parents=True)
    (local / "global_step2" / "mp_rank_00_model_states.pt").write_bytes(b"weights" * 1000)
    (local / "trainer_state.json").write_text('{"global_step": 2}')
    with caplog.at_level(logging.INFO, logger="kubetune.checkpoint"):
        mgr.on_saved(2)
        mgr.drain()
    # The uploader's own CPU time per checkpoint is logged (bench/checkpoint_stall.py reads this line).
    assert re.search(r"uploaded step-000002 \(2 files, [0-9.]+ MB\) in [0-9.]+s, uploader CPU [0-9.]+s", caplog.text), caplog.text
    assert events == [{"event": "checkpoint", "step": 2, "uri": f"{out}/checkpoints/step-000002", "time": events[0]["time"]}]
    marker = mgr.storage.read_json(f"{out}/checkpoints/step-000002/COMMITTED")
    assert set(marker["files"]) == {"global_step2/mp_rank_00_model_states.pt", "trainer_state.json"}
    assert all(len(m["sha256"]) == 64 for m in marker["files"].values())
    assert not local.exists(), "the local copy is removed once uploaded"
    mgr.close()

    # A new attempt on a fresh node resumes from it; a corrupted object is detected.
    mgr2 = ck.CheckpointManager(_spec(out, s3.endpoint), tmp_path / "scratch2", reporters, topology=topo)
    d = mgr2.prepare_resume()
    assert (tmp_path / "scratch2").as_posix() in d
    assert open(f"{d}/global_step2/mp_rank_00_model_states.pt", "rb").read() == b"weights" * 1000
    assert events[-1] == {"event": "resumed", "step": 2, "uri": f"{out}/checkpoints/step-000002"}
    s3.client().put_object(Bucket=s3.bucket, Key=f"{out[len('s3://' + s3.bucket) + 1:]}/checkpoints/step-000002/trainer_state.json", Body=b"tampered")
    mgr3 = ck.CheckpointManager(_spec(out, s3.endpoint), tmp_path / "scratch3", reporters, topology=topo)
    mgr3.storage.operation_attempts = 2
    mgr3.storage.base_delay = 0.01
    with pytest.raises(Exception, match="sha256 mismatch"):
        mgr3.prepare_resume()


def test_time_and_step_cadence_and_sigterm_flag(tmp_path):
    """checkpointEvery as a duration saves once it elapsed; as a step count on multiples; SIGTERM preempts."""
    topo = ck.Topology(rank=0, local_rank=0, world_size=1, local_world_size=1, node=0, nodes=1)
    timed = ck.CheckpointManager(_spec(str(tmp_path / "o1"), every="90s"), tmp_path / "s1", topology=topo)
    assert timed.step_flags(1) == (False, False, False)
    timed._last_save -= 91
    assert timed.step_flags(2) == (True, False, False)
    stepped = ck.CheckpointManager(_spec(str(tmp_path / "o2"), every=5), tmp_path / "s2", topology=topo)
    assert [stepped.step_flags(s)[0] for s in range(1, 11)] == [False] * 4 + [True] + [False] * 4 + [True]
    stepped._sigterm_at = time.monotonic()
    assert stepped.step_flags(11) == (True, True, False)


def test_sigterm_sets_the_flag_and_the_previous_handler_comes_back(tmp_path):
    """A real SIGTERM only flags a checkpoint-and-stop; after the run, SIGTERM is the caller's again."""
    import os
    import signal

    topo = ck.Topology(rank=0, local_rank=0, world_size=1, local_world_size=1, node=0, nodes=1)
    mgr = ck.CheckpointManager(_spec(str(tmp_path / "o"), every=100), tmp_path / "s", topology=topo)
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.append("caller"))
    try:
        mgr.callbacks()  # installs the trainer's handler
        os.kill(os.getpid(), signal.SIGTERM)
        assert mgr.step_flags(1) == (True, True, False) and seen == []
        mgr.restore_signal_handlers()
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == ["caller"]
    finally:
        signal.signal(signal.SIGTERM, previous)
        mgr.close()


@pytest.mark.parametrize("where", ["s3", "local-in-place"])
def test_publish_final_commits_marker_last(s3, tmp_path, where):
    topo = ck.Topology(rank=0, local_rank=0, world_size=1, local_world_size=1, node=0, nodes=1)
    if where == "s3":
        out, endpoint = f"s3://{s3.bucket}/final-{time.monotonic_ns()}", s3.endpoint
        final = tmp_path / "scratch" / "final"
    else:
        out, endpoint = str(tmp_path / "out"), None
        final = tmp_path / "out" / "final"
    (final / "adapter").mkdir(parents=True)
    (final / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 100)
    (final / "summary.json").write_text("{}")
    mgr = ck.CheckpointManager(_spec(out, endpoint), tmp_path / "scratch", topology=topo)
    uris = mgr.publish_final(final)
    assert uris == {"adapterUri": f"{out}/final/adapter", "summaryUri": f"{out}/final/summary.json"}
    marker = mgr.storage.read_json(f"{out}/final/COMMITTED")
    assert set(marker["files"]) == {"adapter/adapter_model.safetensors", "summary.json"}
    assert mgr.storage.read_bytes(f"{out}/final/adapter/adapter_model.safetensors") == b"w" * 100


# ------------------------------------------------------------ the uploader process
def _waiting_upload(tmp_path, out, endpoint=None):
    """A manager whose first checkpoint stays in flight: local rank 1 of 2 never reports its save."""
    topo = ck.Topology(rank=0, local_rank=0, world_size=2, local_world_size=2, node=0, nodes=1)
    mgr = ck.CheckpointManager(_spec(out, endpoint, every=2), tmp_path / "scratch", topology=topo)
    assert mgr.prepare_resume() is None
    local = mgr.local_root / "checkpoint-2"
    local.mkdir(parents=True)
    (local / "trainer_state.json").write_text('{"global_step": 2}')
    mgr.on_saved(2)
    return mgr


def test_uploader_killed_mid_upload_is_a_clear_error_and_nothing_is_committed(tmp_path):
    import signal

    from kubetune_trainer.storage import StorageError

    out = str(tmp_path / "out")
    mgr = _waiting_upload(tmp_path, out)
    proc = mgr._uploader.proc
    proc.send_signal(signal.SIGKILL)
    with pytest.raises(StorageError, match=rf"uploader process \(pid {proc.pid}\) was killed by signal SIGKILL "
                                           r"while publishing step 2; that checkpoint is not committed"):
        mgr.drain()
    assert mgr.step_flags(3)[2], "the training loop sees the failure at its next step"
    assert not LocalStorage().exists(f"{out}/checkpoints/step-000002/{ck.COMMITTED}")
    mgr.close()


def test_uploader_error_keeps_its_reason(s3, tmp_path):
    """A permanent storage error in the uploader reaches the trainer as the same PermanentError reason."""
    from kubetune_api.contract import PermanentError

    bucket = f"gone-{time.monotonic_ns()}"
    s3.client().create_bucket(Bucket=bucket)
    topo = ck.Topology(rank=0, local_rank=0, world_size=1, local_world_size=1, node=0, nodes=1)
    mgr = ck.CheckpointManager(_spec(f"s3://{bucket}/run", s3.endpoint, every=2), tmp_path / "scratch", topology=topo)
    assert mgr.prepare_resume() is None
    s3.client().delete_bucket(Bucket=bucket)
    (mgr.local_root / "checkpoint-2").mkdir(parents=True)
    (mgr.local_root / "checkpoint-2" / "trainer_state.json").write_text("{}")
    mgr.on_saved(2)
    with pytest.raises(PermanentError, match="does not exist.*in the checkpoint uploader") as e:
        mgr.drain()
    assert e.value.reason == "BucketNotFound"
    proc = mgr._uploader.proc
    mgr.close()
    assert proc.poll() == 0, "close() stops the uploader process"


def test_uploader_ignores_sigterm_and_dies_with_its_trainer(tmp_path):
    """SIGTERM is the trainer's to handle (a preempted trainer still needs its upload); a trainer
    killed with SIGKILL leaves no uploader behind."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    script = tmp_path / "trainer.py"
    script.write_text(f"""
import sys, time, types
sys.path[:0] = {[p for p in sys.path if p]!r}
from tests.storage.test_checkpoint_protocol import _waiting_upload
from pathlib import Path
mgr = _waiting_upload(Path({str(tmp_path)!r}), {str(tmp_path / "out")!r})
print(mgr._uploader.proc.pid, flush=True)
time.sleep(120)
""")
    trainer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        uploader = psutil.Process(int(trainer.stdout.readline()))
        assert uploader.ppid() == trainer.pid
        deadline = time.monotonic() + 30
        while uploader.nice() < 10:  # lowers its own priority first thing
            assert time.monotonic() < deadline, "the uploader did not lower its CPU priority"
            time.sleep(0.05)
        uploader.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert uploader.is_running() and uploader.status() != psutil.STATUS_ZOMBIE
        trainer.kill()
        trainer.wait()
        uploader.wait(timeout=10)  # psutil.TimeoutExpired here = an orphan uploader
    finally:
        trainer.kill()
