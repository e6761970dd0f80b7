"""Progress reporting from rank 0.

A ``Reporter`` receives two kinds of dicts:
- progress records, whose keys are exactly the camelCase fields of
  ``status.progress`` in spec.py (``PROGRESS_KEYS``);
- events, dicts with an ``event`` key (``phase``, ``checkpoint``, ``resumed``,
  ``exported``), as in the team contract.

``reporters_from_env`` builds the reporters the environment asks for: the
JSON-lines file (``KUBETUNE_PROGRESS_FILE``), the console, and the Kubernetes
status reporter (``KUBETUNE_REPORTER=kubernetes``, from ``k8s_status``).
Only rank 0 reports; other ranks get an empty list.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Protocol

from kubetune_api.spec import Progress

from . import flops, task_metrics

if TYPE_CHECKING:
    from collections.abc import Mapping

    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger("kubetune.progress")

PROGRESS_KEYS = tuple(f.alias for f in Progress.model_fields.values())


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reporter(Protocol):
    def progress(self, record: dict) -> None: ...

    def event(self, event: dict) -> None: ...

    def close(self) -> None: ...


class JsonlFileReporter:
    """Appends one JSON object per line; progress records and events alike."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._f = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def _write(self, obj: dict) -> None:
        with self._lock:
            self._f.write(json.dumps(obj) + "\n")

    def progress(self, record: dict) -> None:
        self._write(record)

    def event(self, event: dict) -> None:
        self._write(event)

    def close(self) -> None:
        self._f.close()


def _fmt_eta(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class ConsoleReporter:
    """One compact line per record on stderr (pod logs and terminals alike)."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr

    def progress(self, r: dict) -> None:
        parts = [f"step {r['step']}/{r['totalSteps']} ({r['percent']:.1f}%)" if r.get("totalSteps") else f"step {r.get('step')}"]
        for key, label, fmt in (
            ("loss", "loss", "{:.4f}"),
            ("evalLoss", "eval_loss", "{:.4f}"),
            ("learningRate", "lr", "{:.2e}"),
            ("tokensPerSecond", "tok/s", "{:,.0f}"),
        ):
            if r.get(key) is not None:
                parts.append(f"{label} {fmt.format(r[key])}")
        parts.append(f"eta {_fmt_eta(r.get('etaSeconds'))}")
        print("kubetune: " + "  ".join(parts), file=self.stream, flush=True)

    def event(self, e: dict) -> None:
        rest = " ".join(f"{k}={v}" for k, v in e.items() if k != "event")
        print(f"kubetune: [{e['event']}] {rest}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


class Reporters:
    """Fans out to several reporters; a failing reporter is logged, never fatal to training."""

    def __init__(self, reporters: list):
        self.reporters = reporters

    def _each(self, method: str, payload: dict) -> None:
        for r in self.reporters:
            try:
                getattr(r, method)(payload)
            except Exception as e:  # status updates must not kill a run
                log.warning("reporter %s.%s failed: %s", type(r).__name__, method, e)

    def progress(self, record: dict) -> None:
        self._each("progress", record)

    def event(self, event: dict) -> None:
        self._each("event", event)

    def close(self) -> None:
        for r in self.reporters:
            try:
                r.close()
            except Exception as e:
                log.warning("reporter %s.close failed: %s", type(r).__name__, e)


def reporters_from_env(rank: int, env: Mapping[str, str] = os.environ) -> Reporters:
    if rank != 0:
        return Reporters([])
    out: list = [ConsoleReporter()]
    if env.get("KUBETUNE_PROGRESS_FILE"):
        out.append(JsonlFileReporter(env["KUBETUNE_PROGRESS_FILE"]))
    if env.get("KUBETUNE_REPORTER") == "kubernetes":
        try:
            from . import k8s_status

            out.append(k8s_status.reporter_from_env(env))
        except Exception as e:  # a missing token or API must not stop training
            log.warning("Kubernetes status reporter unavailable: %s", e)
    return Reporters(out)


def _round4(x: float | None) -> float | None:
    return round(x, 4) if x is not None else None


def make_progress_callback(reporters: Reporters) -> TrainerCallback:
    """A TrainerCallback turning the Trainer's logs into progress records (rank 0 only)."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Tokens/s counts real (non-padding) tokens over all ranks: the Trainer's
        ``num_input_tokens_seen`` with ``include_num_input_tokens_seen='non_padding'``.
        The ETA extrapolates the mean step time of this attempt (resumes included)."""

        def __init__(self):
            self.t0 = self.step0 = None
            self.last_t = self.last_tokens = None
            self.eval_loss = None
            self.eval_metrics: dict[str, float] | None = None
            self.flops_per_token = self.peak = None
            self.devices = 1

        def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
            self.t0 = self.last_t = time.monotonic()
            self.step0, self.last_tokens = state.global_step, state.num_input_tokens_seen
            # MFU only on a known GPU (flops.py); tokens/s is over all ranks, so is the peak
            self.flops_per_token, self.peak, self.devices = None, flops.device_peak_flops(args.device), args.world_size
            if self.peak is not None and kw.get("model") is not None and kw.get("train_dataloader") is not None:
                rows = kw["train_dataloader"].dataset
                self.flops_per_token = flops.model_flops_per_token(kw["model"], flops.dataset_attention_context(rows))

        def _record(self, state: TrainerState, logs: dict[str, Any]) -> dict[str, Any]:
            now = time.monotonic()
            tokens = state.num_input_tokens_seen
            tps = None
            if self.last_t is not None and now > self.last_t and tokens > self.last_tokens:
                tps = (tokens - self.last_tokens) / (now - self.last_t)
            self.last_t, self.last_tokens = now, tokens
            done = state.global_step - (self.step0 or 0)
            eta = None
            if done > 0 and state.max_steps:
                eta = int(round((now - self.t0) / done * max(state.max_steps - state.global_step, 0)))
            total = state.max_steps or None
            return {
                "step": state.global_step,
                "totalSteps": total,
                "epoch": round(state.epoch, 4) if state.epoch is not None else None,
                "percent": round(100.0 * state.global_step / total, 2) if total else None,
                "loss": logs.get("loss"),
                "evalLoss": self.eval_loss,
                "evalMetrics": self.eval_metrics,
                "learningRate": logs.get("learning_rate"),
                "tokensPerSecond": round(tps, 1) if tps is not None else None,
                "mfu": _round4(flops.mfu(self.flops_per_token, tps, self.peak, self.devices)),
                "etaSeconds": eta,
                "updatedAt": utc_now(),
            }

        def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                   logs: dict[str, Any] | None = None, **kw: Any) -> None:
            logs = logs or {}
            if "eval_loss" in logs:
                self.eval_loss = logs["eval_loss"]
                self.eval_metrics = task_metrics.progress_metrics(logs)
            if "loss" not in logs and "eval_loss" not in logs:
                return  # the final train summary: the run's totals go to summary.json instead
            rec = self._record(state, logs)  # after an eval, the next window starts fresh: eval time is not training time
            if "loss" not in logs:
                rec["tokensPerSecond"] = None
            if state.is_world_process_zero:
                reporters.progress(rec)

    return ProgressCallback()
