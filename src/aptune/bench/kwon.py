"""Post-training structured pruning of Kwon et al. 2022, the pruning step of the LoRA+Prune baseline.

"A Fast Post-Training Pruning Framework for Transformers" (Kwon, Kim, Mahoney, Hassoun, Keutzer,
Gholami; NeurIPS 2022) prunes a fine-tuned model without retraining, in three steps over a small
calibration sample, with a mask variable of value 1 on every attention head and FFN neuron:

1. **Fisher-based mask search** (`search_masks`): the loss increase of zeroing a set of masks is
   approximated with the empirical Fisher information of the mask variables; under its diagonal,
   each mask's importance is the mean of its squared per-example gradient. Heads and neurons compete
   for one budget (here: parameters); for every possible number of kept heads, the rest of the budget
   goes to the most important neurons, and the split with the largest kept importance wins.
2. **Mask rearrangement** (`rearrange_masks`): inside every layer, with the number of kept heads
   (neurons) fixed, the pruned set is re-chosen greedily under the layer's *block-diagonal* Fisher
   (the interactions between the masks of one layer), which the diagonal search ignores.
3. **Mask tuning** (`tune_masks`): the kept masks become real-valued scales, chosen layer by layer by
   linear least squares so that each pruned sub-layer (attention output projection, FFN down
   projection) reconstructs the output of the dense model's sub-layer on the calibration sample.

Only heads and FFN neurons are pruned (no hidden dimensions). The model's structure is read through
aptune's `ModelLayout` (which projections form a head or a neuron); the decisions are this module's.
`fold_scales_` writes the tuned scales into the output projections, after which the masks are plain
0/1 keep-sets that any surgery can apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from aptune.arch.base import ModelLayout

__all__ = [
    "KwonResult",
    "MaskHooks",
    "block_costs",
    "collect_mask_gradients",
    "fold_scales_",
    "kwon_prune",
    "quadratic_loss",
    "rearrange_masks",
    "search_masks",
    "tune_masks",
]


# ------------------------------------------------------------------------------------------- masks
class MaskHooks:
    """Mask variables on every head (input of the attention output projection) and FFN neuron.

    A forward pre-hook on each site's output projection multiplies its input by the mask, repeated
    over the channels of a unit (``unit_width`` for heads). Masks start at 1 (the dense model).

    Attributes:
        heads: One tensor of unit masks per attention site.
        neurons: One tensor of neuron masks per FFN site.
        enabled: When False the hooks pass inputs through (the dense model).
        grads: Per-example gradients collected by `collect_mask_gradients` (heads, neurons).
    """

    def __init__(self, model: nn.Module, layout: ModelLayout) -> None:
        self.model = model
        self.layout = layout
        device = next(model.parameters()).device
        self.heads = [
            torch.ones(model.get_submodule(s.o).weight.shape[1] // s.unit_width, device=device)
            for s in layout.attention
        ]
        self.neurons = [
            torch.ones(model.get_submodule(s.down).weight.shape[1], device=device) for s in layout.ffn
        ]
        self.enabled = True
        self.collect = False
        self.grads: tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]] = (
            [[] for _ in layout.attention],
            [[] for _ in layout.ffn],
        )
        self.captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.capture: set[str] = set()
        self._handles: list = []

    def __enter__(self) -> MaskHooks:
        for i, site in enumerate(self.layout.attention):
            module = self.model.get_submodule(site.o)
            self._handles.append(
                module.register_forward_pre_hook(self._pre_hook("heads", i, site.unit_width))
            )
            self._handles.append(module.register_forward_hook(self._post_hook(site.o)))
        for i, site in enumerate(self.layout.ffn):
            module = self.model.get_submodule(site.down)
            self._handles.append(module.register_forward_pre_hook(self._pre_hook("neurons", i, 1)))
            self._handles.append(module.register_forward_hook(self._post_hook(site.down)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _pre_hook(self, kind: str, index: int, width: int):
        def hook(module, args):
            if not self.enabled:
                return None
            x = args[0]
            mask = getattr(self, kind)[index]
            if self.collect:
                mask = mask.detach().requires_grad_(True)
            y = x * mask.repeat_interleave(width)
            if self.collect:
                store = self.grads[0 if kind == "heads" else 1][index]
                batch = x.shape[0]

                def grad_hook(grad: torch.Tensor, x=x.detach(), store=store) -> None:
                    # per-example d loss / d mask: sum over tokens and the channels of each unit;
                    # (batch, tokens, units * width) -> (batch, tokens, units, width)
                    per = (grad * x).reshape(batch, x.shape[1], -1, width).sum(dim=(1, 3))
                    store.append(per.detach().float().cpu())

                y.register_hook(grad_hook)
            return (y, *args[1:])

        return hook

    def _post_hook(self, path: str):
        def hook(module, args, output):
            if path in self.capture:
                self.captured[path] = (args[0].detach(), output.detach())

        return hook


def _batches_to(batches: Iterable[dict], device: torch.device) -> Iterator[dict]:
    for batch in batches:
        yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def collect_mask_gradients(
    model: nn.Module, hooks: MaskHooks, batches: Iterable[dict]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-example gradients of the loss with respect to every mask variable.

    The model's own loss is a mean over the batch, so each example's gradient is the batch size times
    its share; dropout is off (evaluation mode) and no parameter gradient is kept.

    Args:
        model: A model returning ``loss`` for batches that hold labels.
        hooks: Installed `MaskHooks` (masks at 1).
        batches: Calibration batches.

    Returns:
        ``(heads, neurons)``: per site, a ``(examples, units)`` / ``(examples, neurons)`` tensor.
    """
    was_training = model.training
    model.eval()
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    hooks.collect = True
    device = next(model.parameters()).device
    try:
        for batch in _batches_to(batches, device):
            size = batch["input_ids"].shape[0]
            loss = model(**batch).loss * size  # sum over examples: per-example gradients add up
            loss.backward()
    finally:
        hooks.collect = False
        for name, p in model.named_parameters():
            p.requires_grad_(requires[name])
        model.train(was_training)
    heads = [torch.cat(g) for g in hooks.grads[0]]
    neurons = [torch.cat(g) for g in hooks.grads[1]]
    for store in (*hooks.grads[0], *hooks.grads[1]):
        store.clear()
    return heads, neurons


# ------------------------------------------------------------------------------------------ search
def block_costs(model: nn.Module, layout: ModelLayout) -> tuple[int, int]:
    """Parameters of one head (unit) and of one FFN neuron: q, k, v rows and o columns; up (gate) rows
    and down columns. Every site of a kind must have the same cost (true for the supported families)."""
    hidden = layout.hidden_size
    heads = {s.cost_per_hidden() * hidden for s in layout.attention}
    neurons = {s.cost_per_hidden() * hidden for s in layout.ffn}
    if len(heads) != 1 or len(neurons) != 1:
        raise ValueError("the mask search needs one cost per head and one per neuron")
    return heads.pop(), neurons.pop()


def search_masks(
    head_importance: list[torch.Tensor],
    neuron_importance: list[torch.Tensor],
    head_cost: int,
    neuron_cost: int,
    budget: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keep-sets of largest total importance whose parameters fit ``budget`` (diagonal Fisher search).

    For each number ``h`` of kept heads, the most important ``h`` heads are kept and the rest of the
    budget goes to the most important neurons; the ``h`` with the largest kept importance wins
    (equivalently, the smallest approximate loss increase of the pruned masks).

    Args:
        head_importance: Per attention site, the importance (diagonal Fisher) of each head.
        neuron_importance: Per FFN site, the importance of each neuron.
        head_cost: Parameters of one head.
        neuron_cost: Parameters of one neuron.
        budget: Parameters the kept heads and neurons may hold.

    Returns:
        ``(heads, neurons)``: bool keep masks per site.
    """
    h_all = torch.cat(head_importance).double()
    n_all = torch.cat(neuron_importance).double()
    h_order = torch.argsort(h_all, descending=True, stable=True)
    n_order = torch.argsort(n_all, descending=True, stable=True)
    h_prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(h_all[h_order], 0)])
    n_prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(n_all[n_order], 0)])
    best, best_h, best_n = -math.inf, 0, 0
    for h in range(h_all.numel() + 1):
        left = budget - h * head_cost
        if left < 0:
            break
        n = min(n_all.numel(), int(left // neuron_cost))
        score = float(h_prefix[h] + n_prefix[n])
        if score > best:
            best, best_h, best_n = score, h, n
    keep_h = torch.zeros(h_all.numel(), dtype=torch.bool)
    keep_h[h_order[:best_h]] = True
    keep_n = torch.zeros(n_all.numel(), dtype=torch.bool)
    keep_n[n_order[:best_n]] = True
    return (
        list(keep_h.split([t.numel() for t in head_importance])),
        list(keep_n.split([t.numel() for t in neuron_importance])),
    )


def quadratic_loss(fisher: torch.Tensor, keep: torch.Tensor) -> float:
    """Approximate loss increase ``1/2 (1-m)^T F (1-m)`` of pruning the blocks not in ``keep``."""
    pruned = (~keep).to(fisher.dtype)
    return float(0.5 * pruned @ fisher @ pruned)


def _greedy_prune(fisher: torch.Tensor, count: int) -> torch.Tensor:
    """Keep mask after removing ``count`` blocks one at a time, each the cheapest given those removed."""
    n = fisher.shape[0]
    removed = torch.zeros(n, dtype=torch.bool)
    coupling = torch.zeros(n, dtype=fisher.dtype)  # sum of F[:, i] over the removed i
    diag = torch.diagonal(fisher)
    for _ in range(count):
        # loss(Z + j) - loss(Z) = 1/2 F_jj + sum_{i in Z} F_ij
        delta = 0.5 * diag + coupling
        delta[removed] = math.inf
        j = int(torch.argmin(delta))
        removed[j] = True
        coupling += fisher[:, j]
    return ~removed


def rearrange_masks(
    keep: list[torch.Tensor], grads: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[dict[str, float]]]:
    """Re-choose every layer's pruned set under the layer's block-diagonal Fisher, counts unchanged.

    Args:
        keep: Per site, the keep mask of the search.
        grads: Per site, the ``(examples, blocks)`` per-example mask gradients.

    Returns:
        ``(keep, losses)``: the new keep masks (the greedy set where it lowers the layer's quadratic
        loss, else the search's) and, per site, ``{"search": loss, "rearranged": loss}``.
    """
    out, losses = [], []
    for mask, g in zip(keep, grads, strict=True):
        g = g.double()
        fisher = g.T @ g / max(1, g.shape[0])  # (blocks, blocks) empirical Fisher of this layer
        count = int((~mask).sum())
        greedy = _greedy_prune(fisher, count)
        before, after = quadratic_loss(fisher, mask), quadratic_loss(fisher, greedy)
        out.append(greedy if after < before else mask)
        losses.append({"search": before, "rearranged": min(before, after)})
    return out, losses


# ------------------------------------------------------------------------------------------ tuning
@dataclass
class _Normal:
    """Accumulators of one least-squares problem ``min_m |Y - b - C m|^2`` (normal equations)."""

    gram: torch.Tensor
    rhs: torch.Tensor
    yy: float = 0.0

    def error(self, m: torch.Tensor) -> float:
        return float(self.yy - 2 * self.rhs @ m + m @ self.gram @ m)


def _valid_tokens(batch: dict, x: torch.Tensor) -> torch.Tensor:
    """Rows of the flattened (batch * tokens) activations that are real tokens."""
    mask = batch.get("attention_mask")
    if mask is None or mask.shape[:2] != x.shape[:2]:
        return torch.ones(x.shape[0] * x.shape[1], dtype=torch.bool, device=x.device)
    return mask.reshape(-1).bool()


def _accumulate(
    normal: _Normal | None, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias, keep, width
) -> _Normal:
    """Add one batch: ``x`` (rows, blocks * width) student inputs, ``target`` (rows, out) dense outputs."""
    keep_idx = torch.nonzero(keep).squeeze(1)
    y = (target - (bias if bias is not None else 0)).double()
    w = weight.double()
    x = x.double()
    if width == 1:  # FFN neurons: contribution a_j * w_j
        a = x[:, keep_idx]  # (rows, k)
        wk = w[:, keep_idx]  # (out, k)
        gram = (a.T @ a) * (wk.T @ wk)
        rhs = ((y @ wk) * a).sum(0)
    else:  # heads: contribution W_o[:, block h] x_h
        rows = x.shape[0]
        xs = x.reshape(rows, -1, width)[:, keep_idx]  # (rows, k, width)
        ws = w.reshape(w.shape[0], -1, width)[:, keep_idx]  # (out, k, width)
        contrib = torch.einsum("rkc,okc->rko", xs, ws)  # (rows, k, out)
        gram = torch.einsum("rko,rjo->kj", contrib, contrib)
        rhs = torch.einsum("rko,ro->k", contrib, y)
    yy = float((y * y).sum())
    if normal is None:
        return _Normal(gram, rhs, yy)
    normal.gram += gram
    normal.rhs += rhs
    normal.yy += yy
    return normal


@dataclass
class TuningRecord:
    """Reconstruction errors of one sub-layer before (masks at 1) and after least squares."""

    site: str
    before: float
    after: float
    scales: list[float] = field(default_factory=list)


@torch.no_grad()
def tune_masks(
    model: nn.Module,
    hooks: MaskHooks,
    keep_heads: list[torch.Tensor],
    keep_neurons: list[torch.Tensor],
    batches: list[dict],
    *,
    damping: float = 1e-6,
    bound: float = 10.0,
) -> list[TuningRecord]:
    """Layer-wise least-squares mask tuning; sets ``hooks.heads`` / ``hooks.neurons`` to the scales.

    Sub-layers are tuned in forward order. For each, the student (pruned masks, earlier sub-layers
    already tuned) gives the inputs and the dense model (hooks disabled) the targets; the kept masks
    minimise the squared error of the sub-layer's output over the valid tokens. A solution that does
    not lower the error (or leaves ``[-bound, bound]``) is rejected and the masks stay at 1.

    Args:
        model: The model inside ``hooks``.
        hooks: Installed `MaskHooks`.
        keep_heads: Per attention site, the bool keep mask.
        keep_neurons: Per FFN site, the bool keep mask.
        batches: Calibration batches (a list: it is read once per sub-layer).
        damping: Ridge term, relative to the mean diagonal of the normal matrix.
        bound: Largest allowed absolute scale.

    Returns:
        One `TuningRecord` per sub-layer.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    layout = hooks.layout
    for i, keep in enumerate(keep_heads):
        hooks.heads[i] = keep.float().to(device)
    for i, keep in enumerate(keep_neurons):
        hooks.neurons[i] = keep.float().to(device)
    sites = [("heads", i, s.o, s.unit_width, s.layer) for i, s in enumerate(layout.attention)]
    sites += [("neurons", i, s.down, 1, s.layer) for i, s in enumerate(layout.ffn)]
    sites.sort(key=lambda t: (t[4], t[0] == "neurons"))  # forward order: attention, then FFN
    records = []
    try:
        for kind, index, path, width, _ in sites:
            keep = (keep_heads if kind == "heads" else keep_neurons)[index].to(device)
            module = model.get_submodule(path)
            weight, bias = module.weight, module.bias
            normal: _Normal | None = None
            hooks.capture = {path}
            for batch in _batches_to(batches, device):
                hooks.enabled = False
                model(**batch)
                _, target = hooks.captured[path]
                hooks.enabled = True
                model(**batch)
                x, _ = hooks.captured[path]
                # the captured input is masked 0/1 for this site: only the kept channels are used
                rows = _valid_tokens(batch, x)
                x2 = x.reshape(-1, x.shape[-1])[rows]  # (batch * tokens, channels) -> valid rows
                t2 = target.reshape(-1, target.shape[-1])[rows]
                normal = _accumulate(normal, x2, t2, weight, bias, keep, width)
            ones = torch.ones(int(keep.sum()), dtype=torch.float64, device=device)
            before = normal.error(ones) if normal is not None else 0.0
            scales = ones
            if normal is not None and ones.numel():
                gram = normal.gram
                ridge = damping * float(torch.diagonal(gram).mean()) + 1e-12
                solved = torch.linalg.solve(
                    gram + ridge * torch.eye(gram.shape[0], device=device), normal.rhs
                )
                bounded = bool(torch.isfinite(solved).all()) and float(solved.abs().max()) <= bound
                if bounded and normal.error(solved) < before:
                    scales = solved
            after = normal.error(scales) if normal is not None else 0.0
            masks = hooks.heads if kind == "heads" else hooks.neurons
            new = torch.zeros_like(masks[index])
            new[torch.nonzero(keep).squeeze(1)] = scales.to(new.dtype)
            masks[index] = new
            records.append(TuningRecord(path, before, after, [round(float(s), 4) for s in scales]))
    finally:
        hooks.capture = set()
        hooks.captured.clear()
        hooks.enabled = True
        model.train(was_training)
    return records


@torch.no_grad()
def fold_scales_(
    model: nn.Module, layout: ModelLayout, heads: list[torch.Tensor], neurons: list[torch.Tensor]
):
    """Multiply each output-projection column by its mask value (0 for pruned blocks), in place.

    Afterwards the dense forward equals the masked forward, and the pruned blocks can be removed.
    """
    for site, mask in zip(layout.attention, heads, strict=True):
        weight = model.get_submodule(site.o).weight  # (hidden, units * unit_width)
        weight.mul_(mask.repeat_interleave(site.unit_width).to(weight.dtype)[None, :])
    for site, mask in zip(layout.ffn, neurons, strict=True):
        weight = model.get_submodule(site.down).weight  # (hidden, neurons)
        weight.mul_(mask.to(weight.dtype)[None, :])


# -------------------------------------------------------------------------------------------- all
@dataclass
class KwonResult:
    """What `kwon_prune` decided and measured.

    Attributes:
        keep_heads: Per attention site, bool keep mask over units.
        keep_neurons: Per FFN site, bool keep mask over neurons.
        budget: Parameter budget of heads and neurons.
        kept_params: Parameters of the kept heads and neurons.
        total_params: Parameters of all heads and neurons.
        rearrangement: Per-site quadratic losses before and after rearrangement.
        tuning: Per-sub-layer reconstruction errors before and after tuning.
        seconds: ``{"calibration_search": s, "mask_tuning": s}``.
        examples: Calibration examples used.
    """

    keep_heads: list[torch.Tensor]
    keep_neurons: list[torch.Tensor]
    budget: float
    kept_params: int
    total_params: int
    rearrangement: dict[str, list[dict[str, float]]]
    tuning: list[TuningRecord]
    seconds: dict[str, float]
    examples: int

    def to_dict(self) -> dict:
        """JSON-ready summary (per-layer counts, not the masks)."""
        return {
            "heads_per_layer": [int(k.sum()) for k in self.keep_heads],
            "ffn_per_layer": [int(k.sum()) for k in self.keep_neurons],
            "budget": self.budget,
            "kept_params": self.kept_params,
            "total_params": self.total_params,
            "rearrangement": self.rearrangement,
            "tuning": [
                {"site": r.site, "error_before": r.before, "error_after": r.after} for r in self.tuning
            ],
            "seconds": self.seconds,
            "calibration_examples": self.examples,
        }


def kwon_prune(
    model: nn.Module,
    layout: ModelLayout,
    batches: list[dict],
    density: float,
    *,
    tuning_batches: list[dict] | None = None,
    clock=None,
) -> KwonResult:
    """Search, rearrange and tune head/neuron masks to keep ``density`` of their parameters; fold the
    tuned scales into the weights (the pruned blocks are zeroed but not removed: see `fold_scales_`).

    Args:
        model: A fine-tuned model that returns ``loss``.
        layout: Its `ModelLayout`.
        batches: Calibration batches with labels (the Fisher).
        density: Share of the head and neuron parameters to keep.
        tuning_batches: Batches of the least-squares tuning (default: ``batches``).
        clock: Timer (default `time.perf_counter`).

    Returns:
        The `KwonResult`.
    """
    import time

    clock = clock or time.perf_counter
    began = clock()
    head_cost, neuron_cost = block_costs(model, layout)
    with MaskHooks(model, layout) as hooks:
        head_grads, neuron_grads = collect_mask_gradients(model, hooks, batches)
        total = head_cost * sum(m.numel() for m in hooks.heads) + neuron_cost * sum(
            m.numel() for m in hooks.neurons
        )
        budget = density * total
        head_fisher = [(g.double() ** 2).mean(0) for g in head_grads]
        neuron_fisher = [(g.double() ** 2).mean(0) for g in neuron_grads]
        keep_h, keep_n = search_masks(head_fisher, neuron_fisher, head_cost, neuron_cost, budget)
        keep_h, head_losses = rearrange_masks(keep_h, head_grads)
        keep_n, neuron_losses = rearrange_masks(keep_n, neuron_grads)
        searched = clock()
        tuning = tune_masks(model, hooks, keep_h, keep_n, tuning_batches or batches)
        heads, neurons = list(hooks.heads), list(hooks.neurons)
    fold_scales_(model, layout, heads, neurons)
    tuned = clock()
    kept = head_cost * sum(int(k.sum()) for k in keep_h) + neuron_cost * sum(int(k.sum()) for k in keep_n)
    return KwonResult(
        keep_heads=keep_h,
        keep_neurons=keep_n,
        budget=budget,
        kept_params=kept,
        total_params=total,
        rearrangement={"heads": head_losses, "neurons": neuron_losses},
        tuning=tuning,
        seconds={"calibration_search": searched - began, "mask_tuning": tuned - searched},
        examples=sum(int(b["input_ids"].shape[0]) for b in batches),
    )
