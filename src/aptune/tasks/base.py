"""`TaskData` (everything a trainer needs for one task) and `load_task`, the one entry point.

``load_task`` checks the options every task shares, then hands over to the task's own loader
(``load_classification``, ``load_qa``, ``load_causal_lm``, ``load_seq2seq``). Those loaders are public
too, for users who prefer an explicit signature.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aptune.errors import ConfigError

if TYPE_CHECKING:
    import datasets
    import transformers

__all__ = ["TASK_KINDS", "TaskData", "TaskKind", "load_task"]

TaskKind = Literal["classification", "qa", "causal-lm", "seq2seq"]

#: The task kinds, in the spelling ``TaskData.kind`` uses.
TASK_KINDS: tuple[str, ...] = ("classification", "qa", "causal-lm", "seq2seq")

# Spellings users coming from transformers' example scripts and pipelines are likely to type.
_KIND_ALIASES = {
    "text-classification": "classification",
    "sequence-classification": "classification",
    "question-answering": "qa",
    "extractive-qa": "qa",
    "causal-lm": "causal-lm",
    "clm": "causal-lm",
    "text-generation": "causal-lm",
    "summarization": "seq2seq",
    "translation": "seq2seq",
}


@dataclass
class TaskData:
    """Tokenized data, collator and metrics of one task, ready for ``Trainer`` / ``AptTrainer``.

    Args:
        kind: One of :data:`TASK_KINDS`.
        train: Tokenized training set (model input columns and labels only), or ``None`` (eval only).
        eval: Tokenized evaluation set, or ``None`` (no evaluation data).
        collator: Batches examples of ``train``/``eval`` (pads inputs, pads labels with -100).
        compute_metrics: ``EvalPrediction -> {name: value}`` for ``Trainer(compute_metrics=...)``.
            Metric values are fractions in [0, 1] (accuracy, F1, exact match, ROUGE), except
            perplexity.
        primary_metric: Name of the metric to select models by (``metric_for_best_model``), as returned
            by ``compute_metrics`` (``Trainer`` reports it with an ``eval_`` prefix).
        greater_is_better: Whether a larger ``primary_metric`` is better (``False`` for perplexity).
        num_labels: Number of classes (classification only).
        label_names: Class names by id (classification with named labels; ``None`` for integer labels).
        preprocess_logits_for_metrics: For ``Trainer(preprocess_logits_for_metrics=...)``: shrinks the
            logits of each eval batch (e.g. argmax) so evaluation does not keep all logits in memory.
        info: Sizes, sources, split and options, for reports (JSON-serialisable).

    Example::

        task = load_task("classification", tokenizer, train_file="train.csv")
        trainer = Trainer(model=model, args=args, train_dataset=task.train, eval_dataset=task.eval,
                          data_collator=task.collator, compute_metrics=task.compute_metrics,
                          preprocess_logits_for_metrics=task.preprocess_logits_for_metrics)
    """

    kind: str
    train: datasets.Dataset | None
    eval: datasets.Dataset | None
    collator: Callable[..., Any]
    compute_metrics: Callable[[transformers.EvalPrediction], dict[str, float]] | None
    primary_metric: str
    greater_is_better: bool
    num_labels: int | None = None
    label_names: list[str] | None = None
    preprocess_logits_for_metrics: Callable[..., Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _normalise_kind(kind: str) -> str:
    key = str(kind).strip().lower().replace("_", "-")
    key = _KIND_ALIASES.get(key, key)
    if key not in TASK_KINDS:
        raise ConfigError(f"Unknown task kind {kind!r}. Choose one of {list(TASK_KINDS)}.")
    return key


def _loader(kind: str) -> Callable[..., TaskData]:
    # Imported here, not at module level: the task modules import TaskData from this module, and
    # importing aptune.tasks should not pull in every task's dependencies.
    if kind == "classification":
        from aptune.tasks.classification import load_classification

        return load_classification
    if kind == "qa":
        from aptune.tasks.qa import load_qa

        return load_qa
    if kind == "causal-lm":
        from aptune.tasks.causal_lm import load_causal_lm

        return load_causal_lm
    from aptune.tasks.seq2seq import load_seq2seq

    return load_seq2seq


def load_task(
    kind: str,
    tokenizer: Any,
    *,
    train_file: str | os.PathLike[str] | None = None,
    eval_file: str | os.PathLike[str] | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    max_length: int = 128,
    num_labels: int | None = None,
    text_columns: str | list[str] | tuple[str, ...] | None = None,
    label_column: str = "label",
    seed: int = 0,
    eval_fraction: float = 0.2,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    **kind_specific: Any,
) -> TaskData:
    """Load, check, split and tokenize the data of a task; return it with its collator and metrics.

    Data comes from files (``train_file`` and/or ``eval_file``), from a built-in data set
    (``dataset_name="bbc_news"`` for classification, ``"bbc_causal_lm"`` for causal LM), or from
    ``datasets.load_dataset(dataset_name, dataset_config)`` on a machine that reaches the Hub. Without an
    eval file, ``eval_fraction`` of the training rows are held out deterministically with ``seed``
    (stratified by label for classification). With only ``eval_file``, ``train`` is ``None``.

    Args:
        kind: ``"classification"``, ``"qa"``, ``"causal-lm"`` or ``"seq2seq"`` (a few aliases such as
            ``"question-answering"`` and ``"summarization"`` are accepted).
        tokenizer: The model's tokenizer (a fast tokenizer for QA).
        train_file: Training data (.csv, .tsv, .json, .jsonl; also .txt for causal LM).
        eval_file: Evaluation data, same formats.
        dataset_name: Built-in name or ``datasets`` Hub name / local dataset folder.
        dataset_config: The ``datasets`` configuration (e.g. ``"sst2"`` for ``"glue"``).
        max_length: Maximum tokens per model input (QA: per window; seq2seq: source side).
        num_labels: Classification: number of classes; inferred from the training labels when ``None``.
        text_columns: Classification: one or two text columns; seq2seq: ``(source, target)``; causal LM:
            the text column. Auto-detected when ``None``.
        label_column: Classification: the label column.
        seed: Seed of the split and of ``max_*_samples`` subsets.
        eval_fraction: Share of training rows held out when there is no eval file, in [0, 1); 0 means
            no evaluation set.
        max_train_samples: Keep at most this many training rows (a seeded random subset).
        max_eval_samples: Keep at most this many evaluation rows (a seeded random subset).
        **kind_specific: Options of one kind, e.g. ``doc_stride`` for QA, ``packing`` for causal LM,
            ``label_names`` for classification; see that kind's ``load_*`` function.

    Returns:
        The :class:`TaskData`.

    Raises:
        ConfigError: Unknown kind, an option out of range, an option that does not apply to ``kind``,
            or no data source at all.
        DataError: A problem with the data itself (missing or empty file, missing columns, bad labels,
            empty texts, malformed JSON); the message names the file and the column or value.

    Example::

        task = load_task("classification", tokenizer, dataset_name="bbc_news")
        task.info["num_train_examples"], task.info["num_eval_examples"], task.num_labels  # 1780, 445, 5
    """
    key = _normalise_kind(kind)
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 8:
        raise ConfigError(f"max_length must be an integer >= 8, got {max_length!r}.")
    if not 0.0 <= float(eval_fraction) < 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}.")
    for name, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{name} must be a positive integer or None, got {value!r}.")
    if num_labels is not None and (
        not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 2
    ):
        raise ConfigError(f"num_labels must be an integer >= 2 or None, got {num_labels!r}.")
    if train_file is None and eval_file is None and dataset_name is None:
        raise ConfigError("No data given: pass train_file and/or eval_file, or dataset_name.")
    if dataset_name is not None and (train_file is not None or eval_file is not None):
        raise ConfigError("Pass either dataset_name or train_file/eval_file, not both.")

    loader = _loader(key)
    accepted = set(inspect.signature(loader).parameters) - {"tokenizer"}
    shared: dict[str, Any] = {
        "train_file": train_file,
        "eval_file": eval_file,
        "dataset_name": dataset_name,
        "dataset_config": dataset_config,
        "max_length": max_length,
        "num_labels": num_labels,
        "text_columns": text_columns,
        "label_column": label_column,
        "seed": seed,
        "eval_fraction": float(eval_fraction),
        "max_train_samples": max_train_samples,
        "max_eval_samples": max_eval_samples,
    }
    defaults = inspect.signature(load_task).parameters
    for name, value in list(shared.items()):
        if name not in accepted:
            if value != defaults[name].default:
                raise ConfigError(f"Option {name!r} does not apply to task kind {key!r}; drop it.")
            del shared[name]
    unknown = sorted(set(kind_specific) - accepted)
    if unknown:
        own = sorted(accepted - set(defaults))
        raise ConfigError(f"Unknown option(s) {unknown} for task kind {key!r}. Options of this kind: {own}.")
    return loader(tokenizer, **shared, **kind_specific)
