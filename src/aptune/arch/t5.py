"""Layout table of T5 encoder-decoders (``T5ForConditionalGeneration``, gated and non-gated FFN).

Blocks. Three kinds of attention sites, pruned by head (T5 has no GQA): encoder self-attention
(``stack="encoder"``), decoder self-attention (``"decoder"``) and cross-attention (``"cross"``); FFN
neurons of the encoder and of the decoder (``wi`` rows / ``wo`` columns, or ``wi_0`` and ``wi_1``
rows / ``wo`` columns for ``feed_forward_proj="gated-..."``, 3 parameters per hidden dimension).
``T5Attention`` views its projections as ``(..., -1, d_kv)``; ``set_counts`` still keeps ``n_heads``
and ``inner_dim`` truthful. A module with no head left returns zeros plus the position bias it was
given (``zero_kind="zero_hidden_bias"``, T5's 3-tuple), and a decoder self-attention keeps
recording its tokens in the cache.

Relative position bias (the design choice). Stock T5 computes the bias once per stack in layer 0,
from a ``(buckets, heads)`` table with one column per head of layer 0, and hands it to all later
layers; cross-attention likewise shares a zero bias shaped by layer 0's head count. Once layers keep
different heads those shared tensors have the wrong width. The fix (patch
``"t5_own_position_bias"`` in `aptune.hub.modeling_aptune`, applied by `aptune.prepare_` and by the
exported loader): every self-attention layer gets its own copy of its stack's table and computes its
own bias (a forward pre-hook drops the shared one), and cross-attention gets a ``(1, 1, 1, 1)`` zero
bias that broadcasts over any head count. Each table is a per-head-column tensor of its site
(`AttentionSite.head_columns`), so surgery keeps the columns of the kept heads; before pruning the
copies equal layer 0's table, so the model computes exactly what stock T5 computes. The cost is one
``buckets x heads`` table per layer (384 numbers per layer for T5-base). The alternatives were worse:
slicing a shared full-width bias per layer needs per-layer index lists that a teacher run with its
own (larger) tensors through ``functional_call`` cannot see, whereas with per-layer tables the
teacher's tables carry its own heads.

Cross-attention floor. As in the authors' code, the last decoder layer always keeps its most salient
cross-attention head (`AttentionSite.min_units`), so the decoder never loses the encoder entirely.

Hidden dimensions (``hidden_mask_style="pre_norm"``). One mask is shared by the encoder, the
decoder and the shared embedding (``shared``, ``encoder.embed_tokens`` and ``decoder.embed_tokens``
hold one Parameter; ``lm_head`` holds it too, since transformers 5 always ties T5's LM head). The
residual stream is masked at the embedding outputs and at every ``o`` and ``wo`` output, and every
``T5LayerNorm`` (an RMS norm without mean) is wrapped by `aptune.masks.MaskedRMSNorm`. ``lm_head``
and the cross-attention ``k``/``v`` (they read the encoder output) are readers. Output scaling:
with ``scale_decoder_outputs`` T5 multiplies the decoder output by ``d_model ** -0.5`` before the LM
head, where ``d_model`` is ``T5ForConditionalGeneration.model_dim``, fixed at construction from
``config.d_model``. aptune never changes ``config.d_model`` (the export keeps the original config),
so the scale stays the original one after hidden dimensions go and masked == pruned holds.

Adapters: q and v of all three attention kinds plus the first FFN input projection (``wi_0`` when
gated, ``wi`` otherwise), the authors' T5 recipe. Kurtosis is off by default, as
in the authors' T5 scorer (``is_decoder=False``; set ``AptConfig.use_kurtosis`` to turn it on).
"""

from __future__ import annotations

from torch import nn

from aptune.arch.base import AttentionSite, FfnSite, ModelLayout
from aptune.errors import UnsupportedModelError

__all__ = ["T5_PATCHES", "t5_layout"]

#: Structural patches a T5 model needs (see the module docstring).
T5_PATCHES: tuple[str, ...] = ("t5_own_position_bias",)

_SUPPORTED = ("T5ForConditionalGeneration",)


def _set_t5_counts(module: nn.Module, units: int) -> None:
    module.n_heads = units
    module.inner_dim = units * module.key_value_proj_dim


def _attention_site(path: str, layer: int, stack: str, head_dim: int, self_attention: bool) -> AttentionSite:
    return AttentionSite(
        module=path,
        q=f"{path}.q",
        k=f"{path}.k",
        v=f"{path}.v",
        o=f"{path}.o",
        layer=layer,
        stack=stack,
        head_dim=head_dim,
        group_size=1,
        set_counts=_set_t5_counts,
        count_attrs=("n_heads", "inner_dim"),
        zero_kind="zero_hidden_bias",
        # after the patch every self-attention owns a relative position table
        head_columns=(f"{path}.relative_attention_bias.weight",) if self_attention else (),
    )


def _ffn_site(path: str, layer: int, stack: str, gated: bool) -> FfnSite:
    if gated:
        return FfnSite(up=f"{path}.wi_1", gate=f"{path}.wi_0", down=f"{path}.wo", layer=layer, stack=stack)
    return FfnSite(up=f"{path}.wi", down=f"{path}.wo", layer=layer, stack=stack)


def t5_layout(model: nn.Module) -> ModelLayout:
    """Build the layout of a ``T5ForConditionalGeneration``.

    Raises:
        UnsupportedModelError: another T5 class (encoder-only, classification heads).
    """
    cls_name = type(model).__name__
    if cls_name not in _SUPPORTED:
        raise UnsupportedModelError(
            f"{cls_name} is not supported for the t5 family; supported classes: {', '.join(_SUPPORTED)}"
        )
    config = model.config
    gated = bool(config.is_gated_act)
    head_dim = config.d_kv
    attention: list[AttentionSite] = []
    ffn: list[FfnSite] = []
    norms: list[str] = []
    layer_paths: list[str] = []
    for stack in ("encoder", "decoder"):
        blocks = model.get_submodule(stack).block
        for i in range(len(blocks)):
            bp = f"{stack}.block.{i}"
            layer_paths.append(bp)
            attention.append(_attention_site(f"{bp}.layer.0.SelfAttention", i, stack, head_dim, True))
            norms.append(f"{bp}.layer.0.layer_norm")
            if stack == "decoder":
                attention.append(
                    _attention_site(f"{bp}.layer.1.EncDecAttention", i, "cross", head_dim, False)
                )
                norms.append(f"{bp}.layer.1.layer_norm")
            ff = len(blocks[i].layer) - 1
            ffn.append(_ffn_site(f"{bp}.layer.{ff}.DenseReluDense", i, stack, gated))
            norms.append(f"{bp}.layer.{ff}.layer_norm")
        norms.append(f"{stack}.final_layer_norm")
    last_cross = max((s for s in attention if s.stack == "cross"), key=lambda s: s.layer, default=None)
    if last_cross is not None:
        last_cross.min_units = 1
    return ModelLayout(
        family="t5",
        attention=attention,
        ffn=ffn,
        hidden_size=config.d_model,
        num_layers=len(model.encoder.block),
        embeddings=["shared", "encoder.embed_tokens", "decoder.embed_tokens"],
        norms=norms,
        extra_readers=["lm_head"],
        extra_writers=[],
        hidden_mask_style="pre_norm",
        # T5 is not a decoder LM: kurtosis stays off by default, as in the authors' T5 scorer
        is_decoder=False,
        default_adapter_roles=("q", "v", "gate" if gated else "up"),
        layer_paths=layer_paths,
        tied=[("lm_head.weight", "shared.weight")] if model.lm_head.weight is model.shared.weight else [],
        patches=T5_PATCHES,
    )
