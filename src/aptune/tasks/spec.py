"""What a task is: the `Task` interface the pipeline drives, and `TaskData`, what loading returns.

A task supplies four things: how to **read** its data into examples (checking them, with errors that
name file, record and column), what makes two training examples **duplicates**, how to **encode**
examples into model inputs, and its **collator and metrics**. Everything else (which source to read,
dedupe, the held-out split, the ``max_*_samples`` caps, the info dict) is the shared pipeline's job
(:mod:`aptune.tasks.pipeline`). A new task is a subclass registered with
:func:`aptune.tasks.registry.register_task`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from aptune.tasks.options import DataOptions
from aptune.tasks.split import random_split

if TYPE_CHECKING:
    import datasets
    import transformers

__all__ = ["LoadContext", "NoOptions", "Task", "TaskData", "TaskInput", "TaskMetrics"]


@dataclass
class TaskData:
    """Tokenized data, collator and metrics of one task, ready for ``Trainer`` / ``AptTrainer``.

    Args:
        kind: The task kind (e.g. ``"classification"``).
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
        info: Sizes, sources, split, duplicates removed and options, for reports (JSON-serialisable).

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


@dataclass(frozen=True)
class NoOptions:
    """Kind-specific options of a task that has none."""


@dataclass
class LoadContext:
    """Everything one ``load_task`` call knows, handed to each step of a task.

    Args:
        tokenizer: The model's tokenizer.
        data: The shared options.
        options: The task's own options (an instance of its ``Task.options`` dataclass).
        info: The info dict being built; steps add JSON-serialisable entries.
        state: Objects a later step needs but that are not JSON (e.g. QA's eval feature offsets).
    """

    tokenizer: Any
    data: DataOptions
    options: Any
    info: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskInput:
    """What a task read: checked examples of each side, where they came from, and label facts.

    Args:
        train: Training examples (any type the task's other steps understand), or ``None``.
        eval: Evaluation examples, or ``None`` (the pipeline may hold some training examples out).
        train_source: What to call the training data in messages and in ``info``.
        eval_source: Same for the evaluation data.
        split: How the sides were obtained when the source fixed them (e.g. a data set's own splits);
            ``None`` lets the pipeline describe it.
        held_out_name: How to describe a held-out split made by the pipeline (default: the task's
            :meth:`Task.split_name`), e.g. ``"built-in stratified split of BBC News"``.
        builtin: The data is a built-in set (its duplicates are logged at info level, not as a warning).
        num_labels: Classification: number of classes.
        label_names: Classification: class names by id.
    """

    train: list[Any] | None
    eval: list[Any] | None
    train_source: str | None = None
    eval_source: str | None = None
    split: str | None = None
    held_out_name: str | None = None
    builtin: bool = False
    num_labels: int | None = None
    label_names: list[str] | None = None


@dataclass
class TaskMetrics:
    """How a task is evaluated.

    Args:
        compute_metrics: For ``Trainer(compute_metrics=...)``, or ``None``.
        primary_metric: The metric to select models by.
        greater_is_better: Whether larger is better.
        preprocess_logits_for_metrics: For ``Trainer(preprocess_logits_for_metrics=...)``.
    """

    compute_metrics: Callable[..., dict[str, float]] | None
    primary_metric: str
    greater_is_better: bool = True
    preprocess_logits_for_metrics: Callable[..., Any] | None = None


class Task(abc.ABC):
    """One task kind: read, duplicate key, encode, collator and metrics; the pipeline does the rest.

    Subclasses set the class attributes and override :meth:`read`, :meth:`duplicate_text`,
    :meth:`encode`, :meth:`collator` and :meth:`metrics` (the others have defaults).

    Attributes:
        kind: The name ``load_task`` dispatches on (e.g. ``"classification"``).
        aliases: Other spellings of ``kind`` (e.g. ``"summarization"`` for seq2seq).
        options: Dataclass of the kind-specific keyword options (fields with defaults).
        shared_options: Which :class:`DataOptions` this kind uses; the others must stay at their
            defaults (``load_task`` rejects them otherwise).
        unit: What one example is called in messages (``"rows"``, ``"documents"``).
    """

    kind: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[type] = NoOptions
    shared_options: ClassVar[frozenset[str]] = frozenset(DataOptions.names())
    unit: ClassVar[str] = "rows"

    def check(self, ctx: LoadContext) -> None:
        """Check the tokenizer and options before any data is read (default: nothing to check).

        Args:
            ctx: The load context.

        Raises:
            ModelError, ConfigError: A tokenizer or option this task cannot work with.
        """
        return None

    @abc.abstractmethod
    def read(self, ctx: LoadContext) -> TaskInput:
        """Read and check the data of both sides from ``ctx.data``'s source.

        Args:
            ctx: The load context.

        Returns:
            The examples of each side, checked on whole files (messages give file record numbers).

        Raises:
            DataError: A problem with the data, naming file, record and column.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def duplicate_text(self, ctx: LoadContext, example: Any) -> str:
        """The text two training examples are compared by (exact and normalised tests).

        Args:
            ctx: The load context.
            example: One training example.

        Returns:
            The text; parts of one example joined with ``"\\x1f"``, a character that does not occur in text.
        """
        raise NotImplementedError

    def prefix_ids(self, ctx: LoadContext, examples: Sequence[Any]) -> list[list[int]] | None:
        """Token ids the model sees per example, truncated at ``max_length``, for the first-tokens test.

        Args:
            ctx: The load context.
            examples: The training examples.

        Returns:
            One id list per example, or ``None`` when the model sees more than one truncated input of
            an example (packed text, QA windows) and a shared prefix is not a duplicate.
        """
        return None

    def split(self, ctx: LoadContext, examples: Sequence[Any]) -> tuple[list[int], list[int]]:
        """Hold out ``ctx.data.eval_fraction`` of the training examples (default: at random, seeded).

        Args:
            ctx: The load context.
            examples: The (deduplicated) training examples.

        Returns:
            ``(train_indices, eval_indices)``, each sorted ascending.
        """
        return random_split(len(examples), ctx.data.eval_fraction, ctx.data.seed)

    def split_name(self, source: str) -> str:
        """Describe the held-out split of :meth:`split` (the pipeline adds fraction and seed).

        Args:
            source: The training data's source.

        Returns:
            E.g. ``"random split of train.csv"``.
        """
        return f"random split of {source}"

    def count_units(self, examples: Sequence[Any]) -> int:
        """How many units :meth:`split` divides (rows; QA: distinct contexts), for error messages.

        Args:
            examples: The training examples.

        Returns:
            The count.
        """
        return len(examples)

    @abc.abstractmethod
    def encode(self, ctx: LoadContext, examples: list[Any], side: str) -> datasets.Dataset:
        """Tokenize one side's examples into model inputs and labels; add its counts to ``ctx.info``.

        Args:
            ctx: The load context.
            examples: The examples of that side, after split and cap.
            side: ``"train"`` or ``"eval"``.

        Returns:
            The tokenized dataset.

        Raises:
            DataError: If nothing trainable is left after tokenization.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def collator(self, ctx: LoadContext) -> Callable[..., Any]:
        """The data collator batching the encoded examples.

        Args:
            ctx: The load context.

        Returns:
            A collator.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def metrics(self, ctx: LoadContext, eval_examples: list[Any] | None) -> TaskMetrics:
        """The metrics of this task, bound to the evaluation examples when they need them.

        Args:
            ctx: The load context (after encoding, so ``ctx.state`` holds what encode left there).
            eval_examples: The evaluation examples after split and cap, or ``None``.

        Returns:
            The :class:`TaskMetrics`.
        """
        raise NotImplementedError
