"""QA features: long contexts cut into overlapping windows with answer span labels.

Long contexts are cut into overlapping windows ("features") of ``max_length`` tokens that overlap by
``doc_stride`` tokens (the meaning of ``stride`` in transformers' tokenizers and of ``doc_stride`` in
its example scripts). A feature's labels are the token positions of the answer's first and last token,
or the classifier token's position when the answer is not (entirely) inside that window or the question
has no answer. Each feature keeps its example index, character offsets and classifier position, which
:class:`~aptune.tasks.qa.metrics.QAMetrics` needs to map logits back to answer strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aptune.tasks.qa.examples import QAExample

__all__ = ["QAFeatures", "build_features"]


@dataclass
class QAFeatures:
    """Windows of the examples: model input columns plus what post-processing needs.

    Attributes:
        columns: Model inputs, ``start_positions`` and ``end_positions``, one row per feature.
        example: Example index of each feature.
        offsets: Per feature and token, ``(char_start, char_end)`` in the context, or ``None``.
        cls: Classifier-token position of each feature.
        truncated_questions: Questions cut to leave room for ``doc_stride`` + 1 context tokens.
    """

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


def build_features(
    tokenizer: Any, examples: Sequence[QAExample], max_length: int, doc_stride: int
) -> QAFeatures:
    """Tokenize question/context pairs into overlapping windows with span labels.

    Args:
        tokenizer: A fast tokenizer (character offsets).
        examples: The examples.
        max_length: Tokens per window.
        doc_stride: Overlap between consecutive windows, in tokens.

    Returns:
        The :class:`QAFeatures`.
    """
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
    return QAFeatures(columns, feature_example, feature_offsets, feature_cls, truncated)
