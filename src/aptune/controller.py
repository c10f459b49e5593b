"""`AptController`: conducts an APT run; the schedule says what to do, small parts do it.

`aptune.prepare_` (`aptune.prepare`) attaches adapters, freezes the backbone, installs masks and
hooks, and returns the controller. In a custom loop call ``controller.step(optimizer)`` once per
optimizer step, after ``optimizer.step()`` and before ``optimizer.zero_grad()`` (the adapter
importance reads the adapter gradients). `aptune.AptTrainer` does this from a callback.

What happens at optimizer step ``t`` (1-based, counted by the controller), as `Schedule` decides:

1. inside the collection span (``prune_start`` .. ``prune_end``) the per-step salience of every
   attention unit, FFN neuron and hidden dimension (plus the optional kurtosis bonus) is folded into
   an EMA, and so is the importance of every adapter (`aptune.scores.ScoreTracker`);
2. at the first step of the soft-mask window before an event that lowers the density, a teacher
   snapshot is taken when distillation is on (`aptune.distill.SelfDistiller`);
3. inside that window the keep-set is re-selected with the current scores
   (`aptune.blocks.BlockBook.select`) and the masks move by ``mask_step`` towards it (a block that
   re-enters the keep-set recovers); on the hard step the masks snap to 0/1;
4. at the event, blocks whose mask is 0 are removed physically (weights, adapters, optimizer state,
   scores, ids), and adapter ranks grow towards the trainable-parameter budget
   (`aptune.ranks.allocate_ranks`).

After the main run, an optional post-distillation phase (``AptConfig.posttune_steps``) restores the
best dev checkpoint kept by `AptController.remember_best_` and tunes on with the structure frozen
(`AptController.start_posttune_`; `aptune.AptTrainer.posttune` runs it).

`state_dict` / `load_state_dict` capture all of it (`aptune.checkpoint` writes them to disk).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from aptune.adapter import AptLinear
from aptune.arch import ModelLayout
from aptune.blocks import BlockBook
from aptune.config import AptConfig
from aptune.copy_heads import unit_induction_scores
from aptune.damage import damage_curve_scores, hidden_curve_counts
from aptune.distill import DISTILL_MODULE_NAME, DistillTransform, LossParts, SelfDistiller, valid_positions
from aptune.distributed import (
    all_reduce_salience_,
    all_reduce_salience_stats_,
    check_same_on_all_ranks,
    is_distributed,
    rebuild_ddp_,
)
from aptune.errors import ConfigError, ModelError
from aptune.hidden_exchange import hidden_exchange_ranking
from aptune.host_memory import pin_mmap_threshold, release_freed_memory
from aptune.losses import (
    causal_lm_decoder_output,
    causal_lm_hidden_and_head,
    chunked_causal_lm_distill,
    chunked_lm_forward,
    is_causal_lm,
)
from aptune.masks import MaskState
from aptune.option_checks import hidden_stay_note
from aptune.ranks import allocate_ranks, growth_factor
from aptune.schedule import Schedule, build_schedule
from aptune.scores import (
    Salience,
    ScoreTracker,
    flat_score_vectors,
    hidden_salience_mode,
    measure_salience,
    summed_salience,
)
from aptune.select import KeepSet
from aptune.surgery import clear_optimizer_state_, grow_adapter_, prune_hidden_, prune_neurons_, prune_units_
from aptune.tuning_damage import TuningDamageRanking

__all__ = ["DISTILL_MODULE_NAME", "AptController", "LossParts"]


class AptController:
    """Conducts the pruning, rank growth and distillation of one model.

    Create it with `aptune.prepare_`; do not construct it directly.

    Attributes:
        model, config, layout: The prepared model, its `AptConfig` and its `aptune.arch.ModelLayout`.
        adapters: Module path -> `aptune.adapter.AptLinear`.
        state: The live masks (`aptune.masks.MaskState`).
        blocks: Ids, counts and costs of the blocks still present (`aptune.blocks.BlockBook`).
        scores: Salience and adapter-importance averages (`aptune.scores.ScoreTracker`).
        distiller: Teacher snapshot, transform and combined loss (`aptune.distill.SelfDistiller`).
        schedule: The run's `aptune.schedule.Schedule` (None until the run length is known).
        step_count: Optimizer steps taken.
        events: Records of the pruning events so far.
        event_listeners: Callables that receive every event record.
        pretuned: Whether the model was pruned once before tuning (`calibrate_and_prune_`).
        pretune_density: Density of that pruning for this model and config, or None.
        initial_adapter_params: Adapter parameters at preparation time (the budget's unit).
        posttuning: Whether the post-distillation phase runs (structure frozen: `step` does nothing).
        posttune_record: What the post-distillation phase did (steps, learning rate, dev metrics).
        best: The best dev evaluation since the structure became final (``step``, ``metric``,
            ``value`` and a copy of the trainable ``tensors``), or None (see `remember_best_`).
    """

    def __init__(self, model: nn.Module, config: AptConfig, layout: ModelLayout) -> None:
        self.model = model
        self.config = config
        self.layout = layout
        self.adapters: dict[str, AptLinear] = {}
        self.state = MaskState(heads=[None] * len(layout.attention), neurons=[None] * len(layout.ffn))
        units = [model.get_submodule(s.q).weight.shape[0] // s.unit_width for s in layout.attention]
        neurons = [model.get_submodule(s.up).weight.shape[0] for s in layout.ffn]
        self.blocks = BlockBook(layout, units, neurons)
        use_kurtosis = layout.is_decoder if config.use_kurtosis is None else config.use_kurtosis
        self.scores = ScoreTracker(len(layout.attention), len(layout.ffn), config.salience_beta, use_kurtosis)
        self.state.hidden_salience = hidden_salience_mode(config.hidden_salience, layout)
        self.generator = torch.Generator().manual_seed(config.seed)
        encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        self.distiller = SelfDistiller(config, None, self.generator, encoder_decoder)
        self.schedule: Schedule | None = None
        self._copy_heads_record: list[dict] | None = None
        self.step_count = 0
        self.events: list[dict] = []
        self.event_listeners: list[Callable[[dict], None]] = []
        self.pretuned = False
        self.initial_adapter_params = 0
        self.posttuning = False
        self.posttune_record: dict[str, Any] = {}
        self.best: dict[str, Any] | None = None
        self._shapes_changed = False
        self.tuning_damage = TuningDamageRanking()

    # ------------------------------------------------------------------ public views of the parts
    def structure(self) -> dict:
        """Units per attention site, neurons per FFN site and the hidden size, as now present."""
        return self.blocks.structure()

    def param_count(self) -> float:
        """Prunable backbone parameters now present (the paper's Eq. 6, gated FFNs count 3)."""
        return self.blocks.param_count()

    @property
    def initial_param_count(self) -> float:
        """Prunable backbone parameters at preparation time (the density denominator ``C_0``)."""
        return self.blocks.initial_params

    def density(self) -> float:
        """Current prunable parameters / initial prunable parameters."""
        return self.blocks.density()

    def layer_summary(self) -> dict:
        """Heads (query heads) and FFN neurons kept per layer, and the hidden size."""
        return self.blocks.layer_summary()

    def alive_layers(self, stack: str | None = None) -> list[bool]:
        """Per layer: keeps at least one attention unit and one FFN neuron (see `BlockBook.alive_layers`)."""
        return self.blocks.alive_layers(stack)

    def adapter_parameter_count(self) -> int:
        """Trainable adapter parameters (sum of ``(in + out) * rank``)."""
        return sum(a.adapter_parameters() for a in self.adapters.values())

    def trainable_parameter_count(self) -> int:
        """Parameters with ``requires_grad`` (adapters, task head, distillation transform)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def ranks(self) -> dict[str, int]:
        """Current rank of every adapter, keyed by module path."""
        return {path: a.rank for path, a in self.adapters.items()}

    @property
    def use_kurtosis(self) -> bool:
        """Whether the salience includes the kurtosis bonus."""
        return self.scores.use_kurtosis

    @property
    def adapter_importance(self) -> dict[str, float]:
        """EMA importance per adapter path since the last event."""
        return self.scores.adapter_importance

    @property
    def transform(self) -> DistillTransform | None:
        """The distillation transform ``Tr`` (None without distillation)."""
        return self.distiller.transform

    @property
    def teacher(self):
        """The current teacher snapshot (`aptune.distill.Teacher`), or None."""
        return self.distiller.teacher

    @property
    def distilling(self) -> bool:
        """Whether the current step mixes self-distillation into the loss."""
        return self.distiller.teacher is not None

    @property
    def last_loss_parts(self) -> LossParts:
        """The terms of the latest distillation loss."""
        return self.distiller.last_parts

    @property
    def teacher_seconds(self) -> float:
        """Time spent in teacher forwards."""
        return self.distiller.teacher_seconds

    @property
    def teacher_peak_bytes(self) -> int:
        """Largest memory the teacher snapshot kept alive beyond the student."""
        return self.distiller.teacher_peak_bytes

    # ------------------------------------------------------------------ schedule
    def set_total_steps(self, total_steps: int) -> Schedule:
        """Fix the run length and build the schedule (fractions in the config resolve against it).

        Raises:
            ConfigError: the run is too short for the configured events.
        """
        self.schedule = build_schedule(self.config, total_steps, is_decoder=self.layout.is_decoder)
        self.state.collector.active = self._collecting(self.step_count + 1)
        self._snapshot_initial_teacher()
        return self.schedule

    @property
    def pretune_density(self) -> float | None:
        """Density of the one-shot pruning before tuning, or None (see `AptConfig.pretune_target`)."""
        return self.config.pretune_target(self.layout.is_decoder)

    def _collecting(self, step: int) -> bool:
        if self.schedule is None or self.config.target_density >= 1.0:
            return False
        if self.pretuned and self.density() <= self.config.target_density * (1 + 1e-9):
            return False  # pruned to the target before tuning: nothing left to score for
        return self.schedule.collects(step)

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
        if self.posttuning:  # the post-distillation phase: no scores, no pruning, no rank growth
            self.state.collector.reset()
            return None
        self.step_count += 1
        t = self.step_count
        self._shapes_changed = False
        collector = self.state.collector
        if collector.active:
            self.scores.fold(self._reduced_salience())
        collector.reset()
        self.scores.update_adapter_importance(self.adapters)

        density = schedule.density_target(t)
        if schedule.window_index(t) is not None and self._pruning_due(density):
            if schedule.opens_window(t) and self.config.distill and self.config.distill_teacher == "events":
                self.snapshot_teacher(optimizer)
            move = schedule.mask_move(t)
            if move is not None:
                keep = self._tuning_keep(density, schedule.window_index(t))
                self._move_masks(keep, None if move == "hard" else schedule.mask_step)
        record = None
        k = schedule.event_index(t)
        if k is not None:
            record = self._event(k, density, schedule.budget_factor(t), optimizer)
        if self.distiller.teacher is not None and t >= schedule.distill_end:
            self.distiller.release()
        collector.active = self._collecting(t + 1)
        if self._shapes_changed and wrapper is not None:
            rebuild_ddp_(wrapper)
        return record

    def _pruning_due(self, density: float) -> bool:
        return density < 1.0 and density * self.blocks.initial_params < self.param_count() * (1 - 1e-9)

    def _event(self, index: int, density: float, budget_factor: float, optimizer) -> dict:
        params_before = self.param_count()
        removed = {"heads": 0, "neurons": 0, "hidden": 0}
        due = self._pruning_due(density)
        if due and not self.state.is_hard():
            self.set_hard_masks(self._tuning_keep(density, index))
        curves = self.tuning_damage.close(index)  # the window ends with its event
        measured = curves if due else None
        if due:
            removed = self.prune_to_masks_(optimizer)
        # the student just shrank; the teacher keeps the old tensors alive: that is its memory cost
        self.distiller.note_memory(self.model)
        grown = self.grow_ranks_(budget_factor * self.initial_adapter_params, optimizer)
        if self.config.event_optimizer_state == "reset":
            clear_optimizer_state_(optimizer)
        self.scores.adapter_importance.clear()
        return self._record_event(
            index=index,
            target_density=density,
            params_before=params_before,
            removed=removed,
            grown={p: list(r) for p, r in grown.items()},
            **({"damage_curves": [measured]} if measured is not None else {}),
        )

    def _tuning_keep(self, density: float, index: int | None) -> KeepSet:
        """Keep-set for ``density`` at the event ``index`` during tuning.

        The running salience decides, unless ``tuning_damage_curves`` is on: then the heads and
        neurons are ranked by damage curves measured once per event (on its first window step) on
        the kept calibration batches, ordered inside each site by the running salience, and the
        hidden dimensions stay.
        """
        if not self.tuning_damage.active or index is None:
            return self.select(density)
        running = Salience(list(self.scores.heads), list(self.scores.neurons), self.scores.hidden)
        with_hidden = self.config.hidden_damage_curve
        if not self.config.tuning_damage_curves:  # hidden_damage_curve alone: only the hidden dims repriced
            measure = self._hidden_exchange_scores
        elif with_hidden:

            def measure(salience: Salience, batches: list[dict]) -> tuple[Salience, dict]:
                return self._damage_curve_scores(salience, batches, with_hidden=True)

        else:
            measure = self._damage_curve_scores
        ranking = self.tuning_damage.ranking(index, running, measure)
        counts = (self.blocks.unit_counts(), self.blocks.neuron_counts(), self.blocks.hidden_size)
        vectors = flat_score_vectors(ranking, *counts)
        keep_hidden = not with_hidden or ranking.hidden is None
        return self.blocks.select(vectors, density, self.config, False if keep_hidden else None)

    def _record_event(self, **fields) -> dict:
        """Complete an event record with the current structure, store it and tell the listeners."""
        heads, neurons, hidden = self._score_vectors()
        record = {
            "step": self.step_count,
            **fields,
            # the units protected for copying, in the record of the event that measured them
            **({"copy_heads": self._copy_heads_record} if self._copy_heads_record is not None else {}),
            "density": self.density(),
            "params": self.param_count(),
            "ranks": self.ranks(),
            "trainable_params": self.trainable_parameter_count(),
            "adapter_params": self.adapter_parameter_count(),
            "scores": {"heads": heads.tolist(), "neurons": neurons.tolist(), "hidden": hidden.tolist()},
            **self.layer_summary(),
        }
        self._copy_heads_record = None
        if self.config.distill_rank_growth and self.distiller.transform is not None:
            record["transform_rank"] = self.distiller.transform.rank
        # every rank must have made the same decision (all-reduced scores make it so)
        record["keep_checksum"] = check_same_on_all_ranks(self.blocks.kept_ids(), "the kept blocks")
        self.events.append(record)
        for listener in self.event_listeners:
            listener(record)
        return record

    # ------------------------------------------------------------------ salience, selection, masks
    def current_salience(self) -> Salience:
        """The salience of every block from the activations and gradients collected since the last step."""
        return measure_salience(
            self.state.collector, self.layout, self._merged_weight, self.scores.use_kurtosis
        )

    def _reduced_salience(self) -> Salience:
        all_reduce_salience_stats_(self.state.collector)
        return self.current_salience()

    def _merged_weight(self, path: str) -> torch.Tensor:
        layer = self.model.get_submodule(path)
        if isinstance(layer, AptLinear):
            return (layer.base_layer.weight + layer.get_delta_weight()).detach()
        return layer.weight.detach()

    def _score_vectors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.scores.vectors(
            self.blocks.unit_counts(), self.blocks.neuron_counts(), self.blocks.hidden_size
        )

    def select(self, density_target: float, prune_hidden: bool | None = None) -> KeepSet:
        """Keep-set of the current blocks for ``density_target`` (see `aptune.blocks.BlockBook.select`).

        With ``keep_copy_heads`` the first call measures the units' induction scores and protects
        those that reach it (`protect_copy_heads`).
        """
        self.protect_copy_heads()
        return self.blocks.select(self._score_vectors(), density_target, self.config, prune_hidden)

    def _measured_uniform_keep(
        self, density_target: float, prune_hidden: bool | None, batches: list[dict]
    ) -> tuple[KeepSet, dict]:
        """The uniform layout's keep-set with the lowest measured loss (``uniform_heads="measured"``).

        The selection runs once per floor of attention units per layer, from
        ``min_heads_per_layer`` to the most units any layer has; distinct keep-sets are measured
        with hard masks on ``batches`` and the lowest loss wins (ties to the lower floor). Its units
        are protected, so later events keep them.

        Returns:
            The keep-set, and a record: ``{"floor": chosen floor, "losses": {floor: loss}}``.
        """
        self.protect_copy_heads()
        scores = self._score_vectors()
        most = max(self.blocks.unit_counts(), default=0)
        candidates: dict[int, KeepSet] = {}
        for floor in range(min(self.config.min_heads_per_layer, most), most + 1):
            config = dataclasses.replace(self.config, min_heads_per_layer=floor)
            keep = self.blocks.select(scores, density_target, config, prune_hidden)
            if not any(_same_keep(keep, other) for other in candidates.values()):
                candidates[floor] = keep
        with self._hard_mask_losses(batches) as loss_of:
            losses = {floor: loss_of(keep) for floor, keep in candidates.items()}
        floor = min(losses, key=lambda f: (losses[f], f))
        chosen = candidates[floor]
        heads = chosen.heads.cpu()
        if self.blocks.protected is not None:
            heads = heads | self.blocks.protected_mask()
        # (units,) -> one mask per attention site
        self.blocks.protect_units(list(heads.split(self.blocks.unit_counts())))
        return chosen, {"floor": floor, "losses": {str(f): round(v, 6) for f, v in losses.items()}}

    def protect_copy_heads(self) -> list[dict]:
        """Protect the units whose induction score reaches ``AptConfig.keep_copy_heads`` (once).

        The threshold is the family's (`aptune.config.AptConfig.copy_heads_threshold`): 0.3 by
        default on causal LMs, none on other models.

        The model is measured as it is now, with masks and salience collection off
        (`aptune.copy_heads.unit_induction_scores`); later calls keep the first call's units.

        Returns:
            The protected units (``layer``, ``unit`` as its original id, ``score``); empty when the
            option is off or the units were protected before.
        """
        threshold = self.config.copy_heads_threshold(self.layout.is_decoder)
        if threshold is None or self.blocks.protected is not None:
            return []
        state = self.state
        enabled, collecting = state.enabled, state.collector.active
        state.enabled = state.collector.active = False
        try:
            layers = [site.layer for site in self.layout.attention]
            scores = unit_induction_scores(self.model, self.blocks.unit_counts(), layers)
        finally:
            state.enabled, state.collector.active = enabled, collecting
        self.blocks.protect_units([score >= threshold for score in scores])
        self._copy_heads_record = [
            {"layer": layer, "unit": int(unit), "score": round(float(score[i]), 4)}
            for layer, ids, score in zip(layers, self.blocks.units, scores, strict=True)
            for i, unit in enumerate(ids.tolist())
            if score[i] >= threshold
        ]
        return self._copy_heads_record

    def set_hard_masks(self, keep: KeepSet) -> None:
        """Set 0/1 masks from a keep-set (used by tests and one-shot pruning)."""
        self._move_masks(keep, None)

    def _move_masks(self, keep: KeepSet, step: float | None) -> None:
        heads, neurons = self.blocks.split(keep)
        hidden = keep.hidden if self.config.prune_hidden else None
        self.state.move_(heads, neurons, hidden, step, self._device())

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ surgery and rank growth
    @torch.no_grad()
    def prune_to_masks_(self, optimizer=None) -> dict:
        """Physically remove every block whose mask is 0; masks become all-ones (``None``).

        Returns:
            Counts of removed heads, neurons and hidden dimensions.
        """
        state = self.state
        removed = self._remove_(
            [_kept(m) for m in state.heads], [_kept(m) for m in state.neurons], _kept(state.hidden), optimizer
        )
        state.clear()
        state.collector.reset()
        if any(removed.values()):
            if self._device().type == "cpu" and self._pruning_remains():
                # activation sizes will change at every event from here on: see aptune.host_memory
                pin_mmap_threshold()
            release_freed_memory(self.model)
            self._require_something_to_tune()
        return removed

    def _pruning_remains(self) -> bool:
        """Whether the model is still above the target density, so later events will remove more."""
        return self._pruning_due(self.config.target_density)

    def _require_something_to_tune(self) -> None:
        """Raise a `ConfigError` when the pruning left no trainable weight that reaches the loss.

        That happens when every adapted module lost all its rows or columns (e.g. adapters only on
        q and v, and every head removed) and the model has no other trainable parameter (a causal
        LM's head is frozen); the next backward pass would fail deep inside torch.
        """
        if any(a.out_features > 0 and a.in_features > 0 for a in self.adapters.values()):
            return
        adapter_params = {id(p) for a in self.adapters.values() for p in a.parameters()}
        if any(
            p.requires_grad and p.numel() > 0 and id(p) not in adapter_params for p in self.model.parameters()
        ):
            return
        raise ConfigError(
            f"pruning to density {self.density():.3g} removed every module that carries an adapter "
            f"({', '.join(sorted({name.rsplit('.', 1)[-1] for name in self.adapters}))}), so nothing is "
            "left to tune; add adapters on the FFN "
            "(adapter_targets with up, gate, down), keep heads with min_heads_per_layer, or raise "
            "target_density"
        )

    def _remove_(
        self,
        units: list[torch.Tensor | None],
        neurons: list[torch.Tensor | None],
        hidden: torch.Tensor | None,
        optimizer,
    ) -> dict:
        # Surgery: keep only the given positions (None: the site keeps everything); the book and the
        # scores follow. Returns the counts removed (query heads, neurons, hidden dimensions).
        removed = {"heads": 0, "neurons": 0, "hidden": 0}
        for kind, keeps, counts, prune in (
            ("heads", units, self.blocks.unit_counts(), prune_units_),
            ("neurons", neurons, self.blocks.neuron_counts(), prune_neurons_),
        ):
            for i, keep in enumerate(keeps):
                if keep is None:
                    continue
                per_unit = self.layout.attention[i].group_size if kind == "heads" else 1
                removed[kind] += (counts[i] - keep.numel()) * per_unit
                prune(self.model, self.layout, i, keep, optimizer)
                self.blocks.keep_(kind, i, keep)
                self.scores.keep_(kind, i, keep)
        if hidden is not None:
            removed["hidden"] = self.blocks.hidden_size - hidden.numel()
            prune_hidden_(self.model, self.layout, hidden, optimizer, extra_readers=self._hidden_readers())
            self.blocks.keep_("hidden", None, hidden)
            self.scores.keep_("hidden", None, hidden)
        self._shapes_changed = self._shapes_changed or any(removed.values())
        return removed

    def _hidden_readers(self) -> list[nn.Module]:
        return [self.distiller.transform] if self.distiller.transform is not None else []

    def grow_ranks_(self, budget: float, optimizer=None) -> dict[str, tuple[int, int]]:
        """Grow adapter ranks so that the adapters hold about ``budget`` trainable parameters.

        The new ranks come from `aptune.ranks.allocate_ranks` (``AptConfig.rank_allocation``). With
        ``AptConfig.distill_rank_growth`` the distillation transform then grows by the same factor
        (`grow_transform_`).

        Returns:
            ``{path: (old_rank, new_rank)}`` of the adapters that grew.
        """
        widths = {p: a.lora_A.shape[1] + a.lora_B.shape[0] for p, a in self.adapters.items()}
        plan = (self.ranks(), widths, self.scores.adapter_importance, budget)
        options = {"max_rank": self.config.max_rank, "mode": self.config.rank_allocation}
        new_ranks = allocate_ranks(*plan, **options)
        factor = growth_factor(*plan, **options) if new_ranks else 1.0
        grown = {
            p: grow_adapter_(self.adapters[p], r, optimizer, self.generator, self._second_moment())
            for p, r in new_ranks.items()
        }
        self._shapes_changed = self._shapes_changed or bool(grown)
        if self.config.distill_rank_growth:
            self.grow_transform_(factor, optimizer)
        return grown

    def grow_transform_(self, factor: float, optimizer=None) -> tuple[int, int] | None:
        """Grow the distillation transform's rank by ``factor``, as the authors' code does with ``Tr``.

        The new rank is ``floor(rank * factor)``; the transform grows only while that stays below
        ``2 * max_rank`` (the authors' 128 for their cap of 64). New rows of ``A`` are drawn like a
        fresh LoRA and new columns of ``B`` are zero, so ``Tr``'s output is unchanged.

        Args:
            factor: The factor the growing adapters got at this event (`aptune.ranks.growth_factor`).
            optimizer: Optimizer holding the transform's parameters, if any.

        Returns:
            ``(old_rank, new_rank)``, or None when there is no transform or it did not grow.
        """
        transform = self.distiller.transform
        if transform is None:
            return None
        new_rank = math.floor(transform.rank * factor)
        if new_rank <= transform.rank or new_rank >= 2 * self.config.max_rank:
            return None
        grown = grow_adapter_(transform, new_rank, optimizer, self.generator, self._second_moment())
        self._shapes_changed = True
        return grown

    def _second_moment(self) -> str:
        """How grown entries' second moments start (`aptune.surgery.grow_adapter_`)."""
        return "zeros" if self.config.event_optimizer_state == "zeros" else "mean"

    # ------------------------------------------------------------------ pre-tuning pruning
    def calibrate_and_prune_(self, batches: Iterable[dict], optimizer=None) -> dict:
        """One-shot pruning before tuning (the paper's LLaMA recipe), to `pretune_density`.

        Sums the salience of every batch (`aptune.scores.summed_salience`: forward and backward,
        no optimizer step), selects the keep-set and removes the rest physically; with
        ``pretune_rounds`` R > 1 it does so R times, each round on the model the last one pruned
        and an equal share of the way to the density. With damage curves
        (`aptune.config.AptConfig.damage_curve_points`, on for decoders) the heads and neurons
        compete by their sites' measured loss curves (`aptune.damage`) and the hidden dimensions
        stay until the pruning during tuning. The density
        is `pretune_density` (``target_density`` when pruning before tuning is off for this
        config, e.g. an encoder without ``pretune_prune``). When it lies above the target, the
        schedule's cubic continues from it during tuning with the running salience, which starts
        afresh (the calibration sums are on another scale); otherwise later events only grow ranks.

        Args:
            batches: Model-input dicts that include labels (the model must return ``loss``).
            optimizer: Optimizer whose state must follow the surgery, if already created.

        Returns:
            The event record of the one-shot pruning.

        Raises:
            ModelError: a batch has no labels, or there are no batches.
        """
        density = self.pretune_density
        if density is None:
            density = self.config.target_density
        rounds = self.config.pretune_rounds or 1
        curves = self.config.damage_curve_points(self.layout.is_decoder)
        measure_uniform = (
            self.config.layout == "uniform"
            and self.config.uniform_heads_choice(self.layout.is_decoder) == "measured"
        )
        batches = list(batches) if rounds > 1 or curves or measure_uniform else batches
        params_before = self.param_count()
        # norm-weighted hidden dimensions leave only gradually, during tuning; so do all of them when
        # damage curves score the heads and neurons (their scale is loss, the hidden dims' salience)
        keep_hidden = self.state.hidden_salience == "norm_weighted" or bool(curves)
        removed: dict[str, int] = {}
        measured: list[dict] = []
        notes: dict = {}
        seen = 0
        if curves:
            # the copying heads are known before the curves measure anything, so that no curve
            # prices a removal the selection will never make (the model is the one select() sees)
            self.protect_copy_heads()
        for index in range(1, rounds + 1):
            # each round scores the model the rounds before it pruned (see AptConfig.pretune_rounds)
            # scored per micro-batch on each rank, then summed over the ranks (aptune.distributed)
            total, seen = summed_salience(
                self.model, batches, self.state.collector, self.current_salience, self.batch_loss
            )
            total = all_reduce_salience_(total)
            ranking = total
            if curves:
                ranking, damage = self._damage_curve_scores(total, batches[: self.config.damage_batches])
                measured.append(damage)
            self.scores.replace(ranking)
            goal = 1.0 - (1.0 - density) * index / rounds
            if measure_uniform and index == 1:
                keep, floors = self._measured_uniform_keep(
                    goal, False if keep_hidden else None, batches[: self.config.damage_batches]
                )
                notes["uniform_heads"] = floors
            else:
                keep = self.select(goal, False if keep_hidden else None)
            self.scores.replace(total)  # the scores kept after the surgery stay on the salience scale
            self.set_hard_masks(keep)
            for kind, count in self.prune_to_masks_(optimizer).items():
                removed[kind] = removed.get(kind, 0) + count
        self.pretuned = True
        if self.config.tuning_damage_curves or self.config.hidden_damage_curve:
            self.tuning_damage.keep(batches[: self.config.damage_batches])
        if keep_hidden and self.config.prune_hidden and density <= self.config.target_density < 1.0:
            notes["hidden_note"] = hidden_stay_note(density)
        record = self._record_event(
            index=-1,
            kind="pretune",
            calibration_batches=seen,
            rounds=rounds,
            target_density=density,
            params_before=params_before,
            removed=removed,
            grown={},
            **({"damage_curves": measured} if curves else {}),
            **notes,
        )
        if density > self.config.target_density:
            self.scores.clear()
        self.state.collector.active = self._collecting(self.step_count + 1)
        return record

    def batch_loss(self, batch: dict) -> torch.Tensor | None:
        """The model's loss on ``batch`` (with labels), as the run's training steps compute it.

        With ``AptConfig.lm_loss_chunk`` set on a causal LM, the loss is the chunked one
        (`aptune.losses.chunked_lm_forward`, the same value), so the calibration pass and the
        damage curves never hold a batch's ``[tokens, vocabulary]`` logits; otherwise
        ``model(**batch).loss`` (None when the model returns no loss).
        """
        chunk = self.config.lm_loss_chunk
        if chunk is not None and is_causal_lm(self.model) and batch.get("labels") is not None:
            return chunked_lm_forward(self.model, batch, chunk)
        return self.model(**batch).loss

    def _damage_curve_scores(
        self, salience: Salience, batches: list[dict], with_hidden: bool = False
    ) -> tuple[Salience, dict]:
        """Head and neuron scores from measured damage curves (`aptune.damage`) on ``batches``; with
        ``with_hidden`` the hidden dimensions' too (`AptConfig.hidden_damage_curve`)."""
        points = self.config.damage_curve_points(self.layout.is_decoder)
        hidden_counts = self._hidden_curve_counts(points) if with_hidden else ()
        protected = self.blocks.protected_mask()
        # (units,) -> one mask per attention site: the curves never remove the protected units
        kept_units = None if protected is None else list(protected.split(self.blocks.unit_counts()))
        with self._hard_mask_losses(batches) as loss_of:
            return damage_curve_scores(
                salience,
                self.blocks.unit_counts(),
                self.blocks.neuron_counts(),
                self.blocks.hidden_size,
                loss_of,
                points,
                hidden_counts,
                kept_units,
            )

    def _hidden_exchange_scores(self, salience: Salience, batches: list[dict]) -> tuple[Salience, dict]:
        """The running salience, with the hidden dimensions priced against the heads and neurons by
        a measured block curve and hidden curve on ``batches`` (`aptune.hidden_exchange`)."""
        counts = self._hidden_curve_counts(self.config.damage_curve_points(self.layout.is_decoder) or 4)
        with self._hard_mask_losses(batches) as loss_of:
            return hidden_exchange_ranking(salience, self.blocks, self.config, counts, loss_of)

    def _hidden_curve_counts(self, points: int) -> list[int]:
        """Counts of the hidden curve (`aptune.damage.hidden_curve_counts`), below the hidden size."""
        hidden_size = self.blocks.hidden_size
        counts = hidden_curve_counts(hidden_size, 1.0 - self.config.target_density, points)
        return [c for c in counts if c < hidden_size]

    @contextlib.contextmanager
    def _hard_mask_losses(self, batches: list[dict]) -> Iterator[Callable[[KeepSet | None], float]]:
        """Yield ``loss_of(keep)``: the mean loss on ``batches`` with the blocks outside ``keep``
        masked to 0 (``None``: none), in eval mode without gradients; the masks and the training
        mode of before come back afterwards."""
        if not batches:
            raise ModelError("damage curves need at least one calibration batch")
        device = self._device()
        # on the device once: every point of every curve runs the same batches
        batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]

        @torch.no_grad()
        def loss_of(keep: KeepSet | None) -> float:
            if keep is None:
                self.state.clear()
            else:
                self.set_hard_masks(keep)
            total = torch.zeros((), dtype=torch.float64, device=device)
            for batch in batches:
                total += self.batch_loss(batch).double()
            if is_distributed():  # every rank must measure the same curves
                torch.distributed.all_reduce(total)
                total /= torch.distributed.get_world_size()
            return float(total) / len(batches)

        was_training = self.model.training
        masks = self.state.state_dict()  # measured with hard masks; any soft masks come back after
        self.model.eval()
        try:
            yield loss_of
        finally:
            self.state.clear()
            self.state.load_state_dict(masks, device)
            self.model.train(was_training)

    # ------------------------------------------------------------------ distillation
    def snapshot_teacher(self, optimizer=None) -> None:
        """Snapshot the model as the teacher: at the first step of a soft-mask window
        (``distill_teacher="events"``), or once when the schedule is set before any pruning
        (``"initial"``).

        Nothing happens once distillation is over (``step_count >= schedule.distill_end``).
        """
        if self.step_count >= self._require_schedule().distill_end:
            return
        if self.distiller.snapshot_(self.model, self.blocks.hidden, optimizer):
            self._shapes_changed = True

    def _snapshot_initial_teacher(self) -> None:
        # distill_teacher="initial": the model before any pruning or step (a resumed run restores the
        # snapshot from its checkpoint instead, and a later schedule change keeps the one taken)
        if not (self.config.distill and self.config.distill_teacher == "initial"):
            return
        if self.step_count or self.pretuned or self.distiller.teacher is not None:
            return
        if self.param_count() < self.blocks.initial_params:
            return
        self.snapshot_teacher()

    @contextlib.contextmanager
    def _teacher_mode(self) -> Iterator[None]:
        # masks and salience off while the teacher runs through the student's modules
        state = self.state
        collector_active = state.collector.active
        state.enabled = state.collector.active = False
        try:
            yield
        finally:
            state.enabled = True
            state.collector.active = collector_active

    def teacher_forward(self, inputs: dict) -> object:
        """Run the teacher on ``inputs`` (masks and salience off); returns its model output."""
        with self._teacher_mode():
            return self.distiller.teacher_forward(self.model, inputs)

    def chunked_distillation_loss(
        self, model: nn.Module, inputs: dict, num_items_in_batch: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, LossParts]:
        """`distillation_loss` of a causal LM with its logits in blocks of ``lm_loss_chunk`` tokens.

        The student's and the teacher's decoders run without their output projections; the
        cross-entropy and the prediction KL are then taken block by block
        (`aptune.losses.chunked_causal_lm_distill`), so neither model's vocabulary logits exist
        at once. The value is `distillation_loss`'s on the full logits.

        Args:
            model: The student as the training step calls it (possibly wrapped for data parallelism).
            inputs: The batch, with ``labels``.
            num_items_in_batch: The Trainer's token count over accumulated micro-batches, if any.

        Returns:
            ``(loss, LossParts)``.
        """
        decoder, head = causal_lm_hidden_and_head(model)
        names = {id(module): name for name, module in self.model.named_modules()}
        decoder_name, head_name = names[id(decoder)], names[id(head)]
        kwargs = {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
        states = self.distiller.matches_layers
        student = causal_lm_decoder_output(model, kwargs, output_hidden_states=states)
        with self._teacher_mode():
            teacher = self.distiller.teacher_module_forward(
                self.model, decoder_name, **kwargs, use_cache=False, output_hidden_states=states
            )

        def teacher_head(hidden: torch.Tensor) -> torch.Tensor:
            with self._teacher_mode():
                return self.distiller.teacher_module_forward(self.model, head_name, hidden)

        valid = valid_positions(inputs, self.distiller.encoder_decoder)
        task_loss, token_kl = chunked_causal_lm_distill(
            student.last_hidden_state,
            teacher.last_hidden_state,
            head,
            teacher_head,
            inputs["labels"],
            valid,
            self.config.lm_loss_chunk,
            self.config.temperature,
            num_items_in_batch,
        )
        mu = self._require_schedule().mu(self.step_count + 1)
        alive = {stack: self.blocks.alive_layers(stack) for stack in (None, "encoder", "decoder")}
        return self.distiller.loss(
            student, teacher, task_loss, mu=mu, alive=alive, valid=valid, token_kl=token_kl
        )

    def distillation_loss(self, student_outputs, teacher_outputs, task_loss: torch.Tensor, inputs: dict):
        """``mu * (a_pred * L_pred + a_layer * L_layer) + (1 - mu) * L_task`` (paper section 4.4).

        ``mu`` is the schedule's at the next step; see `aptune.distill.SelfDistiller.loss`.

        Returns:
            ``(loss, LossParts)``.
        """
        mu = self._require_schedule().mu(self.step_count + 1)
        alive = {stack: self.blocks.alive_layers(stack) for stack in (None, "encoder", "decoder")}
        valid = valid_positions(inputs, self.distiller.encoder_decoder)
        return self.distiller.loss(
            student_outputs, teacher_outputs, task_loss, mu=mu, alive=alive, valid=valid
        )

    # ------------------------------------------------------------------ post-distillation phase
    def structure_final(self, step: int | None = None) -> bool:
        """Whether no pruning event or rank growth comes after optimizer step ``step`` (default: now)."""
        step = self.step_count if step is None else step
        return self.schedule is not None and step >= self.schedule.end

    def remember_best_(self, metric: str, value: float, greater_is_better: bool) -> bool:
        """Keep a copy of the trainable tensors if ``value`` is the best dev metric so far.

        Only evaluations after the last pruning event count (the authors' "best checkpoint since
        pruning finished"): from then on the shapes no longer change, so the copy fits the final
        model. The frozen backbone is not copied: nothing changes it after the last event.

        Args:
            metric: Name of the metric (e.g. ``"eval_accuracy"``).
            value: Its value for the model as it is now.
            greater_is_better: Whether a larger value is better.

        Returns:
            Whether the copy was taken.
        """
        if self.posttuning or not self.structure_final() or not math.isfinite(value):
            return False
        if self.best is not None:
            better = value > self.best["value"] if greater_is_better else value < self.best["value"]
            if not better:
                return False
        tensors = {
            name: param.detach().clone()
            for name, param in self.model.named_parameters()
            if param.requires_grad
        }
        self.best = {"step": self.step_count, "metric": metric, "value": float(value), "tensors": tensors}
        return True

    @torch.no_grad()
    def restore_best_(self) -> dict[str, Any] | None:
        """Copy the tensors of the best dev evaluation back into the model (in place).

        Returns:
            ``{"step", "metric", "value"}`` of the restored evaluation, or None when none was kept.

        Raises:
            ModelError: the kept tensors do not fit the model (it changed shape since).
        """
        if self.best is None:
            return None
        params = dict(self.model.named_parameters())
        for name, tensor in self.best["tensors"].items():
            if name not in params or params[name].shape != tensor.shape:
                raise ModelError(
                    f"the best dev checkpoint's {name} does not fit the model; it was kept before the "
                    "structure became final: start a new run"
                )
            params[name].copy_(tensor)
        return {k: v for k, v in self.best.items() if k != "tensors"}

    def start_posttune_(self) -> None:
        """Enter the post-distillation phase: teacher dropped, scores off, structure frozen.

        The copy of the best dev checkpoint is dropped too (call `restore_best_` first).
        """
        self.distiller.release()
        self.best = None
        self.state.collector.reset()
        self.state.collector.active = False
        self.posttuning = True

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs besides model weights and optimizer state.

        Returns:
            A nested dict of tensors and JSON-ready values (per-site tensors keyed by site index;
            event records without their scores).
        """
        return {
            "config": self.config.to_dict(),
            "step_count": self.step_count,
            "total_steps": self.schedule.total_steps if self.schedule else None,
            "pretuned": self.pretuned,
            "initial_adapter_params": self.initial_adapter_params,
            "ranks": self.ranks(),
            "blocks": self.blocks.state_dict(),
            "scores": self.scores.state_dict(),
            "masks": self.state.state_dict(),
            "distiller": self.distiller.state_dict(self.model),
            "events": [{k: v for k, v in e.items() if k != "scores"} for e in self.events],
            "generator": self.generator.get_state(),
            "posttune": {"active": self.posttuning, "record": dict(self.posttune_record), "best": self.best},
            "tuning_damage": self.tuning_damage.state_dict(),
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any], optimizer=None) -> None:
        """Rebuild the saved structure on this freshly prepared model and restore the state.

        Call it before the model weights and the optimizer state are loaded: the surgery and rank
        growth of the saved run are re-applied first, so that they fit.

        Raises:
            ConfigError: the state was written by another config, or the model was already
                changed by training or pruning.
        """
        now = self.config.to_dict()
        # an option added after the state was written counts as its default (what that run did)
        saved = AptConfig.from_dict(state["config"]).to_dict()
        differences = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if differences:
            written = ", ".join(f"{k}={saved.get(k)!r}" for k in differences)
            raise ConfigError(
                f"it was written by a run with a different AptConfig (differs in: {', '.join(differences)}); "
                f"resume with the same config ({written}) or start a new run"
            )
        if self.step_count != 0 or self.structure() != self.blocks.original:
            raise ConfigError(
                "load the controller state into a freshly prepared model, before any training step"
            )
        if state["total_steps"] is not None:
            self.set_total_steps(state["total_steps"])
        # re-apply the surgery: the saved original ids are positions in this full-size model
        blocks = state["blocks"]

        def changed(ids: torch.Tensor, count: int) -> torch.Tensor | None:
            return ids.long() if ids.numel() != count else None

        units = [changed(blocks["units"][str(i)], n) for i, n in enumerate(self.blocks.unit_counts())]
        neurons = [changed(blocks["neurons"][str(i)], n) for i, n in enumerate(self.blocks.neuron_counts())]
        self._remove_(units, neurons, changed(blocks["hidden"], self.blocks.hidden_size), optimizer)
        self.blocks.load_state_dict(blocks)
        for path, rank in state["ranks"].items():
            grow_adapter_(self.adapters[path], rank, optimizer)
        self.state.load_state_dict(state["masks"], self._device())
        self.scores.load_state_dict(state["scores"])
        self.distiller.load_state_dict(state["distiller"], self.model, optimizer)
        self.pretuned = bool(state["pretuned"])
        self.initial_adapter_params = int(state["initial_adapter_params"])
        self.step_count = int(state["step_count"])
        self.events = list(state["events"])
        self.generator.set_state(state["generator"])
        posttune = state.get("posttune") or {}
        self.posttuning = bool(posttune.get("active", False))
        self.posttune_record = dict(posttune.get("record") or {})
        best = posttune.get("best")
        if best is not None:
            device = self._device()
            tensors = {name: t.to(device) for name, t in best["tensors"].items()}
            self.best = {**best, "step": int(best["step"]), "value": float(best["value"]), "tensors": tensors}
        self.tuning_damage.load_state_dict(
            state.get("tuning_damage"), len(self.layout.attention), len(self.layout.ffn)
        )
        self.state.collector.reset()
        self.state.collector.active = False if self.posttuning else self._collecting(self.step_count + 1)


def _same_keep(a: KeepSet, b: KeepSet) -> bool:
    """Whether two keep-sets keep the same blocks."""
    return all(
        torch.equal(x.cpu(), y.cpu())
        for x, y in zip((a.heads, a.neurons, a.hidden), (b.heads, b.neurons, b.hidden), strict=True)
    )


def _kept(mask: torch.Tensor | None) -> torch.Tensor | None:
    # Positions whose mask is 1, or None when the mask removes nothing.
    if mask is None:
        return None
    keep = torch.nonzero(mask.cpu() > 0.5).squeeze(1)
    return keep if keep.numel() < mask.numel() else None


def __getattr__(name: str) -> Any:
    # `prepare_` moved to `aptune.prepare`; the old import path keeps working, with a warning
    if name == "prepare_":
        import warnings

        from aptune.prepare import prepare_

        warnings.warn(
            "aptune.controller.prepare_ moved: use aptune.prepare_ (or aptune.prepare.prepare_)",
            DeprecationWarning,
            stacklevel=2,
        )
        return prepare_
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
