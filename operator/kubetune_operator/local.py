"""``kubetune run FILE.yaml``: run a FineTuneJob on this machine with the real trainer.

The same manifest that runs on a cluster runs here, the same way a pod runs
it: one torchrun per node group, started as a subprocess
(``python -m kubetune_trainer.torchrun``, torchrun that keeps the trainer's
exit codes), so this process never imports torch.

- ``distributed.nodes`` become local torchrun node groups joined by a static
  rendezvous on 127.0.0.1 (``--nnodes/--node-rank/--master-addr/--master-port``);
  each group gets its own scratch folder, as separate machines would.
- GPUs if ``gpusPerNode`` > 0 and the machine has enough of them (each group
  gets its own ``CUDA_VISIBLE_DEVICES``), else CPU processes
  (``processesPerNode``, default 1) sharing the cores (``OMP_NUM_THREADS``).
- Output wherever ``output.uri`` points: a local folder, or any S3 endpoint
  (credentials from the usual ``AWS_*`` variables of this shell).
- A live progress line (step/total, loss, eval loss, tokens/s, ETA) read from
  the trainer's ``KUBETUNE_PROGRESS_FILE`` (JSON lines), plus a line per
  checkpoint and phase.
- Ctrl-C sends SIGTERM to the trainer processes: they commit a checkpoint and
  exit 75; running the same command again resumes from it. A second Ctrl-C
  kills them.
- A summary at the end: eval loss before and after, where the artifacts are,
  wall time.

The run folder (``.kubetune/runs/<name>/`` by default) keeps the resolved
manifest, the progress file and one log per node group.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import yaml

from kubetune_api import contract
from kubetune_api import spec as api
from kubetune_api.contract import PERMANENT, PREEMPTED


class RunError(Exception):
    """A problem with the manifest or the machine, reported before anything starts."""


# ------------------------------------------------------------------ planning
@dataclasses.dataclass
class NodeGroup:
    rank: int
    procs: int
    gpus: list[str]  # CUDA device ids for this group; empty on CPU
    scratch: Path
    log: Path


@dataclasses.dataclass
class LocalPlan:
    name: str
    nodes: int
    procs_per_node: int
    use_gpus: bool
    threads_per_proc: int
    master_port: int
    run_dir: Path
    config_path: Path
    progress_path: Path
    output_uri: str
    groups: list[NodeGroup]
    notes: list[str]


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """GPU ids this process may use, without importing torch (CUDA_VISIBLE_DEVICES, else nvidia-smi)."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = doc
    for k in keys[:-1]:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = cur[k] = {}
        cur = nxt
    cur[keys[-1]] = value


def _is_local(uri: str) -> bool:
    return not uri.startswith(("s3://", "hf://"))


def _absolute(uri: str, base: Path) -> str:
    """Local paths (and file:// URIs) made absolute against ``base``; remote URIs unchanged."""
    if not _is_local(uri):
        return uri
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return str((base / os.path.expanduser(path)).resolve())


def load_manifest(path: str | os.PathLike, overrides: dict[str, Any] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """Read the first FineTuneJob in ``path``, apply ``overrides`` (dotted camelCase paths), make local paths absolute."""
    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise RunError(f"{path} is not valid YAML: {e}") from None
    doc = next((d for d in docs if isinstance(d, dict) and d.get("kind") == api.KIND), None)
    if doc is None:
        raise RunError(f"{path}: no {api.KIND} document found")
    for key, value in (overrides or {}).items():
        _set_path(doc, key, value)
    cwd = cwd or Path.cwd()
    spec = doc.get("spec") or {}
    for section, field in (("model", "source"), ("dataset", "train"), ("dataset", "eval"), ("output", "uri")):
        value = (spec.get(section) or {}).get(field)
        if isinstance(value, str) and value:
            spec[section][field] = _absolute(value, cwd)
    doc.setdefault("metadata", {}).setdefault("name", Path(path).stem)
    return doc


def parse_job(doc: dict[str, Any]) -> api.FineTuneJob:
    from pydantic import ValidationError

    try:
        return api.load_job(doc)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()))
            lines.append(f"  {loc}: {err.get('msg')}" if loc else f"  {err.get('msg')}")
        raise RunError("the manifest is not a valid FineTuneJob:\n" + "\n".join(lines)) from None


def plan_run(
    job: api.FineTuneJob,
    run_dir: Path,
    scratch_root: Path,
    gpus: list[str],
    cpu_count: int,
    master_port: int,
) -> LocalPlan:
    """Pure: how to run ``job`` here (node groups, processes, devices, threads, paths)."""
    d = job.spec.distributed
    name = job.metadata.name or "job"
    procs = d.procs_per_node()
    notes: list[str] = []
    want = d.nodes * d.gpus_per_node
    use_gpus = d.gpus_per_node > 0 and len(gpus) >= want
    if d.gpus_per_node > 0 and not use_gpus:
        notes.append(
            f"spec asks for {d.nodes} node(s) x {d.gpus_per_node} GPU(s) but {len(gpus)} GPU(s) are visible: "
            f"running {procs} CPU process(es) per node instead (same world size, so the batch math holds)"
        )
    total = d.nodes * procs
    threads = max(1, cpu_count // total)
    if not use_gpus and total > cpu_count:
        notes.append(f"{total} CPU processes on {cpu_count} core(s): expect it to be slow")
    groups = []
    for rank in range(d.nodes):
        devs = gpus[rank * d.gpus_per_node:(rank + 1) * d.gpus_per_node] if use_gpus else []
        groups.append(NodeGroup(rank, procs, devs, scratch_root / f"node-{rank}", run_dir / f"node-{rank}.log"))
    return LocalPlan(
        name=name,
        nodes=d.nodes,
        procs_per_node=procs,
        use_gpus=use_gpus,
        threads_per_proc=threads,
        master_port=master_port,
        run_dir=run_dir,
        config_path=run_dir / "finetunejob.yaml",
        progress_path=run_dir / "progress.jsonl",
        output_uri=job.spec.output.uri,
        groups=groups,
        notes=notes,
    )


def torchrun_command(plan: LocalPlan, group: NodeGroup, python: str = sys.executable) -> list[str]:
    return [
        python, "-m", "kubetune_trainer.torchrun",
        f"--nnodes={plan.nodes}",
        f"--nproc-per-node={group.procs}",
        f"--node-rank={group.rank}",
        "--master-addr=127.0.0.1",
        f"--master-port={plan.master_port}",
        "-m", "kubetune_trainer", "--config", str(plan.config_path),
    ]


def node_env(plan: LocalPlan, group: NodeGroup, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["KUBETUNE_SCRATCH"] = str(group.scratch)
    env["KUBETUNE_PROGRESS_FILE"] = str(plan.progress_path)  # only global rank 0 writes it
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.pop("KUBETUNE_REPORTER", None)  # no cluster here
    if plan.use_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(group.gpus)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", str(plan.threads_per_proc))
        # Busy-waiting OpenMP threads collapse when the cores are shared with anything else
        # (measured here: 85-130 s per SmolLM2 step with 2 spinning threads vs 23-36 s passive).
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


# ------------------------------------------------------------------ progress
def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressTail:
    """Reads new complete lines of a JSON-lines file (the trainer appends to it)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out


@dataclasses.dataclass
class RunState:
    """What the progress file told us so far."""

    progress: dict[str, Any] = dataclasses.field(default_factory=dict)
    phase: str | None = None
    first_eval: tuple[int, float] | None = None  # (step, evalLoss) of the first evaluation seen
    last_eval: tuple[int, float] | None = None
    checkpoints: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    resumed: dict[str, Any] | None = None
    exported: dict[str, Any] | None = None

    def update(self, rec: dict[str, Any]) -> str | None:
        """Fold in one record; return a line worth printing on its own (events), else None."""
        ev = rec.get("event")
        if ev is None:
            self.progress = rec
            if rec.get("evalLoss") is not None:
                point = (int(rec.get("step") or 0), float(rec["evalLoss"]))
                if self.first_eval is None:
                    self.first_eval = point
                self.last_eval = point
            return None
        if ev == "phase":
            self.phase = rec.get("phase")
            return f"phase: {self.phase}"
        if ev == "checkpoint":
            self.checkpoints.append(rec)
            return f"checkpoint committed: step {rec.get('step')} -> {rec.get('uri')}"
        if ev == "resumed":
            self.resumed = rec
            return f"resumed from the checkpoint at step {rec.get('step')} ({rec.get('uri')})"
        if ev == "exported":
            self.exported = rec
            return "exported: " + ", ".join(f"{k} {v}" for k, v in rec.items() if k.endswith("Uri") and v)
        return None


def progress_line(p: dict[str, Any]) -> str:
    step, total = p.get("step"), p.get("totalSteps")
    parts = [f"step {step}/{total}" if total else f"step {step}"]
    if p.get("percent") is not None:
        parts[0] += f" ({p['percent']:.0f}%)"
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.4f}")
    if p.get("evalLoss") is not None:
        parts.append(f"eval loss {p['evalLoss']:.4f}")
    if p.get("tokensPerSecond") is not None:
        parts.append(f"{p['tokensPerSecond']:,.0f} tok/s")
    parts.append(f"ETA {_fmt_duration(p.get('etaSeconds'))}")
    return " | ".join(parts)


class Display:
    """One live line on a terminal (redrawn in place); plain lines otherwise (CI logs, pipes)."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.live = ""
        self.last_plain = 0.0

    def _clear(self) -> None:
        if self.tty and self.live:
            self.stream.write("\r\x1b[2K")
            self.live = ""

    def say(self, line: str) -> None:
        self._clear()
        self.stream.write(f"kubetune: {line}\n")
        self.stream.flush()

    def status(self, line: str, force: bool = False) -> None:
        if self.tty:
            self._clear()
            self.live = line
            self.stream.write(line)
            self.stream.flush()
        elif force or time.monotonic() - self.last_plain >= 10:
            self.last_plain = time.monotonic()
            self.say(line)

    def close(self) -> None:
        if self.tty and self.live:
            self.stream.write("\n")
            self.live = ""
        self.stream.flush()


# ------------------------------------------------------------------ running
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

    def __init__(self, plan: LocalPlan, python: str = sys.executable, env: dict[str, str] | None = None):
        self.plan = plan
        self.python = python
        self.base_env = env
        self.procs: list[subprocess.Popen] = []
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


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _trainer_error(path: Path) -> str | None:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    return contract.last_error_line(text)


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


def _summary(plan: LocalPlan, state: RunState, rc: int, wall: float) -> list[str]:
    lines = []
    if rc == 0:
        lines.append(f"finished {plan.name} in {_fmt_duration(wall)} (wall time)")
    elif rc == PREEMPTED:
        where = f" at step {state.checkpoints[-1].get('step')}" if state.checkpoints else ""
        lines.append(f"stopped after {_fmt_duration(wall)}; checkpoint committed{where}. Run the same command again to resume.")
    else:
        lines.append(f"failed after {_fmt_duration(wall)} (exit code {rc})")
    summary = _local_summary(plan.output_uri) if rc == 0 else None
    before = summary.get("initialEvalLoss") if summary else None
    after = summary.get("evalLoss") if summary else None
    if before is None and state.first_eval:
        before = state.first_eval[1]
    if after is None and state.exported:
        after = (state.exported.get("metrics") or {}).get("evalLoss")
    if after is None and state.last_eval and state.last_eval != state.first_eval:
        after = state.last_eval[1]
    resumed = state.resumed or (summary or {}).get("resumedFrom")
    label = "at resume" if resumed else "before"
    base = _base_eval(plan)
    if resumed and base is not None:
        before, label = base, "before (first launch)"
    if before is not None:
        lines.append(f"eval loss {label}: {before:.4f}" + (f"   after: {after:.4f}" if after is not None else ""))
    if state.exported:
        for key, title in (("adapterUri", "adapter"), ("mergedUri", "merged model"), ("summaryUri", "summary")):
            if state.exported.get(key):
                lines.append(f"{title}: {state.exported[key]}")
    elif state.checkpoints:
        lines.append(f"last checkpoint: {state.checkpoints[-1].get('uri')}")
    lines.append(f"logs and progress: {plan.run_dir}")
    return lines


def _base_eval_path(plan: LocalPlan) -> Path:
    return plan.run_dir / "base-eval.json"


def _base_eval(plan: LocalPlan) -> float | None:
    """The eval loss of the untrained model, kept from the launch that started from scratch."""
    try:
        record = json.loads(_base_eval_path(plan).read_text())
    except (OSError, ValueError):
        return None
    return record.get("evalLoss") if record.get("output") == plan.output_uri else None


def _remember_base_eval(plan: LocalPlan, state: RunState) -> None:
    if state.first_eval and state.first_eval[0] == 0 and not state.resumed:
        _base_eval_path(plan).write_text(json.dumps({"output": plan.output_uri, "evalLoss": state.first_eval[1]}))


def _local_summary(output_uri: str) -> dict[str, Any] | None:
    if not _is_local(output_uri):
        return None
    base = output_uri[len("file://"):] if output_uri.startswith("file://") else output_uri
    try:
        return json.loads((Path(base) / "final" / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def run(
    manifest: str | os.PathLike,
    *,
    overrides: dict[str, Any] | None = None,
    run_dir: str | os.PathLike | None = None,
    scratch: str | os.PathLike | None = None,
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
        job = parse_job(doc)
    except RunError as e:
        print(f"kubetune: error: {e}", file=sys.stderr)
        return 2
    name = job.metadata.name or "job"
    run_dir = Path(run_dir or Path(".kubetune") / "runs" / name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    env_src = os.environ if env is None else env
    scratch_root = Path(scratch or env_src.get("KUBETUNE_SCRATCH") or Path.home() / ".cache" / "kubetune" / "scratch").resolve()
    plan = plan_run(job, run_dir, scratch_root, visible_gpus(env_src), cpu_count or os.cpu_count() or 1, free_port())
    plan.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    plan.progress_path.write_text("")  # this launch's records only
    for g in plan.groups:
        g.log.write_bytes(b"")

    where = "GPU " + ", ".join(",".join(g.gpus) for g in plan.groups) if plan.use_gpus else f"CPU, {plan.threads_per_proc} thread(s) per process"
    display.say(f"running {name}: {plan.nodes} node group(s) x {plan.procs_per_node} process(es) on {where}")
    display.say(f"output: {plan.output_uri}")
    for note in plan.notes:
        display.say(f"note: {note}")

    launcher = Launcher(plan, python, env)
    tail = ProgressTail(plan.progress_path)
    state = RunState()
    interrupts = 0
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):  # noqa: ARG001
        nonlocal interrupts
        interrupts += 1

    if threading.current_thread() is not threading.main_thread():
        previous = None  # signals reach only the main thread; the caller stops us some other way
    if previous is not None:
        signal.signal(signal.SIGINT, on_sigint)
    handled = 0
    failed_at: float | None = None
    try:
        launcher.start()
        while True:
            for rec in tail.read():
                line = state.update(rec)
                if line:
                    display.say(line)
                elif "event" not in rec:
                    display.status(progress_line(state.progress), force=rec.get("evalLoss") is not None and rec.get("loss") is None)
            codes = launcher.poll()
            if all(c is not None for c in codes):
                break
            if interrupts > handled:
                handled = interrupts
                if handled == 1:
                    display.say("stopping: the trainer checkpoints and exits (Ctrl-C again to kill it without a checkpoint)")
                    launcher.terminate_workers()
                else:
                    display.say("killing the trainer processes")
                    launcher.kill()
            # Gang semantics: one node group failing ends the run for all.
            if any(c not in (None, 0) for c in codes) and any(c is None for c in codes):
                if failed_at is None:
                    failed_at = time.monotonic()
                    # A group that exited PREEMPTED took part in a stop that all ranks agreed
                    # on at one step boundary: the others are committing the same checkpoint
                    # and exit by themselves. Signalling them again could hit a launcher
                    # whose workers have just exited (it would die of the SIGTERM).
                    if not all(c in (None, 0, PREEMPTED) for c in codes):
                        launcher.terminate_workers()
                elif time.monotonic() - failed_at > 60:
                    launcher.kill()
            time.sleep(0.2)
        for rec in tail.read():
            line = state.update(rec)
            if line:
                display.say(line)
    finally:
        if launcher.procs and not all(c is not None for c in launcher.poll()):
            launcher.kill()
            launcher.wait(10)
        launcher.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        display.close()

    rc = outcome(launcher.poll())
    _remember_base_eval(plan, state)
    if rc not in (0, PREEMPTED):
        err = next(filter(None, (_trainer_error(g.log) for g in plan.groups)), None)
        if err:
            display.say(err[len("kubetune: "):] if err.startswith("kubetune: ") else err)
        else:
            bad = next((g for g, c in zip(plan.groups, launcher.poll()) if c not in (0, None)), plan.groups[0])
            display.say(f"node group {bad.rank} failed; the end of {bad.log}:\n{_tail(bad.log)}")
    for line in _summary(plan, state, rc, time.monotonic() - started):
        display.say(line)
    return rc


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set training.maxSteps=10`` -> {'spec.training.maxSteps': 10}; values are YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RunError(f"--set {item!r}: expected KEY=VALUE, e.g. training.maxSteps=10")
        key = key if key.startswith(("spec.", "metadata.")) else f"spec.{key}"
        out[key] = yaml.safe_load(value) if value != "" else ""
    return out


def main(args: Any) -> int:
    """Entry point of ``kubetune run`` (argparse namespace from cli.py)."""
    try:
        overrides = parse_overrides(args.set or [])
    except RunError as e:
        print(f"kubetune: error: {e}", file=sys.stderr)
        return 2
    if args.output:
        overrides["spec.output.uri"] = args.output
    return run(args.file, overrides=overrides, run_dir=args.run_dir, scratch=args.scratch)
