"""Reading tabular and JSON data files into lists of records, with errors a user can act on.

Every task reads its files through :func:`read_records`, so a missing, empty, malformed or
unsupported file fails the same way whatever the task: with a :class:`~aptune.errors.DataError`
whose message names the file and says how to fix it. The helpers below it check columns and cells
and word their errors the same way.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from aptune.errors import DataError

__all__ = [
    "EVAL_SPLIT_NAMES",
    "SUPPORTED_EXTENSIONS",
    "cap_records",
    "check_columns",
    "column_names",
    "load_dataset_records",
    "read_records",
    "read_text_file",
    "require_text",
]

#: File extensions :func:`read_records` understands (case-insensitive).
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".csv", ".tsv", ".json", ".jsonl")

# The csv module refuses fields above 128 KiB by default; whole articles or SQuAD contexts stored in
# one cell can be longer. 2**31 - 1 is the largest value accepted on every platform (C long).
_CSV_FIELD_LIMIT = 2**31 - 1


def read_text_file(path: str | os.PathLike[str], *, allowed: Sequence[str] = SUPPORTED_EXTENSIONS) -> str:
    """Read a whole data file as UTF-8 text after checking that it exists, is allowed and is not empty.

    Args:
        path: The file to read.
        allowed: Extensions (with the dot, lower case) accepted for this file.

    Returns:
        The file's text, without a UTF-8 byte-order mark.

    Raises:
        DataError: If the file does not exist, is a directory, has an extension outside ``allowed``,
            is not UTF-8, or holds only whitespace.
    """
    file = Path(path)
    if not file.exists():
        raise DataError(
            f"Data file {file} does not exist (resolved to {file.resolve()}). Check the path; relative "
            f"paths are taken from the current directory {Path.cwd()}."
        )
    if file.is_dir():
        raise DataError(f"Data file {file} is a directory. Pass the path of a file inside it.")
    suffix = file.suffix.lower()
    if suffix not in allowed:
        raise DataError(
            f"Data file {file} has the unsupported extension {suffix or '(none)'!r}; this task reads "
            f"{', '.join(allowed)}. Convert the file to one of those formats or rename it if its "
            "content already is one."
        )
    raw = file.read_bytes()
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs put in front of CSV exports.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"Data file {file} is not UTF-8 text (undecodable byte at offset {err.start}). Re-save it "
            "with UTF-8 encoding."
        ) from err
    if not text.strip():
        raise DataError(f"Data file {file} is empty. Point to a file that holds the data.")
    return text


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a ``.csv``, ``.tsv``, ``.json`` or ``.jsonl`` file into a list of records (dicts).

    ``.json`` holds either a list of objects or an object with a ``"data"`` list (the SQuAD layout;
    the items are returned as they are, so SQuAD articles come back with their ``paragraphs``). A
    ``.json`` file that is really JSON Lines (what ``datasets.Dataset.to_json`` writes by default) is
    read as JSON Lines. CSV cells are strings; ``.tsv`` is read without quote processing, as GLUE's
    TSV files contain unbalanced quotes.

    Args:
        path: The file to read.

    Returns:
        The records, in file order. Never empty.

    Raises:
        DataError: If the file is missing, empty, has an unsupported extension, is malformed (with
            the line number), holds something other than objects, or has no records.

    Example::

        rows = read_records("train.csv")
        rows[0]  # {'sentence': 'a fine film', 'label': '1'}  (CSV cells are strings)
    """
    file = Path(path)
    text = read_text_file(file)
    suffix = file.suffix.lower()
    if suffix in (".csv", ".tsv"):
        records = _read_delimited(text, file, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".jsonl":
        records = _read_json_lines(text, file)
    else:
        records = _read_json(text, file)
    if not records:
        raise DataError(f"Data file {file} contains no records. Add at least one row.")
    return records


def _read_delimited(text: str, file: Path, *, delimiter: str) -> list[dict[str, Any]]:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
    except csv.Error as err:
        raise DataError(f"Data file {file} is not valid {_kind(delimiter)} on line 1: {err}.") from err
    header = [name.strip() for name in header]
    if not any(header):
        raise DataError(f"Data file {file} has an empty header line. The first line must name the columns.")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataError(
            f"Data file {file} repeats the column name(s) {duplicates} in its header. Rename them."
        )
    records: list[dict[str, Any]] = []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != len(header):
                raise DataError(
                    f"Data file {file}, line {reader.line_num}: {len(row)} fields but the header names "
                    f"{len(header)} columns {header}. Quote fields that contain the delimiter "
                    f"{delimiter!r} (or fix the row)."
                )
            records.append(dict(zip(header, row, strict=True)))
    except csv.Error as err:
        raise DataError(
            f"Data file {file} is not valid {_kind(delimiter)} near line {reader.line_num}: {err}."
        ) from err
    if not records:
        raise DataError(
            f"Data file {file} has a header {header} but no data rows. Add rows under the header."
        )
    return records


def _kind(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"


def _read_json(text: str, file: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1 and _is_json_object(lines[0]):
            # `Dataset.to_json` writes JSON Lines into a .json file by default: accept that.
            return _read_json_lines(text, file)
        raise DataError(
            f"Data file {file} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}. "
            "Fix the syntax there (a JSON validator shows it)."
        ) from err
    if isinstance(data, dict):
        if isinstance(data.get("data"), list):
            data = data["data"]
        else:
            raise DataError(
                f"Data file {file} holds a JSON object with keys {sorted(data)[:10]}; expected a list of "
                'records or an object with a "data" list. Wrap the records in a list.'
            )
    if not isinstance(data, list):
        raise DataError(
            f"Data file {file} holds a JSON {type(data).__name__}; expected a list of records or an object "
            'with a "data" list.'
        )
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(
                f"Data file {file}: item {index} of the list is a {type(item).__name__}, expected an object "
                "with named fields."
            )
    return data


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _read_json_lines(text: str, file: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"Data file {file}, line {number} is not valid JSON: {err.msg} at column {err.colno}. "
                "JSON Lines needs one complete JSON object per line."
            ) from err
        if not isinstance(item, dict):
            raise DataError(
                f"Data file {file}, line {number} holds a JSON {type(item).__name__}, expected an object "
                "with named fields."
            )
        records.append(item)
    return records


def column_names(records: Iterable[dict[str, Any]]) -> list[str]:
    """Return the column names of ``records``, in first-seen order (union over all records).

    Args:
        records: Records as returned by :func:`read_records`.

    Returns:
        Every key that occurs in at least one record.
    """
    seen: dict[str, None] = {}
    for record in records:
        for key in record:
            seen.setdefault(key, None)
    return list(seen)


def check_columns(
    records: Sequence[dict[str, Any]], required: Sequence[str], source: str, *, hint: str = ""
) -> None:
    """Check that every record has every column in ``required``.

    Args:
        records: Records as returned by :func:`read_records`.
        required: Column names that must be present.
        source: What to call the data in the message (usually the file path).
        hint: Extra advice appended to the message (e.g. which option renames columns).

    Raises:
        DataError: Naming the missing columns, the columns found and the expected ones; or the first
            record (1-based) that lacks a column the others have.
    """
    found = column_names(records)
    missing = [name for name in required if name not in found]
    if missing:
        raise DataError(
            f"{source} lacks the column(s) {missing}: found {found}, expected {list(required)}. "
            f"{hint}".rstrip()
        )
    for number, record in enumerate(records, start=1):
        absent = [name for name in required if name not in record]
        if absent:
            raise DataError(
                f"{source}, record {number} lacks the field(s) {absent}. Add them to that record."
            )


def require_text(value: Any, source: str, column: str, number: int) -> str:
    """Return ``value`` as a non-empty string, or fail naming where it came from.

    Numbers are turned into strings (a JSON file may hold ``"text": 42``); ``None`` and blank strings
    are errors, because a model cannot learn from an empty input and the tokenizer would silently
    produce only special tokens.

    Args:
        value: The cell.
        source: The file (or dataset) it came from.
        column: Its column.
        number: Its record number, 1-based (the header of a CSV file is not counted).

    Returns:
        The text.

    Raises:
        DataError: If the cell is missing, blank, or not a string or number.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        if value is None:
            raise DataError(
                f"{source}, record {number}: column {column!r} is empty. Fill it in or drop the row."
            )
        raise DataError(
            f"{source}, record {number}: column {column!r} holds a {type(value).__name__}, expected text."
        )
    text = str(value)
    if not text.strip():
        raise DataError(f"{source}, record {number}: column {column!r} is empty. Fill it in or drop the row.")
    return text


def cap_records(records: list[Any], limit: int | None, seed: int) -> list[Any]:
    """Keep at most ``limit`` records, chosen at random with ``seed``, in their original order.

    A random subset rather than the first ``limit`` rows, because data files are often sorted by
    label (the BBC corpus is), and the first rows would then hold a single class.

    Args:
        records: The records.
        limit: Maximum number to keep; ``None`` keeps all.
        seed: Seed of the choice.

    Returns:
        The kept records (the same list object if nothing is dropped).
    """
    if limit is None or limit >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[index] for index in keep]


#: Split names tried, in order, for the evaluation split of a ``datasets`` data set.
EVAL_SPLIT_NAMES: tuple[str, ...] = ("validation", "validation_matched", "dev", "valid", "test")


def load_dataset_records(
    name: str, config: str | None = None
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None, dict[str, Any]]:
    """Load a data set with ``datasets.load_dataset`` and return its train and eval splits as records.

    This is the path for machines that reach the Hugging Face Hub (or for a local data set folder).
    The eval split is the first of :data:`EVAL_SPLIT_NAMES` that exists.

    Args:
        name: Hub name or local path, as for ``datasets.load_dataset``.
        config: Its configuration name (e.g. ``"sst2"`` for ``"glue"``).

    Returns:
        ``(train_records, eval_records, meta)``; a split that does not exist is ``None``. ``meta`` has
        ``"train_split"``, ``"eval_split"`` and ``"class_names"`` (``{column: names}`` for every
        ``ClassLabel`` column, so label ids keep the data set's own names).

    Raises:
        DataError: If the data set cannot be loaded (the message quotes the cause) or has neither a
            train nor an eval split.
    """
    import datasets  # deferred: only this path needs the library at call time

    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as err:  # any failure (network, missing config, bad script) is the user's to fix
        raise DataError(
            f"Could not load the data set {name!r} (config {config!r}) with datasets.load_dataset: "
            f"{type(err).__name__}: {err}. Check the name and config; without Hub access, pass "
            "train_file/eval_file instead."
        ) from err
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    train_split = "train" if "train" in loaded else None
    eval_split = next((split for split in EVAL_SPLIT_NAMES if split in loaded), None)
    if train_split is None and eval_split is None:
        raise DataError(
            f"The data set {name!r} (config {config!r}) has the splits {list(loaded)}; expected 'train' "
            f"and/or one of {list(EVAL_SPLIT_NAMES)}."
        )
    class_names: dict[str, list[str]] = {}
    first = loaded[train_split or eval_split]
    for column, feature in first.features.items():
        if isinstance(feature, datasets.ClassLabel):
            class_names[column] = list(feature.names)
    meta = {"train_split": train_split, "eval_split": eval_split, "class_names": class_names}
    train = loaded[train_split].to_list() if train_split else None
    held = loaded[eval_split].to_list() if eval_split else None
    return train, held, meta
