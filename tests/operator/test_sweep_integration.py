"""The real operator runs a FineTuneSweep on the emulated cluster.

The test plays each trial's trainer: it reports intermediate eval losses in the
trial FineTuneJob's status.progress and, at the end, phase Succeeded with
status.output (what rank 0's reporter writes). The operator's FineTuneJob side
runs too (the trials' batch Jobs are created; nothing runs their pods). The
sweep's results Job is created by the operator; the test runs and completes its
pod as the kubelet would (the Job controller, the emulator's or the test's, marks it Complete).
"""
from __future__ import annotations

import json

import pytest

from support import kubelet
from support.cluster import wait_for
from support.manifests import spec as job_spec

NS = "sweeps"
NAME = "lr"
LRS = [1e-4, 2e-4, 3e-4, 4e-4, 5e-4]


def sweep_manifest():
    template = job_spec("cluster", dataset={"train": "s3://data/train.jsonl", "eval": "s3://data/eval.jsonl"})
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSweep",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "template": template, "algorithm": "grid", "parallelism": 2, "maxFailedTrials": 1,
            "parameters": [{"path": "training.learningRate", "type": "categorical", "values": LRS}],
            "earlyStopping": {"type": "median", "minSteps": 10, "minTrials": 2},
        },
    }


def trials(cluster):
    return {j["metadata"]["name"]: j for j in cluster.list("FineTuneJob", NS, label_selector=f"kubetune.io/sweep={NAME}")}


def sweep_status(cluster):
    return (cluster.get("FineTuneSweep", NS, NAME) or {}).get("status") or {}


def recorded(cluster, name):
    return next((t for t in sweep_status(cluster).get("trials", []) if t["name"] == name), {})


def active(cluster):
    """Trials that would hold GPUs: not finished and not suspended."""
    return sorted(n for n, j in trials(cluster).items()
                  if (j.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and not j["spec"].get("suspend"))


def report(cluster, name, step, eval_loss):
    cluster.patch_status("FineTuneJob", NS, name, {"progress": {"step": step, "evalLoss": eval_loss}})
    wait_for(lambda: any(r["step"] == step for r in recorded(cluster, name).get("intermediate", [])),
             message=f"{name}: intermediate result at step {step} recorded")


def finish(cluster, name, eval_loss):
    cluster.patch_status("FineTuneJob", NS, name, {
        "phase": "Succeeded", "completionTime": "2026-01-01T00:00:00Z",
        "output": {"metrics": {"evalLoss": eval_loss}, "adapterUri": f"s3://out/run/trials/{name}/final/adapter"},
    })
    wait_for(lambda: recorded(cluster, name).get("phase") == "Succeeded", message=f"{name} Succeeded in the sweep")


def wait_trials(cluster, *names):
    return wait_for(lambda: set(trials(cluster)) == set(names) and trials(cluster),
                    message=f"trials {names} (have {sorted(trials(cluster))})")


@pytest.fixture(scope="module")
def namespace(cluster):
    cluster.ensure_namespace(NS)
    return NS


def test_sweep_runs_prunes_survives_a_restart_and_picks_the_best(cluster, namespace, monkeypatch):
    from kubetune_operator.sweeps import handlers

    monkeypatch.setattr(handlers, "RESULTS_POLL_SECONDS", 0.5)
    max_active = 0

    def check_parallelism():
        nonlocal max_active
        now = active(cluster)
        max_active = max(max_active, len(now))
        assert len(now) <= 2, now

    cluster.create(sweep_manifest())
    with cluster.operator(namespaces=(NS,)):
        wait_trials(cluster, "lr-t0", "lr-t1")
        uid = cluster.get("FineTuneSweep", NS, NAME)["metadata"]["uid"]
        for j in trials(cluster).values():
            assert j["metadata"]["ownerReferences"] == [{"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSweep",
                                                         "name": NAME, "uid": uid, "controller": True,
                                                         "blockOwnerDeletion": True}]
        assert trials(cluster)["lr-t1"]["spec"]["training"]["learningRate"] == LRS[1]
        assert trials(cluster)["lr-t1"]["spec"]["output"]["uri"] == "s3://out/run/trials/lr-t1"
        check_parallelism()
        report(cluster, "lr-t0", 10, 2.0)
        report(cluster, "lr-t1", 10, 2.2)
        finish(cluster, "lr-t0", 1.0)
        wait_trials(cluster, "lr-t0", "lr-t1", "lr-t2")
        check_parallelism()
        finish(cluster, "lr-t1", 1.2)
        wait_trials(cluster, "lr-t0", "lr-t1", "lr-t2", "lr-t3")
        check_parallelism()
        assert sweep_status(cluster)["phase"] == "Running" and sweep_status(cluster)["progress"] == "2/5"

    # The operator restarts mid-sweep (two trials running): no trial is started twice.
    with cluster.operator(namespaces=(NS,)):
        report(cluster, "lr-t3", 10, 1.9)
        assert set(trials(cluster)) == {"lr-t0", "lr-t1", "lr-t2", "lr-t3"}
        # lr-t2 is clearly worse than the median of the finished trials at step 10 (2.1): pruned.
        cluster.patch_status("FineTuneJob", NS, "lr-t2", {"progress": {"step": 10, "evalLoss": 5.0}})
        wait_for(lambda: recorded(cluster, "lr-t2").get("phase") == "Pruned", message="lr-t2 pruned")
        assert recorded(cluster, "lr-t2")["reason"] == "EarlyStopped"
        wait_for(lambda: trials(cluster)["lr-t2"]["spec"].get("suspend") is True, message="lr-t2 suspended")
        wait_trials(cluster, "lr-t0", "lr-t1", "lr-t2", "lr-t3", "lr-t4")
        check_parallelism()
        finish(cluster, "lr-t3", 0.8)
        report(cluster, "lr-t4", 10, 1.95)
        finish(cluster, "lr-t4", 0.9)
        status = wait_for(lambda: (lambda s: s if s.get("phase") == "Succeeded" else None)(sweep_status(cluster)),
                          message=f"sweep Succeeded (now {sweep_status(cluster).get('phase')})")
        assert max_active == 2
        assert status["progress"] == "5/5" and status["reason"] == "AllTrialsDone"
        assert {t["name"]: (t["phase"], t["objective"]) for t in status["trials"]} == {
            "lr-t0": ("Succeeded", 1.0), "lr-t1": ("Succeeded", 1.2), "lr-t2": ("Pruned", 5.0),
            "lr-t3": ("Succeeded", 0.8), "lr-t4": ("Succeeded", 0.9),
        }
        assert [t["parameters"]["training.learningRate"] for t in status["trials"]] == LRS
        best = status["bestTrial"]
        assert best["name"] == "lr-t3" and best["objective"] == 0.8 and best["parameters"] == {"training.learningRate": LRS[3]}
        assert best["adapterUri"] == "s3://out/run/trials/lr-t3/final/adapter"
        assert best["outputUri"] == "s3://out/run/trials/lr-t3"
        evs = wait_for(lambda: (lambda e: e if e.count("TrialSucceeded") >= 4 and "SweepSucceeded" in e else None)(
            [e["reason"] for e in cluster.events(NS, NAME)]), message="sweep events")
        assert evs.count("TrialStarted") == 5 and evs.count("TrialPruned") == 1

        # The results: a ConfigMap with the finished sweep and a Job in the trainer image that writes
        # sweep.json and the plots with the template's storage credentials; linked once it completes.
        job = wait_for(lambda: cluster.get("Job", NS, "lr-results"), timeout=20, message="results Job created")
        cm = cluster.get("ConfigMap", NS, "lr-results")
        for obj in (job, cm):
            assert obj["metadata"]["ownerReferences"][0]["uid"] == uid and obj["metadata"]["ownerReferences"][0]["controller"]
        payload = json.loads(cm["data"]["sweep.json"])
        assert payload["status"]["bestTrial"]["name"] == "lr-t3" and len(payload["status"]["trials"]) == 5
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", "kubetune_api.sweep_results", "/etc/kubetune-sweep/sweep.json"]
        secret = sweep_manifest()["spec"]["template"]["storage"]["secretRef"]["name"]
        assert {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e} == {
            "AWS_ACCESS_KEY_ID": secret, "AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": secret}
        assert not sweep_status(cluster).get("results")  # not before the files exist
        pods = [kubelet.run(cluster, p) for p in kubelet.create_pods(cluster, job)]
        kubelet.complete_job(cluster, job, pods)
        linked = wait_for(lambda: sweep_status(cluster).get("results"), timeout=20, message="status.results linked")
        assert linked == {"summaryUri": "s3://out/run/sweep.json",
                          "plotUris": ["s3://out/run/plots/objective.png", "s3://out/run/plots/eval-curves.png"]}
        # The Event follows the status write (Kopf posts Events from a queue of its own).
        wait_for(lambda: "ResultsWritten" in [e["reason"] for e in cluster.events(NS, NAME)], message="ResultsWritten Event")

        # Deleting the sweep deletes its trials (garbage collection by owner reference).
        cluster.delete("FineTuneSweep", NS, NAME)
        wait_for(lambda: cluster.get("FineTuneSweep", NS, NAME) is None, message="sweep deleted")
        wait_for(lambda: not trials(cluster), message=f"trials garbage-collected (left: {sorted(trials(cluster))})")
