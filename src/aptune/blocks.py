"""Which prunable blocks a model still has, what they cost, and which of them to keep.

`BlockBook` records, per attention site and FFN site, the original indices of the units and
neurons still present, and the original indices of the hidden dimensions. Counts, parameter costs
(the paper's Eq. 6, see `aptune.select`), the density and the layers still alive all follow from
these ids, so the book never reads the model; the controller tells it what the surgery removed.
`BlockBook.select` is the budgeted keep-set over the current blocks (paper section 4.2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from aptune.arch import ModelLayout
from aptune.config import AptConfig
from aptune.scores import cat_cpu
from aptune.select import KeepSet, parameter_count, select_keep_set

__all__ = ["BlockBook", "layer_balanced_scores", "site_median_scores"]


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
        protected: Per attention site, the original ids of the units every selection keeps
            (`protect_units`), or None before any unit was protected.
    """

    def __init__(self, layout: ModelLayout, units: Sequence[int], neurons: Sequence[int]) -> None:
        self.layout = layout
        self.units = [torch.arange(n) for n in units]
        self.neurons = [torch.arange(n) for n in neurons]
        self.hidden = torch.arange(layout.hidden_size)
        self.original = self.structure()
        self.initial_params = self.param_count()
        # parameters per hidden dimension at preparation (AptConfig.hidden_cost="initial")
        self.initial_hidden_cost = self.initial_params / max(self.hidden_size, 1)
        self.protected: list[torch.Tensor] | None = None

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
        self,
        scores: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        density: float,
        config: AptConfig,
        prune_hidden: bool | None = None,
    ) -> KeepSet:
        """Keep-set of the current blocks for ``density`` (of the initial parameter count).

        Sites with a floor (`AttentionSite.min_units`, T5's last cross-attention) keep their best
        units: if the plain selection drops them, it is repeated with the budget reduced by their
        cost and they are added, so the keep-set still fits the budget.

        Args:
            scores: Flat head, neuron and hidden scores (`aptune.scores.ScoreTracker.vectors`).
            density: Target density.
            config: Floors (``min_*``), the multiple of FFN neurons a layer keeps
                (``neuron_multiple``), whether hidden dimensions are pruned and their cost
                (``hidden_cost``).
            prune_hidden: Overrides ``config.prune_hidden`` (False: hidden dimensions stay).

        Returns:
            The `aptune.select.KeepSet` over the current blocks.
        """
        head_scores, neuron_scores, hidden_scores = scores
        prune_hidden = config.prune_hidden if prune_hidden is None else prune_hidden
        hidden_cost = self.initial_hidden_cost if config.hidden_cost == "initial" else None
        head_costs, neuron_costs = self.costs()
        hidden_size = self.hidden_size
        if config.selection_scale == "layer":
            head_scores, neuron_scores = layer_balanced_scores(
                head_scores, neuron_scores, head_costs, neuron_costs, *self.layer_ids()
            )
        elif config.selection_scale == "site":
            head_scores = site_median_scores(head_scores, self.unit_counts())
            neuron_scores = site_median_scores(neuron_scores, self.neuron_counts())
        head_groups = cat_cpu([torch.full((n,), i) for i, n in enumerate(self.unit_counts())])
        neuron_groups = cat_cpu([torch.full((n,), i) for i, n in enumerate(self.neuron_counts())])

        def run(budget: float) -> KeepSet:
            return select_keep_set(
                head_scores,
                neuron_scores,
                hidden_scores if prune_hidden else None,
                head_costs,
                neuron_costs,
                max(budget, 0.0),
                head_groups=head_groups.long(),
                neuron_groups=neuron_groups.long(),
                min_heads_per_group=config.min_heads_per_layer,
                min_neurons_per_group=self.neuron_floor(config),
                min_hidden=min(config.min_hidden, hidden_size),
                prune_hidden=prune_hidden,
                num_hidden=hidden_size,
                layout=config.layout,
                hidden_unit_cost=hidden_cost,
                required_heads=self.protected_mask(),
                neuron_multiple=config.neuron_multiple,
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

    def neuron_floor(self, config: AptConfig) -> int:
        """FFN neurons every layer keeps: the larger of ``min_neurons_per_layer`` and
        ``min_neurons_share`` of the narrowest FFN site's width at preparation (rounded up)."""
        widths = self.original["neurons"]
        share_floor = math.ceil(config.min_neurons_share * min(widths)) if widths else 0
        return max(config.min_neurons_per_layer, share_floor)

    def layer_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer id of every unit and every neuron now present (flat, as in `costs`).

        A layer id numbers ``(stack, layer)`` pairs; a T5 cross-attention belongs to its decoder
        layer.
        """
        keys: dict[tuple[str, int], int] = {}

        def layer_id(site) -> int:
            stack = "decoder" if site.stack == "cross" else site.stack
            return keys.setdefault((stack, site.layer), len(keys))

        heads = [
            torch.full((n,), layer_id(s), dtype=torch.long)
            for n, s in zip(self.unit_counts(), self.layout.attention, strict=True)
        ]
        neurons = [
            torch.full((n,), layer_id(s), dtype=torch.long)
            for n, s in zip(self.neuron_counts(), self.layout.ffn, strict=True)
        ]
        empty = torch.zeros(0, dtype=torch.long)
        return (torch.cat(heads) if heads else empty), (torch.cat(neurons) if neurons else empty)

    def protect_units(self, protected: Sequence[torch.Tensor]) -> None:
        """Make every later selection keep the flagged units, whatever the budget and scores say.

        Args:
            protected: Per attention site, a bool mask over the units now present.
        """
        if len(protected) != len(self.units):
            raise ValueError(f"expected {len(self.units)} attention sites, got {len(protected)}")
        self.protected = [ids[mask.cpu().bool()] for ids, mask in zip(self.units, protected, strict=True)]

    def protected_mask(self) -> torch.Tensor | None:
        """Flat bool mask over the units now present: those `protect_units` flagged (None: none)."""
        if self.protected is None:
            return None
        return cat_cpu(
            [torch.isin(ids, kept) for ids, kept in zip(self.units, self.protected, strict=True)]
        ).bool()

    def _floor_units(self, kept: torch.Tensor, head_scores: torch.Tensor) -> torch.Tensor:
        # Units the selection must add, as a mask over all units: the best-scored ones that sites
        # with a floor would lose, and every protected unit it dropped.
        forced = torch.zeros(kept.numel(), dtype=torch.bool)
        start = 0
        for index, (units, site) in enumerate(zip(self.unit_counts(), self.layout.attention, strict=True)):
            need = min(site.min_units, units)
            if need and int(kept[start : start + units].sum()) < need:
                best = torch.argsort(head_scores[start : start + units].float().cpu(), descending=True)[:need]
                forced[start + best] = True
            if self.protected is not None:
                forced[start : start + units] |= torch.isin(self.units[index], self.protected[index])
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
            "initial_hidden_cost": self.initial_hidden_cost,
            **(
                {"protected": {str(i): ids for i, ids in enumerate(self.protected)}} if self.protected else {}
            ),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned (the model must already have these shapes)."""
        self.units = [state["units"][str(i)].long().clone() for i in range(len(self.units))]
        self.neurons = [state["neurons"][str(i)].long().clone() for i in range(len(self.neurons))]
        self.hidden = state["hidden"].long().clone()
        self.initial_params = float(state["initial_params"])
        self.initial_hidden_cost = float(state.get("initial_hidden_cost", self.initial_hidden_cost))
        protected = state.get("protected")
        self.protected = None
        if protected is not None:
            self.protected = [protected[str(i)].long().clone() for i in range(len(self.units))]


def layer_balanced_scores(
    head_scores: torch.Tensor,
    neuron_scores: torch.Tensor,
    head_costs: torch.Tensor,
    neuron_costs: torch.Tensor,
    head_layers: torch.Tensor,
    neuron_layers: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale unit and neuron scores so that every layer has the same salience per parameter.

    The scores of layer ``l`` (its units and neurons together, so that the method's comparison of
    heads against neurons inside a layer is untouched) are multiplied by ``m / m_l``, where ``m_l``
    is the layer's total score over its total cost and ``m`` the same ratio over all layers. The
    global ranking then compares how important a block is *within its layer*, and the widths of
    the layers follow from how concentrated each layer's salience is, not from how the scale of
    the scores changes with depth. The overall scale, and so the competition with hidden
    dimensions, is kept. A layer whose scores are all 0 is left as it is. (On SmolLM2 at density
    0.7 this selected worse than the global ranking: benchmarks/results/smollm2-selection.md.)

    Args:
        head_scores: Score of every attention unit, 1-D.
        neuron_scores: Score of every FFN neuron, 1-D.
        head_costs: Width ``a_u`` of every unit (the per-parameter denominator).
        neuron_costs: Width ``c_n`` of every neuron.
        head_layers: Layer id (int) of every unit.
        neuron_layers: Layer id of every neuron.

    Returns:
        ``(head_scores, neuron_scores)`` rescaled, float32 on the CPU.

    Example:
        >>> layer_balanced_scores(torch.tensor([4.0]), torch.tensor([1.0, 3.0, 10.0, 30.0]),
        ...     torch.tensor([2.0]), torch.tensor([1.0, 1.0, 1.0, 1.0]),
        ...     torch.tensor([0]), torch.tensor([0, 0, 1, 1]))
        (tensor([16.]), tensor([ 4., 12.,  4., 12.]))
    """
    scores = torch.cat([head_scores.detach().double().cpu(), neuron_scores.detach().double().cpu()])
    costs = torch.cat([head_costs.double().cpu(), neuron_costs.double().cpu()])
    layers = torch.cat([head_layers.long().cpu(), neuron_layers.long().cpu()])
    if scores.numel() == 0:
        return head_scores.float().cpu(), neuron_scores.float().cpu()
    count = int(layers.max()) + 1
    score_sum = torch.zeros(count, dtype=torch.float64).index_add_(0, layers, scores)
    cost_sum = torch.zeros(count, dtype=torch.float64).index_add_(0, layers, costs)
    overall = float(scores.sum() / costs.sum())
    per_layer = score_sum / cost_sum.clamp_min(1e-30)
    factor = torch.where(per_layer > 0, overall / per_layer.clamp_min(1e-300), torch.ones_like(per_layer))
    balanced = (scores * factor[layers]).float()
    return balanced[: head_scores.numel()], balanced[head_scores.numel() :]


def site_median_scores(scores: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Rescale every site's scores so that its median equals the median over all sites.

    Args:
        scores: Flat scores of one block kind (units or neurons), site after site.
        counts: Blocks per site, in the same order.

    Returns:
        The rescaled scores, float32 on the CPU; a site whose median is 0 is left as it is.

    Example:
        >>> site_median_scores(torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0]), [3, 3])
        tensor([3.2500, 6.5000, 9.7500, 3.2500, 6.5000, 9.7500])
    """
    flat = scores.detach().double().cpu()
    if flat.numel() == 0:
        return flat.float()
    overall = float(flat.quantile(0.5))
    parts = []
    for part in torch.split(flat, list(counts)):
        median = float(part.quantile(0.5)) if part.numel() else 0.0
        parts.append(part * (overall / median) if median > 0 else part)
    return torch.cat(parts).float()


def _split(flat: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(flat, sizes)) if sizes else []
