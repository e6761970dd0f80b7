"""The memory planner on DistilBERT, ELECTRA (sequence-classification), mT5 (seq2seq, sequence-classification),
T5 v1.1 / FLAN-T5 (their own lm_head) and Pegasus (seq2seq): parameter counts from config.json against the models
transformers builds (tiny configs built for real, published configs on the meta device) and the sizes their authors
publish; trainable counts against PEFT's own; activations against what autograd saves; `kubetune plan` on a
DistilBERT job."""
from __future__ import annotations

import json

import pytest
import yaml
from test_memory_plan_families import _built, _method_pairs, _numel, _peft_trainable

from kubetune_api import memory
from kubetune_api.memory_arch import DistilBertShape, ElectraShape, PegasusShape, T5Shape

# ------------------------------------------------------------------ published configs (the fields that shape the model)
# distilbert/distilbert-base-uncased config.json (Hub). Published: 66M parameters (Sanh et al., 2019, Table 3:
# "DistilBERT 66 [M]"); DistilBertModel counts 66,362,880.
DISTILBERT_BASE = dict(model_type="distilbert", architectures=["DistilBertForMaskedLM"], vocab_size=30522, dim=768,
                       hidden_dim=3072, n_layers=6, n_heads=12, max_position_embeddings=512, sinusoidal_pos_embds=False,
                       dropout=0.1, attention_dropout=0.1, activation="gelu", pad_token_id=0)
# google/electra-base-discriminator config.json (Hub): embedding_size = hidden_size = 768. Published: 110M (Clark et
# al., 2020, Table 1: ELECTRA-Base 110M); ElectraModel counts 108,891,648.
ELECTRA_BASE = dict(model_type="electra", architectures=["ElectraForPreTraining"], vocab_size=30522,
                    embedding_size=768, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
                    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
# google/electra-small-discriminator: embedding 128 projected to hidden 256. Published: 14M (the same table);
# ElectraModel counts 13,483,008 (3.7% under it; with the discriminator's own head, 13,549,057).
ELECTRA_SMALL = dict(ELECTRA_BASE, embedding_size=128, hidden_size=256, num_attention_heads=4, intermediate_size=1024)
# google/mt5-small config.json (Hub): 250,112 tokens, gated-GELU, an lm_head of its own (tie_word_embeddings false).
# Published: 300M (Xue et al., 2021, the table of model sizes: "Small 300M"); 300,176,768 is also what transformers 4
# counts for the published weights, lm_head included.
MT5_SMALL = dict(model_type="mt5", architectures=["MT5ForConditionalGeneration"], vocab_size=250112, d_model=512,
                 d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6, relative_attention_num_buckets=32,
                 feed_forward_proj="gated-gelu", dropout_rate=0.1, is_encoder_decoder=True, tie_word_embeddings=False,
                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
# google/mt5-base: 580M in the same table
MT5_BASE = dict(MT5_SMALL, d_model=768, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12)
# google/pegasus-large config.json (Hub). Published: 568M (Zhang et al., 2020, section 6: "PEGASUS_LARGE ... 568M
# parameters").
PEGASUS_LARGE = dict(model_type="pegasus", architectures=["PegasusForConditionalGeneration"], vocab_size=96103,
                     d_model=1024, encoder_layers=16, decoder_layers=16, encoder_attention_heads=16,
                     decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
                     max_position_embeddings=1024, scale_embedding=True, activation_function="relu", dropout=0.1,
                     attention_dropout=0.1, activation_dropout=0.1, is_encoder_decoder=True, pad_token_id=0,
                     eos_token_id=1, decoder_start_token_id=0)

# ------------------------------------------------------------------ tiny configs (built for real in the tests)
TINY_DISTILBERT = dict(model_type="distilbert", vocab_size=600, dim=64, hidden_dim=128, n_layers=2, n_heads=4,
                       max_position_embeddings=130, pad_token_id=0)
TINY_ELECTRA = dict(model_type="electra", vocab_size=600, embedding_size=32, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=128, max_position_embeddings=130, type_vocab_size=2)
TINY_MT5 = dict(model_type="mt5", vocab_size=700, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=3,
                num_heads=4, feed_forward_proj="gated-gelu", is_encoder_decoder=True, tie_word_embeddings=False,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
TINY_PEGASUS = dict(model_type="pegasus", vocab_size=600, d_model=64, encoder_layers=2, decoder_layers=3,
                    encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=96,
                    max_position_embeddings=130, is_encoder_decoder=True, scale_embedding=True, pad_token_id=0,
                    eos_token_id=1, decoder_start_token_id=0)


def _loaded(config: dict, task: str, tmp_path, num_labels: int = 3):
    """The model the trainer gets from a checkpoint of ``config`` (from_pretrained). For an mT5 with
    tie_word_embeddings false, the checkpoint keeps an lm_head of its own, as the published mT5 weights do
    (transformers 5's from_config ties it; from_pretrained leaves the two untied when their values differ)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    model = _built(config, task, num_labels)
    if task != "seq2seq" or config.get("tie_word_embeddings", True):
        return model
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    state["lm_head.weight"] = torch.randn_like(state["shared.weight"])
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_labels": num_labels}))
    loaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is not loaded.shared.weight
    return loaded


def _check_methods(shape, model_factory, task_type: str, targets, refused: dict[str, tuple[type, str]]):
    """Every method of _method_pairs: the planner's trainable count equals PEFT's; the ``refused`` ones (name ->
    PEFT's exception and the planner's message) fail in both."""
    for what, (pc, job) in _method_pairs(task_type, targets).items():
        if what in refused:
            error, message = refused[what]
            with pytest.raises(memory.PlanError, match=message):
                memory.count_parameters(shape, job)
            with pytest.raises(error):
                _peft_trainable(model_factory(), pc)
            continue
        assert memory.count_parameters(shape, job).trainable == _peft_trainable(model_factory(), pc), what


# ------------------------------------------------------------------ DistilBERT
@pytest.mark.parametrize("config", [TINY_DISTILBERT, dict(TINY_DISTILBERT, sinusoidal_pos_embds=True)],
                         ids=["learned positions", "sinusoidal positions"])
def test_distilbert_counts_match_transformers_and_peft(config):
    """DistilBertForSequenceClassification: pre_classifier + classifier, both saved whole by PEFT's SEQ_CLS, and
    LoRA/DoRA all-linear (kept off both by the trainer) on the attention and MLP layers only; prompt and prefix
    tuning and IA3 (no PEFT default for distilbert) refused, as PEFT (0.21) fails on them."""
    shape = memory.shape_from_config(config, "auto", 3)
    assert isinstance(shape, DistilBertShape) and shape.task == "sequence-classification"
    model = _built(config, "sequence-classification", 3)
    assert shape.parameters() == _numel(model)
    # sinusoidal or learned, transformers 5 leaves the position table trainable
    full = memory.count_parameters(shape, memory.Job(method="full"))
    assert full.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    refused = {"ia3 default": (ValueError, "PEFT has no default IA3 modules for distilbert"),
               **{p: (ValueError, f"method.type {p.split()[0]}-tuning fails on a distilbert model")
                  for p in ("prompt 10", "prefix 10", "prefix 10 projected")}}
    _check_methods(shape, lambda: _built(config, "sequence-classification", 3), "SEQ_CLS",
                   [("q_lin", "v_lin"), ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"), ("ffn.lin2",)], refused)
    with pytest.raises(memory.PlanError, match="model.task causal-lm does not fit"):
        memory.shape_from_config(config, "causal-lm")


def test_distilbert_published_size():
    shape = memory.shape_from_config(DISTILBERT_BASE, "sequence-classification", 2)
    assert shape.parameters() == _numel(_built(DISTILBERT_BASE, "sequence-classification", 2, meta=True))
    # DistilBertModel (66,362,880) and the head: pre_classifier 768 x 768 + 768, classifier 768 x 2 + 2
    assert shape.parameters() == 66_362_880 + 768 * 768 + 768 + 768 * 2 + 2
    assert round((shape.parameters() - 768 * 769 - 768 * 2 - 2) / 1e6, 1) == 66.4  # the paper's 66M


# ------------------------------------------------------------------ ELECTRA
@pytest.mark.parametrize("config", [TINY_ELECTRA, dict(TINY_ELECTRA, embedding_size=64)],
                         ids=["embedding 32 projected to 64", "embedding = hidden"])
def test_electra_counts_match_transformers_and_peft(config):
    shape = memory.shape_from_config(config, "auto", 3)
    assert isinstance(shape, ElectraShape) and shape.task == "sequence-classification"
    assert shape.parameters() == _numel(_built(config, "sequence-classification", 3))
    targets = [("query", "value"), ("query", "key", "value", "dense"), ("output.dense",)]
    if config["embedding_size"] != config["hidden_size"]:
        targets.append(("query", "embeddings_project"))
    refused = {"ia3 default": (ValueError, "PEFT has no default IA3 modules for electra")}
    _check_methods(shape, lambda: _built(config, "sequence-classification", 3), "SEQ_CLS", targets, refused)
    with pytest.raises(memory.PlanError, match="model.task causal-lm does not fit"):
        memory.shape_from_config(config, "causal-lm")


def test_electra_published_sizes():
    """electra-base-discriminator (110M) and electra-small-discriminator (14M, embeddings projected 128 -> 256):
    the classifier transformers builds, and the discriminator body the paper counts."""
    for config, body, published in ((ELECTRA_BASE, 108_891_648, 110e6), (ELECTRA_SMALL, 13_483_008, 14e6)):
        shape = memory.shape_from_config(config, "sequence-classification", 2)
        h = config["hidden_size"]
        assert shape.parameters() == _numel(_built(config, "sequence-classification", 2, meta=True))
        assert shape.parameters() == body + h * h + h + h * 2 + 2  # + classifier.dense and out_proj
        assert abs(body - published) / published < 0.04


# ------------------------------------------------------------------ mT5
@pytest.mark.parametrize("config, task", [
    (TINY_MT5, "seq2seq"), (TINY_MT5, "sequence-classification"),
    (dict(TINY_MT5, tie_word_embeddings=True), "seq2seq"),
], ids=["seq2seq, own lm_head", "classifier", "seq2seq, tied"])
def test_mt5_counts_match_transformers_and_peft(config, task, tmp_path):
    shape = memory.shape_from_config(config, task, 3)
    assert isinstance(shape, T5Shape) and shape.model_type == "mt5" and shape.task == task
    model = _loaded(config, task, tmp_path)
    assert shape.parameters() == _numel(model)
    targets = [("q", "v"), ("q", "k", "v", "o", "wi_0", "wi_1", "wo"), ("EncDecAttention.q", "wo")]
    task_type = "SEQ_2_SEQ_LM" if task == "seq2seq" else "SEQ_CLS"
    _check_methods(shape, lambda: _loaded(config, task, tmp_path), task_type, targets, {})
    with pytest.raises(memory.PlanError, match="model.task causal-lm does not fit"):
        memory.shape_from_config(config, "causal-lm")


def test_mt5_published_sizes():
    """mt5-small (300M) and mt5-base (580M): their own lm_head (250,112 x d_model) is most of the difference from
    the tied model transformers 5 builds from the config alone (from_config), which the test checks too."""
    for config, published in ((MT5_SMALL, 300e6), (MT5_BASE, 580e6)):
        shape = memory.shape_from_config(config)
        assert shape.task == "seq2seq"
        tied = _numel(_built(config, "seq2seq", meta=True))
        assert shape.parameters() == tied + 250112 * config["d_model"]
        assert abs(shape.parameters() - published) / published < 0.01
    assert memory.shape_from_config(MT5_SMALL).parameters() == 300_176_768
    cls = memory.shape_from_config(MT5_SMALL, "sequence-classification", 2)
    assert cls.parameters() == _numel(_built(MT5_SMALL, "sequence-classification", 2, meta=True))


# ------------------------------------------------------------------ T5 v1.1 and FLAN-T5: an lm_head of their own
# google/t5-v1_1-small config.json (Hub): gated-GELU, d_kv x heads != d_model, tie_word_embeddings false (the
# checkpoint holds lm_head.weight apart from shared.weight). Published: 77M parameters (its Hub page).
T5_V11_SMALL = dict(model_type="t5", architectures=["T5ForConditionalGeneration"], vocab_size=32128, d_model=512,
                    d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6,
                    relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", dropout_rate=0.1,
                    is_encoder_decoder=True, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                    decoder_start_token_id=0)
# google/flan-t5-base config.json (Hub): T5 v1.1 at base size. Published: 248M parameters (its Hub page).
FLAN_T5_BASE = dict(T5_V11_SMALL, d_model=768, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12)
TINY_T5_V11 = dict(model_type="t5", vocab_size=700, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=3,
                   num_heads=4, feed_forward_proj="gated-gelu", is_encoder_decoder=True, tie_word_embeddings=False,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


@pytest.mark.parametrize("config", [TINY_T5_V11, dict(TINY_T5_V11, tie_word_embeddings=True)],
                         ids=["own lm_head", "tied"])
def test_t5_lm_head_as_from_pretrained_loads_it(config, tmp_path):
    """A T5 checkpoint whose config.json says tie_word_embeddings false and which holds its own lm_head (as
    t5-v1_1 and flan-t5 do), loaded with from_pretrained as the trainer loads it: the planner counts the lm_head
    (vocabulary x d_model) apart from the shared embedding; tied when config.json says so or says nothing."""
    shape = memory.shape_from_config(config)
    assert isinstance(shape, T5Shape) and shape.model_type == "t5" and shape.task == "seq2seq"
    assert shape.tied == config["tie_word_embeddings"]
    model = _loaded(config, "seq2seq", tmp_path)
    assert shape.parameters() == _numel(model)
    full = memory.count_parameters(shape, memory.Job(method="full"))
    assert full.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    _check_methods(shape, lambda: _loaded(config, "seq2seq", tmp_path), "SEQ_2_SEQ_LM",
                   [("q", "v"), ("wi_0", "wi_1", "wo"), ("EncDecAttention.q", "wo")], {})
    untied = {k: v for k, v in config.items() if k != "tie_word_embeddings"}
    assert memory.shape_from_config(untied).tied  # T5Config's default


def test_t5_v1_1_published_sizes():
    """t5-v1_1-small (77M) and flan-t5-base (248M): their lm_head (32,128 x d_model) on top of the tied model
    transformers 5 builds from the config alone (meta device)."""
    for config, published, exact in ((T5_V11_SMALL, 77e6, 76_961_152), (FLAN_T5_BASE, 248e6, 247_577_856)):
        shape = memory.shape_from_config(config)
        tied = _numel(_built(config, "seq2seq", meta=True))
        assert shape.parameters() == tied + 32128 * config["d_model"] == exact
        assert abs(shape.parameters() - published) / published < 0.01


# ------------------------------------------------------------------ Pegasus
@pytest.mark.parametrize("config", [TINY_PEGASUS, dict(TINY_PEGASUS, tie_word_embeddings=False)],
                         ids=["tied", "untied"])
def test_pegasus_counts_match_transformers_and_peft(config):
    """PegasusForConditionalGeneration: the sinusoidal position tables are parameters that never train (full
    fine-tuning trains the rest); no classifier in transformers, so sequence-classification is refused."""
    shape = memory.shape_from_config(config)
    assert isinstance(shape, PegasusShape) and shape.task == "seq2seq"
    model = _built(config, "seq2seq")
    assert shape.parameters() == _numel(model)
    full = memory.count_parameters(shape, memory.Job(method="full"))
    assert full.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad) < full.total
    targets = [("q_proj", "v_proj"), ("k_proj", "out_proj", "fc1", "fc2"), ("encoder_attn.q_proj", "fc2")]
    refused = {"ia3 default": (ValueError, "PEFT has no default IA3 modules for pegasus")}
    _check_methods(shape, lambda: _built(config, "seq2seq"), "SEQ_2_SEQ_LM", targets, refused)
    with pytest.raises(memory.PlanError, match="model.task sequence-classification does not fit"):
        memory.shape_from_config(config, "sequence-classification")


def test_pegasus_published_size():
    shape = memory.shape_from_config(PEGASUS_LARGE)
    assert shape.parameters() == _numel(_built(PEGASUS_LARGE, "seq2seq", meta=True))
    assert shape.parameters() == 570_797_056  # the paper's 568M within 0.5%
    assert abs(shape.parameters() - 568e6) / 568e6 < 0.005
    assert shape.frozen_parameters() == 2 * 1024 * 1024  # the two sinusoidal tables


@pytest.mark.parametrize("repo, config", [
    ("distilbert/distilbert-base-uncased", DISTILBERT_BASE), ("distilbert-base-uncased", DISTILBERT_BASE),
    ("google/electra-base-discriminator", ELECTRA_BASE), ("google/mt5-small", MT5_SMALL),
    ("google/pegasus-large", PEGASUS_LARGE),
])
def test_built_in_configs_give_the_published_shapes(repo, config):
    """Offline, hf:// sources of these models plan from built-in copies of their config.json: the same shape as the
    published config above (same parameters, same activation estimate)."""
    known = memory.known_config(repo)
    assert known is not None
    a, b = memory.shape_from_config(known), memory.shape_from_config(config)
    assert a.parameters() == b.parameters()
    job = memory.Job(seq_length=512)
    assert a.activation_bytes(job, 2, 2, False) == b.activation_bytes(job, 2, 2, False)


# ------------------------------------------------------------------ activations against autograd
SMALL_DISTILBERT = dict(model_type="distilbert", vocab_size=1000, dim=96, hidden_dim=384, n_layers=2, n_heads=4,
                        max_position_embeddings=256, pad_token_id=0)
SMALL_ELECTRA = dict(model_type="electra", vocab_size=1000, embedding_size=48, hidden_size=96, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=384, max_position_embeddings=256, pad_token_id=0)
SMALL_MT5 = dict(model_type="mt5", vocab_size=4000, d_model=96, d_kv=24, d_ff=256, num_layers=2, num_heads=4,
                 feed_forward_proj="gated-gelu", is_encoder_decoder=True, tie_word_embeddings=False, pad_token_id=0,
                 eos_token_id=1, decoder_start_token_id=0)
SMALL_PEGASUS = dict(model_type="pegasus", vocab_size=1000, d_model=96, encoder_layers=2, decoder_layers=2,
                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
                     max_position_embeddings=256, is_encoder_decoder=True, scale_embedding=True, pad_token_id=0,
                     eos_token_id=1, decoder_start_token_id=0)


@pytest.mark.parametrize("config, task, method", [
    pytest.param(dict(SMALL_DISTILBERT, dropout=0.0, attention_dropout=0.0), "sequence-classification", "full",
                 id="distilbert, no dropout"),
    pytest.param(SMALL_DISTILBERT, "sequence-classification", "full", id="distilbert, its dropouts"),
    pytest.param(SMALL_DISTILBERT, "sequence-classification", "lora", id="distilbert lora"),
    pytest.param(SMALL_ELECTRA, "sequence-classification", "full", id="electra, projected embeddings"),
    pytest.param(dict(SMALL_ELECTRA, embedding_size=96, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                 "sequence-classification", "lora", id="electra lora, no dropout"),
    pytest.param(SMALL_MT5, "seq2seq", "full", id="mt5 seq2seq"),
    pytest.param(SMALL_MT5, "seq2seq", "lora", id="mt5 seq2seq lora"),
    pytest.param(SMALL_MT5, "sequence-classification", "full", id="mt5 classifier"),
    pytest.param(SMALL_PEGASUS, "seq2seq", "full", id="pegasus, PegasusConfig defaults"),
    pytest.param(dict(SMALL_PEGASUS, activation_function="relu", attention_dropout=0.1, activation_dropout=0.1),
                 "seq2seq", "lora", id="pegasus lora, pegasus-large's relu and dropouts"),
])
def test_activations_match_the_tensors_autograd_saves(config, task, method):
    """The activation term (CPU, no checkpointing) against the bytes autograd keeps (saved-tensor hooks), the
    seq2seq log-softmax over the vocabulary added (the logits term counts it); within 10%, as the other families."""
    import peft
    import torch
    from test_memory_plan_arch import _saved_bytes

    from kubetune_trainer import model as model_mod

    mb, seq, vocab = 2, 128, config["vocab_size"]
    model = _built(config, task, 2)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (mb, seq), generator=g)
    ids[:, -1] = config.get("eos_token_id") or 2  # one EOS per row, last (mT5's classifier pools it)
    labels = torch.randint(3, vocab, (mb, seq), generator=g) if task == "seq2seq" else torch.randint(0, 2, (mb,))
    if method == "lora":  # all-linear, as the trainer wraps the model
        model = model_mod.with_adapter(model, peft.LoraConfig(
            task_type="SEQ_2_SEQ_LM" if task == "seq2seq" else "SEQ_CLS", r=16, lora_dropout=0.05,
            target_modules="all-linear"))
    measured = _saved_bytes(model, input_ids=ids, labels=labels)
    shape = memory.shape_from_config(config, task, 2)
    job = memory.Job(method=method, precision="fp32", seq_length=seq, device="cpu")
    kept, _ = shape.activation_bytes(job, mb, 4, False)
    logits = mb * seq * vocab * 4 if task == "seq2seq" else 0
    assert kept + logits == pytest.approx(measured, rel=0.10)


# ------------------------------------------------------------------ kubetune plan
def test_plan_prints_the_table_for_a_distilbert_job(tmp_path):
    """`kubetune plan` on a DistilBERT classifier (distilbert-base-uncased's config.json next to the manifest),
    full fine-tuning, LoRA on named layers and on all-linear (the trainer's default targets)."""
    from test_memory_plan import _kubetune
    from test_memory_plan_arch import _manifest

    full = _manifest(tmp_path / "full", DISTILBERT_BASE, "auto", "full", format="classification",
                     labels=["neg", "neu", "pos"])
    res = _kubetune("plan", full, "--gpu", "T4")
    assert res.returncode == 0, res.stdout + res.stderr
    n = memory.shape_from_config(DISTILBERT_BASE, "sequence-classification", 3).parameters()
    for word in ("model: distilbert, 0.067B parameters (sequence-classification; 6 layers, hidden 768, vocabulary "
                 "30522, 3 classes)", f"method full: {n:,} trainable", "weights", "activations", "<- peak",
                 "memory (T4)", "fit: yes"):
        assert word in res.stdout, (word, res.stdout)
    lora = _manifest(tmp_path / "lora", DISTILBERT_BASE, "auto", "lora", format="classification", labels=["a", "b"])
    doc = yaml.safe_load(open(lora))
    doc["spec"]["method"]["lora"] = {"r": 8, "targetModules": ["q_lin", "v_lin"]}
    open(lora, "w").write(yaml.safe_dump(doc))
    res = _kubetune("plan", lora, "--gpu", "T4")
    assert res.returncode == 0, res.stdout + res.stderr
    # LoRA r8 on q_lin and v_lin of 6 layers; pre_classifier and the 2-class classifier trained whole
    trainable = 6 * 2 * 8 * (768 + 768) + (768 * 768 + 768) + (768 * 2 + 2)
    assert f"method lora: {trainable:,} trainable" in res.stdout and "fit: yes" in res.stdout, res.stdout
    doc["spec"]["method"]["lora"] = {"r": 8, "targetModules": ["all-linear"]}
    open(lora, "w").write(yaml.safe_dump(doc))
    res = _kubetune("plan", lora, "--gpu", "T4")
    assert res.returncode == 0, res.stdout + res.stderr
    # r8 on q_lin, k_lin, v_lin, out_lin (768 x 768), lin1 (768 x 3072) and lin2 (3072 x 768) of 6 layers; the
    # head (pre_classifier, classifier) trained whole, without LoRA
    trainable = 6 * 8 * (4 * (768 + 768) + 2 * (768 + 3072)) + (768 * 768 + 768) + (768 * 2 + 2)
    assert f"method lora: {trainable:,} trainable" in res.stdout and "fit: yes" in res.stdout, res.stdout
