"""Hidden dimensions priced against heads and neurons by measured loss, at the events during tuning.

At a pruning event during tuning the heads and neurons compete by running salience per parameter;
a hidden dimension's score is on a scale of its own (`aptune.config.AptConfig.hidden_salience`), so
how many hidden dimensions leave depends on a convention rather than on what removing them costs.
With `aptune.config.AptConfig.hidden_damage_curve` (and the running salience deciding for the
heads and neurons), two curves are measured once per event on calibration batches kept from the pass
before tuning:

* the **block curve**: the loss increase when the heads and neurons the selection ranks lowest
  (salience per parameter, floors respected) are removed, at the parameter amounts below, and for
  each stretch between two points the *threshold* at its middle, the highest score per parameter
  among the blocks the selection removes there (no forward pass needed);
* the **hidden curve**: the loss increase when the lowest-salience hidden dimensions are removed from
  every layer, at counts that halve from ``1 - target_density`` of them down
  (`aptune.damage.hidden_curve_counts`), i.e. at the same parameter amounts.

The hidden curve read over the salience mass removed gives every hidden dimension a loss, and per
parameter it removes a marginal loss ``m`` (`aptune.damage` reads the heads' and neurons' site curves
the same way). The block curve gives the blocks' marginal loss per parameter at each threshold. A
hidden dimension then scores the threshold at which the blocks' marginal loss per parameter equals
its ``m`` (interpolated between the measured points, proportional beyond them), times the parameters
it is charged: in the selection it sits exactly among the blocks whose removal costs as much per
parameter. Cost: ``2 x points + 1`` forward passes over the kept batches per event.

`exchange_thresholds` and `hidden_exchange_scores` are pure and tested on synthetic curves;
`hidden_exchange_ranking` measures the curves through a ``loss_of(keep)`` callable, which
`aptune.controller.AptController` supplies (forward passes with hard masks).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from aptune.damage import curve_reading, hull_slopes
from aptune.scores import Salience, flat_score_vectors
from aptune.select import KeepSet

if TYPE_CHECKING:
    from aptune.blocks import BlockBook
    from aptune.config import AptConfig

__all__ = ["exchange_thresholds", "hidden_exchange_ranking", "hidden_exchange_scores"]


def hidden_exchange_ranking(
    salience: Salience,
    blocks: BlockBook,
    config: AptConfig,
    hidden_counts: Sequence[int],
    loss_of: Callable[[KeepSet | None], float],
) -> tuple[Salience, dict]:
    """Measure both curves and price the hidden dimensions (see the module docstring).

    Args:
        salience: The running salience (heads and neurons are returned unchanged; the hidden
            scores order the hidden dimensions).
        blocks: The blocks now present (costs, parameter count, the selection).
        config: The run's config (floors, layout and ``hidden_cost`` of the selection).
        hidden_counts: Increasing numbers of hidden dimensions removed at the hidden curve's points
            (`aptune.damage.hidden_curve_counts`), each below the hidden size.
        loss_of: Loss with the blocks outside a keep-set removed (``None``: intact).

    Returns:
        ``(ranking, curves)``: the salience with the priced hidden scores (hidden scores None, so
        that the hidden dimensions stay, when no head or neuron can be removed to compare with),
        and the measurements: ``hidden_counts``, ``hidden`` (loss increases), ``block_params``,
        ``blocks`` (loss increases) and ``block_thresholds``.
    """
    hidden_size = blocks.hidden_size
    heads, neurons, hidden = flat_score_vectors(
        salience, blocks.unit_counts(), blocks.neuron_counts(), hidden_size
    )
    head_costs, neuron_costs = blocks.costs()
    params_now = blocks.param_count()
    per_hidden = params_now / hidden_size  # the parameters of one hidden dim: sum a + sum c
    charge = blocks.initial_hidden_cost if config.hidden_cost == "initial" else per_hidden
    # score per parameter of every head and neuron, as the selection orders them
    head_density = heads / (head_costs * hidden_size)
    neuron_density = neurons / (neuron_costs * hidden_size)
    order = torch.argsort(hidden.float(), stable=True)  # lowest salience first
    every_head = torch.ones(heads.numel(), dtype=torch.bool)
    every_neuron = torch.ones(neurons.numel(), dtype=torch.bool)

    def blocks_without(amount: float) -> KeepSet:
        """The selection's keep-set with ``amount`` parameters of heads and neurons removed."""
        return blocks.select(
            (heads, neurons, hidden), (params_now - amount) / blocks.initial_params, config, False
        )

    def threshold(keep: KeepSet) -> float:
        """The highest score per parameter among the blocks ``keep`` removes."""
        removed = torch.cat([head_density[~keep.heads.cpu()], neuron_density[~keep.neurons.cpu()]])
        return float(removed.max()) if removed.numel() else 0.0

    block_params: list[float] = []
    block_damages: list[float] = []
    thresholds: list[float] = []
    hidden_damages: list[float] = []
    base = loss_of(None)
    for count in hidden_counts:
        keep = blocks_without(count * per_hidden)
        removed_params = params_now - float(keep.params)
        if removed_params > (block_params[-1] if block_params else 0.0):  # floors may stop the blocks
            block_damages.append(loss_of(keep) - base)
            # a stretch's slope is the marginal loss at its middle: pair it with the threshold there
            middle = ((block_params[-1] if block_params else 0.0) + removed_params) / 2
            thresholds.append(threshold(blocks_without(middle)))
            block_params.append(removed_params)
        kept = torch.ones(hidden_size, dtype=torch.bool)
        kept[order[:count]] = False
        hidden_damages.append(
            loss_of(KeepSet(heads=every_head, neurons=every_neuron, hidden=kept, params=0.0)) - base
        )
    curves = {
        "hidden_counts": list(hidden_counts),
        "hidden": hidden_damages,
        "block_params": block_params,
        "blocks": block_damages,
        "block_thresholds": thresholds,
    }
    if not hidden_counts or not block_params:  # nothing to compare with: the hidden dims stay
        return Salience(salience.heads, salience.neurons, None), curves
    priced = hidden_exchange_scores(
        hidden, hidden_counts, hidden_damages, per_hidden, charge, block_params, block_damages, thresholds
    )
    return Salience(salience.heads, salience.neurons, priced), curves


def exchange_thresholds(
    marginal: torch.Tensor,
    block_params: Sequence[float],
    block_damages: Sequence[float],
    block_thresholds: Sequence[float],
) -> torch.Tensor:
    """The block score per parameter at which removing blocks costs ``marginal`` loss per parameter.

    Args:
        marginal: Loss per parameter to price (any shape, >= 0).
        block_params: Increasing parameter amounts removed at the block curve's points.
        block_damages: Loss increase measured at each (clipped at 0 and made non-decreasing here).
        block_thresholds: Per stretch of the curve (from the point before, or 0, to each point), the
            highest score per parameter among the blocks removed at its middle, where the stretch's
            slope is the marginal loss.

    Returns:
        Thresholds, the shape of ``marginal``: piecewise linear in the marginal loss through
        ``(0, 0)`` and ``(slope_j, threshold_j)`` per stretch ``j`` of the curve's lower convex hull,
        and proportional (``threshold_last / slope_last``) beyond the last point. When removing the
        blocks cost nothing measurable (every slope 0), any positive marginal loss prices above the
        last threshold (twice it) and 0 prices at 0.
    """
    damages = torch.tensor(list(block_damages), dtype=torch.float64).clamp(min=0).cummax(0).values
    slopes = hull_slopes(list(block_params), damages.tolist())
    thresholds = torch.tensor(list(block_thresholds), dtype=torch.float64).cummax(0).values.tolist()
    query = marginal.detach().double().cpu().clamp(min=0)
    last_slope, last_threshold = slopes[-1], thresholds[-1]
    if last_slope <= 0:
        return torch.where(query > 0, 2.0 * last_threshold, 0.0).to(marginal.dtype)
    # knots of the piecewise-linear map: only where the hull's slope grows (a flat stretch adds nothing)
    xs, ys = [0.0], [0.0]
    for slope, threshold in zip(slopes, thresholds, strict=True):
        if slope > xs[-1]:
            xs.append(slope)
            ys.append(threshold)
        else:
            ys[-1] = max(ys[-1], threshold)
    out = query * (ys[-1] / xs[-1])  # beyond the last knot: proportional
    for (x0, y0), (x1, y1) in itertools.pairwise(zip(xs, ys, strict=True)):
        inside = (query >= x0) & (query <= x1)
        out = torch.where(inside, y0 + (query - x0) * (y1 - y0) / (x1 - x0), out)
    return out.to(marginal.dtype)


def hidden_exchange_scores(
    hidden_salience: torch.Tensor,
    hidden_counts: Sequence[int],
    hidden_damages: Sequence[float],
    params_per_hidden: float,
    hidden_charge: float,
    block_params: Sequence[float],
    block_damages: Sequence[float],
    block_thresholds: Sequence[float],
) -> torch.Tensor:
    """Hidden scores on the heads' and neurons' scale (see the module docstring).

    Args:
        hidden_salience: Salience of every hidden dimension (orders them, lowest removed first).
        hidden_counts: Increasing numbers of hidden dimensions removed at the hidden curve's points.
        hidden_damages: Loss increase measured at each.
        params_per_hidden: Parameters removing one hidden dimension removes now.
        hidden_charge: Parameters the selection charges a hidden dimension (the divisor of its
            score per parameter, `aptune.config.AptConfig.hidden_cost`).
        block_params: Parameter amounts removed at the block curve's points.
        block_damages: Loss increase measured at each.
        block_thresholds: Per stretch of the block curve, the highest score per parameter among
            the blocks removed at its middle.

    Returns:
        One score per hidden dimension, in the salience order (ties kept).
    """
    order = torch.argsort(hidden_salience.detach().float().cpu(), stable=True)  # lowest first
    loss = curve_reading(hidden_salience, order, hidden_counts, hidden_damages, extend=True)
    marginal = loss.double().cpu() / params_per_hidden
    prices = exchange_thresholds(marginal, block_params, block_damages, block_thresholds)
    return (prices * hidden_charge).float().to(hidden_salience.device)
