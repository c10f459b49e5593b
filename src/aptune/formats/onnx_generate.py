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

__all__ = ["CachedGraph", "empty_caches", "greedy_generate"]

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


class CachedGraph:
    """The state a KV-cache graph carries between calls: the caches it returned and the mask so far.

    `prefill` runs a prompt with empty caches; each `advance` feeds one new token per row against the
    caches the previous call returned. Both return the logits of each row's last position. This is
    the step a serving loop repeats; `greedy_generate` drives it, and a timing loop can call it one
    step at a time.

    Args:
        session_or_path: An ``onnxruntime.InferenceSession`` of a graph written with
            ``kv_cache=True``, or the path of such a ``.onnx`` file.

    Raises:
        ValueError: the graph has no KV-cache inputs.
    """

    def __init__(self, session_or_path: Any) -> None:
        self.session = _session(session_or_path)
        self._cache_names = list(empty_caches(self.session, 1))
        if not self._cache_names:
            raise ValueError("the ONNX graph has no past_key_values inputs; export it with --kv-cache")
        self._output_names = [
            "logits",
            *(name.replace(_CACHE_PREFIX, "present.", 1) for name in self._cache_names),
        ]
        self._caches: dict[str, np.ndarray] = {}
        self._mask = np.zeros((0, 0), dtype=np.int64)

    def _run(self, step_ids: np.ndarray) -> np.ndarray:
        feed = {
            "input_ids": step_ids,
            "attention_mask": self._mask,
            "position_ids": _positions(self._mask, step_ids.shape[1]),
            **self._caches,
        }
        logits, *present = self.session.run(self._output_names, feed)
        self._caches = dict(zip(self._cache_names, present, strict=True))
        return logits[:, -1]  # logits: (batch, new tokens, vocab) -> the last position's

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Run the prompts with empty caches (any earlier state is dropped).

        Args:
            input_ids: ``(batch, prompt_length)`` int64 ids.
            attention_mask: 1 for real tokens, 0 for (left) padding, same shape.

        Returns:
            ``(batch, vocab)`` logits of each row's last position.
        """
        self._caches = empty_caches(self.session, input_ids.shape[0])
        self._mask = attention_mask.astype(np.int64)
        return self._run(input_ids.astype(np.int64))

    def advance(self, next_ids: np.ndarray) -> np.ndarray:
        """Feed one token per row after the earlier calls' tokens.

        Args:
            next_ids: ``(batch,)`` ids, one per row.

        Returns:
            ``(batch, vocab)`` logits after it.
        """
        self._mask = np.concatenate([self._mask, np.ones_like(self._mask[:, :1])], axis=1)
        return self._run(np.asarray(next_ids, dtype=np.int64)[:, None])


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
    graph = CachedGraph(session_or_path)
    ids = input_ids.astype(np.int64)
    finished = np.zeros(ids.shape[0], dtype=bool)
    logits = graph.prefill(ids, mask)
    for step in range(max_new_tokens):
        next_ids = logits.argmax(-1).astype(np.int64)
        next_ids = np.where(finished, pad_token_id, next_ids)
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)
        if eos_token_id is not None:
            finished |= next_ids == eos_token_id
            if finished.all():
                break
        if step + 1 < max_new_tokens:
            logits = graph.advance(next_ids)
    return ids
