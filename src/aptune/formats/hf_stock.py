"""Stock HuggingFace folders for uniform-layout models: the original config class, no loader file.

A model pruned with ``layout="uniform"`` has the same number of heads, KV heads and FFN neurons in
every layer, so its shapes fit the model's own config class once ``num_attention_heads``,
``num_key_value_heads``, ``intermediate_size`` and ``hidden_size`` are changed. The folder written
here has no ``modeling_aptune.py`` and no ``auto_map``: plain ``AutoModelFor...from_pretrained``
loads it without ``trust_remote_code``, and so do serving engines that read stock configs.

What a stock config can express:

* LLaMA / Mistral / Qwen2: any uniform plan with at least one KV group and one FFN neuron per layer
  (``head_dim`` is written explicitly, so the hidden size may shrink), except that transformers'
  ``LlamaConfig`` insists on a hidden size that is a multiple of the number of query heads.
* BERT / RoBERTa: the head size is ``hidden_size / num_attention_heads``, so only plans whose hidden
  size equals ``heads * head_dim``: e.g. every head kept and hidden dimensions not pruned, FFN uniform.
  Other encoder plans deploy through ONNX (`aptune.formats.onnx`) or the free export.

The config keeps the ``aptune_plan`` record (shapes and per-layer summary) as an extra key, which
stock loaders ignore and which lets `aptune.load` check the weights.
"""

from __future__ import annotations

import logging

from torch import nn

__all__ = ["stock_config", "stock_export_config", "stock_plan_problem"]

logger = logging.getLogger("aptune")

_STOCK_FAMILIES = ("llama", "bert")


def stock_plan_problem(model: nn.Module, controller) -> str | None:
    """Why the controller's current plan cannot be written as a stock config, or None if it can.

    Besides the shapes, the resized config must pass its own class's validation (transformers'
    ``LlamaConfig`` requires ``hidden_size`` to be a multiple of ``num_attention_heads`` even with an
    explicit ``head_dim``).

    Args:
        model: The pruned model.
        controller: Its `AptController` (masks hard, blocks physically removed).

    Returns:
        A one-sentence reason, or None when a stock config expresses the plan.
    """
    layout = controller.layout
    if layout.family not in _STOCK_FAMILIES:
        return f"the {layout.family} family has no stock export (only LLaMA-family decoders and BERT/RoBERTa)"
    structure = controller.structure()
    units, neurons = structure["units"], structure["neurons"]
    if len(set(units)) != 1 or len(set(neurons)) != 1:
        return f"layers differ (attention units per layer {units}, FFN neurons per layer {neurons})"
    if units[0] == 0:
        return "no layer keeps an attention head; a stock config needs at least one"
    if neurons[0] == 0:
        return "no layer keeps an FFN neuron; a stock config needs at least one"
    site = layout.attention[0]
    heads = units[0] * site.group_size
    if layout.family == "bert" and heads * site.head_dim != layout.hidden_size:
        return (
            f"BERT/RoBERTa derive the head size from hidden_size / num_attention_heads, but the plan keeps "
            f"{heads} heads of size {site.head_dim} with hidden size {layout.hidden_size}; train with "
            "prune_hidden=False and min_heads_per_layer equal to the head count for a stock encoder, or "
            "export to ONNX"
        )
    config = stock_config(model, controller)
    try:
        type(model.config).from_dict(config)
    except Exception as exc:  # the config classes raise several kinds of validation errors
        return f"{type(model.config).__name__} rejects the resized config ({exc})"
    return None


def stock_config(model: nn.Module, controller) -> dict:
    """The model's config as a dict, resized to the controller's uniform plan (no plan, no auto_map).

    Args:
        model: The pruned model.
        controller: Its `AptController`; `stock_plan_problem` must return None for it.

    Returns:
        The config dict of the model's own config class.
    """
    layout = controller.layout
    site = layout.attention[0]
    structure = controller.structure()
    units = structure["units"][0]
    config = model.config.to_dict()
    config.pop("auto_map", None)
    config["architectures"] = [type(model).__name__]
    config["hidden_size"] = layout.hidden_size
    config["num_attention_heads"] = units * site.group_size
    config["intermediate_size"] = structure["neurons"][0]
    if layout.family == "llama":
        config["num_key_value_heads"] = units
        config["head_dim"] = site.head_dim
    return config


def stock_export_config(model: nn.Module, controller, plan: dict) -> dict | None:
    """The config of a stock export of ``model``; None (reason logged) if the plan needs the loader.

    Args:
        model: The pruned model.
        controller: Its `AptController`.
        plan: The aptune plan recorded in the config (shapes, per-layer summary); kept under its key so
            that `aptune.load` still checks the weights against it.

    Returns:
        The config dict of the model's own config class (no ``auto_map``), or None when the plan needs
        the free-layout export with the loader file.
    """
    problem = stock_plan_problem(model, controller)
    if problem is not None:
        logger.warning("aptune: exporting with the loader file instead of a stock config: %s", problem)
        return None
    config = stock_config(model, controller)
    config["aptune_plan"] = {**plan, "layout": "uniform"}
    return config
