"""Extractive question answering (SQuAD v1.1 / v2.0): examples, features (windows), metrics, the task.

- :mod:`~aptune.tasks.qa.examples`: reading and checking SQuAD JSON or flat files into examples;
- :mod:`~aptune.tasks.qa.features`: long contexts cut into overlapping windows with span labels;
- :mod:`~aptune.tasks.qa.metrics`: logits back to answer strings, SQuAD v2 exact match and F1;
- :mod:`~aptune.tasks.qa.task`: the registered ``"qa"`` task and :func:`load_qa`.

Evaluation runs on features, metrics on examples: :class:`QAMetrics` keeps which feature belongs to
which example and each feature's character offsets.
"""

from __future__ import annotations

from aptune.tasks.qa.examples import QAExample, qa_examples_from_records, read_qa_examples
from aptune.tasks.qa.features import QAFeatures, build_features
from aptune.tasks.qa.metrics import (
    QAMetrics,
    answer_exact_match,
    answer_f1,
    normalize_answer,
    postprocess_qa_predictions,
    squad_v2_metrics,
)
from aptune.tasks.qa.task import QAOptions, QATask, load_qa

__all__ = [
    "QAExample",
    "QAFeatures",
    "QAMetrics",
    "QAOptions",
    "QATask",
    "answer_exact_match",
    "answer_f1",
    "build_features",
    "load_qa",
    "normalize_answer",
    "postprocess_qa_predictions",
    "qa_examples_from_records",
    "read_qa_examples",
    "squad_v2_metrics",
]
