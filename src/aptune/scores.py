"""Scores the pruning and the rank allocation decide by: block salience and adapter importance.

`measure_salience` turns the sums of a `aptune.salience.SalienceCollector` into one score per
attention unit, FFN neuron and hidden dimension (plus the optional kurtosis bonus, paper section
4.2). `ScoreTracker` keeps their exponential moving average across optimizer steps, aligned with the
blocks still present, and the moving average of every adapter's importance (paper section 4.3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from aptune.arch import ModelLayout
from aptune.errors import ConfigError, ModelError
from aptune.salience import SalienceCollector, block_kurtosis

__all__ = [
    "Salience",
    "ScoreTracker",
    "flat_score_vectors",
    "hidden_salience_mode",
    "measure_salience",
    "norm_weighted_hidden",
    "summed_salience",
]


class Salience(NamedTuple):
    """One score per block: per attention site, per FFN site (None: no score) and per hidden dim."""

    heads: list[torch.Tensor | None]
    neurons: list[torch.Tensor | None]
    hidden: torch.Tensor | None

    def __add__(self, other: Salience) -> Salience:  # type: ignore[override]
        """Element-wise sum (scores of consecutive calibration batches), on the CPU."""
        heads = [_add(a, b) for a, b in zip(self.heads, other.heads, strict=True)]
        neurons = [_add(a, b) for a, b in zip(self.neurons, other.neurons, strict=True)]
        return Salience(heads, neurons, _add(self.hidden, other.hidden))


def measure_salience(
    collector: SalienceCollector,
    layout: ModelLayout,
    merged_weight: Callable[[str], torch.Tensor],
    use_kurtosis: bool,
) -> Salience:
    """The salience of every block from the sums collected since the last reset.

    Args:
        collector: The collector the mask hooks fed.
        layout: Where the attention and FFN sites are.
        merged_weight: Module path -> its weight with the adapter update merged (for kurtosis).
        use_kurtosis: Add the kurtosis bonus of the attention output / FFN down projections.

    Returns:
        The `Salience` (a unit's score sums its channels; hidden dimensions sum every site).
    """
    heads, neurons = [], []
    hidden = None
    # norm_weighted: the kurtosis bonus would make every hidden dimension unprunable on decoders
    norm_weighted = any(key[0] == "norm" for key in collector.stats)
    for i, site in enumerate(layout.attention):
        channel = collector.channel_salience(("head", i))
        if channel is None:
            heads.append(None)
            continue
        # (units * width,) -> (units, width): a unit's score sums its channels
        score = channel.reshape(-1, site.unit_width).sum(1)
        if use_kurtosis:
            stats = collector.stats[("head", i)]
            bonus, hidden_bonus = block_kurtosis(
                merged_weight(site.o), stats.mean_activation(), site.unit_width
            )
            score = score + bonus.to(score.device)
            if not norm_weighted:
                hidden = _add(hidden, hidden_bonus)
        heads.append(score)
    for i, site in enumerate(layout.ffn):
        channel = collector.channel_salience(("neuron", i))
        if channel is None:
            neurons.append(None)
            continue
        score = channel
        if use_kurtosis:
            stats = collector.stats[("neuron", i)]
            bonus, hidden_bonus = block_kurtosis(merged_weight(site.down), stats.mean_activation(), 1)
            score = score + bonus.to(score.device)
            if not norm_weighted:
                hidden = _add(hidden, hidden_bonus)
        neurons.append(score)
    for key in list(collector.stats):
        if key[0] == "hidden":
            channel = collector.channel_salience(key)
            if channel is not None:
                hidden = _add(hidden, channel)
    if norm_weighted:
        hidden = norm_weighted_hidden(collector, hidden)
    return Salience(heads, neurons, hidden)


def norm_weighted_hidden(collector: SalienceCollector, gradient_scores: torch.Tensor | None):
    """Hidden scores ordered by norm-weighted magnitude, on the scale of the gradient salience.

    Per channel ``c``, the magnitude ``sum over norms of |w_c| * RMS_tokens(x_hat_c)`` (``x_hat``
    the normalised activation, ``w`` the norm weight: the RMS over tokens of the norm's output)
    predicts how much a residual channel feeds every block, as width pruning of LLMs measures it.
    It is scaled so that its total equals the total block-input salience of the same step, so
    that hidden dimensions compete with heads and neurons on their activation x gradient scale.

    Args:
        collector: Holds the norm magnitudes (``("norm", i)`` keys).
        gradient_scores: Block-input activation x gradient salience per hidden dimension.

    Returns:
        The scores, or None without a gradient (no backward pass since the last reset).
    """
    magnitude = None
    for key in list(collector.stats):
        if key[0] == "norm":
            magnitude = _add(magnitude, collector.channel_rms(key))
    if magnitude is None or gradient_scores is None or float(magnitude.sum()) == 0:
        return gradient_scores
    return magnitude * (gradient_scores.sum() / magnitude.sum())


def hidden_salience_mode(config_value: str | None, layout: ModelLayout) -> str:
    """The hidden salience a run uses (`aptune.config.AptConfig.hidden_salience` resolved).

    ``None`` picks ``"block_inputs"`` for post-norm encoders (BERT, RoBERTa: the paper scores a
    hidden dimension by the gradient flowing into the attention and FFN blocks, not the residual
    path) and ``"residual"`` for pre-norm families (LLaMA-like decoders and T5, as the authors'
    scorers read the sub-layer outputs there).

    Raises:
        ConfigError: ``"norm_weighted"`` on a model without RMS norms (post-norm LayerNorm models).
    """
    if config_value is None:
        return "block_inputs" if layout.hidden_mask_style == "post_norm" else "residual"
    if config_value == "norm_weighted" and layout.hidden_mask_style != "pre_norm":
        raise ConfigError(
            f"hidden_salience='norm_weighted' needs a pre-norm model with RMS norms; {layout.family} is "
            "post-norm: use 'block_inputs' or 'residual'"
        )
    return config_value


def summed_salience(
    model: nn.Module,
    batches: Iterable[dict],
    collector: SalienceCollector,
    measure: Callable[[], Salience],
    loss_of: Callable[[dict], torch.Tensor | None] | None = None,
) -> tuple[Salience, int]:
    """The salience summed over calibration batches (one-shot pruning before tuning).

    Runs forward *and* backward on every batch in training mode (no optimizer step); the
    gradients are cleared and the collector is switched off afterwards.

    Args:
        model: The prepared model (its masks feed ``collector``).
        batches: Model-input dicts that include labels (the model must return ``loss``).
        collector: The collector the mask hooks feed.
        measure: Reads the salience of the batch from ``collector`` (after any all-reduce).
        loss_of: The loss of one batch (on the model's device); ``None``: ``model(**batch).loss``.
            The controller passes the chunked causal-LM loss when the run uses it, so that this
            pass never holds a batch's vocabulary logits either.

    Returns:
        ``(summed salience, number of batches)``.

    Raises:
        ModelError: a batch has no labels, or there are no batches.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    total: Salience | None = None
    seen = 0
    try:
        for batch in batches:
            collector.reset()
            collector.active = True
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            loss = model(**batch).loss if loss_of is None else loss_of(batch)
            if loss is None:
                raise ModelError("calibration batches must contain labels so that the model returns a loss")
            loss.backward()
            salience = measure()
            total = salience if total is None else total + salience
            seen += 1
    finally:
        collector.active = False
        collector.reset()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if total is None:
        raise ModelError("the calibration pass received no batches")
    return total, seen


class ScoreTracker:
    """Moving averages of block salience and adapter importance between pruning events.

    Args:
        num_attention: Number of attention sites.
        num_ffn: Number of FFN sites.
        beta: EMA factor (`AptConfig.salience_beta`): ``new = beta * old + (1 - beta) * value``.
        use_kurtosis: Whether `measure_salience` adds the kurtosis bonus for this model.

    Attributes:
        heads, neurons, hidden: EMA salience per block on the CPU, aligned with the blocks present
            (None until a score exists).
        updates: Number of steps folded in.
        adapter_importance: EMA importance per adapter path since the last event.
    """

    def __init__(self, num_attention: int, num_ffn: int, beta: float, use_kurtosis: bool) -> None:
        self.beta = beta
        self.use_kurtosis = use_kurtosis
        self.heads: list[torch.Tensor | None] = [None] * num_attention
        self.neurons: list[torch.Tensor | None] = [None] * num_ffn
        self.hidden: torch.Tensor | None = None
        self.updates = 0
        self.adapter_importance: dict[str, float] = {}

    def fold(self, salience: Salience) -> None:
        """Fold one step's salience into the moving average (a block without a score keeps its own)."""
        beta = self.beta

        def ema(old: torch.Tensor | None, new: torch.Tensor | None) -> torch.Tensor | None:
            if new is None:
                return old
            new = new.detach().float().cpu()
            if old is None or old.shape != new.shape:
                return new
            return beta * old + (1 - beta) * new

        self.heads = [ema(o, n) for o, n in zip(self.heads, salience.heads, strict=True)]
        self.neurons = [ema(o, n) for o, n in zip(self.neurons, salience.neurons, strict=True)]
        self.hidden = ema(self.hidden, salience.hidden)
        self.updates += 1

    def replace(self, salience: Salience) -> None:
        """Use ``salience`` as the scores (one-shot pruning from summed calibration batches)."""
        self.heads = [h.cpu() if h is not None else None for h in salience.heads]
        self.neurons = [n.cpu() if n is not None else None for n in salience.neurons]
        self.hidden = salience.hidden.cpu() if salience.hidden is not None else None
        self.updates = 0

    def clear(self) -> None:
        """Forget every block score (the next `fold` starts the moving average afresh)."""
        self.heads = [None] * len(self.heads)
        self.neurons = [None] * len(self.neurons)
        self.hidden = None
        self.updates = 0

    def update_adapter_importance(self, adapters: Mapping[str, Any]) -> None:
        """Fold each adapter's importance of this step into its moving average.

        The authors' code: per rank row ``k``, ``|sum_j A[k, j] * dL/dA[k, j]|``, averaged over the
        rank (size-neutral, so a large adapter is not favoured for being large). Adapters without a
        gradient are skipped.

        Args:
            adapters: Path -> `aptune.adapter.AptLinear`, read after the backward pass.
        """
        beta = self.beta
        for path, adapter in adapters.items():
            grad = adapter.lora_A.grad
            if grad is None:
                continue
            value = float((adapter.lora_A.detach() * grad).sum(1).abs().mean())
            old = self.adapter_importance.get(path)
            self.adapter_importance[path] = value if old is None else beta * old + (1 - beta) * value

    def keep_(self, kind: str, site: int | None, keep: torch.Tensor) -> None:
        """Drop the scores of removed blocks.

        Args:
            kind: ``"heads"``, ``"neurons"`` or ``"hidden"``.
            site: Index of the attention or FFN site (None for hidden dimensions).
            keep: Positions (among the current blocks) that stay.
        """
        if kind == "hidden":
            self.hidden = self.hidden[keep] if self.hidden is not None else None
            return
        scores = getattr(self, kind)
        if scores[site] is not None:
            scores[site] = scores[site][keep]

    def vectors(
        self, units: list[int], neurons: list[int], hidden_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat score vectors over every unit, every neuron and the hidden dims (0 where unscored).

        Args:
            units: Units per attention site now present.
            neurons: Neurons per FFN site now present.
            hidden_size: Hidden dimensions now present.
        """
        return flat_score_vectors(
            Salience(self.heads, self.neurons, self.hidden), units, neurons, hidden_size
        )

    def state_dict(self) -> dict[str, Any]:
        """Scores and counters (per-site tensors keyed by site index; missing scores are left out)."""
        return {
            "heads": {str(i): s for i, s in enumerate(self.heads) if s is not None},
            "neurons": {str(i): s for i, s in enumerate(self.neurons) if s is not None},
            "hidden": self.hidden,
            "updates": self.updates,
            "adapter_importance": dict(self.adapter_importance),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.heads = [state["heads"].get(str(i)) for i in range(len(self.heads))]
        self.neurons = [state["neurons"].get(str(i)) for i in range(len(self.neurons))]
        self.hidden = state["hidden"]
        self.updates = int(state["updates"])
        self.adapter_importance = dict(state["adapter_importance"])


def flat_score_vectors(
    salience: Salience, units: list[int], neurons: list[int], hidden_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat score vectors of ``salience`` over every unit, every neuron and the hidden dims (0 where
    a site has no score), as `aptune.blocks.BlockBook.select` takes them.

    Args:
        salience: Scores per site.
        units: Units per attention site now present.
        neurons: Neurons per FFN site now present.
        hidden_size: Hidden dimensions now present.
    """
    heads = [s if s is not None else torch.zeros(n) for s, n in zip(salience.heads, units, strict=True)]
    ffn = [s if s is not None else torch.zeros(n) for s, n in zip(salience.neurons, neurons, strict=True)]
    hidden = salience.hidden if salience.hidden is not None else torch.zeros(hidden_size)
    return cat_cpu(heads), cat_cpu(ffn), hidden


def cat_cpu(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate 1-D tensors as float32 on the CPU (an empty list gives an empty tensor)."""
    parts = [p.float().cpu() for p in parts]
    return torch.cat(parts) if parts else torch.zeros(0)


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if b is None:
        return a
    b = b.float().cpu()
    return b if a is None else a + b
