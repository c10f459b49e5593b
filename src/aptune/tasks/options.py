"""`DataOptions`: the options every task shares (source, length, split, caps, dedupe), validated once."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from aptune.errors import ConfigError

__all__ = ["DataOptions"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DataOptions:
    """Where the data comes from and how it is split, capped, deduplicated and truncated.

    These are the keyword options of :func:`aptune.tasks.load_task` that all task kinds share (a kind
    may ignore some: QA has no label column). Kind-specific options (``doc_stride``, ``packing``, ...)
    live in each task's own options dataclass.

    Args:
        train_file: Training data file.
        eval_file: Evaluation data file.
        dataset_name: Built-in name or ``datasets`` Hub name / local dataset folder.
        dataset_config: The ``datasets`` configuration.
        max_length: Maximum tokens per model input (>= 8).
        num_labels: Classification: number of classes, or ``None`` to infer it.
        text_columns: The text column(s) a task reads; ``None`` to detect them.
        label_column: Classification: the label column.
        seed: Seed of the split and of the ``max_*_samples`` subsets.
        eval_fraction: Share of training rows held out when there is no eval data, in [0, 1).
        max_train_samples: Keep at most this many training rows (a seeded random subset).
        max_eval_samples: Keep at most this many evaluation rows (a seeded random subset).
        dedupe: Remove duplicate training rows before the held-out split (see
            :mod:`aptune.tasks.pipeline` for what a duplicate is per task).
    """

    train_file: str | os.PathLike[str] | None = None
    eval_file: str | os.PathLike[str] | None = None
    dataset_name: str | None = None
    dataset_config: str | None = None
    max_length: int = 128
    num_labels: int | None = None
    text_columns: str | Sequence[str] | None = None
    label_column: str = "label"
    seed: int = 0
    eval_fraction: float = 0.2
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    dedupe: bool = True

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(field.name for field in fields(cls))

    def validate(self) -> None:
        """Check every option's type and range, and that exactly one kind of data source is given.

        Raises:
            ConfigError: Naming the option, the value and the accepted range.
        """
        if not _is_int(self.max_length) or self.max_length < 8:
            raise ConfigError(f"max_length must be an integer >= 8, got {self.max_length!r}.")
        if not 0.0 <= float(self.eval_fraction) < 1.0:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction!r}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}.")
        if self.num_labels is not None and (not _is_int(self.num_labels) or self.num_labels < 2):
            raise ConfigError(f"num_labels must be an integer >= 2 or None, got {self.num_labels!r}.")
        if not isinstance(self.dedupe, bool):
            raise ConfigError(f"dedupe must be True or False, got {self.dedupe!r}.")
        if self.train_file is None and self.eval_file is None and self.dataset_name is None:
            raise ConfigError("No data given: pass train_file and/or eval_file, or dataset_name.")
        if self.dataset_name is not None and (self.train_file is not None or self.eval_file is not None):
            raise ConfigError("Pass either dataset_name or train_file/eval_file, not both.")
