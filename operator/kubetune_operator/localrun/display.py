"""What ``kubetune run`` shows: the progress file read as it grows, a live line, the summary at the end."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import IO, Any

from kubetune_api import contract
from kubetune_api.contract import PREEMPTED
from kubetune_operator.localrun.manifest import is_local
from kubetune_operator.localrun.planning import LocalPlan


def fmt_duration(seconds: float | None) -> str:
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
    parts.append(f"ETA {fmt_duration(p.get('etaSeconds'))}")
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


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def trainer_error_line(path: Path) -> str | None:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    return contract.last_error_line(text)


def summary_lines(plan: LocalPlan, state: RunState, rc: int, wall: float) -> list[str]:
    lines = []
    if rc == 0:
        lines.append(f"finished {plan.name} in {fmt_duration(wall)} (wall time)")
    elif rc == PREEMPTED:
        where = f" at step {state.checkpoints[-1].get('step')}" if state.checkpoints else ""
        lines.append(f"stopped after {fmt_duration(wall)}; checkpoint committed{where}. Run the same command again to resume.")
    else:
        lines.append(f"failed after {fmt_duration(wall)} (exit code {rc})")
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
    for key, title in (("Accuracy", "accuracy"), ("MacroF1", "macro-F1")):  # sequence-classification (task_metrics.py)
        start, end = (summary or {}).get("initial" + key), (summary or {}).get(key[0].lower() + key[1:])
        if start is not None and end is not None:
            lines.append(f"{title} before: {start:.4f}   after: {end:.4f}")
    if state.exported:
        for key, title in (("adapterUri", "adapter"), ("mergedUri", "merged model"), ("summaryUri", "summary"), ("reportUri", "report")):
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


def remember_base_eval(plan: LocalPlan, state: RunState) -> None:
    if state.first_eval and state.first_eval[0] == 0 and not state.resumed:
        _base_eval_path(plan).write_text(json.dumps({"output": plan.output_uri, "evalLoss": state.first_eval[1]}))


def _local_summary(output_uri: str) -> dict[str, Any] | None:
    if not is_local(output_uri):
        return None
    base = output_uri[len("file://"):] if output_uri.startswith("file://") else output_uri
    try:
        summary = json.loads((Path(base) / "final" / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None
