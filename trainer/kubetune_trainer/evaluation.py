"""The final evaluation (``spec.evaluation``): base vs tuned on the same rows, validation and test sets.

For each eval set (the validation set used during training, and the optional
``evaluation.test`` set that only this step sees) and for each model (the base
model before any training step, and the tuned one):

- on every row: loss and perplexity over the completion tokens (the loss
  tokens of training), token accuracy (argmax = next token on those tokens);
- on the first ``evaluation.samples`` rows: an answer generated from the
  prompt (greedy unless ``evaluation.decoding`` says otherwise), scored against
  the reference completion: exact match (whitespace-trimmed), normalised exact
  match (lower case, punctuation and articles dropped, spaces collapsed),
  ROUGE-L F1 (longest common subsequence of lower-cased word tokens, as the
  ``rouge-score`` package tokenises), and, where the reference is a JSON
  object, whether the answer parses as one and which of its fields match.

Exact across ranks: rows are dealt to ranks (row i to rank i mod world), each
row runs alone (batch of one, so no padding or batch neighbour changes its
numbers), and every rank gathers every row's numbers (loss sum in float64,
token counts) back in row order; the metrics are then computed from the rows
in one fixed order, so they are the same for any world size. Ranks with fewer
rows run spare forward/generate calls on row 0 so that ZeRO-3's parameter
gathers stay in step (``generate(synced_gpus=True)`` for the rest).

The base model is the model before any training step. For a new PEFT
adapter that is the tuned model with its adapter disabled (PEFT's
``disable_adapter``), evaluated after training, so a resumed job needs nothing
kept. For full fine-tuning, and for an earlier adapter trained further
(``model.adapter``, ``model.from``), it is the model at the start of training
(step 0, a callback), kept as JSON beside the checkpoints
(``<output>/eval-base.json``) for attempts that resume later.

Per-row outputs of both models go to ``<final>/eval/<set>.jsonl``, metrics
and decoding settings to ``<final>/eval/metrics.json`` (and summary.json).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import data as data_mod

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase, TrainerCallback

    from kubetune_api.evaluation import EvaluationSpec
    from kubetune_api.spec import DatasetSpec

log = logging.getLogger("kubetune.evaluation")

BASE, TUNED = "base", "tuned"
BASE_RECORD = "eval-base.json"  # under <output>: the full fine-tune's base results, for resumed attempts


# ------------------------------------------------------------------ eval sets
@dataclass
class EvalSet:
    """One eval set: its raw rows, where each is, and one tokenized (unpacked) sample per usable row."""

    name: str
    rows: list[dict[str, Any]]
    places: list[str]
    samples: list[dict[str, Any]]  # input_ids, labels, row (index into rows)


def build_eval_set(name: str, rows: list[dict[str, Any]], fmt: str, tokenizer: PreTrainedTokenizerBase,
                   dataset: DatasetSpec, places: list[str] | None = None) -> EvalSet:
    places = places or [f"{name} row {i + 1}" for i in range(len(rows))]
    samples, _ = data_mod.encode_rows(rows, fmt, tokenizer, dataset, name, places)
    return EvalSet(name, rows, places, samples)


def load_test_set(path: str, fmt: str, tokenizer: PreTrainedTokenizerBase, dataset: DatasetSpec,
                  cache_dir: str | None = None) -> EvalSet:
    """evaluation.test, read and tokenized the way the validation set is."""
    from kubetune_api.contract import PermanentError

    rows = data_mod.load_rows(path, cache_dir)
    if not rows:
        raise PermanentError(f"{path}: evaluation.test is empty", "EmptyDataset")
    data_mod.detect_format(rows[0].keys(), fmt)
    return build_eval_set("test", rows, fmt, tokenizer, dataset, data_mod.row_places(path, len(rows)))


# ------------------------------------------------------------------ text metrics (pure)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_WORD = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> str:
    """Lower case, punctuation and English articles removed, whitespace collapsed (SQuAD's normalisation)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased alphanumeric word tokens (the rouge-score package's tokenisation, no stemming)."""
    p, r = _WORD.findall(prediction.lower()), _WORD.findall(reference.lower())
    if not p or not r:
        return float(p == r)
    lcs = _lcs(p, r)
    if not lcs:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def json_object(text: str) -> dict[str, Any] | None:
    """The text as a JSON object, or None (an answer must be exactly one object, whitespace aside)."""
    try:
        value = json.loads(text.strip())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def score(prediction: str, reference: str) -> dict[str, Any]:
    """One generated answer against its reference."""
    out: dict[str, Any] = {
        "exact": prediction.strip() == reference.strip(),
        "normalizedExact": normalise(prediction) == normalise(reference),
        "rougeL": rouge_l(prediction, reference),
    }
    ref = json_object(reference)
    if ref is not None:
        got = json_object(prediction)
        out["jsonValid"] = got is not None
        out["fields"] = {k: got is not None and k in got and got[k] == v for k, v in ref.items()}
    return out


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def loss_metrics(per_row: list[dict[str, Any]]) -> dict[str, Any]:
    """Token-weighted loss, perplexity and token accuracy over rows, summed in row order."""
    tokens = sum(r["tokens"] for r in per_row)
    if not tokens:
        return {"loss": None, "perplexity": None, "tokenAccuracy": None, "tokens": 0, "rows": len(per_row)}
    loss = math.fsum(r["lossSum"] for r in per_row) / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "tokenAccuracy": sum(r["correct"] for r in per_row) / tokens,
        "tokens": tokens,
        "rows": len(per_row),
    }


def generation_metrics(scored: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over generated rows; JSON metrics over the rows whose reference is a JSON object.

    ``jsonFieldMatch`` is matched fields / reference fields over those rows
    (an invalid answer matches none); ``fields`` breaks it down by field name.
    """
    if not scored:
        return {}
    out: dict[str, Any] = {
        "generations": len(scored),
        "exactMatch": _mean([float(s["exact"]) for s in scored]),
        "normalizedExactMatch": _mean([float(s["normalizedExact"]) for s in scored]),
        "rougeL": _mean([s["rougeL"] for s in scored]),
    }
    structured = [s for s in scored if "jsonValid" in s]
    if structured:
        out["jsonRows"] = len(structured)
        out["jsonValid"] = _mean([float(s["jsonValid"]) for s in structured])
        matches = [float(ok) for s in structured for ok in s["fields"].values()]
        out["jsonFieldMatch"] = _mean(matches)
        names: dict[str, list[float]] = {}
        for s in structured:
            for k, ok in s["fields"].items():
                names.setdefault(k, []).append(float(ok))
        out["fields"] = {k: _mean(v) for k, v in names.items()}
    return out


# ------------------------------------------------------------------ distributed pieces
def _dist() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _rank_world() -> tuple[int, int]:
    d = _dist()
    return (d.get_rank(), d.get_world_size()) if d is not None else (0, 1)


def _gather_rows(mine: list[tuple[int, Any]]) -> list[Any]:
    """Every rank's (row index, value) pairs, merged in row order (all ranks get all)."""
    d = _dist()
    parts = [mine]
    if d is not None:
        parts = [None] * d.get_world_size()  # type: ignore[list-item]
        d.all_gather_object(parts, mine)
    return [v for _, v in sorted((p for part in parts for p in part), key=lambda p: p[0])]


@contextlib.contextmanager
def _inference(model: torch.nn.Module, cache: bool) -> Iterator[None]:
    import torch

    was_training = model.training
    config = getattr(model, "config", None)
    old_cache = getattr(config, "use_cache", None)
    model.eval()
    if config is not None:
        config.use_cache = cache  # training turns the KV cache off; generation wants it
    try:
        with torch.no_grad():
            yield
    finally:
        if config is not None:
            config.use_cache = old_cache
        if was_training:
            model.train()


def row_token_stats(model: torch.nn.Module, samples: list[dict[str, Any]], device: torch.device | str) -> list[dict[str, Any]]:
    """Per sample (in sample order, over all ranks): loss sum over its loss tokens (float64), loss tokens, correct argmax."""
    import torch

    rank, world = _rank_world()
    mine = list(range(rank, len(samples), world))
    rounds = -(-len(samples) // world)
    out: list[tuple[int, dict[str, Any]]] = []
    with _inference(model, cache=False):
        for i in range(rounds):
            idx = mine[i] if i < len(mine) else 0  # spare call: keeps ZeRO-3 ranks in step
            s = samples[idx]
            ids = torch.tensor([s["input_ids"]], device=device)
            labels = torch.tensor(s["labels"][1:], device=device)
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
            logits = logits[0, -ids.shape[1]:-1].float()  # soft-prompt methods put virtual tokens in front
            keep = labels != data_mod.IGNORE
            if i >= len(mine):
                continue
            losses = torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="none")
            out.append((idx, {
                "lossSum": float(losses.double().sum()),
                "tokens": int(keep.sum()),
                "correct": int((logits[keep].argmax(-1) == labels[keep]).sum()),
            }))
    return _gather_rows(out)


def prompt_and_reference(row: dict[str, Any], fmt: str, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], str] | None:
    from . import evaluate

    return evaluate._prompt_and_reference(row, fmt, tokenizer)


def generate_answers(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
                     spec: EvaluationSpec, device: torch.device | str, synced: bool, seed: int) -> list[str]:
    """One decoded answer per prompt (prompt order, over all ranks)."""
    import torch

    if not prompts:
        return []
    rank, world = _rank_world()
    mine = list(range(rank, len(prompts), world))
    rounds = -(-len(prompts) // world)
    stop = {tokenizer.eos_token_id}  # plus the model's own stop tokens (e.g. Llama 3's <|eot_id|>)
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    settings = spec.decoding.generate_kwargs()
    out: list[tuple[int, str]] = []
    with _inference(model, cache=True):
        for i in range(rounds):
            idx = mine[i] if i < len(mine) else 0
            if settings["do_sample"]:
                torch.manual_seed(seed + idx)  # the row's own seed: the same answer at any world size
            ids = torch.tensor([prompts[idx]], device=device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=spec.decoding.max_new_tokens,
                                 eos_token_id=sorted(x for x in stop if x is not None), pad_token_id=tokenizer.pad_token_id,
                                 synced_gpus=synced, **settings)
            if i < len(mine):
                out.append((idx, tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)))
    return _gather_rows(out)


# ------------------------------------------------------------------ one model on the sets
def evaluate_model(model: torch.nn.Module, sets: list[EvalSet], fmt: str, tokenizer: PreTrainedTokenizerBase,
                   spec: EvaluationSpec, device: torch.device | str, synced: bool, seed: int) -> dict[str, Any]:
    """{set name: {"metrics": {...}, "rows": [per-row dict, row order]}} for one model."""
    results: dict[str, Any] = {}
    for s in sets:
        t0 = time.monotonic()
        stats = row_token_stats(model, s.samples, device)
        per_row: dict[int, dict[str, Any]] = {smp["row"]: dict(st) for smp, st in zip(s.samples, stats)}
        pairs = []
        if spec.samples and fmt != "text":
            for i in range(min(spec.samples, len(s.rows))):
                pair = prompt_and_reference(s.rows[i], fmt, tokenizer)
                if pair is not None:
                    pairs.append((i, *pair))
        t1 = time.monotonic()
        answers = generate_answers(model, tokenizer, [p for _, p, _ in pairs], spec, device, synced, seed)
        log.info("evaluated %s: %d rows in %.1f s, %d answers generated in %.1f s", s.name, len(s.samples), t1 - t0,
                 len(pairs), time.monotonic() - t1)
        scored = []
        for (i, _, ref), answer in zip(pairs, answers):
            sc = score(answer, ref)
            per_row.setdefault(i, {}).update(prediction=answer, **sc)
            scored.append(sc)
        metrics = {**loss_metrics([r for r in per_row.values() if "tokens" in r]), **generation_metrics(scored)}
        results[s.name] = {"metrics": metrics, "rows": per_row}
    return results


@contextlib.contextmanager
def base_view(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The PEFT model with its adapter switched off: the base model, exactly."""
    with model.disable_adapter():  # type: ignore[operator]
        yield model


def is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


# ------------------------------------------------------------------ base results for full fine-tuning
def base_callback(holder: dict[str, Any], evaluate_base: Any) -> TrainerCallback:
    """At the start of a fresh run (global step 0, before any training step), evaluate the base model."""
    from transformers import TrainerCallback

    class BaseEvaluation(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if state.global_step == 0 and BASE not in holder:
                holder[BASE] = evaluate_base(model)

    return BaseEvaluation()


def to_jsonable(results: dict[str, Any]) -> dict[str, Any]:
    """Results with row indices as strings (JSON object keys), for eval-base.json."""
    return {name: {"metrics": r["metrics"], "rows": {str(k): v for k, v in r["rows"].items()}} for name, r in results.items()}


def from_jsonable(obj: dict[str, Any]) -> dict[str, Any]:
    return {name: {"metrics": r["metrics"], "rows": {int(k): v for k, v in r["rows"].items()}} for name, r in obj.items()}


# ------------------------------------------------------------------ results on disk
def decoding_record(spec: EvaluationSpec, seed: int) -> dict[str, Any]:
    d = spec.decoding
    rec: dict[str, Any] = {"strategy": d.strategy, "maxNewTokens": d.max_new_tokens, **d.generate_kwargs()}
    if d.strategy == "sample":
        rec["seed"] = f"{seed} + row index"
    return rec


def combine(sets: list[EvalSet], tuned: dict[str, Any], base: dict[str, Any] | None, fmt: str,
            tokenizer: PreTrainedTokenizerBase, spec: EvaluationSpec, seed: int) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(metrics.json, {set name: per-row records}) from both models' results."""
    metrics: dict[str, Any] = {"decoding": decoding_record(spec, seed), "samples": spec.samples, "format": fmt, "sets": {}}
    rows_out: dict[str, list[dict[str, Any]]] = {}
    for s in sets:
        entry: dict[str, Any] = {"rows": len(s.rows), "tuned": tuned[s.name]["metrics"]}
        if base is not None and s.name in base:
            entry["base"] = base[s.name]["metrics"]
        metrics["sets"][s.name] = entry
        records = []
        for i, row in enumerate(s.rows):
            t = tuned[s.name]["rows"].get(i)
            b = base[s.name]["rows"].get(i) if base is not None and s.name in base else None
            if t is None and b is None:
                continue  # dropped when tokenized (too long, no loss tokens)
            pair = prompt_and_reference(row, fmt, tokenizer) if fmt != "text" else None
            rec: dict[str, Any] = {"row": i, "place": s.places[i]}
            if pair is not None:
                rec["prompt"] = tokenizer.decode(pair[0], skip_special_tokens=False)
                rec["reference"] = pair[1]
            for who, r in ((BASE, b), (TUNED, t)):
                if r is not None:
                    rec[who] = {**r, "loss": r["lossSum"] / r["tokens"] if r.get("tokens") else None}
            if b is not None and t is not None and "prediction" in b and "prediction" in t:
                rec["differs"] = b["prediction"].strip() != t["prediction"].strip()
            records.append(rec)
        rows_out[s.name] = records
    return metrics, rows_out


def write_results(final_dir: str | Path, metrics: dict[str, Any], rows: dict[str, list[dict[str, Any]]]) -> Path:
    out = Path(final_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for name, records in rows.items():
        with open(out / f"{name}.jsonl", "w") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return out


# ------------------------------------------------------------------ the trainer's stage
class FinalEvaluation:
    """The evaluation stage of train.py: sets built before training, base results, then both models compared.

    ``callbacks()`` before training (full fine-tuning: the base at step 0);
    ``run(trainer, final_dir)`` after it, on every rank; rank 0 writes the files.
    """

    def __init__(self, spec: Any, prepared: data_mod.PreparedData, tokenizer: PreTrainedTokenizerBase, scratch: str,
                 rank: int, storage: Any = None, continues_adapter: bool = False) -> None:
        self.spec, self.ev, self.tokenizer, self.rank, self.storage = spec, spec.evaluation, tokenizer, rank, storage
        # full fine-tuning, or an earlier adapter trained further (model.adapter / model.from): the model
        # before any training step is not the PEFT model with its adapter off, so it is evaluated at step 0
        self.base_at_start = spec.method.type == "full" or continues_adapter
        self.fmt = prepared.format
        self.sets: list[EvalSet] = []
        if prepared.eval_examples:
            self.sets.append(build_eval_set("validation", prepared.eval_examples, self.fmt, tokenizer, spec.dataset))
        if self.ev.test:
            from . import fetch

            path = str(fetch.resolve_dataset(self.ev.test, spec, scratch))
            self.sets.append(load_test_set(path, self.fmt, tokenizer, spec.dataset, cache_dir=f"{scratch}/datasets-cache"))
        self.base: dict[str, Any] = {}
        self.synced = False
        self.device: Any = "cpu"

    @property
    def record_uri(self) -> str:
        from .storage import join

        return join(self.spec.output.uri.rstrip("/"), BASE_RECORD)

    def _needs_base_at_start(self) -> bool:
        return bool(self.sets) and self.ev.baseline and self.base_at_start

    def callbacks(self, synced: bool, device: Any) -> list[TrainerCallback]:
        self.synced, self.device = synced, device
        if not self._needs_base_at_start():
            return []

        def evaluate_base(model: torch.nn.Module) -> dict[str, Any]:
            log.info("evaluating the base model before training (%s)", ", ".join(s.name for s in self.sets))
            results = evaluate_model(model, self.sets, self.fmt, self.tokenizer, self.ev, self.device, self.synced,
                                     self.spec.training.seed)
            if self.rank == 0 and self.storage is not None:
                self.storage.write_json(self.record_uri, to_jsonable(results))
            return results

        return [base_callback(self.base, evaluate_base)]

    def _resumed_base(self) -> dict[str, Any] | None:
        if self.storage is None:
            return None
        try:
            return from_jsonable(self.storage.read_json(self.record_uri))
        except Exception as e:  # a run started before this record existed: no base column
            log.warning("no base-model results from the first attempt (%s): the report shows the tuned model only", e)
            return None

    def run(self, trainer: Any, final_dir: str | Path) -> dict[str, Any] | None:
        """Evaluate (every rank), write <final>/eval/ (rank 0); returns metrics.json's content, None without eval sets."""
        if not self.sets:
            return None
        model, seed = trainer.model, self.spec.training.seed
        base: dict[str, Any] | None = None
        if self.ev.baseline:
            if is_peft(model) and not self.base_at_start:
                log.info("evaluating the base model (the adapter switched off) on %s", ", ".join(s.name for s in self.sets))
                with base_view(model) as b:
                    base = evaluate_model(b, self.sets, self.fmt, self.tokenizer, self.ev, self.device, self.synced, seed)
            else:
                base = self.base.get(BASE) or (self._resumed_base() if self.rank == 0 else None)
        log.info("evaluating the tuned model on %s", ", ".join(s.name for s in self.sets))
        tuned = evaluate_model(model, self.sets, self.fmt, self.tokenizer, self.ev, self.device, self.synced, seed)
        metrics, rows = combine(self.sets, tuned, base, self.fmt, self.tokenizer, self.ev, seed)
        if self.rank == 0:
            write_results(final_dir, metrics, rows)
            for name, entry in metrics["sets"].items():
                log.info("evaluation %s: %s", name, _one_line(entry))
        return metrics


def _one_line(entry: dict[str, Any]) -> str:
    parts = []
    for key in ("loss", "tokenAccuracy", "exactMatch", "jsonFieldMatch"):
        vals = [entry.get(who, {}).get(key) for who in (BASE, TUNED)]
        if any(v is not None for v in vals):
            parts.append(f"{key} " + " -> ".join("-" if v is None else f"{v:.4f}" for v in vals))
    return ", ".join(parts)


def status_metrics(evaluated: dict[str, Any] | None) -> dict[str, float]:
    """The few numbers of the validation set (else the test set) that go into summary.json's top level and status."""
    if not evaluated or not evaluated["sets"]:
        return {}
    entry = evaluated["sets"].get("validation") or next(iter(evaluated["sets"].values()))
    out = {}
    for who, prefix in ((TUNED, "eval"), (BASE, "base")):
        m = entry.get(who) or {}
        for key, name in (("tokenAccuracy", "token_accuracy"), ("exactMatch", "exact_match"), ("jsonFieldMatch", "json_field_match")):
            if m.get(key) is not None:
                out[f"{prefix}_{name}"] = float(m[key])
    test = evaluated["sets"].get("test", {}).get(TUNED) or {}  # what a sweep reports after selecting on validation
    for key, name in (("loss", "test_loss"), ("exactMatch", "test_exact_match")):
        if test.get(key) is not None:
            out[name] = float(test[key])
    return out
