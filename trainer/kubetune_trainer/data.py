"""Data preparation: load rows, detect the format, render, tokenize, mask, pack.

What the model is trained on, precisely:

- ``text`` rows (``text`` column): every token carries loss, an EOS is appended.
- ``instruction`` rows (``prompt``/``completion``, or alpaca ``instruction``/
  ``input``/``output``): prompt and completion are tokenized separately and
  concatenated (so the boundary is exact), EOS appended; only completion + EOS
  carry loss unless ``trainOnPrompt``.
- ``chat`` rows (``messages``: [{role, content}]): rendered with the tokenizer's
  chat template. Assistant spans are found by *incremental prefix rendering*,
  which works for any template, with or without ``{% generation %}`` markers:
  for assistant message ``i`` the span starts at
  ``len(render(messages[:i], add_generation_prompt=True))`` and ends at
  ``len(render(messages[:i+1]).rstrip())`` (content plus the template's
  end-of-turn marker, trailing whitespace excluded). Both renders must be
  prefixes of the full render, otherwise the template rewrites earlier turns
  and the row is rejected rather than masked wrongly. Tokens overlapping an
  assistant span carry loss. When the template does not end the conversation
  with the tokenizer's EOS token, EOS is appended and the last assistant span
  extends to it, so the model learns to stop with the token generation stops on.
- Position 0 of every sample never carries loss (nothing predicts it); this
  also keeps packed samples from being trained to predict each other.

Truncation (``dataset.truncation``): ``truncate`` keeps the first
``maxSeqLength`` tokens (rows left with no loss token are dropped and
counted), ``drop`` skips long rows (counted), ``fail`` stops with the row
number. Bad rows (wrong types, empty text, no assistant turn) are counted and,
per ``dataset.badRows``, fatal or skipped; never silent.

Packing puts several samples in one row of at most ``maxSeqLength`` tokens
(best-fit decreasing) with ``position_ids`` restarting at 0 for each sample
and no attention mask: transformers' ``masking_utils`` then detects the packed
sequences from the position ids and builds a block-diagonal causal mask
(sdpa/eager), and flash-attention-2 uses the same position ids for varlen
kernels. No attention crosses a sample boundary (see tests/trainer/test_packing.py).
"""
from __future__ import annotations

import bisect
import functools
import glob
import logging
import os
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kubetune_api.contract import PermanentError
from kubetune_api.spec import DatasetSpec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("kubetune.data")

IGNORE = -100
FORMATS = ("text", "instruction", "chat")
_EXT_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_MAX_EXAMPLES = 5  # bad-row examples kept for the report


# ------------------------------------------------------------------ loading
def _data_files(path: str) -> tuple[str, list[str]]:
    """(datasets builder, files) for a local file or folder; PermanentError otherwise."""
    if os.path.isdir(path):
        files = []
        for ext in _EXT_BUILDERS:
            files += sorted(glob.glob(os.path.join(path, f"**/*{ext}"), recursive=True))
        builders = {_EXT_BUILDERS[os.path.splitext(f)[1]] for f in files}
        if not files:
            raise PermanentError(f"{path}: folder holds no .jsonl, .json, .parquet or .csv file", "InvalidDataset")
        if len(builders) > 1:
            raise PermanentError(f"{path}: folder mixes file types {sorted(builders)}; use one", "InvalidDataset")
        return builders.pop(), files
    if not os.path.exists(path):
        raise PermanentError(f"{path}: dataset file not found", "DatasetNotFound")
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXT_BUILDERS:
        raise PermanentError(
            f"{path}: unknown data file format {ext or '(no extension)'!r}; use .jsonl, .json, .parquet or .csv",
            "InvalidDataset",
        )
    return _EXT_BUILDERS[ext], [path]


def load_rows(path: str, cache_dir: str | None = None) -> list[dict[str, Any]]:
    """Read a local JSONL/JSON/Parquet/CSV file or folder (or a Hub dataset id) into row dicts."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if path.startswith("hf://"):
            ds = datasets.load_dataset(path[len("hf://"):], split="train", cache_dir=cache_dir)
        else:
            builder, files = _data_files(path)
            if all(os.path.getsize(f) == 0 for f in files):
                return []  # datasets cannot even open an empty file; the caller reports "empty"
            ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir, keep_in_memory=True)
    except PermanentError:
        raise
    except Exception as e:  # malformed JSON/CSV/Parquet: a retry will not fix it
        detail = " ".join(str(e).split())  # the error line is one line; datasets' messages span paragraphs
        raise PermanentError(f"{path}: cannot read dataset: {type(e).__name__}: {detail[:1000]}", "InvalidDataset") from e
    return ds.to_list()


# ------------------------------------------------------------ format detection
def detect_format(columns: Iterable[str], requested: str = "auto") -> str:
    """Pick the row format from the columns; a clear PermanentError when nothing fits."""
    cols = set(columns)
    need = {
        "chat": [{"messages"}],
        "instruction": [{"prompt", "completion"}, {"instruction", "output"}],
        "text": [{"text"}],
    }
    if requested != "auto":
        if requested not in need:
            raise PermanentError(f"dataset.format {requested!r} is unknown; use auto, text, instruction or chat", "InvalidSpec")
        if not any(req <= cols for req in need[requested]):
            options = " or ".join("+".join(sorted(r)) for r in need[requested])
            missing = sorted(min((r - cols for r in need[requested]), key=len))
            raise PermanentError(
                f"dataset.format is {requested!r} but column(s) {missing} are missing (need {options}; found {sorted(cols)})",
                "InvalidDataset",
            )
        return requested
    for fmt in ("chat", "instruction", "text"):
        if any(req <= cols for req in need[fmt]):
            return fmt
    raise PermanentError(
        f"columns {sorted(cols)} fit no known format: need 'messages' (chat), 'prompt'+'completion' or "
        f"'instruction'+'output' (instruction), or 'text' (text)",
        "InvalidDataset",
    )


# --------------------------------------------------------------- rendering
class BadRow(ValueError):
    """A row that fits its format's columns but not its content rules."""


def _str_field(row: dict, name: str, allow_empty: bool = False) -> str:
    v = row.get(name)
    if v is None and allow_empty:
        return ""
    if not isinstance(v, str):
        raise BadRow(f"'{name}' must be a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise BadRow(f"'{name}' is empty")
    return v


def _tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


@functools.lru_cache(maxsize=8)
def _bos(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """[bos] if the tokenizer puts BOS in front of plain text by itself (Llama does, GPT-2 does not)."""
    if tokenizer.bos_token_id is None:
        return []
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [tokenizer.bos_token_id] if ids and ids[0] == tokenizer.bos_token_id else []


def encode_text(row: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    ids = [*_bos(tokenizer), *_tokens(tokenizer, _str_field(row, "text")), tokenizer.eos_token_id]
    return ids, list(ids)


def instruction_prompt(row: dict) -> str:
    if "prompt" in row and row.get("prompt") is not None:
        return _str_field(row, "prompt")
    instruction = _str_field(row, "instruction")
    extra = _str_field(row, "input", allow_empty=True)
    return f"{instruction}\n\n{extra}\n\n" if extra.strip() else f"{instruction}\n\n"


def instruction_completion(row: dict) -> str:
    return _str_field(row, "completion" if row.get("completion") is not None else "output")


def encode_instruction(row: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    prompt = [*_bos(tokenizer), *_tokens(tokenizer, instruction_prompt(row))]
    answer = _tokens(tokenizer, instruction_completion(row)) + [tokenizer.eos_token_id]
    return prompt + answer, [IGNORE] * len(prompt) + answer


def _messages(row: dict) -> list[dict[str, str]]:
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRow("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRow(f"messages[{i}] must have string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise BadRow("no assistant message: nothing to learn from")
    return out


def assistant_char_spans(messages: list[dict], tokenizer: PreTrainedTokenizerBase) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry loss (see the module docstring)."""

    def render(msgs: list[dict], gen_prompt: bool = False) -> str:
        if not msgs:
            return ""
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen_prompt)

    full = render(messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, upto = render(messages[:i], gen_prompt=True), render(messages[: i + 1])
        if not (full.startswith(before) and full.startswith(upto)):
            raise BadRow(
                "the chat template renders earlier turns differently once later turns are added; "
                "assistant tokens cannot be located reliably"
            )
        spans.append((len(before), max(len(before), len(upto.rstrip()))))
    eos = tokenizer.eos_token
    if messages[-1]["role"] == "assistant" and eos and not full.rstrip().endswith(eos):
        full += eos
        spans[-1] = (spans[-1][0], len(full))
    return full, spans


def encode_chat(row: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise PermanentError("dataset format is chat but the tokenizer has no chat template", "InvalidDataset")
    text, spans = assistant_char_spans(_messages(row), tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [IGNORE] * len(ids)
    for j, (a, b) in enumerate(enc["offset_mapping"]):
        if any(a < e and b > s for s, e in spans):
            labels[j] = ids[j]
    return ids, labels


ENCODERS = {"text": encode_text, "instruction": encode_instruction, "chat": encode_chat}


def check_row(row: dict, fmt: str) -> None:
    """The content rules of a row of format ``fmt`` that need no tokenizer (BadRow when broken).

    Used to check uploads before any model is loaded (``kubetune api``); the
    encoders apply the same rules, plus the tokenizer's, during training.
    """
    if fmt == "text":
        _str_field(row, "text")
    elif fmt == "instruction":
        instruction_prompt(row)
        instruction_completion(row)
    elif fmt == "chat":
        _messages(row)
    else:
        raise ValueError(f"unknown format {fmt!r}")


# ------------------------------------------------------------- the stage
@dataclass
class DataStats:
    """Row accounting, reported in the log and in summary.json."""

    format: str = ""
    rows: int = 0
    samples: int = 0
    bad_rows: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_loss_tokens: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    packed_rows: int = 0
    bad_row_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def encode_rows(rows: list[dict], fmt: str, tokenizer: PreTrainedTokenizerBase, spec: DatasetSpec, what: str = "train") -> tuple[list[dict], DataStats]:
    """Tokenize and mask rows; apply the bad-row and truncation policies."""
    stats = DataStats(format=fmt, rows=len(rows))
    encode, limit = ENCODERS[fmt], spec.max_seq_length
    samples = []
    for n, row in enumerate(rows, start=1):
        try:
            ids, labels = encode(row, tokenizer)
        except BadRow as e:
            stats.bad_rows += 1
            msg = f"{what} row {n}: {e}"
            if spec.bad_rows == "fail":
                raise PermanentError(f"{msg} (set dataset.badRows: skip to drop such rows)", "InvalidDataset") from None
            if len(stats.bad_row_examples) < _MAX_EXAMPLES:
                stats.bad_row_examples.append(msg)
            continue
        if len(ids) > limit:
            if spec.truncation == "fail":
                raise PermanentError(
                    f"{what} row {n} has {len(ids)} tokens, more than dataset.maxSeqLength {limit} "
                    f"(dataset.truncation is 'fail'; raise maxSeqLength or use 'truncate' or 'drop')",
                    "SequenceTooLong",
                )
            if spec.truncation == "drop":
                stats.dropped_too_long += 1
                continue
            ids, labels = ids[:limit], labels[:limit]
            stats.truncated += 1
        if spec.train_on_prompt:
            labels = list(ids)
        labels[0] = IGNORE
        if all(x == IGNORE for x in labels):
            stats.dropped_no_loss_tokens += 1
            continue
        samples.append({"input_ids": ids, "labels": labels})
        stats.tokens += len(ids)
        stats.loss_tokens += sum(x != IGNORE for x in labels)
    stats.samples = len(samples)
    if not samples:
        raise PermanentError(
            f"{what} data has no usable sample ({stats.rows} rows, {stats.bad_rows} bad, "
            f"{stats.dropped_too_long} too long, {stats.dropped_no_loss_tokens} without loss tokens)",
            "EmptyDataset",
        )
    return samples, stats


def pack(samples: list[dict], max_len: int) -> list[dict]:
    """Best-fit-decreasing packing into rows of at most max_len tokens, positions restarting per sample."""
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]["input_ids"]))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        n = len(samples[i]["input_ids"])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            cap, b = free.pop(k)
        else:
            cap, b = max_len, len(bins)
            bins.append([])
        bins[b].append(i)
        if cap - n > 0:
            bisect.insort(free, (cap - n, b))
    rows = []
    for members in bins:
        ids, labels, pos = [], [], []
        for i in members:
            s = samples[i]
            ids += s["input_ids"]
            labels += s["labels"]
            pos += range(len(s["input_ids"]))
        rows.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    return rows


class Collator:
    """Right-pads a batch. Packed rows get position_ids and no attention mask (see module docstring)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        packed = "position_ids" in batch[0]
        out: dict[str, list] = {"input_ids": [], "labels": []}
        out["position_ids" if packed else "attention_mask"] = []
        for b in batch:
            n, pad = len(b["input_ids"]), width - len(b["input_ids"])
            out["input_ids"].append(list(b["input_ids"]) + [self.pad_id] * pad)
            out["labels"].append(list(b["labels"]) + [IGNORE] * pad)
            if packed:  # padding forms a segment of its own: real tokens never attend to it
                out["position_ids"].append(list(b["position_ids"]) + list(range(pad)))
            else:
                out["attention_mask"].append([1] * n + [0] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


@dataclass
class PreparedData:
    train: list[dict]
    eval: list[dict]
    eval_examples: list[dict]  # raw eval rows, for generation accuracy
    format: str
    train_stats: DataStats
    eval_stats: DataStats | None
    packing: bool


def split_eval(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out a seeded random fraction of the raw rows (before tokenization: no leakage through packing)."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    k = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    held = set(idx[:k])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def prepare(
    spec: DatasetSpec,
    tokenizer: PreTrainedTokenizerBase,
    train_path: str,
    eval_path: str | None,
    seed: int,
    packing: bool,
    cache_dir: str | None = None,
) -> PreparedData:
    """The data stage: rows → format → tokens + loss mask → (packed) training and eval samples."""
    rows = load_rows(train_path, cache_dir)
    if not rows:
        raise PermanentError(f"{train_path}: training dataset is empty", "EmptyDataset")
    fmt = detect_format(rows[0].keys(), spec.format)
    if eval_path:
        train_rows, eval_rows = rows, load_rows(eval_path, cache_dir)
        if not eval_rows:
            raise PermanentError(f"{eval_path}: evaluation dataset is empty", "EmptyDataset")
        detect_format(eval_rows[0].keys(), fmt)
    else:
        train_rows, eval_rows = split_eval(rows, spec.eval_fraction, seed)
    train, train_stats = encode_rows(train_rows, fmt, tokenizer, spec, "train")
    eval_samples, eval_stats = encode_rows(eval_rows, fmt, tokenizer, spec, "eval") if eval_rows else ([], None)
    if packing:
        train = pack(train, spec.max_seq_length)
        eval_samples = pack(eval_samples, spec.max_seq_length) if eval_samples else []
        train_stats.packed_rows = len(train)
    for what, st in (("train", train_stats), ("eval", eval_stats)):
        if st is not None:
            log.info("%s data: %s", what, {k: v for k, v in st.as_dict().items() if k != "bad_row_examples"})
            for ex in st.bad_row_examples:
                log.warning("skipped bad %s", ex)
    return PreparedData(train, eval_samples, eval_rows, fmt, train_stats, eval_stats, packing)
