"""Adapter rank allocation at a pruning event: a pure function of ranks, importances and a budget.

The paper (section 4.3) grows the adapters' ranks at every event so that the trainable parameters
follow a rising budget. `allocate_ranks` decides the new ranks and touches no model; the controller
then grows the adapters (`aptune.surgery.grow_adapter_`) in the order the returned dict lists them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["allocate_ranks", "growth_factor"]


def allocate_ranks(
    ranks: Mapping[str, int],
    widths: Mapping[str, int],
    importance: Mapping[str, float],
    budget: float,
    *,
    max_rank: int,
    mode: str = "salience",
) -> dict[str, int]:
    """New ranks so that the adapters hold about ``budget`` trainable parameters.

    An adapter of rank ``r`` holds ``width * r`` parameters (``width = in + out``).

    * ``salience``: the top half of the adapters by importance (among those below ``max_rank``)
      grow by one common factor that spends the whole increment (the authors' rule);
    * ``uniform``: every adapter below ``max_rank`` grows by the same factor ``budget / current``;
    * ``static``: nothing changes.

    New ranks are rounded down and capped at ``max_rank``, so the total stays at or below the budget.

    Args:
        ranks: Current rank per adapter path (its order breaks ties between equal importances).
        widths: ``in + out`` features per adapter path.
        importance: Importance per adapter path (missing paths count as 0).
        budget: Target number of adapter parameters.
        max_rank: Upper bound of any rank.
        mode: ``"salience"``, ``"uniform"`` or ``"static"`` (`AptConfig.rank_allocation`).

    Returns:
        ``{path: new_rank}`` for the adapters whose rank rises, in the order they should grow.

    Example:
        >>> allocate_ranks({"a": 8, "b": 8}, {"a": 10, "b": 10}, {"a": 1.0, "b": 0.0}, 320, max_rank=64)
        {'a': 24}
    """
    chosen, factor = _growth_plan(ranks, widths, importance, budget, max_rank=max_rank, mode=mode)
    grown = {}
    for path in chosen:
        new_rank = min(max_rank, math.floor(ranks[path] * factor))
        if new_rank > ranks[path]:
            grown[path] = new_rank
    return grown


def growth_factor(
    ranks: Mapping[str, int],
    widths: Mapping[str, int],
    importance: Mapping[str, float],
    budget: float,
    *,
    max_rank: int,
    mode: str = "salience",
) -> float:
    """The common factor by which `allocate_ranks` multiplies the ranks of the adapters it grows.

    The authors grow the distillation transform by this same factor at every event. Arguments as
    for `allocate_ranks`.

    Returns:
        The factor (``1.0`` when nothing grows: ``static`` mode, budget reached, no adapters).

    Example:
        >>> growth_factor({"a": 8, "b": 8}, {"a": 10, "b": 10}, {"a": 1.0, "b": 0.0}, 320, max_rank=64)
        3.0
    """
    return _growth_plan(ranks, widths, importance, budget, max_rank=max_rank, mode=mode)[1]


def _growth_plan(
    ranks: Mapping[str, int],
    widths: Mapping[str, int],
    importance: Mapping[str, float],
    budget: float,
    *,
    max_rank: int,
    mode: str,
) -> tuple[list[str], float]:
    # The adapters that may grow, in growth order, and the common factor of their ranks.
    current = sum(widths[path] * rank for path, rank in ranks.items())
    if mode == "static" or current >= budget or not ranks:
        return [], 1.0
    candidates = [path for path, rank in ranks.items() if rank < max_rank]
    if mode == "uniform":
        return candidates, budget / current
    candidates.sort(key=lambda path: importance.get(path, 0.0), reverse=True)
    chosen = candidates[: max(1, len(ranks) // 2)]
    chosen_params = sum(widths[path] * ranks[path] for path in chosen)
    return chosen, 1.0 + (budget - current) / max(chosen_params, 1)
