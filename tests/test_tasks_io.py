"""Reading data files, splitting them, and the option checks of `load_task`."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from aptune.errors import ConfigError, DataError
from aptune.tasks import load_task, random_split, read_records, stratified_split
from aptune.tasks.io import cap_records, check_columns
from aptune.tasks.split import eval_size


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ read_records
def test_csv_tsv_json_jsonl_read_the_same_records(tmp_path):
    expected = [{"sentence": "a fine film", "label": "1"}, {"sentence": 'boring, "awful" plot', "label": "0"}]
    csv_file = write(tmp_path / "d.csv", '\ufeffsentence,label\na fine film,1\n"boring, ""awful"" plot",0\n')
    # GLUE TSVs are read without quote processing, so quotes stay in the text.
    tsv_file = write(tmp_path / "d.tsv", 'sentence\tlabel\na fine film\t1\nboring, "awful" plot\t0\n')
    json_file = write(tmp_path / "d.json", json.dumps(expected))
    data_file = write(tmp_path / "squadlike.json", json.dumps({"version": "x", "data": expected}))
    jsonl_file = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in expected) + "\n\n")
    # What `Dataset.to_json` writes: JSON Lines in a .json file.
    lines_in_json = write(tmp_path / "lines.json", "\n".join(json.dumps(r) for r in expected))
    for file in (csv_file, tsv_file, json_file, data_file, jsonl_file, lines_in_json):
        assert read_records(file) == expected, file.name


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("empty.csv", "", "is empty"),
        ("blank.jsonl", "  \n\n", "is empty"),
        ("data.xlsx", "x", "unsupported extension '.xlsx'"),
        ("header.csv", "text,label\n", "no data rows"),
        ("ragged.csv", "text,label\nhello,1,extra\n", "line 2: 3 fields"),
        ("dup.csv", "text,text\na,b\n", "repeats the column"),
        ("bad.json", '[{"text": "a", "label": 1},\n {"text": "b" "label": 0}]', "line 2"),
        ("bad.jsonl", '{"text": "a"}\n{"text": \n', "line 2 is not valid JSON"),
        ("scalar.jsonl", '{"text": "a"}\n[1, 2]\n', "line 2 holds a JSON list"),
        ("obj.json", '{"rows": []}', 'object with a "data" list'),
        ("items.json", '["a", "b"]', "item 0 of the list is a str"),
        ("none.json", "[]", "contains no records"),
    ],
)
def test_bad_files_raise_data_error_naming_the_file(tmp_path, name, content, fragment):
    file = write(tmp_path / name, content)
    with pytest.raises(DataError) as caught:
        read_records(file)
    assert name in str(caught.value)
    assert fragment in str(caught.value)


def test_missing_file_and_directory_and_non_utf8(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv does not exist"):
        read_records(tmp_path / "nope.csv")
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        read_records(tmp_path / "folder.csv")
    (tmp_path / "latin.csv").write_bytes("text\nca\xa3t\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv is not UTF-8"):
        read_records(tmp_path / "latin.csv")


def test_check_columns_lists_found_and_expected():
    with pytest.raises(DataError) as caught:
        check_columns([{"a": 1, "b": 2}], ["a", "c"], "x.csv")
    message = str(caught.value)
    assert "x.csv" in message and "['c']" in message and "found ['a', 'b']" in message
    assert "expected ['a', 'c']" in message
    with pytest.raises(DataError, match="record 2 lacks the field"):
        check_columns([{"a": 1}, {"b": 2}], ["a"], "x.jsonl")


# ---------------------------------------------------------------------------------------------- splits
def test_stratified_split_on_bbc_sized_classes_gives_1780_445():
    sizes = {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
    labels = [name for name, count in sizes.items() for _ in range(count)]
    train, held = stratified_split(labels, 0.2, seed=0)
    assert (len(train), len(held)) == (1780, 445)
    assert sorted(train + held) == list(range(len(labels)))
    # Floors 102/77/83/102/80 make 444; the one row left goes to the largest remainder (politics, .4).
    assert Counter(labels[i] for i in held) == {
        "business": 102,
        "entertainment": 77,
        "politics": 84,
        "sports": 102,
        "tech": 80,
    }
    assert stratified_split(labels, 0.2, seed=0) == (train, held)  # deterministic
    assert stratified_split(labels, 0.2, seed=1)[1] != held


def test_stratified_split_small_classes_stay_in_train():
    labels = [0] * 8 + [1] * 2 + [2]
    train, held = stratified_split(labels, 0.2, seed=3)
    assert len(held) == eval_size(11, 0.2) == 3
    assert 10 in train  # the single example of class 2 is never held out
    assert {labels[i] for i in train} == {0, 1, 2}


def test_random_split_keeps_groups_together():
    groups = ["p1", "p1", "p2", "p3", "p3", "p3", "p4", "p5"]
    train, held = random_split(len(groups), 0.4, seed=0, groups=groups)
    assert sorted(train + held) == list(range(len(groups)))
    assert not {groups[i] for i in train} & {groups[i] for i in held}
    assert len({groups[i] for i in held}) == 2  # ceil(0.4 * 5 groups)


def test_eval_size_rounding():
    assert eval_size(30, 0.1) == 3  # 0.1 * 30 = 3.0000000000000004 must not become 4
    assert eval_size(10, 0.25) == 3
    assert eval_size(1, 0.5) == 0
    assert eval_size(2, 0.9) == 1


def test_cap_records_is_a_seeded_subset_in_order():
    rows = list(range(100))
    kept = cap_records(rows, 10, seed=0)
    assert len(kept) == 10 and kept == sorted(kept)
    assert kept == cap_records(rows, 10, seed=0)
    assert kept != rows[:10]
    assert cap_records(rows, None, seed=0) is rows


# ------------------------------------------------------------------------------------------- load_task
def test_load_task_checks_its_options(tmp_path, wordpiece_tokenizer):
    file = write(tmp_path / "t.csv", "text,label\ngood,1\nbad,0\n")
    with pytest.raises(ConfigError, match="Unknown task kind 'regression'"):
        load_task("regression", wordpiece_tokenizer, train_file=file)
    with pytest.raises(ConfigError, match="No data given"):
        load_task("classification", wordpiece_tokenizer)
    with pytest.raises(ConfigError, match=r"Unknown option\(s\) \['doc_strid'\]"):
        load_task("classification", wordpiece_tokenizer, train_file=file, doc_strid=3)
    with pytest.raises(ConfigError, match="'num_labels' does not apply to task kind 'qa'"):
        load_task("qa", wordpiece_tokenizer, train_file=file, num_labels=3)
    with pytest.raises(ConfigError, match="eval_fraction"):
        load_task("classification", wordpiece_tokenizer, train_file=file, eval_fraction=1.0)
    with pytest.raises(ConfigError, match="either dataset_name or"):
        load_task("classification", wordpiece_tokenizer, train_file=file, dataset_name="bbc_news")
