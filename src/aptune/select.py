"""Parameter costs of prunable blocks and the budgeted keep-set (apt-method.md sections 2.2 and 4.3).

Three block types compete globally: attention units, FFN neurons and hidden (residual-stream)
dimensions. An attention unit ``u`` has a *width* ``a_u``, its parameters per hidden dimension:
``4 * d_h`` for a multi-head-attention head (``d_h`` rows of each of q, k, v and ``d_h`` columns of o),
``(2 * g + 2) * d_h`` for a grouped-query key/value group with ``g`` query heads. An FFN neuron has a
width ``c_n``: 2 for a plain FFN (up row, down column), 3 for a gated one (gate, up, down). With ``D``
hidden dimensions kept, the prunable parameter count is the paper's Eq. 6 generalised to non-uniform
models::

    C = D * (sum of a_u over kept units + sum of c_n over kept neurons)

Biases, norm weights and adapters are ignored, as in the paper (apt-method.md 10.15 allows either
the paper's or the code's counting as long as the budget and the block sizes use the same one; they
both come from this formula here).

`select_keep_set` is the greedy knapsack of the paper (Eq. 13-14, App. C): blocks are sorted by
salience per parameter and the longest prefix whose parameter count fits the budget is kept.

With ``layout="uniform"`` the same knapsack runs over *slices* instead of single units and neurons:
slice ``j`` of the attention units is the ``j``-th most salient unit of every group (layer), its
salience the sum of theirs and its width the sum of their widths; FFN neurons are sliced the same way.
Within a layer the units are sorted by salience, so slice saliences never increase with ``j`` and
(with equal widths per slice) the greedy takes slices in the order 0, 1, 2, ...: every layer keeps
its top-``k`` units and its top-``m`` neurons, with ``k``, ``m`` and the hidden dimensions chosen by
salience per parameter under the budget, exactly as in the free layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aptune.errors import ConfigError

__all__ = ["LAYOUTS", "KeepSet", "parameter_count", "select_keep_set"]

# Block types in the concatenated order used for sorting; ties in density break by this order, then
# by index, so the result never depends on the sort implementation.
_HEAD, _NEURON, _HIDDEN = 0, 1, 2

#: Selection layouts: ``"free"`` (any count per layer) and ``"uniform"`` (the same count in every layer).
LAYOUTS = ("free", "uniform")


def parameter_count(head_costs: Tensor, neuron_costs: Tensor, num_hidden: int) -> float:
    """Prunable parameter count ``C = D * (sum a_u + sum c_n)`` of a (possibly non-uniform) model.

    Biases and norm weights are not counted (apt-method.md 10.15).

    Args:
        head_costs: 1-D widths ``a_u`` of the attention units that are counted (e.g. the kept ones).
        neuron_costs: 1-D widths ``c_n`` of the FFN neurons that are counted.
        num_hidden: Number of hidden dimensions ``D``.

    Returns:
        The parameter count as a float.

    Raises:
        ValueError: a cost tensor is not 1-D, or ``num_hidden`` is negative.

    Example:
        >>> parameter_count(torch.full((12,), 256.0), torch.full((3072,), 2.0), 768)  # one BERT layer
        7077888.0
    """
    heads = _as_vector(head_costs, "head_costs")
    neurons = _as_vector(neuron_costs, "neuron_costs")
    if isinstance(num_hidden, bool) or int(num_hidden) != num_hidden or num_hidden < 0:
        raise ValueError(f"num_hidden={num_hidden!r} must be an int >= 0")
    return float(int(num_hidden) * (heads.sum().item() + neurons.sum().item()))


@dataclass
class KeepSet:
    """The blocks a selection keeps.

    Args:
        heads: Bool mask over all attention units (True = kept), on the device of the scores.
        neurons: Bool mask over all FFN neurons.
        hidden: Bool mask over the hidden dimensions.
        params: `parameter_count` of the kept blocks.
    """

    heads: torch.Tensor
    neurons: torch.Tensor
    hidden: torch.Tensor
    params: float


def select_keep_set(
    head_scores: Tensor,
    neuron_scores: Tensor,
    hidden_scores: Tensor | None,
    head_costs: Tensor,
    neuron_costs: Tensor,
    budget: float,
    *,
    head_groups: Tensor | None = None,
    neuron_groups: Tensor | None = None,
    min_heads_per_group: int = 0,
    min_neurons_per_group: int = 0,
    min_hidden: int = 1,
    prune_hidden: bool = True,
    num_hidden: int | None = None,
    layout: str = "free",
    hidden_unit_cost: float | None = None,
    required_heads: Tensor | None = None,
    neuron_multiple: int = 1,
) -> KeepSet:
    """Choose the blocks to keep under a parameter budget, by salience per parameter.

    Every block gets a density score, its salience divided by its parameter count in the current
    model: a unit ``D * a_u``, a neuron ``D * c_n``, a hidden dimension ``sum a + sum c`` over all
    current units and neurons. Mandatory blocks (below) come first, then the others by density,
    descending; ties break by block type (units, neurons, hidden dims) and then by index. The prefix
    of the first ``i`` blocks costs ``C_i = D_i * (A_i + N_i)`` (hidden dims, unit widths and neuron
    widths in the prefix), which never decreases with ``i``, so a binary search finds the longest
    prefix with ``C_i <= budget``; that prefix is the keep-set. A larger budget therefore always keeps
    a superset.

    Mandatory blocks: in every group (e.g. layer) of ``head_groups`` / ``neuron_groups`` the
    ``min_*_per_group`` best-scored units / neurons (all of them if the group is smaller), and the
    ``min_hidden`` best-scored hidden dims, or every hidden dim if ``prune_hidden`` is False, and
    the units flagged in ``required_heads``. If the mandatory blocks alone exceed the budget,
    exactly they are kept.

    Args:
        head_scores: EMA salience (>= 0) of every attention unit, 1-D, any device.
        neuron_scores: EMA salience of every FFN neuron, 1-D.
        hidden_scores: EMA salience of every hidden dimension, 1-D; may be None when
            ``prune_hidden`` is False (then pass ``num_hidden``).
        head_costs: Width ``a_u`` (> 0) of every attention unit, same length as ``head_scores``.
        neuron_costs: Width ``c_n`` (> 0) of every FFN neuron, same length as ``neuron_scores``.
        budget: Largest allowed `parameter_count` of the kept blocks (e.g. density target x the
            count at the start).
        head_groups: Group id (int) of every unit, e.g. its layer index. None: one group.
        neuron_groups: Group id of every neuron. None: one group.
        min_heads_per_group: Units kept in every group regardless of the budget.
        min_neurons_per_group: Neurons kept in every group regardless of the budget.
        min_hidden: Hidden dimensions kept regardless of the budget.
        prune_hidden: Whether hidden dimensions compete; False keeps all of them.
        num_hidden: Number of hidden dimensions; needed only when ``hidden_scores`` is None, checked
            against it otherwise.
        layout: ``"free"`` (blocks compete one by one) or ``"uniform"`` (every group of
            ``head_groups`` / ``neuron_groups`` keeps the same number of its best units / neurons;
            see the module docstring). A group smaller than the chosen count keeps all its members.
        hidden_unit_cost: Parameters a hidden dimension is charged in the density order. None: the
            current ``sum a + sum c`` (the paper). A fixed value (e.g. the initial structure's) keeps
            hidden dimensions from looking cheap once units and neurons are gone. The budget curve
            always counts the real parameters.
        required_heads: Bool mask over the units that must be kept. In the uniform layout they
            come first in their group's order, and every group keeps at least as many units as
            the group with the most required ones. None: no such unit.
        neuron_multiple: Every group of ``neuron_groups`` keeps a multiple of this many neurons
            (or all of them): its neurons, best first, are cut into runs of this length (the last
            one shorter when the group's size is not a multiple), and each run competes as one
            block with its summed salience and width. ``min_neurons_per_group`` then counts whole
            runs (rounded up). 1: neurons compete one by one.

    Returns:
        The `KeepSet`, its masks on the device of ``head_scores``.

    Raises:
        ConfigError: ``budget`` is negative or not finite, a ``min_*`` value is negative,
            ``neuron_multiple`` is not an int >= 1, or ``layout`` is unknown.
        ValueError: tensors are not 1-D, lengths disagree, scores are negative or not finite, costs
            are not positive, or the number of hidden dimensions is unknown or zero.

    Example:
        >>> keep = select_keep_set(torch.tensor([5.0, 1.0]), torch.tensor([3.0, 0.1, 2.0]),
        ...                        torch.tensor([1.0, 1.0]), torch.tensor([4.0, 4.0]),
        ...                        torch.tensor([2.0, 2.0, 2.0]), budget=20.0)
        >>> keep.heads.tolist(), keep.neurons.tolist(), keep.hidden.tolist(), keep.params
        ([True, True], [True, False, True], [True, False], 12.0)
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    if isinstance(neuron_multiple, bool) or int(neuron_multiple) != neuron_multiple or neuron_multiple < 1:
        raise ConfigError(f"neuron_multiple={neuron_multiple!r} must be an int >= 1")
    if neuron_multiple > 1 or layout == "uniform":
        blocks = (head_scores, neuron_scores, hidden_scores, head_costs, neuron_costs, budget)
        options = {
            "head_groups": head_groups,
            "neuron_groups": neuron_groups,
            "min_heads_per_group": min_heads_per_group,
            "min_neurons_per_group": min_neurons_per_group,
            "min_hidden": min_hidden,
            "prune_hidden": prune_hidden,
            "num_hidden": num_hidden,
            "hidden_unit_cost": hidden_unit_cost,
            "required_heads": required_heads,
        }
        if neuron_multiple > 1:
            return _select_neuron_runs(
                *blocks, layout=layout, neuron_multiple=int(neuron_multiple), **options
            )
        return _select_uniform(*blocks, **options)
    device = head_scores.device if isinstance(head_scores, Tensor) else torch.device("cpu")
    h_score = _as_vector(head_scores, "head_scores")
    n_score = _as_vector(neuron_scores, "neuron_scores")
    h_cost = _as_vector(head_costs, "head_costs")
    n_cost = _as_vector(neuron_costs, "neuron_costs")
    for name, score in (("head_scores", h_score), ("neuron_scores", n_score)):
        _check_scores(score, name)
    for name, cost in (("head_costs", h_cost), ("neuron_costs", n_cost)):
        if not bool(torch.isfinite(cost).all()) or bool((cost <= 0).any()):
            raise ValueError(f"{name} must be finite and > 0 (parameters per hidden dimension)")
    if h_cost.numel() != h_score.numel():
        raise ValueError(f"head_costs has {h_cost.numel()} entries but head_scores has {h_score.numel()}")
    if n_cost.numel() != n_score.numel():
        raise ValueError(f"neuron_costs has {n_cost.numel()} entries but neuron_scores has {n_score.numel()}")

    if hidden_scores is None:
        if prune_hidden:
            raise ValueError("hidden_scores is required when prune_hidden is True")
        if (
            num_hidden is None
            or isinstance(num_hidden, bool)
            or int(num_hidden) != num_hidden
            or num_hidden < 1
        ):
            raise ValueError(f"pass num_hidden (an int >= 1) when hidden_scores is None, got {num_hidden!r}")
        d_score = torch.zeros(int(num_hidden), dtype=torch.float64)
    else:
        d_score = _as_vector(hidden_scores, "hidden_scores")
        _check_scores(d_score, "hidden_scores")
        if num_hidden is not None and num_hidden != d_score.numel():
            raise ValueError(f"num_hidden={num_hidden} but hidden_scores has {d_score.numel()} entries")
    num_d = d_score.numel()
    if num_d < 1:
        raise ValueError("the model needs at least one hidden dimension")

    budget = float(budget)
    if not (budget >= 0.0 and budget != float("inf")):
        raise ConfigError(f"budget={budget!r} must be a finite parameter count >= 0")
    for name, value in (
        ("min_heads_per_group", min_heads_per_group),
        ("min_neurons_per_group", min_neurons_per_group),
        ("min_hidden", min_hidden),
    ):
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ConfigError(f"{name}={value!r} must be an int >= 0")

    # ---- mandatory blocks
    h_must = _top_per_group(h_score, head_groups, int(min_heads_per_group), "head_groups")
    required = _required_mask(required_heads, h_score.numel())
    if required is not None:
        h_must = h_must | required
    n_must = _top_per_group(n_score, neuron_groups, int(min_neurons_per_group), "neuron_groups")
    if prune_hidden:
        d_must = _top_per_group(d_score, None, int(min_hidden), "hidden")
    else:
        d_must = torch.ones(num_d, dtype=torch.bool)

    # ---- density scores (salience per parameter of the block in the current model)
    width_total = h_cost.sum() + n_cost.sum()
    if hidden_unit_cost is not None:
        if not (float(hidden_unit_cost) > 0 and math.isfinite(float(hidden_unit_cost))):
            raise ValueError(f"hidden_unit_cost={hidden_unit_cost!r} must be finite and > 0")
        width_total = torch.tensor(float(hidden_unit_cost), dtype=torch.float64)
    h_density = h_score / (num_d * h_cost)
    n_density = n_score / (num_d * n_cost)
    # Without any unit or neuron a hidden dim costs nothing; its raw score still orders the dims.
    d_density = d_score / width_total if width_total > 0 else d_score.clone()

    density = torch.cat([h_density, n_density, d_density])
    must = torch.cat([h_must, n_must, d_must])
    kind = torch.cat(
        [
            torch.full((h_score.numel(),), _HEAD),
            torch.full((n_score.numel(),), _NEURON),
            torch.full((num_d,), _HIDDEN),
        ]
    )
    density = torch.where(must, torch.full_like(density, float("inf")), density)
    order = _descending_stable(density)  # concatenated order is (type, index), so ties break by both

    # ---- cumulative cost curve over prefixes of the order; entry i is C of the first i blocks
    kind_sorted = kind[order]
    width = torch.cat([h_cost, n_cost, torch.zeros(num_d, dtype=torch.float64)])[order]
    hidden_count = torch.cumsum((kind_sorted == _HIDDEN).to(torch.float64), 0)
    width_sum = torch.cumsum(width, 0)
    curve = torch.cat([torch.zeros(1, dtype=torch.float64), hidden_count * width_sum])
    # Number of prefixes (lengths 0..M) whose cost is <= budget; the curve is non-decreasing.
    fitting = int(torch.searchsorted(curve, torch.tensor([budget], dtype=torch.float64), right=True).item())
    length = max(fitting - 1, int(must.sum().item()))

    kept = torch.zeros(density.numel(), dtype=torch.bool)
    kept[order[:length]] = True
    num_h, num_n = h_score.numel(), n_score.numel()
    keep_h, keep_n, keep_d = kept[:num_h], kept[num_h : num_h + num_n], kept[num_h + num_n :]
    params = parameter_count(h_cost[keep_h], n_cost[keep_n], int(keep_d.sum().item()))
    return KeepSet(
        heads=keep_h.to(device), neurons=keep_n.to(device), hidden=keep_d.to(device), params=params
    )


def _select_uniform(
    head_scores: Tensor,
    neuron_scores: Tensor,
    hidden_scores: Tensor | None,
    head_costs: Tensor,
    neuron_costs: Tensor,
    budget: float,
    *,
    head_groups: Tensor | None,
    neuron_groups: Tensor | None,
    min_heads_per_group: int,
    min_neurons_per_group: int,
    min_hidden: int,
    prune_hidden: bool,
    num_hidden: int | None,
    hidden_unit_cost: float | None,
    required_heads: Tensor | None = None,
) -> KeepSet:
    """`select_keep_set` over per-rank slices of every group (the uniform layout)."""
    device = head_scores.device if isinstance(head_scores, Tensor) else torch.device("cpu")
    h_score, h_cost = _as_vector(head_scores, "head_scores"), _as_vector(head_costs, "head_costs")
    n_score, n_cost = _as_vector(neuron_scores, "neuron_scores"), _as_vector(neuron_costs, "neuron_costs")
    for name, score in (("head_scores", h_score), ("neuron_scores", n_score)):
        _check_scores(score, name)
    for name, cost in (("head_costs", h_cost), ("neuron_costs", n_cost)):
        if not bool(torch.isfinite(cost).all()) or bool((cost <= 0).any()):
            raise ValueError(f"{name} must be finite and > 0 (parameters per hidden dimension)")
    if h_cost.numel() != h_score.numel() or n_cost.numel() != n_score.numel():
        raise ValueError("head_costs / neuron_costs need one entry per head / neuron score")
    required = _required_mask(required_heads, h_score.numel())
    h_members = _rank_slices(h_score, head_groups, "head_groups", first=required)
    n_members = _rank_slices(n_score, neuron_groups, "neuron_groups")
    # the slices that hold a required unit (they come first: the required units lead their groups)
    required_slices = None
    if required is not None:
        required_slices = torch.tensor([bool(required[m].any()) for m in h_members], dtype=torch.bool)
    # Each slice is one block of the free selection: summed salience and summed width of its members.
    slice_keep = select_keep_set(
        torch.stack([h_score[m].sum() for m in h_members]) if h_members else h_score[:0],
        torch.stack([n_score[m].sum() for m in n_members]) if n_members else n_score[:0],
        hidden_scores,
        torch.stack([h_cost[m].sum() for m in h_members]) if h_members else h_cost[:0],
        torch.stack([n_cost[m].sum() for m in n_members]) if n_members else n_cost[:0],
        budget,
        min_heads_per_group=min_heads_per_group,
        min_neurons_per_group=min_neurons_per_group,
        min_hidden=min_hidden,
        prune_hidden=prune_hidden,
        num_hidden=num_hidden,
        hidden_unit_cost=hidden_unit_cost,
        required_heads=required_slices,
    )
    keep_h = _unslice(h_members, slice_keep.heads, h_score.numel())
    keep_n = _unslice(n_members, slice_keep.neurons, n_score.numel())
    params = parameter_count(h_cost[keep_h], n_cost[keep_n], int(slice_keep.hidden.sum().item()))
    return KeepSet(
        heads=keep_h.to(device), neurons=keep_n.to(device), hidden=slice_keep.hidden.to(device), params=params
    )


def _select_neuron_runs(
    head_scores: Tensor,
    neuron_scores: Tensor,
    hidden_scores: Tensor | None,
    head_costs: Tensor,
    neuron_costs: Tensor,
    budget: float,
    *,
    neuron_groups: Tensor | None,
    min_neurons_per_group: int,
    neuron_multiple: int,
    **options,
) -> KeepSet:
    """`select_keep_set` with each group's neurons, best first, in runs of ``neuron_multiple``."""
    device = head_scores.device if isinstance(head_scores, Tensor) else torch.device("cpu")
    n_score, n_cost = _as_vector(neuron_scores, "neuron_scores"), _as_vector(neuron_costs, "neuron_costs")
    if n_cost.numel() != n_score.numel():
        raise ValueError(f"neuron_costs has {n_cost.numel()} entries but neuron_scores has {n_score.numel()}")
    _check_scores(n_score, "neuron_scores")
    if isinstance(min_neurons_per_group, bool) or int(min_neurons_per_group) != min_neurons_per_group:
        raise ConfigError(f"min_neurons_per_group={min_neurons_per_group!r} must be an int >= 0")
    runs, run_groups = _rank_runs(n_score, neuron_groups, neuron_multiple, "neuron_groups")
    keep = select_keep_set(
        head_scores,
        torch.stack([n_score[run].sum() for run in runs]) if runs else n_score[:0],
        hidden_scores,
        head_costs,
        torch.stack([n_cost[run].sum() for run in runs]) if runs else n_cost[:0],
        budget,
        neuron_groups=run_groups,
        min_neurons_per_group=math.ceil(min_neurons_per_group / neuron_multiple),
        **options,
    )
    keep_n = _unslice(runs, keep.neurons, n_score.numel())
    h_cost = _as_vector(head_costs, "head_costs")
    params = parameter_count(h_cost[keep.heads.cpu()], n_cost[keep_n], int(keep.hidden.sum().item()))
    return KeepSet(heads=keep.heads, neurons=keep_n.to(device), hidden=keep.hidden, params=params)


def _rank_runs(scores: Tensor, groups: Tensor | None, length: int, name: str) -> tuple[list[Tensor], Tensor]:
    """Every group's members, best-scored first (ties to the lower index), cut into runs of ``length``.

    Returns:
        The runs (member indices; a group's last run is shorter when its size is not a multiple of
        ``length``) and the group id of every run.
    """
    runs, run_groups = [], []
    for group, ranked in _ranked_groups(scores, groups, name):
        for start in range(0, ranked.numel(), length):
            runs.append(ranked[start : start + length])
            run_groups.append(group)
    return runs, torch.tensor(run_groups, dtype=torch.long)


def _unslice(members: list[Tensor], kept_slices: Tensor, size: int) -> Tensor:
    """Bool mask over ``size`` blocks: the members of every kept slice."""
    mask = torch.zeros(size, dtype=torch.bool)
    for slice_members, is_kept in zip(members, kept_slices.cpu().tolist(), strict=True):
        if is_kept:
            mask[slice_members] = True
    return mask


def _rank_slices(
    scores: Tensor, groups: Tensor | None, name: str, first: Tensor | None = None
) -> list[Tensor]:
    """Slice ``j``: the indices of the ``j``-th best-scored member of every group (ties to the lower index).

    Groups with fewer than ``j + 1`` members are absent from slice ``j``. Members flagged in
    ``first`` (a bool mask) rank before the others of their group, best-scored first.
    """
    ranked = [order for _, order in _ranked_groups(scores, groups, name, first)]
    if not ranked:
        return []
    depth = max(len(r) for r in ranked)
    return [torch.stack([r[j] for r in ranked if len(r) > j]) for j in range(depth)]


def _ranked_groups(
    scores: Tensor, groups: Tensor | None, name: str, first: Tensor | None = None
) -> list[tuple[int, Tensor]]:
    """``(group id, its member indices best-scored first)`` per group, ties to the lower index.

    Members flagged in ``first`` (a bool mask) rank before the others of their group. None groups:
    one group.
    """
    if scores.numel() == 0:
        return []
    if groups is None:
        group_ids = torch.zeros(scores.numel(), dtype=torch.long)
    else:
        group_ids = torch.as_tensor(groups).detach().to("cpu")
        if group_ids.dim() != 1 or group_ids.numel() != scores.numel():
            raise ValueError(f"{name} must be 1-D with one group id per block ({scores.numel()})")
    ranked = []
    for group in torch.unique(group_ids):
        members = torch.nonzero(group_ids == group).flatten()
        order = members[_descending_stable(scores[members])]
        if first is not None:
            # a stable sort on "not flagged" moves the flagged members ahead, each part by score
            order = order[torch.sort((~first[order]).to(torch.int8), stable=True).indices]
        ranked.append((int(group), order))
    return ranked


# ---------------------------------------------------------------------------------------------- helpers
def _required_mask(required: Tensor | None, size: int) -> Tensor | None:
    """``required`` as a CPU bool vector of ``size`` entries, or None when it flags nothing."""
    if required is None:
        return None
    mask = torch.as_tensor(required).detach().to("cpu").flatten().bool()
    if mask.numel() != size:
        raise ValueError(f"required_heads has {mask.numel()} entries but head_scores has {size}")
    return mask if bool(mask.any()) else None


def _as_vector(values: Tensor, name: str) -> Tensor:
    """Detached CPU float64 copy of a 1-D tensor (float64 keeps large parameter counts exact)."""
    tensor = torch.as_tensor(values)
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(tensor.shape)}")
    return tensor.detach().to(device="cpu", dtype=torch.float64)


def _check_scores(scores: Tensor, name: str) -> None:
    if not bool(torch.isfinite(scores).all()) or bool((scores < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0 (EMA saliences); did the training loss diverge?")


def _descending_stable(values: Tensor) -> Tensor:
    """Indices sorting ``values`` descending, equal values kept in index order."""
    # Negate and sort ascending with stable=True: the tie order is then specified, which it is not
    # for a descending sort on every torch version.
    return torch.sort(-values, stable=True).indices


def _top_per_group(scores: Tensor, groups: Tensor | None, count: int, name: str) -> Tensor:
    """Bool mask of the ``count`` best-scored entries of every group (ties to the lower index)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    if count == 0 or scores.numel() == 0:
        return mask
    if groups is None:
        mask[_descending_stable(scores)[:count]] = True
        return mask
    group_ids = torch.as_tensor(groups).detach().to("cpu")
    if group_ids.dim() != 1 or group_ids.numel() != scores.numel():
        raise ValueError(f"{name} must be 1-D with one group id per block ({scores.numel()})")
    for group in torch.unique(group_ids):
        members = torch.nonzero(group_ids == group).flatten()  # ascending indices, so ties go low
        mask[members[_descending_stable(scores[members])[:count]]] = True
    return mask
