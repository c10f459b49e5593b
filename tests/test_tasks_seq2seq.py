"""Seq2seq: source/target files, label padding, and ROUGE from rouge-score (stemmed, rougeLsum)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from aptune.errors import DataError
from aptune.tasks import Seq2SeqMetrics, load_task, rouge_scores
from aptune.tasks.seq2seq import reduce_seq2seq_logits, split_sentences

PAIRS = [
    ("the cat sat on the mat in paris", "cat on mat"),
    ("the dog sat in london", "dog in london"),
    ("paris is the capital of france", "paris capital"),
    ("the river seine flows through paris", "seine in paris"),
    ("london is big", "big london"),
]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def test_rouge_by_hand():
    prediction, reference = "The cat sat on the mat.", "the cat is on the mat"
    # tokens: the cat sat on the mat / the cat is on the mat (6 each)
    # ROUGE-1: overlap the x2, cat, on, mat = 5 -> P = R = 5/6 -> F = 5/6
    # ROUGE-2: bigrams in common: the-cat, on-the, the-mat = 3 of 5 each -> F = 3/5
    # ROUGE-L: LCS "the cat on the mat" = 5 -> F = 5/6
    # One sentence each, so the summary-level rougeLsum equals rougeL.
    scores = rouge_scores([prediction], [reference])
    assert scores == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6, "rougeLsum": 5 / 6})
    # Unequal lengths: "cat mat" vs the same reference: R-1 P = 1, R = 2/6 -> F = 0.5;
    # no common bigram; LCS 2 -> F = 0.5.
    assert rouge_scores(["cat mat", "x"], [reference, "y"]) == pytest.approx(
        {"rouge1": 0.25, "rouge2": 0.0, "rougeL": 0.25, "rougeLsum": 0.25}
    )
    # Tokens are lower-cased runs of letters and digits, Porter-stemmed: "hats" matches "hat".
    assert rouge_scores(["The cat's 2 hats!"], ["the cat s 2 hat"])["rouge1"] == pytest.approx(1.0)
    assert rouge_scores([""], ["a"])["rouge1"] == 0.0 and rouge_scores(["a"], [""])["rougeL"] == 0.0
    lcs = rouge_scores([" ".join("abcbdab")], [" ".join("bdcaba")])["rougeL"]
    assert lcs == pytest.approx(2 * (4 / 7) * (4 / 6) / (4 / 7 + 4 / 6))
    with pytest.raises(ValueError):
        rouge_scores(["a"], [])


def test_jsonl_source_target(tmp_path, wordpiece_tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", [{"source": s, "target": t} for s, t in PAIRS])
    task = load_task("seq2seq", wordpiece_tokenizer, train_file=train, max_length=16, max_target_length=4)
    assert task.kind == "seq2seq" and task.primary_metric == "rougeL" and task.greater_is_better
    assert (len(task.train), len(task.eval)) == (4, 1)
    assert set(task.train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    row = task.train[0]
    target = dict(PAIRS)[wordpiece_tokenizer.decode(row["input_ids"], skip_special_tokens=True)]
    assert (
        row["labels"] == wordpiece_tokenizer(text_target=target, max_length=4, truncation=True)["input_ids"]
    )
    batch = task.collator([task.train[i] for i in range(2)])
    lengths = [len(task.train[i]["labels"]) for i in range(2)]
    shorter = int(np.argmin(lengths))
    assert (batch["labels"][shorter, min(lengths) :] == -100).all()
    assert task.info["train_targets_at_max_length"] >= 1


def test_document_summary_csv_prefix_and_explicit_columns(tmp_path, wordpiece_tokenizer):
    csv_file = tmp_path / "xsum.csv"
    csv_file.write_text("document,summary\n" + "\n".join(f"{s},{t}" for s, t in PAIRS), encoding="utf-8")
    task = load_task("seq2seq", wordpiece_tokenizer, eval_file=csv_file, source_prefix="summary: ")
    assert task.train is None and len(task.eval) == 5
    assert wordpiece_tokenizer.decode(task.eval[0]["input_ids"], skip_special_tokens=True).startswith(
        "summary : the cat sat"
    )
    renamed = write_jsonl(tmp_path / "r.jsonl", [{"a": s, "b": t} for s, t in PAIRS])
    task = load_task("seq2seq", wordpiece_tokenizer, eval_file=renamed, text_columns=["b", "a"])
    assert wordpiece_tokenizer.decode(task.eval[0]["input_ids"], skip_special_tokens=True) == "cat on mat"


@pytest.mark.parametrize(
    ("rows", "fragments"),
    [
        ([{"text": "a", "summary": "b"}], ["bad.jsonl", "found ['text', 'summary']", "source+target"]),
        ([{"source": "the cat", "target": "cat"}, {"source": "dog", "target": ""}], ["record 2", "'target'"]),
    ],
)
def test_bad_seq2seq_data(tmp_path, wordpiece_tokenizer, rows, fragments):
    file = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as caught:
        load_task("seq2seq", wordpiece_tokenizer, train_file=file, eval_fraction=0.0)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_metrics_decode_ids_with_padding(wordpiece_tokenizer):
    predictions = ["the cat sat on the mat", "london"]
    references = ["the cat is on the mat", "big london"]

    def encode(texts, width):
        rows = [wordpiece_tokenizer(text)["input_ids"] for text in texts]
        return np.array([row + [-100] * (width - len(row)) for row in rows])

    compute = Seq2SeqMetrics(wordpiece_tokenizer)
    result = compute(EvalPrediction(predictions=encode(predictions, 12), label_ids=encode(references, 10)))
    expected = rouge_scores(predictions, references)
    assert {k: result[k] for k in expected} == pytest.approx(expected)
    assert compute.last_predictions == predictions
    assert result["gen_len"] == pytest.approx((6 + 1) / 2)  # special tokens and padding not counted


def test_reduce_logits_keeps_generated_ids():
    generated = torch.tensor([[0, 5, 6]])
    assert reduce_seq2seq_logits(generated) is generated
    logits = torch.zeros(1, 2, 4)
    logits[0, 0, 3] = logits[0, 1, 1] = 1.0
    assert reduce_seq2seq_logits((logits, torch.zeros(1))).tolist() == [[3, 1]]


def test_seq2seq_trainer_with_generation(tmp_path, wordpiece_tokenizer):
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, T5Config, T5ForConditionalGeneration

    file = write_jsonl(tmp_path / "dev.jsonl", [{"source": s, "target": t} for s, t in PAIRS])
    task = load_task("seq2seq", wordpiece_tokenizer, eval_file=file, max_length=16)
    torch.manual_seed(0)
    pad = wordpiece_tokenizer.pad_token_id
    config = T5Config(
        vocab_size=len(wordpiece_tokenizer),
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        pad_token_id=pad,
        eos_token_id=wordpiece_tokenizer.sep_token_id,
        decoder_start_token_id=pad,
    )
    model = T5ForConditionalGeneration(config).eval()
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_eval_batch_size=2,
        predict_with_generate=True,
        generation_max_length=6,
        report_to="none",
        dataloader_pin_memory=False,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        data_collator=task.collator,
        compute_metrics=task.compute_metrics,
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
    )
    metrics = trainer.evaluate(task.eval)
    generated = task.compute_metrics.last_predictions
    assert len(generated) == len(PAIRS)
    expected = rouge_scores(generated, [t for _, t in PAIRS])
    assert metrics["eval_rougeL"] == pytest.approx(expected["rougeL"])
    assert metrics["eval_rouge1"] == pytest.approx(expected["rouge1"])


def test_rouge_lsum_is_summary_level_over_sentences():
    # Reference sentences "the cat sat" / "the dog ran"; the prediction has them in the other order.
    # rougeL (one sequence): LCS of [the cat sat the dog ran] and [the dog ran the cat sat] is 3 of 6
    # tokens -> F = 0.5. rougeLsum: each reference sentence is matched in full by one predicted
    # sentence (union LCS 3 + 3 of 6) -> P = R = 1. rouge2: 4 of the 5 bigrams are shared -> 0.8.
    scores = rouge_scores(["The dog ran. The cat sat."], ["The cat sat.\nThe dog ran."])
    assert scores == pytest.approx({"rouge1": 1.0, "rouge2": 0.8, "rougeL": 0.5, "rougeLsum": 1.0})
    assert split_sentences("The dog ran. The cat sat.") == "The dog ran.\nThe cat sat."
    assert split_sentences("One line\nTwo lines") == "One line\nTwo lines"


def test_rouge_uses_porter_stemming_as_reported_for_cnn_dailymail():
    # Stemmed: [the cat are run] vs [the cat is run] -> 3 of 4 unigrams -> 0.75 (0.25 unstemmed);
    # bigrams "the cat" of 3 -> 1/3.
    scores = rouge_scores(["the cats are running"], ["the cat is run"])
    assert scores["rouge1"] == pytest.approx(0.75) and scores["rouge2"] == pytest.approx(1 / 3)
    assert scores["rougeL"] == pytest.approx(0.75)
