"""Structured masks for attention units, FFN neurons and hidden dimensions.

Masks act on activations at model level (CoFi style, as in the authors' code), without copying any
modeling file:

* attention units: a forward pre-hook on each output projection multiplies its input, viewed as
  ``(..., units, unit_width)``, by the unit mask;
* FFN neurons: a forward pre-hook on each down projection multiplies its input by the neuron mask;
* hidden dimensions: for post-norm models every LayerNorm is replaced (same Parameter objects, same
  names) by `MaskedLayerNorm`, which normalises over the kept dimensions only and multiplies its
  output by the mask. Pre-norm families (LLaMA, T5) multiply the embedding outputs and the outputs of
  every sub-layer output projection (``o``, ``down``) by the mask, so the residual stream is exactly
  zero on pruned dimensions, and every RMS norm is replaced by `MaskedRMSNorm`, which takes the
  mean square over the kept dimensions only.

Hidden salience (``MaskState.hidden_salience``) is read either at the inputs of the q, k, v, up and
gate projections (``"block_inputs"``: the gradient flowing into the attention and FFN blocks, the
paper's definition for encoders), or on the residual stream (``"residual"``: the masked LayerNorm
outputs of post-norm models, the embedding and sub-layer outputs of pre-norm ones, as the authors'
LLaMA and T5 code does). ``"norm_weighted"`` adds the output magnitudes of the RMS norms.

The same hooks hand the activations to the `SalienceCollector`. `MaskState.enabled` switches all of
it off for the teacher's forward pass.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from aptune.arch.base import AttentionSite, ModelLayout
from aptune.hub.modeling_aptune import zero_attention_output as _zero_attention_output
from aptune.salience import SalienceCollector

__all__ = [
    "MaskState",
    "MaskedLayerNorm",
    "MaskedRMSNorm",
    "block_input_paths",
    "clear_zero_attention_guard",
    "install_masks",
    "remove_masks",
    "set_zero_attention_guard",
    "zero_attention_output",
]


@dataclass
class MaskState:
    """The live masks (``None`` = all ones) and the switches the hooks read.

    Attributes:
        heads: One tensor of unit masks per attention site.
        neurons: One tensor of neuron masks per FFN site.
        hidden: Hidden-dimension mask, shared by the whole model.
        enabled: False while the teacher runs (no masking, no salience).
        collector: Where masked activations are reported for salience.
        hidden_salience: Where hidden dimensions are scored (`aptune.config.AptConfig.hidden_salience`,
            resolved): ``"residual"`` at the norm outputs (post-norm) or the embedding and sub-layer
            outputs (pre-norm); ``"block_inputs"`` at the inputs of q, k, v, up and gate;
            ``"norm_weighted"`` as ``"block_inputs"`` plus the output magnitudes of the RMS norms.
    """

    heads: list[torch.Tensor | None]
    neurons: list[torch.Tensor | None]
    hidden: torch.Tensor | None = None
    enabled: bool = True
    collector: SalienceCollector = field(default_factory=SalienceCollector)
    handles: list = field(default_factory=list)
    hidden_salience: str = "residual"

    def move_(
        self,
        heads: list[torch.Tensor],
        neurons: list[torch.Tensor],
        hidden: torch.Tensor | None,
        step: float | None,
        device: torch.device,
    ) -> None:
        """Move the masks towards keep flags (a missing mask counts as all ones).

        Args:
            heads: Keep flags per attention site.
            neurons: Keep flags per FFN site.
            hidden: Keep flags of the hidden dimensions; None leaves the hidden mask alone, or
                clears it when ``step`` is None.
            step: Change per call (kept blocks rise, dropped ones fall, clamped to [0, 1]); None
                sets the masks to the flags exactly (hard masks).
            device: Where the masks live.
        """
        self.heads = [_moved(m, k, step).to(device) for m, k in zip(self.heads, heads, strict=True)]
        self.neurons = [_moved(m, k, step).to(device) for m, k in zip(self.neurons, neurons, strict=True)]
        if hidden is not None:
            self.hidden = _moved(self.hidden, hidden, step).to(device)
        elif step is None:
            self.hidden = None

    def is_hard(self) -> bool:
        """Whether some mask is set and every mask is exactly 0/1."""
        present = [m for m in (*self.heads, *self.neurons, self.hidden) if m is not None]
        return bool(present) and all(bool(((m == 0) | (m == 1)).all()) for m in present)

    def clear(self) -> None:
        """All masks back to all-ones (``None``), e.g. after the masked blocks were removed."""
        self.heads = [None] * len(self.heads)
        self.neurons = [None] * len(self.neurons)
        self.hidden = None

    def state_dict(self) -> dict:
        """The masks (per-site tensors keyed by site index; all-ones masks are left out)."""
        return {
            "heads": {str(i): m for i, m in enumerate(self.heads) if m is not None},
            "neurons": {str(i): m for i, m in enumerate(self.neurons) if m is not None},
            "hidden": self.hidden,
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Restore what `state_dict` returned, onto ``device``."""

        def to(mask: torch.Tensor | None) -> torch.Tensor | None:
            return mask.to(device) if mask is not None else None

        self.heads = [to(state["heads"].get(str(i))) for i in range(len(self.heads))]
        self.neurons = [to(state["neurons"].get(str(i))) for i in range(len(self.neurons))]
        self.hidden = to(state["hidden"])


def _moved(mask: torch.Tensor | None, kept: torch.Tensor, step: float | None) -> torch.Tensor:
    kept = kept.float()
    if step is None:
        return kept
    mask = torch.ones_like(kept) if mask is None else mask.float().cpu()
    return torch.where(kept > 0, (mask + step).clamp(max=1.0), (mask - step).clamp(min=0.0))


class MaskedLayerNorm(nn.LayerNorm):
    """LayerNorm over the kept hidden dimensions, output multiplied by the hidden mask.

    Dimensions whose mask is 0 are excluded from the mean and variance and come out as exactly 0, so
    with a 0/1 mask the result equals a LayerNorm of the physically pruned width. The normalised
    width is read from ``weight`` so that surgery and a teacher with other tensors both work.
    """

    _apt_state: MaskState | None = None
    _apt_site: int = -1

    @classmethod
    def from_layer_norm(cls, norm: nn.LayerNorm, state: MaskState, site: int) -> MaskedLayerNorm:
        """Wrap ``norm`` keeping its Parameter objects (so names and optimizer references hold)."""
        masked = cls.__new__(cls)
        nn.Module.__init__(masked)
        masked.normalized_shape = tuple(norm.normalized_shape)
        masked.eps = norm.eps
        masked.elementwise_affine = norm.elementwise_affine
        masked.weight = norm.weight
        masked.bias = norm.bias
        masked._apt_state = state
        masked._apt_site = site
        return masked

    def to_layer_norm(self) -> nn.LayerNorm:
        """A plain ``nn.LayerNorm`` of the current width holding the same Parameters."""
        width = self.weight.shape[0] if self.weight is not None else self.normalized_shape[0]
        norm = nn.LayerNorm(width, eps=self.eps, elementwise_affine=self.elementwise_affine, device="meta")
        norm.weight = self.weight
        norm.bias = self.bias
        return norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = (x.shape[-1],)
        state = self._apt_state
        if state is None or not state.enabled:
            return F.layer_norm(x, width, self.weight, self.bias, self.eps)
        mask = state.hidden
        if mask is None:
            out = F.layer_norm(x, width, self.weight, self.bias, self.eps)
            if state.hidden_salience == "residual":
                state.collector.observe(("hidden", self._apt_site), out, out)
            return out
        kept = torch.nonzero(mask > 0).squeeze(1)
        if kept.numel() == mask.numel():
            normed = F.layer_norm(x, width, self.weight, self.bias, self.eps)
        else:
            weight = self.weight.index_select(0, kept) if self.weight is not None else None
            bias = self.bias.index_select(0, kept) if self.bias is not None else None
            part = F.layer_norm(x.index_select(-1, kept), (kept.numel(),), weight, bias, self.eps)
            normed = x.new_zeros(x.shape).index_copy(-1, kept, part.to(x.dtype))
        out = normed * mask.to(normed.dtype)
        if state.hidden_salience == "residual":
            state.collector.observe(("hidden", self._apt_site), normed, out)
        return out


class MaskedRMSNorm(nn.Module):
    """An RMS norm (LLaMA, Qwen2, Mistral, T5 ...) over the kept hidden dimensions, times the mask.

    Wraps any norm of the form ``weight * x / sqrt(mean(x**2) + eps)`` without knowing its class:
    the wrapper shares the norm's attributes (the same Parameter objects under the same names, its
    eps attribute whatever it is called) and calls the class's own forward, so the dtype handling
    of each family is kept. With ``D`` dimensions of which ``n`` are kept (mask > 0) and the others
    exactly zero, scaling the input by ``c = sqrt(D / n)`` turns the mean square over all ``D``
    into the mean square over the ``n`` kept ones (eps included), and the output, being linear in
    the input for a fixed mean square, is divided by ``c`` again::

        norm(c * x) / c = weight * x / sqrt(sum(x**2) / n + eps)

    which is the norm of the physically pruned width. Pruned dimensions are zeroed before and after.
    """

    _apt_state: MaskState | None = None
    _apt_site: int = -1
    _apt_norm_class: type | None = None

    @classmethod
    def from_norm(cls, norm: nn.Module, state: MaskState, site: int) -> MaskedRMSNorm:
        """Wrap ``norm`` sharing its Parameters (so names and optimizer references hold)."""
        masked = cls.__new__(cls)
        nn.Module.__init__(masked)
        # the norm's attribute dicts (parameters, eps, ...) become the wrapper's
        masked.__dict__.update(norm.__dict__)
        masked._apt_norm_class = type(norm)
        masked._apt_state = state
        masked._apt_site = site
        return masked

    def to_norm(self) -> nn.Module:
        """The wrapped norm class again, holding the same Parameters at the current width."""
        cls = self._apt_norm_class
        norm = cls.__new__(cls)
        norm.__dict__.update({k: v for k, v in self.__dict__.items() if not k.startswith("_apt_")})
        return norm

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return self._apt_norm_class.forward(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self._apt_state
        active = state is not None and state.enabled
        mask = state.hidden if active else None
        if mask is None:
            normed = self._norm(x)
            if active and state.hidden_salience == "norm_weighted":
                state.collector.observe_magnitude(("norm", self._apt_site), normed)
            return normed
        kept = mask > 0
        n_kept = int(kept.sum())
        if n_kept == 0:
            return torch.zeros_like(x)
        if n_kept == mask.numel():
            normed = self._norm(x)
        else:
            scale = math.sqrt(mask.numel() / n_kept)
            normed = self._norm(x * kept.to(x.dtype) * scale) / scale
        if state.hidden_salience == "norm_weighted":
            state.collector.observe_magnitude(("norm", self._apt_site), normed)
        return normed * mask.to(normed.dtype)

    def extra_repr(self) -> str:
        name = self._apt_norm_class.__name__ if self._apt_norm_class else "?"
        return f"{name}, width={self.weight.shape[0]}"


def _unit_pre_hook(state: MaskState, site_index: int, unit_width: int):
    def hook(module: nn.Module, args: tuple):
        if not state.enabled:
            return None
        x = args[0]
        mask = state.heads[site_index]
        if mask is None:
            state.collector.observe(("head", site_index), x, x)
            return None
        # (..., units * width) -> (..., units, width) to scale whole units
        shaped = x.reshape(*x.shape[:-1], mask.numel(), unit_width)
        y = (shaped * mask.to(x.dtype)[:, None]).reshape(x.shape)
        state.collector.observe(("head", site_index), x, y)
        return (y, *args[1:])

    return hook


def _neuron_pre_hook(state: MaskState, site_index: int):
    def hook(module: nn.Module, args: tuple):
        if not state.enabled:
            return None
        x = args[0]
        mask = state.neurons[site_index]
        if mask is None:
            state.collector.observe(("neuron", site_index), x, x)
            return None
        y = x * mask.to(x.dtype)
        state.collector.observe(("neuron", site_index), x, y)
        return (y, *args[1:])

    return hook


def _hidden_output_hook(state: MaskState, key: tuple, own_weights_only: bool = False):
    # own_weights_only (embeddings): score the output only when the module's own weights train.
    # A frozen embedding's output gets a gradient only when something forces one (transformers'
    # gradient checkpointing makes input embeddings require grad), which must not add a site.
    def hook(module: nn.Module, args: tuple, output):
        if not state.enabled:
            return None
        x = output[0] if isinstance(output, tuple) else output
        mask = state.hidden
        y = x if mask is None else x * mask.to(x.dtype)
        if state.hidden_salience == "residual" and (
            not own_weights_only or any(p.requires_grad for p in module.parameters())
        ):
            state.collector.observe(key, x, y)
        if mask is None:
            return None
        return (y, *output[1:]) if isinstance(output, tuple) else y

    return hook


def _reader_pre_hook(state: MaskState, key: tuple):
    # Hidden salience at the input of one linear that reads the hidden state (q, k, v, up, gate).
    # A view of the input gives this linear its own gradient, the one flowing into this block only
    # (not through the residual path or the other readers of the same tensor).
    def hook(module: nn.Module, args: tuple):
        if (
            not state.enabled
            or state.hidden_salience == "residual"
            or not state.collector.active
            or not torch.is_grad_enabled()
        ):
            return None
        x = args[0]
        # without a gradient upstream (frozen embeddings and norm) the input becomes a leaf
        y = x.view_as(x) if x.requires_grad else x.detach().requires_grad_()
        mask = state.hidden
        pre = x
        if mask is not None:
            # the activation before the hidden mask, so a fading dimension keeps its score
            m = mask.to(x.dtype)
            pre = torch.where(m > 0, x / torch.where(m > 0, m, torch.ones_like(m)), torch.zeros_like(x))
        state.collector.observe(key, pre, y)
        return (y, *args[1:])

    return hook


def block_input_paths(layout: ModelLayout) -> list[str]:
    """The linears whose inputs carry the block-input hidden salience: q, k, v, up and gate."""
    paths = []
    for site in layout.attention:
        paths += [site.q, site.k, site.v]
    for site in layout.ffn:
        paths += [site.up] + ([site.gate] if site.gate else [])
    return paths


def install_masks(model: nn.Module, layout: ModelLayout, state: MaskState) -> None:
    """Install the mask hooks and norm wrappers of ``layout`` on ``model`` (idempotent per state).

    Call after adapters are attached (the hooks sit on whatever module is at each path).
    """
    remove_masks(model, layout, state, unwrap_norms=False)
    for i, site in enumerate(layout.attention):
        o = model.get_submodule(site.o)
        state.handles.append(o.register_forward_pre_hook(_unit_pre_hook(state, i, site.unit_width)))
    for i, site in enumerate(layout.ffn):
        down = model.get_submodule(site.down)
        state.handles.append(down.register_forward_pre_hook(_neuron_pre_hook(state, i)))
    for j, path in enumerate(block_input_paths(layout)):
        reader = model.get_submodule(path)
        state.handles.append(reader.register_forward_pre_hook(_reader_pre_hook(state, ("hidden", "in", j))))
    if layout.hidden_mask_style not in ("post_norm", "pre_norm"):
        raise ValueError(f"unknown hidden mask style {layout.hidden_mask_style!r} (post_norm or pre_norm)")
    post_norm = layout.hidden_mask_style == "post_norm"
    for i, path in enumerate(layout.norms):
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        norm = getattr(parent, name)
        if isinstance(norm, (MaskedLayerNorm, MaskedRMSNorm)):
            norm._apt_state, norm._apt_site = state, i
        elif post_norm:
            setattr(parent, name, MaskedLayerNorm.from_layer_norm(norm, state, i))
        else:
            setattr(parent, name, MaskedRMSNorm.from_norm(norm, state, i))
    if post_norm:
        return
    # Pre-norm: the residual stream is the sum of the embedding and of every sub-layer output, so
    # masking exactly those keeps pruned dimensions at zero everywhere.
    hooked: set[int] = set()
    for j, path in enumerate(layout.embeddings):
        embedding = model.get_submodule(path)
        if id(embedding) not in hooked:
            hooked.add(id(embedding))
            state.handles.append(
                embedding.register_forward_hook(
                    _hidden_output_hook(state, ("hidden", "embed", j), own_weights_only=True)
                )
            )
    for j, path in enumerate(layout.writers()):
        writer = model.get_submodule(path)
        state.handles.append(writer.register_forward_hook(_hidden_output_hook(state, ("hidden", "out", j))))


def remove_masks(
    model: nn.Module, layout: ModelLayout, state: MaskState | None = None, *, unwrap_norms: bool = True
) -> None:
    """Remove the hooks of ``state`` and (by default) turn masked norms back into plain ones.

    The plain norms hold the same Parameter objects at the current width.
    """
    if state is not None:
        for handle in state.handles:
            handle.remove()
        state.handles.clear()
    if not unwrap_norms:
        return
    for path in layout.norms:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        norm = getattr(parent, name)
        if isinstance(norm, MaskedLayerNorm):
            setattr(parent, name, norm.to_layer_norm())
        elif isinstance(norm, MaskedRMSNorm):
            setattr(parent, name, norm.to_norm())


def zero_attention_output(
    kind: str, hidden_states: torch.Tensor, module: nn.Module | None = None, kwargs: dict | None = None
) -> tuple:
    """What an attention module with no unit left returns (see `AttentionSite.zero_kind`).

    The implementation lives in the exported loader file, so the live and the exported model agree;
    with ``module`` and the call's ``kwargs`` a self-attention cache still records the tokens.
    """
    return _zero_attention_output(kind, module, hidden_states, kwargs or {})


def _guarded_forward(kind: str, q_path_in_module: str):
    def forward(self, hidden_states, *args, **kwargs):
        q_weight = self.get_submodule(q_path_in_module).weight
        if q_weight.shape[0] == 0:
            return zero_attention_output(kind, hidden_states, self, kwargs)
        return type(self).forward(self, hidden_states, *args, **kwargs)

    return forward


def set_zero_attention_guard(model: nn.Module, site: AttentionSite) -> None:
    """Make an attention module return its empty output when its query has no rows left.

    The check reads the tensor at call time, so a teacher run with `torch.func.functional_call` and
    its own (larger) tensors still goes through the stock forward.
    """
    module = model.get_submodule(site.module)
    if "forward" in module.__dict__:
        return
    relative = site.q[len(site.module) + 1 :]
    module.forward = types.MethodType(_guarded_forward(site.zero_kind, relative), module)


def clear_zero_attention_guard(model: nn.Module, site: AttentionSite) -> None:
    """Remove the guard installed by `set_zero_attention_guard`."""
    module = model.get_submodule(site.module)
    module.__dict__.pop("forward", None)
