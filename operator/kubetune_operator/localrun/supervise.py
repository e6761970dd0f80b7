"""The supervision loop of ``kubetune run`` and the run itself, as named steps.

``run`` reads: load the manifest -> plan the run -> announce it -> launch the
node groups and supervise them until all exited -> report the outcome.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

import yaml

from kubetune_api import contract
from kubetune_api import spec as api
from kubetune_api.contract import PERMANENT, PREEMPTED
from kubetune_operator.localrun import earlier
from kubetune_operator.localrun.display import (
    Display,
    ProgressTail,
    RunState,
    log_tail,
    progress_line,
    remember_base_eval,
    summary_lines,
    trainer_error_line,
)
from kubetune_operator.localrun.launcher import Launcher
from kubetune_operator.localrun.manifest import RunError, load_manifest, parse_overrides, validate_manifest
from kubetune_operator.localrun.planning import LocalPlan, free_port, plan_run, visible_gpus

# Once one node group failed, how long the others get to stop before they are killed.
GANG_STOP_SECONDS = 60.0
POLL_SECONDS = 0.2


def outcome(codes: list[int | None]) -> int:
    """One exit code for the gang: permanent beats preempted beats other failures."""
    done = [c for c in codes if c is not None]
    if done and all(c == 0 for c in done) and len(done) == len(codes):
        return 0
    if PERMANENT in done:
        return PERMANENT
    failed = [c for c in done if c != 0]
    if failed and all(c == PREEMPTED for c in failed):
        return PREEMPTED
    return next((c for c in failed if c != PREEMPTED), 1)


class Interrupts:
    """Counts Ctrl-C presses while installed (signals reach only the main thread)."""

    def __init__(self) -> None:
        self.count = 0

    def on_sigint(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        self.count += 1


@contextlib.contextmanager
def counting_interrupts() -> Iterator[Interrupts]:
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts  # the caller stops us some other way
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, interrupts.on_sigint)
    try:
        yield interrupts
    finally:
        signal.signal(signal.SIGINT, previous)


class Supervisor:
    """Runs the node groups until all exited: shows progress, forwards Ctrl-C, keeps the gang together."""

    def __init__(self, *, launcher: Launcher, display: Display, state: RunState, tail: ProgressTail, interrupts: Interrupts) -> None:
        self.launcher = launcher
        self.display = display
        self.state = state
        self.tail = tail
        self.interrupts = interrupts
        self.handled_interrupts = 0
        self.gang_failed_at: float | None = None

    def run(self) -> list[int | None]:
        try:
            self.launcher.start()
            while True:
                self.show_progress()
                codes = self.launcher.poll()
                if all(c is not None for c in codes):
                    break
                self.forward_interrupts()
                self.keep_gang_together(codes)
                time.sleep(POLL_SECONDS)
            self.show_progress()
        finally:
            self.stop_leftovers()
        return self.launcher.poll()

    def show_progress(self) -> None:
        """Fold new progress records into the state; events get a line, progress the live line."""
        for rec in self.tail.read():
            line = self.state.update(rec)
            if line:
                self.display.say(line)
            elif "event" not in rec:
                is_eval_only = rec.get("evalLoss") is not None and rec.get("loss") is None
                self.display.status(progress_line(self.state.progress), force=is_eval_only)

    def forward_interrupts(self) -> None:
        """First Ctrl-C: the trainers checkpoint and exit; a second one kills them."""
        if self.interrupts.count <= self.handled_interrupts:
            return
        self.handled_interrupts = self.interrupts.count
        if self.handled_interrupts == 1:
            self.display.say("stopping: the trainer checkpoints and exits (Ctrl-C again to kill it without a checkpoint)")
            self.launcher.terminate_workers()
        else:
            self.display.say("killing the trainer processes")
            self.launcher.kill()

    def keep_gang_together(self, codes: list[int | None]) -> None:
        """Gang semantics: one node group failing ends the run for all."""
        if not (any(c not in (None, 0) for c in codes) and any(c is None for c in codes)):
            return
        if self.gang_failed_at is None:
            self.gang_failed_at = time.monotonic()
            # A group that exited PREEMPTED took part in a stop that all ranks agreed
            # on at one step boundary: the others are committing the same checkpoint
            # and exit by themselves. Signalling them again could hit a launcher
            # whose workers have just exited (it would die of the SIGTERM).
            if not all(c in (None, 0, PREEMPTED) for c in codes):
                self.launcher.terminate_workers()
        elif time.monotonic() - self.gang_failed_at > GANG_STOP_SECONDS:
            self.launcher.kill()

    def stop_leftovers(self) -> None:
        if self.launcher.procs and not all(c is not None for c in self.launcher.poll()):
            self.launcher.kill()
            self.launcher.wait(10)
        self.launcher.close()
        self.display.close()


# -------------------------------------------------------------------- run
def prepare(
    doc: dict[str, Any], job: api.FineTuneJob, *, run_dir: str | os.PathLike[str] | None,
    scratch: str | os.PathLike[str] | None, env: Mapping[str, str], cpu_count: int | None,
) -> LocalPlan:
    """Plan the run and lay out its folder: resolved manifest, an empty progress file, empty logs."""
    name = job.metadata.name or "job"
    run_path = Path(run_dir or Path(".kubetune") / "runs" / name).resolve()
    scratch_root = Path(scratch or env.get("KUBETUNE_SCRATCH") or Path.home() / ".cache" / "kubetune" / "scratch").resolve()
    plan = plan_run(job, run_path, scratch_root, visible_gpus(env), cpu_count or os.cpu_count() or 1, free_port(),
                    shell_env=env, hostname=socket.gethostname())
    run_path.mkdir(parents=True, exist_ok=True)
    plan.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    plan.progress_path.write_text("")  # this launch's records only
    (plan.run_dir / earlier.RESULT).unlink(missing_ok=True)  # unfinished until this launch ends
    for g in plan.groups:
        g.log.write_bytes(b"")
    return plan


def announce(display: Display, plan: LocalPlan) -> None:
    if plan.use_gpus:
        where = "GPU " + ", ".join(",".join(g.gpus) for g in plan.groups)
    else:
        where = f"CPU, {plan.threads_per_proc} thread(s) per process"
    display.say(f"running {plan.name}: {plan.nodes} node group(s) x {plan.procs_per_node} process(es) on {where}")
    display.say(f"output: {plan.output_uri}")
    for note in plan.notes:
        display.say(f"note: {note}")


def report(display: Display, plan: LocalPlan, state: RunState, codes: list[int | None], wall: float) -> int:
    """The run's exit code, with the trainer's error (or a log tail) and the summary printed."""
    rc = outcome(codes)
    remember_base_eval(plan, state)
    err = None
    if rc not in (0, PREEMPTED):
        err = next(filter(None, (trainer_error_line(g.log) for g in plan.groups)), None)
        if err:
            display.say(err[len("kubetune: "):] if err.startswith("kubetune: ") else err)
        else:
            bad = next((g for g, c in zip(plan.groups, codes, strict=False) if c not in (0, None)), plan.groups[0])
            display.say(f"node group {bad.rank} failed; the end of {bad.log}:\n{log_tail(bad.log)}")
    for line in summary_lines(plan, state, rc, wall):
        display.say(line)
    earlier.write_result(plan.run_dir, run_result(rc, state, err if rc not in (0, PREEMPTED) else None))
    return rc


def run_result(rc: int, state: RunState, error_line: str | None) -> dict[str, Any]:
    """result.json: how the run ended and what it exported (what a later run's model.from reads)."""
    phase = "Succeeded" if rc == 0 else "Suspended" if rc == PREEMPTED else "Failed"
    parsed = contract.parse_error_line(error_line or "") if error_line else None
    exported = {k: v for k, v in (state.exported or {}).items() if k != "event"}
    return {"phase": phase, "exitCode": rc, "reason": parsed[0] if parsed else None, "output": exported,
            "step": (state.progress or {}).get("step"), "finishedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run(
    manifest: str | os.PathLike[str],
    *,
    overrides: dict[str, Any] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    scratch: str | os.PathLike[str] | None = None,
    python: str = sys.executable,
    stream: IO[str] = sys.stdout,
    env: dict[str, str] | None = None,
    cpu_count: int | None = None,
) -> int:
    """Run a FineTuneJob locally; return the exit code (0, 75 when stopped with a checkpoint, 3, other)."""
    started = time.monotonic()
    display = Display(stream)
    try:
        doc = load_manifest(manifest, overrides)
        job = validate_manifest(doc)
        if job.spec.model.from_ is not None:  # the earlier run's result, before anything starts
            doc = earlier.resolve_local(doc, job.spec.method.type, run_dir)
            job = validate_manifest(doc)
        plan = prepare(doc, job, run_dir=run_dir, scratch=scratch, env=os.environ if env is None else env, cpu_count=cpu_count)
    except RunError as e:
        print(f"kubetune: error: {e}", file=sys.stderr)
        return 2
    announce(display, plan)
    state = RunState()
    with counting_interrupts() as interrupts:
        supervisor = Supervisor(
            launcher=Launcher(plan, python, env), display=display, state=state,
            tail=ProgressTail(plan.progress_path), interrupts=interrupts,
        )
        codes = supervisor.run()
    return report(display, plan, state, codes, time.monotonic() - started)


def main(args: Any) -> int:
    """Entry point of ``kubetune run`` (argparse namespace from cli.py)."""
    try:
        overrides = parse_overrides(args.set or [])
    except RunError as e:
        print(f"kubetune: error: {e}", file=sys.stderr)
        return 2
    if args.output:
        overrides["spec.output.uri"] = args.output
    from kubetune_operator.localrun.sweep import is_sweep_file, run_sweep

    if is_sweep_file(args.file):  # --set and --output then apply to the sweep's template
        return run_sweep(args.file, overrides=overrides, run_dir=args.run_dir, scratch=args.scratch)
    return run(args.file, overrides=overrides, run_dir=args.run_dir, scratch=args.scratch)
