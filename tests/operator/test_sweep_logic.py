"""The pure side of FineTuneSweep: search (grid, seeded random/TPE, restart from status), pruning, decide."""
from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from kubetune_api.sweep import EarlyStopping, FineTuneSweepSpec, IntermediateResult, TrialStatus
from kubetune_operator.sweeps import pruning, search
from kubetune_operator.sweeps.decide import SweepObservation, decide

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TEMPLATE = {
    "model": {"source": "hf://org/model"},
    "dataset": {"train": "s3://data-bucket/train.jsonl", "eval": "s3://data-bucket/eval.jsonl"},
    "method": {"type": "lora", "lora": {"r": 8}},
    "training": {"maxSteps": 100, "globalBatchSize": 16, "microBatchSize": 2, "evalEvery": 10},
    "distributed": {"nodes": 1, "gpusPerNode": 1},
    "output": {"uri": "s3://out-bucket/sweeps/s"},
}
LR = {"path": "training.learningRate", "type": "float", "min": 1e-5, "max": 1e-2, "log": True}
RANK = {"path": "method.lora.r", "type": "categorical", "values": [4, 8, 16]}


def spec(**over) -> FineTuneSweepSpec:
    raw = {"template": TEMPLATE, "parameters": [LR, RANK], "algorithm": "random", "maxTrials": 5, "parallelism": 2}
    raw.update(over)
    return FineTuneSweepSpec.model_validate(raw, by_alias=True, by_name=False)


def trial(i, phase="Succeeded", objective=None, inter=(), params=None):
    return TrialStatus(name=f"s-t{i}", index=i, phase=phase, objective=objective,
                       parameters=params or {"training.learningRate": 1e-3 * (i + 1), "method.lora.r": 8},
                       intermediate=[IntermediateResult(step=s, value=v) for s, v in inter])


# ------------------------------------------------------------------ search
def test_grid_enumerates_every_combination_in_order():
    s = spec(algorithm="grid", maxTrials=None, parallelism=1,
             parameters=[{"path": "training.maxSteps", "type": "int", "min": 10, "max": 30, "step": 10}, RANK])
    combos = search.grid(s)
    assert len(combos) == search.grid_size(s) == search.max_trials(s) == 9
    assert combos[:4] == [
        {"training.maxSteps": 10, "method.lora.r": 4}, {"training.maxSteps": 10, "method.lora.r": 8},
        {"training.maxSteps": 10, "method.lora.r": 16}, {"training.maxSteps": 20, "method.lora.r": 4},
    ]
    assert [search.suggest(s, [], i) for i in range(9)] == combos


def test_grid_of_floats_by_step_and_max_trials_cap():
    s = spec(algorithm="grid", maxTrials=2, parallelism=1,
             parameters=[{"path": "training.warmupRatio", "type": "float", "min": 0.0, "max": 0.1, "step": 0.05}])
    assert search.grid_values(s.parameters[0]) == [0.0, 0.05, 0.1]
    assert search.max_trials(s) == 2


@pytest.mark.parametrize("algorithm", ["random", "bayesian"])
def test_suggestions_are_seeded_reproducible_and_in_bounds(algorithm):
    s = spec(algorithm=algorithm, maxTrials=12)
    history = [trial(i, objective=1.0 + i) for i in range(6)]
    first = search.suggest(s, history, 6)
    assert search.suggest(s, copy.deepcopy(history), 6) == first  # a restart rebuilds the same study
    assert 1e-5 <= first["training.learningRate"] <= 1e-2 and first["method.lora.r"] in (4, 8, 16)
    assert search.suggest(s, history, 7) != first  # each trial index has its own draw
    assert search.suggest(spec(algorithm=algorithm, maxTrials=12, seed=1), history, 6) != first


def test_tpe_learns_from_recorded_objectives():
    # Low learning rates were much better: TPE (after its random start-up trials) proposes low ones.
    s = spec(algorithm="bayesian", maxTrials=30, parameters=[LR])
    history = [trial(i, objective=lr * 100, params={"training.learningRate": lr})
               for i, lr in enumerate([1e-5, 2e-5, 5e-3, 8e-3, 1e-2, 3e-5, 6e-3, 9e-3, 4e-5, 7e-3])]
    tpe = [search.suggest(s, history, i)["training.learningRate"] for i in range(10, 20)]
    rnd = [search.suggest(spec(maxTrials=30, parameters=[LR]), history, i)["training.learningRate"] for i in range(10, 20)]
    assert sorted(tpe)[5] < sorted(rnd)[5]
    assert sum(lr < 1e-3 for lr in tpe) >= 7


# ----------------------------------------------------------------- pruning
MEDIAN = EarlyStopping(type="median", min_steps=10, min_trials=2)


@pytest.mark.parametrize(("name", "running", "finished", "rule", "pruned"), [
    ("worse-than-median", [(10, 3.0), (20, 2.9)], 2, MEDIAN, True),
    ("better-than-median", [(10, 1.0), (20, 0.5)], 2, MEDIAN, False),
    ("too-few-finished", [(10, 3.0), (20, 2.9)], 1, MEDIAN, False),
    ("before-min-steps", [(5, 9.0)], 2, MEDIAN, False),
    ("no-rule", [(10, 3.0), (20, 2.9)], 2, EarlyStopping(), False),
], ids=lambda v: v if isinstance(v, str) else "")
def test_median_pruning(name, running, finished, rule, pruned):
    trials = [trial(i, objective=1.0, inter=[(10, 2.0), (20, 1.0), (30, 0.9)]) for i in range(finished)]
    trials.append(trial(9, phase="Running", inter=running))
    assert (trials[-1].name in pruning.to_prune(trials, rule, "minimize")) is pruned


def test_median_pruning_maximize():
    trials = [trial(i, objective=0.9, inter=[(10, 0.8)]) for i in range(2)]
    trials.append(trial(9, phase="Running", inter=[(10, 0.2)]))
    assert list(pruning.to_prune(trials, MEDIAN, "maximize")) == ["s-t9"]
    assert pruning.to_prune(trials, MEDIAN, "minimize") == {}


def test_successive_halving_keeps_the_best_third_at_a_rung():
    rule = EarlyStopping(type="successiveHalving", min_steps=10, reduction_factor=3)
    assert pruning.rungs(rule, 100) == [10, 30, 90]
    others = [trial(i, phase="Running", inter=[(10, v)]) for i, v in enumerate([1.0, 2.0])]
    worst = trial(7, phase="Running", inter=[(10, 5.0)])
    best = trial(8, phase="Running", inter=[(10, 0.5)])
    out = pruning.to_prune([*others, worst, best], rule, "minimize")
    # 4 reached rung 10: keep max(1, 4 // 3) = 1, the 0.5; the others are pruned.
    assert set(out) == {"s-t0", "s-t1", "s-t7"}
    # The first trial at a rung is kept (nothing to compare with yet).
    assert pruning.to_prune([trial(0, phase="Running", inter=[(12, 9.0)])], rule, "minimize") == {}


# ------------------------------------------------------------------ decide
def sweep_obj(status=None, **over):
    raw = {"template": TEMPLATE, "parameters": [LR, RANK], "algorithm": "random", "maxTrials": 3, "parallelism": 2,
           "earlyStopping": {"type": "median", "minSteps": 10, "minTrials": 1}}
    raw.update(over)
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSweep",
            "metadata": {"name": "s", "namespace": "ml", "uid": "sweep-uid", "generation": 1},
            "spec": raw, "status": status or {}}


def child(name, phase="Running", **status):
    return {"metadata": {"name": name, "ownerReferences": [{"uid": "sweep-uid", "controller": True}]},
            "status": {"phase": phase, **status}}


def apply(sweep, decision):
    sweep = copy.deepcopy(sweep)
    sweep["status"] = {**sweep["status"], **decision.status_patch}
    return sweep


def test_first_pass_records_then_creates_parallelism_trials():
    d = decide(SweepObservation(sweep_obj(), {}, NOW))
    names = [m["metadata"]["name"] for m in d.create]
    assert names == ["s-t0", "s-t1"]
    assert [t["name"] for t in d.status_patch["trials"]] == names
    assert d.status_patch["phase"] == "Running" and d.status_patch["progress"] == "0/3"
    m = d.create[0]
    assert m["metadata"]["ownerReferences"][0]["uid"] == "sweep-uid" and m["metadata"]["labels"]["kubetune.io/sweep"] == "s"
    assert m["spec"]["output"]["uri"] == "s3://out-bucket/sweeps/s/trials/s-t0"
    assert m["spec"]["training"]["learningRate"] == d.status_patch["trials"][0]["parameters"]["training.learningRate"]
    assert [e.reason for e in d.events] == ["TrialStarted", "TrialStarted"]


def test_restart_after_status_write_recreates_the_same_trials_and_no_more():
    first = decide(SweepObservation(sweep_obj(), {}, NOW))
    after = apply(sweep_obj(), first)
    # The operator stopped before creating the FineTuneJobs: the next one creates exactly those.
    again = decide(SweepObservation(after, {}, NOW))
    assert again.create == first.create and again.status_patch == {} and again.events == []
    # With both running, nothing to do.
    running = {n: child(n) for n in ("s-t0", "s-t1")}
    d = decide(SweepObservation(after, running, NOW))
    assert d.create == [] and d.suspend == []


def test_trials_finish_prune_and_the_sweep_succeeds_with_best_trial():
    s = apply(sweep_obj(), decide(SweepObservation(sweep_obj(), {}, NOW)))
    s = apply(s, decide(SweepObservation(s, {"s-t0": child("s-t0", progress={"step": 10, "evalLoss": 2.0})}, NOW)))
    kids = {"s-t0": child("s-t0", "Succeeded", progress={"step": 20, "evalLoss": 1.0},
                          output={"metrics": {"evalLoss": 1.0}, "adapterUri": "s3://o/t0/final/adapter"}),
            "s-t1": child("s-t1", progress={"step": 10, "evalLoss": 4.0})}
    d = decide(SweepObservation(s, kids, NOW))
    s = apply(s, d)
    trials = {t["name"]: t for t in s["status"]["trials"]}
    assert trials["s-t0"]["phase"] == "Succeeded" and trials["s-t0"]["objective"] == 1.0
    assert trials["s-t0"]["intermediate"] == [{"step": 10, "value": 2.0}, {"step": 20, "value": 1.0}]
    assert trials["s-t0"]["bestStep"] == 20
    assert trials["s-t1"]["phase"] == "Pruned" and trials["s-t1"]["reason"] == "EarlyStopped"
    assert d.suspend == ["s-t1"] and {e.reason for e in d.events} >= {"TrialSucceeded", "TrialPruned", "TrialStarted"}
    assert s["status"]["bestTrial"]["adapterUri"] == "s3://o/t0/final/adapter"
    assert [m["metadata"]["name"] for m in d.create] == ["s-t2"]
    kids["s-t1"]["status"]["phase"] = "Suspended"
    kids["s-t2"] = child("s-t2", "Succeeded", output={"metrics": {"evalLoss": 0.5}})
    d = decide(SweepObservation(s, kids, NOW))
    s = apply(s, d)
    assert s["status"]["phase"] == "Succeeded" and s["status"]["progress"] == "3/3"
    assert s["status"]["bestTrial"]["name"] == "s-t2" and s["status"]["bestTrial"]["objective"] == 0.5
    assert decide(SweepObservation(s, kids, NOW)).empty  # finished: nothing more, ever


def test_failures_beyond_max_failed_trials_fail_the_sweep_and_stop_the_rest():
    s = apply(sweep_obj(maxFailedTrials=0), decide(SweepObservation(sweep_obj(maxFailedTrials=0), {}, NOW)))
    kids = {"s-t0": child("s-t0", "Failed", reason="BackoffLimitExceeded"), "s-t1": child("s-t1")}
    d = decide(SweepObservation(s, kids, NOW))
    assert d.status_patch["phase"] == "Failed" and d.status_patch["reason"] == "TooManyFailedTrials"
    assert d.suspend == ["s-t1"] and d.create == []


def test_one_failure_within_budget_does_not_fail_the_sweep():
    s = apply(sweep_obj(), decide(SweepObservation(sweep_obj(), {}, NOW)))
    d = decide(SweepObservation(s, {"s-t0": child("s-t0", "Failed", reason="X"), "s-t1": child("s-t1")}, NOW))
    assert apply(s, d)["status"]["phase"] == "Running" and [m["metadata"]["name"] for m in d.create] == ["s-t2"]
    assert apply(s, d)["status"]["trials"][0]["phase"] == "Failed"


def test_invalid_spec_fails_the_sweep_with_the_field():
    bad = sweep_obj(parallelism=0)
    d = decide(SweepObservation(bad, {}, NOW))
    assert d.status_patch["phase"] == "Failed" and d.status_patch["reason"] == "InvalidSpec"
    assert "spec.parallelism" in d.status_patch["message"] and d.create == []


def test_kubetune_render_prints_the_first_trials_of_a_sweep(capsys):
    from pathlib import Path

    import yaml

    from kubetune_api import spec as job_api
    from kubetune_operator.cli import main as kubetune

    example = Path(__file__).resolve().parents[2] / "examples" / "sweep-lora-lr-rank.yaml"
    assert kubetune(["render", str(example)]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in docs] == ["lora-lr-rank-t0", "lora-lr-rank-t1"]  # parallelism 2
    for d in docs:
        job = job_api.load_job(d)  # each a valid FineTuneJob
        assert job.spec.output.uri.endswith(f"/trials/{d['metadata']['name']}")
        assert 2e-5 <= job.spec.training.learning_rate <= 1e-3 and job.spec.method.lora.r in (8, 16, 32, 64)
    assert kubetune(["render", str(example)]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == docs  # seeded: the same trials every time


# ------------------------------------------------------------------ results
FINISHED = {"phase": "Succeeded", "conditions": [{"type": "Complete", "status": "True", "reason": "AllTrialsDone"}],
            "trials": [{"name": "s-t0", "index": 0, "phase": "Succeeded", "objective": 0.5}],
            "bestTrial": {"name": "s-t0", "objective": 0.5}}


def results_job(*conditions):
    return {"metadata": {"name": "s-results"}, "status": {"conditions": [{"type": t, "status": "True", "message": m}
                                                                        for t, m in conditions]}}


@pytest.mark.parametrize(("status", "job", "create", "results", "condition", "event"), [
    (FINISHED, None, True, None, None, None),
    (FINISHED, results_job(), False, None, None, None),  # running
    (FINISHED, results_job(("Complete", "")), False,
     {"summaryUri": "s3://out-bucket/sweeps/s/sweep.json",
      "plotUris": ["s3://out-bucket/sweeps/s/plots/objective.png", "s3://out-bucket/sweeps/s/plots/eval-curves.png"]},
     ("True", "ResultsWritten"), "ResultsWritten"),
    (FINISHED, results_job(("Failed", "BackoffLimitExceeded")), False, None, ("False", "ResultsJobFailed"), "ResultsJobFailed"),
    ({**FINISHED, "results": {"summaryUri": "x"}}, None, False, None, None, None),  # written: never again
    ({**FINISHED, "conditions": [{"type": "ResultsWritten", "status": "False"}]}, None, False, None, None, None),  # failed once: not retried
    ({"phase": "Failed", "reason": "InvalidSpec"}, None, False, None, None, None),  # no trials: nothing to show
], ids=["finished-creates-the-job", "job-running", "job-complete-links-results", "job-failed-says-so", "already-linked",
        "already-failed", "invalid-spec"])
def test_a_finished_sweep_gets_its_results_written_by_a_job_and_linked(status, job, create, results, condition, event):
    d = decide(SweepObservation(sweep_obj(status=copy.deepcopy(status)), {}, NOW, results_by_job=True, results_job=job))
    assert d.create_results is create and d.create == [] and d.suspend == []
    assert d.status_patch.get("results") == results
    got = [(c["status"], c["reason"]) for c in d.status_patch.get("conditions", []) if c["type"] == "ResultsWritten"]
    assert got == ([condition] if condition else [])
    if condition:
        assert [c["type"] for c in d.status_patch["conditions"]] == ["Complete", "ResultsWritten"]  # the sweep's own kept
    assert [e.reason for e in d.events] == ([event] if event else [])
    # kubetune run writes its results itself: decide asks for no Job there.
    assert decide(SweepObservation(sweep_obj(status=copy.deepcopy(status)), {}, NOW, results_job=job)).empty


def test_results_job_runs_the_results_module_in_the_trainer_image_with_the_storage_secret():
    from kubetune_operator.settings import OperatorSettings
    from kubetune_operator.sweeps.results_job import MAX_CONFIG_BYTES, build_results_objects

    sweep = sweep_obj(status=copy.deepcopy(FINISHED))
    sweep["spec"]["template"] = {**TEMPLATE, "storage": {"secretRef": {"name": "s3-creds"}}, "imagePullSecrets": ["regcred"]}
    settings = OperatorSettings(standalone=True, trainer_image="registry/kubetune-trainer:1")
    cm, job = build_results_objects(sweep, settings)
    assert cm["metadata"]["name"] == job["metadata"]["name"] == "s-results"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["ownerReferences"][0]["uid"] == "sweep-uid"
    payload = json.loads(cm["data"]["sweep.json"])
    assert payload["status"]["bestTrial"]["name"] == "s-t0" and payload["spec"]["template"]["output"]["uri"] == "s3://out-bucket/sweeps/s"
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry/kubetune-trainer:1" and c["command"][:3] == ["python", "-m", "kubetune_api.sweep_results"]
    assert {e["name"] for e in c["env"] if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "s3-creds"} == {
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["restartPolicy"] == "Never"
    sweep["spec"]["template"]["image"] = "mine:2"
    assert build_results_objects(sweep, settings)[1]["spec"]["template"]["spec"]["containers"][0]["image"] == "mine:2"
    # A huge study still fits a ConfigMap: the intermediate results are left out.
    sweep["status"]["trials"] = [{"name": f"s-t{i}", "index": i, "phase": "Succeeded", "objective": 1.0,
                                  "intermediate": [{"step": s, "value": 1.0} for s in range(100)]} for i in range(400)]
    big = build_results_objects(sweep, settings)[0]["data"]["sweep.json"]
    assert len(big.encode()) <= MAX_CONFIG_BYTES and json.loads(big)["status"]["trials"][399]["intermediate"] == []
