"""The model layout: which modules of a family play which role.

A `ModelLayout` names, by dotted module path, every linear layer, norm and embedding that pruning
touches. It is built once per model by a family table (`aptune.arch.bert`, ...) and then drives the
masks, the salience hooks, the surgery and the export without any family-specific code.

Attention is pruned in *units*: a unit is one key/value group together with its query heads. For
multi-head attention (BERT, RoBERTa, T5, LLaMA without GQA) a unit is a single head. For grouped-query
attention a unit is a whole KV group, so the number of query heads per group never changes and the
stock attention code (``repeat_kv``) keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

__all__ = ["AttentionSite", "FfnSite", "ModelLayout"]


@dataclass
class AttentionSite:
    """One attention module: the paths of its projections and how its head counts are stored.

    Attributes:
        module: Path of the attention module whose head-count attributes must follow the surgery.
        q, k, v, o: Paths of the query, key, value and output projections.
        layer: Index of the transformer layer in its stack.
        stack: ``"encoder"``, ``"decoder"`` or ``"cross"`` (T5 cross-attention).
        head_dim: Channels per head.
        group_size: Query heads per key/value head (1 without GQA).
        set_counts: ``set_counts(module, units)`` writes the head counts the forward reads.
        count_attrs: Names of the attributes ``set_counts`` writes (recorded in the export plan).
        zero_kind: What the module returns once every unit is gone: ``"empty_context"`` (a
            width-0 context for an output projection outside the module, BERT),
            ``"zero_hidden"`` (zeros shaped like the input, when ``o`` lives inside the module) or
            ``"zero_hidden_bias"`` (T5: zeros plus the position bias passed through).
        head_columns: Paths of parameters with one column per query head (T5's relative position
            table); surgery keeps the columns of the kept heads.
        min_units: Units this site always keeps (T5: the last decoder layer keeps its most salient
            cross-attention head, as the authors' code does).
    """

    module: str
    q: str
    k: str
    v: str
    o: str
    layer: int
    stack: str
    head_dim: int
    group_size: int
    set_counts: Callable[[nn.Module, int], None]
    count_attrs: tuple[str, ...]
    zero_kind: str
    head_columns: tuple[str, ...] = ()
    min_units: int = 0

    @property
    def unit_width(self) -> int:
        """Query/output channels per unit (``group_size * head_dim``)."""
        return self.group_size * self.head_dim

    @property
    def kv_width(self) -> int:
        """Key/value channels per unit."""
        return self.head_dim

    def cost_per_hidden(self) -> int:
        """Parameters per unit and per hidden dimension: q and o rows/columns plus k and v rows."""
        return 2 * self.unit_width + 2 * self.kv_width


@dataclass
class FfnSite:
    """One feed-forward block: up (and gate) projections feed ``down`` through a non-linearity."""

    up: str
    down: str
    layer: int
    stack: str
    gate: str | None = None

    def cost_per_hidden(self) -> int:
        """Parameters per neuron and per hidden dimension (3 when gated, else 2)."""
        return 3 if self.gate else 2


@dataclass
class ModelLayout:
    """Everything aptune needs to know about one model's structure.

    Attributes:
        family: Table name (``"bert"``, ``"llama"``, ``"t5"``).
        attention: All attention sites.
        ffn: All FFN sites.
        hidden_size: Current residual-stream width.
        num_layers: Layers per stack (for distillation, the encoder stack of encoders).
        embeddings: Paths of embeddings whose columns are hidden dimensions.
        norms: Paths of norms over the hidden dimension.
        extra_readers: Linears (outside the sites) whose input is the hidden state.
        extra_writers: Linears (outside the sites) whose output is added to the hidden state.
        hidden_mask_style: ``"post_norm"`` (BERT: masked LayerNorms carry the hidden mask) or
            ``"pre_norm"`` (LLaMA/T5: embedding and sub-layer outputs are multiplied by the mask).
        is_decoder: Whether the model is a decoder LM (kurtosis default on).
        default_adapter_roles: Roles that get adapters when the config does not say.
        layer_paths: Paths of the transformer layers whose outputs are distilled.
        trainable_heads: Paths of task-head modules that train fully.
        tied: Pairs of parameter names that must stay the same tensor.
        patches: Names of structural patches (``aptune.hub.modeling_aptune.PATCHES``) that
            `aptune.prepare_` applies to the model and the exported plan records, so that the
            loader applies them too (T5: ``"t5_own_position_bias"``).
    """

    family: str
    attention: list[AttentionSite]
    ffn: list[FfnSite]
    hidden_size: int
    num_layers: int
    embeddings: list[str]
    norms: list[str]
    extra_readers: list[str]
    extra_writers: list[str]
    hidden_mask_style: str
    is_decoder: bool
    default_adapter_roles: tuple[str, ...]
    layer_paths: list[str]
    trainable_heads: list[str] = field(default_factory=list)
    tied: list[tuple[str, str]] = field(default_factory=list)
    patches: tuple[str, ...] = ()

    def readers(self) -> list[str]:
        """Every linear whose input columns are hidden dimensions."""
        paths = []
        for site in self.attention:
            paths += [site.q, site.k, site.v]
        for site in self.ffn:
            paths.append(site.up)
            if site.gate:
                paths.append(site.gate)
        return paths + list(self.extra_readers)

    def writers(self) -> list[str]:
        """Every linear whose output rows are hidden dimensions."""
        return [s.o for s in self.attention] + [s.down for s in self.ffn] + list(self.extra_writers)

    def role_paths(self, role: str) -> list[str]:
        """Paths of all linears playing ``role`` (q, k, v, o, up, gate, down)."""
        if role in ("q", "k", "v", "o"):
            return [getattr(site, role) for site in self.attention]
        if role in ("up", "down", "gate"):
            return [p for p in (getattr(site, role) for site in self.ffn) if p]
        raise ValueError(f"unknown role {role!r}")
