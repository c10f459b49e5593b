"""Outlier-aware activation x gradient salience (paper section 4.2, Eq. 3-5).

The hooks of `aptune.masks` hand every masked activation to a `SalienceCollector`, which keeps, per
channel, the sum over batch and tokens of ``|H|`` (in the forward) and of ``|dL/dH|`` (in the
backward, through a tensor hook). The compressed salience of a channel is the product of the two
sums; a head sums its channels, a hidden dimension sums its score over every site. This needs O(d)
memory per site and no gradient of any frozen weight.

The optional kurtosis term (``sqrt(max(excess kurtosis, 0))`` of the products ``W[:, j] * mean(x_j)``)
rewards blocks that carry outlier contributions. Heads use the kurtosis of *their own* ``d_m x d_h``
slice of products (the intended reading; the authors' LLaMA scorer mixed heads by a reshape without a
transpose).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = [
    "ChannelStats",
    "SalienceCollector",
    "block_kurtosis",
    "compressed_salience",
    "excess_kurtosis",
]


@dataclass
class ChannelStats:
    """Per-channel running sums at one hook site (float32, on the activation's device)."""

    act_abs: torch.Tensor
    grad_abs: torch.Tensor
    act_sum: torch.Tensor
    tokens: int = 0
    backward_calls: int = 0

    def mean_activation(self) -> torch.Tensor:
        """Signed mean activation per channel over every observed token."""
        return self.act_sum / max(self.tokens, 1)


@dataclass
class SalienceCollector:
    """Accumulates activation and gradient sums at named sites while ``active`` is true.

    Keys are tuples such as ``("head", site_index)``, ``("neuron", site_index)`` or
    ``("hidden", site_index)``. Sums add up across micro-batches until `reset` (the controller folds
    them into its EMA once per optimizer step).
    """

    active: bool = False
    stats: dict[tuple, ChannelStats] = field(default_factory=dict)

    def observe(self, key: tuple, pre_mask: torch.Tensor, post_mask: torch.Tensor) -> None:
        """Record ``|pre_mask|`` and ``|dL/d post_mask|`` when the backward reaches ``post_mask``.

        The activation is taken before the mask and the gradient after it, so a block whose soft
        mask is already 0 still gets a score and can re-enter the keep-set.
        """
        if not self.active or not post_mask.requires_grad or not torch.is_grad_enabled():
            return
        channels = pre_mask.shape[-1]
        if channels == 0:  # a site whose blocks were all removed
            return
        with torch.no_grad():
            flat = pre_mask.detach().reshape(-1, channels).float()  # (tokens, C)
            act_abs, act_sum, tokens = flat.abs().sum(0), flat.sum(0), flat.shape[0]

        def on_grad(grad: torch.Tensor) -> None:
            # The activation is counted only once its gradient arrives. Gradient checkpointing
            # runs a block's forward twice, and only one of the two runs gets a backward: the
            # first without reentrant checkpointing (its graph is the one differentiated), the
            # recomputation with it (the first ran without gradients and returned above).
            with torch.no_grad():
                stats = self._site_stats(key, act_abs)
                stats.act_abs += act_abs
                stats.act_sum += act_sum
                stats.tokens += tokens
                stats.grad_abs += grad.detach().reshape(-1, grad.shape[-1]).float().abs().sum(0)
                stats.backward_calls += 1

        post_mask.register_hook(on_grad)

    def _site_stats(self, key: tuple, like: torch.Tensor) -> ChannelStats:
        # The sums at ``key``, new (zeros like ``like``) when absent or of another width.
        stats = self.stats.get(key)
        if stats is None or stats.act_abs.shape[0] != like.shape[0]:
            zeros = torch.zeros_like(like)
            stats = ChannelStats(zeros.clone(), zeros.clone(), zeros.clone())
            self.stats[key] = stats
        return stats

    def observe_magnitude(self, key: tuple, normed: torch.Tensor) -> None:
        """Record the per-channel sum of squares of a norm's output (no gradient needed).

        Stored as a `ChannelStats` whose ``act_abs`` holds the sum of squares over tokens (so the
        distributed all-reduce of the stats covers it); `channel_rms` reads it back.
        """
        if not self.active:
            return
        channels = normed.shape[-1]
        with torch.no_grad():
            flat = normed.detach().reshape(-1, channels).float()  # (tokens, C)
            # a forward run twice by gradient checkpointing counts twice here, which the RMS
            # (sum of squares over tokens counted) does not see
            squares = flat.pow(2).sum(0)
            stats = self._site_stats(key, squares)
            stats.act_abs += squares
            stats.tokens += flat.shape[0]

    def channel_rms(self, key: tuple) -> torch.Tensor | None:
        """RMS over tokens per channel of what `observe_magnitude` recorded at ``key``."""
        stats = self.stats.get(key)
        if stats is None or stats.tokens == 0:
            return None
        return (stats.act_abs / stats.tokens).sqrt()

    def reset(self) -> None:
        """Forget all sums (after they were folded into the EMA, or after surgery)."""
        self.stats.clear()

    def channel_salience(self, key: tuple) -> torch.Tensor | None:
        """Compressed salience per channel at ``key``, or None if nothing was observed."""
        stats = self.stats.get(key)
        if stats is None or stats.backward_calls == 0:
            return None
        return compressed_salience(stats.act_abs, stats.grad_abs)


def compressed_salience(act_abs_sum: torch.Tensor, grad_abs_sum: torch.Tensor) -> torch.Tensor:
    """APT's compressed salience: ``(sum |dL/dH|) * (sum |H|)`` per channel (paper Eq. 4)."""
    return act_abs_sum * grad_abs_sum


def excess_kurtosis(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Fisher (excess) kurtosis along ``dim``: 4th standardised moment minus 3; 0 where std is 0."""
    values = values.double()
    centred = values - values.mean(dim=dim, keepdim=True)
    var = centred.pow(2).mean(dim=dim)
    fourth = centred.pow(4).mean(dim=dim)
    kurt = fourth / var.pow(2) - 3.0
    return torch.where(var > 0, kurt, torch.zeros_like(kurt)).float()


def block_kurtosis(
    weight: torch.Tensor, mean_input: torch.Tensor, unit_width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kurtosis bonuses of the blocks read by one output projection (``o`` or ``down``).

    The products ``O = W * mean_input`` (``W``: ``(d_model, channels)`` merged weight) are split into
    units of ``unit_width`` input channels (a head or KV group, or 1 for neurons).

    Args:
        weight: Merged weight of the projection, shape ``(d_model, channels)``.
        mean_input: Mean input activation per channel, shape ``(channels,)``.
        unit_width: Channels per block.

    Returns:
        ``(unit_bonus, hidden_bonus)``: ``sqrt(max(kurt, 0))`` per unit (over that unit's
        ``d_model * unit_width`` products) and per hidden dimension (over that row of ``O``).
    """
    products = weight.float() * mean_input.float()[None, :]  # (d_model, channels)
    d_model, channels = products.shape
    units = channels // unit_width
    # (d_model, units, width) -> (units, d_model * width): each unit's own products
    per_unit = products.reshape(d_model, units, unit_width).permute(1, 0, 2).reshape(units, -1)
    unit_bonus = excess_kurtosis(per_unit).clamp_min(0).sqrt()
    hidden_bonus = excess_kurtosis(products, dim=1).clamp_min(0).sqrt()
    return unit_bonus, hidden_bonus
