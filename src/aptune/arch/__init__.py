"""Per-family layout tables and the dispatcher `build_layout`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from aptune.arch.base import AttentionSite, FfnSite, ModelLayout
from aptune.arch.bert import bert_layout
from aptune.arch.llama import llama_layout
from aptune.arch.t5 import t5_layout
from aptune.errors import UnsupportedModelError

__all__ = ["SUPPORTED_MODEL_TYPES", "AttentionSite", "FfnSite", "ModelLayout", "build_layout"]

_TABLES: dict[str, Callable[[nn.Module], ModelLayout]] = {
    "bert": bert_layout,
    "roberta": bert_layout,
    "llama": llama_layout,
    "mistral": llama_layout,
    "qwen2": llama_layout,
    "t5": t5_layout,
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_TABLES))


def build_layout(model: nn.Module) -> ModelLayout:
    """Return the `ModelLayout` of a HuggingFace model.

    Raises:
        UnsupportedModelError: the model type has no table (the message lists the supported ones).
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _TABLES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} ({type(model).__name__}) is not supported by aptune; "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return _TABLES[model_type](model)
