"""`AptConfig`: every knob of the APT method in one validated dataclass.

Schedule points (``prune_start``, ``prune_end``, ``density_warmup``, ``distill_end``, ``mask_window``)
are *fractions of the total number of optimizer steps* when given as a float in [0, 1], and
*absolute step numbers* when given as an int. ``AptConfig(target_density=0.4)`` therefore works for a
run of any length. The defaults are tuned for short runs (a few hundred to a few thousand steps); the
paper's own values for 40-epoch GLUE runs are in its Table 6 (training details).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptune.atomic import write_text_atomic
from aptune.errors import ConfigError

__all__ = [
    "ADAPTER_ROLES",
    "CONFIG_FORMAT_VERSION",
    "DECODER_COPY_HEADS",
    "AptConfig",
    "resolve_uniform_heads",
    "upgrade_config_dict",
]

#: Version of `AptConfig.to_dict`. 2: ``keep_copy_heads`` None means the family default (0.3 for
#: causal LMs); version 1 wrote None for "no protected unit", and is read as 0. 3: ``uniform_heads``
#: None means the family default ("measured" for a causal LM's uniform layout); version 2 wrote
#: "salience" or nothing, which is read as "salience".
CONFIG_FORMAT_VERSION = 3
#: Versions `AptConfig.from_dict` reads (older ones through `upgrade_config_dict`).
READABLE_CONFIG_VERSIONS = (1, 2, 3)

#: Induction score from which a causal LM's attention units are kept by default (``keep_copy_heads``).
#: Set before any run; on SmolLM2-135M it keeps 5 of 90 KV groups, and it sits in the widest gap below
#: them (the fifth scores 0.44, the sixth 0.27; benchmarks/results/induction_heads_smollm2.md).
DECODER_COPY_HEADS = 0.3

_RANK_ALLOCATIONS = ("salience", "uniform", "static")
_EVENT_OPTIMIZER_STATES = ("zeros", "mean", "reset")
_DISTILL_TEACHERS = ("events", "initial")
_UNIFORM_HEADS = ("salience", "measured")
_HIDDEN_SALIENCES = ("block_inputs", "residual", "norm_weighted")
_HIDDEN_COSTS = ("current", "initial")
#: The roles ``AptConfig.adapter_targets`` chooses from, in the order adapters are attached.
ADAPTER_ROLES: tuple[str, ...] = ("q", "k", "v", "o", "up", "gate", "down")

_LAYER_MAPPINGS = ("nearest", "same")
_LAYOUTS = ("free", "uniform")
_SELECTION_SCALES = ("global", "layer", "site")
_SCHEDULE_POINTS = ("prune_start", "prune_end", "density_warmup", "distill_end", "mask_window")


def _is_schedule_point(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    if isinstance(value, float):
        return 0.0 <= value <= 1.0 and math.isfinite(value)
    return False


@dataclass
class AptConfig:
    """Configuration of an APT run (adaptive pruning + adaptive tuning + self-distillation).

    Args:
        target_density: Fraction of the prunable backbone parameters (attention, FFN, hidden
            dimensions; embeddings and task head excluded) kept at the end, in (0, 1]. 1 disables
            pruning.
        initial_rank: Rank of every adapter at the start.
        max_rank: Cap on an adapter's rank during growth.
        lora_scaling: Fixed scaling ``s`` of the adapter update ``s * B @ A`` (the paper uses 2).
        budget_growth: Trainable adapter parameters grow linearly to this multiple of the start.
        rank_allocation: ``"salience"`` (top half by importance grows, the paper), ``"uniform"``
            (every adapter grows by the same factor) or ``"static"`` (ranks never change).
        event_optimizer_state: What the optimizer state becomes at a pruning / growth event.
            ``"zeros"`` (default): kept (sliced with the model); a grown adapter's new entries start
            with zero moments, which under Adam's per-tensor bias correction gives them up to several
            times the learning rate for tens of steps. ``"mean"``: kept; new entries start with zero
            momentum and their tensor's mean second moment, so their first steps are no larger than
            a fresh optimizer's (steadier at high learning rates; on BBC dev, at the rate chosen for
            ``"zeros"``, it did worse on MiniLM and SmolLM2). ``"reset"``: cleared at every event, as
            the authors' code re-creates the optimizer (the learning-rate schedule continues).
        salience_beta: EMA factor of the salience and adapter-importance scores.
        use_kurtosis: Add ``sqrt(excess kurtosis)`` of the weight x activation products to each
            block's salience. ``None`` picks the family default (on for decoders, off for encoders).
        prune_hidden: Whether hidden (residual-stream) dimensions compete for removal.
        num_events: Number of pruning events between ``prune_start`` and ``prune_end``.
        prune_start: Schedule point of the first step of salience collection.
        prune_end: Schedule point of the last pruning event.
        density_warmup: Schedule point offset after ``prune_start`` during which the density target
            stays at 1 (rank growth still happens at those events).
        mask_window: Length of the soft-mask window before each event. ``None``: half the gap
            between two events.
        mask_step: Per-step change of a soft mask inside the window. ``None``: ``2 / window``, so a
            mask goes from 1 to 0 within half a window.
        distill: Self-distillation from a snapshot of the model's own adapters (the paper's D_S).
            Off by default: on the short runs measured here (MiniLM-L6, 3 epochs of BBC News, 40 %
            density, one seed) it did not help: 95.5 % dev accuracy with distillation until 70 % of
            the run (the task-loss weight falls to 0 while the teacher is an early snapshot), 96.6 %
            with distillation ending at 45 %, and 96.6 % without, at a lower cost. The paper's runs
            are 40 epochs long with distillation over 20 of them.
        distill_teacher: Which state of the model teaches. ``"events"`` (the authors' code): a new
            snapshot at the first step of every soft-mask window during tuning, so the teacher is
            the model just before each pruning event; it needs pruning left for tuning.
            ``"initial"``: one snapshot of the model as prepared, before any pruning (the pretrained
            model, since the adapters start at zero output), kept until ``distill_end``; it also
            works when everything is pruned before tuning (the decoder default). Its cost: the
            backbone tensors that pruning removes stay alive, and every distilled step runs the
            unpruned model forward. Its predictions are worth matching only where the output layer
            is pretrained (a causal or seq2seq LM); with a task head trained from scratch it is
            refused unless ``alpha_pred`` is 0.
        distill_end: Schedule point at which distillation stops and student-only tuning begins.
        distill_rank_growth: Grow the rank of the distillation transform ``Tr`` at every rank
            allocation event by the factor the growing adapters get (the authors' code; the new rank
            is rounded down and the transform grows only while it stays below ``2 * max_rank``, their
            128 for a cap of 64). New components start at zero output, so ``Tr`` is unchanged at the
            moment of growth. Off: ``Tr`` keeps ``initial_rank``.
        alpha_pred: Weight of the prediction (KL) term inside the distillation loss.
        alpha_layer: Weight of the layer (MSE) term inside the distillation loss.
        temperature: Softmax temperature of the prediction term.
        kl_scale: Constant factor on the KL term of per-example predictions (classification
            logits, QA start/end logits); the authors' code uses 10.
        token_kl_scale: Constant factor on the KL term of token-level predictions (causal LM and
            seq2seq logits, averaged over the counted target tokens); the authors' code uses none (1).
        num_teacher_layers: How many teacher layers are matched per step (one per block).
        layer_mapping: ``"nearest"`` (same index if alive, else the better nearest alive
            neighbour) or ``"same"`` (same index, skipped if dead).
        selection_scale: How block scores compare across layers in the budgeted selection.
            ``"global"``: the raw salience (per parameter) of every block competes in one ranking,
            as in the paper. ``"layer"``: every layer's unit and neuron scores are first rescaled
            to the same mean salience per parameter (`aptune.blocks.layer_balanced_scores`), so the
            ranking compares importance within a layer. ``"site"``: every attention site's unit
            scores and every FFN site's neuron scores are rescaled to the same median
            (`aptune.blocks.site_median_scores`). On SmolLM2-135M (one-shot, BBC News) neither
            beat ``"global"`` at density 0.7; ``"site"`` did at 0.85
            (benchmarks/results/smollm2-selection.md).
        pretune_prune: Prune once before tuning, from a calibration pass with forward and backward
            (the paper's LLaMA mode), down to ``pretune_density``; the cubic schedule then continues
            from there to ``target_density`` during tuning with the running salience. ``None``:
            the family default, on for decoders (the authors' LLaMA recipe), off for encoders and
            encoder-decoders (they start the cubic schedule from density 1). Setting
            ``pretune_density`` turns it on.
        pretune_density: Density of the one-shot pruning before tuning, in
            ``[target_density, 1]``. ``None``: ``target_density``, everything is pruned before
            tuning and the events during tuning only grow adapter ranks. The authors' LLaMA script
            prunes half of what is to be removed before tuning and the rest during tuning
            (``1 - (1 - target_density) / 2``: 0.85 on the way to 0.7, 0.7 on the way to 0.4);
            on SmolLM2-135M at 0.7 after 300 steps (benchmarks/results/smollm2-bbc-300steps.md)
            that did worse on BBC dev on both seeds (perplexity 36.5 / 36.8 against 34.8 / 34.2),
            so it is an option (``pretune_density=0.85``), not the default. A density above the
            target is needed for settings that act on pruning during tuning (gradual hidden
            dimensions, ``tuning_damage_curves``, ``distill``).
        pretune_rounds: Rounds of the pruning before tuning. Round ``r`` of ``R`` runs the
            calibration pass through the model the rounds before it have pruned, scores afresh and
            prunes to ``1 - (1 - d) * r / R`` (``d``: the pretune density), so the blocks that stay
            are judged in the network they will work in. Every round passes over all calibration
            examples, so R rounds cost up to R calibration passes (less, as the model shrinks).
            ``None``: 1 (the paper's single pass). Probe on SmolLM2-135M (one-shot to 0.7, no
            tuning, BBC dev perplexity, dense 29.1): 88.8 in one pass, 79.2 in 2 rounds, 76.9 in 4;
            the late layers keep more FFN neurons (benchmarks/results/smollm2-selection.md).
        damage_curves: Pruning before tuning: points of the measured damage curve of every attention
            and FFN site (`aptune.damage`), 0 for none. Per site, the loss on the first
            ``damage_batches`` calibration batches is measured with its lowest-salience blocks removed
            at the fractions ``1/n, 2/n, ..., 1`` of the site (every other site intact); read over
            the salience mass removed, the curve's convex hull gives a loss per unit of salience
            on each stretch, and every block scores that times its salience, so the blocks compete
            by measured damage per parameter across sites and by salience within a site. This judges
            by the loss how much each layer can lose, where the one-pass salience underrates the
            damage of removing many blocks of one layer together. It costs ``1 + n x (FFN sites) +
            min(n, units) x (attention sites)`` forward passes over those batches per round; hidden
            dimensions then stay for the pruning during tuning. ``None``: 4 for decoders, 0 (off)
            otherwise. Probe on SmolLM2-135M (one-shot, no tuning, BBC dev perplexity, dense 29.1),
            4 points against the one-pass salience: 40.4 against 50.3 at density 0.85, 70.0 against
            88.8 at 0.7; LLM-Pruner's hand-set layer recipe gives 40.8 and 70.3
            (benchmarks/results/smollm2-selection.md). With a ``selection_scale`` other than
            ``"global"`` set, the default is 0.
        damage_batches: Calibration batches the damage curves are measured on (forward only); under
            data parallelism every process measures its own first ones and the losses are averaged.
        tuning_damage_curves: Rank the heads and neurons by measured damage curves at the pruning
            events during tuning too, not only before it. The curves are measured on the current
            model (adapters included) with the first ``damage_batches`` batches of the calibration
            pass, which the controller keeps (and a checkpoint saves) for this; the running salience
            orders the blocks inside each site. Hidden dimensions stay at those events (their
            salience is not on the curves' loss scale) unless ``hidden_damage_curve``. Needs pruning
            before tuning, damage curves and no distillation (the curves use hard masks,
            distillation's windows soft ones). Each
            event that removes blocks costs the forward passes of one set of curves. Off by
            default: the running salience alone decides during tuning (the paper).
        hidden_damage_curve: Let the hidden dimensions compete at the pruning events during tuning by
            a measured loss rather than by the scale of their salience. The loss increase of
            removing the lowest-salience hidden dimensions from every layer is measured at counts
            that halve from ``1 - target_density`` of them down (`aptune.damage.hidden_curve_counts`,
            ``damage_curves`` points, 4 when that is 0) on the calibration batches the controller
            keeps. With ``tuning_damage_curves`` every block is then on that loss scale (each hidden
            dimension scores its stretch's hull slope times its salience); without it, the heads
            and neurons keep their running salience, and a second curve, the loss of removing the
            blocks the selection ranks lowest at the same parameter amounts, prices every hidden
            dimension at the score per parameter where removing blocks costs as much loss per
            parameter (`aptune.hidden_exchange`; ``2 x points + 1`` forward passes per event; needs
            ``selection_scale="global"``).
            Either way a hidden dimension leaves when removing it is measured to hurt less per
            parameter. Needs ``prune_hidden``, pruning before tuning to a ``pretune_density`` above
            the target (hidden dimensions never leave one-shot) and no distillation;
            ``hidden_salience="norm_weighted"`` gives decoders the best order
            (benchmarks/results/hidden_damage_probe.md). Off by default. On the pretrained
            SmolLM2-135M (no tuning) the pricing keeps every hidden dimension at density 0.85 and
            0.7: they cost 2.1-3.2x the loss per parameter of the heads and neurons ranked lowest
            (benchmarks/results/hidden_exchange_probe.md). During tuning (suite ablation
            ``hidden-damage``, 0.85 before tuning, 300 steps) it kept every hidden dimension at
            each of its six events too: 1.5-3.4x the blocks' loss per parameter, so the export is as large as
            without the option (benchmarks/results/smollm2-bbc-300steps.md).
        calibration_samples: Number of examples of the calibration pass. ``None``: 128 for
            decoders (the authors' LLaMA recipe: 128 batches of 2), 64 otherwise. Under data
            parallelism this is the total over the processes, each calibrating on its share.
        calibration_batch_size: Examples per forward/backward of the calibration pass, each at the
            run's max length. The salience (a product of per-channel sums) is computed per
            micro-batch and then summed, so the split changes the scores somewhat, and dropout is
            active. ``None``: 2 for decoders (the authors' recipe); half the training batch
            otherwise, so that this pass through the dense model stays below the memory of a
            training step of the pruned model (SmolLM2-135M, batch 4 x 128: calibration peak
            2.37 GB in micro-batches of 4, 1.72 GB in micro-batches of 2, training 1.87 GB).
        adapter_targets: Roles that get adapters (``"q"``, ``"k"``, ``"v"``, ``"o"``, ``"up"``,
            ``"gate"``, ``"down"``), in any order: adapters attach in `ADAPTER_ROLES` order.
            ``None``: q, v and FFN-up for encoders, q and v for decoders.
        keep_copy_heads: Causal LMs: keep every attention unit (a KV group under grouped-query
            attention) whose induction score reaches this value, whatever the budget and salience
            say (`aptune.copy_heads`). The score is a unit's best query head's mean attention, on
            random token sequences repeated once, to the token after the earlier occurrence (1: it
            always reads what an in-context copy needs). It is measured once, on the model as it is
            at the first selection, and the units stay protected through every later event.
            ``None`` (default): `DECODER_COPY_HEADS` (0.3) for causal LMs, none otherwise; ``0``:
            no unit is protected. On SmolLM2-135M, 5 of 90 KV groups reach 0.3
            (benchmarks/results/induction_heads_smollm2.md); keeping them lowered APT's BBC dev
            perplexity on both seeds (benchmarks/results/smollm2-bbc-300steps.md).
        min_heads_per_layer: Heads every attention module keeps (0 lets a layer lose all heads;
            the attention sub-layer then contributes only its output bias).
        min_neurons_per_layer: FFN neurons every layer keeps (0 allows removing the whole FFN).
        min_neurons_share: Share of an FFN's width at preparation that every layer keeps (rounded
            up; 0: no floor, 1: no FFN neuron is pruned), taken of the narrowest FFN site so the
            floor fits every layer (every supported family has one FFN width). With
            ``min_neurons_per_layer`` set too, the larger floor applies. On SmolLM2-135M at
            density 0.7, before tuning, the damage curves with every KV group kept thin the
            middle layers' FFN to 313-516 of 1536 neurons and BBC perplexity rises from 68.4 to 83.2; half of
            every FFN kept brings it to 67.6 with the held-out domain at 126.1 (LLM-Pruner's layer
            recipe: 68.1 / 125.0; benchmarks/results/smollm2-selection.md). Not measured after
            tuning yet; off by default.
        neuron_multiple: Every layer keeps a multiple of this many FFN neurons (or all of them):
            each layer's neurons, best first, compete in runs of this length. llama.cpp's prompt
            processing slows down on FFN widths that are not a multiple of 8: on a SmolLM2-shaped
            model (f32 GGUF, 2 threads, a 256-token prompt) a width of 921 took 761 ms against 523 ms
            at 920 and 655 ms at the dense 1,536, while the time per generated token did not change
            (benchmarks/results/llama_cpp_ffn_width.md); SmolLM2-135M pruned to 0.7 in the uniform
            layout processes a 256-token prompt in 0.68x of the dense model's time with 8, 0.89x
            without (generation_speed_neuron_multiple.md). 1 (the default): neurons compete one by
            one; 8 for models served by llama.cpp.
        min_hidden: Hidden dimensions always kept.
        seed: Seed of the teacher-layer sampling and of new adapter rows.
        layout: ``"free"``: every layer keeps its own number of heads and FFN neurons (the export
            loads in transformers through a small loader file). ``"uniform"``: every layer keeps the
            same number of attention units (KV groups for GQA) and FFN neurons, each layer its most
            salient ones, so decoders export as a stock config folder that serving engines load.
        uniform_heads: How many attention units every layer keeps in the uniform layout.
            ``"salience"``: the knapsack decides, slice by slice, by salience per parameter.
            ``"measured"``: at the pruning before tuning, the selection is repeated with every floor
            from ``min_heads_per_layer`` up to all units, the loss of each candidate is measured on
            the first ``damage_batches`` calibration batches, and the lowest wins; its units are then
            protected for the rest of the run. Needs pruning before tuning. ``None`` (default):
            ``"measured"`` for a causal LM in the uniform layout that prunes before tuning,
            ``"salience"`` otherwise (`AptConfig.uniform_heads_choice`). On SmolLM2-135M at density
            0.7 the measurement keeps every head, which ended lower on BBC dev on both seeds than
            the salience's 6 of 9 heads (benchmarks/results/smollm2-bbc-300steps.md).
        hidden_salience: How hidden dimensions are scored. ``"block_inputs"``: activation x
            gradient at the inputs of the q, k, v and FFN up (and gate) projections, summed over
            them (the gradient into the attention and FFN blocks only, the paper's definition);
            ``"residual"``: at the norm outputs (post-norm) or the sub-layer outputs and embeddings
            (pre-norm), residual path included; ``"norm_weighted"`` (decoders): the order of the
            channels by ``|norm weight| x RMS of the normalised activation`` summed over the norms
            reading the residual stream, scaled to the total of the block-input salience, and never
            pruned one-shot before tuning. ``None``: ``"block_inputs"`` for encoders,
            ``"residual"`` for decoders. Probe on SmolLM2-135M (8 calibration blocks of 128 BBC
            tokens, dev perplexity 29.0 dense, the lowest-scored hidden dims masked, no tuning):
            dropping 28 / 57 of 576 dims gives 41.1 / 70.0 by ``norm_weighted``, 43.0 / 74.6 by
            ``block_inputs``, 47.8 / 225 by ``residual`` (45.8 / 126 with kurtosis), 54.2 at random
            for 28. ``norm_weighted`` stays opt-in: end to end (SmolLM2-135M, BBC, density 0.7 via
            0.85 before tuning, seed 0) no hidden dimension left during tuning, because per
            parameter its lowest score ranked above 89 % of the FFN neurons (steps 50 and 100; the
            scores' total is the block-input salience's, a scale, not a measured damage).
        hidden_cost: Parameters a hidden dimension is charged in the salience-per-parameter order:
            ``"current"`` (from the units and neurons present now, the paper's formula) or
            ``"initial"`` (from the structure at preparation, so that hidden dimensions do not look
            cheaper after heads and neurons are removed). MiniLM-L6 on BBC News at density 0.4 (seed
            0, benchmarks/results/minilm-bbc-hidden.md): ``"initial"`` exports 14.26 M parameters
            instead of 16.33 M at the same test accuracy (96.2 %), with lower dev accuracy (96.8 vs
            98.1 %) and a slower model (0.455x vs 0.427x dense latency).
        lm_loss_chunk: Causal LMs: compute the logits and the cross-entropy this many tokens at a
            time (`aptune.losses`), so the vocabulary logits of a step never exist at once. Steps
            with distillation take the prediction KL in the same blocks, the teacher's logits
            computed per block (`aptune.losses.chunked_causal_lm_distill`). Evaluation with the
            perplexity metric runs in the same blocks (`aptune.losses.chunked_lm_eval`), and so do
            the calibration pass and the damage curves of the pruning before tuning (the same
            loss, so the same decisions). A model wrapped for data parallelism runs through its
            wrapper (`aptune.losses.causal_lm_decoder_output`). ``None``: the model's own loss
            and logits.
        posttune_steps: Length of the post-distillation phase that follows the main run (the
            authors' last phase): the best dev checkpoint among the evaluations after the last
            pruning event (and the final model) is restored, then the model is tuned with the task
            loss only, structure frozen (no pruning, no rank growth, no teacher), on a fresh
            optimizer and a linear schedule that warms up again to ``posttune_lr_scale`` x the
            peak learning rate. An int is a number of optimizer steps, a float in [0, 1] a fraction
            of the main run's steps. ``0``: no such phase (the default). Needs an eval dataset to
            pick the checkpoint; without one the final model is tuned on.
        posttune_lr_scale: Peak learning rate of the post-distillation phase relative to the main
            run's (the authors: 0.1).
        posttune_warmup: Share of the post-distillation phase spent warming the learning rate up
            (the authors: 0.06).
    """

    target_density: float = field(
        default=0.4, metadata={"help": "Fraction of backbone parameters kept, in (0, 1]."}
    )
    initial_rank: int = field(default=8, metadata={"help": "Initial adapter rank."})
    max_rank: int = field(default=64, metadata={"help": "Maximum adapter rank reached by growth."})
    lora_scaling: float = field(default=2.0, metadata={"help": "Fixed adapter scaling s (paper: 2)."})
    budget_growth: float = field(
        default=4.0, metadata={"help": "Final / initial trainable adapter parameters."}
    )
    rank_allocation: str = field(default="salience", metadata={"help": "salience | uniform | static."})
    event_optimizer_state: str = field(
        default="zeros",
        metadata={
            "help": "Optimizer state at events: zeros (grown entries start at zero) | mean (their "
            "tensor's mean second moment; steadier at high rates) | reset (cleared, as the authors)."
        },
    )
    salience_beta: float = field(default=0.85, metadata={"help": "EMA factor of salience scores."})
    use_kurtosis: bool | None = field(
        default=None, metadata={"help": "Outlier-aware kurtosis term; default on for decoders only."}
    )
    prune_hidden: bool = field(default=True, metadata={"help": "Let hidden dimensions be pruned."})
    num_events: int = field(default=6, metadata={"help": "Number of pruning events."})
    prune_start: float | int = field(
        default=0.05, metadata={"help": "First scoring step (fraction or step)."}
    )
    prune_end: float | int = field(default=0.4, metadata={"help": "Last pruning event (fraction or step)."})
    density_warmup: float | int = field(
        default=0.05, metadata={"help": "Delay after prune_start before density drops (fraction or steps)."}
    )
    mask_window: float | int | None = field(
        default=None, metadata={"help": "Soft-mask window before each event (fraction or steps)."}
    )
    mask_step: float | None = field(default=None, metadata={"help": "Per-step soft-mask change."})
    distill: bool = field(
        default=False, metadata={"help": "Self-distillation from the model's own snapshot (off: see docs)."}
    )
    distill_teacher: str = field(
        default="events",
        metadata={"help": "Teacher: 'events' (before each pruning window), 'initial' (before any pruning)."},
    )
    distill_end: float | int = field(
        default=0.7, metadata={"help": "End of distillation (fraction or step)."}
    )
    distill_rank_growth: bool = field(
        default=False, metadata={"help": "Grow the distillation transform's rank with the adapters."}
    )
    alpha_pred: float = field(default=0.1, metadata={"help": "Weight of the prediction KL term."})
    alpha_layer: float = field(default=0.9, metadata={"help": "Weight of the layer MSE term."})
    temperature: float = field(default=2.0 / 3.0, metadata={"help": "Distillation softmax temperature."})
    kl_scale: float = field(
        default=10.0, metadata={"help": "KL factor, per-example predictions (classification, QA)."}
    )
    token_kl_scale: float = field(
        default=1.0, metadata={"help": "KL factor, token-level predictions (LM, seq2seq)."}
    )
    num_teacher_layers: int = field(default=4, metadata={"help": "Teacher layers matched per step."})
    layer_mapping: str = field(default="nearest", metadata={"help": "nearest | same."})
    selection_scale: str = field(
        default="global",
        metadata={"help": "global | layer | site (scores rescaled per layer / site before ranking)."},
    )
    pretune_prune: bool | None = field(
        default=None,
        metadata={"help": "One-shot pruning to pretune_density before tuning (default: decoders only)."},
    )
    pretune_density: float | None = field(
        default=None,
        metadata={
            "help": "Density of the pruning before tuning, in [target_density, 1] "
            "(default: target_density; the authors' LLaMA script: 1 - (1 - target_density) / 2)."
        },
    )
    pretune_rounds: int | None = field(
        default=None,
        metadata={
            "help": "Rounds of the pruning before tuning, each after a new calibration pass (default 1)."
        },
    )
    damage_curves: int | None = field(
        default=None,
        metadata={
            "help": "Points of the measured damage curve per site before tuning (0: off; default 4 for "
            "decoders, 0 otherwise)."
        },
    )
    damage_batches: int = field(
        default=2, metadata={"help": "Calibration batches the damage curves are measured on."}
    )
    tuning_damage_curves: bool = field(
        default=False,
        metadata={
            "help": "Rank heads and neurons by measured damage curves at the pruning events during "
            "tuning too (needs pruning before tuning, damage curves and no distillation)."
        },
    )
    hidden_damage_curve: bool = field(
        default=False,
        metadata={
            "help": "Hidden dimensions compete at the pruning events during tuning by a measured damage "
            "curve (needs prune_hidden, pruning before tuning above the target, no distillation)."
        },
    )
    calibration_samples: int | None = field(
        default=None,
        metadata={"help": "Examples in the calibration pass (default: 128 for decoders, 64 otherwise)."},
    )
    calibration_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Calibration micro-batch at the run's max length (default: 2 for decoders, "
            "half the training batch otherwise)."
        },
    )
    adapter_targets: tuple[str, ...] | None = field(
        default=None, metadata={"help": "Roles with adapters (q,k,v,o,up,gate,down)."}
    )
    keep_copy_heads: float | None = field(
        default=None,
        metadata={
            "help": "Keep every attention unit whose induction (in-context copying) score reaches "
            "this value (causal LMs; default: 0.3; 0: none)."
        },
    )
    min_heads_per_layer: int = field(default=0, metadata={"help": "Heads every attention module keeps."})
    min_neurons_per_layer: int = field(default=0, metadata={"help": "FFN neurons every layer keeps."})
    min_neurons_share: float = field(
        default=0.0,
        metadata={"help": "Share of every FFN's initial width each layer keeps (0: no floor; e.g. 0.5)."},
    )
    neuron_multiple: int = field(
        default=1,
        metadata={"help": "Every layer keeps a multiple of this many FFN neurons (8 suits llama.cpp)."},
    )
    min_hidden: int = field(default=1, metadata={"help": "Hidden dimensions always kept."})
    seed: int = field(default=0, metadata={"help": "Seed of teacher sampling and new adapter rows."})
    layout: str = field(
        default="free", metadata={"help": "free | uniform (same heads and FFN width in every layer)."}
    )
    uniform_heads: str | None = field(
        default=None,
        metadata={
            "help": "salience | measured: the uniform layout's units per layer (measured: by loss; "
            "default: measured for decoders, salience otherwise)."
        },
    )
    hidden_salience: str | None = field(
        default=None,
        metadata={"help": "block_inputs | residual | norm_weighted (default: block_inputs for encoders)."},
    )
    hidden_cost: str = field(default="current", metadata={"help": "current | initial hidden-dim cost."})
    lm_loss_chunk: int | None = field(
        default=None, metadata={"help": "Tokens per logits block of the causal-LM loss (None: full)."}
    )
    posttune_steps: float | int = field(
        default=0,
        metadata={
            "help": "Post-distillation tuning after the run from the best dev checkpoint "
            "(steps, or fraction of the run; 0: off)."
        },
    )
    posttune_lr_scale: float = field(
        default=0.1, metadata={"help": "Peak LR of the post-distillation phase / the run's peak LR."}
    )
    posttune_warmup: float = field(
        default=0.06, metadata={"help": "Share of the post-distillation phase spent in LR warm-up."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.adapter_targets, list):
            self.adapter_targets = tuple(self.adapter_targets)
        self.validate()
        if self.adapter_targets is not None:
            # a set of roles: one order (and no repeats), so that equal choices give equal runs
            self.adapter_targets = tuple(r for r in ADAPTER_ROLES if r in self.adapter_targets)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field; raise `ConfigError` naming the first bad one.

        Raises:
            ConfigError: a value is out of range, of the wrong type, or inconsistent.
        """

        def bad(name: str, why: str) -> None:
            raise ConfigError(f"AptConfig.{name}={getattr(self, name)!r} is invalid: {why}")

        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                bad(name, "expected a finite number")
            return float(value)

        def integer(name: str, low: int) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                bad(name, "expected an integer")
            if value < low:
                bad(name, f"must be >= {low}")
            return value

        density = number("target_density")
        if not 0.0 < density <= 1.0:
            bad("target_density", "must lie in (0, 1]; e.g. 0.4 keeps 40 % of the backbone parameters")
        integer("initial_rank", 1)
        if integer("max_rank", 1) < self.initial_rank:
            bad("max_rank", f"must be >= initial_rank ({self.initial_rank})")
        if number("lora_scaling") <= 0:
            bad("lora_scaling", "must be > 0")
        if number("budget_growth") < 1.0:
            bad("budget_growth", "must be >= 1 (1 keeps the adapter budget constant)")
        if self.rank_allocation not in _RANK_ALLOCATIONS:
            bad("rank_allocation", f"choose one of {', '.join(_RANK_ALLOCATIONS)}")
        if self.distill_teacher not in _DISTILL_TEACHERS:
            bad("distill_teacher", f"choose one of {', '.join(_DISTILL_TEACHERS)}")
        if self.event_optimizer_state not in _EVENT_OPTIMIZER_STATES:
            bad("event_optimizer_state", f"choose one of {', '.join(_EVENT_OPTIMIZER_STATES)}")
        if not 0.0 <= number("salience_beta") < 1.0:
            bad("salience_beta", "must lie in [0, 1)")
        if self.use_kurtosis is not None and not isinstance(self.use_kurtosis, bool):
            bad("use_kurtosis", "expected true, false or null")
        integer("num_events", 1)
        for name in _SCHEDULE_POINTS:
            value = getattr(self, name)
            if name == "mask_window" and value is None:
                continue
            if not _is_schedule_point(value):
                bad(name, "expected a fraction of the run in [0, 1] (float) or a step number >= 0 (int)")
        if isinstance(self.prune_start, float) and isinstance(self.prune_end, float):
            if self.prune_end <= self.prune_start:
                bad("prune_end", f"must come after prune_start ({self.prune_start})")
            if isinstance(self.distill_end, float) and self.distill_end < self.prune_end:
                bad("distill_end", f"must not come before prune_end ({self.prune_end})")
        if (
            isinstance(self.prune_start, int)
            and isinstance(self.prune_end, int)
            and self.prune_end <= self.prune_start
        ):
            bad("prune_end", f"must come after prune_start ({self.prune_start})")
        if self.mask_step is not None and not 0.0 < number("mask_step") <= 1.0:
            bad("mask_step", "must lie in (0, 1]")
        for name in ("alpha_pred", "alpha_layer", "kl_scale", "token_kl_scale"):
            if number(name) < 0:
                bad(name, "must be >= 0")
        if number("temperature") <= 0:
            bad("temperature", "must be > 0")
        integer("num_teacher_layers", 1)
        if self.layer_mapping not in _LAYER_MAPPINGS:
            bad("layer_mapping", f"choose one of {', '.join(_LAYER_MAPPINGS)}")
        if self.selection_scale not in _SELECTION_SCALES:
            bad("selection_scale", f"choose one of {', '.join(_SELECTION_SCALES)}")
        if self.calibration_samples is not None:
            integer("calibration_samples", 1)
        if self.calibration_batch_size is not None:
            integer("calibration_batch_size", 1)
        if self.adapter_targets is not None:
            roles = ", ".join(ADAPTER_ROLES)
            if not isinstance(self.adapter_targets, tuple) or not self.adapter_targets:
                bad("adapter_targets", f"expected a non-empty list of roles from {roles}")
            unknown = [r for r in self.adapter_targets if r not in ADAPTER_ROLES]
            if unknown:
                bad("adapter_targets", f"unknown role(s) {unknown}; choose from {roles}")
        if self.keep_copy_heads is not None and not 0.0 <= number("keep_copy_heads") <= 1.0:
            bad("keep_copy_heads", "must lie in [0, 1] (0: no protected unit), or be None for the default")
        integer("min_heads_per_layer", 0)
        integer("min_neurons_per_layer", 0)
        if not 0.0 <= number("min_neurons_share") <= 1.0:
            bad("min_neurons_share", "must lie in [0, 1]; e.g. 0.5 keeps half of every layer's FFN")
        integer("neuron_multiple", 1)
        integer("min_hidden", 1)
        integer("seed", 0)
        if self.layout not in _LAYOUTS:
            bad("layout", f"choose one of {', '.join(_LAYOUTS)}")
        if self.uniform_heads is not None and self.uniform_heads not in _UNIFORM_HEADS:
            bad("uniform_heads", f"choose one of {', '.join(_UNIFORM_HEADS)}")
        if self.hidden_salience is not None and self.hidden_salience not in _HIDDEN_SALIENCES:
            bad("hidden_salience", f"choose one of {', '.join(_HIDDEN_SALIENCES)} (or null)")
        if self.hidden_cost not in _HIDDEN_COSTS:
            bad("hidden_cost", f"choose one of {', '.join(_HIDDEN_COSTS)}")
        if self.lm_loss_chunk is not None:
            integer("lm_loss_chunk", 1)
        if not _is_schedule_point(self.posttune_steps):
            bad(
                "posttune_steps",
                "expected a number of steps >= 0 (int) or a fraction of the run in [0, 1] (float); 0 turns "
                "the post-distillation phase off",
            )
        if not 0.0 < number("posttune_lr_scale") <= 1.0:
            bad("posttune_lr_scale", "must lie in (0, 1]; the authors use 0.1")
        if not 0.0 <= number("posttune_warmup") < 1.0:
            bad("posttune_warmup", "must lie in [0, 1); the authors use 0.06")
        for name in (
            "prune_hidden",
            "distill",
            "distill_rank_growth",
            "tuning_damage_curves",
            "hidden_damage_curve",
        ):
            if not isinstance(getattr(self, name), bool):
                bad(name, "expected true or false")
        if self.pretune_prune is not None and not isinstance(self.pretune_prune, bool):
            bad("pretune_prune", "expected true, false or null")
        if self.pretune_rounds is not None:
            integer("pretune_rounds", 1)
        if self.damage_curves is not None:
            integer("damage_curves", 0)
        integer("damage_batches", 1)
        if self.damage_curves and self.selection_scale != "global":
            bad(
                "damage_curves",
                f"cannot be combined with selection_scale={self.selection_scale!r}: the curves already put "
                "every site on the loss scale; use selection_scale='global'",
            )
        if self.tuning_damage_curves and self.distill:
            bad(
                "tuning_damage_curves",
                "measures its curves with hard masks, which distillation's soft-mask windows cannot share; "
                "set distill=false (--no-distill) or drop tuning_damage_curves",
            )
        if self.tuning_damage_curves and (self.damage_curves == 0 or self.pretune_prune is False):
            bad(
                "tuning_damage_curves",
                "needs damage curves (damage_curves > 0) and pruning before tuning (pretune_prune)",
            )
        if self.uniform_heads == "measured" and (self.layout != "uniform" or self.pretune_prune is False):
            bad(
                "uniform_heads",
                "measures the uniform layout's candidates at the pruning before tuning; set "
                "layout='uniform' and pretune_prune=true, or use 'salience'",
            )
        if self.hidden_damage_curve and not self.prune_hidden:
            bad(
                "hidden_damage_curve",
                "prices hidden dimensions for removal; set prune_hidden=true or drop it",
            )
        if self.hidden_damage_curve and self.selection_scale != "global":
            bad(
                "hidden_damage_curve",
                f"prices hidden dimensions on the global salience-per-parameter scale, which "
                f"selection_scale={self.selection_scale!r} rescales; use selection_scale='global'",
            )
        if self.hidden_damage_curve and self.distill:
            bad(
                "hidden_damage_curve",
                "measures its curves with hard masks, which distillation's soft-mask windows cannot share; "
                "set distill=false (--no-distill) or drop hidden_damage_curve",
            )
        if self.hidden_damage_curve and self.pretune_prune is False:
            bad(
                "hidden_damage_curve",
                "measures its curves on batches of the calibration pass before tuning; set pretune_prune "
                "and a pretune_density above target_density, or drop hidden_damage_curve",
            )
        if self.pretune_density is not None:
            if not density <= number("pretune_density") <= 1.0:
                bad(
                    "pretune_density",
                    f"must lie in [target_density, 1] = [{density}, 1]: the one-shot pruning before tuning "
                    "cannot go below the final density; lower target_density or raise pretune_density",
                )
            if self.pretune_prune is False:
                bad(
                    "pretune_density",
                    "is set while pretune_prune is false; drop pretune_density or set pretune_prune",
                )

    # ------------------------------------------------------------------ family defaults
    def pretune_target(self, is_decoder: bool) -> float | None:
        """Density of the one-shot pruning before tuning for this model family, or None for none.

        Args:
            is_decoder: Whether the model is a decoder LM (`aptune.arch.ModelLayout.is_decoder`).

        Returns:
            ``pretune_density`` when set; else, when pruning before tuning is on (``pretune_prune``
            true, or None on a decoder), ``target_density``; None when it is off or there is
            nothing to prune (``target_density`` 1).
        """
        enabled = self.pretune_prune
        if enabled is None:
            enabled = is_decoder or self.pretune_density is not None
        if not enabled or self.target_density >= 1.0:
            return None
        if self.pretune_density is not None:
            return float(self.pretune_density)
        return float(self.target_density)

    def copy_heads_threshold(self, is_decoder: bool) -> float | None:
        """Induction score that protects an attention unit for this model family, or None for none.

        Args:
            is_decoder: Whether the model is a decoder LM (`aptune.arch.ModelLayout.is_decoder`).

        Returns:
            ``keep_copy_heads`` (`DECODER_COPY_HEADS` when None) on a decoder, unless it is 0; None
            on other models.
        """
        value = DECODER_COPY_HEADS if self.keep_copy_heads is None else float(self.keep_copy_heads)
        return value if is_decoder and value > 0.0 else None

    def uniform_heads_choice(self, is_decoder: bool) -> str:
        """How the uniform layout chooses its units per layer for this model family.

        Args:
            is_decoder: Whether the model is a decoder LM.

        Returns:
            ``uniform_heads`` when set; else ``"measured"`` for a decoder in the uniform layout
            that prunes before tuning, ``"salience"`` otherwise.
        """
        return resolve_uniform_heads(
            self.uniform_heads, self.layout, is_decoder, self.pretune_target(is_decoder) is not None
        )

    def calibration_plan(self, is_decoder: bool, train_batch_size: int) -> tuple[int, int]:
        """Examples and micro-batch size of the calibration pass for this model family.

        Args:
            is_decoder: Whether the model is a decoder LM.
            train_batch_size: Examples per training batch (the encoders' micro-batch is half of it).

        Returns:
            ``(calibration_samples, micro_batch)``, each resolved from its family default when None.
        """
        samples = self.calibration_samples
        if samples is None:
            samples = 128 if is_decoder else 64
        micro = self.calibration_batch_size
        if micro is None:
            micro = 2 if is_decoder else max(1, train_batch_size // 2)
        return samples, micro

    def damage_curve_points(self, is_decoder: bool) -> int:
        """Points of the damage curves of the pruning before tuning for this model family.

        Args:
            is_decoder: Whether the model is a decoder LM.

        Returns:
            ``damage_curves``, resolved from its family default (4 for decoders, 0 otherwise) when None.
        """
        if self.damage_curves is not None:
            return self.damage_curves
        return 4 if is_decoder and self.selection_scale == "global" else 0

    def posttune_length(self, main_steps: int) -> int:
        """Optimizer steps of the post-distillation phase after a main run of ``main_steps``.

        Args:
            main_steps: Optimizer steps of the main run.

        Returns:
            ``posttune_steps`` for an int, ``round(posttune_steps * main_steps)`` for a float; 0 when
            the phase is off.
        """
        if isinstance(self.posttune_steps, float):
            return round(self.posttune_steps * main_steps)
        return int(self.posttune_steps)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict including ``format_version``."""
        data = dataclasses.asdict(self)
        if data["adapter_targets"] is not None:
            data["adapter_targets"] = list(data["adapter_targets"])
        return {"format_version": CONFIG_FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AptConfig:
        """Build a config from `to_dict` output.

        A dict of an older format version means what it meant when it was written
        (`upgrade_config_dict`).

        Raises:
            ConfigError: unknown keys, or a format version this aptune cannot read.
        """
        data = upgrade_config_dict(data)
        data.pop("format_version")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"AptConfig got unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            write_text_atomic(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> AptConfig:
        """Read a config from a JSON string or a path to a JSON file.

        Raises:
            ConfigError: the file is missing, not JSON, or holds invalid values.
        """
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError("config JSON must be an object")
        return cls.from_dict(data)


def upgrade_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of an `AptConfig.to_dict` dict in the current format version, with the same meaning.

    Version 1 wrote ``keep_copy_heads`` None (or, before the option existed, nothing) for "no
    protected unit"; version 2 reads None as the family default, so a version-1 dict gets 0.
    Versions 1 and 2 wrote ``uniform_heads`` "salience" (or, before the option existed, nothing),
    whatever the family; version 3 reads None as the family default, so such a dict in the uniform
    layout gets "salience" (in the free layout the field is not read, and becomes None). A dict
    without ``format_version`` is taken as the current version. Fields are not checked here.

    Raises:
        ConfigError: a format version this aptune cannot read.
    """
    data = dict(data)
    version = data.get("format_version", CONFIG_FORMAT_VERSION)
    if version not in READABLE_CONFIG_VERSIONS:
        raise ConfigError(
            f"AptConfig format_version {version!r} is not supported (this aptune reads "
            f"{', '.join(map(str, READABLE_CONFIG_VERSIONS))}); re-create the config with this version "
            "of aptune"
        )
    if version == 1 and data.get("keep_copy_heads") is None:
        data["keep_copy_heads"] = 0.0
    if version in (1, 2):
        # only the uniform layout reads the field; elsewhere the family default means the same
        uniform = data.get("layout") == "uniform"
        data["uniform_heads"] = (data.get("uniform_heads") or "salience") if uniform else None
    data["format_version"] = CONFIG_FORMAT_VERSION
    return data


def resolve_uniform_heads(uniform_heads: str | None, layout: str, is_decoder: bool, pretunes: bool) -> str:
    """The uniform layout's way of choosing units per layer that a setting resolves to.

    Args:
        uniform_heads: `AptConfig.uniform_heads` (None: the family default).
        layout: `AptConfig.layout`.
        is_decoder: Whether the model is a decoder LM.
        pretunes: Whether the run prunes before tuning (`AptConfig.pretune_target` is not None).

    Returns:
        ``uniform_heads`` when set; else ``"measured"`` for a decoder in the uniform layout that
        prunes before tuning, ``"salience"`` otherwise.
    """
    if uniform_heads is not None:
        return uniform_heads
    return "measured" if is_decoder and layout == "uniform" and pretunes else "salience"
