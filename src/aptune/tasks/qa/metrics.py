"""SQuAD v2 exact match and F1, and the post-processing from start/end logits to answer strings.

The definitions are those of the official SQuAD v2.0 evaluation script (``evaluate-v2.0.py``):
answers are normalised (lower case, punctuation removed, the articles a/an/the removed, whitespace
collapsed); exact match compares normalised strings; F1 is over the bags of normalised tokens; an
unanswerable question's only gold answer is the empty string, so an empty prediction scores 1 on it
and any other prediction 0. Gold answers that normalise to nothing (e.g. "The") are dropped, as the
script does. Scores are fractions in [0, 1] (the script prints them x100). One difference: the
script skips a question without a prediction; here it counts as the empty prediction.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from aptune.tasks.qa.examples import QAExample

if TYPE_CHECKING:
    import transformers

__all__ = [
    "QAMetrics",
    "answer_exact_match",
    "answer_f1",
    "normalize_answer",
    "postprocess_qa_predictions",
    "squad_v2_metrics",
]

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
    # As the official script: gold answers that normalise to nothing are dropped, and an unanswerable
    # question's only correct answer is the empty string.
    kept = [gold for gold in golds if normalize_answer(gold)]
    return kept if kept else [""]


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
