"""Extractive QA: SQuAD/flat readers, span labels over windows, post-processing, SQuAD v2 metrics."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from aptune.errors import ConfigError, DataError
from aptune.tasks import load_task, postprocess_qa_predictions, squad_v2_metrics
from aptune.tasks.qa import QAExample, answer_f1, normalize_answer, read_qa_examples

CONTEXT = "Paris is the capital of France. The river Seine flows through Paris. The cat sat on the mat."
OTHER = "London is big. The dog sat on the mat in London."
QUESTIONS = [
    ("q1", CONTEXT, "What is the capital of France?", ["Paris"], [0]),
    ("q2", CONTEXT, "What flows through Paris?", ["The river Seine"], [32]),
    (
        "q3",
        CONTEXT,
        "Where sat the cat?",
        ["the mat", "mat"],
        [CONTEXT.index("the mat"), CONTEXT.index("mat.")],
    ),
    ("q4", CONTEXT, "Who is the dog?", [], []),
    ("q5", OTHER, "Where sat the dog?", ["on the mat"], [OTHER.index("on the mat")]),
]


def squad_json(path, questions=QUESTIONS):
    paragraphs: dict[str, list] = {}
    for qid, context, question, texts, starts in questions:
        answers = [{"text": t, "answer_start": s} for t, s in zip(texts, starts, strict=True)]
        qa = {"id": qid, "question": question, "answers": answers, "is_impossible": not texts}
        paragraphs.setdefault(context, []).append(qa)
    articles = [{"title": "t", "paragraphs": [{"context": c, "qas": q} for c, q in paragraphs.items()]}]
    path.write_text(json.dumps({"version": "v2.0", "data": articles}), encoding="utf-8")
    return path


def flat_rows(questions=QUESTIONS):
    return [
        {"id": qid, "question": q, "context": c, "answers": {"text": texts, "answer_start": starts}}
        for qid, c, q, texts, starts in questions
    ]


# --------------------------------------------------------------------------------------------- reading
def test_squad_json_flat_jsonl_and_csv_give_the_same_examples(tmp_path):
    from_squad = read_qa_examples(squad_json(tmp_path / "dev.json"))
    jsonl = tmp_path / "dev.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in flat_rows()), encoding="utf-8")
    with open(tmp_path / "dev.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "question", "context", "answers"])
        writer.writeheader()
        for row in flat_rows():
            writer.writerow({**row, "answers": json.dumps(row["answers"])})
    assert read_qa_examples(jsonl) == from_squad
    assert read_qa_examples(tmp_path / "dev.csv") == from_squad
    assert from_squad[3] == QAExample("q4", "Who is the dog?", CONTEXT)
    assert from_squad[1].answer_texts == ("The river Seine",) and from_squad[1].answer_starts == (32,)


def test_answer_start_off_by_a_few_characters_is_repaired(tmp_path):
    rows = flat_rows(QUESTIONS[:1])
    rows[0]["answers"]["answer_start"] = [2]
    (tmp_path / "d.jsonl").write_text(json.dumps(rows[0]), encoding="utf-8")
    assert read_qa_examples(tmp_path / "d.jsonl")[0].answer_starts == (0,)


@pytest.mark.parametrize(
    ("row_change", "fragments"),
    [
        ({"answers": {"text": ["Berlin"], "answer_start": [0]}}, ["'q1'", "'Berlin' does not occur"]),
        ({"answers": {"text": ["Paris", "x"], "answer_start": [0]}}, ["2 texts but 1 answer_start"]),
        ({"answers": "{not json"}, ["column 'answers' is not valid JSON"]),
        ({"question": " "}, ["column 'question' is empty", "record 1"]),
        ({"context": None}, ["column 'context' is empty"]),
    ],
)
def test_bad_qa_rows(tmp_path, row_change, fragments):
    row = {**flat_rows(QUESTIONS[:1])[0], **row_change}
    (tmp_path / "bad.jsonl").write_text(json.dumps(row), encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_qa_examples(tmp_path / "bad.jsonl")
    assert "bad.jsonl" in str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_missing_columns_and_duplicate_ids(tmp_path):
    (tmp_path / "cols.csv").write_text("id,question,passage\n1,who,me\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_qa_examples(tmp_path / "cols.csv")
    message = str(caught.value)
    assert "cols.csv" in message and "['context', 'answers']" in message
    assert "found ['id', 'question', 'passage']" in message
    rows = flat_rows(QUESTIONS[:2])
    rows[1]["id"] = "q1"
    (tmp_path / "dup.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"dup\.jsonl: the question id 'q1' occurs twice"):
        read_qa_examples(tmp_path / "dup.jsonl")


# -------------------------------------------------------------------------------------------- features
def test_windows_label_the_answer_tokens_or_cls(tmp_path, wordpiece_tokenizer):
    task = load_task(
        "qa", wordpiece_tokenizer, eval_file=squad_json(tmp_path / "dev.json"), max_length=24, doc_stride=6
    )
    metrics = task.compute_metrics
    assert task.primary_metric == "f1" and task.greater_is_better and task.kind == "qa"
    assert set(task.eval.column_names) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "start_positions",
        "end_positions",
    }
    assert task.info["num_eval_examples"] == 5
    assert task.info["num_eval_features"] == len(task.eval) > 5  # long contexts gave several windows
    assert task.info["version_2_with_negative"] is True
    examples = metrics.examples
    seen_answer = set()
    for feature in range(len(task.eval)):
        example = examples[metrics.feature_example[feature]]
        start, end = task.eval[feature]["start_positions"], task.eval[feature]["end_positions"]
        offsets = metrics.feature_offsets[feature]
        if start == 0:
            assert end == 0
            continue
        # The labelled tokens cover exactly the first gold answer.
        assert example.context[offsets[start][0] : offsets[end][1]] == example.answer_texts[0]
        seen_answer.add(example.id)
    assert seen_answer == {"q1", "q2", "q3", "q5"}  # each answer lies whole in at least one window


def test_split_by_context_and_long_question_truncation(tmp_path, wordpiece_tokenizer):
    train = squad_json(tmp_path / "train.json")
    task = load_task(
        "qa", wordpiece_tokenizer, train_file=train, max_length=24, doc_stride=6, eval_fraction=0.5
    )
    ids_train = {e.id for e in read_qa_examples(train)} - {e.id for e in task.compute_metrics.examples}
    held_contexts = {e.context for e in task.compute_metrics.examples}
    assert len(held_contexts) == 1  # one of the two paragraphs, with all its questions
    assert ids_train and len(ids_train) + len(task.compute_metrics.examples) == 5
    long_question = [("q9", CONTEXT, "what " * 40 + "is paris?", ["Paris"], [0])]
    task = load_task(
        "qa",
        wordpiece_tokenizer,
        eval_file=squad_json(tmp_path / "long.json", long_question),
        max_length=24,
        doc_stride=6,
    )
    assert task.info["questions_truncated"] == 1
    with pytest.raises(ConfigError, match="doc_stride=30"):
        load_task("qa", wordpiece_tokenizer, eval_file=train, max_length=24, doc_stride=30)


# --------------------------------------------------------------------------------------------- metrics
def test_squad_v2_metrics_by_hand():
    references = {"a": ["Paris"], "b": ["the river Seine", "Seine"], "c": []}
    predictions = {"a": "paris.", "b": "river seine flows", "c": "London"}
    # a: normalised "paris" == "paris"                      -> EM 1, F1 1
    # b: "river seine flows" vs "river seine" (article gone): EM 0; 2 common tokens,
    #    P = 2/3, R = 2/2 -> F1 = 0.8 (vs "seine": P 1/3, R 1 -> 0.5); best 0.8
    # c: no answer expected, "london" predicted              -> EM 0, F1 0
    result = squad_v2_metrics(predictions, references)
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["f1"] == pytest.approx((1 + 0.8 + 0) / 3)
    assert result["has_ans_exact_match"] == pytest.approx(0.5)
    assert result["has_ans_f1"] == pytest.approx(0.9)
    assert result["no_ans_exact_match"] == 0.0 and result["no_ans_f1"] == 0.0
    assert (result["total"], result["has_ans_total"], result["no_ans_total"]) == (3, 2, 1)
    # An empty prediction for an unanswerable question is right; a missing one counts as empty.
    assert squad_v2_metrics({}, {"c": []})["exact_match"] == 1.0
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert answer_f1("", ["x"]) == 0.0


def test_postprocess_picks_best_valid_span_or_no_answer():
    context = "the cat sat on the mat"
    example = QAExample("x", "who sat", context, ("cat",), (4,))
    # [CLS] who sat [SEP] the cat sat on the mat [SEP]
    offsets = [None, None, None, None, (0, 3), (4, 7), (8, 11), (12, 14), (15, 18), (19, 22), None]
    start = np.full((1, 13), -5.0)  # 2 extra columns: padding added between batches, ignored
    end = np.full((1, 13), -5.0)
    start[0, 5], end[0, 6] = 3.0, 3.0  # "cat sat": score 6
    end[0, 4] = 4.0  # ends before the best start: never paired with it
    start[0, 11], end[0, 12] = 50.0, 50.0  # beyond the feature's tokens: ignored
    start[0, 0], end[0, 0] = 1.0, 1.0  # null score 2 < 6
    run = {"feature_cls": [0]}
    assert postprocess_qa_predictions([example], [0], [offsets], start, end, **run) == {"x": "cat sat"}
    # One-token spans only: "the" (-5 + 4 = -1) beats "cat" and "sat" (3 - 5 = -2); all lose to null (2).
    one_token = {"max_answer_length": 1, **run}
    assert postprocess_qa_predictions([example], [0], [offsets], start, end, **one_token) == {"x": ""}
    assert postprocess_qa_predictions(
        [example], [0], [offsets], start, end, allow_no_answer=False, **one_token
    ) == {"x": "the"}
    start[0, 0], end[0, 0] = 4.0, 4.0  # null score 8 > 6
    assert postprocess_qa_predictions([example], [0], [offsets], start, end, **run) == {"x": ""}
    assert postprocess_qa_predictions([example], [0], [offsets], start, end, null_threshold=3.0, **run) == {
        "x": "cat sat"
    }
    assert postprocess_qa_predictions(
        [example], [0], [offsets], start, end, allow_no_answer=False, **run
    ) == {"x": "cat sat"}
    with pytest.raises(ValueError, match="logits for 1 features"):
        postprocess_qa_predictions([example], [0, 0], [offsets, offsets], start, end)


def test_compute_metrics_maps_feature_logits_to_examples(tmp_path, wordpiece_tokenizer):
    task = load_task(
        "qa", wordpiece_tokenizer, eval_file=squad_json(tmp_path / "dev.json"), max_length=24, doc_stride=6
    )
    width = max(len(ids) for ids in task.eval["input_ids"]) + 3
    # "Perfect" logits: high at the labelled start/end of every window, -100 padding as the Trainer adds.
    start = np.full((len(task.eval), width), -100.0)
    end = np.full((len(task.eval), width), -100.0)
    for feature, row in enumerate(task.eval):
        length = len(row["input_ids"])
        start[feature, :length] = end[feature, :length] = 0.0
        start[feature, row["start_positions"]] += 10.0
        end[feature, row["end_positions"]] += 10.0
    labels = (np.array(task.eval["start_positions"]), np.array(task.eval["end_positions"]))
    result = task.compute_metrics(EvalPrediction(predictions=(start, end), label_ids=labels))
    assert result["exact_match"] == 1.0 and result["f1"] == 1.0
    assert task.compute_metrics.last_predictions["q2"] == "The river Seine"
    assert task.compute_metrics.last_predictions["q4"] == ""
    # A model that always says "no answer" gets only the unanswerable question right.
    everything_null = np.zeros_like(start)
    everything_null[:, 0] = 10.0
    result = task.compute_metrics(
        EvalPrediction(predictions=(everything_null, everything_null), label_ids=labels)
    )
    assert result["no_ans_exact_match"] == 1.0 and result["has_ans_exact_match"] == 0.0
    assert result["exact_match"] == pytest.approx(1 / 5)


def test_trainer_evaluate_matches_a_manual_pass(tmp_path, wordpiece_tokenizer):
    from transformers import BertConfig, BertForQuestionAnswering, Trainer, TrainingArguments

    task = load_task(
        "qa", wordpiece_tokenizer, eval_file=squad_json(tmp_path / "dev.json"), max_length=24, doc_stride=6
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(wordpiece_tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    model = BertForQuestionAnswering(config).eval()
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_eval_batch_size=3,
        report_to="none",
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model, args=args, data_collator=task.collator, compute_metrics=task.compute_metrics
    )
    metrics = trainer.evaluate(task.eval)
    through_trainer = dict(task.compute_metrics.last_predictions)

    # The same logits, one unpadded feature at a time.
    width = max(len(ids) for ids in task.eval["input_ids"])
    start = np.full((len(task.eval), width), -100.0)
    end = np.full((len(task.eval), width), -100.0)
    with torch.no_grad():
        for feature, row in enumerate(task.eval):
            inputs = {k: torch.tensor([row[k]]) for k in ("input_ids", "token_type_ids", "attention_mask")}
            out = model(**inputs)
            start[feature, : len(row["input_ids"])] = out.start_logits[0].numpy()
            end[feature, : len(row["input_ids"])] = out.end_logits[0].numpy()
    manual = task.compute_metrics(EvalPrediction(predictions=(start, end), label_ids=None))
    assert task.compute_metrics.last_predictions == through_trainer
    assert metrics["eval_f1"] == pytest.approx(manual["f1"])
    assert metrics["eval_exact_match"] == pytest.approx(manual["exact_match"])
    assert "eval_loss" in metrics  # start/end positions make the trainer compute the loss
