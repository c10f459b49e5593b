"""`AptLinear`: a frozen linear layer plus a LoRA update whose rank can grow during training.

The adapter computes ``y = base(x) + s * (x @ A.T) @ B.T`` with a *fixed* scaling ``s`` (the paper
uses 2 whatever the rank, which the authors' code realises by scaling alpha with the rank). ``B``
starts at zero so a new adapter is a no-op, and growth (`aptune.surgery.grow_adapter_`) appends rows to
``A`` and zero columns to ``B`` so the output is unchanged at the moment of growth.

Structured masks are not per adapter: they act on activations at model level (see `aptune.masks`),
as in the authors' code. All sizes are read from the tensors, never from cached attributes, so the
in-place surgery of `aptune.surgery` and a teacher run through `torch.func.functional_call` with
differently-shaped tensors both work.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["AptLinear", "attach_adapter", "kaiming_rows"]


def kaiming_rows(rows: int, cols: int, *, device=None, dtype=None, generator: torch.Generator | None = None):
    """Rows for a LoRA ``A`` matrix drawn like PyTorch's default ``nn.Linear`` init.

    Kaiming-uniform with ``a = sqrt(5)`` gives a bound of ``1 / sqrt(fan_in)``.

    Args:
        rows: Number of new rank rows.
        cols: Input features of the adapted layer.
        generator: Optional RNG for reproducible growth.

    Returns:
        A ``(rows, cols)`` tensor.
    """
    bound = 1.0 / math.sqrt(max(cols, 1))
    out = torch.empty(rows, cols, dtype=torch.float32)
    out.uniform_(-bound, bound, generator=generator)
    return out.to(device=device, dtype=dtype or torch.float32)


class AptLinear(nn.Module):
    """A frozen ``nn.Linear`` with a growable low-rank adapter (fixed scaling).

    Args:
        base_layer: The linear layer to adapt; it is frozen and kept as ``base_layer``.
        rank: Initial adapter rank (> 0).
        scaling: Fixed scaling ``s`` of the adapter update.

    Example:
        >>> layer = AptLinear(nn.Linear(16, 8), rank=2)
        >>> aptune.surgery.grow_adapter_(layer, 4)   # output unchanged, two new rank rows
    """

    def __init__(self, base_layer: nn.Linear, rank: int, scaling: float = 2.0) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"adapter rank must be > 0, got {rank}")
        self.base_layer = base_layer
        base_layer.weight.requires_grad_(False)
        if base_layer.bias is not None:
            base_layer.bias.requires_grad_(False)
        weight = base_layer.weight
        out_features, in_features = weight.shape
        self.scaling = float(scaling)
        self.lora_A = nn.Parameter(kaiming_rows(rank, in_features, device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=weight.device, dtype=weight.dtype))
        self.merged = False

    # sizes are read from tensors so that surgery and functional_call see the right numbers
    @property
    def rank(self) -> int:
        """Current adapter rank."""
        return self.lora_A.shape[0]

    @property
    def in_features(self) -> int:
        """Current input width."""
        return self.base_layer.weight.shape[1]

    @property
    def out_features(self) -> int:
        """Current output width."""
        return self.base_layer.weight.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (what code reading ``linear.weight`` expects)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The frozen base bias."""
        return self.base_layer.bias

    def adapter_parameters(self) -> int:
        """Number of trainable adapter parameters, ``(in + out) * rank``."""
        return self.lora_A.numel() + self.lora_B.numel()

    def get_delta_weight(self) -> torch.Tensor:
        """The dense update ``s * B @ A`` of shape ``(out, in)``."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the scaled low-rank update (skipped once merged)."""
        out = self.base_layer(x)
        if self.merged:
            return out
        lora_A = self.lora_A
        lora_B = self.lora_B
        # (..., in) -> (..., r) -> (..., out)
        update = (x.to(lora_A.dtype) @ lora_A.t()) @ lora_B.t()
        return out + (self.scaling * update).to(out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the frozen weight; forward then skips the adapter."""
        if not self.merged:
            self.base_layer.weight.add_(self.get_delta_weight().to(self.base_layer.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update from the frozen weight again."""
        if self.merged:
            self.base_layer.weight.sub_(self.get_delta_weight().to(self.base_layer.weight.dtype))
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """Return a plain ``nn.Linear`` holding the merged weight (the adapter is folded in)."""
        base = self.base_layer
        out_features, in_features = base.weight.shape
        linear = nn.Linear(in_features, out_features, bias=base.bias is not None, device="meta")
        with torch.no_grad():
            weight = base.weight.detach().clone()
            if not self.merged:
                weight += self.get_delta_weight().to(weight.dtype)
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if base.bias is not None:
            linear.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        return linear

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scaling={self.scaling}"


def attach_adapter(model: nn.Module, path: str, rank: int, scaling: float) -> AptLinear:
    """Replace the ``nn.Linear`` at ``path`` by an `AptLinear` (``setattr`` on its parent).

    Args:
        model: The model that holds the layer.
        path: Dotted module path, e.g. ``"bert.encoder.layer.0.attention.self.query"``.
        rank: Initial rank.
        scaling: Fixed adapter scaling.

    Returns:
        The new adapter module.
    """
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    layer = getattr(parent, name)
    if isinstance(layer, AptLinear):
        return layer
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"{path} is a {type(layer).__name__}, expected nn.Linear")
    adapter = AptLinear(layer, rank=rank, scaling=scaling)
    setattr(parent, name, adapter)
    return adapter
