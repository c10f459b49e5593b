"""Independent structured pruning of a pretrained decoder at a parameter budget (the decoder baselines).

Two recipes from the field, both scoring FFN neurons with Torch-Pruning's group first-order Taylor
importance (``|w * dL/dw|`` over the coupled up, gate and down weights of a neuron, from the
gradients of a calibration pass; `aptune.bench.tp_pruning.taylor_scores`) and keeping every
attention head:

* `llm_pruner_keep`: LLM-Pruner's layer recipe (Ma et al. 2023, ``hf_prune.py``): the first
  ``first_layers`` (4) and the last ``last_layers`` (1) decoder layers are left untouched, every other
  layer keeps the same FFN width, its best-scored neurons (Taylor ``param_first``: summed over the
  coupled weights, no normalisation).
* `tp_uniform_keep`: Torch-Pruning's LLM path (``examples/LLMs/prune_llm.py``: local, uniform
  pruning, GQA-aware): the same FFN width in every layer, Taylor importance with Torch-Pruning's
  default reduction. Heads are kept: pruning heads uniformly as well (3 KV groups per layer in
  SmolLM2) cost far more perplexity at the same budget.

The width is the largest one whose stack (attention and FFN weights of the decoder layers) fits
``density`` of the dense stack (`uniform_width`), so the kept parameters lie at most one neuron per
pruned layer below the budget. The selection never uses aptune's salience or selection code; the
blocks are then removed with `aptune.surgery` (rows and columns, the same result as the library's
own pruner).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aptune.arch.base import ModelLayout
from aptune.bench.kwon import block_costs
from aptune.config import ADAPTER_ROLES
from aptune.errors import ConfigError

__all__ = [
    "ROLES",
    "UniformPlan",
    "apply_keep_",
    "llm_pruner_keep",
    "stack_params",
    "tp_uniform_keep",
    "uniform_ffn_masks",
    "uniform_width",
]

#: Every Linear role of a decoder layer (the prunable stack, and peft LoRA's targets).
ROLES: tuple[str, ...] = ADAPTER_ROLES


def stack_params(model: nn.Module, layout: ModelLayout) -> int:
    """Parameters of the attention and FFN Linear layers of every layer (weights and biases).

    This is the stack that pruning shrinks; embeddings, norms and the output head are not in it.
    """
    total = 0
    for role in ROLES:
        for path in layout.role_paths(role):
            total += sum(p.numel() for p in model.get_submodule(path).parameters())
    return total


@dataclass
class UniformPlan:
    """One FFN width for the pruned layers, all heads and the protected layers' FFN kept.

    Attributes:
        width: FFN neurons every pruned layer keeps.
        pruned_layers: Indices of the layers whose FFN is cut to ``width``.
        budget: ``density`` x the dense stack's parameters.
        kept_params: Stack parameters after pruning (<= ``budget``).
        total_params: The dense stack's parameters.
        step_params: Parameters of one more neuron in every pruned layer (the plan's granularity:
            ``budget - kept_params < step_params``).
    """

    width: int
    pruned_layers: list[int]
    budget: float
    kept_params: int
    total_params: int
    step_params: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dict(vars(self))


def uniform_width(
    unit_counts: list[int],
    neuron_counts: list[int],
    head_cost: int,
    neuron_cost: int,
    density: float,
    protected: set[int],
) -> UniformPlan:
    """The largest common FFN width of the unprotected layers within ``density`` of the stack.

    Args:
        unit_counts: Attention units (KV groups) per layer, all kept.
        neuron_counts: FFN neurons per layer.
        head_cost: Parameters of one unit; neuron_cost: of one neuron.
        density: Kept share of the stack's parameters, in (0, 1].
        protected: Layers whose FFN stays whole.

    Returns:
        The `UniformPlan`.

    Raises:
        ConfigError: the budget cannot be met with the heads and the protected layers kept.
    """
    layers = len(neuron_counts)
    pruned = [i for i in range(layers) if i not in protected]
    total = sum(unit_counts) * head_cost + sum(neuron_counts) * neuron_cost
    budget = density * total
    fixed = sum(unit_counts) * head_cost + sum(neuron_counts[i] for i in protected) * neuron_cost
    step = neuron_cost * len(pruned)
    if not pruned or budget < fixed:
        raise ConfigError(
            f"density {density} cannot be reached keeping every head and the FFN of layers "
            f"{sorted(protected)} of {layers}: raise the target density or protect fewer layers"
        )
    width = min(int((budget - fixed) // step), *(neuron_counts[i] for i in pruned))
    kept = fixed + width * step
    return UniformPlan(width, pruned, budget, int(kept), int(total), int(step))


def uniform_ffn_masks(
    neuron_scores: list[torch.Tensor], unit_counts: list[int], width: int, pruned: list[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keep masks: every unit; the ``width`` best-scored neurons in the pruned layers, all elsewhere."""
    keep_heads = [torch.ones(n, dtype=torch.bool) for n in unit_counts]
    keep_neurons = []
    for i, scores in enumerate(neuron_scores):
        keep = torch.ones(scores.numel(), dtype=torch.bool)
        if i in pruned:
            keep[:] = False
            keep[torch.argsort(scores, descending=True, stable=True)[:width]] = True
        keep_neurons.append(keep)
    return keep_heads, keep_neurons


def _counts(model: nn.Module, layout: ModelLayout) -> tuple[list[int], list[int]]:
    # (units * unit_width, hidden) query rows -> units
    units = [int(model.get_submodule(site.q).weight.shape[0]) // site.unit_width for site in layout.attention]
    neurons = [int(model.get_submodule(site.up).weight.shape[0]) for site in layout.ffn]
    return units, neurons


def _keep(
    model: nn.Module,
    layout: ModelLayout,
    batches: list[dict],
    density: float,
    protected: set[int],
    **importance: Any,
) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, Any]]:
    from aptune.bench.tp_pruning import taylor_scores

    units, neurons = _counts(model, layout)
    head_cost, neuron_cost = block_costs(model, layout)
    plan = uniform_width(units, neurons, head_cost, neuron_cost, density, protected)
    _, neuron_scores = taylor_scores(model, layout, batches, heads=False, **importance)
    keep_heads, keep_neurons = uniform_ffn_masks(neuron_scores, units, plan.width, plan.pruned_layers)
    record = {
        **plan.to_dict(),
        "importance": {"kind": "torch-pruning GroupTaylorImportance", **importance},
        "calibration_examples": sum(int(b["input_ids"].shape[0]) for b in batches),
    }
    return keep_heads, keep_neurons, record


def llm_pruner_keep(
    model: nn.Module,
    layout: ModelLayout,
    batches: list[dict],
    density: float,
    *,
    first_layers: int = 4,
    last_layers: int = 1,
) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, Any]]:
    """LLM-Pruner's layer recipe: heads kept, the first and last layers whole, one FFN width elsewhere.

    Args:
        model: The dense causal LM (returns ``loss`` for the batches).
        layout: Its `ModelLayout`.
        batches: Calibration batches with labels (the Taylor gradients).
        density: Kept share of the stack's parameters.
        first_layers: Leading layers left untouched (LLM-Pruner: 4).
        last_layers: Trailing layers left untouched (1).

    Returns:
        ``(keep_heads, keep_neurons, record)``: per-site bool masks and the `UniformPlan` fields
        with ``protected_layers`` and the importance settings.

    Raises:
        ConfigError: the budget cannot be met with those layers whole.
    """
    layers = len(layout.ffn)
    protected = set(range(min(first_layers, layers))) | set(range(max(0, layers - last_layers), layers))
    keep_heads, keep_neurons, record = _keep(
        model, layout, batches, density, protected, normalizer=None, group_reduction="sum"
    )
    return keep_heads, keep_neurons, {"recipe": "llm-pruner", "protected_layers": sorted(protected), **record}


def tp_uniform_keep(
    model: nn.Module, layout: ModelLayout, batches: list[dict], density: float
) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, Any]]:
    """Torch-Pruning's uniform (local) LLM pruning of the FFN: the same width in every layer, heads kept.

    Args and returns as `llm_pruner_keep` (no protected layer).
    """
    keep_heads, keep_neurons, record = _keep(model, layout, batches, density, set())
    return keep_heads, keep_neurons, {"recipe": "torch-pruning uniform ffn", "protected_layers": [], **record}


def apply_keep_(
    model: nn.Module, layout: ModelLayout, keep_heads: list[torch.Tensor], keep_neurons: list[torch.Tensor]
) -> None:
    """Remove every unit and neuron whose mask is False (in place, `aptune.surgery`)."""
    from aptune.surgery import prune_neurons_, prune_units_

    with torch.no_grad():
        for i, keep in enumerate(keep_heads):
            if not bool(keep.all()):
                prune_units_(model, layout, i, torch.nonzero(keep).squeeze(1))
        for i, keep in enumerate(keep_neurons):
            if not bool(keep.all()):
                prune_neurons_(model, layout, i, torch.nonzero(keep).squeeze(1))
