"""`kubetune run` (one machine) and `kubetune render`.

The planning and progress pieces are tested as plain functions; the shortened
quickstart runs the real CLI and the real trainer (tiny model instead of
SmolLM2, a few steps) on the bundled quickstart data, is stopped with Ctrl-C
after a committed checkpoint, and resumes when run again.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubetune_api import spec as api
from kubetune_operator import localrun as local

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart-cpu.yaml"
KUBETUNE = [sys.executable, "-m", "kubetune_operator.cli"]


def _job(**dist) -> api.FineTuneJob:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["distributed"].update(dist)
    doc["spec"]["training"]["globalBatchSize"] = 16
    doc["spec"]["training"]["microBatchSize"] = 1
    return api.load_job(doc)


# ------------------------------------------------------------------ planning
def test_nodes_become_torchrun_node_groups_with_a_static_rendezvous_on_localhost(tmp_path):
    plan = local.plan_run(_job(nodes=2, processesPerNode=2), tmp_path / "run", tmp_path / "scratch", gpus=[], cpu_count=8, master_port=29555)
    assert [g.rank for g in plan.groups] == [0, 1] and not plan.use_gpus and plan.threads_per_proc == 2
    cmd = local.torchrun_command(plan, plan.groups[1], python="py")
    assert cmd[:3] == ["py", "-m", "kubetune_trainer.torchrun"]
    assert {"--nnodes=2", "--nproc-per-node=2", "--node-rank=1", "--master-addr=127.0.0.1", "--master-port=29555"} <= set(cmd)
    assert cmd[-4:] == ["-m", "kubetune_trainer", "--config", str(plan.config_path)]
    env = local.node_env(plan, plan.groups[1], base={"PATH": "/bin", "KUBETUNE_REPORTER": "kubernetes"})
    assert env["KUBETUNE_SCRATCH"] == str(tmp_path / "scratch" / "node-1")  # one scratch per "machine"
    assert env["KUBETUNE_PROGRESS_FILE"] == str(plan.progress_path)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["DS_ACCELERATOR"] == "cpu" and env["OMP_NUM_THREADS"] == "2"
    assert "KUBETUNE_REPORTER" not in env  # no cluster to report to


def test_gpus_are_split_between_node_groups_or_cpu_is_used_with_a_note(tmp_path):
    job = _job(nodes=2, gpusPerNode=2)
    plan = local.plan_run(job, tmp_path, tmp_path, gpus=["0", "1", "2", "3"], cpu_count=16, master_port=1)
    assert plan.use_gpus and [g.gpus for g in plan.groups] == [["0", "1"], ["2", "3"]]
    assert local.node_env(plan, plan.groups[1], base={})["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert {"--nnodes=2", "--nproc-per-node=2", "--node-rank=0"} <= set(local.torchrun_command(plan, plan.groups[0]))

    short = local.plan_run(job, tmp_path, tmp_path, gpus=["0"], cpu_count=2, master_port=1)
    assert not short.use_gpus and short.procs_per_node == 2  # same world size, so the batch arithmetic holds
    assert any("1 GPU(s) are visible" in n for n in short.notes)


def _job_with_env(env=None, env_from=None, **spec) -> api.FineTuneJob:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["metadata"]["namespace"] = "ml"
    doc["spec"]["training"].update(globalBatchSize=16, microBatchSize=1)
    doc["spec"].update(spec, env=env or [], envFrom=env_from or [])
    return api.load_job(doc)


WANDB_REF = {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}}


def test_spec_env_values_and_pod_fields_reach_every_node_group(tmp_path):
    job = _job_with_env([
        {"name": "NCCL_DEBUG", "value": "INFO"},
        {"name": "OMP_NUM_THREADS", "value": "3"},  # the manifest beats the shell and the CPU default
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
        {"name": "JOB", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['kubetune.io/job']"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ], podLabels={"team": "nlp"}, distributed={"nodes": 2, "gpusPerNode": 0})
    plan = local.plan_run(job, tmp_path, tmp_path, gpus=[], cpu_count=4, master_port=1, shell_env={}, hostname="box")
    name = job.metadata.name
    for g in plan.groups:
        env = local.node_env(plan, g, base={"OMP_NUM_THREADS": "1", "NCCL_DEBUG": "WARN", "PATH": "/bin"})
        assert env["NCCL_DEBUG"] == "INFO" and env["OMP_NUM_THREADS"] == "3" and env["PATH"] == "/bin"
        assert (env["POD"], env["NS"], env["TEAM"], env["JOB"]) == (f"{name}-{g.rank}", "ml", "nlp", name)
        assert (env["NODE"], env["IP"]) == ("box", "127.0.0.1")
        assert env["KUBETUNE_SCRATCH"] == str(g.scratch)  # kubetune run's own variables still win


def test_secret_references_take_the_shells_variable_or_are_refused_naming_the_field(tmp_path):
    secret = "wandb-" + os.urandom(8).hex()
    optional = {"name": "HF_ENDPOINT_TOKEN", "valueFrom": {"configMapKeyRef": {"name": "hub", "key": "t", "optional": True}}}
    job = _job_with_env([WANDB_REF, optional], env_from=[{"secretRef": {"name": "mlflow-credentials"}, "prefix": "MLFLOW_"}])

    with pytest.raises(local.RunError) as refused:
        local.plan_run(job, tmp_path, tmp_path, gpus=[], cpu_count=2, master_port=1, shell_env={})
    message = str(refused.value)
    assert "spec.env[0].valueFrom.secretKeyRef" in message and "Secret wandb (key api-key)" in message
    assert "Export WANDB_API_KEY in this shell" in message and "optional: true" in message
    assert "HF_ENDPOINT_TOKEN" not in message  # optional: not a problem

    shell = {"WANDB_API_KEY": secret}
    plan = local.plan_run(job, tmp_path, tmp_path, gpus=[], cpu_count=2, master_port=1, shell_env=shell)
    assert local.node_env(plan, plan.groups[0], base=shell)["WANDB_API_KEY"] == secret  # inherited, as exported
    assert "HF_ENDPOINT_TOKEN" not in local.node_env(plan, plan.groups[0], base=shell)
    notes = "\n".join(plan.notes)
    assert "WANDB_API_KEY: taken from this shell's environment (on a cluster: Secret wandb, key api-key)" in notes
    assert "HF_ENDPOINT_TOKEN: not set" in notes and "spec.envFrom[0]: Secret mlflow-credentials (prefix MLFLOW_)" in notes
    assert secret not in notes + repr(plan)  # the plan never holds the value


@pytest.mark.parametrize("var", ["AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "KUBETUNE_SCRATCH"])
def test_variables_kubetune_sets_are_refused_locally_as_on_a_cluster(tmp_path, var):
    job = _job_with_env([{"name": "TEAM", "value": "x"}, {"name": var, "value": "v"}])
    with pytest.raises(local.RunError, match=rf"spec\.env\[1\]\.name: {var} is set by kubetune itself"):
        local.plan_run(job, tmp_path, tmp_path, gpus=[], cpu_count=2, master_port=1, shell_env={})


FAKE_TRAINER = """#!/bin/sh
# Stands in for python -m kubetune_trainer.torchrun: keeps the environment it was given.
env > "$ENV_DUMP_DIR/node-$$.env"
"""


def test_kubetune_run_applies_spec_env_and_prints_no_secret(tmp_path, capsys):
    """The real run path (manifest file, plan, launcher, display, summary) with a stand-in trainer
    that records its environment: spec.env arrives, the Secret-backed variable arrives from the
    shell, and its value is in nothing kubetune run printed or wrote."""
    import io

    secret = "wandb-" + os.urandom(12).hex()
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["env"] = [WANDB_REF, {"name": "WANDB_PROJECT", "value": "llama-lora"}]
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_TRAINER)
    fake.chmod(0o755)
    dumps, run_dir = tmp_path / "dumps", tmp_path / "run"
    dumps.mkdir()
    shell = {"PATH": os.environ["PATH"], "ENV_DUMP_DIR": str(dumps), "WANDB_API_KEY": secret}
    out = io.StringIO()
    rc = local.run(manifest, run_dir=run_dir, scratch=tmp_path / "scratch", python=str(fake), stream=out, env=shell,
                   overrides={"spec.output.uri": str(tmp_path / "out")})
    printed = out.getvalue() + "".join(capsys.readouterr())
    assert rc == 0, printed
    (dump,) = dumps.iterdir()
    got = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert got["WANDB_API_KEY"] == secret and got["WANDB_PROJECT"] == "llama-lora"
    assert "WANDB_API_KEY: taken from this shell's environment" in printed
    written = b"".join(p.read_bytes() for p in run_dir.rglob("*") if p.is_file())
    assert b"llama-lora" in written, "the search reads the run folder (the manifest copy holds the literal value)"
    assert secret not in printed and secret.encode() not in written

    # Not exported: refused before anything starts, naming the field, exit code 2.
    del shell["WANDB_API_KEY"]
    rc = local.run(manifest, run_dir=tmp_path / "run2", python=str(fake), stream=io.StringIO(), env=shell)
    err = capsys.readouterr().err
    assert rc == 2 and "spec.env[0].valueFrom.secretKeyRef: WANDB_API_KEY comes from Secret wandb" in err
    assert not (tmp_path / "run2").exists() and len(list(dumps.iterdir())) == 1


def test_visible_gpus_honours_cuda_visible_devices_without_torch():
    assert local.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert local.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert local.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_manifest_overrides_and_relative_paths(tmp_path):
    overrides = local.parse_overrides(["training.maxSteps=7", "model.source=m/dir", "spec.output.uri=s3://b/p"])
    doc = local.load_manifest(QUICKSTART, overrides, cwd=tmp_path)
    spec = doc["spec"]
    assert spec["training"]["maxSteps"] == 7
    assert spec["model"]["source"] == str(tmp_path / "m" / "dir")
    assert spec["dataset"]["train"] == str(tmp_path / "trainer/kubetune_trainer/data/quickstart/train.jsonl")
    assert spec["output"]["uri"] == "s3://b/p"  # remote URIs untouched
    with pytest.raises(local.RunError, match="KEY=VALUE"):
        local.parse_overrides(["training.maxSteps"])
    bad = local.load_manifest(QUICKSTART, local.parse_overrides(["training.maxSteps=0"]))
    with pytest.raises(local.RunError, match="training.maxSteps"):
        local.validate_manifest(bad)


def test_gang_exit_code():
    assert local.outcome([0, 0]) == 0
    assert local.outcome([75, 75]) == 75  # stopped with a checkpoint
    assert local.outcome([75, 1]) == 1
    assert local.outcome([1, 3]) == 3  # permanent wins
    assert local.outcome([0, None]) == 1  # a node group that never finished


def test_progress_tail_reads_only_complete_lines_and_state_tracks_events(tmp_path):
    path = tmp_path / "p.jsonl"
    tail = local.ProgressTail(path)
    assert tail.read() == []
    path.write_text('{"event": "phase", "phase": "Running"}\n{"step": 0, "totalSteps": 10, "evalLoss": 2.5}\n{"step": 1, "tot')
    state = local.RunState()
    lines = [state.update(r) for r in tail.read()]
    assert lines[0] == "phase: Running" and state.first_eval == (0, 2.5)
    with open(path, "a") as f:
        f.write('alSteps": 10, "loss": 2.0, "tokensPerSecond": 1234.5, "etaSeconds": 75, "percent": 10.0}\n')
        f.write('{"event": "checkpoint", "step": 2, "uri": "s3://b/p/checkpoints/step-000002"}\n')
    recs = tail.read()
    assert [r.get("step") for r in recs] == [1, 2]
    assert state.update(recs[0]) is None
    assert local.progress_line(state.progress) == "step 1/10 (10%) | loss 2.0000 | 1,234 tok/s | ETA 1:15"
    assert "step 2" in state.update(recs[1]) and state.checkpoints[-1]["step"] == 2


# ------------------------------------------------------------------- render
def test_render_prints_what_the_operator_creates_and_it_passes_kubernetes_validate_strict(tmp_path):
    out = subprocess.run([*KUBETUNE, "render", str(QUICKSTART), "-n", "ml"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    objs = list(yaml.safe_load_all(out.stdout))
    kinds = [o["kind"] for o in objs]
    assert kinds.count("Job") == 1 and "ConfigMap" in kinds and "Service" in kinds
    assert all(o["metadata"]["namespace"] == "ml" for o in objs)
    job = next(o for o in objs if o["kind"] == "Job")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 1

    rendered = []
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        r = subprocess.run([*KUBETUNE, "render", str(example)], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0, (example, r.stderr)
        path = tmp_path / f"{example.stem}.yaml"
        path.write_text(r.stdout)
        rendered.append(str(path))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    v = subprocess.run([str(validate), "--strict", "--quiet", *rendered], capture_output=True, text=True, timeout=300)
    assert v.returncode == 0, v.stdout + v.stderr


def test_render_rejects_an_invalid_manifest_with_the_field(tmp_path):
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["training"]["globalBatchSize"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    r = subprocess.run([*KUBETUNE, "render", str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1 and "globalBatchSize" in r.stderr and not r.stdout


# ------------------------------------------------- the shortened quickstart
@pytest.mark.distributed
@pytest.mark.timeout(400)
def test_shortened_quickstart_ctrl_c_checkpoints_and_a_rerun_resumes_to_the_summary(tiny_files, tmp_path):
    """examples/quickstart-cpu.yaml with the tiny model, 40 steps and 2 node groups (instead of SmolLM2, 20, 1)."""
    # Enough steps that training is still running when Ctrl-C arrives after the first
    # commit: with 8, a quiet machine finished all of them (and committed step 8) first.
    steps = 40
    out, run_dir, scratch = tmp_path / "out", tmp_path / "run", tmp_path / "scratch"
    sets = [f"model.source={tiny_files / 'model'}", f"training.maxSteps={steps}", "training.evalEvery=4",
            "training.learningRate=0.01", "output.checkpointEvery=2", "output.keepLast=2",
            "distributed.nodes=2", "training.microBatchSize=2"]
    cmd = [*KUBETUNE, "run", str(QUICKSTART), "--output", str(out), "--run-dir", str(run_dir), "--scratch", str(scratch)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    # 1. Ctrl-C once a checkpoint is committed: the trainer checkpoints again and exits 75.
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    progress = run_dir / "progress.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if progress.exists() and '"event": "checkpoint"' in progress.read_text():
            break
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[0]
    first.send_signal(signal.SIGINT)
    stdout1 = first.communicate(timeout=240)[0]
    assert first.returncode == 75, stdout1
    assert "2 node group(s) x 1 process(es)" in stdout1
    assert (run_dir / "node-1.log").stat().st_size > 0  # the second torchrun node group ran
    assert "stopping: the trainer checkpoints and exits" in stdout1
    assert "Run the same command again to resume" in stdout1
    events1 = [json.loads(line) for line in progress.read_text().splitlines()]
    commits = [e["step"] for e in events1 if e.get("event") == "checkpoint"]
    assert commits and commits[-1] < steps
    assert (out / "checkpoints" / f"step-{commits[-1]:06d}" / "COMMITTED").exists()
    base_eval = next(r["evalLoss"] for r in events1 if "event" not in r and r.get("step") == 0)

    # 2. The same command again resumes from that checkpoint and finishes with a summary.
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    events2 = [json.loads(line) for line in progress.read_text().splitlines()]
    resumed = [e for e in events2 if e.get("event") == "resumed"]
    assert resumed and resumed[0]["step"] == commits[-1], events2
    first_step = next(r["step"] for r in events2 if "event" not in r and r.get("loss") is not None)
    assert first_step == commits[-1] + 1
    summary = json.loads((out / "final" / "summary.json").read_text())
    assert summary["steps"] == steps
    stdout2 = second.stdout
    assert f"resumed from the checkpoint at step {commits[-1]}" in stdout2
    m = re.search(r"eval loss before \(first launch\): ([0-9.]+)\s+after: ([0-9.]+)", stdout2)
    assert m, stdout2
    before, after, line = float(m.group(1)), float(m.group(2)), m.group(0)
    assert before == pytest.approx(base_eval, abs=1e-4) and after == pytest.approx(summary["evalLoss"], abs=1e-4)
    assert after < before, line
    assert f"adapter: {out / 'final' / 'adapter'}" in stdout2 and "wall time" in stdout2

    # 3. What the quickstart prints: `kubetune report` of the output, base vs tuned on the eval tickets
    # (the manifest's evaluation block: 32 rows generated by both models, also across the resume).
    report = subprocess.run([*KUBETUNE, "report", str(out), "--out", str(tmp_path / "report")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    metrics = json.loads((out / "final" / "eval" / "metrics.json").read_text())["sets"]["validation"]
    assert metrics["base"]["generations"] == metrics["tuned"]["generations"] == 32
    for label, key in (("exact match", "exactMatch"), ("JSON field match", "jsonFieldMatch")):
        line = next(l for l in report.stdout.splitlines() if l.startswith("validation") and f" {label} " in f"{l} ")
        assert f"{metrics['base'][key]:.4f}" in line and f"{metrics['tuned'][key]:.4f}" in line, line
    assert summary["evaluation"]["sets"]["validation"]["base"]["loss"] == pytest.approx(base_eval, abs=1e-4)
