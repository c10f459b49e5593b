"""Measured damage curves: how much each site can lose, judged by the loss rather than by salience.

The first-order salience ranks the blocks *within* a site well, but across sites it misjudges how
the damage grows when many blocks of one site go together (on SmolLM2-135M the one-pass ranking
strips 60-70 % of the last layers' FFN, benchmarks/results/smollm2-selection.md). Here every
attention and FFN site gets a damage curve: the loss increase on a few calibration batches when its
lowest-salience blocks are removed at ``points`` fractions of the site (all other sites intact).
The curve is read over the salience mass removed: its lower convex hull gives, per stretch between
two measured points, the loss per unit of salience, and every block scores that slope times its own
salience. The budgeted selection (score per parameter, `aptune.select.select_keep_set`) then compares
measured marginal damage per parameter across sites, while inside a site the salience still decides
block by block, so a site can stop anywhere between two measured points.

The hidden dimensions can get a curve of their own (``hidden_counts``, for the pruning events during
tuning, `aptune.config.AptConfig.hidden_damage_curve`): the loss increase when the lowest-salience
hidden dimensions are removed from every layer at once, read the same way, so that they compete with
heads and neurons by measured loss per parameter rather than by a salience whose scale is a
convention. Its counts grow geometrically (`hidden_curve_counts`): removing hidden dimensions hurts
more and more steeply, and the first ones removed are the ones a gradual schedule decides on.

`damage_curve_scores` is pure: it takes the loss as a callable of a keep-set, so it is tested on
synthetic damage functions; `aptune.controller.AptController.calibrate_and_prune_` supplies the real
one (forward passes with hard masks, `AptConfig.damage_curves`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch

from aptune.scores import Salience
from aptune.select import KeepSet

__all__ = ["curve_counts", "curve_reading", "damage_curve_scores", "hidden_curve_counts", "hull_slopes"]

#: Share of a site's mean salience added to every block, so that blocks of zero salience still
#: move along the curve.
_MASS_FLOOR = 1e-6


def hull_slopes(counts: Sequence[float], damages: Sequence[float]) -> list[float]:
    """Slopes of the lower convex hull of ``(0, 0), (counts[0], damages[0]), ...``, per segment.

    Args:
        counts: Increasing amounts removed (blocks, or salience mass).
        damages: Loss increase at each count.

    Returns:
        For each segment ``(counts[j-1], counts[j]]`` (``counts[-1]`` = 0 before the first), the slope
        (damage per block) of the hull edge over it; non-decreasing.
    """
    points = [(0.0, 0.0), *zip((float(c) for c in counts), (float(d) for d in damages), strict=True)]
    if any(b[0] <= a[0] for a, b in itertools.pairwise(points)):
        raise ValueError(f"counts must increase from above 0: {list(counts)}")
    hull = [points[0]]
    for point in points[1:]:
        # drop the last hull point while it lies on or above the segment from its predecessor to point
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (point[0] - x1) >= (point[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(point)
    slopes = []
    for (x0, _), (x1, _) in itertools.pairwise(points):
        middle = (x0 + x1) / 2
        for (a, ya), (b, yb) in itertools.pairwise(hull):
            if a <= middle <= b:
                slopes.append((yb - ya) / (b - a))
                break
    return slopes


def curve_counts(blocks: int, points: int) -> list[int]:
    """Numbers of blocks removed at which a site of ``blocks`` blocks is measured (the fractions
    ``1/points ... 1``, rounded, at least 1, without repeats)."""
    return sorted({blocks} | {max(1, round(j * blocks / points)) for j in range(1, points + 1)})


def hidden_curve_counts(hidden_size: int, reach: float, points: int) -> list[int]:
    """Numbers of hidden dimensions removed at which the hidden curve is measured.

    Args:
        hidden_size: Hidden dimensions now present.
        reach: Largest share of them the curve removes (e.g. ``1 - target_density``: no budget
            removes more).
        points: Points of the curve.

    Returns:
        Increasing counts that halve from the reach down (``reach x hidden_size``, half of it, a
        quarter, ...), at least 1, without repeats; empty when ``points`` or the reach is 0.
    """
    top = min(hidden_size, round(reach * hidden_size))
    if points <= 0 or top <= 0:
        return []
    return sorted({max(1, round(top / 2**j)) for j in range(points)})


def damage_curve_scores(
    salience: Salience,
    unit_counts: Sequence[int],
    neuron_counts: Sequence[int],
    hidden_size: int,
    loss_of: Callable[[KeepSet | None], float],
    points: int,
    hidden_counts: Sequence[int] = (),
    kept_units: Sequence[torch.Tensor] | None = None,
) -> tuple[Salience, dict]:
    """Scores from measured damage curves (see the module docstring).

    Args:
        salience: Scores that order the blocks inside each site (lowest removed first).
        unit_counts: Attention units per site now present.
        neuron_counts: FFN neurons per site now present.
        hidden_size: Hidden dimensions now present (all kept while measuring).
        loss_of: Loss of the model with the blocks outside a keep-set removed (``None``: intact).
        points: Points per curve (fractions ``1/points .. 1`` of the site; a site with fewer blocks
            is measured at every count).
        hidden_counts: Increasing numbers of hidden dimensions removed at which the hidden curve is
            measured (`hidden_curve_counts`); empty: no hidden curve, hidden scores unchanged.
        kept_units: Per attention site, a bool mask over its units now present of those every
            selection keeps (copying heads, `aptune.blocks.BlockBook.protect_units`), or None for
            none. A site's curve then removes only its other units, lowest salience first, since
            no selection can remove the kept ones: their loss must not price the others. A kept
            unit scores the highest score of its site's other units (its own salience when all
            are kept); the selection keeps it whatever it scores.

    Returns:
        ``(scores, curves)``: the `Salience` whose head and neuron scores (and hidden scores, with
        ``hidden_counts``) are the hull slopes times the salience, and the measured loss increases
        ``{"heads": [...], "neurons": [...]}`` per site and count, plus ``"hidden"`` (one list)
        and ``"hidden_counts"`` with a hidden curve (as measured; the slopes use them clipped at 0
        and made non-decreasing).
    """
    base = loss_of(None)
    counts = (list(unit_counts), list(neuron_counts))
    scored: tuple[list[torch.Tensor | None], list[torch.Tensor | None]] = ([], [])
    curves: tuple[list[list[float]], list[list[float]]] = ([], [])
    for kind, site_scores in enumerate((salience.heads, salience.neurons)):
        for site, score in enumerate(site_scores):
            size = counts[kind][site]
            # the blocks a selection may remove: all but the site's kept units
            removable = torch.ones(size, dtype=torch.bool)
            if kind == 0 and kept_units is not None and kept_units[site] is not None:
                removable = ~kept_units[site].detach().cpu().bool()
            candidates = torch.nonzero(removable).flatten()  # (removable blocks,) indices into the site
            if score is None or candidates.numel() == 0:
                scored[kind].append(score)
                curves[kind].append([])
                continue
            candidate_score = score.detach().float().cpu()[candidates]
            order = torch.argsort(candidate_score, stable=True)  # lowest salience first
            removal_counts = curve_counts(candidates.numel(), points)
            damages = []
            for removed in removal_counts:
                flags = [[torch.ones(n, dtype=torch.bool) for n in c] for c in counts]
                flags[kind][site][candidates[order[:removed]]] = False
                keep = KeepSet(
                    heads=_flat(flags[0]),
                    neurons=_flat(flags[1]),
                    hidden=torch.ones(hidden_size, dtype=torch.bool),
                    params=0.0,
                )
                damages.append(loss_of(keep) - base)
            reading = curve_reading(candidate_score, order, removal_counts, damages)
            site_scored = torch.full((size,), float(reading.max()), dtype=reading.dtype)
            site_scored[candidates] = reading
            scored[kind].append(site_scored.to(score.device))
            curves[kind].append(damages)
    result: dict = {"heads": curves[0], "neurons": curves[1]}
    hidden = salience.hidden
    if hidden_counts and hidden is not None and hidden_size > 0:
        order = torch.argsort(hidden.detach().float().cpu(), stable=True)  # lowest salience first
        counts_now = [c for c in hidden_counts if c < hidden_size]  # at least one dimension stays
        damages = []
        for removed in counts_now:
            kept = torch.ones(hidden_size, dtype=torch.bool)
            kept[order[:removed]] = False
            keep = KeepSet(
                heads=_flat([torch.ones(n, dtype=torch.bool) for n in counts[0]]),
                neurons=_flat([torch.ones(n, dtype=torch.bool) for n in counts[1]]),
                hidden=kept,
                params=0.0,
            )
            damages.append(loss_of(keep) - base)
        if counts_now:
            hidden = curve_reading(hidden, order, counts_now, damages, extend=True)
        result["hidden"], result["hidden_counts"] = damages, counts_now
    return Salience(scored[0], scored[1], hidden), result


def curve_reading(
    score: torch.Tensor,
    order: torch.Tensor,
    removal_counts: Sequence[int],
    damages: Sequence[float],
    extend: bool = False,
) -> torch.Tensor:
    """Every block's hull slope (loss per unit of salience) times its salience: the loss the curve
    attributes to removing it.

    Args:
        score: Salience of the site's blocks.
        order: Block indices, lowest salience first.
        removal_counts: Increasing numbers of blocks removed at the measured points.
        damages: Loss increase measured at each count.
        extend: Give the blocks beyond the last count the last slope (a curve that stops short of
            the whole site); otherwise the last count must be the site's size.
    """
    size = score.numel()
    # removing more never helps in this model of the damage
    monotone = torch.tensor(list(damages), dtype=torch.float64).clamp(min=0).cummax(0).values.tolist()
    # the curve over the salience mass removed (a tiny share per block keeps it increasing)
    values = score.detach().double().cpu().clamp(min=0)
    sorted_values = values[order] + _MASS_FLOOR * (float(values.sum()) / size + 1e-30)
    mass = sorted_values.cumsum(0)
    slopes = hull_slopes([float(mass[c - 1]) for c in removal_counts], monotone)
    stops = list(removal_counts)
    if extend and stops[-1] < size:
        stops[-1] = size  # the last stretch's slope carries on to the site's end
    new = torch.empty(size, dtype=torch.float64)
    start = 0
    for stop, slope in zip(stops, slopes, strict=True):
        # loss per unit of salience on this stretch of the curve, times the block's salience
        new[order[start:stop]] = slope * sorted_values[start:stop]
        start = stop
    return new.float().to(score.device)


def _flat(flags: list[torch.Tensor]) -> torch.Tensor:
    """Per-site flags joined into one vector (empty without sites)."""
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)
