"""What a finished sweep leaves to look at: ``<output>/sweep.json`` and two PNG plots.

- ``sweep.json``: the sweep's objective, search space and outcome, and every
  trial (parameters, phase, objective, intermediate results, output URIs, and
  its eval curve when known);
- ``plots/objective.png``: the objective of each trial, the best one marked,
  pruned and failed ones told apart;
- ``plots/eval-curves.png``: each trial's eval curve (eval loss, or the
  objective's intermediate values) against the training step.

``<output>`` is the template's ``output.uri`` (trials write under
``<output>/trials/<trial>``), a local folder or ``s3://bucket/prefix``.

The document and the figures are built by pure functions of the sweep's
status (plus the eval curves the caller has; without them, each trial's
``intermediate`` results); only :func:`write_results` does I/O. matplotlib
(in the trainer extra) is imported only to draw.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SUMMARY_NAME = "sweep.json"
OBJECTIVE_PLOT = "plots/objective.png"
CURVES_PLOT = "plots/eval-curves.png"

Curve = Sequence[tuple[int, float]]


def join_uri(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def result_uris(output_uri: str) -> dict[str, Any]:
    """status.results for a sweep whose template writes to ``output_uri``."""
    return {"summaryUri": join_uri(output_uri, SUMMARY_NAME),
            "plotUris": [join_uri(output_uri, OBJECTIVE_PLOT), join_uri(output_uri, CURVES_PLOT)]}


def short_value(value: Any) -> str:
    """A parameter value for a label: numbers short, paths and URIs by their last part."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, str) and "/" in value:
        return value.rstrip("/").rsplit("/", 1)[-1] or value
    return str(value)


def short_parameters(parameters: Mapping[str, Any]) -> str:
    """``training.learningRate=0.001 model.source=hf://org/m`` -> ``learningRate=0.001 source=m``."""
    return " ".join(f"{path.rsplit('.', 1)[-1]}={short_value(v)}" for path, v in parameters.items())


def trial_curve(trial: Mapping[str, Any], curves: Mapping[str, Curve]) -> list[tuple[int, float]]:
    """A trial's eval curve: the one the caller measured, else its intermediate results from status."""
    if trial.get("name") in curves:
        return [(int(s), float(v)) for s, v in curves[trial["name"]]]
    return [(int(r["step"]), float(r["value"])) for r in trial.get("intermediate") or []]


def sweep_document(sweep: Mapping[str, Any], curves: Mapping[str, Curve] | None = None) -> dict[str, Any]:
    """The content of sweep.json: a FineTuneSweep (manifest with status) -> one JSON document."""
    curves = curves or {}
    spec = sweep.get("spec") or {}
    status = sweep.get("status") or {}
    trials = []
    for t in status.get("trials") or []:
        entry = dict(t)
        entry["evalCurve"] = [[s, v] for s, v in trial_curve(t, curves)]
        trials.append(entry)
    objective = {"metric": "evalLoss", "direction": "minimize", **(spec.get("objective") or {})}
    return {
        "apiVersion": sweep.get("apiVersion"),
        "kind": sweep.get("kind"),
        "name": (sweep.get("metadata") or {}).get("name"),
        "algorithm": spec.get("algorithm", "random"),
        "seed": spec.get("seed", 0),
        "objective": objective,
        "parameters": spec.get("parameters") or [],
        "outputUri": ((spec.get("template") or {}).get("output") or {}).get("uri"),
        "phase": status.get("phase"),
        "reason": status.get("reason"),
        "message": status.get("message"),
        "startTime": status.get("startTime"),
        "completionTime": status.get("completionTime"),
        "bestTrial": status.get("bestTrial"),
        "results": status.get("results"),
        "trials": trials,
    }


# ------------------------------------------------------------------ plots
_PHASE_COLORS = {"Succeeded": "tab:blue", "Pruned": "tab:orange", "Failed": "tab:red", "Running": "tab:gray", "Pending": "tab:gray"}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, never a window
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def objective_plot(doc: Mapping[str, Any]) -> bytes:
    """PNG: the objective of each trial (bars by phase; the best one outlined and named)."""
    trials = doc.get("trials") or []
    metric = (doc.get("objective") or {}).get("metric", "evalLoss")
    best = (doc.get("bestTrial") or {}).get("name")
    fig, ax = _figure(max(5.0, 1.1 * len(trials) + 2), 4.2)
    shown = [t for t in trials if t.get("objective") is not None]
    xs = list(range(len(shown)))
    ax.bar(xs, [t["objective"] for t in shown], color=[_PHASE_COLORS.get(t.get("phase", ""), "tab:gray") for t in shown],
           edgecolor=["black" if t.get("name") == best else "none" for t in shown], linewidth=2)
    ax.set_xticks(xs, [f"t{t.get('index')}\n" + short_parameters(t.get("parameters") or {}).replace(" ", "\n") for t in shown],
                  fontsize=7)
    for x, t in zip(xs, shown, strict=True):
        ax.annotate(f"{t['objective']:.4g}", (x, t["objective"]), ha="center", va="bottom", fontsize=7)
    missing = [t for t in trials if t.get("objective") is None]
    title = f"{doc.get('name')}: {metric} per trial ({(doc.get('objective') or {}).get('direction', 'minimize')})"
    if best:
        title += f", best {best}"
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(metric)
    handles = [_legend_patch(phase, color) for phase, color in _PHASE_COLORS.items()
               if phase in {t.get("phase") for t in shown}]
    if handles:
        ax.legend(handles=handles, fontsize=7)
    if missing:
        ax.text(0.99, 0.99, "no objective: " + ", ".join(f"{t.get('name')} ({t.get('phase')})" for t in missing),
                transform=ax.transAxes, ha="right", va="top", fontsize=7)
    return _png(fig)


def _legend_patch(label: str, color: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)


def curves_plot(doc: Mapping[str, Any]) -> bytes:
    """PNG: each trial's eval curve against the training step (pruned trials dashed, the best one thick)."""
    trials = doc.get("trials") or []
    metric = (doc.get("objective") or {}).get("metric", "evalLoss")
    best = (doc.get("bestTrial") or {}).get("name")
    fig, ax = _figure(7.0, 4.5)
    for t in trials:
        curve = t.get("evalCurve") or []
        if not curve:
            continue
        style = "--" if t.get("phase") == "Pruned" else ":" if t.get("phase") == "Failed" else "-"
        ax.plot([p[0] for p in curve], [p[1] for p in curve], style, marker="o", markersize=3,
                linewidth=2.5 if t.get("name") == best else 1.2,
                label=f"t{t.get('index')} {short_parameters(t.get('parameters') or {})} ({t.get('phase')})")
    ax.set_xlabel("step")
    ax.set_ylabel("eval loss" if metric == "evalLoss" else metric)
    values = [v for line in ax.lines for v in line.get_ydata() if v > 0]
    if values and max(values) / min(values) > 5:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")  # losses of trials far apart: each curve's shape stays visible
        plain = FuncFormatter(lambda v, _: f"{v:.3g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.set_title(f"{doc.get('name')}: eval curves", fontsize=9)
    if ax.lines:
        ax.legend(fontsize=7)
    return _png(fig)


# ------------------------------------------------------------------ writing
def _put(uri: str, data: bytes, storage: Mapping[str, Any] | None) -> None:
    """Write one object: a local path (or file://) or s3://bucket/key (credentials from the AWS_* environment)."""
    if uri.startswith("s3://"):
        import boto3  # type: ignore[import-untyped]

        bucket, _, key = uri[len("s3://"):].partition("/")
        storage = storage or {}
        client = boto3.client("s3", endpoint_url=storage.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL"),
                              region_name=storage.get("region") or os.environ.get("AWS_REGION"))
        client.put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_results(sweep: Mapping[str, Any], curves: Mapping[str, Curve] | None = None) -> dict[str, Any]:
    """Write sweep.json and the plots under the template's output.uri; -> status.results (camelCase)."""
    template = (sweep.get("spec") or {}).get("template") or {}
    output = str((template.get("output") or {})["uri"])
    results = result_uris(output)
    with_links = {**sweep, "status": {**(sweep.get("status") or {}), "results": results}}
    doc = sweep_document(with_links, curves)
    storage = template.get("storage")
    _put(results["plotUris"][0], objective_plot(doc), storage)
    _put(results["plotUris"][1], curves_plot(doc), storage)
    _put(results["summaryUri"], (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode(), storage)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kubetune_api.sweep_results SWEEP.json``: write the results of a finished sweep.

    The operator's results Job runs this in the trainer image (matplotlib, boto3,
    the storage Secret's credentials in the environment) on the sweep it mounts
    from a ConfigMap; it prints status.results as one JSON line.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m kubetune_api.sweep_results", description=main.__doc__)
    parser.add_argument("sweep", help="a FineTuneSweep with its status, as JSON")
    args = parser.parse_args(argv)
    try:
        sweep = json.loads(Path(args.sweep).read_text())
        print(json.dumps(write_results(sweep)), flush=True)
    except Exception as e:  # noqa: BLE001 - one line the Job's termination message carries
        print(f"kubetune: error: SweepResultsFailed: {e!r}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
