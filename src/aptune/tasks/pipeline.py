"""The one pipeline every task runs through: read -> dedupe -> split -> cap -> tokenize -> metrics.

The task supplies the steps that depend on the data (:class:`~aptune.tasks.spec.Task`); this module
does the rest the same way for all of them:

1. **read** both sides (the task checks whole files, so messages give file record numbers);
2. **dedupe** the training data (unless ``dedupe=False``), before any held-out split, so that no
   evaluation row is a copy of a training row. Three tests (:func:`~aptune.tasks.dedupe.dedupe_records`):
   exact text, text after case/whitespace/Unicode normalisation, and the same first ``max_length``
   token ids. What a duplicate is, per task:

   - classification: the text, a sentence pair joined with ``"\\x1f"``; first tokens as the model
     sees the (pair) input;
   - seq2seq: the source (with ``source_prefix``); two rows with one source are one input with two
     answers; first tokens of the source;
   - causal LM: the document (instruction data: prompt and response); first tokens only without
     packing (a packed document is seen whole, so a shared beginning is not a copy);
   - QA: the (question, context) pair; no first-tokens test (the model sees every window of the
     context, not only the first ``max_length`` tokens).

   A user's evaluation file is never deduplicated (its rows are what results are compared on). The
   counts go into ``info["dedupe"]`` and ``info["duplicates_removed"]``, and one warning line is
   logged when rows were removed;
3. **split**: without evaluation data, hold out ``eval_fraction`` of the training examples (the
   task decides how: stratified, at random, grouped by context);
4. **cap** each side at ``max_train_samples`` / ``max_eval_samples`` (seeded random subsets);
5. **tokenize** each side, then build the collator and metrics.
"""

from __future__ import annotations

import logging
from typing import Any

from aptune.errors import DataError
from aptune.tasks.dedupe import dedupe_records
from aptune.tasks.io import cap_records
from aptune.tasks.options import DataOptions
from aptune.tasks.spec import LoadContext, Task, TaskData, TaskInput

__all__ = ["run_pipeline"]

logger = logging.getLogger("aptune.tasks")


def _dedupe(task: Task, ctx: LoadContext, examples: list[Any], read: TaskInput) -> list[Any]:
    ids = task.prefix_ids(ctx, examples)
    kept, report = dedupe_records(examples, lambda example: task.duplicate_text(ctx, example), prefix_ids=ids)
    ctx.info["duplicates_removed"] = report.removed
    ctx.info["dedupe"] = {**report.to_dict(), "first_tokens_test": ids is not None}
    if report.removed:
        log = logger.info if read.builtin else logger.warning
        log("%s: %s, before the held-out split.", read.train_source, report.describe())
    return kept


def run_pipeline(task: Task, tokenizer: Any, data: DataOptions, options: Any) -> TaskData:
    """Load one task's data: read, dedupe, split, cap, tokenize; attach collator and metrics.

    Args:
        task: The registered task.
        tokenizer: The model's tokenizer.
        data: The shared options (already validated).
        options: The task's own options (an instance of ``task.options``).

    Returns:
        The :class:`~aptune.tasks.spec.TaskData`.

    Raises:
        DataError: A problem with the data, or too few rows to hold ``eval_fraction`` out.
        ConfigError, ModelError: From the task's checks.
    """
    ctx = LoadContext(tokenizer=tokenizer, data=data, options=options, info={"kind": task.kind})
    task.check(ctx)
    read = task.read(ctx)
    train, held = read.train, read.eval
    split = read.split or "eval file given"
    if train is not None and data.dedupe:
        train = _dedupe(task, ctx, train, read)
    eval_source = read.eval_source
    if held is None and train is not None and data.eval_fraction > 0:
        train_idx, eval_idx = task.split(ctx, train)
        if not eval_idx:
            raise DataError(
                f"{read.train_source} has too few {task.unit} ({task.count_units(train)}) to hold out "
                f"eval_fraction={data.eval_fraction}. Add {task.unit} or pass an eval file."
            )
        held = [train[i] for i in eval_idx]
        train = [train[i] for i in train_idx]
        eval_source = read.train_source
        name = read.held_out_name or task.split_name(str(read.train_source))
        split = f"{name}, eval_fraction={data.eval_fraction}, seed={data.seed}"
    elif held is None:
        split = "no evaluation data"
    if train is not None:
        train = cap_records(train, data.max_train_samples, data.seed)
    if held is not None:
        held = cap_records(held, data.max_eval_samples, data.seed)

    ctx.info.update(
        {
            "train_source": read.train_source if train is not None else None,
            "eval_source": eval_source if held is not None else None,
            "split": split,
            "max_length": data.max_length,
        }
    )
    built = {
        side: task.encode(ctx, examples, side) if examples is not None else None
        for side, examples in (("train", train), ("eval", held))
    }
    metrics = task.metrics(ctx, held)
    return TaskData(
        kind=task.kind,
        train=built["train"],
        eval=built["eval"],
        collator=task.collator(ctx),
        compute_metrics=metrics.compute_metrics,
        primary_metric=metrics.primary_metric,
        greater_is_better=metrics.greater_is_better,
        num_labels=read.num_labels,
        label_names=read.label_names,
        preprocess_logits_for_metrics=metrics.preprocess_logits_for_metrics,
        info=ctx.info,
    )
