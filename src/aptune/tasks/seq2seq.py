"""Sequence-to-sequence tasks (summarisation, translation, any text-to-text): data, collator, ROUGE.

Input: records with ``source``/``target`` columns (also ``document``/``summary`` as in XSum, and
``article``/``highlights`` as in CNN/DailyMail), or ``text_columns=(source, target)``. Sources are
tokenized to ``max_length`` tokens, targets (``text_target``) to ``max_target_length``;
``DataCollatorForSeq2Seq`` pads labels with -100.

Metrics: ROUGE-1, ROUGE-2 and ROUGE-L F-measures computed here, on lower-cased alphanumeric tokens,
without stemming (ROUGE-L is the sentence-level longest common subsequence, not the summary-level
``rougeLsum``). They are meant for generated ids: run evaluation with
``Seq2SeqTrainingArguments(predict_with_generate=True)``. Without generation, the trainer passes
logits; :func:`reduce_seq2seq_logits` then keeps their argmax, which gives teacher-forced scores
(optimistic, but cheap to watch during training).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from aptune.errors import ConfigError, DataError, ModelError
from aptune.tasks.base import TaskData
from aptune.tasks.io import (
    cap_records,
    check_columns,
    column_names,
    load_dataset_records,
    read_records,
    require_text,
)
from aptune.tasks.split import random_split

if TYPE_CHECKING:
    import torch
    import transformers

__all__ = [
    "SEQ2SEQ_COLUMN_CANDIDATES",
    "Seq2SeqMetrics",
    "load_seq2seq",
    "reduce_seq2seq_logits",
    "rouge_l",
    "rouge_n",
    "rouge_scores",
    "rouge_tokens",
]

#: (source, target) column pairs recognised without ``text_columns``, tried in this order.
SEQ2SEQ_COLUMN_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("source", "target"),
    ("document", "summary"),
    ("article", "highlights"),
)

_WORD = re.compile(r"[a-z0-9]+")


# ----------------------------------------------------------------------------------------------- metrics
def rouge_tokens(text: str) -> list[str]:
    """Tokens ROUGE compares: runs of ASCII letters and digits of the lower-cased text.

    Args:
        text: Any text.

    Returns:
        The tokens, in order.

    Example:
        >>> rouge_tokens("The cat's 2 hats!")
        ['the', 'cat', 's', '2', 'hats']
    """
    return _WORD.findall(text.lower())


def _f_measure(overlap: float, predicted: int, reference: int) -> float:
    if overlap == 0 or predicted == 0 or reference == 0:
        return 0.0
    precision = overlap / predicted
    recall = overlap / reference
    return 2 * precision * recall / (precision + recall)


def rouge_n(prediction: Sequence[str], reference: Sequence[str], n: int) -> float:
    """ROUGE-N F-measure of two token lists: clipped n-gram overlap, precision and recall.

    Args:
        prediction: Predicted tokens.
        reference: Reference tokens.
        n: N-gram order (1 or 2 for ROUGE-1 / ROUGE-2).

    Returns:
        F-measure in [0, 1]; 0 when either side has no n-gram.
    """
    predicted = Counter(tuple(prediction[i : i + n]) for i in range(len(prediction) - n + 1))
    wanted = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
    overlap = sum((predicted & wanted).values())  # each n-gram counted at most as often as on both sides
    return _f_measure(overlap, sum(predicted.values()), sum(wanted.values()))


def rouge_l(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F-measure: longest common subsequence over the lengths of both token lists.

    Args:
        prediction: Predicted tokens.
        reference: Reference tokens.

    Returns:
        F-measure in [0, 1]; 0 when either side is empty.
    """
    if not prediction or not reference:
        return 0.0
    # Dynamic programme over one row at a time: previous[j] = LCS of the prefix so far and reference[:j].
    previous = [0] * (len(reference) + 1)
    for token in prediction:
        current = [0]
        for j, other in enumerate(reference, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return _f_measure(previous[-1], len(prediction), len(reference))


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures over pairs of texts.

    Args:
        predictions: Generated texts.
        references: Reference texts, same length.

    Returns:
        ``{"rouge1": ..., "rouge2": ..., "rougeL": ...}``, fractions in [0, 1].

    Raises:
        ValueError: If the lengths differ or there is nothing to score.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    if not predictions:
        raise ValueError("No predictions to score.")
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references, strict=True):
        predicted, wanted = rouge_tokens(prediction), rouge_tokens(reference)
        totals["rouge1"] += rouge_n(predicted, wanted, 1)
        totals["rouge2"] += rouge_n(predicted, wanted, 2)
        totals["rougeL"] += rouge_l(predicted, wanted)
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
            ``rouge1``, ``rouge2``, ``rougeL`` and ``gen_len`` (mean number of predicted tokens).
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


def load_seq2seq(
    tokenizer: Any,
    *,
    train_file: str | os.PathLike[str] | None = None,
    eval_file: str | os.PathLike[str] | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    max_length: int = 128,
    text_columns: Sequence[str] | None = None,
    seed: int = 0,
    eval_fraction: float = 0.2,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    max_target_length: int | None = None,
    source_prefix: str = "",
    model: Any = None,
    pad_to_multiple_of: int | None = None,
) -> TaskData:
    """Load a seq2seq task (see :func:`aptune.tasks.load_task` for the shared options).

    Args:
        tokenizer: The model's tokenizer, with a padding token.
        train_file: .jsonl/.json/.csv/.tsv with source and target columns.
        eval_file: Same; without it, ``eval_fraction`` of the training rows at random.
        dataset_name: A ``datasets`` name (e.g. ``"xsum"``); no built-in seq2seq data exists.
        dataset_config: Its configuration.
        max_length: Source tokens kept.
        text_columns: ``(source, target)`` column names; detected when ``None``.
        seed: Seed of the split and subsets.
        eval_fraction: Share held out when there is no eval file.
        max_train_samples: Keep at most this many training rows.
        max_eval_samples: Keep at most this many evaluation rows.
        max_target_length: Target tokens kept; ``max_length`` when ``None``.
        source_prefix: Text put before every source, e.g. ``"summarize: "`` for T5.
        model: Optional model given to ``DataCollatorForSeq2Seq``, which then adds
            ``decoder_input_ids`` to batches (models such as T5 derive them from labels anyway).
        pad_to_multiple_of: Passed to ``DataCollatorForSeq2Seq``.

    Returns:
        :class:`TaskData` with ``primary_metric="rougeL"`` and a :class:`Seq2SeqMetrics`.

    Raises:
        DataError: Missing/empty/malformed files, missing columns, or empty texts.
        ConfigError: If ``text_columns`` is not a (source, target) pair.
        ModelError: If the tokenizer has no padding token.
    """
    import datasets
    from transformers import DataCollatorForSeq2Seq

    if getattr(tokenizer, "pad_token_id", None) is None:
        raise ModelError(
            "The tokenizer has no padding token; set tokenizer.pad_token before loading seq2seq data."
        )
    target_length = max_target_length or max_length
    sides: dict[str, list[tuple[str, str]] | None] = {"train": None, "eval": None}
    sources: dict[str, str] = {}
    split = "eval file given"
    if dataset_name is not None:
        train_records, eval_records, meta = load_dataset_records(dataset_name, dataset_config)
        name = f"{dataset_name}/{dataset_config or '-'}"
        loaded = {"train": (train_records, meta["train_split"]), "eval": (eval_records, meta["eval_split"])}
        for side, (records, split_name) in loaded.items():
            if records:
                sources[side] = f"{name}[{split_name}]"
                sides[side] = _pairs(records, _columns(records, text_columns, sources[side]), sources[side])
        split = f"data set splits {meta['train_split']!r} / {meta['eval_split']!r}"
    else:
        for side, path in (("train", train_file), ("eval", eval_file)):
            if path is not None:
                records = read_records(path)
                sources[side] = str(path)
                sides[side] = _pairs(records, _columns(records, text_columns, str(path)), str(path))

    train, held = sides["train"], sides["eval"]
    if held is None and train is not None and eval_fraction > 0:
        train_idx, eval_idx = random_split(len(train), eval_fraction, seed)
        if not eval_idx:
            raise DataError(
                f"{sources['train']} has too few rows ({len(train)}) to hold out "
                f"eval_fraction={eval_fraction}. Add rows or pass an eval file."
            )
        held = [train[i] for i in eval_idx]
        train = [train[i] for i in train_idx]
        sources["eval"] = sources["train"]
        split = f"random split of {sources['train']}, eval_fraction={eval_fraction}, seed={seed}"
    elif held is None:
        split = "no evaluation data"

    info: dict[str, Any] = {
        "kind": "seq2seq",
        "split": split,
        "max_length": max_length,
        "max_target_length": target_length,
        "source_prefix": source_prefix,
    }
    built: dict[str, datasets.Dataset | None] = {"train": None, "eval": None}
    for side, pairs, limit in (("train", train, max_train_samples), ("eval", held, max_eval_samples)):
        if pairs is None:
            continue
        pairs = cap_records(pairs, limit, seed)
        encoded = tokenizer(
            [source_prefix + source for source, _ in pairs], max_length=max_length, truncation=True
        )
        targets = tokenizer(
            text_target=[target for _, target in pairs], max_length=target_length, truncation=True
        )
        columns = {name: list(encoded[name]) for name in tokenizer.model_input_names if name in encoded}
        columns["labels"] = list(targets["input_ids"])
        built[side] = datasets.Dataset.from_dict(columns)
        info[f"{side}_source"] = sources[side]
        info[f"num_{side}_examples"] = len(pairs)
        info[f"{side}_targets_at_max_length"] = sum(len(ids) >= target_length for ids in columns["labels"])
    return TaskData(
        kind="seq2seq",
        train=built["train"],
        eval=built["eval"],
        collator=DataCollatorForSeq2Seq(tokenizer, model=model, pad_to_multiple_of=pad_to_multiple_of),
        compute_metrics=Seq2SeqMetrics(tokenizer),
        primary_metric="rougeL",
        greater_is_better=True,
        preprocess_logits_for_metrics=reduce_seq2seq_logits,
        info=info,
    )
