"""`load_task`, the one entry point: checks the options, looks the kind up, runs the shared pipeline.

The kinds live in a registry (:mod:`aptune.tasks.registry`) that the task modules register into, so
this module imports none of them. ``TaskData`` is defined in :mod:`aptune.tasks.spec` and re-exported
here.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Literal

from aptune.errors import ConfigError
from aptune.tasks.options import DataOptions
from aptune.tasks.pipeline import run_pipeline
from aptune.tasks.registry import get_task
from aptune.tasks.spec import TaskData

__all__ = ["TASK_KINDS", "TaskData", "TaskKind", "load_task"]

TaskKind = Literal["classification", "qa", "causal-lm", "seq2seq"]

#: The built-in task kinds, in the spelling ``TaskData.kind`` uses.
TASK_KINDS: tuple[str, ...] = ("classification", "qa", "causal-lm", "seq2seq")


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
    dedupe: bool = True,
    **kind_specific: Any,
) -> TaskData:
    """Load, check, deduplicate, split and tokenize the data of a task; return it with collator and metrics.

    Data comes from files (``train_file`` and/or ``eval_file``), from a built-in data set
    (``dataset_name="bbc_news"`` for classification, ``"bbc_causal_lm"`` for causal LM), or from
    ``datasets.load_dataset(dataset_name, dataset_config)`` on a machine that reaches the Hub. Duplicate
    training rows are removed first (one warning line gives the counts; ``info["duplicates_removed"]``
    holds them; see :mod:`aptune.tasks.pipeline` for what a duplicate is per task). Without an eval
    file, ``eval_fraction`` of the training rows are held out deterministically with ``seed``
    (stratified by label for classification). With only ``eval_file``, ``train`` is ``None``.

    Args:
        kind: ``"classification"``, ``"qa"``, ``"causal-lm"``, ``"seq2seq"`` or a kind registered with
            :func:`aptune.tasks.registry.register_task` (aliases such as ``"question-answering"`` and
            ``"summarization"`` are accepted).
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
        dedupe: Remove duplicate training rows before the split (``False`` keeps them).
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
        task.info["num_train_examples"], task.info["num_eval_examples"], task.num_labels
    """
    task = get_task(kind)
    data = DataOptions(
        train_file=train_file,
        eval_file=eval_file,
        dataset_name=dataset_name,
        dataset_config=dataset_config,
        max_length=max_length,
        num_labels=num_labels,
        text_columns=text_columns,
        label_column=label_column,
        seed=seed,
        eval_fraction=float(eval_fraction) if isinstance(eval_fraction, (int, float)) else eval_fraction,
        max_train_samples=max_train_samples,
        max_eval_samples=max_eval_samples,
        dedupe=dedupe,
    )
    data.validate()
    defaults = inspect.signature(load_task).parameters
    for name in DataOptions.names():
        if name not in task.shared_options and getattr(data, name) != defaults[name].default:
            raise ConfigError(f"Option {name!r} does not apply to task kind {task.kind!r}; drop it.")
    own = sorted(field.name for field in dataclasses.fields(task.options))
    unknown = sorted(set(kind_specific) - set(own))
    if unknown:
        raise ConfigError(
            f"Unknown option(s) {unknown} for task kind {task.kind!r}. Options of this kind: {own}."
        )
    return run_pipeline(task, tokenizer, data, task.options(**kind_specific))
