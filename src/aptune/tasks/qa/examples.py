"""QA examples: SQuAD JSON or flat records (``id``, ``question``, ``context``, ``answers``), checked.

Input: SQuAD JSON (``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}``) or flat records with
the columns ``id``, ``question``, ``context``, ``answers`` (``{"text": [...], "answer_start": [...]}``;
in a CSV cell as JSON), the layout of the ``squad`` data set on the Hub.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aptune.errors import DataError
from aptune.tasks.io import check_columns, read_records, require_text

__all__ = ["QAExample", "qa_examples_from_records", "read_qa_examples"]

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
