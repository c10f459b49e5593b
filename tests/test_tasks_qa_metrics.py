"""SQuAD v2 exact match and F1 against the official evaluation script's definitions, on hand-made cases.

The official script (evaluate-v2.0.py) normalises answers (lower case, ASCII punctuation removed,
the articles a/an/the removed as words, whitespace collapsed), scores exact match on normalised
strings and F1 on bags of normalised tokens, takes the best over gold answers, drops gold answers
that normalise to nothing, and scores an unanswerable question (no gold answer left) against the
empty string. The `evaluate` package's squad_v2 metric downloads that script from the Hub, which
this machine cannot reach; the expected numbers below are worked out by hand from those definitions.
"""

from __future__ import annotations

import pytest

from aptune.tasks import squad_v2_metrics
from aptune.tasks.qa import answer_exact_match, answer_f1, normalize_answer

# (prediction, gold answers, exact match, F1), each worked out by hand.
SQUAD_CASES = [
    ("Paris", ["Paris"], 1.0, 1.0),
    ("the Eiffel Tower!", ["Eiffel tower"], 1.0, 1.0),  # article, case, punctuation
    ("an apple a day", ["apple day"], 1.0, 1.0),  # "an" and "a" removed
    ("theater", ["the ater"], 0.0, 0.0),  # "the" only as a word: "theater" vs "ater"
    ("U.S.", ["US"], 1.0, 1.0),  # punctuation inside a word is removed
    (" Paris\n", ["paris"], 1.0, 1.0),  # whitespace
    ("\u201cParis\u201d", ["Paris"], 0.0, 0.0),  # curly quotes are not ASCII punctuation: kept
    ("New York City", ["New York"], 0.0, 0.8),  # common 2; P 2/3, R 1 -> 2 * (2/3) / (5/3)
    ("york york", ["york"], 0.0, 2 / 3),  # bags: common min(2, 1) = 1; P 1/2, R 1
    ("big red dog", ["dog", "big red"], 0.0, 0.8),  # best gold: "big red" (P 2/3, R 1) beats 0.5
    ("", [], 1.0, 1.0),  # unanswerable, no answer predicted
    ("the", [], 1.0, 1.0),  # normalises to the empty answer
    ("Paris", [], 0.0, 0.0),  # unanswerable, an answer predicted
    ("", ["Paris"], 0.0, 0.0),  # answerable, no answer predicted
    ("", ["The", "a"], 1.0, 1.0),  # every gold normalises to nothing: scored as unanswerable
    ("", ["the", "cat"], 0.0, 0.0),  # "the" is dropped, "cat" remains: no answer is wrong
    ("cat", ["the", "cat"], 1.0, 1.0),
]


@pytest.mark.parametrize(("prediction", "golds", "exact", "f1"), SQUAD_CASES)
def test_squad_v2_definitions_case_by_case(prediction, golds, exact, f1):
    assert answer_exact_match(prediction, golds) == exact
    assert answer_f1(prediction, golds) == pytest.approx(f1)


@pytest.mark.parametrize(
    ("text", "normalised"),
    [("The  Eiffel-Tower!", "eiffeltower"), ("A cat, an owl", "cat owl"), ("An", ""), ("theatre", "theatre")],
)
def test_normalize_answer(text, normalised):
    assert normalize_answer(text) == normalised


def test_squad_v2_totals_and_answerable_split_by_hand():
    references = {"a": ["Paris"], "b": ["New York"], "c": [], "d": []}
    predictions = {"a": "paris", "b": "New York City", "c": "", "d": "Paris"}
    # EM: 1, 0, 1, 0; F1: 1, 0.8, 1, 0.
    result = squad_v2_metrics(predictions, references)
    assert result == pytest.approx(
        {
            "exact_match": 0.5,
            "f1": 0.7,
            "total": 4.0,
            "has_ans_exact_match": 0.5,
            "has_ans_f1": 0.9,
            "has_ans_total": 2.0,
            "no_ans_exact_match": 0.5,
            "no_ans_f1": 0.5,
            "no_ans_total": 2.0,
        }
    )
    # A question without a prediction counts as "no answer" (the official script would skip it).
    assert squad_v2_metrics({}, {"a": ["Paris"], "c": []}) == pytest.approx(
        {
            "exact_match": 0.5,
            "f1": 0.5,
            "total": 2.0,
            "has_ans_exact_match": 0.0,
            "has_ans_f1": 0.0,
            "has_ans_total": 1.0,
            "no_ans_exact_match": 1.0,
            "no_ans_f1": 1.0,
            "no_ans_total": 1.0,
        }
    )
