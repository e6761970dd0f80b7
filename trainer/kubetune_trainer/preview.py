"""``kubetune data preview JOB.yaml``: what the model will be trained on, before any GPU hour is spent.

For the first rows of the train and eval sets it prints what the model sees,
by ``model.task`` (resolved from the model's config.json as the trainer does):

- causal-lm: the text with the tokens that carry loss marked (colour on a
  terminal, ``[[...]]`` otherwise);
- seq2seq: the encoder input, then the target, every token of which carries loss;
- sequence-classification: the text (and text pair) as tokenized, then the class.

Then the statistics the trainer logs (rows, tokens, bad, dropped, truncated,
packing efficiency, warnings). ``--json`` writes, per row, the token ids,
attention mask and labels as the trainer's collator hands them to the model
(seq2seq: the decoder inputs the trainer derives from the labels with the
model are not shown).

Same code path as the trainer: ``model.resolve_task``, ``data.load_split`` →
``data.prepare_rows`` (formats, classes, statistics) → ``data.encode_rows`` →
``data.Collator`` / ``data.TaskCollator`` for the rows, the tokenizer from
``model.load_tokenizer``. Needs neither a GPU nor DeepSpeed, and no weights.
A GGUF model's tokenizer is read from the file without converting the weights.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kubetune_api import contract
from kubetune_api.contract import PermanentError

from . import data, fetch, gguf, model
from .train import load_config

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from kubetune_api.spec import FineTuneJobSpec

_LOSS_ON, _LOSS_OFF = "\x1b[1;32m", "\x1b[0m"  # bold green on a terminal
_MARK_ON, _MARK_OFF = "[[", "]]"


def preview_model(spec: FineTuneJobSpec, scratch: str) -> tuple[PreTrainedTokenizerBase, str, dict[int, str] | None]:
    """The trainer's tokenizer, the resolved model.task and the model's own classification head
    (id2label, or None); for a local GGUF file, the tokenizer is read from the file itself."""
    source = fetch.model_source(spec)
    if gguf.is_gguf(source) and not source.startswith(("s3://", "hf://")):
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise PermanentError(f"model path {path} does not exist (spec.model.source)", "ModelNotFound")
        return model.load_tokenizer(str(path.parent), spec, gguf_file=path.name), "causal-lm", None
    model_dir = str(fetch.resolve_model(spec, scratch))
    task = model.resolve_task(spec, model_dir)
    head = model.classification_head(model_dir) if task == "sequence-classification" else None
    return model.load_tokenizer(model_dir, spec, task=task), task, head


def collated(sample: dict[str, Any], collator: data.Collator | data.TaskCollator) -> dict[str, Any]:
    """One sample as the trainer's collator hands it to the model (a batch of one), as lists."""
    return {k: v[0].tolist() for k, v in collator([sample]).items()}


def marked_text(tokenizer: PreTrainedTokenizerBase, ids: list[int], labels: list[int], color: bool) -> str:
    """The decoded tokens with every run of loss-carrying tokens marked."""
    on, off = (_LOSS_ON, _LOSS_OFF) if color else (_MARK_ON, _MARK_OFF)
    out, run, run_loss = [], [], None
    for i, label in zip(ids, labels):
        loss = label != data.IGNORE
        if run and loss != run_loss:
            text = tokenizer.decode(run, skip_special_tokens=False)
            out.append(f"{on}{text}{off}" if run_loss else text)
            run = []
        run.append(i)
        run_loss = loss
    if run:
        text = tokenizer.decode(run, skip_special_tokens=False)
        out.append(f"{on}{text}{off}" if run_loss else text)
    return "".join(out)


def preview_rows(split_rows: list[dict], places: list[str], what: str, prepared: data.PreparedData,
                 tokenizer: PreTrainedTokenizerBase, spec: FineTuneJobSpec, n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows through the trainer's encoder and collator; bad or dropped rows say why."""
    skip_bad = spec.dataset.model_copy(update={"bad_rows": "skip"})
    fmt = prepared.format
    collator: data.Collator | data.TaskCollator = (
        data.TaskCollator(tokenizer, prepared.task) if fmt in data.TASK_FORMATS else data.Collator(tokenizer.pad_token_id))
    out = []
    for row, place in list(zip(split_rows, places))[:n]:
        entry: dict[str, Any] = {"split": what, "row": place}
        try:
            samples, stats = data.encode_rows([row], fmt, tokenizer, skip_bad, what, [place], prepared.labels)
        except PermanentError as e:  # the row yields no sample (too long with truncation: fail, or no loss token)
            entry["skipped"] = str(e)
            out.append(entry)
            continue
        if not samples:
            entry["skipped"] = stats.bad_row_examples[0] if stats.bad_row_examples else "dropped"
            out.append(entry)
            continue
        entry.update(collated(samples[0], collator))
        entry["truncated"] = bool(stats.truncated)
        out.append(entry)
    return out


def _stats_lines(what: str, st: data.DataStats | None) -> list[str]:
    if st is None:
        return []
    line = (f"{what}: {st.rows} rows -> {st.samples} samples; {st.bad_rows} bad, {st.truncated} truncated, "
            f"{st.dropped_too_long} too long, {st.dropped_no_loss_tokens} without loss tokens; "
            f"{st.tokens} tokens, {st.loss_tokens} with loss")
    if st.packed_rows:
        line += f"; packed into {st.packed_rows} rows ({100 * (st.packing_efficiency or 0):.1f}% full)"
    return [line, *(f"  warning: {w}" for w in st.warnings), *(f"  bad row: {b}" for b in st.bad_row_examples)]


def preview(config: str, rows: int = 3, as_json: bool = False, scratch: str | None = None,
            out: IO[str] | None = None, color: bool | None = None) -> int:
    """Print the preview of a FineTuneJob's data; the exit code (3 with one error line when the job cannot train)."""
    out = out or sys.stdout
    scratch = scratch or os.environ.get("KUBETUNE_SCRATCH") or str(Path.home() / ".cache" / "kubetune" / "scratch")
    try:
        job = load_config(config)
        spec = job.spec
        tokenizer, task, head = preview_model(spec, scratch)
        train_path = str(fetch.resolve_dataset(spec.dataset.train, spec, scratch))
        eval_path = str(fetch.resolve_dataset(spec.dataset.eval, spec, scratch)) if spec.dataset.eval else None
        split = data.load_split(spec.dataset, train_path, eval_path, spec.training.seed, task=task)
        prepared = data.prepare_rows(split, spec.dataset, tokenizer, bool(spec.dataset.packing), task, head)
        shown = preview_rows(split.train, split.train_places, "train", prepared, tokenizer, spec, rows)
        shown += preview_rows(split.eval, split.eval_places, "eval", prepared, tokenizer, spec, rows)
    except PermanentError as e:
        print(contract.format_error_line(e.reason, e), file=sys.stderr, flush=True)
        return contract.PERMANENT
    stats = {"train": prepared.train_stats.as_dict(), "eval": prepared.eval_stats.as_dict() if prepared.eval_stats else None}
    if as_json:
        extra = {"classes": list(prepared.labels.names)} if prepared.labels is not None else {}
        json.dump({"job": job.metadata.name, "task": task, "format": prepared.format, "packing": prepared.packing,
                   "maxSeqLength": spec.dataset.max_seq_length, **extra, "rows": shown, "stats": stats}, out)
        out.write("\n")
        return contract.OK
    color = out.isatty() if color is None else color
    on, off = (_LOSS_ON, _LOSS_OFF) if color else (_MARK_ON, _MARK_OFF)
    legend = f"{on}like this{off}"
    if prepared.format == "classification":
        assert prepared.labels is not None
        what = f"classes {list(prepared.labels.names)} ({prepared.labels.source})"
    elif prepared.format == "seq2seq":
        what = f"every target token carries loss, marked {legend}"
    else:
        what = f"tokens that carry loss are marked {legend}"
    out.write(f"{job.metadata.name}: task {task}, format {prepared.format}, maxSeqLength {spec.dataset.max_seq_length}, "
              f"packing {'on' if prepared.packing else 'off'}; {what}\n")
    for r in shown:
        title = f"--- {r['split']} {r['row']}"
        if "skipped" in r:
            out.write(f"{title}: skipped: {r['skipped']}\n")
            continue
        note = ", truncated to maxSeqLength" if r["truncated"] else ""
        ids = [i for i, m in zip(r["input_ids"], r["attention_mask"]) if m]
        if prepared.format == "seq2seq":
            target = [i for i in r["labels"] if i != data.IGNORE]
            out.write(f"{title}: {len(ids)} input tokens, {len(target)} target tokens{note}\n")
            out.write(f"input:  {tokenizer.decode(ids, skip_special_tokens=False)}\n")
            out.write(f"target: {on}{tokenizer.decode(target, skip_special_tokens=False)}{off}\n")
        elif prepared.format == "classification":
            assert prepared.labels is not None
            names = prepared.labels.names
            label = r["labels"]
            cls = ([names[i] for i, v in enumerate(label) if v] if isinstance(label, list) else f"{names[label]} (class {label})")
            out.write(f"{title}: {len(ids)} tokens{note}\n")
            out.write(f"text:  {tokenizer.decode(ids, skip_special_tokens=False)}\n")
            out.write(f"class: {on}{cls}{off}\n")
        else:
            n_loss = sum(x != data.IGNORE for x in r["labels"])
            out.write(f"{title}: {len(r['input_ids'])} tokens, {n_loss} with loss{note}\n")
            out.write(marked_text(tokenizer, r["input_ids"], r["labels"], color) + "\n")
    out.write("--- statistics (as the trainer logs them)\n")
    for line in _stats_lines("train", prepared.train_stats) + _stats_lines("eval", prepared.eval_stats):
        out.write(line + "\n")
    return contract.OK
