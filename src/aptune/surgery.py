"""In-place physical surgery: remove units, neurons and hidden dimensions; grow adapter ranks.

Every function keeps the ``nn.Parameter`` objects and replaces their ``.data``, so an optimizer and an
LR scheduler created before the surgery keep working. The optimizer state of every touched trainable
parameter (Adam's moments, ...) is sliced or zero-padded the same way, and so is a pending ``.grad``.
The LR schedule is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from aptune.adapter import AptLinear, kaiming_rows
from aptune.arch.base import ModelLayout
from aptune.masks import set_zero_attention_guard

__all__ = [
    "clear_optimizer_state_",
    "grow_adapter_",
    "prune_hidden_",
    "prune_neurons_",
    "prune_units_",
    "slice_linear_",
    "slice_parameter_",
    "unit_channels",
    "unwrap_optimizer",
]

SECOND_MOMENT_STATES = ("exp_avg_sq", "max_exp_avg_sq")
"""Optimizer state entries (Adam/AdamW) that hold a running mean of squared gradients."""


def unwrap_optimizer(optimizer) -> torch.optim.Optimizer | None:
    """The innermost ``torch.optim.Optimizer`` (accelerate and others wrap it)."""
    while optimizer is not None and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def _optimizer_state(optimizer, param: nn.Parameter) -> dict | None:
    optimizer = unwrap_optimizer(optimizer)
    if optimizer is None:
        return None
    return optimizer.state.get(param)


def clear_optimizer_state_(optimizer) -> None:
    """Drop every parameter's optimizer state, as a freshly created optimizer has none.

    Adam-style optimizers rebuild it (step count included) at their next step; the parameter groups,
    and so the learning-rate schedule, stay.
    """
    optimizer = unwrap_optimizer(optimizer)
    if optimizer is not None:
        optimizer.state.clear()


@torch.no_grad()
def slice_parameter_(
    param: nn.Parameter, dim: int, index: torch.Tensor, optimizer=None, seen: set | None = None
) -> None:
    """Keep only ``index`` along ``dim`` of ``param``, its ``.grad`` and its optimizer state.

    Args:
        param: The parameter (same object afterwards).
        dim: Dimension to slice.
        index: Indices to keep (1-D long tensor).
        optimizer: Optimizer whose state follows (optional, may be wrapped).
        seen: ``(id(param), dim)`` pairs already sliced in this surgery (tied weights are sliced once).
    """
    if seen is not None:
        key = (id(param), dim)
        if key in seen:
            return
        seen.add(key)
    old_shape = param.shape
    index = index.to(param.device)
    param.data = param.data.index_select(dim, index).contiguous()
    if param.grad is not None:
        param.grad = param.grad.index_select(dim, index).contiguous()
    state = _optimizer_state(optimizer, param)
    if state:
        for name, value in list(state.items()):
            if torch.is_tensor(value) and value.shape == old_shape:
                state[name] = value.index_select(dim, index.to(value.device)).contiguous()


@torch.no_grad()
def _append_parameter_(
    param: nn.Parameter, dim: int, values: torch.Tensor, optimizer=None, second_moment: str = "zeros"
) -> None:
    """Append ``values`` along ``dim``, extending the grad and the optimizer state there.

    The grad and first-moment-like state get zeros. With ``second_moment="mean"``, second moments
    (`SECOND_MOMENT_STATES`) get the mean of the existing entries along ``dim``: Adam's bias correction
    follows the tensor's step count, not the entry's, so a zero second moment under a long-running step
    count gives the new entries steps of up to about 6x the learning rate for their first tens of
    updates. ``second_moment="zeros"`` gives them zeros too.
    """
    old_shape = param.shape
    param.data = torch.cat([param.data, values.to(param.device, param.dtype)], dim=dim)
    if param.grad is not None:
        param.grad = torch.cat([param.grad, torch.zeros_like(values, device=param.grad.device)], dim=dim)
    state = _optimizer_state(optimizer, param)
    if state:
        for name, value in list(state.items()):
            if torch.is_tensor(value) and value.shape == old_shape:
                pad = _state_padding(name, value, values, dim, mean_second_moment=second_moment == "mean")
                state[name] = torch.cat([value, pad], dim=dim)


def _state_padding(
    name: str, value: torch.Tensor, values: torch.Tensor, dim: int, mean_second_moment: bool
) -> torch.Tensor:
    """Optimizer state for appended entries: a second moment's mean along ``dim`` if asked, else zeros."""
    pad = torch.zeros_like(values, dtype=value.dtype, device=value.device)
    if mean_second_moment and name in SECOND_MOMENT_STATES and value.shape[dim] > 0:
        pad += value.mean(dim=dim, keepdim=True)  # broadcast over the appended slices
    return pad


def _base(layer: nn.Module) -> nn.Linear:
    return layer.base_layer if isinstance(layer, AptLinear) else layer


def slice_linear_(layer: nn.Module, *, rows=None, cols=None, optimizer=None, seen: set | None = None) -> None:
    """Keep output ``rows`` and/or input ``cols`` of an ``nn.Linear`` or `AptLinear`.

    For an adapter, ``lora_B`` loses the same rows and ``lora_A`` the same columns.
    """
    base = _base(layer)
    if rows is not None:
        slice_parameter_(base.weight, 0, rows, optimizer, seen)
        if base.bias is not None:
            slice_parameter_(base.bias, 0, rows, optimizer, seen)
        if isinstance(layer, AptLinear):
            slice_parameter_(layer.lora_B, 0, rows, optimizer, seen)
        base.out_features = base.weight.shape[0]
    if cols is not None:
        slice_parameter_(base.weight, 1, cols, optimizer, seen)
        if isinstance(layer, AptLinear):
            slice_parameter_(layer.lora_A, 1, cols, optimizer, seen)
        base.in_features = base.weight.shape[1]


def unit_channels(units: torch.Tensor, width: int) -> torch.Tensor:
    """Channel indices of the given units, each ``width`` consecutive channels."""
    units = units.long()
    # (units, 1) * width + (1, width) -> (units, width) -> flat channel list
    return (units[:, None] * width + torch.arange(width, device=units.device)[None, :]).reshape(-1)


def prune_units_(
    model: nn.Module, layout: ModelLayout, site_index: int, keep: torch.Tensor, optimizer=None
) -> None:
    """Keep only attention units ``keep`` of one site: q/k/v rows, o columns, head counts.

    A unit is a key/value head with its ``group_size`` query heads, so q and o keep
    ``group_size * head_dim`` channels per unit and k and v ``head_dim``. Per-head columns of the
    site's ``head_columns`` parameters (T5's relative position table) follow the kept query heads.
    When no unit is left the module is guarded so that it returns its empty output.
    """
    site = layout.attention[site_index]
    keep = keep.long().cpu()
    q_channels = unit_channels(keep, site.unit_width)
    kv_channels = unit_channels(keep, site.kv_width)
    slice_linear_(model.get_submodule(site.q), rows=q_channels, optimizer=optimizer)
    slice_linear_(model.get_submodule(site.k), rows=kv_channels, optimizer=optimizer)
    slice_linear_(model.get_submodule(site.v), rows=kv_channels, optimizer=optimizer)
    slice_linear_(model.get_submodule(site.o), cols=q_channels, optimizer=optimizer)
    query_heads = unit_channels(keep, site.group_size)
    for path in site.head_columns:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        slice_parameter_(getattr(parent, name), 1, query_heads, optimizer)
        if isinstance(parent, nn.Embedding):
            parent.embedding_dim = parent.weight.shape[1]
    site.set_counts(model.get_submodule(site.module), int(keep.numel()))
    if keep.numel() == 0:
        set_zero_attention_guard(model, site)


def prune_neurons_(
    model: nn.Module, layout: ModelLayout, site_index: int, keep: torch.Tensor, optimizer=None
) -> None:
    """Keep only FFN neurons ``keep`` of one site: up (and gate) rows, down columns."""
    site = layout.ffn[site_index]
    keep = keep.long().cpu()
    slice_linear_(model.get_submodule(site.up), rows=keep, optimizer=optimizer)
    if site.gate:
        slice_linear_(model.get_submodule(site.gate), rows=keep, optimizer=optimizer)
    slice_linear_(model.get_submodule(site.down), cols=keep, optimizer=optimizer)


def prune_hidden_(
    model: nn.Module,
    layout: ModelLayout,
    keep: torch.Tensor,
    optimizer=None,
    extra_readers: Iterable[nn.Module] = (),
) -> None:
    """Keep only hidden dimensions ``keep`` everywhere in the model.

    Slices embedding columns, norm weights/biases, the input columns of every reader (q, k, v, up,
    gate, task-head inputs, and ``extra_readers`` such as the distillation transform) and the output
    rows of every writer (o, down). Tied parameters are sliced once.
    """
    keep = keep.long().cpu()
    seen: set = set()
    for path in layout.embeddings:
        embedding = model.get_submodule(path)
        slice_parameter_(embedding.weight, 1, keep, optimizer, seen)
        embedding.embedding_dim = embedding.weight.shape[1]
    for path in layout.norms:
        norm = model.get_submodule(path)
        for name in ("weight", "bias"):
            param = getattr(norm, name, None)
            if isinstance(param, nn.Parameter):
                slice_parameter_(param, 0, keep, optimizer, seen)
        if hasattr(norm, "normalized_shape"):
            norm.normalized_shape = (int(keep.numel()),)
    for path in layout.readers():
        slice_linear_(model.get_submodule(path), cols=keep, optimizer=optimizer, seen=seen)
    for path in layout.writers():
        slice_linear_(model.get_submodule(path), rows=keep, optimizer=optimizer, seen=seen)
    for module in extra_readers:
        slice_linear_(module, cols=keep, optimizer=optimizer, seen=seen)
    layout.hidden_size = int(keep.numel())


@torch.no_grad()
def grow_adapter_(
    adapter: AptLinear,
    new_rank: int,
    optimizer=None,
    generator: torch.Generator | None = None,
    second_moment: str = "zeros",
) -> tuple[int, int]:
    """Grow an adapter's rank in place, extending its optimizer state.

    New ``A`` rows are Kaiming-uniform like a fresh LoRA (the authors' code; the paper says
    Gaussian); new ``B`` columns are zero, so the layer output is unchanged. The new entries start
    with zero momentum and, with ``second_moment="mean"``, the mean second moment of their tensor (see
    `_append_parameter_`), so their first steps are no larger than a fresh optimizer's;
    ``second_moment="zeros"`` gives them a zero second moment (``AptConfig.event_optimizer_state``).

    Returns:
        ``(old_rank, new_rank)``.

    Raises:
        ValueError: ``second_moment`` is neither ``"zeros"`` nor ``"mean"``.
    """
    if second_moment not in ("zeros", "mean"):
        raise ValueError(f"second_moment={second_moment!r}: choose 'zeros' or 'mean'")
    old_rank = adapter.rank
    if new_rank <= old_rank:
        return old_rank, old_rank
    extra = new_rank - old_rank
    A, B = adapter.lora_A, adapter.lora_B
    rows = kaiming_rows(extra, A.shape[1], device=A.device, dtype=A.dtype, generator=generator)
    _append_parameter_(A, 0, rows, optimizer, second_moment)
    _append_parameter_(B, 1, B.new_zeros(B.shape[0], extra), optimizer, second_moment)
    return old_rank, new_rank
