"""`kubetune run` of a FineTuneSweep: trials on this machine, decided by the operator's own `sweeps.decide`.

Pure pieces first (slots per machine, the manifest, the table, sweep.json and the
plots); then one measured run of the real CLI and the real trainer, the sweep of
docs/sweep.md (scripts/sweep_demo.py builds it): a grid over the learning rate
(one value far too small to learn anything in 12 steps) and over two tiny base
models (a random 1-layer one, and a 2-layer one pre-trained on the task for a few
seconds), 2 trials at once on the 2 cores.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubetune_api import spec as job_api
from kubetune_api import sweep_results as results
from kubetune_operator.localrun import sweep as local_sweep
from kubetune_operator.localrun.display import RunState

ROOT = Path(__file__).resolve().parents[2]
KUBETUNE = [sys.executable, "-m", "kubetune_operator.cli"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TEMPLATE = {
    "model": {"source": "models/small", "dtype": "float32"},
    "dataset": {"train": "data/train.jsonl", "eval": "data/eval.jsonl", "format": "instruction", "maxSeqLength": 64},
    "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["all-linear"]}},
    "training": {"maxSteps": 12, "learningRate": 0.01, "globalBatchSize": 8, "microBatchSize": 8, "precision": "fp32",
                 "evalEvery": 4},
    "distributed": {"nodes": 1, "gpusPerNode": 0},
    "output": {"uri": "out", "checkpointEvery": 100, "keepLast": 1},
}
TINY_LR, GOOD_LR = 1e-7, 0.01


def sweep_doc(**spec) -> dict:
    body = {
        "algorithm": "grid", "parallelism": 2,
        "parameters": [
            {"path": "model.source", "type": "categorical", "values": ["models/small", "models/pretrained"]},
            {"path": "training.learningRate", "type": "categorical", "values": [TINY_LR, GOOD_LR]},
        ],
        "template": json.loads(json.dumps(TEMPLATE)),
    }
    body.update(spec)
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSweep", "metadata": {"name": "lr-and-model"}, "spec": body}


# ------------------------------------------------------------------ pure pieces
@pytest.mark.parametrize(("dist", "gpus", "cpus", "wanted", "parallel", "slot_gpus", "capped"), [
    ({"nodes": 1, "gpusPerNode": 0}, [], 2, 2, 2, [[], []], False),
    ({"nodes": 1, "gpusPerNode": 0}, [], 2, 4, 2, [[], []], True),  # one core per trial process
    ({"nodes": 1, "gpusPerNode": 0, "processesPerNode": 2}, [], 2, 3, 1, [[]], True),
    ({"nodes": 1, "gpusPerNode": 2}, ["0", "1", "2", "3", "4"], 8, 4, 2, [["0", "1"], ["2", "3"]], True),
    ({"nodes": 2, "gpusPerNode": 1}, ["0", "1", "2", "3"], 8, 2, 2, [["0", "1"], ["2", "3"]], False),
    ({"nodes": 1, "gpusPerNode": 2}, ["0"], 4, 3, 2, [[], []], True),  # too few GPUs: CPU, 2 processes a trial
], ids=["cpu-fits", "cpu-capped", "cpu-2-procs", "gpu-split", "gpu-2-nodes", "gpu-missing-falls-back-to-cpu"])
def test_trials_at_once_are_capped_by_the_machine(dist, gpus, cpus, wanted, parallel, slot_gpus, capped):
    training = {**TEMPLATE["training"], "globalBatchSize": 32, "microBatchSize": 4}  # divisible by every world size here
    template = job_api.FineTuneJobSpec.model_validate({**TEMPLATE, "training": training, "distributed": dist}, by_alias=True)
    slots = local_sweep.plan_slots(template, wanted, gpus, cpus)
    assert (slots.parallel, slots.gpus) == (parallel, slot_gpus)
    assert (slots.note is not None) == capped
    assert slots.cpus_per_trial == max(1, cpus // parallel)


def test_sweep_manifest_overrides_go_to_the_template_and_local_paths_become_absolute(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_doc()))
    from kubetune_operator.localrun import parse_overrides

    overrides = parse_overrides(["training.maxSteps=5", "maxTrials=3", "output.uri=s3://b/p"])
    doc = local_sweep.load_sweep_manifest(path, overrides, cwd=tmp_path)
    spec = doc["spec"]
    assert spec["template"]["training"]["maxSteps"] == 5 and spec["maxTrials"] == 3
    assert spec["template"]["output"]["uri"] == "s3://b/p"  # remote: untouched
    assert spec["template"]["model"]["source"] == str(tmp_path / "models" / "small")
    assert spec["parameters"][0]["values"] == [str(tmp_path / "models" / "small"), str(tmp_path / "models" / "pretrained")]
    assert spec["parameters"][1]["values"] == [TINY_LR, GOOD_LR]  # numbers untouched
    assert local_sweep.is_sweep_file(path)

    bad = sweep_doc(parallelism=9, maxTrials=2)
    with pytest.raises(local_sweep.RunError, match="parallelism"):
        local_sweep.validate_sweep(bad)


def _status() -> dict:
    trials = [
        {"name": "s-t0", "index": 0, "parameters": {"training.learningRate": 1e-7, "model.source": "/m/small"}, "phase": "Succeeded",
         "objective": 6.05, "intermediate": [{"step": 4, "value": 6.05}], "outputUri": "/o/trials/s-t0"},
        {"name": "s-t1", "index": 1, "parameters": {"training.learningRate": 0.01, "model.source": "/m/small"}, "phase": "Pruned",
         "objective": 5.9, "intermediate": [{"step": 4, "value": 5.9}]},
        {"name": "s-t2", "index": 2, "parameters": {"training.learningRate": 0.01, "model.source": "/m/pretrained"}, "phase": "Succeeded",
         "objective": 0.41, "intermediate": [{"step": 4, "value": 0.6}, {"step": 8, "value": 0.41}]},
        {"name": "s-t3", "index": 3, "parameters": {"training.learningRate": 0.1, "model.source": "/m/pretrained"}, "phase": "Failed",
         "reason": "TrainerFailed"},
    ]
    return {"phase": "Succeeded", "trials": trials, "bestTrial": {"name": "s-t2", "objective": 0.41, "parameters": trials[2]["parameters"]}}


def test_table_shows_each_trial_with_its_phase_parameters_and_objective_and_marks_the_best():
    lines = local_sweep.table_lines(_status(), runs={}, queued=["s-t3"], metric="evalLoss")
    assert lines[0].split() == ["TRIAL", "PHASE", "PARAMETERS", "STEP", "EVAL", "OBJECTIVE"]
    assert lines[1].split()[:4] == ["s-t0", "Succeeded", "learningRate=1e-07", "source=small"]
    assert lines[3].split()[:3] == ["s-t2", "*", "Succeeded"] and lines[3].endswith("0.4100")
    assert lines[4].split()[:2] == ["s-t3", "Queued"]


def test_at_a_terminal_the_table_is_redrawn_in_place_and_event_lines_go_above_it():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    shown = local_sweep.SweepDisplay(out)
    shown.table(["TRIAL  PHASE", "s-t0   Running"])
    shown.table(["TRIAL  PHASE", "s-t0   Running"])  # unchanged: not drawn again
    assert out.getvalue() == "TRIAL  PHASE\ns-t0   Running\n"
    shown.say("TrialSucceeded: s-t0")  # erases the 2 table lines, prints the event
    shown.table(["TRIAL  PHASE", "s-t0   Succeeded"])
    assert out.getvalue()[len("TRIAL  PHASE\ns-t0   Running\n"):] == (
        "\x1b[2F\x1b[Jkubetune: TrialSucceeded: s-t0\nTRIAL  PHASE\ns-t0   Succeeded\n")

    plain = io.StringIO()  # a pipe or a CI log: the table only when forced (trial events) or every 30 s
    logged = local_sweep.SweepDisplay(plain)
    logged.table(["a"], force=True)
    logged.table(["b"])
    assert plain.getvalue() == "a\n"


def test_sweep_json_and_plots_are_written_under_the_output_and_linked(tmp_path):
    import matplotlib.image

    out = tmp_path / "out"
    sweep = sweep_doc()
    sweep["spec"]["template"]["output"]["uri"] = str(out)
    sweep["status"] = _status()
    curves = {"s-t2": [(0, 2.0), (4, 0.6), (8, 0.41)]}
    res = results.write_results(sweep, curves)
    assert res == {"summaryUri": str(out / "sweep.json"),
                   "plotUris": [str(out / "plots" / "objective.png"), str(out / "plots" / "eval-curves.png")]}
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["results"] == res and doc["bestTrial"]["name"] == "s-t2" and doc["objective"]["metric"] == "evalLoss"
    assert [t["name"] for t in doc["trials"]] == ["s-t0", "s-t1", "s-t2", "s-t3"]
    assert doc["trials"][2]["evalCurve"] == [[0, 2.0], [4, 0.6], [8, 0.41]]  # the measured curve wins
    assert doc["trials"][0]["evalCurve"] == [[4, 6.05]]  # else the intermediate results from status
    for png in res["plotUris"]:
        data = Path(png).read_bytes()
        assert data[:8] == PNG_MAGIC
        height, width, _ = matplotlib.image.imread(png).shape
        assert width > 300 and height > 200


def test_results_go_to_s3_when_the_output_is_s3(s3, monkeypatch):
    from e2e_jobs import BUCKET, KEY_ID, REGION, SECRET

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    sweep = sweep_doc()
    sweep["spec"]["template"]["output"]["uri"] = f"s3://{BUCKET}/sweeps/lr"
    sweep["spec"]["template"]["storage"] = {"endpoint": s3.endpoint, "region": REGION}
    sweep["status"] = _status()
    res = results.write_results(sweep)
    assert res["summaryUri"] == f"s3://{BUCKET}/sweeps/lr/sweep.json"
    assert sorted(s3.keys("sweeps/lr/")) == ["sweeps/lr/plots/eval-curves.png", "sweeps/lr/plots/objective.png", "sweeps/lr/sweep.json"]
    doc = json.loads(s3.client.get_object(Bucket=BUCKET, Key="sweeps/lr/sweep.json")["Body"].read())
    assert doc["results"] == res and doc["bestTrial"]["name"] == "s-t2"
    assert s3.client.get_object(Bucket=BUCKET, Key="sweeps/lr/plots/objective.png")["Body"].read()[:8] == PNG_MAGIC


def test_the_results_job_command_writes_what_its_configmap_holds(tmp_path, capsys):
    """What the operator's results Job runs in the trainer image: python -m kubetune_api.sweep_results <sweep.json>."""
    from kubetune_operator.settings import OperatorSettings
    from kubetune_operator.sweeps.results_job import SWEEP_KEY, build_results_objects

    sweep = sweep_doc()
    sweep["metadata"].update(namespace="ml", uid="u1")
    sweep["spec"]["template"]["output"]["uri"] = str(tmp_path / "out")
    sweep["status"] = _status()
    cm, job = build_results_objects(sweep, OperatorSettings(standalone=True))
    mounted = tmp_path / SWEEP_KEY
    mounted.write_text(cm["data"][SWEEP_KEY])
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1].endswith(f"/{SWEEP_KEY}")
    assert results.main([str(mounted)]) == 0
    assert json.loads(capsys.readouterr().out) == results.result_uris(str(tmp_path / "out"))
    doc = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert doc["bestTrial"]["name"] == "s-t2" and doc["trials"][2]["evalCurve"] == [[4, 0.6], [8, 0.41]]
    assert (tmp_path / "out" / "plots" / "eval-curves.png").read_bytes()[:8] == PNG_MAGIC
    mounted.write_text("{}")  # no template: one error line, exit 1
    assert results.main([str(mounted)]) == 1
    assert capsys.readouterr().err.startswith("kubetune: error: SweepResultsFailed: ")


def test_a_trial_run_reads_as_its_finetunejob_status(tmp_path):
    """Every eval goes to decide one at a time; exit 0 -> Succeeded with the exported metrics; other exits -> Failed."""

    class FakeLauncher:
        def __init__(self, codes):
            self.codes = codes

        def poll(self):
            return self.codes

        def close(self):
            pass

    progress = tmp_path / "progress.jsonl"
    records = [
        {"step": 0, "totalSteps": 8, "evalLoss": 3.0, "loss": None},
        {"step": 4, "totalSteps": 8, "loss": 2.5, "evalLoss": 3.0},
        {"step": 4, "totalSteps": 8, "evalLoss": 2.0, "loss": None},
        {"step": 8, "totalSteps": 8, "evalLoss": 1.5, "loss": None},
        {"event": "exported", "adapterUri": "/o/final/adapter", "summaryUri": "/o/final/summary.json", "metrics": {"evalLoss": 1.5}},
    ]
    progress.write_text("".join(json.dumps(r) + "\n" for r in records))
    plan = type("Plan", (), {"groups": [type("G", (), {"log": tmp_path / "node-0.log"})()]})()
    run = local_sweep.TrialRun(name="s-t0", slot=0, plan=plan, launcher=FakeLauncher([0]),  # type: ignore[arg-type]
                               tail=local_sweep.ProgressTail(progress), state=RunState())
    run.poll()
    assert run.curve == [(0, 3.0), (4, 2.0), (8, 1.5)] and run.rc == 0
    seen = []
    while run.pending:
        status = run.child_status()
        assert status["phase"] == "Running"
        seen.append(status["progress"]["evalLoss"])
        run.pending.popleft()
    assert seen == [3.0, 2.0, 1.5]
    done = run.child_status()
    assert done["phase"] == "Succeeded" and done["output"]["metrics"] == {"evalLoss": 1.5}
    assert done["output"]["adapterUri"] == "/o/final/adapter"

    (tmp_path / "node-0.log").write_text("kubetune: error: DataInvalid: row 3 has no completion\n")
    failed = local_sweep.TrialRun(name="s-t1", slot=0, plan=plan, launcher=FakeLauncher([3]),  # type: ignore[arg-type]
                                  tail=local_sweep.ProgressTail(tmp_path / "none.jsonl"), state=RunState())
    failed.poll()
    assert failed.child_status() | {"completionTime": None} == {
        "phase": "Failed", "progress": {}, "reason": "DataInvalid", "message": "row 3 has no completion", "completionTime": None}


def test_a_resumed_trial_keeps_its_earlier_evals_in_its_curve():
    status = {"trials": [
        {"name": "s-t0", "intermediate": [{"step": 0, "value": 3.0}, {"step": 4, "value": 2.0}, {"step": 8, "value": 1.8}]},
        {"name": "s-t1", "intermediate": [{"step": 0, "value": 3.0}]},
    ]}
    run = type("Run", (), {"curve": [(8, 1.8), (12, 1.5)]})()  # this launch resumed s-t0 at step 8
    assert local_sweep.eval_curves(status, {"s-t0": run}) == {
        "s-t0": [(0, 3.0), (4, 2.0), (8, 1.8), (12, 1.5)], "s-t1": [(0, 3.0)]}


def test_a_rerun_resumes_the_recorded_trials_instead_of_failing_or_repeating_them(tmp_path):
    """After Ctrl-C, status.json holds trials recorded as Running: the rerun starts them again (the trainer resumes
    from their checkpoints) under the same names; decide neither fails them as deleted nor starts them twice."""
    from kubetune_operator.sweeps.decide import SweepObservation, decide

    doc = sweep_doc()
    trials = [
        {"name": "lr-and-model-t0", "index": 0, "phase": "Succeeded", "objective": 6.05,
         "parameters": {"model.source": "models/small", "training.learningRate": TINY_LR}},
        {"name": "lr-and-model-t1", "index": 1, "phase": "Running",
         "parameters": {"model.source": "models/small", "training.learningRate": GOOD_LR}},
    ]
    (tmp_path / "status.json").write_text(json.dumps({"spec": doc["spec"] | {"parallelism": None},
                                                      "status": {"phase": "Running", "trials": trials}}))
    previous = local_sweep._previous_status(tmp_path, doc["spec"] | {"parallelism": 1})  # parallelism may change
    assert previous is not None and [t["phase"] for t in previous["trials"]] == ["Succeeded", "Running"]
    assert local_sweep._previous_status(tmp_path, sweep_doc(seed=5)["spec"]) is None  # another sweep: start over

    slots = local_sweep.Slots(parallel=2, gpus=[[], []], cpus_per_trial=1, note=None)
    sweep = local_sweep.LocalSweep(doc, run_dir=tmp_path, scratch=tmp_path / "scratch", slots=slots, python=sys.executable,
                                   env={}, display=local_sweep.SweepDisplay(sys.stdout), status=previous)
    assert [m["metadata"]["name"] for m in sweep.queued] == ["lr-and-model-t1"]  # started again, same name
    d = decide(SweepObservation(sweep.sweep, sweep.observe(), dt.datetime.now(dt.UTC)))
    sweep.apply(d)
    phases = {t["name"]: t["phase"] for t in sweep.status["trials"]}
    assert phases == {"lr-and-model-t0": "Succeeded", "lr-and-model-t1": "Running", "lr-and-model-t2": "Pending"}
    assert [m["metadata"]["name"] for m in sweep.queued] == ["lr-and-model-t1", "lr-and-model-t2"]  # the next one after it
    assert json.loads((tmp_path / "status.json").read_text())["status"]["trials"][2]["name"] == "lr-and-model-t2"


# ------------------------------------------------------------------ the measured run


@pytest.mark.distributed
@pytest.mark.timeout(400)
def test_kubetune_run_of_a_sweep_picks_the_setting_with_the_lowest_eval_loss_and_writes_the_results(tmp_path):
    """The sweep of docs/sweep.md, built by scripts/sweep_demo.py (models, data, manifest) and run by the real CLI."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.monotonic()
    b = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep_demo.py"), str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert b.returncode == 0, b.stderr
    manifest = Path(b.stdout.strip().splitlines()[-1])
    built = time.monotonic() - t0
    t1 = time.monotonic()
    r = subprocess.run([*KUBETUNE, "run", str(manifest), "--run-dir", "run", "--scratch", "scratch"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=360)
    swept = time.monotonic() - t1
    print(r.stdout)
    print(f"measured: models built in {built:.1f} s, sweep of 4 trials in {swept:.1f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "out"

    # The truth, from each trial's own summary.json (the trainer's final evaluation on the eval set).
    doc = json.loads((out / "sweep.json").read_text())
    by_setting = {}
    for t in doc["trials"]:
        summary = json.loads((out / "trials" / t["name"] / "final" / "summary.json").read_text())
        assert t["phase"] == "Succeeded" and t["objective"] == pytest.approx(summary["evalLoss"], rel=1e-9)
        model = Path(t["parameters"]["model.source"]).name
        by_setting[(model, t["parameters"]["training.learningRate"])] = (t, summary["evalLoss"])
    assert len(by_setting) == 4
    losses = {k: v[1] for k, v in by_setting.items()}
    print("eval loss per (model, learning rate):", {f"{m} lr={lr:g}": round(v, 4) for (m, lr), v in losses.items()})

    # The difference is unambiguous: the tiny rate learns nothing, the good one does, the pretrained model is far ahead.
    for model in ("small", "pretrained"):
        tiny_curve = by_setting[(model, TINY_LR)][0]["evalCurve"]
        good_curve = by_setting[(model, GOOD_LR)][0]["evalCurve"]
        assert tiny_curve[0][0] == 0 and tiny_curve[-1][0] == 12
        assert abs(tiny_curve[-1][1] - tiny_curve[0][1]) < 1e-3, tiny_curve  # nothing learned in 12 steps
        assert good_curve[0][1] - good_curve[-1][1] > 0.02, good_curve  # learned
    assert max(losses[("pretrained", lr)] for lr in (TINY_LR, GOOD_LR)) < 0.5 * min(losses[("small", lr)] for lr in (TINY_LR, GOOD_LR))

    # The sweep picked the truly lowest one, and says so.
    truth = min(losses, key=losses.__getitem__)
    assert truth == ("pretrained", GOOD_LR)
    best = by_setting[truth][0]
    assert doc["bestTrial"]["name"] == best["name"] and doc["phase"] == "Succeeded"
    assert doc["bestTrial"]["adapterUri"] == str(out / "trials" / best["name"] / "final" / "adapter")
    assert f"best trial: {best['name']}  evalLoss={losses[truth]:.6g}" in r.stdout
    assert f"model.source={tmp_path / 'models' / 'pretrained'}, training.learningRate={GOOD_LR}" in r.stdout
    assert f"adapter: {out / 'trials' / best['name'] / 'final' / 'adapter'}" in r.stdout
    assert f"all trials: {out / 'sweep.json'}" in r.stdout
    assert "TRIAL" in r.stdout and "OBJECTIVE" in r.stdout  # the table

    assert f"{min(2, os.cpu_count() or 1)} trial(s) at once" in r.stdout  # parallelism 2, one core per trial
    assert doc["results"] == results.result_uris(str(out))
    for png in doc["results"]["plotUris"]:
        assert Path(png).read_bytes()[:8] == PNG_MAGIC
    status = json.loads((tmp_path / "run" / "status.json").read_text())["status"]
    assert status["results"] == doc["results"] and status["bestTrial"]["name"] == best["name"]
