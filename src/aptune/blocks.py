"""Which prunable blocks a model still has, what they cost, and which of them to keep.

`BlockBook` records, per attention site and FFN site, the original indices of the units and
neurons still present, and the original indices of the hidden dimensions. Counts, parameter costs
(the paper's Eq. 6, see `aptune.select`), the density and the layers still alive all follow from
these ids, so the book never reads the model; the controller tells it what the surgery removed.
`BlockBook.select` is the budgeted keep-set over the current blocks (paper section 4.2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from aptune.arch import ModelLayout
from aptune.config import AptConfig
from aptune.scores import cat_cpu
from aptune.select import KeepSet, parameter_count, select_keep_set

__all__ = ["BlockBook"]


class BlockBook:
    """Original ids, counts and parameter costs of the blocks still present.

    Args:
        layout: The model's layout (its sites give the costs; its ``hidden_size`` the initial width).
        units: Units per attention site at preparation time.
        neurons: Neurons per FFN site at preparation time.

    Attributes:
        units: Per attention site, the original ids of the units still present.
        neurons: Per FFN site, the original ids of the neurons still present.
        hidden: Original ids of the hidden dimensions still present.
        initial_params: Prunable parameters at preparation time (the density denominator ``C_0``).
        original: `structure` at preparation time.
    """

    def __init__(self, layout: ModelLayout, units: Sequence[int], neurons: Sequence[int]) -> None:
        self.layout = layout
        self.units = [torch.arange(n) for n in units]
        self.neurons = [torch.arange(n) for n in neurons]
        self.hidden = torch.arange(layout.hidden_size)
        self.original = self.structure()
        self.initial_params = self.param_count()

    # ------------------------------------------------------------------ counts
    def unit_counts(self) -> list[int]:
        """Units now present per attention site."""
        return [ids.numel() for ids in self.units]

    def neuron_counts(self) -> list[int]:
        """Neurons now present per FFN site."""
        return [ids.numel() for ids in self.neurons]

    @property
    def hidden_size(self) -> int:
        """Hidden dimensions now present."""
        return self.hidden.numel()

    def structure(self) -> dict:
        """Units per attention site, neurons per FFN site and the hidden size, as now present."""
        return {"units": self.unit_counts(), "neurons": self.neuron_counts(), "hidden": self.hidden_size}

    def layer_summary(self) -> dict:
        """Heads (query heads) and FFN neurons kept per layer, and the hidden size."""
        heads = [
            n * site.group_size for n, site in zip(self.unit_counts(), self.layout.attention, strict=True)
        ]
        return {
            "heads_per_layer": heads,
            "ffn_per_layer": self.neuron_counts(),
            "hidden_size": self.hidden_size,
        }

    def alive_layers(self, stack: str | None = None) -> list[bool]:
        """Per layer: keeps at least one attention unit and one FFN neuron (distillation mapping).

        Args:
            stack: Only the layers of this stack (``"encoder"`` or ``"decoder"``, for
                encoder-decoders); None: every site counts, indexed by its layer number.

        Returns:
            One flag per layer of the stack (at least ``layout.num_layers`` flags when ``stack`` is None).
        """
        attention = [
            (n, s)
            for n, s in zip(self.unit_counts(), self.layout.attention, strict=True)
            if s.stack in ("encoder", "decoder")
        ]
        ffn = list(zip(self.neuron_counts(), self.layout.ffn, strict=True))
        if stack is not None:
            attention = [(n, s) for n, s in attention if s.stack == stack]
            ffn = [(n, s) for n, s in ffn if s.stack == stack]
        count = 1 + max((s.layer for _, s in attention + ffn), default=-1)
        alive = [True] * (count if stack is not None else max(count, self.layout.num_layers))
        for n, site in attention + ffn:
            if n == 0:
                alive[site.layer] = False
        return alive

    # ------------------------------------------------------------------ costs
    def costs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters per hidden dimension of every unit and every neuron now present (flat)."""
        heads = [
            torch.full((n,), float(s.cost_per_hidden()))
            for n, s in zip(self.unit_counts(), self.layout.attention, strict=True)
        ]
        neurons = [
            torch.full((n,), float(s.cost_per_hidden()))
            for n, s in zip(self.neuron_counts(), self.layout.ffn, strict=True)
        ]
        return cat_cpu(heads), cat_cpu(neurons)

    def param_count(self) -> float:
        """Prunable backbone parameters now present (the paper's Eq. 6, gated FFNs count 3)."""
        head_costs, neuron_costs = self.costs()
        return float(parameter_count(head_costs, neuron_costs, self.hidden_size))

    def density(self) -> float:
        """Current prunable parameters / initial prunable parameters."""
        return self.param_count() / self.initial_params

    # ------------------------------------------------------------------ selection
    def select(
        self, scores: tuple[torch.Tensor, torch.Tensor, torch.Tensor], density: float, config: AptConfig
    ) -> KeepSet:
        """Keep-set of the current blocks for ``density`` (of the initial parameter count).

        Sites with a floor (`AttentionSite.min_units`, T5's last cross-attention) keep their best
        units: if the plain selection drops them, it is repeated with the budget reduced by their
        cost and they are added, so the keep-set still fits the budget.

        Args:
            scores: Flat head, neuron and hidden scores (`aptune.scores.ScoreTracker.vectors`).
            density: Target density.
            config: Floors (``min_*``) and whether hidden dimensions are pruned.

        Returns:
            The `aptune.select.KeepSet` over the current blocks.
        """
        head_scores, neuron_scores, hidden_scores = scores
        head_costs, neuron_costs = self.costs()
        hidden_size = self.hidden_size
        head_groups = cat_cpu([torch.full((n,), i) for i, n in enumerate(self.unit_counts())])
        neuron_groups = cat_cpu([torch.full((n,), i) for i, n in enumerate(self.neuron_counts())])

        def run(budget: float) -> KeepSet:
            return select_keep_set(
                head_scores,
                neuron_scores,
                hidden_scores if config.prune_hidden else None,
                head_costs,
                neuron_costs,
                max(budget, 0.0),
                head_groups=head_groups.long(),
                neuron_groups=neuron_groups.long(),
                min_heads_per_group=config.min_heads_per_layer,
                min_neurons_per_group=config.min_neurons_per_layer,
                min_hidden=min(config.min_hidden, hidden_size),
                prune_hidden=config.prune_hidden,
                num_hidden=hidden_size,
            )

        budget = density * self.initial_params
        keep = run(budget)
        forced = self._floor_units(keep.heads, head_scores)
        if forced.any():
            reserve = float(head_costs[forced].sum()) * hidden_size
            keep = run(budget - reserve)
            keep.heads = keep.heads | self._floor_units(keep.heads, head_scores).to(keep.heads.device)
            keep.params = parameter_count(
                head_costs[keep.heads.cpu()], neuron_costs[keep.neurons.cpu()], int(keep.hidden.sum())
            )
        return keep

    def _floor_units(self, kept: torch.Tensor, head_scores: torch.Tensor) -> torch.Tensor:
        # Units that sites with a floor would lose (their best-scored ones), as a mask over all units.
        forced = torch.zeros(kept.numel(), dtype=torch.bool)
        start = 0
        for units, site in zip(self.unit_counts(), self.layout.attention, strict=True):
            need = min(site.min_units, units)
            if need and int(kept[start : start + units].sum()) < need:
                best = torch.argsort(head_scores[start : start + units].float().cpu(), descending=True)[:need]
                forced[start + best] = True
                forced[start : start + units] &= ~kept[start : start + units].cpu()
            start += units
        return forced

    def split(self, keep: KeepSet) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """A flat keep-set's unit and neuron flags, split per attention and FFN site."""
        return _split(keep.heads, self.unit_counts()), _split(keep.neurons, self.neuron_counts())

    # ------------------------------------------------------------------ surgery and state
    def keep_(self, kind: str, site: int | None, keep: torch.Tensor) -> None:
        """Record that only the blocks at positions ``keep`` remain.

        Args:
            kind: ``"heads"``, ``"neurons"`` or ``"hidden"``.
            site: Index of the attention or FFN site (None for hidden dimensions).
            keep: Positions (among the current blocks) that stay.
        """
        if kind == "hidden":
            self.hidden = self.hidden[keep]
        else:
            ids = self.units if kind == "heads" else self.neurons
            ids[site] = ids[site][keep]

    def kept_ids(self) -> list[torch.Tensor]:
        """Every id list (units per site, neurons per site, hidden), for cross-rank checks."""
        return [*self.units, *self.neurons, self.hidden]

    def state_dict(self) -> dict[str, Any]:
        """Kept ids (per-site tensors keyed by site index) and ``initial_params``."""
        return {
            "units": {str(i): ids for i, ids in enumerate(self.units)},
            "neurons": {str(i): ids for i, ids in enumerate(self.neurons)},
            "hidden": self.hidden,
            "initial_params": self.initial_params,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned (the model must already have these shapes)."""
        self.units = [state["units"][str(i)].long().clone() for i in range(len(self.units))]
        self.neurons = [state["neurons"][str(i)].long().clone() for i in range(len(self.neurons))]
        self.hidden = state["hidden"].long().clone()
        self.initial_params = float(state["initial_params"])


def _split(flat: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(flat, sizes)) if sizes else []
