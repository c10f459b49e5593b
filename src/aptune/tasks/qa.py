"""Extractive question answering (SQuAD v1.1 / v2.0): data, span labels, post-processing and metrics.

Input: SQuAD JSON (``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}``) or flat records with
the columns ``id``, ``question``, ``context``, ``answers`` (``{"text": [...], "answer_start": [...]}``;
in a CSV cell as JSON), the layout of the ``squad`` data set on the Hub.

Long contexts are cut into overlapping windows ("features") of ``max_length`` tokens that overlap by
``doc_stride`` tokens (the meaning of ``stride`` in transformers' tokenizers and of ``doc_stride`` in
its example scripts). A feature's labels are the token positions of the answer's first and last token,
or the classifier token's position when the answer is not (entirely) inside that window or the question
has no answer.

Evaluation runs on features, metrics on examples. :class:`QAMetrics` keeps which feature belongs to
which example and each feature's character offsets, and maps the start/end logits back to one answer
string per question (:func:`postprocess_qa_predictions`), then scores them with the SQuAD v2 exact
match and F1 (:func:`squad_v2_metrics`), reported as fractions in [0, 1].
"""

from __future__ import annotations

import ast
import json
import os
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from aptune.errors import ConfigError, DataError, ModelError
from aptune.tasks.base import TaskData
from aptune.tasks.io import cap_records, check_columns, load_dataset_records, read_records, require_text
from aptune.tasks.split import random_split

if TYPE_CHECKING:
    import transformers

__all__ = [
    "QAExample",
    "QAMetrics",
    "answer_exact_match",
    "answer_f1",
    "load_qa",
    "normalize_answer",
    "postprocess_qa_predictions",
    "qa_examples_from_records",
    "read_qa_examples",
    "squad_v2_metrics",
]

_FLAT_COLUMNS = ("id", "question", "context", "answers")


@dataclass(frozen=True)
class QAExample:
    """One question about one context, with its gold answers (none for an unanswerable question).

    Args:
        id: Unique question id.
        question: The question.
        context: The paragraph the answer is taken from.
        answer_texts: Gold answer strings; empty for "no answer".
        answer_starts: Character offset of each answer in ``context``.
    """

    id: str
    question: str
    context: str
    answer_texts: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()


# ----------------------------------------------------------------------------------------------- reading
def _locate(context: str, text: str, start: Any, where: str) -> int:
    """Character offset of ``text`` in ``context``, trusting ``start`` when it is right."""
    position = start if isinstance(start, int) and not isinstance(start, bool) else None
    if isinstance(start, str) and start.strip().lstrip("-").isdigit():
        position = int(start)
    if position is not None and context[position : position + len(text)] == text:
        return position
    # Some SQuAD-like files have offsets off by a few characters (e.g. counted in bytes): take the
    # occurrence of the answer nearest to the given offset.
    found = [match.start() for match in re.finditer(re.escape(text), context)]
    if not found:
        raise DataError(
            f"{where}: the answer {text!r} does not occur in the context. Fix the answer text or the context."
        )
    target = position if position is not None else 0
    return min(found, key=lambda offset: abs(offset - target))


def _parse_answers(value: Any, where: str) -> tuple[list[Any], list[Any]]:
    """Read ``{"text": [...], "answer_start": [...]}``, a list of such objects, or JSON of either."""
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return [], []
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            try:  # what `pandas.DataFrame.to_csv` writes for a dict cell: a Python literal
                value = ast.literal_eval(stripped)
            except (ValueError, SyntaxError) as err:
                raise DataError(
                    f"{where}: column 'answers' is not valid JSON ({stripped[:60]!r}). Write it as "
                    '{"text": ["..."], "answer_start": [0]}.'
                ) from err
    if value is None:
        return [], []
    if isinstance(value, list):
        if not all(isinstance(item, dict) for item in value):
            raise DataError(f"{where}: column 'answers' must hold objects with 'text' and 'answer_start'.")
        return [item.get("text") for item in value], [item.get("answer_start") for item in value]
    if isinstance(value, dict):
        texts = value.get("text", [])
        starts = value.get("answer_start", [])
        texts = [texts] if isinstance(texts, str) else list(texts)
        starts = [starts] if isinstance(starts, (int, str)) else list(starts)
        if len(texts) != len(starts):
            raise DataError(
                f"{where}: column 'answers' has {len(texts)} texts but {len(starts)} answer_start values. "
                "Give one start offset per answer text."
            )
        return texts, starts
    raise DataError(
        f"{where}: column 'answers' holds a {type(value).__name__}; expected "
        '{"text": [...], "answer_start": [...]}.'
    )


def _make_example(
    qid: str,
    question: Any,
    context: Any,
    texts: list[Any],
    starts: list[Any],
    where: str,
    source: str,
    number: int,
) -> QAExample:
    question = require_text(question, source, "question", number)
    context = require_text(context, source, "context", number)
    kept_texts: list[str] = []
    kept_starts: list[int] = []
    for text, start in zip(texts, starts, strict=True):
        if text is None or not str(text).strip():
            continue  # some files mark "no answer" by an empty answer string
        kept_starts.append(_locate(context, str(text), start, where))
        kept_texts.append(str(text))
    return QAExample(qid, question, context, tuple(kept_texts), tuple(kept_starts))


def qa_examples_from_records(records: Sequence[dict[str, Any]], source: str) -> list[QAExample]:
    """Turn records (SQuAD articles or flat rows) into :class:`QAExample` objects, checking them.

    Args:
        records: What :func:`~aptune.tasks.io.read_records` returned for a SQuAD JSON file (articles
            with ``paragraphs``) or a flat file (``id``, ``question``, ``context``, ``answers``).
        source: What to call the data in error messages (usually the file path).

    Returns:
        The examples, in file order.

    Raises:
        DataError: Missing columns or keys, empty question or context, malformed ``answers``, an answer
            not found in its context, or a repeated id.
    """
    examples: list[QAExample] = []
    if records and all("paragraphs" in record for record in records):
        number = 0
        for a_index, article in enumerate(records):
            for p_index, paragraph in enumerate(article["paragraphs"] or []):
                if not isinstance(paragraph, dict) or "context" not in paragraph or "qas" not in paragraph:
                    raise DataError(
                        f"{source}: article {a_index}, paragraph {p_index} lacks 'context' or 'qas'. SQuAD "
                        'paragraphs look like {"context": "...", "qas": [...]}.'
                    )
                for qa in paragraph["qas"]:
                    number += 1
                    missing = [key for key in ("id", "question") if key not in qa]
                    if missing:
                        raise DataError(
                            f"{source}: question {number} (article {a_index}, paragraph {p_index}) lacks "
                            f"{missing}; found keys {sorted(qa)}."
                        )
                    where = f"{source}, question id {qa['id']!r}"
                    answers = [] if qa.get("is_impossible") else qa.get("answers") or []
                    texts, starts = _parse_answers(answers, where)
                    examples.append(
                        _make_example(
                            str(qa["id"]),
                            qa["question"],
                            paragraph["context"],
                            texts,
                            starts,
                            where,
                            source,
                            number,
                        )
                    )
    else:
        check_columns(
            records,
            _FLAT_COLUMNS,
            source,
            hint='Use SQuAD JSON ({"data": [{"paragraphs": [...]}]}) or flat rows with these columns.',
        )
        for number, record in enumerate(records, start=1):
            qid = require_text(record["id"], source, "id", number)
            where = f"{source}, record {number} (id {qid!r})"
            texts, starts = _parse_answers(record["answers"], where)
            examples.append(
                _make_example(
                    qid, record["question"], record["context"], texts, starts, where, source, number
                )
            )
    seen: set[str] = set()
    for example in examples:
        if example.id in seen:
            raise DataError(f"{source}: the question id {example.id!r} occurs twice. Ids must be unique.")
        seen.add(example.id)
    return examples


def read_qa_examples(path: str | os.PathLike[str]) -> list[QAExample]:
    """Read a SQuAD JSON file or a flat .jsonl/.json/.csv/.tsv QA file.

    Args:
        path: The file.

    Returns:
        The examples, in file order.

    Raises:
        DataError: See :func:`~aptune.tasks.io.read_records` and :func:`qa_examples_from_records`.
    """
    return qa_examples_from_records(read_records(path), str(path))


# ----------------------------------------------------------------------------------------------- metrics
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lower case, drop punctuation and articles, collapse whitespace.

    Args:
        text: An answer.

    Returns:
        The normalised answer.

    Example:
        >>> normalize_answer("The  Eiffel-Tower!")
        'eiffeltower'
    """
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _gold_or_empty(golds: Sequence[str]) -> list[str]:
    # An unanswerable question's only correct answer is the empty string.
    return list(golds) if golds else [""]


def answer_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer, else 0.0.

    Args:
        prediction: Predicted answer ("" for no answer).
        golds: Gold answers; empty for an unanswerable question.

    Returns:
        0.0 or 1.0.
    """
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(gold) for gold in _gold_or_empty(golds)))


def _token_f1(predicted: list[str], gold: list[str]) -> float:
    if not predicted or not gold:
        # With an empty side, F1 is 1 only when both are empty (a correct "no answer").
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted)
    recall = common / len(gold)
    return 2 * precision * recall / (precision + recall)


def answer_f1(prediction: str, golds: Sequence[str]) -> float:
    """Best token-overlap F1 of the prediction against the gold answers (after normalisation).

    Args:
        prediction: Predicted answer ("" for no answer).
        golds: Gold answers; empty for an unanswerable question.

    Returns:
        F1 in [0, 1].
    """
    predicted = normalize_answer(prediction).split()
    return max(_token_f1(predicted, normalize_answer(gold).split()) for gold in _gold_or_empty(golds))


def squad_v2_metrics(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """SQuAD v2 exact match and F1, overall and split into answerable / unanswerable questions.

    Args:
        predictions: Answer per question id ("" means "no answer"); a missing id counts as "".
        references: Gold answers per question id; an empty list marks an unanswerable question.

    Returns:
        ``exact_match``, ``f1`` and ``total``; ``has_ans_exact_match``, ``has_ans_f1``,
        ``has_ans_total`` when some questions have answers; ``no_ans_*`` when some have none. Scores
        are fractions in [0, 1] (the official script prints them x100).

    Raises:
        ValueError: If ``references`` is empty.
    """
    if not references:
        raise ValueError("No references to score against.")
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    for qid, golds in references.items():
        predicted = predictions.get(qid, "")
        exact[qid] = answer_exact_match(predicted, golds)
        f1[qid] = answer_f1(predicted, golds)
    result = {
        "exact_match": float(np.mean(list(exact.values()))),
        "f1": float(np.mean(list(f1.values()))),
        "total": float(len(references)),
    }
    for prefix, wanted in (("has_ans", True), ("no_ans", False)):
        ids = [qid for qid, golds in references.items() if bool(golds) == wanted]
        if ids:
            result[f"{prefix}_exact_match"] = float(np.mean([exact[qid] for qid in ids]))
            result[f"{prefix}_f1"] = float(np.mean([f1[qid] for qid in ids]))
            result[f"{prefix}_total"] = float(len(ids))
    return result


def postprocess_qa_predictions(
    examples: Sequence[QAExample],
    feature_example: Sequence[int],
    feature_offsets: Sequence[Sequence[tuple[int, int] | None]],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    feature_cls: Sequence[int] | None = None,
    n_best: int = 20,
    max_answer_length: int = 30,
    allow_no_answer: bool = True,
    null_threshold: float = 0.0,
) -> dict[str, str]:
    """Pick one answer string per example from the start/end logits of its features.

    For every feature, the ``n_best`` highest start and end positions are paired; a pair is a candidate
    when both tokens are in the context, the end is not before the start, and the span has at most
    ``max_answer_length`` tokens. Its score is ``start_logit + end_logit``. The null score of an example
    is the lowest over its features of the two logits at the classifier token. With
    ``allow_no_answer``, the answer is "" when ``null_score - best_span_score > null_threshold`` or when
    no span qualifies.

    Args:
        examples: The examples, indexed by ``feature_example``.
        feature_example: Example index of each feature.
        feature_offsets: Per feature and token, ``(char_start, char_end)`` in the context, or ``None``
            for tokens outside the context (question, special tokens, padding).
        start_logits: ``[num_features, seq_len]``; ``seq_len`` may exceed a feature's length (batches
            padded to a common length); the extra positions are ignored.
        end_logits: ``[num_features, seq_len]``.
        feature_cls: Position of the classifier token of each feature (0 when ``None``).
        n_best: Start and end candidates considered per feature.
        max_answer_length: Longest answer in tokens.
        allow_no_answer: Whether "" may be predicted (SQuAD v2).
        null_threshold: Margin by which the null score must beat the best span.

    Returns:
        ``{example id: answer text}`` for every example.

    Raises:
        ValueError: If the number of logit rows differs from the number of features.
    """
    start_logits = np.asarray(start_logits)
    end_logits = np.asarray(end_logits)
    if len(start_logits) != len(feature_example) or len(end_logits) != len(feature_example):
        raise ValueError(
            f"Got logits for {len(start_logits)} features but the evaluation set has {len(feature_example)}: "
            "compute_metrics must be used with the eval dataset it was built with."
        )
    by_example: dict[int, list[int]] = {}
    for feature, example in enumerate(feature_example):
        by_example.setdefault(example, []).append(feature)

    answers: dict[str, str] = {}
    for index, example in enumerate(examples):
        best_score = -np.inf
        best_text: str | None = None
        null_score = np.inf
        for feature in by_example.get(index, []):
            offsets = feature_offsets[feature]
            length = len(offsets)
            starts = start_logits[feature, :length]
            ends = end_logits[feature, :length]
            cls = feature_cls[feature] if feature_cls is not None else 0
            null_score = min(null_score, float(starts[cls] + ends[cls]))
            # argsort ascending, reversed: the n_best highest positions.
            top_starts = np.argsort(starts)[::-1][:n_best]
            top_ends = np.argsort(ends)[::-1][:n_best]
            for first in top_starts:
                if offsets[first] is None:
                    continue
                for last in top_ends:
                    if offsets[last] is None or last < first or last - first + 1 > max_answer_length:
                        continue
                    score = float(starts[first] + ends[last])
                    if score > best_score:
                        best_score = score
                        best_text = example.context[offsets[first][0] : offsets[last][1]]
        if allow_no_answer and (best_text is None or null_score - best_score > null_threshold):
            answers[example.id] = ""
        else:
            answers[example.id] = best_text or ""
    return answers


class QAMetrics:
    """``compute_metrics`` for extractive QA: maps feature logits back to examples and scores them.

    Built by :func:`load_qa` for its eval dataset; it keeps the feature-to-example mapping and the
    offsets, which are not model inputs and so are not columns of the dataset.

    Args:
        examples: The evaluation examples.
        feature_example: Example index of each eval feature (row of the eval dataset).
        feature_offsets: Context character offsets per feature and token (``None`` outside the context).
        feature_cls: Classifier-token position of each feature.
        n_best: See :func:`postprocess_qa_predictions`.
        max_answer_length: See :func:`postprocess_qa_predictions`.
        allow_no_answer: See :func:`postprocess_qa_predictions`.
        null_threshold: See :func:`postprocess_qa_predictions`.

    Attributes:
        last_predictions: ``{id: answer}`` of the latest call, to inspect or save.
    """

    def __init__(
        self,
        examples: Sequence[QAExample],
        feature_example: Sequence[int],
        feature_offsets: Sequence[Sequence[tuple[int, int] | None]],
        feature_cls: Sequence[int],
        *,
        n_best: int = 20,
        max_answer_length: int = 30,
        allow_no_answer: bool = True,
        null_threshold: float = 0.0,
    ) -> None:
        self.examples = list(examples)
        self.feature_example = list(feature_example)
        self.feature_offsets = list(feature_offsets)
        self.feature_cls = list(feature_cls)
        self.n_best = n_best
        self.max_answer_length = max_answer_length
        self.allow_no_answer = allow_no_answer
        self.null_threshold = null_threshold
        self.last_predictions: dict[str, str] = {}

    def __call__(self, eval_pred: transformers.EvalPrediction) -> dict[str, float]:
        """Score an evaluation run.

        Args:
            eval_pred: ``predictions`` = ``(start_logits, end_logits)``, each ``[num_features, seq_len]``.

        Returns:
            The metrics of :func:`squad_v2_metrics`.

        Raises:
            ValueError: If the predictions are not a (start, end) pair for this eval set's features.
        """
        predictions = eval_pred.predictions
        if not isinstance(predictions, (tuple, list)) or len(predictions) < 2:
            raise ValueError("QA predictions must be a (start_logits, end_logits) pair.")
        self.last_predictions = postprocess_qa_predictions(
            self.examples,
            self.feature_example,
            self.feature_offsets,
            predictions[0],
            predictions[1],
            feature_cls=self.feature_cls,
            n_best=self.n_best,
            max_answer_length=self.max_answer_length,
            allow_no_answer=self.allow_no_answer,
            null_threshold=self.null_threshold,
        )
        references = {example.id: list(example.answer_texts) for example in self.examples}
        return squad_v2_metrics(self.last_predictions, references)


# ---------------------------------------------------------------------------------------------- features
@dataclass
class _Features:
    columns: dict[str, list[Any]]
    example: list[int]
    offsets: list[list[tuple[int, int] | None]]
    cls: list[int]
    truncated_questions: int


def _fit_questions(tokenizer: Any, questions: list[str], limit: int) -> tuple[list[str], int]:
    """Cut questions to ``limit`` tokens, so every window has room for ``doc_stride`` + 1 context tokens."""
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    fitted = []
    cut = 0
    for question, offsets in zip(questions, encoded["offset_mapping"], strict=True):
        if len(offsets) > limit:
            question = question[: offsets[limit - 1][1]]
            cut += 1
        fitted.append(question)
    return fitted, cut


def _features(tokenizer: Any, examples: Sequence[QAExample], max_length: int, doc_stride: int) -> _Features:
    pad_right = tokenizer.padding_side == "right"
    limit = max_length - tokenizer.num_special_tokens_to_add(pair=True) - doc_stride - 1
    # Leading spaces in questions waste tokens in some tokenizers and shift nothing we need.
    questions, truncated = _fit_questions(
        tokenizer, [example.question.lstrip() for example in examples], limit
    )
    contexts = [example.context for example in examples]
    encoded = tokenizer(
        questions if pad_right else contexts,
        contexts if pad_right else questions,
        truncation="only_second" if pad_right else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        # With left padding, dynamic padding would shift token positions between batches; fixed-length
        # features keep positions, offsets and logits aligned.
        padding=False if pad_right else "max_length",
    )
    context_id = 1 if pad_right else 0
    cls_id = tokenizer.cls_token_id
    names = [name for name in tokenizer.model_input_names if name in encoded]
    columns: dict[str, list[Any]] = {name: [] for name in names}
    columns["start_positions"] = []
    columns["end_positions"] = []
    feature_example: list[int] = []
    feature_offsets: list[list[tuple[int, int] | None]] = []
    feature_cls: list[int] = []
    for feature in range(len(encoded["input_ids"])):
        example_index = encoded["overflow_to_sample_mapping"][feature]
        example = examples[example_index]
        input_ids = encoded["input_ids"][feature]
        sequence_ids = encoded.sequence_ids(feature)
        offsets = [
            tuple(span) if sequence_ids[token] == context_id else None
            for token, span in enumerate(encoded["offset_mapping"][feature])
        ]
        cls = input_ids.index(cls_id) if cls_id is not None and cls_id in input_ids else 0
        start = end = cls
        if example.answer_texts:
            answer_start = example.answer_starts[0]
            answer_end = answer_start + len(example.answer_texts[0])
            in_context = [token for token, span in enumerate(offsets) if span is not None]
            if (
                in_context
                and offsets[in_context[0]][0] <= answer_start
                and answer_end <= offsets[in_context[-1]][1]
            ):
                # First token ending after the answer's start; last token starting before its end.
                start = next(token for token in in_context if offsets[token][1] > answer_start)
                end = next(token for token in reversed(in_context) if offsets[token][0] < answer_end)
        for name in names:
            columns[name].append(encoded[name][feature])
        columns["start_positions"].append(start)
        columns["end_positions"].append(end)
        feature_example.append(example_index)
        feature_offsets.append(offsets)
        feature_cls.append(cls)
    return _Features(columns, feature_example, feature_offsets, feature_cls, truncated)


def load_qa(
    tokenizer: Any,
    *,
    train_file: str | os.PathLike[str] | None = None,
    eval_file: str | os.PathLike[str] | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    max_length: int = 128,
    seed: int = 0,
    eval_fraction: float = 0.2,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    doc_stride: int = 64,
    max_answer_length: int = 30,
    n_best: int = 20,
    version_2_with_negative: bool | None = None,
    null_threshold: float = 0.0,
) -> TaskData:
    """Load an extractive QA task (see :func:`aptune.tasks.load_task` for the shared options).

    Args:
        tokenizer: A fast tokenizer (offsets are needed), with a padding token.
        train_file: SQuAD JSON or flat file.
        eval_file: Same; without it, ``eval_fraction`` of the training contexts (whole paragraphs, so no
            eval question shares a paragraph with a training question).
        dataset_name: A ``datasets`` name (``"squad"``, ``"squad_v2"``); no built-in QA data exists.
        dataset_config: Its configuration.
        max_length: Tokens per window (question + context + special tokens).
        seed: Seed of the split and subsets.
        eval_fraction: Share of contexts held out when there is no eval file.
        max_train_samples: Keep at most this many training questions.
        max_eval_samples: Keep at most this many evaluation questions.
        doc_stride: Overlap, in tokens, between consecutive windows of a long context.
        max_answer_length: Longest predicted answer, in tokens.
        n_best: Start/end candidates per window in post-processing.
        version_2_with_negative: Whether "no answer" may be predicted; ``None``: yes if any question of
            the data has no answer.
        null_threshold: Margin by which the no-answer score must beat the best span.

    Returns:
        :class:`TaskData` whose ``eval`` holds features (windows) and whose ``compute_metrics`` is a
        :class:`QAMetrics` bound to them; ``primary_metric="f1"``.

    Raises:
        DataError: See :func:`qa_examples_from_records`; or too few contexts to split.
        ConfigError: If ``doc_stride`` leaves no room for the question in ``max_length``.
        ModelError: If the tokenizer is not a fast tokenizer or has no padding token.
    """
    import datasets
    from transformers import DataCollatorWithPadding

    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            "Extractive QA needs a fast tokenizer (character offsets): load it with "
            "AutoTokenizer.from_pretrained(path, use_fast=True)."
        )
    if getattr(tokenizer, "pad_token_id", None) is None:
        raise ModelError(
            "The tokenizer has no padding token; set tokenizer.pad_token before loading QA data."
        )
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    if max_length - specials - doc_stride - 1 < 1:
        raise ConfigError(
            f"doc_stride={doc_stride} leaves no room for the question in max_length={max_length} "
            f"({specials} special tokens). Use doc_stride < {max_length - specials - 1} (a quarter of "
            "max_length is usual) or a larger max_length."
        )
    train_examples: list[QAExample] | None = None
    eval_examples: list[QAExample] | None = None
    split = "eval file given"
    if dataset_name is not None:
        train_records, eval_records, meta = load_dataset_records(dataset_name, dataset_config)
        train_source = f"{dataset_name}/{dataset_config or '-'}[{meta['train_split']}]"
        eval_source = f"{dataset_name}/{dataset_config or '-'}[{meta['eval_split']}]"
        train_examples = qa_examples_from_records(train_records, train_source) if train_records else None
        eval_examples = qa_examples_from_records(eval_records, eval_source) if eval_records else None
        split = f"data set splits {meta['train_split']!r} / {meta['eval_split']!r}"
    else:
        train_source, eval_source = str(train_file), str(eval_file)
        train_examples = read_qa_examples(train_file) if train_file is not None else None
        eval_examples = read_qa_examples(eval_file) if eval_file is not None else None

    if eval_examples is None and train_examples is not None and eval_fraction > 0:
        contexts = [example.context for example in train_examples]
        train_idx, eval_idx = random_split(len(train_examples), eval_fraction, seed, groups=contexts)
        if not eval_idx:
            raise DataError(
                f"{train_source} has too few contexts ({len(set(contexts))}) to hold out eval_fraction="
                f"{eval_fraction}. Add data or pass an eval file."
            )
        eval_examples = [train_examples[i] for i in eval_idx]
        train_examples = [train_examples[i] for i in train_idx]
        eval_source = train_source
        split = f"random split of {train_source} by context, eval_fraction={eval_fraction}, seed={seed}"
    elif eval_examples is None:
        split = "no evaluation data"
    if train_examples is not None:
        train_examples = cap_records(train_examples, max_train_samples, seed)
    if eval_examples is not None:
        eval_examples = cap_records(eval_examples, max_eval_samples, seed)

    everything = (train_examples or []) + (eval_examples or [])
    allow_no_answer = (
        any(not example.answer_texts for example in everything)
        if version_2_with_negative is None
        else bool(version_2_with_negative)
    )
    info: dict[str, Any] = {
        "kind": "qa",
        "train_source": train_source if train_examples is not None else None,
        "eval_source": eval_source if eval_examples is not None else None,
        "split": split,
        "max_length": max_length,
        "doc_stride": doc_stride,
        "version_2_with_negative": allow_no_answer,
        "questions_truncated": 0,
    }
    train = held = None
    metrics: QAMetrics | None = None
    if train_examples is not None:
        features = _features(tokenizer, train_examples, max_length, doc_stride)
        train = datasets.Dataset.from_dict(features.columns)
        info["questions_truncated"] += features.truncated_questions
        info["num_train_examples"] = len(train_examples)
        info["num_train_features"] = len(train)
        info["num_train_no_answer"] = sum(not example.answer_texts for example in train_examples)
    if eval_examples is not None:
        features = _features(tokenizer, eval_examples, max_length, doc_stride)
        held = datasets.Dataset.from_dict(features.columns)
        info["questions_truncated"] += features.truncated_questions
        info["num_eval_examples"] = len(eval_examples)
        info["num_eval_features"] = len(held)
        info["num_eval_no_answer"] = sum(not example.answer_texts for example in eval_examples)
        metrics = QAMetrics(
            eval_examples,
            features.example,
            features.offsets,
            features.cls,
            n_best=n_best,
            max_answer_length=max_answer_length,
            allow_no_answer=allow_no_answer,
            null_threshold=null_threshold,
        )
    return TaskData(
        kind="qa",
        train=train,
        eval=held,
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metrics,
        primary_metric="f1",
        greater_is_better=True,
        info=info,
    )
