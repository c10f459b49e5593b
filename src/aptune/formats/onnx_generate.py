"""Greedy generation through an ONNX KV-cache graph written by ``export_onnx(..., kv_cache=True)``.

The loop is what a serving wrapper around ONNX Runtime does: the prompt goes through the graph once
with empty caches, then every step feeds one new token per row with the caches the previous step
returned. Rows may be left-padded (``attention_mask`` 0 on padding); position ids count each row's
real tokens, as transformers' ``generate`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["empty_caches", "greedy_generate"]

_CACHE_PREFIX = "past_key_values."


def _session(session_or_path: Any):
    if isinstance(session_or_path, str | Path):
        import onnxruntime

        return onnxruntime.InferenceSession(str(session_or_path), providers=["CPUExecutionProvider"])
    return session_or_path


def empty_caches(session, batch: int) -> dict[str, np.ndarray]:
    """The first call's past inputs of a KV-cache graph: zero-length tensors shaped as the graph
    declares them, ``(batch, kv_heads, 0, head_dim)`` per ``past_key_values.*`` input (none for a
    graph without a cache)."""
    caches = {}
    for graph_input in session.get_inputs():
        if graph_input.name.startswith(_CACHE_PREFIX):
            _, heads, _, head_dim = graph_input.shape  # (batch, kv_heads, past_sequence, head_dim)
            caches[graph_input.name] = np.zeros((batch, heads, 0, head_dim), dtype=np.float32)
    return caches


def _positions(attention_mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """Position ids of the last ``new_tokens`` columns: the count of real tokens before each, per row."""
    return np.clip(np.cumsum(attention_mask, axis=-1) - 1, 0, None)[:, -new_tokens:]


def greedy_generate(
    session_or_path: Any,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    *,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> np.ndarray:
    """Generate greedily with a KV-cache graph, re-using the cache at every step.

    Args:
        session_or_path: An ``onnxruntime.InferenceSession`` of a graph written with
            ``kv_cache=True``, or the path of such a ``.onnx`` file.
        input_ids: Prompt token ids, ``(batch, prompt_length)``, integers.
        attention_mask: 1 for real tokens, 0 for (left) padding; all ones when omitted.
        max_new_tokens: How many tokens to add per row (at least 1).
        eos_token_id: A row that produces it is finished; its later tokens are ``pad_token_id``
            (as in transformers' ``generate``). None: always generate ``max_new_tokens``.
        pad_token_id: What finished rows get.

    Returns:
        ``(batch, prompt_length + n)`` int64 ids, prompt included, ``n <= max_new_tokens`` (fewer
        only when every row finished).

    Raises:
        ValueError: the graph has no KV-cache inputs, or the prompt or mask is malformed.
    """
    session = _session(session_or_path)
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0 or not np.issubdtype(input_ids.dtype, np.integer):
        raise ValueError(
            f"input_ids must be a non-empty (batch, length) integer array, got shape {input_ids.shape}"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {mask.shape}, input_ids {input_ids.shape}; give one per token"
        )
    caches = empty_caches(session, input_ids.shape[0])
    if not caches:
        raise ValueError("the ONNX graph has no past_key_values inputs; export it with --kv-cache")
    cache_names = list(caches)
    output_names = ["logits", *(name.replace(_CACHE_PREFIX, "present.", 1) for name in cache_names)]
    ids, mask = input_ids.astype(np.int64), mask.astype(np.int64)
    step_ids, finished = ids, np.zeros(ids.shape[0], dtype=bool)
    for _ in range(max_new_tokens):
        feed = {
            "input_ids": step_ids,
            "attention_mask": mask,
            "position_ids": _positions(mask, step_ids.shape[1]),
            **caches,
        }
        logits, *present = session.run(output_names, feed)
        next_ids = logits[:, -1].argmax(-1).astype(np.int64)  # logits: (batch, new tokens, vocab)
        next_ids = np.where(finished, pad_token_id, next_ids)
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)
        if eos_token_id is not None:
            finished |= next_ids == eos_token_id
            if finished.all():
                break
        caches = dict(zip(cache_names, present, strict=True))
        step_ids = next_ids[:, None]
        mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)
    return ids
