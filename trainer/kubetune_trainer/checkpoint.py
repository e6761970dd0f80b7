"""Checkpoints on S3-compatible storage (or a local folder): save, upload, commit, resume.

Layout (docs/storage.md)::

    <output.uri>/checkpoints/step-000500/<files of a Hugging Face Trainer checkpoint>
    <output.uri>/checkpoints/step-000500/.nodes/node-<K>.json   per-node "uploaded" marker + its files' sha256
    <output.uri>/checkpoints/step-000500/COMMITTED              written last, holds the manifest
    <output.uri>/final/{adapter/,merged/,summary.json,COMMITTED}

How a checkpoint is made, without blocking the training loop on the network:

1. Decide. At every optimizer step end each rank contributes flags (SIGTERM
   seen, checkpoint duration elapsed, an upload failed) to one tiny
   ``all_reduce(MAX)``: decisions that depend on wall clocks or signals are the
   same on all ranks. Step cadence needs no communication.
2. Save. The Hugging Face Trainer saves ``checkpoint-N/`` into node-local
   scratch on every rank (DeepSpeed with ``use_node_local_storage``; PEFT
   models without their frozen base weights: transformers passes
   ``exclude_frozen_parameters=True`` to DeepSpeed's ``save_checkpoint``).
   DeepSpeed's files are snapshotted in memory and written by a background
   thread (:class:`~kubetune_trainer.local_save.LocalWriter`); each rank's
   tiny "saved" marker file is written after its files.
3. Upload (each node's uploader process, uploader.py, started by local rank
   0 at a lower CPU priority and with its own interpreter lock; a thread of
   the trainer only hands it each checkpoint and relays its answers). It
   waits for the local markers, hashes and uploads the node's files to
   ``step-N/`` and writes ``.nodes/node-K.json`` (:class:`Publisher`). Files
   every node writes alike (DeepSpeed's model states with node-local storage)
   are uploaded once: node 0 publishes its file list first and the other
   nodes upload only the names it lacks.
4. Commit (the uploader process of global rank 0): when every node's marker of
   this attempt (run id) is there, write ``COMMITTED`` with the merged
   manifest (name -> size, sha256, node). Storage is the barrier; no rank
   waits in a collective. Then the ``checkpoint`` event is emitted and
   retention runs: committed checkpoints beyond ``keepLast`` are deleted
   (marker first), only ever after a newer one is committed, never the
   newest; uncommitted leftovers older than the newest commit are removed,
   newer ones (possibly being uploaded) are left alone.

Resume: the newest committed checkpoint is chosen by rank 0 (and broadcast),
downloaded once per node (files of node 0 plus the node's own), verified
against the manifest, and handed to ``trainer.train(resume_from_checkpoint=)``
which restores the global step, optimizer, scheduler, RNG and data position.

Preemption: SIGTERM only sets a flag. At the next step boundary all ranks
save, the upload runs at once, every rank waits (polling storage) for the
commit within ``runPolicy.terminationGraceSeconds``, and the process exits
with ``contract.PREEMPTED`` (75).
"""
from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from kubetune_api import contract
from kubetune_api.contract import PermanentError

if TYPE_CHECKING:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

    from .uploader import UploaderProcess

from .local_save import LocalWriter
from .storage import ObjectNotFound, Storage, StorageError, join, sha256_file, storage_for

log = logging.getLogger("kubetune.checkpoint")

COMMITTED = "COMMITTED"
NODES_DIR = ".nodes"
LOCAL_MARKER = ".kubetune-saved-rank-"
_STEP_RE = re.compile(r"^step-(\d+)$")
POLL_S = 0.1


def step_dirname(step: int) -> str:
    return f"step-{step:06d}"


def parse_step(name: str) -> int | None:
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------ storage side
@dataclass
class StoredCheckpoint:
    step: int
    uri: str
    committed: bool
    manifest: dict | None = None


def list_checkpoints(storage: Storage, root: str) -> list[StoredCheckpoint]:
    """All step-* checkpoints under ``root`` (``<output>/checkpoints``), oldest first."""
    out = []
    for name in storage.list_dirs(root):
        step = parse_step(name)
        if step is not None:
            uri = join(root, name)
            out.append(StoredCheckpoint(step, uri, storage.exists(join(uri, COMMITTED))))
    return sorted(out, key=lambda c: c.step)


def newest_committed(storage: Storage, root: str) -> tuple[StoredCheckpoint | None, list[StoredCheckpoint]]:
    """(newest committed checkpoint with its manifest, uncommitted ones newer than it)."""
    all_ = list_checkpoints(storage, root)
    committed = [c for c in all_ if c.committed]
    best = None
    for c in reversed(committed):
        try:
            c.manifest = storage.read_json(join(c.uri, COMMITTED))
            best = c
            break
        except (ObjectNotFound, ValueError):  # deleted by retention meanwhile, or corrupt: try the next
            continue
    ignored = [c for c in all_ if not c.committed and (best is None or c.step > best.step)]
    return best, ignored


def apply_retention(storage: Storage, root: str, keep_last: int, busy: set[int] = frozenset()) -> list[int]:
    """Delete old checkpoints; returns the steps deleted.

    - committed: keep the newest ``keep_last`` (at least one); older ones go,
      commit marker first (a half-deleted checkpoint is then merely uncommitted);
    - uncommitted and older than the newest committed: leftovers of a killed
      attempt, deleted (never one in ``busy``, i.e. being uploaded by us);
    - uncommitted and newer than the newest committed: left alone (may be in flight).
    """
    keep_last = max(1, keep_last)
    all_ = list_checkpoints(storage, root)
    committed = [c for c in all_ if c.committed]
    if not committed:
        return []
    newest = committed[-1].step
    doomed = [c for c in committed[:-keep_last]]
    doomed += [c for c in all_ if not c.committed and c.step < newest and c.step not in busy]
    deleted = []
    for c in sorted(doomed, key=lambda c: c.step):
        storage.delete_prefix(c.uri, first=COMMITTED if c.committed else None)
        deleted.append(c.step)
    if deleted:
        log.info("retention: deleted %s (keepLast %d, newest committed step %d)", [step_dirname(s) for s in deleted], keep_last, newest)
    return deleted


def commit_marker(step: int, run_id: str, nodes: int, world_size: int, node_manifests: dict[int, dict]) -> dict:
    files: dict[str, dict] = {}
    for node in sorted(node_manifests):
        for name, meta in node_manifests[node].items():
            files.setdefault(name, {**meta, "node": node})
    return {"step": step, "run": run_id, "time": utc_now(), "nodes": nodes, "worldSize": world_size, "files": files}


# ------------------------------------------------------------ topology
@dataclass
class Topology:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node: int
    nodes: int

    @classmethod
    def from_env(cls) -> Topology:
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        node = int(os.environ.get("GROUP_RANK", rank // max(1, local_world)))
        return cls(rank, int(os.environ.get("LOCAL_RANK", 0)), world, local_world, node, max(1, world // max(1, local_world)))


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


# ------------------------------------------------------------ upload + commit (in the uploader process)
@dataclass
class Publisher:
    """Everything that touches a checkpoint's bytes after the local save: hash, upload, commit, retention.

    Runs in the node's uploader process (uploader.py), never on the training
    thread; picklable (the manager hands it to that process once).
    """

    storage: Storage
    root: str
    topo: Topology
    keep_last: int

    def upload(self, step: int, local_dir: Path, run_id: str) -> dict:
        """Upload this node's files of ``checkpoint-<step>`` and write ``.nodes/node-K.json``; returns the manifest."""
        step_uri = join(self.root, step_dirname(step))
        nodes_uri = join(step_uri, NODES_DIR)
        deadline = time.monotonic() + 600
        while True:  # every local rank has finished writing its files
            markers = [local_dir / f"{LOCAL_MARKER}{r}" for r in range(self.topo.local_world_size)]
            if all(m.exists() for m in markers):
                break
            if time.monotonic() > deadline:
                raise StorageError(f"local ranks did not finish saving {local_dir} within 600s")
            time.sleep(POLL_S / 2)
        files = {p.relative_to(local_dir).as_posix(): p for p in sorted(local_dir.rglob("*"))
                 if p.is_file() and not p.name.startswith(LOCAL_MARKER)}
        if self.topo.node == 0:
            # A commit of this step by an earlier attempt is withdrawn before its files are overwritten.
            try:
                if self.storage.read_json(join(step_uri, COMMITTED)).get("run") != run_id:
                    self.storage.delete(join(step_uri, COMMITTED))
            except (ObjectNotFound, ValueError):
                pass
            self.storage.write_json(join(nodes_uri, "node-0.files.json"), {"run": run_id, "files": sorted(files)})
        else:
            node0 = self.wait_json(join(nodes_uri, "node-0.files.json"), run_id, time.monotonic() + 3600)
            files = {n: p for n, p in files.items() if n not in set(node0["files"])}
        manifest = self.storage.upload_files(files, step_uri)
        self.storage.write_json(join(nodes_uri, f"node-{self.topo.node}.json"),
                                {"run": run_id, "node": self.topo.node, "files": manifest})
        shutil.rmtree(local_dir, ignore_errors=True)
        return manifest

    def wait_json(self, uri: str, run_id: str, deadline: float) -> dict:
        while True:
            try:
                obj = self.storage.read_json(uri)
                if obj.get("run") == run_id:
                    return obj
            except (ObjectNotFound, ValueError):
                pass
            if time.monotonic() > deadline:
                raise StorageError(f"timed out waiting for {uri} from this attempt (run {run_id})")
            time.sleep(POLL_S)

    def commit(self, step: int, run_id: str, busy: set[int]) -> dict:
        """Global rank 0: once every node's marker of this run is there, write ``COMMITTED``; then retention."""
        step_uri = join(self.root, step_dirname(step))
        nodes_uri = join(step_uri, NODES_DIR)
        deadline = time.monotonic() + 3600
        manifests = {}
        for node in range(self.topo.nodes):
            manifests[node] = self.wait_json(join(nodes_uri, f"node-{node}.json"), run_id, deadline)["files"]
        marker = commit_marker(step, run_id, self.topo.nodes, self.topo.world_size, manifests)
        self.storage.write_json(join(step_uri, COMMITTED), marker)
        log.info("committed %s (%d files)", step_uri, len(marker["files"]))
        try:
            apply_retention(self.storage, self.root, self.keep_last, busy)
        except (StorageError, PermanentError) as e:  # the commit stands; old checkpoints are retried next time
            log.warning("retention after %s failed: %s", step_dirname(step), e)
        return marker


# ------------------------------------------------------------ the manager
@dataclass
class _Job:
    step: int
    local_dir: Path
    done: threading.Event = field(default_factory=threading.Event)
    committed: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class CheckpointManager:
    """Plug-in for the trainer: ``training_args()``, ``callbacks()``, ``prepare_resume()``, ``publish_final()``."""

    def __init__(self, spec: Any, scratch: str | os.PathLike, reporters: Any = None, storage: Storage | None = None,
                 topology: Topology | None = None):
        self.spec = spec
        self.output = spec.output.uri.rstrip("/")
        self.root = join(self.output, "checkpoints")
        self.every_steps = spec.output.checkpoint_every_steps()
        self.every_seconds = spec.output.checkpoint_every_seconds()
        self.keep_last = spec.output.keep_last
        self.grace_s = float(spec.run_policy.termination_grace_seconds)
        self.storage = storage or storage_for(self.output, spec.storage)
        self.topo = topology or Topology.from_env()
        self.scratch = Path(scratch)
        self.local_root = self.scratch / "checkpoints-local"
        self.reporters = reporters
        self.run_id = uuid.uuid4().hex[:12]  # replaced by rank 0's in prepare_resume
        self.resumed_step: int | None = None

        self._sigterm_at: float | None = None
        self._preempting = False
        self._last_save = time.monotonic()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._by_step: dict[int, _Job] = {}
        self._error: BaseException | None = None
        self._worker: threading.Thread | None = None
        self._uploader: UploaderProcess | None = None
        self.writer = LocalWriter()  # DeepSpeed's files are written off the training thread (local_save.py)
        self._synced = False
        # Fail before any model is loaded if the output bucket is missing or the credentials are wrong.
        self.storage.check_access(self.output, write=self.topo.rank == 0)

    # ------------------------------------------------ trainer plug-in points
    def training_args(self) -> dict:
        """Save settings for TrainingArguments: we decide when to save; the Trainer saves locally."""
        return {
            "output_dir": str(self.local_root),
            "save_strategy": "no",  # our callback sets control.should_save
            "save_total_limit": None,  # we delete local copies after upload
            "save_only_model": False,  # optimizer, scheduler, RNG: needed for an exact resume
            "save_on_each_node": False,
            "ignore_data_skip": False,  # resume skips the batches already seen in the epoch
        }

    def callbacks(self) -> list:
        self._install_sigterm_handler()
        if self.topo.local_rank == 0:
            self._ensure_worker()  # the uploader process starts (imports, S3 client) before training, not at the first save
        return [_make_callback(self)]

    def prepare_resume(self) -> str | None:
        """Agree on a run id and the newest committed checkpoint; download it once per node; return its local dir."""
        if self.topo.local_rank == 0:
            shutil.rmtree(self.local_root, ignore_errors=True)  # stale local saves of a killed attempt
        decision = None
        if self.topo.rank == 0:
            best, ignored = newest_committed(self.storage, self.root)
            for c in ignored:
                log.warning("ignoring incomplete checkpoint %s (no %s marker: its upload was cut off)", c.uri, COMMITTED)
            decision = {"run": self.run_id, "step": best.step if best else None, "uri": best.uri if best else None,
                        "manifest": best.manifest if best else None, "ignored": [c.uri for c in ignored]}
        decision = self._broadcast(decision)
        self.run_id = decision["run"]
        self._synced = True
        if decision["step"] is None:
            log.info("no committed checkpoint under %s: starting from scratch", self.root)
            return None
        local = self._download_checkpoint(decision["uri"], decision["manifest"])
        self.resumed_step = decision["step"]
        self._event({"event": "resumed", "step": decision["step"], "uri": decision["uri"]})
        log.info("resuming from %s (step %d)", decision["uri"], decision["step"])
        return str(local)

    def publish_final(self, local_final_dir: str | os.PathLike) -> dict:
        """Upload ``final/{adapter,merged,summary.json,report.html,...}`` (rank 0), marker last; returns their URIs (rank 0; {} elsewhere)."""
        self.drain()
        local_final_dir = Path(local_final_dir)
        final_uri = join(self.output, "final")
        names = {"adapterUri": "adapter", "mergedUri": "merged", "summaryUri": "summary.json", "reportUri": "report.html"}
        if self.topo.rank != 0:  # rank 0 wrote the artifacts and reports their URIs
            return {}
        files = {p.relative_to(local_final_dir).as_posix(): p for p in sorted(local_final_dir.rglob("*"))
                 if p.is_file() and p.name != COMMITTED and ".tmp-" not in p.name}
        same_place = (not final_uri.startswith("s3://")
                      and Path(final_uri.removeprefix("file://")).resolve() == local_final_dir.resolve())
        self.storage.delete(join(final_uri, COMMITTED))  # a re-export is uncommitted until done
        if same_place:  # local output: export wrote the files in place
            manifest = {n: {"size": p.stat().st_size, "sha256": sha256_file(p)} for n, p in files.items()}
        else:
            manifest = self.storage.upload_files(files, final_uri)
        self.storage.write_json(join(final_uri, COMMITTED), {"time": utc_now(), "run": self.run_id, "files": manifest})
        present = {n.split("/", 1)[0] for n in files}
        return {key: join(final_uri, name) for key, name in names.items() if name in present}

    def drain(self) -> None:
        """Wait for this rank's file writes, queued uploads (and, on rank 0, their commits); re-raise a background failure."""
        self.writer.wait()
        for job in list(self._by_step.values()):
            job.done.wait()
            if self.topo.rank == 0:
                job.committed.wait()
        self._raise_if_failed()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the upload thread and the uploader process; an upload still running is abandoned (stays uncommitted)."""
        if self._worker is not None:
            if self._uploader is not None:
                self._uploader.stop(timeout)  # ends a publish() in flight with an error, so the thread can stop
            self._jobs.put(None)
            self._worker.join(timeout)
            self._worker = None
        self._uploader = None

    # ------------------------------------------------ decisions (training thread)
    def _install_sigterm_handler(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if self._sigterm_at is None:
                self._sigterm_at = time.monotonic()
                log.warning("SIGTERM: checkpointing at the next step boundary, then exiting with %d", contract.PREEMPTED)

        self._previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def restore_signal_handlers(self) -> None:
        """Give SIGTERM back to whoever had it (for callers that run the trainer in-process).

        The handler stays installed through the final eval and export on purpose: a pod
        told to stop then still gets its grace period to finish the export.
        """
        previous = getattr(self, "_previous_sigterm", None)
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
            self._previous_sigterm = None

    def step_flags(self, step: int, device: Any = None) -> tuple[bool, bool, bool]:
        """(save now, preempt, failed), identical on all ranks."""
        time_due = self.every_seconds is not None and time.monotonic() - self._last_save >= self.every_seconds
        failed = self._error is not None or self.writer.error is not None
        local = [1.0 if self._sigterm_at is not None else 0.0, 1.0 if time_due else 0.0, 1.0 if failed else 0.0]
        dist = _dist()
        if dist is not None and self.topo.world_size > 1:
            import torch

            t = torch.tensor(local, dtype=torch.float32, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            local = t.tolist()
        preempt, time_due, failed = local[0] > 0, local[1] > 0, local[2] > 0
        step_due = self.every_steps is not None and step % self.every_steps == 0
        return preempt or time_due or step_due, preempt, failed

    def on_saved(self, step: int) -> None:
        """Called on every rank after the Trainer saved ``checkpoint-<step>`` locally."""
        self._last_save = time.monotonic()
        local_dir = self.local_root / f"checkpoint-{step}"
        marker, run_id = local_dir / f"{LOCAL_MARKER}{self.topo.local_rank}", self.run_id
        self.writer.then(lambda: marker.write_text(run_id))  # once this rank's files are written
        if self.topo.local_rank == 0:
            job = _Job(step, local_dir)
            self._by_step[step] = job
            self._ensure_worker()
            self._jobs.put(job)
        if self._preempting:
            self._finish_preemption(step)

    def _finish_preemption(self, step: int) -> None:
        deadline = (self._sigterm_at or time.monotonic()) + max(5.0, self.grace_s - 5.0)
        uri = join(self.root, step_dirname(step))
        ok = self._wait_committed(step, deadline)
        if ok:
            log.warning("preempted: checkpoint %s committed; exiting with %d", uri, contract.PREEMPTED)
        else:
            log.error("preempted: checkpoint %s NOT committed within the grace period; the next attempt "
                      "resumes from the previous commit", uri)
        self.close_reporters()
        raise SystemExit(contract.PREEMPTED)

    def close_reporters(self) -> None:
        if self.reporters is not None:
            try:
                self.reporters.close()
            except Exception:  # closing twice or a broken reporter must not hide the exit
                pass

    def _wait_committed(self, step: int, deadline: float) -> bool:
        """Wait for this run's commit of ``step``: rank 0 on its own uploader, other ranks by polling storage."""
        job = self._by_step.get(step)
        if self.topo.rank == 0 and job is not None:
            job.committed.wait(max(0.0, deadline - time.monotonic()))
            if job.error is not None:
                log.error("checkpoint upload failed: %s", job.error)
            return job.committed.is_set() and job.error is None
        marker = join(self.root, step_dirname(step), COMMITTED)
        while time.monotonic() < deadline:
            if self._error is not None or self.writer.error is not None:
                log.error("checkpoint failed: %s", self._error or f"writing the local checkpoint failed: {self.writer.error}")
                return False
            try:
                if self.storage.read_json(marker).get("run") == self.run_id:
                    return True
            except (ObjectNotFound, ValueError):
                pass
            except StorageError as e:
                log.warning("waiting for commit of step %d: %s", step, e)
            time.sleep(POLL_S)
        return False

    def _raise_if_failed(self) -> None:
        if self.writer.error is not None:
            raise StorageError(f"writing the local checkpoint failed: {self.writer.error}") from self.writer.error
        if self._error is not None:
            raise self._error

    # ------------------------------------------------ background upload + commit
    def _ensure_worker(self) -> None:
        """Start this node's uploader process and the thread that feeds it (once, on local rank 0)."""
        if self._worker is None:
            from .uploader import UploaderProcess

            self._uploader = UploaderProcess.start(Publisher(self.storage, self.root, self.topo, self.keep_last),
                                                   rank=self.topo.rank)
            self._worker = threading.Thread(target=self._work, name="kubetune-ckpt-upload", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        """Hands each saved checkpoint to the uploader process and waits (off the GIL) for its answers."""
        assert self._uploader is not None
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                commit = self.topo.rank == 0
                busy = {s for s, j in list(self._by_step.items()) if s != job.step and not j.committed.is_set()}
                for answer in self._uploader.publish(job.step, job.local_dir, self.run_id, commit=commit, busy=busy):
                    if answer["state"] == "uploaded":
                        # The uploader's CPU time (hashing, boto3) is what the upload takes from the node's cores.
                        log.info("node %d uploaded %s (%d files, %.1f MB) in %.1fs, uploader CPU %.2fs", self.topo.node,
                                 step_dirname(job.step), answer["files"], answer["bytes"] / 1e6, answer["seconds"],
                                 answer["cpu_seconds"])
                        job.done.set()
                    elif answer["state"] == "committed":
                        self._event({"event": "checkpoint", "step": job.step, "uri": answer["uri"], "time": answer["time"]})
            except BaseException as e:  # surfaces in the training thread at the next step
                log.error("checkpoint %s failed: %s", step_dirname(job.step), e)
                job.error = e
                self._error = e
            finally:
                job.done.set()
                job.committed.set()

    # ------------------------------------------------ resume download
    def _download_checkpoint(self, uri: str, manifest: dict) -> Path:
        from .fetch import _NodeOnce

        files = {n: m for n, m in manifest["files"].items() if m.get("node", 0) in (0, self.topo.node)}
        if manifest.get("worldSize") not in (None, self.topo.world_size) or manifest.get("nodes") not in (None, self.topo.nodes):
            raise PermanentError(
                f"checkpoint {uri} was written by {manifest.get('nodes')} node(s) x {manifest.get('worldSize')} processes, "
                f"this run has {self.topo.nodes} x {self.topo.world_size}; DeepSpeed checkpoints resume only on the same topology",
                "InvalidSpec",
            )
        entry = self.scratch / "resume" / f"{step_dirname(manifest['step'])}-{manifest['run']}"
        record = {"uri": uri, "run": manifest["run"], "files": sorted(files)}
        t0 = time.monotonic()
        out = _NodeOnce(entry).run(lambda tmp: self.storage.download_files(uri, files, tmp), record)
        log.info("checkpoint %s on this node in %.1fs", uri, time.monotonic() - t0)
        return out

    # ------------------------------------------------ helpers
    def _broadcast(self, obj: Any) -> Any:
        dist = _dist()
        if dist is None or self.topo.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _event(self, event: dict) -> None:
        if self.reporters is not None and self.topo.rank == 0:
            self.reporters.event(event)


def _make_callback(mgr: CheckpointManager) -> TrainerCallback:
    from transformers import TrainerCallback

    class CheckpointCallback(TrainerCallback):
        """Turns CheckpointManager decisions into Trainer saves."""

        def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
            if not mgr._synced:  # prepare_resume was not called: still agree on one run id
                mgr.run_id = mgr._broadcast(mgr.run_id)
                mgr._synced = True
            mgr._last_save = time.monotonic()

        def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> TrainerControl:
            save, preempt, failed = mgr.step_flags(state.global_step, args.device)
            if failed:
                mgr._raise_if_failed()
                raise StorageError("a checkpoint upload failed on another node; see its log")
            if save:
                control.should_save = True
            if preempt:
                mgr._preempting = True
            return control

        def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
            mgr.on_saved(state.global_step)

        def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
            mgr.drain()

    return CheckpointCallback()
