"""A causal LM's loss on a text split by kind of token: line breaks, line starts, the rest.

Verse and drama break lines mid-sentence and start speeches with a speaker's name; a model tuned on
news prose can lose exactly those tokens while keeping the words. `kind_losses` splits the summed
loss (as the suite's chunked evaluation computes it) by the kind of each target token, so a
held-out perplexity can be read as "where the loss went" (``benchmarks/heldout_tokens.py``).
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from aptune.losses import chunked_lm_eval

__all__ = ["KINDS", "kind_losses", "kind_perplexities", "newline_token_ids", "token_kinds"]

#: The kinds of target token, in index order.
KINDS = ("line break", "line start", "other")


def token_kinds(ids: torch.Tensor, newline_ids: set[int]) -> torch.Tensor:
    """The kind (index into `KINDS`) of every target ``ids[:, t + 1]``, laid out as the losses are.

    Args:
        ids: Input ids, shape ``(batch, seq)``.
        newline_ids: Ids of tokens whose text holds a newline.

    Returns:
        ``(batch, seq)`` long tensor; position ``t`` is the kind of token ``t + 1`` (the last
        position is ``other`` and carries no loss).
    """
    is_break = torch.isin(ids, torch.tensor(sorted(newline_ids), dtype=ids.dtype, device=ids.device))
    kinds = torch.full_like(ids, KINDS.index("other"))
    # target t + 1 is a line start when token t is a line break
    kinds[:, :-1][is_break[:, :-1]] = KINDS.index("line start")
    kinds[:, :-1][is_break[:, 1:]] = KINDS.index("line break")
    return kinds


def newline_token_ids(tokenizer) -> set[int]:
    """Ids of the tokens whose text holds a newline."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return {i for i, token in enumerate(tokens) if "\n" in tokenizer.convert_tokens_to_string([token])}


@torch.no_grad()
def kind_losses(model, dataset, collator, newline_ids: set[int], chunk: int, batch_size: int) -> dict:
    """Summed loss and token count per kind (and ``all``) of ``model`` on ``dataset``."""
    sums = {kind: [0.0, 0] for kind in (*KINDS, "all")}
    device = next(model.parameters()).device
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collator, shuffle=False):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        _, nll = chunked_lm_eval(model, batch, chunk)  # (batch, seq): loss of predicting token t + 1
        counted = torch.zeros_like(nll, dtype=torch.bool)
        counted[:, :-1] = batch["labels"][:, 1:] != -100
        kinds = token_kinds(batch["input_ids"], newline_ids)
        for index, kind in enumerate(KINDS):
            chosen = counted & (kinds == index)
            sums[kind][0] += float(nll[chosen].double().sum())
            sums[kind][1] += int(chosen.sum())
        sums["all"][0] += float(nll[counted].double().sum())
        sums["all"][1] += int(counted.sum())
    return {kind: {"loss_sum": s, "tokens": n} for kind, (s, n) in sums.items()}


def kind_perplexities(sums: dict) -> dict:
    """``{kind: {"tokens": n, "perplexity": p}}`` from `kind_losses` (``perplexity`` None for a kind
    with no tokens)."""
    return {
        kind: {
            "tokens": entry["tokens"],
            "perplexity": math.exp(entry["loss_sum"] / entry["tokens"]) if entry["tokens"] else None,
        }
        for kind, entry in sums.items()
    }
