"""Duplicate removal before splitting: each test, the order of the tests, and the counts."""

from __future__ import annotations

from aptune.tasks.dedupe import dedupe_records, normalise_text


class _CharTokenizer:
    """One id per character, so the prefix test is easy to reason about."""

    def __call__(self, text: str, truncation: bool, max_length: int) -> dict:
        ids = [ord(c) for c in text]
        return {"input_ids": ids[:max_length] if truncation else ids}


def _texts(rows):
    return [r["t"] for r in rows]


def test_exact_copies_are_removed_and_the_first_is_kept():
    rows = [{"t": "one", "i": 0}, {"t": "two", "i": 1}, {"t": "one", "i": 2}]
    kept, report = dedupe_records(rows, lambda r: r["t"])
    assert [r["i"] for r in kept] == [0, 1]
    assert (report.exact, report.normalised, report.prefix, report.kept) == (1, 0, 0, 2)


def test_case_and_whitespace_variants_count_as_normalised_duplicates():
    rows = [{"t": "Hello  World"}, {"t": "hello world\n"}, {"t": "HELLO\tWORLD"}, {"t": "other"}]
    kept, report = dedupe_records(rows, lambda r: r["t"])
    assert _texts(kept) == ["Hello  World", "other"]
    assert report.normalised == 2 and report.exact == 0
    assert normalise_text(" A\u00a0B ") == "a b"  # NFKC turns the no-break space into a space


def test_prefix_test_needs_tokenizer_and_max_length():
    rows = [{"t": "abcdef"}, {"t": "abcxyz"}, {"t": "abd"}]
    kept, report = dedupe_records(rows, lambda r: r["t"])
    assert report.removed == 0 and len(kept) == 3
    kept, report = dedupe_records(rows, lambda r: r["t"], tokenizer=_CharTokenizer(), max_length=3)
    assert _texts(kept) == ["abcdef", "abd"]
    assert report.prefix == 1 and report.removed == 1 and report.kept == 2


def test_a_later_exact_copy_of_a_removed_row_counts_as_exact():
    rows = [{"t": "abc"}, {"t": "ABC"}, {"t": "ABC"}]
    _, report = dedupe_records(rows, lambda r: r["t"])
    assert (report.exact, report.normalised) == (1, 1)
    assert report.to_dict() == {"exact": 1, "normalised": 1, "prefix": 0, "removed": 2, "kept": 1}
    assert "removed 2 duplicate rows" in report.describe()
