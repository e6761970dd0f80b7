"""Options of the spec: checked at start-up against what this image has, and the ones that needed care.

- every option the image cannot honour exits 3 at start-up with one line naming the field and the fix;
- prefix tuning with the default gradientCheckpointing: true trains and exports (checkpointing is turned off
  for it, and the log says so), and the TensorBoard tracker writes event files with the final model;
- the MLflow tracker logs the run to a real MLflow tracking server (``mlflow server``, sqlite) on 127.0.0.1;
- rsLoRA's default alpha gives the same scale as plain LoRA's.

The two runs are single-process trainer runs (the option wiring does not depend on the world size).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from trainer_helpers import run_trainer, write_job

from kubetune_api.contract import PERMANENT
from kubetune_api.spec import load_job
from kubetune_trainer import model as model_mod
from kubetune_trainer import preflight, tiny
from kubetune_trainer.train import main


def spec_for(model_dir, train, out, **parts) -> dict:
    spec = {
        "model": {"source": str(model_dir)},
        "dataset": {"train": str(train), "evalFraction": 0.1, "maxSeqLength": 64},
        "method": {"type": "lora", "lora": {"r": 4}},
        "training": {"maxSteps": 2, "globalBatchSize": 2, "microBatchSize": 2, "logEvery": 1},
        "distributed": {"gpusPerNode": 0, "processesPerNode": 1},
        "output": {"uri": str(out)},
    }
    for part, fields in parts.items():
        spec[part] = {**spec.get(part, {}), **fields}
    return spec


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return tiny.write_instruction_dataset(tmp_path_factory.mktemp("opts") / "train.jsonl", n=40)


# ------------------------------------------------------------- start-up checks
UNAVAILABLE = {
    # case: (spec parts, modules this image is made to lack, expected line)
    "wandb": ({"training": {"tracker": "wandb"}}, (),
              "OptionUnavailable: spec.training.tracker: wandb is not installed in this image (wandb)"),
    "tensorboard": ({"training": {"tracker": "tensorboard"}}, ("tensorboard",),
                    "OptionUnavailable: spec.training.tracker: tensorboard is not installed in this image"),
    "mlflow": ({"training": {"tracker": "mlflow"}}, ("mlflow",),
               "OptionUnavailable: spec.training.tracker: mlflow is not installed in this image"),
    "liger": ({"training": {"ligerKernels": True}}, (),
              "OptionUnavailable: spec.training.ligerKernels: the liger-kernel package is not installed"),
    "flash-attn": ({"model": {"attention": "flash_attention_2"}}, (),
                   "OptionUnavailable: spec.model.attention: flash_attention_2 needs the flash-attn package"),
    "bitsandbytes": ({"method": {"type": "qlora", "lora": {"r": 4}}}, ("bitsandbytes",),
                     "OptionUnavailable: spec.method.type: qlora needs bitsandbytes"),
}


@pytest.mark.parametrize("case", list(UNAVAILABLE))
def test_unavailable_option_exits_3_at_start_up(case, tmp_path, tiny_model_dir, train_file, capsys, monkeypatch):
    parts, lacking, line = UNAVAILABLE[case]
    importable = preflight.importable
    monkeypatch.setattr(preflight, "importable", lambda m: m not in lacking and importable(m))
    monkeypatch.setenv("KUBETUNE_SCRATCH", str(tmp_path / "scratch"))
    out = tmp_path / "out"
    rc = main(["--config", str(write_job(tmp_path / "job.yaml", spec_for(tiny_model_dir, train_file, out, **parts)))])
    err = capsys.readouterr().err
    assert rc == PERMANENT
    errors = [x for x in err.splitlines() if x.startswith("kubetune: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"kubetune: error: {line}"), err[-2000:]
    assert not out.exists(), "checked before anything was fetched or written"


def test_all_trackers_the_image_ships_are_installed():
    """TensorBoard and MLflow come with the trainer extra; a spec asking for them passes the check here."""
    for tracker in ("tensorboard", "mlflow"):
        spec = load_job({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                         "spec": spec_for("/m", "/t.jsonl", "/o", training={"tracker": tracker})}).spec
        assert preflight.unavailable_options(spec) == []


# ------------------------------------------------------------- rsLoRA
def test_rslora_default_alpha_scales_like_plain_lora(tokenizer):
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    scales = {}
    for rslora in (False, True):
        spec = load_job({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "spec": spec_for(
            "/m", "/t.jsonl", "/o", method={"type": "lora", "lora": {"r": 16, "useRslora": rslora}})}).spec
        net = get_peft_model(tiny.build_model(tokenizer, hidden=32, layers=1), model_mod.peft_config(spec, "/m"))
        scales[rslora] = [m.scaling["default"] for m in net.modules() if isinstance(m, LoraLayer)]
    assert scales[False] and set(scales[False]) == {2.0}
    assert scales[True] and all(x == pytest.approx(2.0) for x in scales[True])


# ------------------------------------------------------------- prefix tuning and checkpointing
def test_prefix_tuning_turns_requested_checkpointing_off_and_says_so(caplog):
    """gradientCheckpointing: true with prefix tuning would crash the first step: it is turned off, with a warning;
    the memory plan never picks it for prefix tuning."""
    from kubetune_api import memory
    from kubetune_trainer import train

    def spec(method: dict, gc: bool | None):
        d = spec_for("/m", "/t.jsonl", "/o", training={} if gc is None else {"gradientCheckpointing": gc})
        d["method"] = method
        return load_job({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "spec": d}).spec

    prefix = {"type": "prefix-tuning", "prefixTuning": {"numVirtualTokens": 4}}
    with caplog.at_level("WARNING", logger="kubetune"):
        assert train.gradient_checkpointing(spec(prefix, True), True) is False
    assert "gradient checkpointing is turned off for prefix-tuning" in caplog.text
    assert train.gradient_checkpointing(spec({"type": "lora"}, True), True) is True
    assert {s.gradient_checkpointing for s in memory._candidates(
        memory.Job(method="prefix-tuning"), memory.choices_from_spec(spec(prefix, None)))} == {False}


# ------------------------------------------------------------- real runs
def test_prefix_tuning_with_defaults_trains_exports_and_writes_tensorboard_events(tmp_path, tiny_model_dir, train_file):
    spec = spec_for(tiny_model_dir, train_file, tmp_path / "out",
                    method={"type": "prefix-tuning", "prefixTuning": {"numVirtualTokens": 4}},
                    training={"tracker": "tensorboard"})
    spec["method"].pop("lora")
    assert "gradientCheckpointing" not in spec["training"]  # the default: the memory plan decides
    run = run_trainer(tmp_path / "run", spec, nproc=1)
    assert run.rc == 0, run.log[-4000:]
    s = run.summary
    assert s["method"] == "prefix-tuning" and s["steps"] == 2 and s["gradientCheckpointing"] is False
    adapter = json.loads((run.output / "final" / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "PREFIX_TUNING"
    events = list((run.output / "final" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, sorted(str(p) for p in (run.output / "final").rglob("*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (sqlite) on 127.0.0.1, started when this module starts so that it boots
    while the other tests run; the MLflow test waits until it answers."""
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    if not os.path.exists(mlflow):
        pytest.fail("mlflow is not installed; it is in the dev extra (scripts/setup.sh)")
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(root / "mlflow.log", "w")
    p = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                          "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--default-artifact-root", str(root / "artifacts")],
                         stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"

    def ready() -> str:
        deadline = time.monotonic() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    return url
            except OSError:
                pass
            assert p.poll() is None and time.monotonic() < deadline, (root / "mlflow.log").read_text()[-3000:]
            time.sleep(0.5)

    try:
        yield ready
    finally:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()


def test_mlflow_tracker_logs_to_a_real_tracking_server(tmp_path, tiny_model_dir, train_file, mlflow_server, monkeypatch):
    url = mlflow_server()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "kubetune-test")
    spec = spec_for(tiny_model_dir, train_file, tmp_path / "out", training={"tracker": "mlflow"})
    run = run_trainer(tmp_path / "run", spec, nproc=1)
    assert run.rc == 0, run.log[-4000:]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("kubetune-test")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["t"]  # the FineTuneJob's name
    losses = client.get_metric_history(runs[0].info.run_id, "loss")
    assert sorted(m.step for m in losses) == [1, 2]
    assert runs[0].data.params["learning_rate"]


# ------------------------------------------------------------- LoRA next to a classification head saved whole
@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_default_lora_targets_on_distilbert_classifier_train_and_reload(tmp_path, use_dora):
    """DistilBERT's head is pre_classifier + classifier. PEFT saves both whole (its SEQ_CLS ``classifier`` matches
    the end of ``pre_classifier``), yet all-linear used to put LoRA on pre_classifier too, and get_peft_model
    failed ("modules_to_save cannot be applied to modules of type lora.Linear"). With the default targets the
    trainer's model adapts the attention and MLP layers, trains the head whole, takes a step, and the saved adapter
    reloads onto the base model with the same outputs."""
    import torch
    import transformers
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    from kubetune_trainer.data import LabelSpace

    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=120, dim=32, hidden_dim=64, n_layers=2, n_heads=4,
                                           max_position_embeddings=64, num_labels=3)
    base_dir = tmp_path / "base"
    transformers.DistilBertForSequenceClassification(config).save_pretrained(base_dir)
    lora = {"r": 4, "useDora": use_dora}  # targetModules left at its default, [all-linear]
    spec = load_job({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "spec": spec_for(
        base_dir, "/t.jsonl", "/o", method={"type": "lora", "lora": lora})}).spec
    labels = LabelSpace(names=("a", "b", "c"), multi_label=False, source="the test")
    net, info = model_mod.load_model(spec, str(base_dir), "fp32", gradient_checkpointing=False,
                                     task="sequence-classification", labels=labels)

    adapted = {n.removeprefix("base_model.model.") for n, m in net.named_modules() if isinstance(m, LoraLayer)}
    assert {n.split(".")[-1] for n in adapted} == {"q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"}
    saved = {n.removeprefix("base_model.model.") for n, m in net.named_modules() if isinstance(m, ModulesToSaveWrapper)}
    assert saved == {"pre_classifier", "classifier"}
    h = config.dim
    assert info.n_trainable == sum(p.numel() for p in net.parameters() if p.requires_grad) > (h * h + h) + (h * 3 + 3)

    net.train()
    ids = torch.randint(3, 120, (4, 10))
    before = net.base_model.model.pre_classifier.modules_to_save["default"].weight.detach().clone()
    loss = net(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 2, 1])).loss
    loss.backward()
    torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2).step()
    assert not torch.equal(before, net.base_model.model.pre_classifier.modules_to_save["default"].weight)

    net.eval()
    with torch.no_grad():
        want = net(input_ids=ids).logits
    net.save_pretrained(tmp_path / "adapter")
    base = transformers.AutoModelForSequenceClassification.from_pretrained(base_dir)
    again = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, want, atol=1e-6)
