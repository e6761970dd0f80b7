"""The local backend: fine-tuning jobs run on this machine by ``kubetune run``.

The seam to ``kubetune run`` is its command line and the files it writes, nothing
inside it: per job one subprocess

    kubetune run <job>/finetunejob.yaml --run-dir <job>/run --scratch <job>/scratch

whose ``run/progress.jsonl`` (the trainer's progress records and events,
rewritten at each launch), ``run/node-*.log`` and own log (the ``kubetune: error:``
line of a failure), the output folder (``checkpoints/step-*/COMMITTED``,
``final/summary.json``) and exit code (0, 75 stopped with a checkpoint, other)
say what happened. Pause is ``kubetune run``'s Ctrl-C (SIGINT: the trainer
commits a checkpoint and exits 75); resume runs the same command again, which
continues from that checkpoint. Cancel stops it the same way.

Each job's state lives in ``<state>/jobs/<id>/``: ``job.json`` (the FineTuneJob
with a status kept in the operator's shape, so :func:`mapping.job_object` maps
both backends alike) and ``events.jsonl``.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from kubetune_api import contract

from . import mapping
from .errors import ApiError, invalid, not_found
from .files import FileStore

log = logging.getLogger("kubetune.api.local")

SCOPE = "local"
RUNNING_PHASES = ("Initializing", "Running", "Restarting", "Exporting")
FINAL_PHASES = ("Succeeded", "Failed")


class _JobRun:
    """What the supervisor knows about one job beyond its stored FineTuneJob."""

    def __init__(self, job_dir: Path, ftj: dict[str, Any], events: list[dict[str, Any]], history: dict[int, dict[str, Any]],
                 checkpoints: list[dict[str, Any]], created: float):
        self.dir = job_dir
        self.created = created  # finer than creationTimestamp's seconds: the order of the job list
        self.ftj = ftj
        self.events = events
        self.history = history  # step -> {loss, evalLoss}
        self.checkpoints = checkpoints  # [{step, uri, time, metrics}]
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0
        self.partial = b""
        self.stopping: str | None = None  # "pause" | "cancel" while we wait for kubetune run to exit
        self.stop_sent = 0.0

    @property
    def id(self) -> str:
        name: str = self.ftj["metadata"]["name"]
        return name

    @property
    def phase(self) -> str | None:
        return (self.ftj.get("status") or {}).get("phase")

    @property
    def cancelled(self) -> bool:
        return bool((self.ftj["metadata"].get("annotations") or {}).get(mapping.CANCELLED_ANNOTATION))


class LocalBackend:
    """Jobs as ``kubetune run`` subprocesses, at most ``max_running`` at a time, the rest queued."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        files: FileStore | None = None,
        *,
        catalogue: dict[str, str] | None = None,
        template: dict[str, Any] | None = None,
        max_running: int = 1,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        poll_seconds: float = 0.25,
    ):
        self.state = Path(state_dir).resolve()
        self.files = files or FileStore(self.state)
        self.catalogue = catalogue or {}
        self.template = template or {}
        self.max_running = max_running
        self.python = python
        self.env = env
        self.poll_seconds = poll_seconds
        self.lock = threading.RLock()
        self.jobs: dict[str, _JobRun] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="kubetune-api-jobs", daemon=True)
        self._load()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 120) -> None:
        """Stop the supervisor; running jobs are paused (checkpoint, exit 75) so a restart can resume them."""
        with self.lock:
            running = [(j, j.proc) for j in self.jobs.values() if j.proc is not None and j.proc.poll() is None]
            for j, _ in running:
                self._signal_stop(j, "pause")
        deadline = time.monotonic() + timeout
        for _, proc in running:
            assert proc is not None
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGINT)  # the second Ctrl-C: kubetune run kills its trainers
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        with self.lock:
            for j, _ in running:
                if j.proc is not None:  # not reaped by the supervisor before it stopped
                    self._reap(j)

    def _load(self) -> None:
        jobs_dir = self.state / "jobs"
        for path in sorted(jobs_dir.glob("ftjob-*/job.json")) if jobs_dir.exists() else []:
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError):
                log.warning("skipping unreadable job state %s", path)
                continue
            events = []
            ev_path = path.parent / "events.jsonl"
            if ev_path.exists():
                events = [json.loads(line) for line in ev_path.read_text().splitlines() if line.strip()]
            job = _JobRun(path.parent, stored["ftj"], events, {int(k): v for k, v in stored.get("history", {}).items()},
                          stored.get("checkpoints", []), stored.get("created", 0.0))
            self.jobs[job.id] = job
            if job.phase in RUNNING_PHASES:  # the server stopped while it ran: resumable from its checkpoint
                self._set_phase(job, "Suspended", reason="ServerRestarted", message="the API server restarted; resume the job to continue")
                self._event(job, "The API server restarted while the job ran; it is paused and resumes from its last checkpoint", level="warn")
                self._save(job)

    # --------------------------------------------------------------- state
    def _save(self, job: _JobRun) -> None:
        data = {"ftj": job.ftj, "created": job.created, "history": {str(k): v for k, v in job.history.items()}, "checkpoints": job.checkpoints}
        tmp = job.dir / ".job.json.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(job.dir / "job.json")

    def _event(self, job: _JobRun, message: str, *, level: str = "info", type: str = "message", data: dict[str, Any] | None = None) -> None:
        ev = mapping.event(int(time.time()), message, level=level, type=type, data=data,
                           ident=f"{job.id[len(mapping.JOB_PREFIX):][:12]}{len(job.events):06d}")
        job.events.append(ev)
        with open(job.dir / "events.jsonl", "a") as f:
            f.write(json.dumps(ev) + "\n")

    def _set_phase(self, job: _JobRun, phase: str, *, reason: str | None = None, message: str | None = None) -> None:
        status = job.ftj.setdefault("status", {})
        status["phase"] = phase
        status["reason"] = reason
        status["message"] = message
        if phase in FINAL_PHASES and not status.get("completionTime"):
            status["completionTime"] = mapping.format_time(time.time())

    def _job(self, job_id: str) -> _JobRun:
        job = self.jobs.get(job_id)
        if job is None:
            raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
        return job

    # ----------------------------------------------------------------- files
    def create_file(self, caller: Any, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        return self.files.create(SCOPE, filename, purpose, data)

    def list_files(self, caller: Any, purpose: str | None) -> list[dict[str, Any]]:
        return self.files.list(SCOPE, purpose)

    def get_file(self, caller: Any, file_id: str) -> dict[str, Any]:
        return self.files.get(SCOPE, file_id)

    def file_content(self, caller: Any, file_id: str) -> bytes:
        return self.files.content(SCOPE, file_id)

    def delete_file(self, caller: Any, file_id: str) -> dict[str, Any]:
        return self.files.delete(SCOPE, file_id)

    # ------------------------------------------------------------------ jobs
    def create_job(self, caller: Any, body: Any) -> dict[str, Any]:
        req = mapping.parse_create_request(body)
        train = self.files.get(SCOPE, req.training_file, "training_file")
        if train["purpose"] != "fine-tune":
            raise invalid(f"{req.training_file} has purpose {train['purpose']!r}; upload training data with purpose 'fine-tune'", "training_file")
        if req.validation_file:
            self.files.get(SCOPE, req.validation_file, "validation_file")
        source = mapping.resolve_model(req.model, self.catalogue)
        if not source.startswith(("s3://", "hf://")) and not Path(os.path.expanduser(source.removeprefix("file://"))).exists():
            raise ApiError(404, f"The model {req.model!r} does not exist: {source} is not on this machine", param="model", code="model_not_found")
        job_id = mapping.JOB_PREFIX + secrets.token_hex(12)
        job_dir = self.state / "jobs" / job_id
        manifest = mapping.build_manifest(
            req, name=job_id, namespace=None, model_source=source,
            train_uri=self.files.uri(SCOPE, req.training_file),
            eval_uri=self.files.uri(SCOPE, req.validation_file) if req.validation_file else None,
            output_uri=str(job_dir / "output"), template=self.template,
        )
        mapping.check_manifest(manifest)
        job_dir.mkdir(parents=True)
        manifest["metadata"]["creationTimestamp"] = mapping.format_time(time.time())
        manifest["status"] = {"phase": "Pending"}
        job = _JobRun(job_dir, manifest, [], {}, [], time.time())
        with self.lock:
            self.jobs[job_id] = job
            self._event(job, f"Created fine-tuning job: {job_id}")
            self._event(job, f"Validated training file: {req.training_file}")
            if req.validation_file:
                self._event(job, f"Validated validation file: {req.validation_file}")
            self._set_phase(job, "Queued")
            self._event(job, "Job enqueued")
            self._save(job)
            return mapping.job_object(job.ftj, time.time())

    def _sorted_jobs(self) -> list[_JobRun]:
        return sorted(self.jobs.values(), key=lambda j: (j.created, j.id), reverse=True)

    def list_jobs(self, caller: Any) -> list[dict[str, Any]]:
        with self.lock:
            now = time.time()
            return [mapping.job_object(j.ftj, now) for j in self._sorted_jobs()]

    def get_job(self, caller: Any, job_id: str) -> dict[str, Any]:
        with self.lock:
            return mapping.job_object(self._job(job_id).ftj, time.time())

    def cancel_job(self, caller: Any, job_id: str) -> dict[str, Any]:
        with self.lock:
            job = self._job(job_id)
            state = mapping.status_of(job.ftj)
            if state in mapping.FINAL:
                raise invalid(f"job {job_id} is already {state}; only unfinished jobs can be cancelled", "fine_tuning_job_id", "invalid_state")
            job.ftj["metadata"].setdefault("annotations", {})[mapping.CANCELLED_ANNOTATION] = mapping.format_time(time.time())
            job.ftj["status"]["completionTime"] = mapping.format_time(time.time())
            if job.proc is not None and job.proc.poll() is None:
                self._signal_stop(job, "cancel")
                self._event(job, "Cancelling: the trainer is being stopped")
            else:
                self._event(job, "Job cancelled")
            self._save(job)
            return mapping.job_object(job.ftj, time.time())

    def pause_job(self, caller: Any, job_id: str) -> dict[str, Any]:
        with self.lock:
            job = self._job(job_id)
            state = mapping.status_of(job.ftj)
            if state not in ("queued", "running", "validating_files"):
                raise invalid(f"job {job_id} is {state}; only queued or running jobs can be paused", "fine_tuning_job_id", "invalid_state")
            if job.proc is not None and job.proc.poll() is None:
                self._signal_stop(job, "pause")
                self._event(job, "Pausing: the trainer commits a checkpoint and stops")
            else:
                self._event(job, "Job paused")
            self._set_phase(job, "Suspended", reason="Paused", message="paused through the API")
            self._save(job)
            return mapping.job_object(job.ftj, time.time())

    def resume_job(self, caller: Any, job_id: str) -> dict[str, Any]:
        with self.lock:
            job = self._job(job_id)
            if mapping.status_of(job.ftj) != "paused":
                raise invalid(f"job {job_id} is {mapping.status_of(job.ftj)}; only paused jobs can be resumed", "fine_tuning_job_id", "invalid_state")
            self._set_phase(job, "Queued")
            self._event(job, "Job resumed: queued to continue from its last checkpoint")
            self._save(job)
            return mapping.job_object(job.ftj, time.time())

    def list_events(self, caller: Any, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(reversed(self._job(job_id).events))

    def list_checkpoints(self, caller: Any, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            job = self._job(job_id)
            out = []
            for c in job.checkpoints:
                uri = c["uri"]
                if not uri.startswith("s3://") and not (Path(uri) / "COMMITTED").exists():
                    continue  # removed by retention (output.keepLast): it no longer exists to resume from
                out.append(mapping.checkpoint_object(job.id, c["step"], uri, mapping.parse_time(c.get("time")) or int(time.time()), c.get("metrics") or {}))
            return list(reversed(out))

    # ------------------------------------------------------------ supervisor
    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                with self.lock:
                    self._step()
            except Exception:  # one bad job must not stop the others
                log.exception("job supervisor step failed")
            self._stop.wait(self.poll_seconds)

    def _step(self) -> None:
        for job in self.jobs.values():
            if job.proc is not None:
                self._read_progress(job)
                if job.proc.poll() is not None:
                    self._reap(job)
                elif job.stopping and time.monotonic() - job.stop_sent > 300:
                    os.kill(job.proc.pid, signal.SIGINT)  # kubetune run's second Ctrl-C: kill without a checkpoint
                    job.stop_sent = time.monotonic()
        running = sum(1 for j in self.jobs.values() if j.proc is not None)
        for job in sorted(self.jobs.values(), key=lambda j: j.created):
            if running >= self.max_running:
                break
            if job.proc is None and job.phase == "Queued" and not job.cancelled:
                self._launch(job)
                running += 1

    def _signal_stop(self, job: _JobRun, why: str) -> None:
        job.stopping = why
        job.stop_sent = time.monotonic()
        if job.proc is not None and job.proc.poll() is None:
            os.kill(job.proc.pid, signal.SIGINT)  # Ctrl-C of kubetune run: checkpoint, exit 75

    def _launch(self, job: _JobRun) -> None:
        manifest = {k: v for k, v in job.ftj.items() if k != "status"}
        path = job.dir / "finetunejob.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        cmd = [self.python, "-m", "kubetune_operator.cli", "run", str(path),
               "--run-dir", str(job.dir / "run"), "--scratch", str(job.dir / "scratch")]
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        # kubetune run rewrites the progress file at start; empty it first so the last launch's records are not read again.
        progress = job.dir / "run" / "progress.jsonl"
        progress.parent.mkdir(parents=True, exist_ok=True)
        progress.write_bytes(b"")
        out = open(job.dir / "kubetune-run.log", "ab")
        try:
            # Its own session: a Ctrl-C meant for the server must not reach the job (close() pauses jobs itself).
            job.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        cwd=job.dir, start_new_session=True)
        finally:
            out.close()
        job.offset, job.partial, job.stopping = 0, b"", None
        resumed = bool(job.checkpoints)
        self._set_phase(job, "Initializing")
        job.ftj["status"].setdefault("startTime", mapping.format_time(time.time()))
        self._event(job, "Fine-tuning job resumed" if resumed else "Fine-tuning job started")
        self._save(job)

    def _read_progress(self, job: _JobRun) -> None:
        path = job.dir / "run" / "progress.jsonl"
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < job.offset:  # rewritten by a new launch
                    job.offset, job.partial = 0, b""
                f.seek(job.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        job.offset += len(chunk)
        lines = (job.partial + chunk).split(b"\n")
        job.partial = lines.pop()
        changed = False
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                self._fold(job, rec)
                changed = True
        if changed:
            self._save(job)

    def _fold(self, job: _JobRun, rec: dict[str, Any]) -> None:
        status = job.ftj.setdefault("status", {})
        kind = rec.get("event")
        if kind is None:
            status["progress"] = rec
            step = rec.get("step")
            if step is not None:
                # A training record carries the latest eval loss too (stale); an evaluation record has no
                # training loss. Each loss is kept at the step where it was measured.
                measured = {"loss": rec["loss"]} if rec.get("loss") is not None else (
                    {"evalLoss": rec["evalLoss"]} if rec.get("evalLoss") is not None else {})
                job.history.setdefault(int(step), {}).update(measured)
                shown = {**rec, "loss": measured.get("loss"), "evalLoss": measured.get("evalLoss")}
                self._event(job, mapping.progress_message(shown), type="metrics", data=mapping.progress_data(shown))
        elif kind == "phase":
            if rec.get("phase") in RUNNING_PHASES and not job.stopping and status.get("phase") != "Suspended":
                self._set_phase(job, rec["phase"])
            self._event(job, f"Phase {rec.get('phase')}")
        elif kind == "checkpoint":
            step = int(rec.get("step") or 0)
            status["lastCheckpoint"] = {"step": step, "uri": rec.get("uri"), "time": rec.get("time")}
            job.checkpoints = [c for c in job.checkpoints if c["step"] != step]
            job.checkpoints.append({"step": step, "uri": rec.get("uri"), "time": rec.get("time"), "metrics": self._metrics_at(job, step)})
            self._event(job, f"Checkpoint created at step {step}", data={"step": step, "uri": rec.get("uri")})
        elif kind == "resumed":
            self._event(job, f"Resumed from the checkpoint at step {rec.get('step')}")
        elif kind == "exported":
            out = status.setdefault("output", {})
            out.update({k: v for k, v in rec.items() if k.endswith("Uri") and v})
            out["metrics"] = {**out.get("metrics", {}), **(rec.get("metrics") or {})}
            self._event(job, "Exported: " + ", ".join(f"{k} {v}" for k, v in rec.items() if k.endswith("Uri") and v))

    def _metrics_at(self, job: _JobRun, step: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s in sorted(job.history):
            if s <= step:
                out.update(job.history[s])  # the latest loss and eval loss seen up to the checkpoint
        return out

    def _reap(self, job: _JobRun) -> None:
        assert job.proc is not None
        self._read_progress(job)
        rc = job.proc.returncode
        job.proc = None
        why, job.stopping = job.stopping, None
        if job.cancelled:
            self._event(job, "Job cancelled" + (f" (checkpoint kept, exit code {rc})" if rc == contract.PREEMPTED else ""))
        elif rc == contract.OK:
            self._succeed(job)
        elif rc == contract.PREEMPTED:
            ckpt = (job.ftj["status"].get("lastCheckpoint") or {}).get("step")
            where = f" at the checkpoint of step {ckpt}" if ckpt is not None else ""
            if job.phase == "Queued":  # resumed while it was stopping: the supervisor starts it again
                self._event(job, f"Job stopped{where}; starting again as asked")
            else:
                if job.phase != "Suspended":
                    self._set_phase(job, "Suspended", reason="Stopped", message="the trainer was stopped with a checkpoint; resume the job to continue")
                self._event(job, f"Job paused{where}" + ("" if why == "pause" else " (the trainer was stopped)"))
        else:
            reason, message = self._failure(job, rc)
            self._set_phase(job, "Failed", reason=reason, message=message)
            self._event(job, f"Fine-tuning job failed: {reason}: {message}", level="error")
        self._save(job)

    def _failure(self, job: _JobRun, rc: int | None) -> tuple[str, str]:
        texts = []
        for path in [job.dir / "kubetune-run.log", *sorted((job.dir / "run").glob("node-*.log"))]:
            try:
                texts.append(path.read_text(errors="replace"))
            except OSError:
                continue
        for text in texts[1:] + texts[:1]:  # the trainer's own line first, then kubetune run's
            found = contract.parse_error_line(text)
            if found:
                return found
        return "TrainerFailed", f"kubetune run exited with code {rc}; see {job.dir / 'kubetune-run.log'}"

    def _succeed(self, job: _JobRun) -> None:
        status = job.ftj["status"]
        output = Path(job.ftj["spec"]["output"]["uri"])
        try:
            summary = json.loads((output / "final" / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        out = status.setdefault("output", {})
        metrics = out.setdefault("metrics", {})
        if summary.get("tokensSeen") is not None:
            metrics["tokensSeen"] = summary["tokensSeen"]
        for key in ("adapter", "merged"):
            if not out.get(f"{key}Uri") and (output / "final" / key).exists():
                out[f"{key}Uri"] = str(output / "final" / key)
        result = self.files.create(SCOPE, f"{job.id}-results.csv", "fine-tune-results", self._results_csv(job), check=False)
        job.ftj["metadata"].setdefault("annotations", {})[mapping.RESULT_FILES_ANNOTATION] = json.dumps([result["id"]])
        self._set_phase(job, "Succeeded")
        self._event(job, f"The job has successfully completed: {mapping.fine_tuned_model(status)}")

    @staticmethod
    def _results_csv(job: _JobRun) -> bytes:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["step", "train_loss", "valid_loss"])
        for step in sorted(job.history):
            point = job.history[step]
            w.writerow([step, point.get("loss", ""), point.get("evalLoss", "")])
        return buf.getvalue().encode()
