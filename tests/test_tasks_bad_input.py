"""Bad input to the loaders, as a table: each case fails with one clear error naming the problem."""

from __future__ import annotations

import json

import pytest

from aptune.errors import ConfigError, DataError
from aptune.tasks import load_task

GOOD_CSV = "text,label\n" + "\n".join(f"film {i},{i % 2}" for i in range(10)) + "\n"
GOOD_SEQ2SEQ = "\n".join(json.dumps({"source": f"the cat {i}", "target": f"cat {i}"}) for i in range(5))


def _qa_row(qid, context, answer, start):
    return {
        "id": qid,
        "question": "what",
        "context": context,
        "answers": {"text": [answer], "answer_start": [start]},
    }


# (id, kind, {file name: content}, options (file names stand for their paths), error, message pattern)
TEST_CASES = [
    # --- shared options
    ("no-data", "classification", {}, {}, ConfigError, "No data given"),
    (
        "unknown-kind",
        "regression",
        {"t.csv": GOOD_CSV},
        {"train_file": "t.csv"},
        ConfigError,
        "Unknown task kind",
    ),
    (
        "max-length",
        "classification",
        {"t.csv": GOOD_CSV},
        {"train_file": "t.csv", "max_length": 4},
        ConfigError,
        "max_length must be an integer >= 8",
    ),
    (
        "eval-fraction",
        "classification",
        {"t.csv": GOOD_CSV},
        {"train_file": "t.csv", "eval_fraction": 1.0},
        ConfigError,
        r"eval_fraction must be in \[0, 1\)",
    ),
    (
        "max-train-samples",
        "classification",
        {"t.csv": GOOD_CSV},
        {"train_file": "t.csv", "max_train_samples": 0},
        ConfigError,
        "max_train_samples must be a positive integer",
    ),
    (
        "num-labels",
        "classification",
        {"t.csv": GOOD_CSV},
        {"train_file": "t.csv", "num_labels": 1},
        ConfigError,
        "num_labels must be an integer >= 2",
    ),
    (
        "dedupe-not-bool",
        "classification",
        {"t.csv": GOOD_CSV},
        {"train_file": "t.csv", "dedupe": "yes"},
        ConfigError,
        "dedupe must be True or False",
    ),
    (
        "two-sources",
        "classification",
        {"t.csv": GOOD_CSV},
        {"train_file": "t.csv", "dataset_name": "bbc_news"},
        ConfigError,
        "either dataset_name or",
    ),
    (
        "option-of-another-kind",
        "seq2seq",
        {"t.jsonl": GOOD_SEQ2SEQ},
        {"train_file": "t.jsonl", "label_column": "y"},
        ConfigError,
        "'label_column' does not apply to task kind 'seq2seq'",
    ),
    (
        "unknown-option",
        "causal-lm",
        {"t.txt": "a b\n\nc d\n"},
        {"train_file": "t.txt", "doc_stride": 3},
        ConfigError,
        r"Unknown option\(s\) \['doc_stride'\].*packing",
    ),
    # --- files
    ("missing-file", "classification", {}, {"train_file": "nope.csv"}, DataError, "does not exist"),
    ("empty-file", "classification", {"t.csv": "  \n"}, {"train_file": "t.csv"}, DataError, "is empty"),
    (
        "extension",
        "classification",
        {"t.xlsx": "x"},
        {"train_file": "t.xlsx"},
        DataError,
        "unsupported extension '.xlsx'",
    ),
    (
        "ragged-csv",
        "classification",
        {"t.csv": "text,label\na,1,2\n"},
        {"train_file": "t.csv"},
        DataError,
        "line 2: 3 fields",
    ),
    ("bad-json", "seq2seq", {"t.json": "[{"}, {"train_file": "t.json"}, DataError, "is not valid JSON"),
    # --- classification
    (
        "no-text-column",
        "classification",
        {"t.csv": "body,label\na,1\nb,0\n"},
        {"train_file": "t.csv"},
        DataError,
        "no recognised text column",
    ),
    (
        "three-text-columns",
        "classification",
        {"t.csv": GOOD_CSV},
        {"train_file": "t.csv", "text_columns": ["a", "b", "c"]},
        ConfigError,
        "one or two columns",
    ),
    (
        "single-class",
        "classification",
        {"t.csv": "text,label\na,1\nb,1\n"},
        {"train_file": "t.csv"},
        DataError,
        "single class",
    ),
    (
        "label-out-of-range",
        "classification",
        {"t.csv": "text,label\na,0\nb,3\n"},
        {"train_file": "t.csv", "num_labels": 2},
        DataError,
        r"outside 0\.\.1",
    ),
    (
        "negative-label",
        "classification",
        {"t.csv": "text,label\na,0\nb,-1\n"},
        {"train_file": "t.csv"},
        DataError,
        "is negative",
    ),
    (
        "empty-text",
        "classification",
        {"t.csv": "text,label\na,0\n ,1\n"},
        {"train_file": "t.csv"},
        DataError,
        "record 2: column 'text' is empty",
    ),
    (
        "names-without-train",
        "classification",
        {"d.csv": "text,label\na,pos\n"},
        {"eval_file": "d.csv"},
        DataError,
        "Pass label_names",
    ),
    (
        "too-few-rows-after-dedupe",
        "classification",
        {"t.csv": "text,label\na,0\na,1\n"},
        {"train_file": "t.csv"},
        DataError,
        r"too few rows \(1\)",
    ),
    # --- seq2seq
    (
        "no-source-target",
        "seq2seq",
        {"t.jsonl": json.dumps({"a": "x", "b": "y"})},
        {"train_file": "t.jsonl"},
        DataError,
        "no source/target columns",
    ),
    (
        "one-seq2seq-column",
        "seq2seq",
        {"t.jsonl": GOOD_SEQ2SEQ},
        {"train_file": "t.jsonl", "text_columns": "source"},
        ConfigError,
        r"must name \(source, target\)",
    ),
    # --- causal LM
    (
        "two-text-columns",
        "causal-lm",
        {"t.txt": "a b\n"},
        {"train_file": "t.txt", "text_columns": ["a", "b"]},
        ConfigError,
        "one text column",
    ),
    (
        "no-text",
        "causal-lm",
        {"t.jsonl": json.dumps({"body": "the cat"})},
        {"train_file": "t.jsonl"},
        DataError,
        "lacks the column",
    ),
    (
        "too-few-documents",
        "causal-lm",
        {"t.txt": "the cat\n\nthe cat\n"},
        {"train_file": "t.txt"},
        DataError,
        r"too few documents \(1\)",
    ),
    # --- QA
    (
        "answer-not-in-context",
        "qa",
        {"q.jsonl": json.dumps(_qa_row("1", "the cat sat", "dog", 0))},
        {"train_file": "q.jsonl"},
        DataError,
        "does not occur in the context",
    ),
    (
        "repeated-id",
        "qa",
        {"q.jsonl": "\n".join(json.dumps(_qa_row("1", f"the cat {i}", "cat", 4)) for i in range(2))},
        {"train_file": "q.jsonl"},
        DataError,
        "occurs twice",
    ),
    (
        "doc-stride",
        "qa",
        {"q.jsonl": json.dumps(_qa_row("1", "the cat", "cat", 4))},
        {"train_file": "q.jsonl", "max_length": 16, "doc_stride": 14},
        ConfigError,
        "leaves no room for the question",
    ),
    (
        "too-few-contexts",
        "qa",
        {"q.jsonl": "\n".join(json.dumps(_qa_row(str(i), "the cat", "cat", 4)) for i in range(3))},
        {"train_file": "q.jsonl", "dedupe": False},
        DataError,
        r"too few contexts \(1\)",
    ),
]


@pytest.mark.parametrize(
    ("kind", "files", "options", "error", "pattern"),
    [case[1:] for case in TEST_CASES],
    ids=[case[0] for case in TEST_CASES],
)
def test_bad_input_fails_with_one_clear_error(
    tmp_path, wordpiece_tokenizer, kind, files, options, error, pattern
):
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    resolved = {
        key: str(tmp_path / value) if key in ("train_file", "eval_file") else value
        for key, value in options.items()
    }
    with pytest.raises(error, match=pattern) as raised:
        load_task(kind, wordpiece_tokenizer, **resolved)
    assert "\n" not in str(raised.value)
