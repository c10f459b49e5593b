"""Remove duplicate examples before a data set is split, so no evaluation row is a copy of a training row.

Three tests, applied in this order, each keeping the first occurrence in file order:

1. ``exact``: the same text, character for character;
2. ``normalised``: the same text after Unicode NFKC, case folding and collapsing every run of
   whitespace to one space (re-scraped copies of one article differ only in such details);
3. ``prefix``: the same first ``max_length`` token ids, i.e. the two rows are identical in everything a
   model truncating at ``max_length`` sees. Only with a tokenizer and a ``max_length``.

Rows whose label differs from the kept copy are still removed (one of the two labels is wrong, and
keeping both would put the same input on both sides of a split with two answers). The counts per test
are returned so that a run or a benchmark page can state them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["DedupeReport", "dedupe_records", "normalise_text"]

_WHITESPACE = re.compile(r"\s+")
_SEPARATOR = "\x1f"  # joins the parts of one row (see dedupe_records)

#: A row of any type (a dict read from a file, or a task's parsed example).
Row = TypeVar("Row")


@dataclass(frozen=True)
class DedupeReport:
    """How many rows each duplicate test removed, and how many rows were kept.

    Attributes:
        exact: Rows removed as exact copies of an earlier row.
        normalised: Rows removed as copies after case/whitespace/Unicode normalisation.
        prefix: Rows removed because their first ``max_length`` tokens equal an earlier row's.
        kept: Rows left.
    """

    exact: int = 0
    normalised: int = 0
    prefix: int = 0
    kept: int = 0

    @property
    def removed(self) -> int:
        """Rows removed by all three tests together."""
        return self.exact + self.normalised + self.prefix

    def to_dict(self) -> dict[str, int]:
        """The counts as a JSON-ready dict (``removed`` included)."""
        return {
            "exact": self.exact,
            "normalised": self.normalised,
            "prefix": self.prefix,
            "removed": self.removed,
            "kept": self.kept,
        }

    def describe(self) -> str:
        """One line for logs and pages: the removed count per test and the rows kept."""
        return (
            f"removed {self.removed} duplicate rows ({self.exact} exact, {self.normalised} after "
            f"normalising case/whitespace, {self.prefix} identical in the first tokens); kept {self.kept}"
        )


def normalise_text(text: str) -> str:
    """NFKC, case-folded, every whitespace run collapsed to one space, ends stripped.

    The parts of a row joined with ``"\\x1f"`` (e.g. a sentence pair) are normalised one by one and
    stay apart: Python counts ``"\\x1f"`` as whitespace, and collapsing it would make the pair
    ("the cat", "sat") a copy of ("the", "cat sat").

    Example:
        >>> normalise_text("  Hello\\n\\tWORLD ")
        'hello world'
    """
    return _SEPARATOR.join(
        _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", part).casefold()).strip()
        for part in text.split(_SEPARATOR)
    )


def dedupe_records(
    records: Sequence[Row],
    text_of: Callable[[Row], str],
    *,
    tokenizer: Any = None,
    max_length: int | None = None,
    prefix_ids: Sequence[Sequence[int]] | None = None,
) -> tuple[list[Row], DedupeReport]:
    """Drop rows that duplicate an earlier row (exact, normalised, or the same first tokens).

    Args:
        records: Rows in file order.
        text_of: The text a row is judged by (for pairs, join both sides with a separator that cannot
            occur in them, e.g. ``"\\x1f"``).
        tokenizer: A HuggingFace tokenizer; with ``max_length``, enables the ``prefix`` test.
        max_length: Tokens a model sees per row (the run's max length); the prefix test compares the
            first ``max_length`` token ids, special tokens included.
        prefix_ids: The token ids the model sees per row, already truncated (one list per record, in
            the same order); enables the ``prefix`` test without ``tokenizer``. Use it when a row is
            not one text (a sentence pair is tokenized as a pair) or to tokenize in one batch.

    Returns:
        ``(kept_records, report)``: the first occurrence of every group of duplicates, in file order.

    Raises:
        ValueError: If ``prefix_ids`` does not hold one entry per record.

    Example:
        >>> rows = [{"t": "A b"}, {"t": "A b"}, {"t": "a  B"}, {"t": "c"}]
        >>> kept, report = dedupe_records(rows, lambda r: r["t"])
        >>> [r["t"] for r in kept], report.exact, report.normalised
        (['A b', 'c'], 1, 1)
    """
    seen_exact: set[str] = set()
    seen_normalised: set[str] = set()
    seen_prefix: set[tuple[int, ...]] = set()
    counts = {"exact": 0, "normalised": 0, "prefix": 0}
    kept: list[Row] = []
    if prefix_ids is not None and len(prefix_ids) != len(records):
        raise ValueError(f"{len(prefix_ids)} prefix_ids for {len(records)} records.")
    use_prefix = prefix_ids is not None or (tokenizer is not None and max_length is not None)
    for index, record in enumerate(records):
        text = text_of(record)
        if text in seen_exact:
            counts["exact"] += 1
            continue
        normalised = normalise_text(text)
        if normalised in seen_normalised:
            counts["normalised"] += 1
            seen_exact.add(text)
            continue
        prefix: tuple[int, ...] | None = None
        if use_prefix:
            if prefix_ids is not None:
                prefix = tuple(prefix_ids[index])
            else:
                prefix = tuple(tokenizer(text, truncation=True, max_length=max_length)["input_ids"])
            if prefix in seen_prefix:
                counts["prefix"] += 1
                seen_exact.add(text)
                seen_normalised.add(normalised)
                continue
            seen_prefix.add(prefix)
        seen_exact.add(text)
        seen_normalised.add(normalised)
        kept.append(record)
    return kept, DedupeReport(kept=len(kept), **counts)
