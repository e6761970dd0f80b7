"""``kubetune run SWEEP.yaml``: a FineTuneSweep on this machine, decided exactly as the operator decides it.

This module plays the cluster's part for :func:`kubetune_operator.sweeps.decide.decide`
(the same pure function the operator calls; search, pruning and the study in
status come with it): each trial FineTuneJob that ``decide`` creates becomes a
local run of the real trainer (the ``kubetune run`` machinery: plan, torchrun
subprocesses, progress file), and what the run reports becomes that
FineTuneJob's status (phase, ``progress`` with every eval, ``output`` with the
metrics and URIs). A trial ``decide`` prunes gets SIGTERM: the trainer commits a
checkpoint and exits, as a suspended FineTuneJob does.

Steps of ``run_sweep``: read and validate the sweep -> fit its parallelism to the
machine (GPUs per trial, else CPU cores per trial) -> loop (poll the trials, ask
``decide`` until it has nothing more to say, start created trials in free slots,
draw the table) until the sweep is finished -> write ``sweep.json`` and the plots
(:mod:`kubetune_operator.sweeps.results`), link them in status -> print the best
trial, its parameters and its artifacts.

The sweep's status is saved in the run folder (``status.json``) after every
change: a first Ctrl-C stops the trials with a checkpoint (exit 75), and the same
command again resumes them (the trainer resumes from its checkpoint, ``decide``
from the status), as after an operator restart.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from kubetune_api import contract, sweep_results
from kubetune_api import spec as job_api
from kubetune_api import sweep as api
from kubetune_api.contract import PREEMPTED
from kubetune_api.documents import Unreadable, read_documents
from kubetune_operator.localrun.display import Display, ProgressTail, RunState, fmt_duration
from kubetune_operator.localrun.launcher import Launcher
from kubetune_operator.localrun.manifest import RunError, _absolute, _set_path, first_document, is_local, validate_manifest
from kubetune_operator.localrun.planning import LocalPlan, visible_gpus
from kubetune_operator.localrun.supervise import Interrupts, counting_interrupts, outcome, prepare
from kubetune_operator.sweeps.decide import SweepDecision, SweepObservation, child_manifest, decide

POLL_SECONDS = 0.2
PLAIN_TABLE_SECONDS = 30.0  # without a terminal: the table on every trial event, else this often
LOCAL_UID = "local"
# Sweep-level fields: --set on them changes the sweep; any other key goes to spec.template.
SWEEP_FIELDS = ("template", "parameters", "algorithm", "seed", "objective", "maxTrials", "parallelism",
                "maxFailedTrials", "earlyStopping")
# Template fields that name local files, made absolute against the current directory.
PATH_FIELDS = ("model.source", "dataset.train", "dataset.eval", "output.uri")


# ------------------------------------------------------------ the manifest
def is_sweep_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file's first kubetune document is a FineTuneSweep (unreadable files: False)."""
    try:
        docs = [d for d in read_documents(path) if isinstance(d, dict)]
    except Unreadable:
        return False
    kinds = [d.get("kind") for d in docs if d.get("kind") in (api.KIND, job_api.KIND)]
    return bool(kinds) and kinds[0] == api.KIND


def load_sweep_manifest(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None,
                        cwd: Path | None = None) -> dict[str, Any]:
    """The first FineTuneSweep in ``path``, ``overrides`` applied (``spec.X`` -> ``spec.template.X`` unless X
    is a sweep field), local paths made absolute (in the template and in the parameters' values)."""
    doc = first_document(path, api.KIND)
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        if head == "spec" and rest.split(".")[0] not in SWEEP_FIELDS:
            key = f"spec.template.{rest}"
        _set_path(doc, key, value)
    cwd = cwd or Path.cwd()
    spec: dict[str, Any] = doc["spec"] if isinstance(doc.get("spec"), dict) else {}
    template: dict[str, Any] = spec["template"] if isinstance(spec.get("template"), dict) else {}
    for dotted in PATH_FIELDS:
        section, field = dotted.split(".")
        value = template[section].get(field) if isinstance(template.get(section), dict) else None
        if isinstance(value, str) and value:
            template[section][field] = _absolute(value, cwd)
    for p in spec.get("parameters") or []:
        if isinstance(p, dict) and p.get("path") in PATH_FIELDS and isinstance(p.get("values"), list):
            p["values"] = [_absolute(v, cwd) if isinstance(v, str) and v else v for v in p["values"]]
    if not isinstance(doc.get("metadata"), dict):
        doc["metadata"] = {} if doc.get("metadata") is None else doc["metadata"]
    if isinstance(doc["metadata"], dict):
        doc["metadata"].setdefault("name", Path(path).stem)
    return doc


def validate_sweep(doc: dict[str, Any]) -> api.FineTuneSweep:
    from pydantic import ValidationError

    try:
        sweep = api.load_sweep(doc)
    except ValidationError as e:
        lines = [f"  {line}" for line in contract.validation_messages(e)]
        raise RunError("the manifest is not a valid FineTuneSweep:\n" + "\n".join(lines)) from None
    # The trial FineTuneJob as kubetune run would check it (e.g. a model path that is not there).
    validate_manifest({"apiVersion": job_api.API_VERSION, "kind": job_api.KIND,
                       "metadata": {"name": api.trial_name(sweep.metadata.name or "sweep", 0)},
                       "spec": copy.deepcopy(doc["spec"]["template"])})
    return sweep


# ------------------------------------------------------------ the machine
@dataclasses.dataclass(frozen=True)
class Slots:
    """How many trials run at once here, and what each may use."""

    parallel: int
    gpus: list[list[str]]  # per slot (empty lists on CPU)
    cpus_per_trial: int
    note: str | None


def plan_slots(template: job_api.FineTuneJobSpec, wanted: int, gpus: Sequence[str], cpu_count: int) -> Slots:
    """Pure: trials at once = min(spec.parallelism, what the machine holds).

    A trial that asks for GPUs needs nodes x gpusPerNode of them (disjoint per
    trial); otherwise (no GPUs asked, or too few visible: it then runs on CPU,
    as ``kubetune run`` does) it needs one core per process.
    """
    d = template.distributed
    need = d.nodes * d.gpus_per_node
    if need > 0 and len(gpus) >= need:
        fits = len(gpus) // need
        parallel = min(wanted, fits)
        per = [list(gpus[i * need:(i + 1) * need]) for i in range(parallel)]
        what = f"{len(gpus)} GPU(s), {need} per trial"
    else:
        procs = d.nodes * d.procs_per_node()
        fits = max(1, cpu_count // procs)
        parallel = min(wanted, fits)
        per = [[] for _ in range(parallel)]
        what = f"{cpu_count} CPU core(s), {procs} process(es) per trial"
    note = f"parallelism {wanted} capped to {parallel}: {what}" if parallel < wanted else None
    return Slots(parallel=parallel, gpus=per, cpus_per_trial=max(1, cpu_count // parallel), note=note)


# ------------------------------------------------------------ one trial
@dataclasses.dataclass
class TrialRun:
    """One trial's local run, seen as its FineTuneJob's status."""

    name: str
    slot: int
    plan: LocalPlan
    launcher: Launcher
    tail: ProgressTail
    state: RunState = dataclasses.field(default_factory=RunState)
    curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    pending: collections.deque[dict[str, Any]] = dataclasses.field(default_factory=collections.deque)
    rc: int | None = None
    stopping: bool = False
    started: float = dataclasses.field(default_factory=time.monotonic)
    ended: float | None = None

    def poll(self) -> None:
        self.read_progress()
        if self.rc is None:
            codes = self.launcher.poll()
            if all(c is not None for c in codes):
                self.read_progress()  # what the trainer wrote before it exited
                self.rc = outcome(codes)
                self.ended = time.monotonic()
                self.launcher.close()

    def read_progress(self) -> None:
        for rec in self.tail.read():
            self.state.update(rec)
            if "event" not in rec and rec.get("evalLoss") is not None and rec.get("loss") is None:
                point = (int(rec.get("step") or 0), float(rec["evalLoss"]))
                if not self.curve or self.curve[-1] != point:
                    self.curve.append(point)
                    self.pending.append(rec)  # decide sees every eval, not only the last one

    @property
    def alive(self) -> bool:
        return self.rc is None

    def error(self) -> tuple[str, str]:
        for g in self.plan.groups:
            try:
                parsed = contract.parse_error_line(g.log.read_text(errors="replace"))
            except OSError:
                parsed = None
            if parsed:
                return parsed
        return "TrainerFailed", f"exit code {self.rc}; see {self.plan.groups[0].log}"

    def child_status(self) -> dict[str, Any]:
        """What the trial's FineTuneJob status would say now (evals not yet shown to decide come first)."""
        record = self.pending[0] if self.pending else self.state.progress
        progress = {k: v for k, v in record.items() if v is not None and k != "event"}
        status: dict[str, Any] = {"phase": "Running", "progress": progress}
        if self.pending or self.rc is None:
            return status
        if self.rc == 0:
            exported = self.state.exported or {}
            status["phase"] = "Succeeded"
            status["output"] = {k: v for k, v in exported.items() if k.endswith("Uri") and v}
            status["output"]["metrics"] = dict(exported.get("metrics") or {})
            status["completionTime"] = decide_now()
        elif self.rc != PREEMPTED or not self.stopping:
            reason, message = self.error()
            status.update(phase="Failed", reason=reason, message=message, completionTime=decide_now())
        return status


def decide_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------ the table
def table_lines(status: Mapping[str, Any], runs: Mapping[str, TrialRun], queued: Sequence[str], metric: str) -> list[str]:
    """The live table: one row per trial (name, phase, parameters, step, latest eval, objective)."""
    best = (status.get("bestTrial") or {}).get("name")
    rows = [("TRIAL", "PHASE", "PARAMETERS", "STEP", "EVAL", metric.upper() if metric != "evalLoss" else "OBJECTIVE")]
    for t in status.get("trials") or []:
        run = runs.get(t["name"])
        phase = t.get("phase", "")
        if t["name"] in queued:
            phase = "Queued"
        elif run is not None and phase == "Running" and run.stopping:
            phase = "Stopping"
        progress = run.state.progress if run else {}
        step = f"{progress.get('step')}/{progress.get('totalSteps')}" if progress.get("totalSteps") else ""
        last_eval = run.curve[-1][1] if run and run.curve else None
        objective = t.get("objective")
        rows.append((
            t["name"] + (" *" if t["name"] == best else ""), phase, sweep_results.short_parameters(t.get("parameters") or {}),
            step, f"{last_eval:.4f}" if last_eval is not None else "",
            f"{objective:.4f}" if objective is not None else "",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


class SweepDisplay:
    """Event lines, and the trial table: redrawn in place at a terminal, printed now and then otherwise."""

    def __init__(self, stream: IO[str]):
        self.out = Display(stream)
        self.stream = stream
        self.drawn = 0
        self.shown: list[str] = []
        self.last_plain = 0.0

    def say(self, line: str) -> None:
        self._erase()
        self.out.say(line)

    def _erase(self) -> None:
        if self.out.tty and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def table(self, lines: list[str], force: bool = False) -> None:
        if self.out.tty:
            if self.drawn and lines == self.shown:
                return  # unchanged: no redraw (no flicker)
            self._erase()
            self.shown = lines
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
            self.drawn = len(lines)
        elif force or time.monotonic() - self.last_plain >= PLAIN_TABLE_SECONDS:
            self.last_plain = time.monotonic()
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def close(self) -> None:
        self.drawn = 0  # leave the last table on screen
        self.out.close()


# ------------------------------------------------------------ the sweep
class LocalSweep:
    """The operator's loop for one sweep, with local runs for FineTuneJobs."""

    def __init__(self, doc: dict[str, Any], *, run_dir: Path, scratch: Path, slots: Slots, python: str,
                 env: Mapping[str, str], display: SweepDisplay, status: dict[str, Any] | None) -> None:
        spec = copy.deepcopy(doc["spec"])
        spec["parallelism"] = slots.parallel  # decide never has more trials running than the machine holds
        self.sweep: dict[str, Any] = {
            "apiVersion": api.API_VERSION, "kind": api.KIND,
            "metadata": {"name": doc["metadata"]["name"], "uid": LOCAL_UID, "generation": 1},
            "spec": spec, "status": status or {},
        }
        self.metric = str((spec.get("objective") or {}).get("metric", "evalLoss"))
        self.run_dir, self.scratch, self.slots, self.python, self.env = run_dir, scratch, slots, python, env
        self.display = display
        self.children: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, TrialRun] = {}
        self.queued: list[dict[str, Any]] = []  # created FineTuneJobs waiting for a free slot
        self.rejected: dict[str, str] = {}  # trials whose FineTuneJob is invalid -> why (InvalidSpec, as on a cluster)
        self.status_path = run_dir / "status.json"
        # Trials recorded as unfinished by an earlier launch run again (and resume from their checkpoints).
        for t in self.status.get("trials") or []:
            if t.get("phase") in ("Pending", "Running"):
                manifest = child_manifest(self.sweep, api.TrialStatus.model_validate(t))
                self.children[t["name"]] = manifest
                self.queued.append(manifest)

    @property
    def status(self) -> dict[str, Any]:
        return self.sweep["status"]  # type: ignore[no-any-return]

    @property
    def finished(self) -> bool:
        return self.status.get("phase") in ("Succeeded", "Failed")

    # -- one decision, applied as the operator's handlers apply it
    def apply(self, decision: SweepDecision) -> None:
        if decision.status_patch:
            self.status.update(decision.status_patch)
            self.save()
        for manifest in decision.create:
            name = manifest["metadata"]["name"]
            if name not in self.children:
                self.children[name] = manifest
                self.queued.append(manifest)
        for name in decision.suspend:
            run = self.runs.get(name)
            if run is not None and run.alive and not run.stopping:
                run.stopping = True
                run.launcher.terminate_workers()  # checkpoint and exit, as a suspended FineTuneJob
            self.queued = [m for m in self.queued if m["metadata"]["name"] != name]
        for ev in decision.events:
            self.display.say(f"{ev.reason}: {ev.message}")

    def observe(self) -> dict[str, dict[str, Any]]:
        for name, run in self.runs.items():
            self.children[name] = {**self.children[name], "status": run.child_status()}
        for name, message in self.rejected.items():
            self.children[name] = {**self.children[name], "status": {
                "phase": "Failed", "reason": "InvalidSpec", "message": message, "completionTime": decide_now()}}
        return self.children

    def step(self) -> bool:
        """Poll the trials and decide until nothing changes; -> whether the table should be shown now."""
        for run in self.runs.values():
            run.poll()
        changed = False
        for _ in range(1000):
            decision = decide(SweepObservation(self.sweep, self.observe(), dt.datetime.now(dt.UTC)))
            self.apply(decision)
            changed |= bool(decision.events)
            consumed = False
            for run in self.runs.values():
                if run.pending:
                    run.pending.popleft()
                    consumed = True
            if not consumed and decision.empty:
                break
        self.start_queued()
        return changed

    def start_queued(self) -> None:
        busy = {r.slot for r in self.runs.values() if r.alive}
        free = [s for s in range(self.slots.parallel) if s not in busy]
        while self.queued and free:
            manifest = self.queued.pop(0)
            self.start(manifest, free[0])
            if manifest["metadata"]["name"] in self.runs:
                free.pop(0)

    def start(self, manifest: dict[str, Any], slot: int) -> None:
        name = manifest["metadata"]["name"]
        doc = {k: v for k, v in manifest.items() if k != "status"}
        doc["metadata"] = {k: v for k, v in doc["metadata"].items() if k != "ownerReferences"}
        try:
            job = validate_manifest(copy.deepcopy(doc))
        except RunError as e:
            self.rejected[name] = str(e)
            return
        env = dict(self.env)
        if self.slots.gpus[slot]:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.slots.gpus[slot])
        trial_scratch = self.scratch / "trials" / name
        try:  # refuses e.g. a spec.env Secret reference this shell does not export
            plan = prepare(doc, job, run_dir=self.run_dir / "trials" / name, scratch=trial_scratch, env=env,
                           cpu_count=self.slots.cpus_per_trial)
        except RunError as e:
            self.rejected[name] = str(e)
            return
        for g in plan.groups:  # one download cache for all trials (the fetch cache locks per entry)
            g.scratch.mkdir(parents=True, exist_ok=True)
            shared = self.scratch / f"cache-node-{g.rank}"
            shared.mkdir(parents=True, exist_ok=True)
            link = g.scratch / "cache"
            if not link.exists() and not link.is_symlink():
                link.symlink_to(shared, target_is_directory=True)
        launcher = Launcher(plan, self.python, env)
        run = TrialRun(name=name, slot=slot, plan=plan, launcher=launcher, tail=ProgressTail(plan.progress_path))
        launcher.start()
        self.runs[name] = run
        where = f"GPU {','.join(self.slots.gpus[slot])}" if self.slots.gpus[slot] else f"CPU ({plan.threads_per_proc} thread(s))"
        self.display.say(f"{name} running on {where}; logs in {plan.run_dir}")

    def alive(self) -> list[TrialRun]:
        return [r for r in self.runs.values() if r.alive]

    def table(self, force: bool = False) -> None:
        queued = [m["metadata"]["name"] for m in self.queued]
        self.display.table(table_lines(self.status, self.runs, queued, self.metric), force=force)

    def save(self) -> None:
        record = {"spec": self.sweep["spec"] | {"parallelism": None}, "status": self.status}
        tmp = self.status_path.with_name("status.json.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.status_path)

    # -- the loop
    def run(self, interrupts: Interrupts) -> str:
        """-> 'done', or 'stopped' (Ctrl-C: trials checkpointed and exited)."""
        handled = 0
        stopping_since: float | None = None
        while True:
            if interrupts.count > handled:
                handled = interrupts.count
                if handled == 1:
                    self.display.say("stopping: each running trial checkpoints and exits; run the same command "
                                     "again to resume (Ctrl-C again to kill them)")
                    for r in self.alive():
                        r.stopping = True
                        r.launcher.terminate_workers()
                    stopping_since = time.monotonic()
                else:
                    self.display.say("killing the trial processes")
                    for r in self.alive():
                        r.launcher.kill()
            if stopping_since is not None:
                for r in self.runs.values():
                    r.poll()
                if not self.alive():
                    return "stopped"
                time.sleep(POLL_SECONDS)
                continue
            changed = self.step()
            if self.finished and not self.alive():
                return "done"  # the caller prints the final table
            self.table(force=changed)
            time.sleep(POLL_SECONDS)

    def stop_leftovers(self) -> None:
        for r in self.alive():
            r.launcher.kill()
            r.launcher.wait(10)
            r.launcher.close()


def summary_lines(sweep: Mapping[str, Any], wall: float) -> list[str]:
    status = sweep.get("status") or {}
    metric = str(((sweep.get("spec") or {}).get("objective") or {}).get("metric", "evalLoss"))
    lines = [f"sweep {sweep['metadata']['name']} {status.get('phase', '?')} after {fmt_duration(wall)} (wall time): "
             f"{status.get('message', '')}"]
    best = status.get("bestTrial")
    if best:
        lines.append(f"best trial: {best['name']}  {metric}={best['objective']:.6g}")
        lines.append("  parameters: " + ", ".join(f"{k}={v}" for k, v in (best.get("parameters") or {}).items()))
        for key, title in (("adapterUri", "adapter"), ("mergedUri", "merged model"), ("summaryUri", "summary"),
                           ("outputUri", "output")):
            if best.get(key):
                lines.append(f"  {title}: {best[key]}")
    res = status.get("results") or {}
    if res.get("summaryUri"):
        lines.append(f"all trials: {res['summaryUri']}")
    for uri in res.get("plotUris") or []:
        lines.append(f"plot: {uri}")
    return lines


def eval_curves(status: Mapping[str, Any], runs: Mapping[str, TrialRun]) -> dict[str, list[tuple[int, float]]]:
    """Each trial's eval curve: what this launch measured, after what status recorded before it (a resumed trial)."""
    out = {}
    for t in status.get("trials") or []:
        run = runs.get(t["name"])
        measured = run.curve if run else []
        first = measured[0][0] if measured else None
        earlier = [(int(r["step"]), float(r["value"])) for r in t.get("intermediate") or []
                   if first is None or int(r["step"]) < first]
        if earlier or measured:
            out[t["name"]] = earlier + list(measured)
    return out


# ------------------------------------------------------------ run
def _previous_status(run_dir: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The status an earlier launch of the same sweep (same spec but parallelism) left in the run folder."""
    try:
        record = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    if record.get("spec") != spec | {"parallelism": None}:
        return None
    status = record.get("status")
    return status if isinstance(status, dict) else None


def run_sweep(
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
    """Run a FineTuneSweep locally; -> 0 Succeeded, 1 Failed, 75 stopped with checkpoints (run again to resume)."""
    started = time.monotonic()
    env = dict(os.environ if env is None else env)
    try:
        doc = load_sweep_manifest(manifest, overrides)
        sweep = validate_sweep(doc)
    except RunError as e:
        print(f"kubetune: error: {e}", file=sys.stderr)
        return 2
    name = sweep.metadata.name or "sweep"
    run_path = Path(run_dir or Path(".kubetune") / "runs" / name).resolve()
    run_path.mkdir(parents=True, exist_ok=True)
    scratch_root = Path(scratch or env.get("KUBETUNE_SCRATCH") or Path.home() / ".cache" / "kubetune" / "scratch").resolve()
    slots = plan_slots(sweep.spec.template, sweep.spec.parallelism, visible_gpus(env), cpu_count or os.cpu_count() or 1)
    display = SweepDisplay(stream)
    output = str(doc["spec"]["template"]["output"]["uri"])
    previous = _previous_status(run_path, doc["spec"])
    local = LocalSweep(doc, run_dir=run_path, scratch=scratch_root, slots=slots, python=python, env=env,
                       display=display, status=previous)
    display.say(f"sweep {name}: {sweep.spec.algorithm} search, {len(sweep.spec.parameters)} parameter(s), "
                f"objective {sweep.spec.objective.metric} ({sweep.spec.objective.direction}), "
                f"{slots.parallel} trial(s) at once")
    display.say(f"output: {output}   run folder: {run_path}")
    if slots.note:
        display.say(f"note: {slots.note}")
    if previous:
        done = sum(t.get("phase") in api.TRIAL_DONE_PHASES for t in previous.get("trials") or [])
        display.say(f"resuming: {len(previous.get('trials') or [])} trial(s) recorded, {done} finished "
                    f"(delete {run_path / 'status.json'} to start over)")
    try:
        with counting_interrupts() as interrupts:
            how = local.run(interrupts)
    finally:
        local.stop_leftovers()
        display.close()
    local.table(force=True)
    if how == "stopped":
        display.say(f"stopped; trials checkpointed. Run the same command again to resume ({run_path / 'status.json'}).")
        return PREEMPTED
    curves = eval_curves(local.status, local.runs)
    try:
        local.status["results"] = sweep_results.write_results(local.sweep, curves)
        local.save()
    except Exception as e:  # noqa: BLE001 - the sweep's outcome stands even if the plots cannot be written
        display.say(f"warning: could not write sweep.json and plots under {output}: {e!r}")
    for line in summary_lines(local.sweep, time.monotonic() - started):
        display.say(line)
    if not is_local(output):
        display.say(f"(local copy of the status: {run_path / 'status.json'})")
    return 0 if local.status.get("phase") == "Succeeded" else 1
