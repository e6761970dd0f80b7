"""The generation metrics of the final evaluation on hand-worked examples (no model)."""
from __future__ import annotations

import pytest

from kubetune_trainer.evaluation import generation_metrics, loss_metrics, normalise, rouge_l, score


@pytest.mark.parametrize("text,want", [
    ("The  Cat, sat!", "cat sat"),
    ("An apple a day", "apple day"),
    ('{"x": "B"}', "x b"),
    ("", ""),
])
def test_normalise(text, want):
    assert normalise(text) == want


@pytest.mark.parametrize("pred,ref,want", [
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6),  # LCS "the cat on the mat": P = R = 5/6
    ("police killed the gunman", "the gunman police killed", 0.5),  # LCS 2 of 4 each way
    ("Paris", "paris.", 1.0),  # lower-cased word tokens, punctuation is not a token
    ("", "", 1.0),
    ("something", "", 0.0),
    ("a b c", "x y z", 0.0),
])
def test_rouge_l(pred, ref, want):
    assert rouge_l(pred, ref) == pytest.approx(want)


def test_score_json_fields_and_aggregate():
    ref = '{"product": "nimbus-drive", "category": "billing", "urgency": "medium"}'
    exact = score(' {"product": "nimbus-drive", "category": "billing", "urgency": "medium"}\n', ref)
    reordered = score('{"urgency": "high", "category": "billing", "product": "nimbus-drive"}', ref)
    prose = score("I'm sorry, I cannot help with refunds.", ref)
    plain = score("Paris", "paris")
    assert exact["exact"] and exact["jsonValid"] and all(exact["fields"].values())
    assert not reordered["exact"] and reordered["jsonValid"] and reordered["fields"] == {"product": True, "category": True, "urgency": False}
    assert not prose["jsonValid"] and not any(prose["fields"].values())
    assert "jsonValid" not in plain and plain["normalizedExact"] and not plain["exact"]
    m = generation_metrics([exact, reordered, prose, plain])
    assert m["generations"] == 4 and m["exactMatch"] == 0.25 and m["normalizedExactMatch"] == 0.5
    assert m["jsonRows"] == 3 and m["jsonValid"] == pytest.approx(2 / 3)
    assert m["jsonFieldMatch"] == pytest.approx(5 / 9)
    assert m["fields"] == {"product": pytest.approx(2 / 3), "category": pytest.approx(2 / 3), "urgency": pytest.approx(1 / 3)}


def test_loss_metrics_weight_tokens_not_rows():
    m = loss_metrics([{"lossSum": 2.0, "tokens": 1, "correct": 1}, {"lossSum": 3.0, "tokens": 3, "correct": 0}])
    assert m["loss"] == 5.0 / 4 and m["tokenAccuracy"] == 0.25 and m["tokens"] == 4 and m["rows"] == 2
