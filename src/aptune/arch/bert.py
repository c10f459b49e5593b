"""Layout table of BERT and RoBERTa encoders (post-LayerNorm, multi-head attention).

Hidden dimensions are masked through the LayerNorms: every LayerNorm of the model is swapped for a
masked one that normalises over the kept dimensions only and multiplies its output by the hidden
mask. In a post-norm encoder every residual-stream state is the output of such a norm, so pruned
dimensions stay exactly zero and the masked model equals the physically pruned one.
"""

from __future__ import annotations

from torch import nn

from aptune.arch.base import AttentionSite, FfnSite, ModelLayout
from aptune.errors import UnsupportedModelError

__all__ = ["BERT_HEAD_READERS", "bert_layout"]

# Task-head linears that read the (prunable) hidden state, keyed by model class name. The pooler of
# BERT reads hidden[:, 0]; its output is not the residual stream, so only its input columns shrink.
BERT_HEAD_READERS: dict[str, tuple[list[str], list[str]]] = {
    # class name: (readers relative to the model, fully trained task-head modules)
    "BertModel": (["pooler.dense"], []),
    "BertForSequenceClassification": (["bert.pooler.dense"], ["bert.pooler", "classifier"]),
    "BertForQuestionAnswering": (["qa_outputs"], ["qa_outputs"]),
    "BertForTokenClassification": (["classifier"], ["classifier"]),
    "RobertaModel": (["pooler.dense"], []),
    "RobertaForSequenceClassification": (["classifier.dense"], ["classifier"]),
    "RobertaForQuestionAnswering": (["qa_outputs"], ["qa_outputs"]),
    "RobertaForTokenClassification": (["classifier"], ["classifier"]),
}


def _set_bert_counts(module: nn.Module, units: int) -> None:
    module.num_attention_heads = units
    module.all_head_size = units * module.attention_head_size


def bert_layout(model: nn.Module) -> ModelLayout:
    """Build the layout of a BERT or RoBERTa model (with or without a task head).

    Raises:
        UnsupportedModelError: the task head is not one aptune knows.
    """
    cls_name = type(model).__name__
    if cls_name not in BERT_HEAD_READERS:
        raise UnsupportedModelError(
            f"{cls_name} is not supported for the bert/roberta family; supported classes: "
            f"{', '.join(sorted(BERT_HEAD_READERS))}"
        )
    config = model.config
    if getattr(config, "add_cross_attention", False) or getattr(config, "is_decoder", False):
        raise UnsupportedModelError(
            f"{cls_name} configured as a decoder is not supported; use it as an encoder"
        )
    if getattr(config, "position_embedding_type", "absolute") not in ("absolute", None):
        raise UnsupportedModelError(
            f"position_embedding_type={config.position_embedding_type!r} is not supported (only 'absolute')"
        )
    readers, heads = BERT_HEAD_READERS[cls_name]
    prefix = "" if cls_name.endswith("Model") else model.base_model_prefix + "."
    base = model.get_submodule(prefix[:-1]) if prefix else model
    if getattr(base, "pooler", None) is None:
        readers = [r for r in readers if "pooler" not in r]
        heads = [h for h in heads if "pooler" not in h]
    n_layers = len(base.encoder.layer)
    head_dim = config.hidden_size // config.num_attention_heads
    attention, ffn, norms, layer_paths = [], [], [f"{prefix}embeddings.LayerNorm"], []
    for i in range(n_layers):
        lp = f"{prefix}encoder.layer.{i}"
        layer_paths.append(lp)
        attention.append(
            AttentionSite(
                module=f"{lp}.attention.self",
                q=f"{lp}.attention.self.query",
                k=f"{lp}.attention.self.key",
                v=f"{lp}.attention.self.value",
                o=f"{lp}.attention.output.dense",
                layer=i,
                stack="encoder",
                head_dim=head_dim,
                group_size=1,
                set_counts=_set_bert_counts,
                count_attrs=("num_attention_heads", "all_head_size"),
                # BertSelfAttention returns (context, weights); with no head left the context has
                # width 0 and the output projection (0 input columns) adds only its bias.
                zero_kind="empty_context",
            )
        )
        ffn.append(
            FfnSite(up=f"{lp}.intermediate.dense", down=f"{lp}.output.dense", layer=i, stack="encoder")
        )
        norms += [f"{lp}.attention.output.LayerNorm", f"{lp}.output.LayerNorm"]
    embeddings = [f"{prefix}embeddings.word_embeddings", f"{prefix}embeddings.position_embeddings"]
    if getattr(base.embeddings, "token_type_embeddings", None) is not None:
        embeddings.append(f"{prefix}embeddings.token_type_embeddings")
    return ModelLayout(
        family="bert",
        attention=attention,
        ffn=ffn,
        hidden_size=config.hidden_size,
        num_layers=n_layers,
        embeddings=embeddings,
        norms=norms,
        extra_readers=list(readers),
        extra_writers=[],
        hidden_mask_style="post_norm",
        is_decoder=False,
        default_adapter_roles=("q", "v", "up"),
        layer_paths=layer_paths,
        trainable_heads=list(heads),
    )
