"""Data preparation: load rows, detect the format, render, tokenize, mask, pack.

What the model is trained on, precisely:

- ``text`` rows (``text`` column): every token carries loss, an EOS is appended
  unless the text already ends with it.
- ``instruction`` rows (``prompt``/``completion``, or alpaca ``instruction``/
  ``input``/``output``): prompt + completion tokenized as one text and split by
  character offsets (a token reaching past the prompt belongs to the
  completion), so SentencePiece tokenizers give the completion the tokens the
  model sees after a prompt; EOS appended unless already there; only
  completion + EOS carry loss unless ``trainOnPrompt``. BOS (where the
  tokenizer uses one) and EOS are never doubled.
- ``chat`` rows (``messages``: [{role, content}]): rendered with the tokenizer's
  chat template; any template, with or without ``{% generation %}`` markers.
  Reply ``i`` starts where ``render(messages[:i] + [assistant: SENTINEL])``
  puts the sentinel (all before it must be a prefix of the full render: the
  template's default system prompt and headers stay masked, also when the
  assistant speaks first). It ends where a render that stops after it parts,
  token by token, from the full render, trailing whitespace excluded; the last
  reply is compared with a render that goes on with a user turn, so text a
  template adds only at the very end (Phi-3's EOS) is not taken for the turn's
  end. A template that rewrites earlier turns is rejected rather than masked
  wrongly. When the conversation does not end with the tokenizer's EOS, EOS is
  appended; the closing EOS carries loss. Message content containing a
  special-token string is tokenized as text: control tokens come only from the
  template. A template's refusal (``raise_exception``) makes the row bad, with
  the template's message.
- ``seq2seq`` rows (``input``/``target``; model.task seq2seq also reads
  ``instruction`` rows as prompt → input, completion → target): the input
  tokenized with the tokenizer's special tokens (T5 appends EOS, BART wraps in
  BOS/EOS) feeds the encoder; the target, EOS appended unless already there,
  is the decoder's labels, every token carrying loss. ``maxSeqLength`` bounds
  each side.
- ``classification`` rows (``text`` and ``label``, plus ``text_pair`` for
  sentence pairs): encoded with the tokenizer's special tokens (BERT's
  ``[CLS] a [SEP] b [SEP]`` and token types). A label is a class name or a
  class index; a list of them makes the data multi-label. The class names
  come from ``dataset.labels``, else from the model's own classification head,
  else from the training data (names sorted; indexes 0..max). A label outside
  them, an index past the class count (the model head's included) and a
  missing label are bad rows, named by file line and field.
- Position 0 of every causal-LM sample never carries loss (nothing predicts it); this
  also keeps packed samples from being trained to predict each other.

Truncation (``dataset.truncation``): ``truncate`` keeps the first
``maxSeqLength`` tokens (rows left with no loss token are dropped and
counted), ``drop`` skips long rows (counted), ``fail`` stops with the row
number. Bad rows (wrong types, empty text, no assistant turn) are counted and,
per ``dataset.badRows``, fatal or skipped; never silent. Rows are named by
their file line (``train.jsonl line 7``), also after the eval split. More
than 5% of rows truncated or 1% dropped adds a warning to the stats.

Packing puts several samples in one row of at most ``maxSeqLength`` tokens
(best-fit decreasing) with ``position_ids`` restarting at 0 for each sample
and no attention mask: transformers' ``masking_utils`` then detects the packed
sequences from the position ids and builds a block-diagonal causal mask
(sdpa/eager). flash-attention uses the position ids for varlen kernels only in
a one-row batch, so for it the collator flattens each packed micro-batch into
one row. No attention crosses a sample boundary (see tests/trainer/test_packing.py).
Packed rows keep the order of their first sample (``shuffle: false`` follows the file).
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
from typing import TYPE_CHECKING, Any, TypeVar

from kubetune_api.contract import PermanentError
from kubetune_api.spec import DatasetSpec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("kubetune.data")

IGNORE = -100
FORMATS = ("text", "instruction", "chat")
TASK_FORMATS = ("seq2seq", "classification")  # formats of model.task seq2seq / sequence-classification
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
        # Inside the try: Parquet does not check that string columns hold UTF-8, so a damaged file
        # fails only here, as the strings become Python's.
        return ds.to_list()
    except PermanentError:
        raise
    except Exception as e:  # malformed JSON/CSV/Parquet: a retry will not fix it
        detail = " ".join(str(e).split())  # the error line is one line; datasets' messages span paragraphs
        raise PermanentError(f"{path}: cannot read dataset: {type(e).__name__}: {detail[:1000]}", "InvalidDataset") from e


# ------------------------------------------------------------ format detection
# the column sets of each format (any one set fits)
_FORMAT_COLUMNS = {
    "chat": [{"messages"}],
    "instruction": [{"prompt", "completion"}, {"instruction", "output"}],
    "text": [{"text"}],
    "seq2seq": [{"input", "target"}],
    "classification": [{"text", "label"}],
}
# what 'auto' tries, in order, for each resolved model.task
_AUTO_ORDER = {
    "causal-lm": ("chat", "instruction", "text"),
    "seq2seq": ("seq2seq", "instruction"),
    "sequence-classification": ("classification",),
}
_FORMAT_HELP = {
    "causal-lm": "need 'messages' (chat), 'prompt'+'completion' or 'instruction'+'output' (instruction), or 'text' (text)",
    "seq2seq": "need 'input'+'target' (seq2seq), or 'prompt'+'completion' or 'instruction'+'output' (instruction)",
    "sequence-classification": "need 'text'+'label' (classification; plus 'text_pair' for sentence pairs)",
}


def detect_format(columns: Iterable[str], requested: str = "auto", task: str = "causal-lm") -> str:
    """Pick the row format from the columns for the resolved model.task; a clear PermanentError when nothing fits."""
    cols = set(columns)
    need = _FORMAT_COLUMNS
    if requested != "auto":
        if requested not in need:
            raise PermanentError(f"dataset.format {requested!r} is unknown; use auto, text, instruction, chat, seq2seq "
                                 f"or classification", "InvalidSpec")
        if requested not in _AUTO_ORDER[task]:
            raise PermanentError(
                f"dataset.format is {requested!r} but model.task is {task}, which reads {', '.join(_AUTO_ORDER[task])} rows; "
                f"change dataset.format or model.task", "InvalidSpec")
        if not any(req <= cols for req in need[requested]):
            options = " or ".join("+".join(sorted(r)) for r in need[requested])
            missing = sorted(min((r - cols for r in need[requested]), key=len))
            raise PermanentError(
                f"dataset.format is {requested!r} but column(s) {missing} are missing (need {options}; found {sorted(cols)})",
                "InvalidDataset",
            )
        return requested
    for fmt in _AUTO_ORDER[task]:
        if any(req <= cols for req in need[fmt]):
            return fmt
    raise PermanentError(
        f"columns {sorted(cols)} fit no known format{'' if task == 'causal-lm' else ' of model.task ' + task}: "
        f"{_FORMAT_HELP[task]}",
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


def _bos_eos(ids: list[int], tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """(BOS to put in front, EOS to append): BOS when the tokenizer uses one, each only if the text lacks it."""
    bos = _bos(tokenizer)
    return ([] if ids[:1] == bos else bos), ([] if ids[-1:] == [tokenizer.eos_token_id] else [tokenizer.eos_token_id])


def encode_text(row: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    ids = _tokens(tokenizer, _str_field(row, "text"))
    bos, eos = _bos_eos(ids, tokenizer)
    ids = [*bos, *ids, *eos]
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
    """Prompt and completion tokenized as one text, split by character offsets.

    Tokenizing them separately would start the completion as if it began a
    text: SentencePiece tokenizers (``prepend_scheme="first"``: Llama-2,
    Mistral) then add a word-start marker the model never sees after a prompt.
    A token that straddles the boundary belongs to the completion.
    """
    prompt, completion = instruction_prompt(row), instruction_completion(row)
    text = prompt + completion
    if tokenizer.is_fast:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        in_prompt = sum(1 for _, end in enc["offset_mapping"] if end <= len(prompt))
    else:  # slow tokenizers give no offsets: the two parts on their own
        head = _tokens(tokenizer, prompt)
        ids, in_prompt = head + _tokens(tokenizer, completion), len(head)
    bos, eos = _bos_eos(ids, tokenizer)
    ids, in_prompt = [*bos, *ids, *eos], in_prompt + len(bos)
    return ids, [IGNORE] * in_prompt + ids[in_prompt:]


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


# Stands in for an assistant reply to find where the template puts replies.
_SENTINEL = "KubetuneAssistantReplyMarker"


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The chat template's text; a template that refuses the conversation makes the row bad, with its message."""
    if not messages:
        return ""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja2 TemplateError from raise_exception(), or a template bug on this row's shape
        raise BadRow(f"the chat template refused this conversation: {e}") from e


def _token_prefix_chars(tokenizer: PreTrainedTokenizerBase, text: str, other: str) -> int:
    """Characters of ``text`` covered by the tokens it shares, from the start, with ``other``.

    Token-wise, not character-wise: two different control tokens after a turn
    (``<|endoftext|>`` vs ``<|user|>``) share characters but no token.
    """
    a = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    b = tokenizer(other, add_special_tokens=False)["input_ids"]
    k = 0
    for x, y in zip(a["input_ids"], b):
        if x != y:
            break
        k += 1
    return a["offset_mapping"][k - 1][1] if k else 0


_REWRITES = (
    "the chat template renders earlier turns differently once later turns are added; "
    "assistant tokens cannot be located reliably"
)


def assistant_char_spans(messages: list[dict], tokenizer: PreTrainedTokenizerBase) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry loss (see the module docstring)."""
    full = render_chat(tokenizer, messages)
    last = len(messages) - 1
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        # Start: where the template puts a reply, found with a sentinel reply; all before it must be unchanged.
        probe = render_chat(tokenizer, [*messages[:i], {"role": "assistant", "content": _SENTINEL}])
        start = probe.find(_SENTINEL)
        if start < 0 or not full.startswith(probe[:start]):
            raise BadRow(_REWRITES)
        # End: where a rendering that stops after this turn parts from the full one. The last turn is compared
        # with a rendering that goes on, so what a template adds only at the very end (Phi-3's EOS) stays out.
        if i < last:
            other = render_chat(tokenizer, messages[: i + 1])
        else:
            try:
                other = render_chat(tokenizer, [*messages, {"role": "user", "content": _SENTINEL}])
            except BadRow:
                other = full
        end = len(full[: _token_prefix_chars(tokenizer, full, other)].rstrip())
        if end <= start:
            raise BadRow(_REWRITES)
        spans.append((start, end))
    eos = tokenizer.eos_token
    if messages[-1]["role"] == "assistant" and eos:
        if not full.rstrip().endswith(eos):
            full += eos
        body = len(full.rstrip())
        if spans[-1][1] < body:  # the closing EOS is learned (generation stops on it); whitespace before it is not
            spans.append((body - len(eos), body))
    return full, spans


def _special_strings(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    return [t for t in tokenizer.all_special_tokens if t] + [
        t.content for t in tokenizer.added_tokens_decoder.values() if t.special and t.content
    ]


def _tokenize_chat(text: str, messages: list[dict], tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of a rendered conversation.

    Control tokens come only from the template: message content that contains
    a special-token string (``<|im_end|>``, ``</s>``) is tokenized as plain text.
    """
    specials = _special_strings(tokenizer)
    literal = [m["content"] for m in messages if any(s in m["content"] for s in specials)]
    if not literal:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), list(enc["offset_mapping"])
    pieces: list[tuple[int, int, bool]] = []  # (start, end, content that must stay text)
    at = 0
    for content in literal:
        where = text.find(content, at)
        if where < 0:
            raise BadRow("a message contains a special-token string and the chat template changes its text; "
                         "remove the special token from the content")
        pieces += [(at, where, False), (where, where + len(content), True)]
        at = where + len(content)
    pieces.append((at, len(text), False))
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for a, b, as_text in pieces:
        if a == b:
            continue
        enc = tokenizer(text[a:b], add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=as_text)
        ids += enc["input_ids"]
        offsets += [(a + s, a + e) for s, e in enc["offset_mapping"]]
    return ids, offsets


def encode_chat(row: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise PermanentError("dataset format is chat but the tokenizer has no chat template", "InvalidDataset")
    messages = _messages(row)
    text, spans = assistant_char_spans(messages, tokenizer)
    ids, offsets = _tokenize_chat(text, messages, tokenizer)
    labels = [IGNORE] * len(ids)
    for j, (a, b) in enumerate(offsets):
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
    elif fmt == "seq2seq":
        seq2seq_pair(row)
    elif fmt == "classification":
        _str_field(row, "text")
        if row.get("label") is None:
            raise BadRow("'label' is missing")
    else:
        raise ValueError(f"unknown format {fmt!r}")



# ------------------------------------------------- seq2seq and classification
def seq2seq_pair(row: dict) -> tuple[str, str]:
    """(encoder input, target) of a seq2seq row or an instruction row read as one."""
    if "input" in row and "target" in row:
        return _str_field(row, "input"), _str_field(row, "target")
    return instruction_prompt(row), instruction_completion(row)


def encode_seq2seq(row: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """Encoder input ids (with the tokenizer's special tokens) and the target ids, EOS-terminated."""
    source, target = seq2seq_pair(row)
    ids = list(tokenizer(source, add_special_tokens=True)["input_ids"])
    labels = list(tokenizer(text_target=target, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and labels[-1:] != [tokenizer.eos_token_id]:
        labels.append(tokenizer.eos_token_id)
    return ids, labels


@dataclass(frozen=True)
class LabelSpace:
    """The classes of a sequence-classification job: names in class-index order, and where they came from."""

    names: tuple[str, ...]
    multi_label: bool
    source: str

    def _one(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise BadRow(f"'label' must be a class name or a class index, got {type(value).__name__}")
        if isinstance(value, int):
            if not 0 <= value < len(self.names):
                raise BadRow(f"'label' {value} is out of range: {len(self.names)} classes (0-{len(self.names) - 1}) "
                             f"from {self.source}")
            return value
        if value not in self.names:
            shown = list(self.names[:20]) + (["..."] if len(self.names) > 20 else [])
            raise BadRow(f"'label' {value!r} is not a known class; the classes ({self.source}) are {shown}")
        return self.names.index(value)

    def encode(self, row: dict) -> int | list[float]:
        """The row's class index, or its multi-hot vector for multi-label data (BadRow when it does not fit)."""
        value = row.get("label")
        if value is None:
            raise BadRow("'label' is missing")
        if not self.multi_label:
            if isinstance(value, list):
                raise BadRow("'label' is a list but the training data is single-label (one class per row)")
            return self._one(value)
        hot = [0.0] * len(self.names)
        for v in value if isinstance(value, list) else [value]:
            hot[self._one(v)] = 1.0
        return hot

    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))


def label_space(rows: list[dict], places: list[str], labels: list[str] | None,
                head: dict[int, str] | None = None) -> LabelSpace:
    """The classes: ``dataset.labels``, else the model's own head (``head``: its id2label), else the training data.

    A head whose class count differs from the data's is an error naming the first row that does not fit.
    """
    values = [r.get("label") for r in rows]
    multi = any(isinstance(v, list) for v in values)
    flat = [(i, x) for i, v in enumerate(values) for x in (v if isinstance(v, list) else [v])]
    generic_head = head is not None and all(name == f"LABEL_{i}" for i, name in head.items())
    if labels:
        space = LabelSpace(tuple(labels), multi, "dataset.labels")
    elif head is not None and not generic_head:
        space = LabelSpace(tuple(head[i] for i in sorted(head)), multi, "the model's classification head (config.json id2label)")
    else:
        names = sorted({x for _, x in flat if isinstance(x, str)})
        indexes = [x for _, x in flat if isinstance(x, int) and not isinstance(x, bool)]
        if names and indexes:
            first_name = next(i for i, x in flat if isinstance(x, str))
            first_index = next(i for i, x in flat if isinstance(x, int) and not isinstance(x, bool))
            raise PermanentError(
                f"{places[max(first_name, first_index)]}: 'label' mixes class names and class indexes "
                f"({places[first_name]} has a name, {places[first_index]} an index); use one kind, or list the class "
                f"names in dataset.labels", "InvalidDataset")
        count = len(names) if names else (max(indexes) + 1 if indexes else 0)
        if head is not None and not names:
            count = max(count, len(head))
        space = LabelSpace(tuple(names) if names else tuple(str(i) for i in range(count)), multi, "the training data")
    if head is not None and len(space.names) != len(head):
        extra = next((places[i] for i, x in flat if _index_of(space, x) is not None and _index_of(space, x) >= len(head)), None)
        where = f"{extra}: 'label'" if extra else "dataset.labels"
        raise PermanentError(
            f"{where}: the data has {len(space.names)} classes ({space.source}) but the model's classification head "
            f"has {len(head)} (config.json id2label); set dataset.labels to the head's {len(head)} class names, or "
            f"start from a model without a classification head", "InvalidDataset")
    if len(space.names) < 2 and not multi:
        raise PermanentError(
            f"sequence-classification needs at least 2 classes; {space.source} gives {list(space.names)}: list them in "
            f"dataset.labels or add rows of the other classes", "InvalidDataset")
    return space


def _index_of(space: LabelSpace, value: Any) -> int | None:
    try:
        return space._one(value)
    except BadRow:
        return None


def encode_classification(row: dict, tokenizer: PreTrainedTokenizerBase, limit: int | None = None) -> dict[str, list[int]]:
    """Token ids (and attention mask, token types) of the text or text pair, cut to ``limit`` tokens when given."""
    text = _str_field(row, "text")
    pair = _str_field(row, "text_pair") if row.get("text_pair") is not None else None
    cut = {"truncation": "longest_first", "max_length": limit} if limit else {}
    enc = tokenizer(text, pair, add_special_tokens=True, **cut)
    return {k: list(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}


def _encode_task_rows(rows: list[dict], fmt: str, tokenizer: PreTrainedTokenizerBase, spec: DatasetSpec, what: str,
                      places: list[str] | None, labels: LabelSpace | None) -> tuple[list[dict], DataStats]:
    """encode_rows for the seq2seq and classification formats: same bad-row and truncation policies."""
    stats = DataStats(format=fmt, rows=len(rows))
    limit = spec.max_seq_length
    samples = []
    for n, row in enumerate(rows, start=1):
        where = places[n - 1] if places else f"{what} row {n}"
        try:
            if fmt == "classification":
                if labels is None:
                    raise ValueError("classification rows need a LabelSpace")
                target = labels.encode(row)
                feats = encode_classification(row, tokenizer)
                too_long = len(feats["input_ids"]) > limit
                sample: dict[str, Any] = {**feats, "labels": target}
            else:
                ids, target_ids = encode_seq2seq(row, tokenizer)
                too_long = len(ids) > limit or len(target_ids) > limit
                sample = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": target_ids}
        except BadRow as e:
            stats.bad_rows += 1
            msg = f"{where}: {e}"
            if spec.bad_rows == "fail":
                raise PermanentError(f"{msg} (set dataset.badRows: skip to drop such rows)", "InvalidDataset") from None
            if len(stats.bad_row_examples) < _MAX_EXAMPLES:
                stats.bad_row_examples.append(msg)
            continue
        if too_long:
            longest = max(len(sample["input_ids"]), len(sample["labels"]) if fmt == "seq2seq" else 0)
            if spec.truncation == "fail":
                raise PermanentError(
                    f"{where} has {longest} tokens, more than dataset.maxSeqLength {limit} "
                    f"(dataset.truncation is 'fail'; raise maxSeqLength or use 'truncate' or 'drop')",
                    "SequenceTooLong",
                )
            if spec.truncation == "drop":
                stats.dropped_too_long += 1
                continue
            if fmt == "classification":
                sample.update(encode_classification(row, tokenizer, limit))
            else:
                sample.update(input_ids=sample["input_ids"][:limit], attention_mask=sample["attention_mask"][:limit],
                              labels=sample["labels"][:limit])
            stats.truncated += 1
        sample["row"] = n - 1
        samples.append(sample)
        stats.tokens += len(sample["input_ids"]) + (len(sample["labels"]) if fmt == "seq2seq" else 0)
        stats.loss_tokens += len(sample["labels"]) if fmt == "seq2seq" else 1
    stats.samples = len(samples)
    stats.warnings = _length_warnings(stats, what, limit)
    if not samples:
        raise PermanentError(
            f"{what} data has no usable sample ({stats.rows} rows, {stats.bad_rows} bad, {stats.dropped_too_long} too long)",
            "EmptyDataset",
        )
    return samples, stats


class TaskCollator:
    """Pads seq2seq and classification batches with transformers' own collators.

    seq2seq: ``DataCollatorForSeq2Seq`` pads labels with -100 and, given the
    model, builds ``decoder_input_ids`` from them (the loss is then computed
    outside the model, see task_metrics.loss_function). classification:
    ``DataCollatorWithPadding``. The ``row`` bookkeeping key is dropped.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, task: str, model: Any = None):
        from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

        self.task = task
        if task == "seq2seq":
            self.inner: Any = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE, return_tensors="pt")
        else:
            self.inner = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        return dict(self.inner([{k: v for k, v in b.items() if k != "row"} for b in batch]))


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
    packing_efficiency: float | None = None  # real tokens / (packed rows x maxSeqLength)
    bad_row_examples: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


# Above these shares of rows, truncation and dropping are worth a warning (and summary.json says so).
TRUNCATED_WARN_FRACTION = 0.05
DROPPED_WARN_FRACTION = 0.01


def _pct(n: int, of: int) -> str:
    return f"{n} of {of} rows ({100.0 * n / of:.1f}%)"


def _length_warnings(stats: DataStats, what: str, limit: int) -> list[str]:
    out = []
    dropped = stats.dropped_too_long + stats.dropped_no_loss_tokens
    if stats.rows and stats.truncated > TRUNCATED_WARN_FRACTION * stats.rows:
        out.append(f"{what} data: {_pct(stats.truncated, stats.rows)} were cut to dataset.maxSeqLength {limit} and lost "
                   f"tokens; raise maxSeqLength (or use dataset.truncation: drop) if the ends matter")
    if stats.rows and dropped > DROPPED_WARN_FRACTION * stats.rows:
        out.append(f"{what} data: {_pct(dropped, stats.rows)} were dropped ({stats.dropped_too_long} longer than "
                   f"dataset.maxSeqLength {limit}, {stats.dropped_no_loss_tokens} with no loss token left after truncation)")
    return out


def encode_rows(
    rows: list[dict],
    fmt: str,
    tokenizer: PreTrainedTokenizerBase,
    spec: DatasetSpec,
    what: str = "train",
    places: list[str] | None = None,
    labels: LabelSpace | None = None,
) -> tuple[list[dict], DataStats]:
    """Tokenize and mask rows; apply the bad-row and truncation policies.

    ``places`` names each row where a person finds it (``train.jsonl line 7``);
    without it, rows are numbered from 1. Each sample keeps its row's index
    in ``rows`` under ``"row"``. ``labels``: the classes, for classification rows.
    """
    if fmt in TASK_FORMATS:
        return _encode_task_rows(rows, fmt, tokenizer, spec, what, places, labels)
    stats = DataStats(format=fmt, rows=len(rows))
    encode, limit = ENCODERS[fmt], spec.max_seq_length
    samples = []
    for n, row in enumerate(rows, start=1):
        where = places[n - 1] if places else f"{what} row {n}"
        try:
            ids, labels = encode(row, tokenizer)
        except BadRow as e:
            stats.bad_rows += 1
            msg = f"{where}: {e}"
            if spec.bad_rows == "fail":
                raise PermanentError(f"{msg} (set dataset.badRows: skip to drop such rows)", "InvalidDataset") from None
            if len(stats.bad_row_examples) < _MAX_EXAMPLES:
                stats.bad_row_examples.append(msg)
            continue
        if len(ids) > limit:
            if spec.truncation == "fail":
                raise PermanentError(
                    f"{where} has {len(ids)} tokens, more than dataset.maxSeqLength {limit} "
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
        samples.append({"input_ids": ids, "labels": labels, "row": n - 1})
        stats.tokens += len(ids)
        stats.loss_tokens += sum(x != IGNORE for x in labels)
    stats.samples = len(samples)
    stats.warnings = _length_warnings(stats, what, limit)
    if not samples:
        raise PermanentError(
            f"{what} data has no usable sample ({stats.rows} rows, {stats.bad_rows} bad, "
            f"{stats.dropped_too_long} too long, {stats.dropped_no_loss_tokens} without loss tokens)",
            "EmptyDataset",
        )
    return samples, stats


def pack(samples: list[dict], max_len: int) -> list[dict]:
    """Best-fit-decreasing packing into rows of at most max_len tokens, positions restarting per sample.

    Rows come out in the order of their first sample, so with ``shuffle: false``
    training follows the file (best-fit decreasing alone would go longest first).
    """
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
    for members in sorted(bins, key=min):
        ids, labels, pos = [], [], []
        for i in sorted(members):
            s = samples[i]
            ids += s["input_ids"]
            labels += s["labels"]
            pos += range(len(s["input_ids"]))
        rows.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    return rows


def flattens_packed_batches(attention: str) -> bool:
    """Whether packed micro-batches must become one row for this attention kernel.

    transformers recognises packed sequences from ``position_ids`` for
    flash-attention only when the batch has one row; with more rows it would
    attend across the samples of a row. sdpa/eager build a block-diagonal mask
    for any batch size.
    """
    return attention.startswith("flash_attention")


class Collator:
    """Right-pads a batch. Packed rows get position_ids and no attention mask (see module docstring).

    With ``flatten_packed`` (flash-attention) a packed micro-batch becomes one
    padding-free row: the same samples, the same loss tokens, no padding.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, flatten_packed: bool = False):
        self.pad_id = pad_token_id
        self.multiple = pad_to_multiple_of
        self.flatten_packed = flatten_packed

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        import torch

        packed = "position_ids" in batch[0]
        if packed and self.flatten_packed:
            batch = [{k: [x for b in batch for x in b[k]] for k in ("input_ids", "labels", "position_ids")}]
        width = max(len(b["input_ids"]) for b in batch)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
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
    task: str = "causal-lm"
    labels: LabelSpace | None = None  # sequence-classification: the classes


T = TypeVar("T")


def split_eval(rows: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Hold out a seeded random fraction of the raw rows (before tokenization: no leakage through packing)."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    k = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    held = set(idx[:k])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def row_places(path: str, n: int) -> list[str]:
    """Where each of the ``n`` rows read from ``path`` is, as a person finds it: ``train.jsonl line 7``.

    JSON Lines files count file lines (blank lines skipped, as the reader
    does); other formats count data rows from 1.
    """
    name = os.path.basename(path.rstrip("/")) or path
    try:
        _, files = _data_files(path) if not path.startswith("hf://") else ("", [])
    except PermanentError:
        files = []
    if files and all(f.endswith(".jsonl") for f in files):
        out = []
        for f in files:
            with open(f, "rb") as fh:
                out += [f"{os.path.basename(f)} line {i}" for i, line in enumerate(fh, start=1) if line.strip()]
        if len(out) == n:
            return out
    return [f"{name} row {i}" for i in range(1, n + 1)]


@dataclass
class SplitRows:
    """Raw rows of the train and eval sets, with where each comes from."""

    format: str
    train: list[dict]
    train_places: list[str]
    eval: list[dict]
    eval_places: list[str]


def load_split(spec: DatasetSpec, train_path: str, eval_path: str | None, seed: int, cache_dir: str | None = None,
               task: str = "causal-lm") -> SplitRows:
    """Rows → format → train/eval split (a held-out fraction keeps each row's file line)."""
    rows = load_rows(train_path, cache_dir)
    if not rows:
        raise PermanentError(f"{train_path}: training dataset is empty", "EmptyDataset")
    fmt = detect_format(rows[0].keys(), spec.format, task)
    places = row_places(train_path, len(rows))
    if eval_path:
        eval_rows = load_rows(eval_path, cache_dir)
        if not eval_rows:
            raise PermanentError(f"{eval_path}: evaluation dataset is empty", "EmptyDataset")
        detect_format(eval_rows[0].keys(), fmt, task)
        return SplitRows(fmt, rows, places, eval_rows, row_places(eval_path, len(eval_rows)))
    train, held = split_eval(list(zip(rows, places)), spec.eval_fraction, seed)
    return SplitRows(fmt, [r for r, _ in train], [p for _, p in train], [r for r, _ in held], [p for _, p in held])


def prepare_rows(split: SplitRows, spec: DatasetSpec, tokenizer: PreTrainedTokenizerBase, packing: bool,
                 task: str = "causal-lm", head: dict[int, str] | None = None) -> PreparedData:
    """Tokens + loss masks for the train and eval rows, packed when asked; counts and warnings logged.

    ``head``: the id2label of the model's own classification head, when it has one (sequence-classification).
    """
    fmt = "seq2seq" if task == "seq2seq" else split.format  # seq2seq reads instruction rows as input/target pairs
    labels = label_space(split.train, split.train_places, spec.labels, head) if fmt == "classification" else None
    if packing and fmt in TASK_FORMATS:
        log.warning("packing is off: it applies to causal-lm only (model.task resolved to %s)", task)
        packing = False
    train, train_stats = encode_rows(split.train, fmt, tokenizer, spec, "train", split.train_places, labels)
    eval_samples, eval_stats = (
        encode_rows(split.eval, fmt, tokenizer, spec, "eval", split.eval_places, labels) if split.eval else ([], None)
    )
    if packing:
        train = pack(train, spec.max_seq_length)
        eval_samples = pack(eval_samples, spec.max_seq_length) if eval_samples else []
        train_stats.packed_rows = len(train)
        train_stats.packing_efficiency = round(train_stats.tokens / (len(train) * spec.max_seq_length), 4)
    for what, st in (("train", train_stats), ("eval", eval_stats)):
        if st is not None:
            log.info("%s data: %s", what, {k: v for k, v in st.as_dict().items() if k not in ("bad_row_examples", "warnings")})
            for ex in st.bad_row_examples:
                log.warning("skipped bad row: %s", ex)
            for w in st.warnings:
                log.warning("%s", w)
    if labels is not None:
        log.info("classes (%s, %s): %s", labels.source, "multi-label" if labels.multi_label else "single-label", list(labels.names))
    return PreparedData(train, eval_samples, split.eval, fmt, train_stats, eval_stats, packing, task, labels)


def prepare(
    spec: DatasetSpec,
    tokenizer: PreTrainedTokenizerBase,
    train_path: str,
    eval_path: str | None,
    seed: int,
    packing: bool,
    cache_dir: str | None = None,
    task: str = "causal-lm",
    head: dict[int, str] | None = None,
) -> PreparedData:
    """The data stage: rows → format → tokens + loss mask → (packed) training and eval samples."""
    return prepare_rows(load_split(spec, train_path, eval_path, seed, cache_dir, task), spec, tokenizer, packing, task, head)
