"""Loader of models exported by aptune (self-contained: needs only torch and transformers).

An aptune export is a stock transformers model whose layers have non-uniform sizes (heads, FFN
widths and hidden size chosen by pruning). Its ``config.json`` keeps the original ``model_type`` and
adds ``aptune_plan``: the shape of every tensor in the checkpoint, the head-count attributes of every
attention module, and the attention modules that lost all heads. The classes below build the stock
model, resize its tensors to the plan, and let ``from_pretrained`` load the weights. This file is
copied into every export and registered through ``auto_map``, so
``AutoModelFor...from_pretrained(path, trust_remote_code=True)`` works without aptune installed.
"""

from __future__ import annotations

import types

import torch
import transformers
from torch import nn

PLAN_KEY = "aptune_plan"
PLAN_FORMAT_VERSION = 1

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
    "AptMistralForCausalLM": "MistralForCausalLM",
    "AptQwen2ForCausalLM": "Qwen2ForCausalLM",
    "AptT5ForConditionalGeneration": "T5ForConditionalGeneration",
}


def _zero_attention_forward(kind: str):
    def forward(self, hidden_states, *args, **kwargs):
        if kind == "empty_context":
            return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None
        return torch.zeros_like(hidden_states), None

    return forward


def apply_plan(model: nn.Module, plan: dict) -> None:
    """Resize ``model``'s tensors and attention attributes to an aptune plan (in place).

    Raises:
        ValueError: the plan has an unknown format version or names a tensor the model lacks.
    """
    version = plan.get("format_version")
    if version != PLAN_FORMAT_VERSION:
        raise ValueError(f"aptune plan format {version!r} is not supported (expected {PLAN_FORMAT_VERSION})")
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
    if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()


def _make_class(name: str, base_name: str):
    base = getattr(transformers, base_name, None)
    if base is None:
        return None

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        plan = getattr(config, PLAN_KEY, None)
        if plan:
            apply_plan(self, plan)

    return type(name, (base,), {"__init__": __init__, "__module__": __name__, "__doc__": f"{base_name} resized by an aptune plan."})


for _name, _base in _BASES.items():
    _cls = _make_class(_name, _base)
    if _cls is not None:
        globals()[_name] = _cls

__all__ = ["PLAN_FORMAT_VERSION", "PLAN_KEY", "apply_plan", *[n for n in _BASES if n in globals()]]
