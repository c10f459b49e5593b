"""The pruning step of the second LoRA+Prune baseline, from the Torch-Pruning library.

Torch-Pruning (``pip install torch-pruning``) builds the dependency graph of the model, so that a head
(query, key and value rows with the output-projection columns that read them) and an FFN neuron (the
up-projection row with the down-projection column) are each one coupled *group*, and scores every
channel of a group with its first-order Taylor importance (``GroupTaylorImportance``: ``|w * dL/dw|``
over all coupled parameters, from the gradients of a calibration pass). As in Torch-Pruning's global
pruning, each group's scores are divided by the group's mean (``normalizer="mean"``), so that scores of
different layers compare. A head's score is the mean over its channels. Blocks are then kept in
descending score order while the parameter budget allows (heads and neurons compete for one budget;
no hidden dimension is pruned). Removing the blocks is left to the caller.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from aptune.arch.base import ModelLayout
from aptune.bench.kwon import block_costs

__all__ = ["taylor_keep_sets", "taylor_scores"]


def _batch_to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def taylor_scores(
    model: nn.Module,
    layout: ModelLayout,
    batches: list[dict],
    *,
    normalizer: str | None = "mean",
    group_reduction: str = "mean",
    heads: bool = True,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Torch-Pruning's group Taylor importance of every head and FFN neuron, mean-normalised per group.

    Args:
        model: A model that returns ``loss`` (and ``logits``) for the batches.
        layout: Its `ModelLayout` (which Linear roots each group).
        batches: Calibration batches with labels; gradients are accumulated over all of them and
            cleared afterwards.
        normalizer: ``GroupTaylorImportance``'s per-group normaliser (``"mean"``: the global
            ranking's; ``None``: raw scores, as LLM-Pruner's layer-wise pruning uses them).
        group_reduction: How the coupled layers' scores of a channel combine (``"mean"``,
            Torch-Pruning's default; ``"sum"``, LLM-Pruner's).
        heads: Score the heads too (``False``: an empty head list, for recipes that keep every head).

    Returns:
        ``(heads, neurons)``: per attention site a score per unit, per FFN site a score per neuron.
    """
    import torch_pruning as tp

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the same calibration pass as the other pruning methods
    example = {k: v for k, v in _batch_to(batches[0], device).items() if k != "labels"}
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=example, output_transform=lambda out: out.logits
    )
    model.zero_grad(set_to_none=True)
    for batch in batches:
        model(**_batch_to(batch, device)).loss.backward()
    importance = tp.importance.GroupTaylorImportance(group_reduction=group_reduction, normalizer=normalizer)
    head_scores: list[torch.Tensor] = []
    neurons = []
    try:
        for site in layout.attention if heads else []:
            root = model.get_submodule(site.q)
            width = root.weight.shape[0]
            group = graph.get_pruning_group(root, tp.prune_linear_out_channels, idxs=list(range(width)))
            scores = importance(group).detach().float().cpu()
            head_scores.append(
                scores.reshape(-1, site.unit_width).mean(1)
            )  # (units * width) -> (units, width)
        for site in layout.ffn:
            root = model.get_submodule(site.up)
            width = root.weight.shape[0]
            group = graph.get_pruning_group(root, tp.prune_linear_out_channels, idxs=list(range(width)))
            neurons.append(importance(group).detach().float().cpu())
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return head_scores, neurons


def taylor_keep_sets(
    model: nn.Module, layout: ModelLayout, batches: list[dict], density: float
) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, Any]]:
    """Keep masks of the heads and neurons of highest Taylor importance within ``density`` of their
    parameters.

    Returns:
        ``(keep_heads, keep_neurons, record)`` with per-site bool masks and ``{"budget", "kept_params",
        "total_params", "calibration_examples"}``.
    """
    heads, neurons = taylor_scores(model, layout, batches)
    head_cost, neuron_cost = block_costs(model, layout)
    scores = torch.cat([torch.cat(heads), torch.cat(neurons)])
    costs = torch.cat(
        [
            torch.full((sum(h.numel() for h in heads),), float(head_cost)),
            torch.full((sum(n.numel() for n in neurons),), float(neuron_cost)),
        ]
    )
    total = float(costs.sum())
    budget = density * total
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    spent = 0.0
    for index in torch.argsort(scores, descending=True, stable=True).tolist():
        if spent + costs[index] <= budget:
            keep[index] = True
            spent += float(costs[index])
    n_heads = sum(h.numel() for h in heads)
    keep_heads = list(keep[:n_heads].split([h.numel() for h in heads]))
    keep_neurons = list(keep[n_heads:].split([n.numel() for n in neurons]))
    record = {
        "budget": budget,
        "kept_params": int(spent),
        "total_params": int(total),
        "calibration_examples": sum(int(b["input_ids"].shape[0]) for b in batches),
    }
    return keep_heads, keep_neurons, record
