"""Sequence-to-sequence tasks (summarisation, translation, any text-to-text): data, collator, ROUGE.

Input: records with ``source``/``target`` columns (also ``document``/``summary`` as in XSum, and
``article``/``highlights`` as in CNN/DailyMail), or ``text_columns=(source, target)``. Sources are
tokenized to ``max_length`` tokens, targets (``text_target``) to ``max_target_length``;
``DataCollatorForSeq2Seq`` pads labels with -100.

Metrics: ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures from Google's ``rouge-score`` package
(the implementation summarisation papers report), with Porter stemming as in the CNN/DailyMail
results; ``rougeLsum`` is the summary-level LCS over sentences, one per line (:func:`split_sentences`).
They are meant for generated ids: run evaluation with
``Seq2SeqTrainingArguments(predict_with_generate=True)``. Without generation, the trainer passes
logits; :func:`reduce_seq2seq_logits` then keeps their argmax, which gives teacher-forced scores
(optimistic, but cheap to watch during training).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from aptune.errors import ConfigError, DataError, ModelError
from aptune.tasks.base import load_task
from aptune.tasks.io import check_columns, column_names, load_dataset_records, read_records, require_text
from aptune.tasks.registry import register_task
from aptune.tasks.spec import LoadContext, Task, TaskData, TaskInput, TaskMetrics

if TYPE_CHECKING:
    import datasets
    import torch
    import transformers

__all__ = [
    "ROUGE_TYPES",
    "SEQ2SEQ_COLUMN_CANDIDATES",
    "Seq2SeqMetrics",
    "Seq2SeqOptions",
    "Seq2SeqTask",
    "load_seq2seq",
    "reduce_seq2seq_logits",
    "rouge_scores",
    "split_sentences",
]

#: (source, target) column pairs recognised without ``text_columns``, tried in this order.
SEQ2SEQ_COLUMN_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("source", "target"),
    ("document", "summary"),
    ("article", "highlights"),
)

#: The ROUGE variants reported (F-measures), as named by ``rouge-score``.
ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL", "rougeLsum")


# ----------------------------------------------------------------------------------------------- metrics
@cache
def _sentence_splitter() -> Any:
    """NLTK's Punkt sentence splitter: the trained English model when installed, else Punkt's defaults."""
    import nltk
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        # Untrained Punkt: splits after . ! ? like the trained model, without its abbreviation list.
        return PunktSentenceTokenizer()
    return nltk.tokenize.PunktTokenizer("english")


def split_sentences(text: str) -> str:
    """One sentence per line, as ``rougeLsum`` expects (what transformers' summarisation example does).

    Lines already in the text are kept; each line is further split into sentences by NLTK's Punkt
    (the trained English model when ``nltk.download("punkt_tab")`` was run, Punkt's untrained
    defaults otherwise: they differ only on abbreviations such as "Mr.").

    Args:
        text: A summary.

    Returns:
        The summary with a newline between sentences.

    Example:
        >>> split_sentences("The cat sat. The dog ran!")
        'The cat sat.\\nThe dog ran!'
    """
    splitter = _sentence_splitter()
    return "\n".join(
        sentence for line in text.splitlines() for sentence in splitter.tokenize(line) if sentence.strip()
    )


@cache
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures over pairs of texts (``rouge-score``).

    Scored as summarisation papers report CNN/DailyMail: Google's ``rouge_score.RougeScorer`` with
    Porter stemming, its tokenizer (lower case, runs of letters and digits), sentences split one per
    line for ``rougeLsum`` (:func:`split_sentences`).

    Args:
        predictions: Generated texts.
        references: Reference texts, same length.

    Returns:
        ``{"rouge1": ..., "rouge2": ..., "rougeL": ..., "rougeLsum": ...}``, fractions in [0, 1].

    Raises:
        ValueError: If the lengths differ or there is nothing to score.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    if not predictions:
        raise ValueError("No predictions to score.")
    scorer = _scorer()
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        # rouge-score's argument order is (target, prediction).
        scores = scorer.score(split_sentences(reference), split_sentences(prediction))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: value / len(predictions) for name, value in totals.items()}


def reduce_seq2seq_logits(logits: Any, labels: Any = None) -> torch.Tensor:
    """``preprocess_logits_for_metrics`` for seq2seq: logits to token ids, generated ids unchanged.

    ``Seq2SeqTrainer`` with ``predict_with_generate`` passes generated ids ``[batch, length]`` through
    this hook too, so only 3-D tensors (``[batch, length, vocab]`` logits) are reduced.

    Args:
        logits: Logits (or a tuple whose first item they are) or generated ids.
        labels: Unused; part of the hook's signature.

    Returns:
        ``[batch, length]`` token ids.
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.argmax(dim=-1) if logits.dim() == 3 else logits


class Seq2SeqMetrics:
    """``compute_metrics`` for seq2seq: decodes generated and reference ids, returns ROUGE.

    Args:
        tokenizer: Decodes ids (special tokens are skipped).

    Attributes:
        last_predictions: Decoded predictions of the latest call, to inspect or save.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.last_predictions: list[str] = []

    def _decode(self, ids: Any) -> list[str]:
        ids = np.asarray(ids)
        if ids.ndim == 3:
            ids = ids.argmax(axis=-1)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # -100 marks label padding and the trainer's padding between batches: not decodable ids.
        ids = np.where(ids < 0, pad, ids)
        return self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)

    def __call__(self, eval_pred: transformers.EvalPrediction) -> dict[str, float]:
        """Score an evaluation run.

        Args:
            eval_pred: ``predictions`` = generated ids ``[n, length]`` (or logits), ``label_ids`` =
                reference ids with -100 padding.

        Returns:
            ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum`` and ``gen_len`` (mean predicted tokens).
        """
        predictions = eval_pred.predictions
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        self.last_predictions = self._decode(predictions)
        references = self._decode(eval_pred.label_ids)
        scores = rouge_scores(self.last_predictions, references)
        ids = np.asarray(predictions)
        if ids.ndim == 2:
            special = set(self.tokenizer.all_special_ids)
            lengths = [sum(1 for token in row if token >= 0 and token not in special) for row in ids.tolist()]
            scores["gen_len"] = float(np.mean(lengths))
        return scores


# ---------------------------------------------------------------------------------------------- data
def _columns(records: Sequence[dict[str, Any]], text_columns: Any, source: str) -> tuple[str, str]:
    if text_columns is not None:
        if isinstance(text_columns, str) or len(text_columns) != 2:
            raise ConfigError(f"Seq2seq text_columns must name (source, target), got {text_columns!r}.")
        return text_columns[0], text_columns[1]
    found = column_names(records)
    for pair in SEQ2SEQ_COLUMN_CANDIDATES:
        if all(name in found for name in pair):
            return pair
    expected = " | ".join("+".join(pair) for pair in SEQ2SEQ_COLUMN_CANDIDATES)
    raise DataError(
        f"{source} has no source/target columns: found {found}, expected one of {expected}. Rename the "
        "columns or pass text_columns=[source, target]."
    )


def _pairs(records: Sequence[dict[str, Any]], columns: tuple[str, str], source: str) -> list[tuple[str, str]]:
    check_columns(
        records, list(columns), source, hint="Pass text_columns=[source, target] to use other columns."
    )
    return [
        (
            require_text(r.get(columns[0]), source, columns[0], n),
            require_text(r.get(columns[1]), source, columns[1], n),
        )
        for n, r in enumerate(records, start=1)
    ]


@dataclass(frozen=True)
class Seq2SeqOptions:
    """Options of the seq2seq task besides the shared ones.

    Args:
        max_target_length: Target tokens kept; ``max_length`` when ``None``.
        source_prefix: Text put before every source, e.g. ``"summarize: "`` for T5.
        model: Optional model given to ``DataCollatorForSeq2Seq``, which then adds
            ``decoder_input_ids`` to batches (models such as T5 derive them from labels anyway).
        pad_to_multiple_of: Passed to ``DataCollatorForSeq2Seq``.
    """

    max_target_length: int | None = None
    source_prefix: str = ""
    model: Any = None
    pad_to_multiple_of: int | None = None


@register_task
class Seq2SeqTask(Task):
    """Text to text (summarisation, translation): (source, target) pairs; ROUGE from ``rouge-score``."""

    kind = "seq2seq"
    aliases = ("summarization", "translation")
    options = Seq2SeqOptions
    shared_options = Task.shared_options - {"num_labels", "label_column"}

    def check(self, ctx: LoadContext) -> None:
        """Require a padding token."""
        if getattr(ctx.tokenizer, "pad_token_id", None) is None:
            raise ModelError(
                "The tokenizer has no padding token; set tokenizer.pad_token before loading seq2seq data."
            )

    def read(self, ctx: LoadContext) -> TaskInput:
        """(source, target) pairs of each side, from files or a ``datasets`` data set."""
        data = ctx.data
        sides: dict[str, list[tuple[str, str]] | None] = {"train": None, "eval": None}
        sources: dict[str, str | None] = {"train": None, "eval": None}
        split = None
        if data.dataset_name is not None:
            train_records, eval_records, meta = load_dataset_records(data.dataset_name, data.dataset_config)
            name = f"{data.dataset_name}/{data.dataset_config or '-'}"
            loaded = {
                "train": (train_records, meta["train_split"]),
                "eval": (eval_records, meta["eval_split"]),
            }
            for side, (records, split_name) in loaded.items():
                if records:
                    source = sources[side] = f"{name}[{split_name}]"
                    sides[side] = _pairs(records, _columns(records, data.text_columns, source), source)
            split = f"data set splits {meta['train_split']!r} / {meta['eval_split']!r}"
        else:
            for side, path in (("train", data.train_file), ("eval", data.eval_file)):
                if path is not None:
                    records = read_records(path)
                    sources[side] = str(path)
                    sides[side] = _pairs(records, _columns(records, data.text_columns, str(path)), str(path))
        return TaskInput(sides["train"], sides["eval"], sources["train"], sources["eval"], split=split)

    def duplicate_text(self, ctx: LoadContext, example: tuple[str, str]) -> str:
        """The source: one input with two targets is one example with two answers."""
        return ctx.options.source_prefix + example[0]

    def prefix_ids(self, ctx: LoadContext, examples: Sequence[tuple[str, str]]) -> list[list[int]]:
        """The source ids the encoder sees, truncated at ``max_length``."""
        sources = [ctx.options.source_prefix + source for source, _ in examples]
        return list(ctx.tokenizer(sources, max_length=ctx.data.max_length, truncation=True)["input_ids"])

    def encode(self, ctx: LoadContext, examples: list[tuple[str, str]], side: str) -> datasets.Dataset:
        """Sources to ``max_length``, targets (``text_target``) to ``max_target_length`` as labels."""
        import datasets

        tokenizer, prefix = ctx.tokenizer, ctx.options.source_prefix
        target_length = ctx.options.max_target_length or ctx.data.max_length
        ctx.info.update({"max_target_length": target_length, "source_prefix": prefix})
        encoded = tokenizer(
            [prefix + source for source, _ in examples], max_length=ctx.data.max_length, truncation=True
        )
        targets = tokenizer(
            text_target=[target for _, target in examples], max_length=target_length, truncation=True
        )
        columns = {name: list(encoded[name]) for name in tokenizer.model_input_names if name in encoded}
        columns["labels"] = list(targets["input_ids"])
        ctx.info[f"num_{side}_examples"] = len(examples)
        ctx.info[f"{side}_targets_at_max_length"] = sum(
            len(ids) >= target_length for ids in columns["labels"]
        )
        return datasets.Dataset.from_dict(columns)

    def collator(self, ctx: LoadContext) -> Any:
        """``DataCollatorForSeq2Seq`` (labels padded with -100)."""
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(
            ctx.tokenizer, model=ctx.options.model, pad_to_multiple_of=ctx.options.pad_to_multiple_of
        )

    def metrics(self, ctx: LoadContext, eval_examples: list[tuple[str, str]] | None) -> TaskMetrics:
        """ROUGE (primary: ``rougeL``) of decoded predictions."""
        ctx.info.setdefault("max_target_length", ctx.options.max_target_length or ctx.data.max_length)
        ctx.info.setdefault("source_prefix", ctx.options.source_prefix)
        return TaskMetrics(
            Seq2SeqMetrics(ctx.tokenizer),
            primary_metric="rougeL",
            greater_is_better=True,
            preprocess_logits_for_metrics=reduce_seq2seq_logits,
        )


def load_seq2seq(tokenizer: Any, **options: Any) -> TaskData:
    """Load a seq2seq task: ``load_task("seq2seq", tokenizer, **options)``.

    Args:
        tokenizer: The model's tokenizer, with a padding token.
        **options: The shared options of :func:`aptune.tasks.load_task` (files with source and target
            columns, ``text_columns=(source, target)``, ``max_length`` for the source side, ...) and
            :class:`Seq2SeqOptions` (``max_target_length``, ``source_prefix``, ``model``,
            ``pad_to_multiple_of``).

    Returns:
        :class:`TaskData` with ``primary_metric="rougeL"`` and a :class:`Seq2SeqMetrics`.

    Raises:
        DataError: Missing/empty/malformed files, missing columns, or empty texts.
        ConfigError: If ``text_columns`` is not a (source, target) pair, or an option is unknown.
        ModelError: If the tokenizer has no padding token.
    """
    return load_task("seq2seq", tokenizer, **options)
