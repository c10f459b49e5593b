"""The extractive QA task: examples -> dedupe -> split by context -> windows; SQuAD v2 metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aptune.errors import ConfigError, ModelError
from aptune.tasks.base import load_task
from aptune.tasks.io import load_dataset_records
from aptune.tasks.qa.examples import QAExample, qa_examples_from_records, read_qa_examples
from aptune.tasks.qa.features import build_features
from aptune.tasks.qa.metrics import QAMetrics
from aptune.tasks.registry import register_task
from aptune.tasks.spec import LoadContext, Task, TaskData, TaskInput, TaskMetrics
from aptune.tasks.split import random_split

if TYPE_CHECKING:
    import datasets

__all__ = ["QAOptions", "QATask", "load_qa"]


@dataclass(frozen=True)
class QAOptions:
    """Options of the QA task besides the shared ones.

    Args:
        doc_stride: Overlap, in tokens, between consecutive windows of a long context.
        max_answer_length: Longest predicted answer, in tokens.
        n_best: Start/end candidates per window in post-processing.
        version_2_with_negative: Whether "no answer" may be predicted; ``None``: yes if any question of
            the data has no answer.
        null_threshold: Margin by which the no-answer score must beat the best span.
    """

    doc_stride: int = 64
    max_answer_length: int = 30
    n_best: int = 20
    version_2_with_negative: bool | None = None
    null_threshold: float = 0.0


@register_task
class QATask(Task):
    """Extractive QA (SQuAD v1.1 / v2.0): windows of question + context, span labels, EM and F1."""

    kind = "qa"
    aliases = ("question-answering", "extractive-qa")
    options = QAOptions
    shared_options = Task.shared_options - {"num_labels", "text_columns", "label_column"}
    unit = "contexts"

    def check(self, ctx: LoadContext) -> None:
        """A fast tokenizer with a padding token, and room for the question next to ``doc_stride``."""
        tokenizer, max_length, doc_stride = ctx.tokenizer, ctx.data.max_length, ctx.options.doc_stride
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(
                "Extractive QA needs a fast tokenizer (character offsets): load it with "
                "AutoTokenizer.from_pretrained(path, use_fast=True)."
            )
        if getattr(tokenizer, "pad_token_id", None) is None:
            raise ModelError(
                "The tokenizer has no padding token; set tokenizer.pad_token before loading QA data."
            )
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        if max_length - specials - doc_stride - 1 < 1:
            raise ConfigError(
                f"doc_stride={doc_stride} leaves no room for the question in max_length={max_length} "
                f"({specials} special tokens). Use doc_stride < {max_length - specials - 1} (a quarter of "
                "max_length is usual) or a larger max_length."
            )

    def read(self, ctx: LoadContext) -> TaskInput:
        """Examples of each side from SQuAD JSON, flat files or a ``datasets`` data set."""
        data = ctx.data
        split = None
        if data.dataset_name is not None:
            train_records, eval_records, meta = load_dataset_records(data.dataset_name, data.dataset_config)
            train_source = f"{data.dataset_name}/{data.dataset_config or '-'}[{meta['train_split']}]"
            eval_source = f"{data.dataset_name}/{data.dataset_config or '-'}[{meta['eval_split']}]"
            train = qa_examples_from_records(train_records, train_source) if train_records else None
            held = qa_examples_from_records(eval_records, eval_source) if eval_records else None
            split = f"data set splits {meta['train_split']!r} / {meta['eval_split']!r}"
        else:
            train_source, eval_source = str(data.train_file), str(data.eval_file)
            train = read_qa_examples(data.train_file) if data.train_file is not None else None
            held = read_qa_examples(data.eval_file) if data.eval_file is not None else None
        ctx.info.update({"doc_stride": ctx.options.doc_stride, "questions_truncated": 0})
        return TaskInput(train, held, train_source, eval_source, split=split)

    def duplicate_text(self, ctx: LoadContext, example: QAExample) -> str:
        """The question and its context joined with ``"\\x1f"``: the same question on the same paragraph.

        The same question about another paragraph, or another question about the same paragraph, is a
        different example. The answers are not compared (a copy with other answers is a conflict).
        """
        return f"{example.question}\x1f{example.context}"

    def split(self, ctx: LoadContext, examples: Sequence[QAExample]) -> tuple[list[int], list[int]]:
        """Whole contexts at random, so no eval question shares its paragraph with a training question."""
        contexts = [example.context for example in examples]
        return random_split(len(examples), ctx.data.eval_fraction, ctx.data.seed, groups=contexts)

    def split_name(self, source: str) -> str:
        """``"random split of <source> by context"``."""
        return f"random split of {source} by context"

    def count_units(self, examples: Sequence[QAExample]) -> int:
        """Distinct contexts."""
        return len({example.context for example in examples})

    def encode(self, ctx: LoadContext, examples: list[QAExample], side: str) -> datasets.Dataset:
        """Windows with span labels; the eval side's offsets are kept for the metrics."""
        import datasets

        features = build_features(ctx.tokenizer, examples, ctx.data.max_length, ctx.options.doc_stride)
        dataset = datasets.Dataset.from_dict(features.columns)
        ctx.state[f"{side}_features"] = features
        ctx.info["questions_truncated"] += features.truncated_questions
        ctx.info[f"num_{side}_examples"] = len(examples)
        ctx.info[f"num_{side}_features"] = len(dataset)
        ctx.info[f"num_{side}_no_answer"] = sum(not example.answer_texts for example in examples)
        return dataset

    def collator(self, ctx: LoadContext) -> Any:
        """``DataCollatorWithPadding``."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(ctx.tokenizer)

    def metrics(self, ctx: LoadContext, eval_examples: list[QAExample] | None) -> TaskMetrics:
        """:class:`QAMetrics` bound to the eval features (``f1`` primary); ``None`` without eval data."""
        options = ctx.options
        # Counted by encode on the (capped) examples of both sides.
        no_answer_seen = ctx.info.get("num_train_no_answer", 0) + ctx.info.get("num_eval_no_answer", 0) > 0
        allow_no_answer = (
            no_answer_seen
            if options.version_2_with_negative is None
            else bool(options.version_2_with_negative)
        )
        ctx.info["version_2_with_negative"] = allow_no_answer
        metrics = None
        if eval_examples is not None:
            features = ctx.state["eval_features"]
            metrics = QAMetrics(
                eval_examples,
                features.example,
                features.offsets,
                features.cls,
                n_best=options.n_best,
                max_answer_length=options.max_answer_length,
                allow_no_answer=allow_no_answer,
                null_threshold=options.null_threshold,
            )
        return TaskMetrics(metrics, primary_metric="f1", greater_is_better=True)


def load_qa(tokenizer: Any, **options: Any) -> TaskData:
    """Load an extractive QA task: ``load_task("qa", tokenizer, **options)``.

    Without an eval file, ``eval_fraction`` of the training contexts are held out (whole paragraphs,
    so no eval question shares a paragraph with a training question). ``max_length`` is the window
    length (question + context + special tokens); ``max_*_samples`` count questions.

    Args:
        tokenizer: A fast tokenizer (offsets are needed), with a padding token.
        **options: The shared options of :func:`aptune.tasks.load_task` (files in SQuAD JSON or flat
            layout, or a ``datasets`` name such as ``"squad_v2"``) and :class:`QAOptions`
            (``doc_stride``, ``max_answer_length``, ``n_best``, ``version_2_with_negative``,
            ``null_threshold``).

    Returns:
        :class:`TaskData` whose ``eval`` holds features (windows) and whose ``compute_metrics`` is a
        :class:`~aptune.tasks.qa.metrics.QAMetrics` bound to them; ``primary_metric="f1"``.

    Raises:
        DataError: See :func:`~aptune.tasks.qa.examples.qa_examples_from_records`; or too few contexts
            to split.
        ConfigError: If ``doc_stride`` leaves no room for the question in ``max_length``.
        ModelError: If the tokenizer is not a fast tokenizer or has no padding token.
    """
    return load_task("qa", tokenizer, **options)
