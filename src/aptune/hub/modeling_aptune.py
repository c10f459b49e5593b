"""Loader of models exported by aptune (self-contained: needs only torch and transformers).

An aptune export is a stock transformers model whose layers have non-uniform sizes (heads, FFN
widths and hidden size chosen by pruning). Its ``config.json`` keeps the original ``model_type`` and
adds ``aptune_plan``: the shape of every tensor in the checkpoint, the head-count attributes of every
attention module, the attention modules that lost all heads, and the named structural patches the
model needs (e.g. T5's per-layer relative position tables). The classes below build the stock model,
apply the patches, resize its tensors to the plan, and let ``from_pretrained`` load the weights. This
file is copied into every export and registered through ``auto_map``, so
``AutoModelFor...from_pretrained(path, trust_remote_code=True)`` works without aptune installed.

aptune itself uses the same functions on the live model during training (`zero_attention_output`,
`apply_patches_`), so the trained and the exported model run the same code.
"""

from __future__ import annotations

import types

import torch
import transformers
from torch import nn

PLAN_KEY = "aptune_plan"
PLAN_FORMAT_VERSION = 3
# Version 1 plans (no "patches" key) and version 2 plans (no "weights_sha256" key, the content hash of
# model.safetensors that version 3 records) mean the same thing under version 3.
READABLE_PLAN_VERSIONS = (1, 2, 3)

_BASES = {
    "AptBertModel": "BertModel",
    "AptBertForSequenceClassification": "BertForSequenceClassification",
    "AptBertForQuestionAnswering": "BertForQuestionAnswering",
    "AptBertForTokenClassification": "BertForTokenClassification",
    "AptRobertaModel": "RobertaModel",
    "AptRobertaForSequenceClassification": "RobertaForSequenceClassification",
    "AptRobertaForQuestionAnswering": "RobertaForQuestionAnswering",
    "AptRobertaForTokenClassification": "RobertaForTokenClassification",
    "AptLlamaForCausalLM": "LlamaForCausalLM",
    "AptLlamaForSequenceClassification": "LlamaForSequenceClassification",
    "AptMistralForCausalLM": "MistralForCausalLM",
    "AptMistralForSequenceClassification": "MistralForSequenceClassification",
    "AptQwen2ForCausalLM": "Qwen2ForCausalLM",
    "AptQwen2ForSequenceClassification": "Qwen2ForSequenceClassification",
    "AptT5ForConditionalGeneration": "T5ForConditionalGeneration",
}


# ---------------------------------------------------------------------------------------------- attention
# modules with every unit pruned
def _cache_argument(kwargs: dict):
    # transformers 5 renamed ``past_key_values`` to ``cache``; accept every spelling callers use
    for name in ("cache", "past_key_values", "past_key_value"):
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def _keep_cache_length(module: nn.Module, hidden_states: torch.Tensor, kwargs: dict) -> None:
    """Record this step's tokens in the self-attention cache of a layer that no longer attends.

    The cache derives the sequence length (and from it positions and masks, read from layer 0) from
    dim -2 of the stored keys and counts an empty tensor as length 0. A placeholder of one zero
    channel of one head per token, ``(batch, 1, tokens, 1)``, keeps that length right at a negligible
    cost. Cross-attention caches hold encoder states whose length nothing reads, so they are skipped.
    """
    cache = _cache_argument(kwargs)
    if cache is None or kwargs.get("key_value_states") is not None:
        return
    cache = getattr(cache, "self_attention_cache", cache)
    placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
    cache.update(placeholder, placeholder, module.layer_idx)


def zero_attention_output(kind: str, module: nn.Module, hidden_states: torch.Tensor, kwargs: dict) -> tuple:
    """What an attention module with no unit left returns instead of running its forward.

    Args:
        kind: ``"empty_context"`` (BERT: a width-0 context for the output projection outside the
            module), ``"zero_hidden"`` (LLaMA family: ``(zeros, None)``) or ``"zero_hidden_bias"``
            (T5: ``(zeros, position_bias, None)``, the bias passed through unchanged).
        module: The attention module (its ``layer_idx`` addresses the cache).
        hidden_states: The module's input, ``(batch, tokens, hidden)``.
        kwargs: The keyword arguments of the call (cache, position bias, ...).

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "empty_context":
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None
    if kind not in ("zero_hidden", "zero_hidden_bias"):
        raise ValueError(f"unknown zero-attention kind {kind!r}")
    _keep_cache_length(module, hidden_states, kwargs)
    zeros = torch.zeros_like(hidden_states)
    if kind == "zero_hidden":
        return zeros, None
    return zeros, kwargs.get("position_bias"), None


def _zero_attention_forward(kind: str):
    def forward(self, hidden_states, *args, **kwargs):
        return zero_attention_output(kind, self, hidden_states, kwargs)

    return forward


# ---------------------------------------------------------------------------------------------- patches
def _own_bias_pre_hook(module: nn.Module, args: tuple, kwargs: dict):
    # Drop the bias handed down from layer 0 so that this layer computes its own from its own table.
    kwargs["position_bias"] = None
    return args, kwargs


def _broadcast_zero_bias_pre_hook(module: nn.Module, args: tuple, kwargs: dict):
    # Cross-attention has no position bias; stock T5 builds zeros shaped by layer 0's head count and
    # shares them with later layers. A (1, 1, 1, 1) zero broadcasts over any number of heads.
    hidden_states = args[0] if args else kwargs["hidden_states"]
    kwargs["position_bias"] = hidden_states.new_zeros(1, 1, 1, 1)
    return args, kwargs


def _t5_own_position_bias(model: nn.Module) -> None:
    """T5: every self-attention layer owns a copy of its stack's relative position table.

    Stock T5 computes the position bias once, in layer 0 of each stack, from a table with one column
    per head of layer 0, and hands it to every later layer. Once layers keep different heads that
    bias has the wrong width for them. With its own table (``(buckets, heads)``, a few hundred
    numbers) every layer computes the bias of exactly its kept heads, and a teacher run with other
    tensors (``torch.func.functional_call``) gets the bias of its own heads. The copies equal layer
    0's table, so the unpruned model computes exactly what stock T5 computes.
    """
    for stack in model.modules():
        blocks = getattr(stack, "block", None)
        if (
            not isinstance(blocks, nn.ModuleList)
            or len(blocks) == 0
            or getattr(stack, "_aptune_own_bias", False)
        ):
            continue
        table = blocks[0].layer[0].SelfAttention.relative_attention_bias
        for block in blocks:
            attention = block.layer[0].SelfAttention
            if not attention.has_relative_attention_bias:
                own = nn.Embedding(
                    table.num_embeddings,
                    table.embedding_dim,
                    device=table.weight.device,
                    dtype=table.weight.dtype,
                )
                with torch.no_grad():
                    own.weight.copy_(table.weight)
                own.weight.requires_grad_(table.weight.requires_grad)
                attention.relative_attention_bias = own
                attention.has_relative_attention_bias = True
            attention.register_forward_pre_hook(_own_bias_pre_hook, with_kwargs=True)
            if len(block.layer) == 3:  # decoder block: self-attention, cross-attention, FFN
                block.layer[1].EncDecAttention.register_forward_pre_hook(
                    _broadcast_zero_bias_pre_hook, with_kwargs=True
                )
        stack._aptune_own_bias = True


PATCHES = {"t5_own_position_bias": _t5_own_position_bias}


def apply_patches_(model: nn.Module, names) -> None:
    """Apply the named structural patches of `PATCHES` to ``model`` in place (idempotent).

    Raises:
        ValueError: a name is unknown.
    """
    for name in names:
        if name not in PATCHES:
            raise ValueError(f"unknown aptune patch {name!r}; known: {sorted(PATCHES)}")
        PATCHES[name](model)


# ---------------------------------------------------------------------------------------------- plan
def apply_plan(model: nn.Module, plan: dict) -> None:
    """Resize ``model``'s tensors and attention attributes to an aptune plan (in place).

    Raises:
        ValueError: the plan has an unknown format version, an unknown patch, or names a tensor the
            model lacks.
    """
    version = plan.get("format_version")
    if version not in READABLE_PLAN_VERSIONS:
        raise ValueError(
            f"aptune plan format {version!r} is not supported (reads {list(READABLE_PLAN_VERSIONS)})"
        )
    apply_patches_(model, plan.get("patches", []))
    for name, shape in plan["shapes"].items():
        module_path, _, attr = name.rpartition(".")
        try:
            module = model.get_submodule(module_path)
        except AttributeError:
            raise ValueError(f"aptune plan names {name!r}, which this model does not have") from None
        current = getattr(module, attr, None)
        if not isinstance(current, nn.Parameter) or tuple(current.shape) == tuple(shape):
            continue
        fresh = torch.empty(tuple(shape), dtype=current.dtype, device=current.device)
        setattr(module, attr, nn.Parameter(fresh, requires_grad=current.requires_grad))
    # Tied parameters appear once in the plan; re-tie before sizes are read from the tensors.
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.Embedding):
            module.embedding_dim = module.weight.shape[1]
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            module.normalized_shape = (module.weight.shape[0],)
    for path, attributes in plan.get("attributes", {}).items():
        module = model.get_submodule(path)
        for key, value in attributes.items():
            setattr(module, key, value)
    for path, kind in plan.get("zero_attention", {}).items():
        module = model.get_submodule(path)
        module.forward = types.MethodType(_zero_attention_forward(kind), module)


def _make_class(name: str, base_name: str):
    base = getattr(transformers, base_name, None)
    if base is None:
        return None

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        plan = getattr(config, PLAN_KEY, None)
        if plan:
            apply_plan(self, plan)

    return type(
        name,
        (base,),
        {"__init__": __init__, "__module__": __name__, "__doc__": f"{base_name} resized by an aptune plan."},
    )


for _name, _base in _BASES.items():
    _cls = _make_class(_name, _base)
    if _cls is not None:
        globals()[_name] = _cls


def register_with_pipelines() -> None:
    """Name the loader classes among the models that transformers' pipelines support (idempotent).

    A pipeline checks its model's class name against a table of `transformers.models.auto.modeling_auto`
    (``MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES`` and the like: model type -> class name) and
    logs "is not supported" for any other class. Each loader class joins every table that lists its
    stock class, under the key ``aptune:<model type>``, which no config has: the Auto classes keep
    building the stock classes for stock configs.
    """
    from transformers.models.auto import modeling_auto

    tables = [
        table
        for attr, table in vars(modeling_auto).items()
        if attr.startswith("MODEL_") and attr.endswith("_MAPPING_NAMES") and isinstance(table, dict)
    ]
    for name, base in _BASES.items():
        if name not in globals():
            continue
        for table in tables:
            for model_type, classes in list(table.items()):
                stock = classes if isinstance(classes, tuple) else (classes,)
                if base in stock and not model_type.startswith("aptune:"):
                    table.setdefault(f"aptune:{model_type}", name)


register_with_pipelines()

__all__ = [
    "PATCHES",
    "PLAN_FORMAT_VERSION",
    "PLAN_KEY",
    "READABLE_PLAN_VERSIONS",
    "apply_patches_",
    "apply_plan",
    "register_with_pipelines",
    "zero_attention_output",
    *[n for n in _BASES if n in globals()],
]
