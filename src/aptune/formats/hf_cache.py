"""The KV cache of a transformers causal LM's forward, under either name transformers gives it.

transformers 5.25 renamed the forward's ``past_key_values`` argument and output to ``cache``; 5.0 to
5.24 use the old name. Code that feeds a cache back into a forward (the ONNX KV-cache graph, the
generation timing loop) goes through these two helpers so that it works on both.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

__all__ = ["cache_keyword", "returned_cache"]


def cache_keyword(model: nn.Module) -> str:
    """The forward's name for the KV cache: ``cache`` from transformers 5.25, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(outputs: Any) -> Any:
    """The KV cache a forward returned (a ``ModelOutput``), under either transformers name."""
    cache = outputs.get("cache") if "cache" in outputs else None
    return cache if cache is not None else outputs["past_key_values"]
