"""Layout table of LLaMA-family decoders: LLaMA, Mistral and Qwen2 (pre-RMSNorm, grouped-query attention).

Attention unit (the GQA decision). A prunable attention unit is one key/value head *together with its
``num_attention_heads // num_key_value_heads`` query heads* (`AttentionSite.group_size`). Removing a
unit removes ``group_size * head_dim`` rows of ``q_proj``, ``head_dim`` rows of ``k_proj`` and of
``v_proj`` and ``group_size * head_dim`` columns of ``o_proj``. Every surviving key/value head keeps
all its query heads, so the number of query heads per group never changes and the stock attention
(``repeat_kv`` with ``num_key_value_groups``, SDPA's ``enable_gqa``) keeps working untouched. The
alternative, pruning single query heads inside a group, would give groups of different sizes, which
no stock attention kernel supports. Without GQA (LLaMA-2 7B/13B) a unit is a single head. A unit
costs ``(2 * group_size + 2) * head_dim`` parameters per hidden dimension (`aptune.select`).

Head counts. The transformers 5.24 attention forward of all three families reads no head count: it
views the projections as ``(..., -1, head_dim)`` and only reads ``num_key_value_groups`` (unchanged
by construction), ``head_dim`` and ``scaling``. `_set_counts` therefore writes nothing; the export
plan records the tensor shapes, which is all the loader needs. A layer that loses every unit returns
zeros (``zero_kind="zero_hidden"``: ``o_proj`` lives inside the module) and still records its
tokens in the KV cache, because layer 0's cache length drives positions and masks in ``generate``.

FFN. The gated FFN ``down(act(gate(x)) * up(x))`` is pruned by neuron: a row of ``gate_proj`` and of
``up_proj`` and a column of ``down_proj``; a neuron costs 3 parameters per hidden dimension.

Hidden dimensions (``hidden_mask_style="pre_norm"``). The residual stream is the embedding output
plus every ``o_proj`` and ``down_proj`` output; those are multiplied by the hidden mask, and every
RMSNorm (both per layer and the final one) is wrapped by `aptune.masks.MaskedRMSNorm`, which takes
the mean square over kept dimensions only. ``lm_head`` (or the classifier ``score``) is a reader: its
input columns are pruned. With tied embeddings (``tie_word_embeddings``, e.g. SmolLM2) ``lm_head``
holds the embedding Parameter itself; surgery slices each Parameter once, so they stay tied.

Adapters go on q and v by default (the paper's LLaMA recipe); FFN adapters are available through
``AptConfig.adapter_targets`` (e.g. ``("q", "v", "gate")``, the authors' alternative script). The
family counts as a decoder, so the kurtosis term is on by default.
"""

from __future__ import annotations

from torch import nn

from aptune.arch.base import AttentionSite, FfnSite, ModelLayout
from aptune.errors import UnsupportedModelError

__all__ = ["LLAMA_MODEL_TYPES", "llama_layout"]

#: Model types sharing the LLaMA layout (module names and forward contracts are identical).
LLAMA_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2")

# Task heads that read the final hidden state, keyed by class-name suffix:
# (readers, fully trained task-head modules)
_HEADS: dict[str, tuple[list[str], list[str]]] = {
    "ForCausalLM": (["lm_head"], []),
    "ForSequenceClassification": (["score"], ["score"]),
}


def _set_counts(module: nn.Module, units: int) -> None:
    """Nothing to write: the 5.24 forward infers the head count from the projection widths."""


def llama_layout(model: nn.Module) -> ModelLayout:
    """Build the layout of a LLaMA, Mistral or Qwen2 causal LM or sequence classifier.

    Raises:
        UnsupportedModelError: the class is not a supported head, or the config uses a feature
            the table does not handle (uneven query groups).
    """
    cls_name = type(model).__name__
    suffix = next((s for s in _HEADS if cls_name.endswith(s)), None)
    if suffix is None:
        supported = [f"{t.capitalize()}{s}" for t in ("Llama", "Mistral", "Qwen2") for s in _HEADS]
        raise UnsupportedModelError(
            f"{cls_name} is not supported for the llama family; supported classes: {', '.join(supported)}"
        )
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if heads % kv_heads:
        raise UnsupportedModelError(
            f"{cls_name}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
        )
    readers, trainable = _HEADS[suffix]
    prefix = model.base_model_prefix + "."
    base = model.get_submodule(model.base_model_prefix)
    attention, ffn, norms, layer_paths = [], [], [], []
    for i in range(len(base.layers)):
        lp = f"{prefix}layers.{i}"
        layer_paths.append(lp)
        module_path = f"{lp}.self_attn"
        attention.append(
            AttentionSite(
                module=module_path,
                q=f"{module_path}.q_proj",
                k=f"{module_path}.k_proj",
                v=f"{module_path}.v_proj",
                o=f"{module_path}.o_proj",
                layer=i,
                stack="decoder",
                head_dim=int(model.get_submodule(module_path).head_dim),
                group_size=heads // kv_heads,
                set_counts=_set_counts,
                count_attrs=(),
                zero_kind="zero_hidden",
            )
        )
        ffn.append(
            FfnSite(
                up=f"{lp}.mlp.up_proj",
                gate=f"{lp}.mlp.gate_proj",
                down=f"{lp}.mlp.down_proj",
                layer=i,
                stack="decoder",
            )
        )
        norms += [f"{lp}.input_layernorm", f"{lp}.post_attention_layernorm"]
    norms.append(f"{prefix}norm")
    embedding = f"{prefix}embed_tokens"
    tied = []
    if suffix == "ForCausalLM" and model.lm_head.weight is base.embed_tokens.weight:
        tied.append(("lm_head.weight", f"{embedding}.weight"))
    return ModelLayout(
        family="llama",
        attention=attention,
        ffn=ffn,
        hidden_size=config.hidden_size,
        num_layers=len(layer_paths),
        embeddings=[embedding],
        norms=norms,
        extra_readers=list(readers),
        extra_writers=[],
        hidden_mask_style="pre_norm",
        is_decoder=True,
        default_adapter_roles=("q", "v"),
        layer_paths=layer_paths,
        trainable_heads=list(trainable),
        tied=tied,
    )
