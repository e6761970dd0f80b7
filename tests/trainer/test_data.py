"""Data preparation: exactly which token positions carry loss, formats, policies, packing layout.

Expected sequences are built independently of data.py: each rendered segment
is tokenized on its own and marked "loss" or "masked" by hand, then the
concatenation is compared position by position with what data.py produced.
Segments meet at special tokens or at a newline, where this byte-level BPE
never merges, so the concatenation equals the tokenization of the full text.
"""
from __future__ import annotations

import copy
import json

import pytest

from kubetune_api.contract import PermanentError
from kubetune_api.spec import DatasetSpec
from kubetune_trainer import data

IGN = data.IGNORE


def expected(tok, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """(ids, labels) from (text, carries_loss) segments; position 0 never carries loss."""
    ids, labels = [], []
    for text, loss in segments:
        seg = tok(text, add_special_tokens=False)["input_ids"]
        ids += seg
        labels += seg if loss else [IGN] * len(seg)
    labels[0] = IGN
    return ids, labels


def encoded(tok, row: dict, fmt: str, **spec_kw) -> tuple[list[int], list[int]]:
    samples, _ = data.encode_rows([row], fmt, tok, DatasetSpec(train="x", **spec_kw))
    return samples[0]["input_ids"], samples[0]["labels"]


def loss_text(tok, ids, labels) -> str:
    return tok.decode([i for i, l in zip(ids, labels) if l != IGN])


CONVERSATION = [
    {"role": "system", "content": "answer briefly"},
    {"role": "user", "content": "what is the capital of france ?"},
    {"role": "assistant", "content": "paris"},
    {"role": "user", "content": "and of italy ?"},
    {"role": "assistant", "content": "rome"},
]

# ChatML without generation markers; inserts a default system prompt when there is none.
CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nyou are helpful<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Llama-2 style: system folded into the first user turn, BOS/EOS written by the template itself.
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set msgs = messages[1:] %}"
    "{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}"
    "{% if m['role'] == 'user' %}{{ bos_token }}[INST] "
    "{% if loop.first and sys %}<<SYS>>\n{{ sys }}\n<</SYS>>\n\n{% endif %}{{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}"
    "{% endfor %}"
)


@pytest.fixture(scope="module")
def chatml_tok(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def llama2_tok(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = LLAMA2
    return tok


# ------------------------------------------------------------- chat masking
def test_chat_mask_generation_marker_template(tokenizer):
    """tiny.CHAT_TEMPLATE: system/user turns and role headers masked; each assistant reply plus
    its <|end|> carries loss; the template does not end in EOS, so EOS is appended and learned."""
    ids, labels = encoded(tokenizer, {"messages": CONVERSATION}, "chat")
    want = expected(tokenizer, [
        ("<|start|>system\nanswer briefly<|end|>\n", False),
        ("<|start|>user\nwhat is the capital of france ?<|end|>\n", False),
        ("<|start|>assistant\n", False),
        ("paris<|end|>", True),  # the template's `{% endgeneration %}\n` loses its newline to trim_blocks
        ("<|start|>user\nand of italy ?<|end|>\n", False),
        ("<|start|>assistant\n", False),
        ("rome<|end|><|eos|>", True),
    ])
    assert (ids, labels) == want
    assert loss_text(tokenizer, ids, labels) == "paris<|end|>rome<|end|><|eos|>"


def test_chat_mask_agrees_with_generation_markers(tokenizer):
    """Where the template has {% generation %} markers, transformers' own assistant mask marks the
    same tokens as the prefix-rendering method (all but the EOS that kubetune appends)."""
    ids, labels = encoded(tokenizer, {"messages": CONVERSATION}, "chat")
    hf = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    n = len(hf["input_ids"])
    assert ids[:n] == list(hf["input_ids"])
    ours = [int(l != IGN) for l in labels[:n]]
    theirs = list(hf["assistant_masks"])
    assert ours == theirs


def test_chat_mask_chatml_without_markers(chatml_tok):
    """ChatML, no generation markers, default system prompt injected by the template, EOS = <|im_end|>:
    loss on each reply + <|im_end|>, never on the newline after it; nothing appended."""
    msgs = CONVERSATION[1:]  # no system message: the template adds its own
    ids, labels = encoded(chatml_tok, {"messages": msgs}, "chat")
    want = expected(chatml_tok, [
        ("<|im_start|>system\nyou are helpful<|im_end|>\n", False),
        ("<|im_start|>user\nwhat is the capital of france ?<|im_end|>\n", False),
        ("<|im_start|>assistant\n", False),
        ("paris<|im_end|>", True),
        ("\n", False),
        ("<|im_start|>user\nand of italy ?<|im_end|>\n", False),
        ("<|im_start|>assistant\n", False),
        ("rome<|im_end|>", True),
        ("\n", False),
    ])
    assert (ids, labels) == want
    assert loss_text(chatml_tok, ids, labels) == "paris<|im_end|>rome<|im_end|>"


def test_chat_mask_llama2_style(llama2_tok):
    """Llama-2 style: system inside the first [INST]; replies and the template's own EOS carry loss."""
    ids, labels = encoded(llama2_tok, {"messages": CONVERSATION}, "chat")
    want = expected(llama2_tok, [
        ("<|bos|>[INST] <<SYS>>\nanswer briefly\n<</SYS>>\n\nwhat is the capital of france ? [/INST]", False),
        (" paris <|eos|>", True),
        ("<|bos|>[INST] and of italy ? [/INST]", False),
        (" rome <|eos|>", True),
    ])
    assert (ids, labels) == want


def test_chat_train_on_prompt_keeps_everything_but_position_zero(tokenizer):
    ids, labels = encoded(tokenizer, {"messages": CONVERSATION}, "chat", train_on_prompt=True)
    assert labels[0] == IGN and labels[1:] == ids[1:]


def test_chat_template_that_rewrites_history_is_rejected(tokenizer):
    tok = copy.deepcopy(tokenizer)
    # drops earlier assistant turns unless they are last (like templates that strip reasoning)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
        "<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
    )
    with pytest.raises(PermanentError, match="renders earlier turns differently"):
        encoded(tok, {"messages": CONVERSATION}, "chat")


# ------------------------------------------------------- instruction / text
def test_instruction_prompt_completion_mask(tokenizer):
    ids, labels = encoded(tokenizer, {"prompt": "what is two plus three ?", "completion": " five"}, "instruction")
    assert (ids, labels) == expected(tokenizer, [("what is two plus three ?", False), (" five<|eos|>", True)])


def test_instruction_alpaca_mask(tokenizer):
    row = {"instruction": "add the numbers", "input": "two three", "output": "five"}
    ids, labels = encoded(tokenizer, row, "instruction")
    assert (ids, labels) == expected(tokenizer, [("add the numbers\n\ntwo three\n\n", False), ("five<|eos|>", True)])
    row = {"instruction": "say five", "input": "", "output": "five"}
    ids, labels = encoded(tokenizer, row, "instruction")
    assert (ids, labels) == expected(tokenizer, [("say five\n\n", False), ("five<|eos|>", True)])


def test_text_rows_learn_every_token_and_eos(tokenizer):
    ids, labels = encoded(tokenizer, {"text": "the red cat"}, "text")
    assert (ids, labels) == expected(tokenizer, [("the red cat<|eos|>", True)])


# ------------------------------------------------------------- detection
@pytest.mark.parametrize("cols,fmt", [
    (["messages"], "chat"), (["prompt", "completion"], "instruction"),
    (["instruction", "input", "output"], "instruction"), (["text", "id"], "text"),
])
def test_detect_format(cols, fmt):
    assert data.detect_format(cols) == fmt


def test_detect_format_errors_name_the_columns():
    with pytest.raises(PermanentError, match=r"columns \['foo', 'question'\] fit no known format") as e:
        data.detect_format(["question", "foo"])
    assert e.value.reason == "InvalidDataset"
    with pytest.raises(PermanentError, match=r"column\(s\) \['completion'\] are missing"):
        data.detect_format(["prompt"], "instruction")


# ------------------------------------------------------- row policies
ROWS = [
    {"prompt": "what is one plus one ?", "completion": " two"},
    {"prompt": "what is one plus two ?", "completion": ""},  # bad: empty completion
    {"prompt": "one two three four five six seven eight nine ten " * 4, "completion": " ten"},  # long
    {"prompt": "what is two plus two ?", "completion": " four"},
]


def test_bad_rows_fail_names_the_row(tokenizer):
    with pytest.raises(PermanentError, match="train row 2: 'completion' is empty"):
        data.encode_rows(ROWS, "instruction", tokenizer, DatasetSpec(train="x", max_seq_length=1000))


def test_bad_rows_skip_counts_and_reports(tokenizer):
    samples, st = data.encode_rows(ROWS, "instruction", tokenizer, DatasetSpec(train="x", bad_rows="skip", max_seq_length=1000))
    assert (st.rows, st.bad_rows, st.samples) == (4, 1, 3)
    assert st.bad_row_examples == ["train row 2: 'completion' is empty"]


def test_truncation_policies(tokenizer):
    kw = dict(train="x", bad_rows="skip", max_seq_length=16)
    with pytest.raises(PermanentError, match=r"train row 3 has \d+ tokens, more than dataset.maxSeqLength 16") as e:
        data.encode_rows(ROWS, "instruction", tokenizer, DatasetSpec(truncation="fail", **kw))
    assert e.value.reason == "SequenceTooLong"
    _, st = data.encode_rows(ROWS, "instruction", tokenizer, DatasetSpec(truncation="drop", **kw))
    assert (st.samples, st.dropped_too_long) == (2, 1)
    # truncating the long row cuts off its whole completion: it has no loss token left and is dropped, counted
    samples, st = data.encode_rows(ROWS, "instruction", tokenizer, DatasetSpec(truncation="truncate", **kw))
    assert (st.samples, st.truncated, st.dropped_no_loss_tokens) == (2, 1, 1)
    assert all(len(s["input_ids"]) <= 16 for s in samples)


def test_eval_split_is_seeded_and_disjoint():
    rows = [{"text": str(i)} for i in range(100)]
    a_train, a_eval = data.split_eval(rows, 0.1, seed=3)
    b_train, b_eval = data.split_eval(rows, 0.1, seed=3)
    assert a_eval == b_eval and len(a_eval) == 10 and len(a_train) == 90
    assert {r["text"] for r in a_train}.isdisjoint(r["text"] for r in a_eval)


def test_loads_jsonl_json_parquet_csv_alike(tmp_path):
    import pandas as pd

    rows = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
    df = pd.DataFrame(rows)
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    df.to_parquet(tmp_path / "a.parquet")
    df.to_csv(tmp_path / "a.csv", index=False)
    for name in ("a.jsonl", "a.json", "a.parquet", "a.csv"):
        assert data.load_rows(str(tmp_path / name)) == rows, name


# ------------------------------------------------------------- packing
def test_pack_layout_positions_restart_per_sample():
    samples = [{"input_ids": list(range(n)), "labels": [IGN] + list(range(1, n))} for n in (5, 3, 7, 2, 6)]
    rows = data.pack(samples, max_len=10)
    # best fit decreasing: 7 | 6 | 5 open bins; 3 fills 7's bin exactly (10), 2 goes with 6 (8)
    assert sorted(len(r["input_ids"]) for r in rows) == [5, 8, 10]
    assert sum(len(r["input_ids"]) for r in rows) == 23
    for r in rows:
        assert len(r["input_ids"]) <= 10
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        for s in starts:  # every sample starts at position 0 with a masked label
            assert r["labels"][s] == IGN
    batch = data.Collator(pad_token_id=0)(rows)
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape == (3, 10)
    # padding is its own segment (positions restart) and carries no loss
    short = [i for i, r in enumerate(rows) if len(r["input_ids"]) == 5][0]
    assert batch["position_ids"][short, 5:].tolist() == [0, 1, 2, 3, 4]
    assert batch["labels"][short, 5:].tolist() == [IGN] * 5


def test_bos_added_when_the_tokenizer_adds_it_itself(tokenizer):
    """Llama-style tokenizers put BOS before plain text; instruction/text samples start with it (masked)."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tokenizer)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", tok.bos_token_id)])
    ids, labels = encoded(tok, {"prompt": "what is two plus three ?", "completion": " five"}, "instruction")
    assert (ids, labels) == expected(tok, [("<|bos|>what is two plus three ?", False), (" five<|eos|>", True)])
    assert ids[0] == tok.bos_token_id


# ------------------------------------------------------- EOS / BOS once, SentencePiece boundary
def test_eos_and_bos_are_added_only_when_absent(tokenizer):
    """A text row or completion that already ends with EOS (or starts with BOS) gets no second one."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tokenizer)
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", tok.bos_token_id)])
    bos, eos = tok.bos_token_id, tok.eos_token_id
    for text in ("the red cat", "the red cat<|eos|>", "<|bos|>the red cat", "<|bos|>the red cat<|eos|>"):
        ids, _ = encoded(tok, {"text": text}, "text")
        assert ids.count(eos) == 1 and ids[-1] == eos and ids.count(bos) == 1 and ids[0] == bos, text
    ids, labels = encoded(tok, {"prompt": "what is two plus three ?", "completion": " five<|eos|>"}, "instruction")
    assert (ids, labels) == expected(tok, [("<|bos|>what is two plus three ?", False), (" five<|eos|>", True)])


@pytest.fixture(scope="module")
def sentencepiece_tok():
    """A Llama-2/Mistral-style tokenizer: Metaspace with prepend_scheme='first' (a word-start marker only at the start)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from kubetune_trainer import tiny

    sp = Tokenizer(models.BPE(unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    sp.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = tiny._corpus(500) + ["what is two plus two ?", "four"]
    sp.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=list("?:\n"), show_progress=False))
    sp.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", sp.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=sp, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_completion_has_no_extra_word_start(sentencepiece_tok):
    """Prompt and completion are tokenized as one text: the completion's tokens are the ones the model sees
    after the prompt, not those of a text that starts with the completion (which would begin with '▁')."""
    tok, prompt, completion = sentencepiece_tok, "what is two plus two ?\n", "four"
    alone = tok(completion, add_special_tokens=False)["input_ids"]
    joint = tok(prompt + completion, add_special_tokens=False)["input_ids"]
    assert joint[-len(alone):] != alone, "the case must show the difference"
    ids, labels = encoded(tok, {"prompt": prompt, "completion": completion}, "instruction")
    assert ids == [tok.bos_token_id, *joint, tok.eos_token_id]
    learned = [i for i, l in zip(ids, labels) if l != IGN]
    enc = tok(prompt + completion, add_special_tokens=False, return_offsets_mapping=True)
    # the completion's tokens: those reaching past the prompt (a token straddling the boundary included)
    assert learned == [t for t, (_, end) in zip(enc["input_ids"], enc["offset_mapping"]) if end > len(prompt)] + [tok.eos_token_id]
    assert tok.decode(learned[:-1]).strip() == "four"
    assert not tok.convert_ids_to_tokens(learned[0]).startswith("▁"), "no word-start marker the prompt does not produce"


def test_chat_assistant_first_masks_the_template_default_system_prompt(chatml_tok):
    """A conversation opening with the assistant: the default system prompt and the header stay masked."""
    msgs = [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "and of italy ?"},
            {"role": "assistant", "content": "rome"}]
    ids, labels = encoded(chatml_tok, {"messages": msgs}, "chat")
    assert loss_text(chatml_tok, ids, labels) == "hello<|im_end|>rome<|im_end|>"


# ------------------------------------------------------- file lines, length warnings, order
def test_errors_name_the_file_line_after_the_eval_split(tmp_path, tokenizer):
    rows = [{"prompt": f"what is {w} ?", "completion": f" {w}"} for w in ("one", "two", "three", "four", "five", "six")]
    rows[4] = {"prompt": "x", "completion": 7}
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DatasetSpec(train="x", eval_fraction=0.5, max_seq_length=64)
    split = data.load_split(spec, str(tmp_path / "train.jsonl"), None, seed=0)
    assert sorted(split.train_places + split.eval_places) == [f"train.jsonl line {i}" for i in range(1, 7)]
    assert [split.train_places.index(p) for p in split.train_places] == [0, 1, 2]
    assert split.train_places != ["train.jsonl line 1", "train.jsonl line 2", "train.jsonl line 3"]  # the split moved rows
    with pytest.raises(PermanentError, match=r"train.jsonl line 5: 'completion' must be a string, got int"):
        data.prepare(spec, tokenizer, str(tmp_path / "train.jsonl"), None, seed=0, packing=False)


def test_truncation_and_drops_above_thresholds_warn_and_reach_the_summary(tokenizer):
    rows = [{"text": "one two three four five six seven eight nine ten " * 3}] * 2 + [{"text": "red cat"}] * 18
    _, st = data.encode_rows(rows, "text", tokenizer, DatasetSpec(train="x", max_seq_length=16))
    assert st.truncated == 2 and len(st.warnings) == 1 and "2 of 20 rows (10.0%) were cut to dataset.maxSeqLength 16" in st.warnings[0]
    assert st.as_dict()["warnings"] == st.warnings
    _, st = data.encode_rows(rows, "text", tokenizer, DatasetSpec(train="x", max_seq_length=16, truncation="drop"))
    assert len(st.warnings) == 1 and "2 of 20 rows (10.0%) were dropped (2 longer than" in st.warnings[0]
    _, st = data.encode_rows(rows[1:], "text", tokenizer, DatasetSpec(train="x", max_seq_length=16, truncation="drop"))
    assert st.warnings and "1 of 19 rows" in st.warnings[0]  # 5.3% dropped: over 1%
    _, st = data.encode_rows(rows[2:], "text", tokenizer, DatasetSpec(train="x", max_seq_length=16))
    assert st.warnings == []


def test_packed_rows_follow_the_file_order():
    """With shuffle: false the Trainer reads rows in order; packed rows keep the order of their first sample."""
    lengths = [2, 9, 3, 8, 4, 7, 5]
    samples = [{"input_ids": [k] * n, "labels": [IGN] + [k] * (n - 1)} for k, n in enumerate(lengths)]
    rows = data.pack(samples, max_len=10)
    firsts = [r["input_ids"][0] for r in rows]
    assert firsts == sorted(firsts)
    assert sorted(x for r in rows for x in set(r["input_ids"])) == list(range(len(lengths)))
