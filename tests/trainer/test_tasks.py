"""model.task seq2seq and sequence-classification without a training run: data formats, labels, the
exit-3 error lines, task detection, and the exactness of the task metrics (task_metrics.py)."""
from __future__ import annotations

import json

import pytest
import torch
from trainer_helpers import write_job

from kubetune_api.contract import PERMANENT
from kubetune_api.spec import DatasetSpec
from kubetune_trainer import data, task_metrics, tiny
from kubetune_trainer.train import main


def jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def bert_tok(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


def prepared(tmp_path, rows, tok, task="sequence-classification", head=None, **ds):
    spec = DatasetSpec(train=jsonl(tmp_path / "train.jsonl", rows), eval_fraction=0.0, packing=False, **ds)
    return data.prepare(spec, tok, spec.train, None, 0, packing=False, task=task, head=head)


# ------------------------------------------------------------ classification data
def test_string_labels_sorted_and_stored_by_index(tmp_path, bert_tok):
    rows = [{"text": "the rain", "label": "weather"}, {"text": "pasta", "label": "food"}, {"text": "snow", "label": "weather"}]
    p = prepared(tmp_path, rows, bert_tok)
    assert p.format == "classification" and p.labels.names == ("food", "weather") and not p.labels.multi_label
    assert [s["labels"] for s in p.train] == [1, 0, 1]
    assert p.train[0]["input_ids"][0] == bert_tok.cls_token_id and p.train[0]["input_ids"][-1] == bert_tok.sep_token_id
    assert p.labels.source == "the training data"


def test_dataset_labels_fix_the_order_and_int_labels_index_them(tmp_path, bert_tok):
    rows = [{"text": "a", "label": 2}, {"text": "b", "label": 0}, {"text": "c", "label": "neutral"}]
    p = prepared(tmp_path, rows, bert_tok, labels=["negative", "positive", "neutral"])
    assert p.labels.names == ("negative", "positive", "neutral") and p.labels.source == "dataset.labels"
    assert [s["labels"] for s in p.train] == [2, 0, 2]


def test_text_pairs_get_token_types(tmp_path, bert_tok):
    p = prepared(tmp_path, [{"text": "is it raining", "text_pair": "yes it is", "label": 1},
                            {"text": "x", "text_pair": "y", "label": 0}], bert_tok)
    s = p.train[0]
    assert s["input_ids"].count(bert_tok.sep_token_id) == 2 and set(s["token_type_ids"]) == {0, 1}
    assert p.labels.names == ("0", "1")


def test_label_lists_make_multi_label_data(tmp_path, bert_tok):
    rows = [{"text": "a", "label": ["food", "music"]}, {"text": "b", "label": []}, {"text": "c", "label": "sports"}]
    p = prepared(tmp_path, rows, bert_tok)
    assert p.labels.multi_label and p.labels.names == ("food", "music", "sports")
    assert [s["labels"] for s in p.train] == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    batch = data.TaskCollator(bert_tok, "sequence-classification")(p.train)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (3, 3) and "row" not in batch


def test_long_texts_are_truncated_and_counted(tmp_path, bert_tok):
    rows = [{"text": "word " * 100, "label": "a"}, {"text": "short", "label": "b"}]
    p = prepared(tmp_path, rows, bert_tok, max_seq_length=16)
    assert len(p.train[0]["input_ids"]) == 16 and p.train[0]["input_ids"][-1] == bert_tok.sep_token_id
    assert p.train_stats.truncated == 1


def test_bad_rows_skip_counts_them(tmp_path, bert_tok):
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}, {"text": "c"}, {"text": "d", "label": "x"}]
    p = prepared(tmp_path, rows, bert_tok, bad_rows="skip")
    assert p.train_stats.bad_rows == 1 and "train.jsonl line 3: 'label' is missing" in p.train_stats.bad_row_examples[0]


def test_seq2seq_reads_input_target_and_instruction_rows(tmp_path):
    tok = tiny.build_tokenizer()
    p = prepared(tmp_path, [{"input": "what is one plus one ?", "target": "two"}], tok, task="seq2seq")
    s = p.train[0]
    assert p.format == "seq2seq" and s["labels"][-1] == tok.eos_token_id
    assert tok.decode(s["labels"], skip_special_tokens=True) == "two"
    assert tok.decode(s["input_ids"]) == "what is one plus one ?"
    q = prepared(tmp_path, [{"prompt": "what is one ?", "completion": " one"}], tok, task="seq2seq")
    assert tok.decode(q.train[0]["input_ids"]) == "what is one ?"


def test_seq2seq_collator_builds_decoder_inputs_from_the_labels(tmp_path, tiny_t5_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_t5_dir))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(tiny_t5_dir))
    p = prepared(tmp_path, [{"input": "one two", "target": "three"}, {"input": "red", "target": "green blue cat"}],
                 tok, task="seq2seq")
    batch = data.TaskCollator(tok, "seq2seq", model=model)(p.train)
    labels, dec = batch["labels"], batch["decoder_input_ids"]
    assert (labels[0] == data.IGNORE).any() and dec[0, 0] == model.config.decoder_start_token_id
    real = labels[1] != data.IGNORE
    assert torch.equal(dec[1, 1:][real[:-1]], labels[1, :-1][real[:-1]])  # decoder input = labels shifted right


@pytest.mark.parametrize(("task", "columns", "want"), [
    ("causal-lm", {"text", "label"}, "text"),
    ("sequence-classification", {"text", "label"}, "classification"),
    ("seq2seq", {"input", "target"}, "seq2seq"),
    ("seq2seq", {"prompt", "completion"}, "instruction"),
])
def test_auto_format_follows_the_task(task, columns, want):
    assert data.detect_format(columns, "auto", task) == want


# ------------------------------------------------------------ exit 3, one line
def _spec(model_dir, train, **kw) -> dict:
    spec = {
        "model": {"source": str(model_dir)},
        "dataset": {"train": train, "evalFraction": 0.0, "maxSeqLength": 64},
        "method": {"type": "full"},
        "training": {"maxSteps": 2, "globalBatchSize": 2, "microBatchSize": 1},
        "distributed": {"gpusPerNode": 0, "processesPerNode": 2},
        "output": {"uri": "/tmp/unused-out"},
    }
    for k, v in kw.items():
        spec[k].update(v)
    return spec


CLS_GOOD = [{"text": "pasta", "label": "food"}, {"text": "rain", "label": "weather"}] * 2


def _error_case(name, tmp_path, minilm_dir, tiny_t5_dir, tiny_model_dir, head_dir):
    if name == "unknown label":
        ev = jsonl(tmp_path / "eval.jsonl", [{"text": "goal", "label": "food"}, {"text": "ball", "label": "sports"}])
        spec = _spec(minilm_dir, jsonl(tmp_path / "t.jsonl", CLS_GOOD), dataset={"eval": ev})
        return spec, ("InvalidDataset: eval.jsonl line 2: 'label' 'sports' is not a known class; the classes "
                      "(the training data) are ['food', 'weather']")
    if name == "label index out of range":
        rows = CLS_GOOD + [{"text": "x", "label": 5}]
        spec = _spec(minilm_dir, jsonl(tmp_path / "t.jsonl", [{**r, "label": i % 2} for i, r in enumerate(rows)][:4] + rows[4:]),
                     dataset={"labels": ["food", "weather"]})
        return spec, "InvalidDataset: t.jsonl line 5: 'label' 5 is out of range: 2 classes (0-1) from dataset.labels"
    if name == "missing label":
        spec = _spec(minilm_dir, jsonl(tmp_path / "t.jsonl", [*CLS_GOOD[:2], {"text": "no label"}]))
        return spec, "InvalidDataset: t.jsonl line 3: 'label' is missing"
    if name == "label count vs model head":
        rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": 2}, {"text": "d", "label": 0}]
        spec = _spec(head_dir, jsonl(tmp_path / "t.jsonl", rows))
        return spec, ("InvalidDataset: t.jsonl line 3: 'label': the data has 3 classes (the training data) but the "
                      "model's classification head has 2 (config.json id2label)")
    if name == "missing target":
        rows = [{"input": "a", "target": "b"}, {"input": "c", "target": None}]
        spec = _spec(tiny_t5_dir, jsonl(tmp_path / "t.jsonl", rows))
        return spec, "InvalidDataset: t.jsonl line 2: 'target' must be a string, got NoneType"
    if name == "task does not fit the model":
        spec = _spec(tiny_model_dir, jsonl(tmp_path / "t.jsonl", [{"input": "a", "target": "b"}] * 2),
                     model={"task": "seq2seq"})
        return spec, "InvalidSpec: model.task seq2seq does not fit the model (llama: LlamaForCausalLM)"
    if name == "classification rows for a decoder":
        spec = _spec(tiny_model_dir, jsonl(tmp_path / "t.jsonl", CLS_GOOD), dataset={"format": "classification"})
        return spec, "InvalidSpec: dataset.format is 'classification' but model.task is causal-lm"
    raise AssertionError(name)


ERROR_CASES = ["unknown label", "label index out of range", "missing label", "label count vs model head",
               "missing target", "task does not fit the model", "classification rows for a decoder"]


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory):
    """A tiny BERT saved with a 2-class classification head."""
    from transformers import BertConfig, BertForSequenceClassification

    tok = tiny.build_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, num_labels=2, pad_token_id=tok.pad_token_id)
    d = tmp_path_factory.mktemp("head") / "bert-head"
    BertForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("name", ERROR_CASES)
def test_task_data_errors_exit_3_with_one_line(name, tmp_path, minilm_dir, tiny_t5_dir, tiny_model_dir, head_dir,
                                               capsys, monkeypatch):
    monkeypatch.setenv("KUBETUNE_SCRATCH", str(tmp_path / "scratch"))
    spec, line = _error_case(name, tmp_path, minilm_dir, tiny_t5_dir, tiny_model_dir, head_dir)
    rc = main(["--config", str(write_job(tmp_path / "job.yaml", spec))])
    err = capsys.readouterr().err
    assert rc == PERMANENT
    errors = [x for x in err.splitlines() if x.startswith("kubetune: error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"kubetune: error: {line}"), err[-2000:]


# ------------------------------------------------------------ metrics
class _Lookup(torch.nn.Module):
    """A fixed 'model': logits are a table row chosen by the first token after [CLS]."""

    def __init__(self, k: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(1000, k, generator=g))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return {"logits": self.table[input_ids[:, 1] % 1000]}


def _by_hand(model, samples, k):
    logits = torch.stack([model(torch.tensor([s["input_ids"]]))["logits"][0] for s in samples])
    ref = torch.tensor([s["labels"] for s in samples])
    pred = logits.argmax(-1)
    f1 = []
    for c in range(k):
        tp, fp, fn = int(((pred == c) & (ref == c)).sum()), int(((pred == c) & (ref != c)).sum()), int(((pred != c) & (ref == c)).sum())
        if tp + fp + fn:
            f1.append(2 * tp / (2 * tp + fp + fn))
    loss = float(torch.nn.functional.cross_entropy(logits.detach(), ref))
    return float((pred == ref).float().mean()), sum(f1) / len(f1), loss


def test_classification_metrics_are_exact_for_any_batch_size(tmp_path, bert_tok):
    rows = tiny.TOPICS
    samples_rows = [{"text": f"{w} {i}", "label": t} for i, (t, words) in enumerate(rows.items()) for w in words]
    p = prepared(tmp_path, samples_rows, bert_tok)
    model = _Lookup(len(p.labels.names))
    collate = data.TaskCollator(bert_tok, "sequence-classification")
    accuracy, macro_f1, loss = _by_hand(model, p.train, len(p.labels.names))
    seen = []
    for bs in (1, 5, 64):
        metrics, details = task_metrics.classification_metrics(model, p.train, collate, bs, "cpu", p.labels)
        seen.append(metrics)
        assert metrics["eval_accuracy"] == pytest.approx(accuracy, abs=1e-12)
        assert metrics["eval_macro_f1"] == pytest.approx(macro_f1, abs=1e-12)
        assert metrics["eval_loss"] == pytest.approx(loss, abs=1e-5)
        per = details["perClass"]
        assert sum(c["support"] for c in per.values()) == sum(c["predicted"] for c in per.values()) == len(p.train)
        assert sum(c["correct"] for c in per.values()) == round(accuracy * len(p.train))
    assert seen[0]["eval_accuracy"] == seen[1]["eval_accuracy"] == seen[2]["eval_accuracy"]


def test_rouge_l():
    assert task_metrics.rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert task_metrics.rouge_l("Paris", "paris") == 1.0
    assert task_metrics.rouge_l("rome", "paris") == 0.0
    assert task_metrics.rouge_l("", "") == 1.0 and task_metrics.rouge_l("", "x") == 0.0


def test_seq2seq_loss_function_weighs_every_target_token_alike():
    """Two micro-batches of different target lengths: the summed losses / total tokens equal one big batch's mean."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, -100, -100, -100], [6, 7, 8, 9, 10]])
    f = task_metrics.loss_function("seq2seq")
    n = int((labels != -100).sum())
    split = f({"logits": logits[:1]}, labels[:1], n) + f({"logits": logits[1:]}, labels[1:], n)
    whole = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
    assert float(split) == pytest.approx(float(whole), abs=1e-6)


def test_shipped_topic_data_is_the_generators(tmp_path):
    """examples/bert-classification.yaml's data is exactly what tiny.write_classification_dataset makes."""
    from pathlib import Path

    shipped = Path(tiny.__file__).parent / "data" / "topics"
    for name, n, seed in (("train.jsonl", 192, 0), ("eval.jsonl", 64, 1)):
        made = tiny.write_classification_dataset(tmp_path / name, n=n, seed=seed)
        assert made.read_text() == (shipped / name).read_text()


def test_kubetune_run_prints_accuracy_before_and_after(tmp_path):
    """`kubetune run`'s closing lines show a classification job's accuracy and macro-F1 before and after."""
    from types import SimpleNamespace

    from kubetune_operator.localrun.display import RunState, summary_lines

    (tmp_path / "out" / "final").mkdir(parents=True)
    (tmp_path / "out" / "final" / "summary.json").write_text(json.dumps(
        {"initialEvalLoss": 1.3863, "evalLoss": 0.8726, "initialAccuracy": 0.21875, "accuracy": 1.0,
         "initialMacroF1": 0.1675, "macroF1": 1.0}))
    plan = SimpleNamespace(name="minilm-topics", output_uri=str(tmp_path / "out"), run_dir=tmp_path / "run")
    lines = summary_lines(plan, RunState(), 0, 142.0)
    assert "accuracy before: 0.2188   after: 1.0000" in lines and "macro-F1 before: 0.1675   after: 1.0000" in lines
    assert "eval loss before: 1.3863   after: 0.8726" in lines


def test_multi_label_metrics_and_loss(tmp_path, bert_tok):
    """Multi-label: accuracy counts rows with every class right, F1 per class from the multi-hot counts,
    the loss is the mean binary cross-entropy per class and example, for any batch size."""
    rows = [{"text": f"{w} {i}", "label": [t] + (["music"] if i % 3 == 0 else [])}
            for i, (t, words) in enumerate(tiny.TOPICS.items()) for w in words]
    p = prepared(tmp_path, rows, bert_tok)
    assert p.labels.multi_label and p.labels.names == ("food", "music", "sports", "weather")
    model = _Lookup(4)
    collate = data.TaskCollator(bert_tok, "sequence-classification")
    logits = torch.stack([model(torch.tensor([s["input_ids"]]))["logits"][0] for s in p.train]).detach()
    ref = torch.tensor([s["labels"] for s in p.train])
    pred = (logits > 0).float()
    want_acc = float((pred == ref).all(1).float().mean())
    f1 = [2 * float((pred[:, c] * ref[:, c]).sum()) / float(pred[:, c].sum() + ref[:, c].sum())
          for c in range(4) if pred[:, c].sum() + ref[:, c].sum() > 0]
    want_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, ref))
    for bs in (1, 7):
        metrics, details = task_metrics.classification_metrics(model, p.train, collate, bs, "cpu", p.labels)
        assert metrics["eval_accuracy"] == pytest.approx(want_acc, abs=1e-12)
        assert metrics["eval_macro_f1"] == pytest.approx(sum(f1) / len(f1), abs=1e-12)
        assert metrics["eval_loss"] == pytest.approx(want_loss, abs=1e-5)
        assert details["perClass"]["music"]["support"] == int(ref[:, 1].sum())
    loss = task_metrics.loss_function("sequence-classification", multi_label=True)
    n = ref.numel()  # the Trainer's num_items_in_batch: every (example, class) label
    split = loss({"logits": logits[:5]}, ref[:5], n) + loss({"logits": logits[5:]}, ref[5:], n)
    assert float(split) == pytest.approx(want_loss, abs=1e-6)
