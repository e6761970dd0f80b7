"""The report people read: ``report.md``, a self-contained ``report.html`` and PNG plots.

Written by the trainer into ``<output>/final/`` at export, and by
``kubetune report OUTPUT_URI`` for any output, finished or still running:

- finished (``final/summary.json``): the setup, the base-vs-tuned metrics of
  ``final/eval/metrics.json``, the curves of the summary's history, and the
  first rows where the base and the tuned answers differ (``final/eval/*.jsonl``);
- running: the curves of the newest committed checkpoint's
  ``trainer_state.json`` (the Hugging Face Trainer's ``log_history``).

Plots (matplotlib, Agg): ``plots/loss.png`` (train loss and eval loss by
step) and ``plots/learning_rate.png``. Each PNG carries the exact series it
draws as JSON in its ``kubetune:series`` text chunk, so a reader (or a test)
can check a plot against the records without reading pixels.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("kubetune.report")

SERIES_KEY = "kubetune:series"
PLOTS = {"loss": "plots/loss.png", "learning_rate": "plots/learning_rate.png"}
METRICS = (  # (key, label, higher is better)
    ("loss", "loss (completion tokens)", False),
    ("perplexity", "perplexity", False),
    ("tokenAccuracy", "token accuracy", True),
    ("exactMatch", "exact match", True),
    ("normalizedExactMatch", "normalised exact match", True),
    ("rougeL", "ROUGE-L F1", True),
    ("jsonValid", "JSON valid", True),
    ("jsonFieldMatch", "JSON field match", True),
)


# ------------------------------------------------------------------ records
@dataclass
class Records:
    """What a report is made of."""

    source: str  # the output URI
    state: str  # "finished" | "running"
    history: list[dict[str, Any]]  # log records: step, loss, eval_loss, learning_rate
    summary: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None  # final/eval/metrics.json
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # final/eval/<set>.jsonl
    step: int | None = None
    checkpoint: str | None = None


def series(history: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """[step, value] pairs per curve, in record order (a resumed run's records are deduplicated by step)."""
    out: dict[str, dict[int, float]] = {"train_loss": {}, "eval_loss": {}, "learning_rate": {}}
    for rec in history:
        step = rec.get("step")
        if step is None:
            continue
        for key, name in (("loss", "train_loss"), ("eval_loss", "eval_loss"), ("learning_rate", "learning_rate")):
            v = rec.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[name][int(step)] = float(v)
    return {name: [[s, v] for s, v in sorted(points.items())] for name, points in out.items()}


def _history_of_trainer_state(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k in ("step", "epoch", "loss", "eval_loss", "learning_rate")}
            for h in state.get("log_history", [])]


def load_records(uri: str, storage: Any = None) -> Records:
    """The records of an output folder or prefix (local path or s3://)."""
    from .checkpoint import COMMITTED, newest_committed
    from .storage import ObjectNotFound, join, storage_for

    uri = uri.rstrip("/")
    storage = storage or storage_for(uri)
    final = join(uri, "final")

    def read_json(u: str) -> Any:
        try:
            return storage.read_json(u)
        except (ObjectNotFound, FileNotFoundError):
            return None

    summary = read_json(join(final, "summary.json")) if storage.exists(join(final, COMMITTED)) else None
    if summary is not None:
        rec = Records(uri, "finished", summary.get("history") or [], summary=summary, step=summary.get("steps"))
        rec.evaluation = read_json(join(final, "eval", "metrics.json")) or summary.get("evaluation")
        for name in (rec.evaluation or {}).get("sets", {}):
            try:
                text = storage.read_bytes(join(final, "eval", f"{name}.jsonl")).decode()
            except (ObjectNotFound, FileNotFoundError):
                continue
            rec.rows[name] = [json.loads(line) for line in text.splitlines() if line.strip()]
        return rec
    best, _ = newest_committed(storage, join(uri, "checkpoints"))
    if best is None:
        raise FileNotFoundError(f"{uri}: no final/summary.json and no committed checkpoint yet: nothing to report")
    state = read_json(join(best.uri, "trainer_state.json"))
    if state is None:
        raise FileNotFoundError(f"{best.uri}: the checkpoint has no trainer_state.json")
    return Records(uri, "running", _history_of_trainer_state(state), step=best.step, checkpoint=best.uri)


# ------------------------------------------------------------------ plots
def plot(path: Path, title: str, ylabel: str, curves: dict[str, list[list[float]]], log_y: bool = False) -> Path:
    """One PNG of step-indexed curves; the series go into the PNG's text chunk too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    try:
        for name, points in curves.items():
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(points) <= 30 else None, markersize=3, label=name.replace("_", " "))
        if not any(curves.values()):
            ax.text(0.5, 0.5, "no records yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        if log_y and all(v > 0 for pts in curves.values() for _, v in pts) and any(curves.values()):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if sum(bool(p) for p in curves.values()) > 1:
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png", metadata={SERIES_KEY: json.dumps(curves)})
    finally:
        plt.close(fig)
    return path


def write_plots(records: Records, out_dir: Path) -> dict[str, Path]:
    s = series(records.history)
    return {
        "loss": plot(out_dir / PLOTS["loss"], "Loss", "loss", {"train_loss": s["train_loss"], "eval_loss": s["eval_loss"]}),
        "learning_rate": plot(out_dir / PLOTS["learning_rate"], "Learning-rate schedule", "learning rate",
                              {"learning_rate": s["learning_rate"]}),
    }


# ------------------------------------------------------------------ tables and text
def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.1f}"
    return str(v)


def metric_rows(evaluation: dict[str, Any] | None) -> list[tuple[str, str, Any, Any, str]]:
    """(set, metric, base, tuned, change) for every metric either model has."""
    out = []
    for set_name, entry in ((evaluation or {}).get("sets") or {}).items():
        base, tuned = entry.get("base") or {}, entry.get("tuned") or {}
        keys = [(k, label, hib) for k, label, hib in METRICS if base.get(k) is not None or tuned.get(k) is not None]
        fields = sorted(set(base.get("fields") or {}) | set(tuned.get("fields") or {}))
        for k, label, _ in keys:
            out.append((set_name, label, base.get(k), tuned.get(k), _change(base.get(k), tuned.get(k))))
        for f in fields:
            b, t = (base.get("fields") or {}).get(f), (tuned.get("fields") or {}).get(f)
            out.append((set_name, f"JSON field '{f}'", b, t, _change(b, t)))
    return out


def _change(b: Any, t: Any) -> str:
    if isinstance(b, (int, float)) and isinstance(t, (int, float)):
        return f"{t - b:+.4f}"
    return ""


def text_table(evaluation: dict[str, Any] | None) -> str:
    rows = [("set", "metric", "base", "tuned", "change")] + [(s, m, _fmt(b), _fmt(t), c) for s, m, b, t, c in metric_rows(evaluation)]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def differing_rows(records: Records, limit: int) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for set_name, rows in records.rows.items():
        for r in rows:
            if r.get("differs") and len(out) < limit:
                out.append((set_name, r))
    return out


def setup_items(records: Records) -> list[tuple[str, str]]:
    s = records.summary or {}
    spec = s.get("spec") or {}
    ev = records.evaluation or {}
    items = [("output", records.source), ("state", records.state + (f" (step {records.step})" if records.step is not None else ""))]
    if s:
        items += [
            ("job", str(s.get("job"))),
            ("base model", str((spec.get("model") or {}).get("source"))),
            ("method", str(s.get("method"))),
            ("data", _data_line(spec, s.get("format"))),
            ("training", f"{s.get('steps')} steps, global batch {s.get('globalBatchSize')}, {s.get('tokensSeen')} tokens"),
            ("gang", f"world size {s.get('worldSize')} on {s.get('nodes')} node(s), ZeRO-{s.get('zeroStage')}, {s.get('precision')}"),
        ]
    if ev:
        d = ev.get("decoding") or {}
        items.append(("decoding", ", ".join(f"{k} {v}" for k, v in d.items())))
        items.append(("generation sample", f"first {ev.get('samples')} rows of each set"))
    return items


def _data_line(spec: dict[str, Any], fmt: Any) -> str:
    ds, ev = spec.get("dataset") or {}, spec.get("evaluation") or {}
    parts = [f"train {ds.get('train')} ({fmt})"]
    parts.append(f"validation {ds['eval']}" if ds.get("eval") else f"validation {ds.get('evalFraction')} of train held out")
    if ev.get("test"):
        parts.append(f"test {ev['test']}")
    return "; ".join(parts)


def _answer(r: dict[str, Any] | None) -> str:
    return "" if not r else str(r.get("prediction", ""))


def render_markdown(records: Records, plots: dict[str, str], limit: int) -> str:
    lines = [f"# Fine-tuning report: {(records.summary or {}).get('job') or records.source}", "", "## Setup", ""]
    lines += [f"- **{k}**: {v}" for k, v in setup_items(records)]
    lines += ["", "## Metrics: base vs tuned", ""]
    rows = metric_rows(records.evaluation)
    if rows:
        lines += ["| set | metric | base | tuned | change |", "| --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {s} | {m} | {_fmt(b)} | {_fmt(t)} | {c} |" for s, m, b, t, c in rows]
    else:
        lines.append("No final evaluation yet." if records.state == "running" else "No evaluation set.")
    lines += ["", "## Curves", ""]
    lines += [f"![{name}]({rel})" for name, rel in plots.items()]
    diffs = differing_rows(records, limit)
    if diffs:
        lines += ["", f"## First rows where base and tuned differ ({len(diffs)})", ""]
        for set_name, r in diffs:
            lines += [f"### {set_name}: {r.get('place')}", "", "prompt:", "", "```", str(r.get("prompt", "")).strip(), "```", "",
                      f"- reference: `{r.get('reference')}`", f"- base: `{_answer(r.get('base'))}`",
                      f"- tuned: `{_answer(r.get('tuned'))}`", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px}td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee;margin:.5em 0}pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap}
.better{color:#176f2c}.worse{color:#a11}dt{font-weight:600}dd{margin:0 0 .4em 1em}"""


def render_html(records: Records, images: dict[str, bytes], limit: int) -> str:
    """A self-contained page: CSS inline, plots as data: URIs."""
    e = html.escape
    title = f"Fine-tuning report: {(records.summary or {}).get('job') or records.source}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1><h2>Setup</h2><dl>"]
    parts += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in setup_items(records)]
    parts.append("</dl><h2>Metrics: base vs tuned</h2>")
    rows = metric_rows(records.evaluation)
    if rows:
        higher = {label: hib for _, label, hib in METRICS}
        parts.append("<table id='metrics'><tr><th>set</th><th>metric</th><th>base</th><th>tuned</th><th>change</th></tr>")
        for s, m, b, t, c in rows:
            hib = higher.get(m, True)
            cls = ""
            if c and c[1:] != "0.0000":
                cls = "better" if (c.startswith("+") == hib) else "worse"
            parts.append(f"<tr><td>{e(s)}</td><td>{e(m)}</td><td class='n'>{e(_fmt(b))}</td><td class='n'>{e(_fmt(t))}</td>"
                         f"<td class='n {cls}'>{e(c)}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>No final evaluation yet.</p>" if records.state == "running" else "<p>No evaluation set.</p>")
    parts.append("<h2>Curves</h2>")
    for name, png in images.items():
        parts.append(f"<img alt='{e(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    diffs = differing_rows(records, limit)
    if diffs:
        parts.append(f"<h2>First rows where base and tuned differ ({len(diffs)})</h2>")
        for set_name, r in diffs:
            parts.append(f"<h3>{e(set_name)}: {e(str(r.get('place')))}</h3><pre>{e(str(r.get('prompt', '')).strip())}</pre><dl>"
                         f"<dt>reference</dt><dd><code>{e(str(r.get('reference')))}</code></dd>"
                         f"<dt>base</dt><dd><code>{e(_answer(r.get('base')))}</code></dd>"
                         f"<dt>tuned</dt><dd><code>{e(_answer(r.get('tuned')))}</code></dd></dl>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write(records: Records, out_dir: str | Path, limit: int = 5) -> dict[str, Path]:
    """report.md, report.html and plots/ into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = write_plots(records, out)
    md = out / "report.md"
    md.write_text(render_markdown(records, {k: PLOTS[k] for k in pngs}, limit))
    page = out / "report.html"
    page.write_text(render_html(records, {k: p.read_bytes() for k, p in pngs.items()}, limit))
    return {"markdown": md, "html": page, **pngs}


def write_report(final_dir: str | Path, summary: dict[str, Any], evaluated: dict[str, Any] | None) -> dict[str, Path]:
    """The trainer's call at export (rank 0): the report into <final>/ from what this run just wrote."""
    rows = {}
    for name in (evaluated or {}).get("sets", {}):
        p = Path(final_dir) / "eval" / f"{name}.jsonl"
        if p.is_file():
            rows[name] = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    spec = (summary.get("spec") or {}).get("evaluation") or {}
    records = Records(str(summary.get("spec", {}).get("output", {}).get("uri", final_dir)), "finished", summary.get("history") or [],
                      summary=summary, evaluation=evaluated, rows=rows, step=summary.get("steps"))
    return write(records, final_dir, limit=int(spec.get("reportRows", 5)))


# ------------------------------------------------------------------ kubetune report
def main(uri: str, out_dir: str | None = None, endpoint: str | None = None, region: str | None = None,
         rows: int = 5, stream: Any = None) -> int:
    """Print the metrics table and write the report and plots of an output; 0, or 1 when there is nothing to report."""
    from kubetune_api.storage import StorageSpec

    from .storage import StorageError, storage_for

    stream = stream or sys.stdout
    storage = storage_for(uri, StorageSpec(endpoint=endpoint, region=region) if (endpoint or region) else None)
    try:
        records = load_records(uri, storage)
    except (FileNotFoundError, StorageError) as e:
        print(f"kubetune report: {e}", file=sys.stderr)
        return 1
    name = (records.summary or {}).get("job") or uri.rstrip("/").rsplit("/", 1)[-1] or "output"
    target = Path(out_dir or f"{name}-report")
    paths = write(records, target, limit=rows)
    print(f"{records.source}: {records.state}" + (f", step {records.step}" if records.step is not None else ""), file=stream)
    if records.evaluation:
        print(text_table(records.evaluation), file=stream)
    else:
        s = series(records.history)
        last = {k: (v[-1] if v else None) for k, v in s.items()}
        print("no final evaluation yet; latest records: " + ", ".join(
            f"{k} {_fmt(p[1])} (step {p[0]})" for k, p in last.items() if p), file=stream)
    diffs = differing_rows(records, 1)
    if diffs:
        set_name, r = diffs[0]
        print(f"\nfirst row where base and tuned differ ({set_name}, {r.get('place')}):", file=stream)
        print(f"  reference: {r.get('reference')}\n  base:      {_answer(r.get('base'))!r}\n  tuned:     {_answer(r.get('tuned'))!r}",
              file=stream)
    print(f"\nreport: {paths['html']} (and report.md), plots: {paths['loss']}, {paths['learning_rate']}", file=stream)
    return 0
