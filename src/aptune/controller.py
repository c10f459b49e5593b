"""`AptController`: wires salience, schedule, selection, surgery, rank growth and distillation.

`prepare_` attaches adapters, freezes the backbone, installs masks and hooks, and returns the
controller. In a custom loop call ``controller.step(optimizer)`` once per optimizer step, after
``optimizer.step()`` and before ``optimizer.zero_grad()`` (the adapter importance reads the adapter
gradients). `aptune.AptTrainer` does this from a callback.

What happens at optimizer step ``t`` (1-based, counted by the controller):

1. inside the collection span (``prune_start`` .. ``prune_end``) the per-step salience of every
   attention unit, FFN neuron and hidden dimension (plus the optional kurtosis bonus) is folded into
   an EMA, and so is the importance of every adapter;
2. at the first step of the soft-mask window before an event that lowers the density, a teacher
   snapshot is taken when distillation is on;
3. inside that window the keep-set is re-selected with the current scores and the masks move by
   ``mask_step`` towards it (a block that re-enters the keep-set recovers); two steps before the
   event the masks snap to 0/1;
4. at the event, blocks whose mask is 0 are removed physically (weights, adapters, optimizer state,
   salience EMA), and adapter ranks grow towards the trainable-parameter budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from aptune.adapter import AptLinear, attach_adapter
from aptune.arch import ModelLayout, build_layout
from aptune.config import AptConfig
from aptune.distill import (
    DistillTransform,
    LayerDistillLoss,
    PredictionDistillLoss,
    Teacher,
    sample_teacher_layers,
)
from aptune.distributed import all_reduce_salience_stats_, check_same_on_all_ranks, rebuild_ddp_
from aptune.errors import ConfigError, ModelError
from aptune.host_memory import pin_mmap_threshold, release_freed_memory
from aptune.hub.modeling_aptune import apply_patches_
from aptune.masks import MaskState, install_masks
from aptune.salience import block_kurtosis
from aptune.schedule import Schedule, build_schedule
from aptune.select import KeepSet, parameter_count, select_keep_set
from aptune.surgery import grow_adapter_, prune_hidden_, prune_neurons_, prune_units_

__all__ = ["DISTILL_MODULE_NAME", "AptController", "prepare_"]

DISTILL_MODULE_NAME = "aptune_distill"
_PREDICTION_FIELDS = ("logits", "start_logits", "end_logits")


@dataclass
class _Scores:
    """EMA salience per block, aligned with the current (physically present) blocks."""

    heads: list[torch.Tensor | None]
    neurons: list[torch.Tensor | None]
    hidden: torch.Tensor | None = None
    updates: int = 0


@dataclass
class _Ids:
    """Original indices of the blocks still present (for plans, reports and the teacher)."""

    units: list[torch.Tensor]
    neurons: list[torch.Tensor]
    hidden: torch.Tensor


@dataclass
class LossParts:
    """The terms of the training loss at one step (floats, for logging)."""

    task: float | None = None
    pred: float | None = None
    layer: float | None = None
    mu: float | None = None


class AptController:
    """Owns masks, scores, schedules, the teacher, and the surgery of one model.

    Create it with `prepare_`; do not construct it directly.
    """

    def __init__(self, model: nn.Module, config: AptConfig, layout: ModelLayout) -> None:
        self.model = model
        self.config = config
        self.layout = layout
        self.use_kurtosis = layout.is_decoder if config.use_kurtosis is None else config.use_kurtosis
        self.adapters: dict[str, AptLinear] = {}
        self.state = MaskState(heads=[None] * len(layout.attention), neurons=[None] * len(layout.ffn))
        self.scores = _Scores(heads=[None] * len(layout.attention), neurons=[None] * len(layout.ffn))
        self.ids = _Ids(
            units=[torch.arange(self._num_units(i)) for i in range(len(layout.attention))],
            neurons=[torch.arange(self._num_neurons(i)) for i in range(len(layout.ffn))],
            hidden=torch.arange(layout.hidden_size),
        )
        self.original = self.structure()
        self.adapter_importance: dict[str, float] = {}
        self.schedule: Schedule | None = None
        self.step_count = 0
        self.generator = torch.Generator().manual_seed(config.seed)
        self.teacher: Teacher | None = None
        self.transform: DistillTransform | None = None
        self.events: list[dict] = []
        self.event_listeners: list[Callable[[dict], None]] = []
        self.last_loss_parts = LossParts()
        self.teacher_seconds = 0.0
        self.teacher_peak_bytes = 0
        self._pred_loss = PredictionDistillLoss(config.temperature)
        self._layer_loss = LayerDistillLoss()
        self._pretuned = False

    # ------------------------------------------------------------------ structure
    def _num_units(self, i: int) -> int:
        site = self.layout.attention[i]
        return self.model.get_submodule(site.q).weight.shape[0] // site.unit_width

    def _num_neurons(self, i: int) -> int:
        return self.model.get_submodule(self.layout.ffn[i].up).weight.shape[0]

    def structure(self) -> dict:
        """Units per attention site, neurons per FFN site and the hidden size, as now present."""
        return {
            "units": [self._num_units(i) for i in range(len(self.layout.attention))],
            "neurons": [self._num_neurons(i) for i in range(len(self.layout.ffn))],
            "hidden": self.layout.hidden_size,
        }

    def _costs(self) -> tuple[torch.Tensor, torch.Tensor]:
        head_costs = [
            torch.full((self._num_units(i),), float(s.cost_per_hidden()))
            for i, s in enumerate(self.layout.attention)
        ]
        neuron_costs = [
            torch.full((self._num_neurons(i),), float(s.cost_per_hidden()))
            for i, s in enumerate(self.layout.ffn)
        ]
        return _cat(head_costs), _cat(neuron_costs)

    def param_count(self) -> float:
        """Prunable backbone parameters now present (the paper's Eq. 6, gated FFNs count 3)."""
        head_costs, neuron_costs = self._costs()
        return float(parameter_count(head_costs, neuron_costs, self.layout.hidden_size))

    @property
    def initial_param_count(self) -> float:
        """Prunable backbone parameters at preparation time (the density denominator ``C_0``)."""
        return self._c0

    def density(self) -> float:
        """Current prunable parameters / initial prunable parameters."""
        return self.param_count() / self._c0

    def adapter_parameter_count(self) -> int:
        """Trainable adapter parameters (sum of ``(in + out) * rank``)."""
        return sum(a.adapter_parameters() for a in self.adapters.values())

    def ranks(self) -> dict[str, int]:
        """Current rank of every adapter, keyed by module path."""
        return {path: a.rank for path, a in self.adapters.items()}

    def layer_summary(self) -> dict:
        """Heads (query heads) and FFN neurons kept per layer, and the hidden size."""
        heads, ffn = [], []
        for i, site in enumerate(self.layout.attention):
            heads.append(self._num_units(i) * site.group_size)
        for i in range(len(self.layout.ffn)):
            ffn.append(self._num_neurons(i))
        return {"heads_per_layer": heads, "ffn_per_layer": ffn, "hidden_size": self.layout.hidden_size}

    def alive_layers(self, stack: str | None = None) -> list[bool]:
        """Per layer: keeps at least one attention unit and one FFN neuron (distillation mapping).

        Args:
            stack: Only the layers of this stack (``"encoder"`` or ``"decoder"``, for
                encoder-decoders); None: every site counts, indexed by its layer number.
        """
        attention = [(i, s) for i, s in enumerate(self.layout.attention) if s.stack in ("encoder", "decoder")]
        ffn = list(enumerate(self.layout.ffn))
        if stack is not None:
            attention = [(i, s) for i, s in attention if s.stack == stack]
            ffn = [(i, s) for i, s in ffn if s.stack == stack]
        count = 1 + max((s.layer for _, s in attention + ffn), default=-1)
        alive = [True] * (count if stack is not None else max(count, self.layout.num_layers))
        for i, site in attention:
            if self._num_units(i) == 0:
                alive[site.layer] = False
        for i, site in ffn:
            if self._num_neurons(i) == 0:
                alive[site.layer] = False
        return alive

    # ------------------------------------------------------------------ schedule
    def set_total_steps(self, total_steps: int) -> Schedule:
        """Fix the run length and build the schedule (fractions in the config resolve against it).

        Raises:
            ConfigError: the run is too short for the configured events.
        """
        self.schedule = build_schedule(self.config, total_steps)
        self.state.collector.active = self._collecting(self.step_count + 1)
        return self.schedule

    def _collecting(self, step: int) -> bool:
        s = self.schedule
        if s is None or self.config.target_density >= 1.0 or self._pretuned:
            return False
        return s.start <= step <= s.end

    def _require_schedule(self) -> Schedule:
        if self.schedule is None:
            raise ConfigError(
                "the controller does not know the run length: pass total_steps to aptune.prepare_(...) "
                "or call controller.set_total_steps(n) before the first step"
            )
        return self.schedule

    # ------------------------------------------------------------------ the step
    def step(self, optimizer=None, wrapper=None) -> dict | None:
        """Advance one optimizer step; returns the event record when a pruning event happened.

        Args:
            optimizer: The optimizer whose state must follow surgery and rank growth.
            wrapper: A ``DistributedDataParallel`` wrapper of the model, rebuilt after any shape
                change (see `aptune.distributed`).
        """
        schedule = self._require_schedule()
        self.step_count += 1
        t = self.step_count
        self._shapes_changed = False
        if self.state.collector.active:
            all_reduce_salience_stats_(self.state.collector)
            self._fold_salience()
        self.state.collector.reset()
        self._update_adapter_importance()

        self._optimizer_ref = optimizer
        event_record = None
        k = schedule.window_index(t)
        if k is not None and self._pruning_due(schedule.densities[k]):
            event_step = schedule.events[k]
            if t == event_step - schedule.window and self.config.distill:
                self._snapshot_teacher()
            # masks move inside the window and snap to 0/1 two steps before the event
            hard_at = max(event_step - 2, event_step - schedule.window)
            if t < hard_at:
                self._update_masks(schedule.densities[k], hard=False)
            elif t == hard_at:
                self._update_masks(schedule.densities[k], hard=True)
        e = schedule.event_index(t)
        if e is not None:
            event_record = self._event(e, schedule.densities[e], optimizer)
        if self.teacher is not None and t >= schedule.distill_end:
            self.teacher = None
        self.state.collector.active = self._collecting(t + 1)
        if self._shapes_changed and wrapper is not None:
            rebuild_ddp_(wrapper)
        return event_record

    def _pruning_due(self, density_target: float) -> bool:
        return density_target < 1.0 and density_target * self._c0 < self.param_count() * (1 - 1e-9)

    # ------------------------------------------------------------------ salience
    def _merged_weight(self, path: str) -> torch.Tensor:
        layer = self.model.get_submodule(path)
        if isinstance(layer, AptLinear):
            return (layer.base_layer.weight + layer.get_delta_weight()).detach()
        return layer.weight.detach()

    def _current_salience(self) -> tuple[list, list, torch.Tensor | None]:
        collector = self.state.collector
        heads, neurons = [], []
        hidden = None
        for i, site in enumerate(self.layout.attention):
            channel = collector.channel_salience(("head", i))
            if channel is None:
                heads.append(None)
                continue
            # (units * width,) -> (units, width): a unit's score sums its channels
            score = channel.reshape(-1, site.unit_width).sum(1)
            if self.use_kurtosis:
                stats = collector.stats[("head", i)]
                bonus, hidden_bonus = block_kurtosis(
                    self._merged_weight(site.o), stats.mean_activation(), site.unit_width
                )
                score = score + bonus.to(score.device)
                hidden = _add(hidden, hidden_bonus)
            heads.append(score)
        for i, site in enumerate(self.layout.ffn):
            channel = collector.channel_salience(("neuron", i))
            if channel is None:
                neurons.append(None)
                continue
            score = channel
            if self.use_kurtosis:
                stats = collector.stats[("neuron", i)]
                bonus, hidden_bonus = block_kurtosis(
                    self._merged_weight(site.down), stats.mean_activation(), 1
                )
                score = score + bonus.to(score.device)
                hidden = _add(hidden, hidden_bonus)
            neurons.append(score)
        for key in list(collector.stats):
            if key[0] == "hidden":
                channel = collector.channel_salience(key)
                if channel is not None:
                    hidden = _add(hidden, channel)
        return heads, neurons, hidden

    def _fold_salience(self) -> None:
        beta = self.config.salience_beta
        heads, neurons, hidden = self._current_salience()

        def ema(old, new):
            if new is None:
                return old
            new = new.detach().float().cpu()
            if old is None or old.shape != new.shape:
                return new
            return beta * old + (1 - beta) * new

        self.scores.heads = [ema(o, n) for o, n in zip(self.scores.heads, heads, strict=True)]
        self.scores.neurons = [ema(o, n) for o, n in zip(self.scores.neurons, neurons, strict=True)]
        self.scores.hidden = ema(self.scores.hidden, hidden)
        self.scores.updates += 1

    def _update_adapter_importance(self) -> None:
        # The authors' code: per rank row k, |sum_j A[k, j] * dL/dA[k, j]|, averaged over the rank
        # (size-neutral, so a large adapter is not favoured for being large), EMA'd between events.
        beta = self.config.salience_beta
        for path, adapter in self.adapters.items():
            grad = adapter.lora_A.grad
            if grad is None:
                continue
            value = float((adapter.lora_A.detach() * grad).sum(1).abs().mean())
            old = self.adapter_importance.get(path)
            self.adapter_importance[path] = value if old is None else beta * old + (1 - beta) * value

    # ------------------------------------------------------------------ selection and masks
    def _score_vectors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heads = [
            s if s is not None else torch.zeros(self._num_units(i)) for i, s in enumerate(self.scores.heads)
        ]
        neurons = [
            s if s is not None else torch.zeros(self._num_neurons(i))
            for i, s in enumerate(self.scores.neurons)
        ]
        hidden = (
            self.scores.hidden if self.scores.hidden is not None else torch.zeros(self.layout.hidden_size)
        )
        return _cat(heads), _cat(neurons), hidden

    def select(self, density_target: float) -> KeepSet:
        """Keep-set of the current blocks for ``density_target`` (of the initial parameter count).

        Sites with a floor (`AttentionSite.min_units`, T5's last cross-attention) keep their best
        units: if the plain selection drops them, it is repeated with the budget reduced by their
        cost and they are added, so the keep-set still fits the budget.
        """
        head_scores, neuron_scores, hidden_scores = self._score_vectors()
        head_costs, neuron_costs = self._costs()
        head_groups = _cat([torch.full((self._num_units(i),), i) for i in range(len(self.layout.attention))])
        neuron_groups = _cat([torch.full((self._num_neurons(i),), i) for i in range(len(self.layout.ffn))])

        def run(budget: float) -> KeepSet:
            return select_keep_set(
                head_scores,
                neuron_scores,
                hidden_scores if self.config.prune_hidden else None,
                head_costs,
                neuron_costs,
                max(budget, 0.0),
                head_groups=head_groups.long(),
                neuron_groups=neuron_groups.long(),
                min_heads_per_group=self.config.min_heads_per_layer,
                min_neurons_per_group=self.config.min_neurons_per_layer,
                min_hidden=min(self.config.min_hidden, self.layout.hidden_size),
                prune_hidden=self.config.prune_hidden,
                num_hidden=self.layout.hidden_size,
                layout=self.config.layout,
            )

        budget = density_target * self._c0
        keep = run(budget)
        forced = self._floor_units(keep.heads, head_scores)
        if forced.any():
            reserve = float(head_costs[forced].sum()) * self.layout.hidden_size
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
        for i, site in enumerate(self.layout.attention):
            units = self._num_units(i)
            need = min(site.min_units, units)
            if need and int(kept[start : start + units].sum()) < need:
                best = torch.argsort(head_scores[start : start + units].float().cpu(), descending=True)[:need]
                forced[start + best] = True
                forced[start : start + units] &= ~kept[start : start + units].cpu()
            start += units
        return forced

    def _split(self, flat: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        return list(torch.split(flat, sizes)) if sizes else []

    def _masks_are_hard(self) -> bool:
        masks = [*self.state.heads, *self.state.neurons, self.state.hidden]
        present = [m for m in masks if m is not None]
        return bool(present) and all(bool(((m == 0) | (m == 1)).all()) for m in present)

    def _update_masks(self, density_target: float, hard: bool) -> None:
        keep = self.select(density_target)
        step = self._require_schedule().mask_step
        units = [self._num_units(i) for i in range(len(self.layout.attention))]
        neurons = [self._num_neurons(i) for i in range(len(self.layout.ffn))]

        def move(mask: torch.Tensor | None, kept: torch.Tensor) -> torch.Tensor:
            kept = kept.float()
            if hard:
                return kept
            mask = torch.ones_like(kept) if mask is None else mask.float().cpu()
            return torch.where(kept > 0, (mask + step).clamp(max=1.0), (mask - step).clamp(min=0.0))

        device = self._device()
        self.state.heads = [
            move(m, k).to(device)
            for m, k in zip(self.state.heads, self._split(keep.heads, units), strict=True)
        ]
        self.state.neurons = [
            move(m, k).to(device)
            for m, k in zip(self.state.neurons, self._split(keep.neurons, neurons), strict=True)
        ]
        if self.config.prune_hidden:
            self.state.hidden = move(self.state.hidden, keep.hidden).to(device)

    def set_hard_masks(self, keep: KeepSet) -> None:
        """Set 0/1 masks from a keep-set (used by tests and one-shot pruning)."""
        units = [self._num_units(i) for i in range(len(self.layout.attention))]
        neurons = [self._num_neurons(i) for i in range(len(self.layout.ffn))]
        device = self._device()
        self.state.heads = [k.float().to(device) for k in self._split(keep.heads, units)]
        self.state.neurons = [k.float().to(device) for k in self._split(keep.neurons, neurons)]
        self.state.hidden = keep.hidden.float().to(device) if self.config.prune_hidden else None

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ surgery
    @torch.no_grad()
    def prune_to_masks_(self, optimizer=None) -> dict:
        """Physically remove every block whose mask is 0; masks become all-ones (``None``).

        Returns:
            Counts of removed units, neurons and hidden dimensions.
        """
        removed = {"heads": 0, "neurons": 0, "hidden": 0}
        for i, mask in enumerate(self.state.heads):
            if mask is None:
                continue
            keep = torch.nonzero(mask.cpu() > 0.5).squeeze(1)
            if keep.numel() < mask.numel():
                removed["heads"] += (mask.numel() - keep.numel()) * self.layout.attention[i].group_size
                prune_units_(self.model, self.layout, i, keep, optimizer)
                self.ids.units[i] = self.ids.units[i][keep]
                if self.scores.heads[i] is not None:
                    self.scores.heads[i] = self.scores.heads[i][keep]
        for i, mask in enumerate(self.state.neurons):
            if mask is None:
                continue
            keep = torch.nonzero(mask.cpu() > 0.5).squeeze(1)
            if keep.numel() < mask.numel():
                removed["neurons"] += mask.numel() - keep.numel()
                prune_neurons_(self.model, self.layout, i, keep, optimizer)
                self.ids.neurons[i] = self.ids.neurons[i][keep]
                if self.scores.neurons[i] is not None:
                    self.scores.neurons[i] = self.scores.neurons[i][keep]
        mask = self.state.hidden
        if mask is not None:
            keep = torch.nonzero(mask.cpu() > 0.5).squeeze(1)
            if keep.numel() < mask.numel():
                removed["hidden"] = mask.numel() - keep.numel()
                extra = [self.transform] if self.transform is not None else []
                prune_hidden_(self.model, self.layout, keep, optimizer, extra_readers=extra)
                self.ids.hidden = self.ids.hidden[keep]
                if self.scores.hidden is not None:
                    self.scores.hidden = self.scores.hidden[keep]
        self.state.heads = [None] * len(self.layout.attention)
        self.state.neurons = [None] * len(self.layout.ffn)
        self.state.hidden = None
        self.state.collector.reset()
        self._shapes_changed = self._shapes_changed or any(removed.values())
        if any(removed.values()):
            if self._device().type == "cpu":
                # from now on activation sizes change at every event: see aptune.host_memory
                pin_mmap_threshold()
            release_freed_memory(self.model)
        return removed

    def grow_ranks_(self, budget: float, optimizer=None) -> dict[str, tuple[int, int]]:
        """Grow adapter ranks so that the adapters hold about ``budget`` trainable parameters.

        ``salience``: the top half of the adapters by importance (those below ``max_rank``) grow by
        one common factor that spends the whole increment (the authors' rule); ``uniform``: every
        adapter grows by the same factor; ``static``: nothing changes.

        Returns:
            ``{path: (old_rank, new_rank)}`` of the adapters that grew.
        """
        mode = self.config.rank_allocation
        current = self.adapter_parameter_count()
        if mode == "static" or current >= budget or not self.adapters:
            return {}
        max_rank = self.config.max_rank
        if mode == "uniform":
            chosen = [p for p, a in self.adapters.items() if a.rank < max_rank]
            factor = budget / current
        else:
            candidates = [p for p, a in self.adapters.items() if a.rank < max_rank]
            candidates.sort(key=lambda p: self.adapter_importance.get(p, 0.0), reverse=True)
            chosen = candidates[: max(1, len(self.adapters) // 2)]
            chosen_params = sum(self.adapters[p].adapter_parameters() for p in chosen)
            factor = 1.0 + (budget - current) / max(chosen_params, 1)
        grown = {}
        for path in chosen:
            adapter = self.adapters[path]
            new_rank = min(max_rank, math.floor(adapter.rank * factor))
            if new_rank > adapter.rank:
                grown[path] = grow_adapter_(adapter, new_rank, optimizer, self.generator)
        self._shapes_changed = self._shapes_changed or bool(grown)
        return grown

    def _event(self, index: int, density_target: float, optimizer) -> dict:
        schedule = self._require_schedule()
        params_before = self.param_count()
        removed = {"heads": 0, "neurons": 0, "hidden": 0}
        if self._pruning_due(density_target):
            if not self._masks_are_hard():
                self.set_hard_masks(self.select(density_target))
            removed = self.prune_to_masks_(optimizer)
        if self.teacher is not None:
            # the student just shrank; the teacher keeps the old tensors alive: that is its memory cost
            self.teacher_peak_bytes = max(self.teacher_peak_bytes, self.teacher.extra_bytes(self.model))
        budget = schedule.budgets[index] * self._n0
        grown = self.grow_ranks_(budget, optimizer)
        self.adapter_importance.clear()
        return self._record_event(
            index=index,
            target_density=density_target,
            params_before=params_before,
            removed=removed,
            grown={p: list(r) for p, r in grown.items()},
        )

    def _record_event(self, **fields) -> dict:
        """Complete an event record with the current structure, store it and tell the listeners."""
        record = {
            "step": self.step_count,
            **fields,
            "density": self.density(),
            "params": self.param_count(),
            "ranks": self.ranks(),
            "trainable_params": self.trainable_parameter_count(),
            "adapter_params": self.adapter_parameter_count(),
            "scores": self._score_snapshot(),
            **self.layer_summary(),
        }
        # every rank must have made the same decision (all-reduced scores make it so)
        record["keep_checksum"] = check_same_on_all_ranks(
            [*self.ids.units, *self.ids.neurons, self.ids.hidden], "the kept blocks"
        )
        self.events.append(record)
        for listener in self.event_listeners:
            listener(record)
        return record

    def _score_snapshot(self) -> dict[str, list[float]]:
        heads, neurons, hidden = self._score_vectors()
        return {"heads": heads.tolist(), "neurons": neurons.tolist(), "hidden": hidden.tolist()}

    def trainable_parameter_count(self) -> int:
        """Parameters with ``requires_grad`` (adapters, task head, distillation transform)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ pre-tuning pruning
    def calibrate_and_prune_(self, batches: Iterable[dict], optimizer=None) -> dict:
        """One-shot pruning to ``target_density`` before tuning (apt-method.md 4.4).

        Runs forward *and* backward on every batch (no optimizer step; gradients are cleared
        afterwards), sums the per-batch salience (plus kurtosis when enabled), selects the keep-set
        once and removes the rest physically. Later events only grow ranks.

        Args:
            batches: Model-input dicts that include labels (the model must return ``loss``).
            optimizer: Optimizer whose state must follow the surgery, if already created.

        Returns:
            The event record of the one-shot pruning.
        """
        self.scores = _Scores(
            heads=[None] * len(self.layout.attention), neurons=[None] * len(self.layout.ffn)
        )
        collector = self.state.collector
        device = self._device()
        was_training = self.model.training
        self.model.train()
        sums: tuple | None = None
        seen = 0
        try:
            for batch in batches:
                collector.reset()
                collector.active = True
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                loss = self.model(**batch).loss
                if loss is None:
                    raise ModelError(
                        "calibration batches must contain labels so that the model returns a loss"
                    )
                loss.backward()
                all_reduce_salience_stats_(collector)
                heads, neurons, hidden = self._current_salience()
                sums = (
                    (heads, neurons, hidden) if sums is None else _add_scores(sums, (heads, neurons, hidden))
                )
                seen += 1
        finally:
            collector.active = False
            collector.reset()
            self.model.zero_grad(set_to_none=True)
            self.model.train(was_training)
        if sums is None:
            raise ModelError("the calibration pass received no batches")
        heads, neurons, hidden = sums
        self.scores.heads = [h.cpu() if h is not None else None for h in heads]
        self.scores.neurons = [n.cpu() if n is not None else None for n in neurons]
        self.scores.hidden = hidden.cpu() if hidden is not None else None
        params_before = self.param_count()
        self.set_hard_masks(self.select(self.config.target_density))
        removed = self.prune_to_masks_(optimizer)
        self._pretuned = True
        return self._record_event(
            index=-1,
            kind="pretune",
            calibration_batches=seen,
            target_density=self.config.target_density,
            params_before=params_before,
            removed=removed,
            grown={},
        )

    # ------------------------------------------------------------------ distillation
    @property
    def distilling(self) -> bool:
        """Whether the current step mixes self-distillation into the loss."""
        return self.teacher is not None

    def _snapshot_teacher(self) -> None:
        if self.step_count >= self._require_schedule().distill_end:
            return
        # The transform's output rows follow the teacher's hidden width: keep the rows of the
        # dimensions the model still has.
        if self.transform is not None and self.transform.out_features != self.layout.hidden_size:
            from aptune.surgery import slice_linear_

            rows = torch.nonzero(torch.isin(self._transform_out_ids, self.ids.hidden)).squeeze(1)
            slice_linear_(self.transform, rows=rows, optimizer=self._optimizer_ref)
            self._shapes_changed = True
        self._transform_out_ids = self.ids.hidden.clone()
        self.teacher = Teacher(self.model, self.ids.hidden, skip_prefixes=(DISTILL_MODULE_NAME + ".",))

    def teacher_forward(self, inputs: dict) -> object:
        """Run the teacher on ``inputs`` (masks and salience off); returns its model output."""
        if self.teacher is None:
            raise RuntimeError("no teacher snapshot exists yet")
        start = time.perf_counter()
        self.state.enabled = False
        collector_active = self.state.collector.active
        self.state.collector.active = False
        try:
            inputs = dict(inputs)
            if self._encoder_decoder and "decoder_input_ids" not in inputs and "labels" in inputs:
                # the student derives its decoder inputs from the labels; the teacher gets none
                inputs["decoder_input_ids"] = self.model.prepare_decoder_input_ids_from_labels(
                    labels=inputs["labels"]
                )
            inputs = {
                k: v for k, v in inputs.items() if k not in ("labels", "start_positions", "end_positions")
            }
            out = self.teacher.forward(self.model, inputs)
        finally:
            self.state.enabled = True
            self.state.collector.active = collector_active
            self.teacher_seconds += time.perf_counter() - start
        return out

    def distillation_loss(self, student_outputs, teacher_outputs, task_loss: torch.Tensor, inputs: dict):
        """``mu * (a_pred * L_pred + a_layer * L_layer) + (1 - mu) * L_task`` (apt-method.md 6.2).

        Returns:
            ``(loss, LossParts)``.
        """
        cfg = self.config
        schedule = self._require_schedule()
        mu = schedule.mu(self.step_count + 1)
        valid = self._valid_positions(inputs)
        pred_terms = []
        for name in _PREDICTION_FIELDS:
            s = getattr(student_outputs, name, None)
            t = getattr(teacher_outputs, name, None)
            if s is None or t is None:
                continue
            if s.dim() == 3:  # token-level logits (batch, T, V): only real target positions count
                mask = valid if valid is not None and valid.shape == s.shape[:2] else None
                pred_terms.append(self._pred_loss(s, t, mask) * cfg.token_kl_scale)
            else:  # one prediction per example (classification; QA start/end over positions)
                pred_terms.append(self._pred_loss(s, t) * cfg.kl_scale)
        pred = torch.stack(pred_terms).mean() if pred_terms else task_loss.new_zeros(())
        layer = task_loss.new_zeros(())
        layer_terms = []
        pairs = [] if self.transform is None else self._hidden_state_pairs(student_outputs, teacher_outputs)
        for s_states, t_states, alive in pairs:
            layers = sample_teacher_layers(len(t_states) - 1, cfg.num_teacher_layers, self.generator)
            layer_terms.append(
                self._layer_loss(
                    s_states[1:],
                    t_states[1:],
                    layers,
                    alive,
                    self.transform,
                    cfg.layer_mapping,
                    normalise=self._encoder_decoder,
                )
            )
        if layer_terms:
            layer = torch.stack(layer_terms).mean()
        distill = cfg.alpha_pred * pred + cfg.alpha_layer * layer
        loss = mu * distill + (1 - mu) * task_loss.float()
        parts = LossParts(
            task=float(task_loss.detach()), pred=float(pred.detach()), layer=float(layer.detach()), mu=mu
        )
        self.last_loss_parts = parts
        return loss, parts

    @property
    def _encoder_decoder(self) -> bool:
        return bool(getattr(getattr(self.model, "config", None), "is_encoder_decoder", False))

    def _valid_positions(self, inputs: dict) -> torch.Tensor | None:
        # Which token positions of the logits count: decoder targets for encoder-decoders (the
        # encoder's attention_mask has the source length), the attention mask otherwise.
        if self._encoder_decoder:
            if inputs.get("decoder_attention_mask") is not None:
                return inputs["decoder_attention_mask"].bool()
            labels = inputs.get("labels")
            return labels != -100 if labels is not None else None
        mask = inputs.get("attention_mask")
        return mask.bool() if mask is not None else None

    def _hidden_state_pairs(self, student_outputs, teacher_outputs) -> list[tuple]:
        # (student states, teacher states, alive layers) per stack; encoder-decoders return their
        # stacks separately and the layer loss averages them (apt-method.md 6.2)
        s_states = getattr(student_outputs, "hidden_states", None)
        t_states = getattr(teacher_outputs, "hidden_states", None)
        if s_states is not None and t_states is not None:
            return [(s_states, t_states, self.alive_layers())]
        pairs = []
        for stack in ("encoder", "decoder"):
            s_states = getattr(student_outputs, f"{stack}_hidden_states", None)
            t_states = getattr(teacher_outputs, f"{stack}_hidden_states", None)
            if s_states is not None and t_states is not None:
                pairs.append((s_states, t_states, self.alive_layers(stack)))
        return pairs

    # ------------------------------------------------------------------ internals used by prepare_
    _optimizer_ref = None
    _shapes_changed = False
    _transform_out_ids: torch.Tensor
    _c0: float = 1.0
    _n0: int = 0


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    parts = [p.float().cpu() for p in parts]
    return torch.cat(parts) if parts else torch.zeros(0)


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if b is None:
        return a
    b = b.float().cpu()
    return b if a is None else a + b


def _add_scores(a: tuple, b: tuple) -> tuple:
    heads = [_add(x, y) for x, y in zip(a[0], b[0], strict=True)]
    neurons = [_add(x, y) for x, y in zip(a[1], b[1], strict=True)]
    return heads, neurons, _add(a[2], b[2])


def prepare_(
    model: nn.Module, config: AptConfig | None = None, *, total_steps: int | None = None
) -> AptController:
    """Make ``model`` ready for APT in place and return its controller.

    Applies the family's structural patches (T5: every self-attention gets its own relative
    position table, see `aptune.arch.t5`), attaches adapters to the configured roles (default: q, v
    and FFN-up for encoders; q and v for LLaMA-family decoders; q, v and the first FFN input for
    T5), freezes every other backbone parameter, keeps the task head trainable (a deliberate
    deviation from the authors' code, which never trains RoBERTa's ``out_proj``), installs masks and
    salience hooks, and (with distillation on) registers the distillation transform as
    ``model.aptune_distill`` so that any optimizer built afterwards trains it.

    Args:
        model: A HuggingFace model of a supported family.
        config: The APT configuration (default ``AptConfig()``).
        total_steps: Number of optimizer steps of the run, if known now (else call
            ``controller.set_total_steps`` before training).

    Returns:
        The `AptController` that owns masks, scores, schedules and surgery.

    Raises:
        UnsupportedModelError: the model family or task head is not supported.

    Example:
        >>> controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4), total_steps=1000)
        >>> for batch in loader:
        ...     model(**batch).loss.backward(); optimizer.step()
        ...     controller.step(optimizer); optimizer.zero_grad()
    """
    config = config or AptConfig()
    if getattr(model, "_aptune_controller", None) is not None:
        raise ModelError(
            "this model was already prepared by aptune; reuse its controller (model._aptune_controller)"
        )
    layout = build_layout(model)
    apply_patches_(model, layout.patches)
    for param in model.parameters():
        param.requires_grad_(False)
    controller = AptController(model, config, layout)
    roles = config.adapter_targets or layout.default_adapter_roles
    for role in roles:
        for path in layout.role_paths(role):
            controller.adapters[path] = attach_adapter(model, path, config.initial_rank, config.lora_scaling)
    for path in layout.trainable_heads:
        for param in model.get_submodule(path).parameters():
            param.requires_grad_(True)
    install_masks(model, layout, controller.state)
    controller._c0 = controller.param_count()
    controller._n0 = controller.adapter_parameter_count()
    if config.distill and config.target_density < 1.0:
        weight = next(model.parameters())
        transform = DistillTransform(
            layout.hidden_size, rank=config.initial_rank, scaling=config.lora_scaling, device=weight.device
        )
        model.add_module(DISTILL_MODULE_NAME, transform)
        controller.transform = transform
        controller._transform_out_ids = torch.arange(layout.hidden_size)
    model._aptune_controller = controller
    if total_steps is not None:
        controller.set_total_steps(total_steps)
    return controller
