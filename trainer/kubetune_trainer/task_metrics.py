"""Loss and evaluation of the seq2seq and sequence-classification tasks (model.task).

Training loss: the Trainer's ``compute_loss_func`` (``loss_function``) sums
the loss over the micro-batch and divides by the Trainer's
``num_items_in_batch`` (target tokens, or examples, over the whole
accumulated batch and all ranks), so every target token (seq2seq) or example
(classification) weighs the same whatever the batch split. Left to the model,
T5 and BERT return a per-micro-batch mean that the Trainer, seeing their
``**kwargs``, would take for an already-normalised sum.

Evaluation, exact over the whole eval set and across ranks (as evaluate.py
does for causal LMs): each rank takes every world-th sample, sums its loss
and counts; one all-reduce of the sums and of the confusion counts gives the
same numbers for any world size or batch size. Ranks with fewer batches run
a dummy batch that counts for nothing, so ZeRO-3's parameter gathers stay in
step.

- sequence-classification: ``eval_loss`` (mean cross-entropy per example; for
  multi-label data the mean binary cross-entropy per class and example),
  ``eval_accuracy`` (multi-label: every class right), ``eval_macro_f1`` (the
  mean F1 over the classes that occur in the references or the predictions,
  as scikit-learn's macro average), and per-class counts (support, predicted,
  correct) for summary.json.
- seq2seq: ``eval_loss`` (mean over target tokens) and ``eval_perplexity``;
  at the end, greedy generation on the first ``evaluation.samples`` eval rows
  (or training.generationEval's) gives ``eval_exact_match`` (whitespace-trimmed) and
  ``eval_rouge_l`` (ROUGE-L F1 over lower-cased whitespace tokens).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from . import data as data_mod
from .evaluate import _all_reduce_sum, _rank_world
from .evaluation import rouge_l  # one ROUGE-L for every task (the rouge-score package's tokenisation)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from .data import LabelSpace

# metric key in the Trainer's logs -> name in status.output.metrics / status.progress.evalMetrics / summary.json
STATUS_NAMES = {
    "eval_accuracy": "accuracy",
    "eval_macro_f1": "macroF1",
    "eval_exact_match": "exactMatch",
    "eval_rouge_l": "rougeL",
}


# ------------------------------------------------------------------ training loss
def loss_function(task: str, multi_label: bool = False) -> Any:
    """The Trainer's ``compute_loss_func`` for a seq2seq or classification model (see the module docstring)."""
    import torch.nn.functional as F

    def seq2seq_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"]
        total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device),
                                ignore_index=data_mod.IGNORE, reduction="sum")
        return total / _items(num_items_in_batch, labels)

    def classification_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"].float()
        labels = labels.to(logits.device)
        if multi_label:
            total = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum")
        else:
            total = F.cross_entropy(logits, labels.long(), ignore_index=data_mod.IGNORE, reduction="sum")
        return total / _items(num_items_in_batch, labels)

    return seq2seq_loss if task == "seq2seq" else classification_loss


def _items(num_items_in_batch: Any, labels: torch.Tensor) -> Any:
    if num_items_in_batch is None:  # no accumulation bookkeeping (e.g. evaluation): this batch's own count
        return max(int((labels != data_mod.IGNORE).sum()), 1)
    return num_items_in_batch


# ------------------------------------------------------------------ evaluation
def _batches(samples: list[dict[str, Any]], collator: Any, batch_size: int, device: Any) -> Any:
    """(batch, real) for this rank's share; every rank yields the same number of batches."""
    rank, world = _rank_world()
    mine = samples[rank::world]
    n_batches = -(-len(samples[0::world]) // batch_size)  # rank 0 has the most
    for b in range(n_batches):
        chunk = mine[b * batch_size:(b + 1) * batch_size]
        batch = collator(chunk or samples[:1])
        yield {k: v.to(device) for k, v in batch.items()}, bool(chunk)


def _forward(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return model(**{k: v for k, v in batch.items() if k != "labels"})["logits"].float()


def classification_metrics(model: torch.nn.Module, samples: list[dict[str, Any]], collator: Any, batch_size: int,
                           device: Any, labels: LabelSpace) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics for the logs, per-class counts for summary.json), exact over the whole eval set."""
    import torch
    import torch.nn.functional as F

    k = len(labels.names)
    was_training = model.training
    model.eval()
    loss_sum, n = 0.0, 0
    exact = 0
    # single-label: confusion[reference][predicted]; multi-label: per class (support, predicted, correct)
    confusion = torch.zeros(k, k, dtype=torch.float64)
    support = torch.zeros(k, dtype=torch.float64)
    predicted = torch.zeros(k, dtype=torch.float64)
    correct = torch.zeros(k, dtype=torch.float64)
    with torch.no_grad():
        for batch, real in _batches(samples, collator, batch_size, device):
            logits = _forward(model, batch)
            if not real:
                continue
            ref = batch["labels"]
            if labels.multi_label:
                ref = ref.float()
                loss_sum += float(F.binary_cross_entropy_with_logits(logits, ref, reduction="sum")) / k
                pred = (logits > 0).float()
                exact += int((pred == ref).all(dim=1).sum())
                support += ref.sum(0).double().cpu()
                predicted += pred.sum(0).double().cpu()
                correct += (pred * ref).sum(0).double().cpu()
            else:
                ref = ref.long()
                loss_sum += float(F.cross_entropy(logits, ref, reduction="sum"))
                pred = logits.argmax(-1)
                exact += int((pred == ref).sum())
                for r, p in zip(ref.tolist(), pred.tolist()):
                    confusion[r, p] += 1
            n += int(ref.shape[0])
    if was_training:
        model.train()
    if not labels.multi_label:
        support, predicted, correct = confusion.sum(1), confusion.sum(0), confusion.diag()
    totals = _all_reduce_sum([loss_sum, n, exact, *support.tolist(), *predicted.tolist(), *correct.tolist()], device)
    loss_sum, n, exact = totals[0], int(totals[1]), totals[2]
    sup, pre, cor = (totals[3 + i * k:3 + (i + 1) * k] for i in range(3))
    f1s = [2 * c / (s + p) for s, p, c in zip(sup, pre, cor) if s + p > 0]
    metrics = {
        "eval_loss": loss_sum / n if n else float("nan"),
        "eval_accuracy": exact / n if n else float("nan"),
        "eval_macro_f1": sum(f1s) / len(f1s) if f1s else float("nan"),
        "eval_examples": n,
    }
    per_class = {name: {"support": int(sup[i]), "predicted": int(pre[i]), "correct": int(cor[i])}
                 for i, name in enumerate(labels.names)}
    return metrics, {"perClass": per_class}


def seq2seq_loss(model: torch.nn.Module, samples: list[dict[str, Any]], collator: Any, batch_size: int,
                 device: Any) -> dict[str, float]:
    """{'eval_loss', 'eval_perplexity', 'eval_tokens'}: mean loss over every target token of the eval set."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch, real in _batches(samples, collator, batch_size, device):
            logits = _forward(model, batch)
            if not real:
                continue
            labels = batch["labels"]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=data_mod.IGNORE, reduction="sum"))
            count += int((labels != data_mod.IGNORE).sum())
    if was_training:
        model.train()
    total, count = _all_reduce_sum([total, count], device)
    loss = total / count if count else float("nan")
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "eval_tokens": int(count)}


def evaluate(model: torch.nn.Module, data: data_mod.PreparedData, collator: Any, batch_size: int,
             device: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """The periodic evaluation of a seq2seq or classification job: (metrics, details)."""
    if data.task == "sequence-classification":
        if data.labels is None:
            raise ValueError("a classification job's PreparedData has no LabelSpace")
        return classification_metrics(model, data.eval, collator, batch_size, device, data.labels)
    return seq2seq_loss(model, data.eval, collator, batch_size, device), {}


# ------------------------------------------------------------------ generation
def seq2seq_generation(model: torch.nn.Module, rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase,
                       samples: int, max_new_tokens: int, device: Any, synced: bool) -> dict[str, float]:
    """Greedy generation on the first ``samples`` eval rows: exact match and ROUGE-L against the targets.

    ``synced`` (ZeRO-3): every rank runs the same number of generate calls (spare ones on the first prompt).
    """
    import torch

    pairs = []
    for row in rows[:samples]:
        try:
            pairs.append(data_mod.seq2seq_pair(row))
        except data_mod.BadRow:
            continue
    if not pairs:
        return {}
    rank, world = _rank_world()
    mine = pairs[rank::world]
    rounds = len(pairs[0::world])
    was_training = model.training
    model.eval()
    exact, rouge = 0.0, 0.0
    with torch.no_grad():
        for i in range(rounds):
            source, ref = mine[i] if i < len(mine) else pairs[0]
            enc = tokenizer(source, add_special_tokens=True, return_tensors="pt").to(device)
            out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=synced,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            if i < len(mine):
                text = tokenizer.decode(out[0], skip_special_tokens=True)
                exact += float(text.strip() == ref.strip())
                rouge += rouge_l(text, ref)
    if was_training:
        model.train()
    exact, rouge, total = _all_reduce_sum([exact, rouge, len(mine)], device)
    return {"eval_exact_match": exact / total, "eval_rouge_l": rouge / total, "eval_generations": int(total)}


# ------------------------------------------------------------------ reporting
def progress_metrics(logs: dict[str, Any]) -> dict[str, float] | None:
    """status.progress.evalMetrics from one evaluation's logs (None when it has no task metric)."""
    out = {name: round(float(logs[key]), 6) for key, name in STATUS_NAMES.items() if logs.get(key) is not None}
    return out or None


def status_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: float(metrics[key]) for key, name in STATUS_NAMES.items() if metrics.get(key) is not None}


def summary_fields(data: data_mod.PreparedData, eval_history: list[dict[str, Any]], metrics: dict[str, Any],
                   details: dict[str, Any]) -> dict[str, Any]:
    """What summary.json adds for the task: the classes, the task metrics before training and at the end."""
    out: dict[str, Any] = {"task": data.task}
    if data.labels is not None:
        out["labels"] = list(data.labels.names)
        out["multiLabel"] = data.labels.multi_label
        out["labelSource"] = data.labels.source
    first = eval_history[0] if eval_history else {}
    for key, name in STATUS_NAMES.items():
        if key in metrics:
            out[name] = metrics[key]
        if key in first:
            out["initial" + name[0].upper() + name[1:]] = first[key]
    out.update(details)
    return out
