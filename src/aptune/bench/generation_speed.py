"""Generation speed of a causal LM in the engines that serve it: time to the first token and time per
generated token, measured the way a serving loop spends them.

A serving engine runs the prompt once (*prefill*: the time to the first token) and then one token at a
time against its KV cache (*decode*). The two scale differently with pruning (prefill is a batch of
matrix products, decode is bound by reading the weights once per token), so they are clocked apart:

* `GreedyDecoder`: what an engine must offer, ``prefill(prompt_ids) -> first token`` and
  ``step(token) -> next token`` (greedy, batch 1). `TransformersDecoder`, `OnnxDecoder`,
  `GenaiDecoder` and `LlamaCppDecoder` wrap PyTorch, an ONNX KV-cache graph, an onnxruntime-genai
  folder and a GGUF file in llama.cpp.
* `time_greedy_generation`: one generation, the prefill clocked alone and the decode steps together;
  building the decoder (loading the model) is never on the clock.
* `time_generations_interleaved`: round by round over several decoders (A B A B ...), so background
  load hits all alike, after untimed warm-up rounds.
* `generation_stats` and `generation_ratios`: medians per decoder and the ratios of one decoder's
  medians to a reference's (pruned / dense; below 1 is faster).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from aptune.formats.hf_cache import cache_keyword, returned_cache
from aptune.formats.onnx_generate import CachedGraph

__all__ = [
    "GenaiDecoder",
    "GenerationTiming",
    "GreedyDecoder",
    "LlamaCppDecoder",
    "OnnxDecoder",
    "TransformersDecoder",
    "generation_ratios",
    "generation_stats",
    "time_generations_interleaved",
    "time_greedy_generation",
]


class GreedyDecoder(Protocol):
    """An engine generating greedily for one prompt (batch 1), step by step."""

    def prefill(self, prompt_ids: Sequence[int]) -> int:
        """Drop any earlier state, run the prompt, and return the first generated token."""
        ...

    def step(self, token: int) -> int:
        """Feed ``token`` (the one just generated) and return the next one."""
        ...


@dataclass(frozen=True)
class GenerationTiming:
    """One timed generation.

    Attributes:
        prefill_ms: From the prompt going in to the first token coming out.
        decode_ms: The decode steps that followed, together (``len(tokens) - 1`` of them).
        tokens: Every generated token, the first included.
    """

    prefill_ms: float
    decode_ms: float
    tokens: tuple[int, ...]

    @property
    def decode_ms_per_token(self) -> float:
        """Milliseconds per decoded token after the first."""
        return self.decode_ms / (len(self.tokens) - 1)


def _check_new_tokens(new_tokens: int) -> None:
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be at least 2 (one prefill and one decode step), got {new_tokens}")


def time_greedy_generation(
    decoder: GreedyDecoder,
    prompt_ids: Sequence[int],
    *,
    new_tokens: int,
    timer: Callable[[], float] = time.perf_counter,
) -> GenerationTiming:
    """Generate ``new_tokens`` tokens greedily and clock the prefill and the decode steps apart.

    Args:
        decoder: The engine, already built (its loading is not timed).
        prompt_ids: The prompt's token ids.
        new_tokens: Tokens to generate, at least 2 (the first comes from the prefill).
        timer: Clock in seconds (`time.perf_counter`; tests pass a fake one).

    Returns:
        The timing and the generated tokens.

    Raises:
        ValueError: ``new_tokens`` < 2 or an empty prompt.
    """
    _check_new_tokens(new_tokens)
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty; give at least one token id")
    began = timer()
    tokens = [decoder.prefill(prompt_ids)]
    prefilled = timer()
    for _ in range(new_tokens - 1):
        tokens.append(decoder.step(tokens[-1]))
    finished = timer()
    return GenerationTiming(
        prefill_ms=(prefilled - began) * 1000.0,
        decode_ms=(finished - prefilled) * 1000.0,
        tokens=tuple(int(token) for token in tokens),
    )


def time_generations_interleaved(
    decoders: Mapping[str, GreedyDecoder],
    prompt_ids: Sequence[int],
    *,
    new_tokens: int,
    repeats: int = 10,
    warmup: int = 2,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, list[GenerationTiming]]:
    """Time several decoders round by round: ``warmup`` untimed rounds, then ``repeats`` timed ones.

    Each round runs every decoder once, in the order of ``decoders``, so a change in background load
    hits all of them alike and their ratios stay meaningful.

    Args:
        decoders: ``{name: decoder}``; the first is usually the dense reference.
        prompt_ids: The prompt every decoder gets.
        new_tokens: Tokens per generation, at least 2.
        repeats: Timed generations per decoder, at least 1.
        warmup: Untimed generations per decoder first, at least 0.
        timer: Clock in seconds.

    Returns:
        ``{name: [timing of each timed generation]}``.

    Raises:
        ValueError: ``repeats`` < 1, ``warmup`` < 0 or ``new_tokens`` < 2.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    _check_new_tokens(new_tokens)
    for _ in range(warmup):
        for decoder in decoders.values():
            time_greedy_generation(decoder, prompt_ids, new_tokens=new_tokens, timer=timer)
    timings: dict[str, list[GenerationTiming]] = {name: [] for name in decoders}
    for _ in range(repeats):
        for name, decoder in decoders.items():
            timings[name].append(
                time_greedy_generation(decoder, prompt_ids, new_tokens=new_tokens, timer=timer)
            )
    return timings


def _spread(values: list[float]) -> dict[str, float]:
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "p25": quartiles[0], "p75": quartiles[2]}


def generation_stats(timings: Sequence[GenerationTiming]) -> dict[str, Any]:
    """Medians and quartiles of one decoder's timed generations.

    Returns:
        ``{"prefill_ms": {median, p25, p75}, "decode_ms_per_token": {median, p25, p75},
        "decode_tokens_per_second"`` (at the median), ``"repeats"``, ``"tokens"`` (of the first
        generation) and ``"same_tokens_every_time"``.

    Raises:
        ValueError: no timings.
    """
    if not timings:
        raise ValueError("no timed generations to summarise")
    per_token = _spread([timing.decode_ms_per_token for timing in timings])
    return {
        "prefill_ms": _spread([timing.prefill_ms for timing in timings]),
        "decode_ms_per_token": per_token,
        "decode_tokens_per_second": 1000.0 / per_token["median"] if per_token["median"] > 0 else None,
        "repeats": len(timings),
        "tokens": list(timings[0].tokens),
        "same_tokens_every_time": all(timing.tokens == timings[0].tokens for timing in timings),
    }


def generation_ratios(stats: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, float]:
    """``stats``' median times over ``reference``'s (pruned over dense: below 1 is faster).

    Returns:
        ``{"prefill": ..., "decode_per_token": ...}``.
    """
    return {
        "prefill": stats["prefill_ms"]["median"] / reference["prefill_ms"]["median"],
        "decode_per_token": stats["decode_ms_per_token"]["median"]
        / reference["decode_ms_per_token"]["median"],
    }


class TransformersDecoder:
    """PyTorch through transformers: the model's forward with its KV cache and the logits of the last
    position only (what ``generate`` runs).

    Args:
        model: A causal LM (an aptune export loaded with `aptune.load`, or any transformers one).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        self._keyword = cache_keyword(model)
        self._cache: Any = None
        self._device = next(model.parameters()).device

    def _forward(self, ids: list[int]) -> int:
        kwargs = {} if self._cache is None else {self._keyword: self._cache}
        with torch.inference_mode():
            outputs = self.model(
                input_ids=torch.tensor([ids], device=self._device),
                use_cache=True,
                logits_to_keep=1,  # the last position only, as generate() asks
                return_dict=True,
                **kwargs,
            )
        self._cache = returned_cache(outputs)
        return int(outputs.logits[0, -1].argmax())  # logits: (1, new tokens, vocab)

    def prefill(self, prompt_ids: Sequence[int]) -> int:
        """Run the prompt with a new cache; return the first token."""
        self._cache = None
        return self._forward(list(prompt_ids))

    def step(self, token: int) -> int:
        """Feed one token against the cache; return the next."""
        return self._forward([token])


class OnnxDecoder:
    """ONNX Runtime on a graph written by ``export_onnx(..., kv_cache=True)`` (`CachedGraph`); the graph
    computes the logits of every prompt position.

    Args:
        session_or_path: An ``onnxruntime.InferenceSession`` or the ``.onnx`` path.
    """

    def __init__(self, session_or_path: Any) -> None:
        self.graph = CachedGraph(session_or_path)

    def prefill(self, prompt_ids: Sequence[int]) -> int:
        """Run the prompt with empty caches; return the first token."""
        ids = np.asarray([list(prompt_ids)], dtype=np.int64)
        return int(self.graph.prefill(ids, np.ones_like(ids))[0].argmax())

    def step(self, token: int) -> int:
        """Feed one token against the caches; return the next."""
        return int(self.graph.advance(np.asarray([token]))[0].argmax())


class GenaiDecoder:
    """onnxruntime-genai on a folder written by `aptune.formats.onnx_genai.export_onnx_genai`.

    onnxruntime-genai chooses each token itself (greedy search); `step` checks that the token it is
    given is the one the library chose, so a diverging caller is caught. It ends a generation at the
    EOS id and cannot be stepped past it; ``ignore_eos=True`` asks it never to choose EOS before
    ``max_length`` (its ``min_length`` option), so a timing loop always gets its tokens, but from
    that point on its tokens are not the other engines' (they continue after EOS).

    Args:
        folder: The genai folder.
        max_length: Longest prompt plus generated tokens a generation may reach.
        ignore_eos: Never end at the EOS id before ``max_length``.
    """

    def __init__(self, folder: str | Path, *, max_length: int, ignore_eos: bool = False) -> None:
        import onnxruntime_genai as og

        self._og = og
        self.model = og.Model(str(folder))
        self.max_length = max_length
        self.ignore_eos = ignore_eos
        self._generator: Any = None
        self._last: int | None = None  # the token the library chose last

    def _next(self) -> int:
        self._generator.generate_next_token()
        return int(self._generator.get_next_tokens()[0])

    def prefill(self, prompt_ids: Sequence[int]) -> int:
        """Start a generator, append the prompt (its forward), and choose the first token."""
        params = self._og.GeneratorParams(self.model)
        options = {"min_length": self.max_length} if self.ignore_eos else {}
        params.set_search_options(do_sample=False, max_length=self.max_length, **options)
        self._generator = self._og.Generator(self.model, params)
        self._generator.append_tokens(np.asarray([list(prompt_ids)], dtype=np.int32))
        self._last = self._next()
        return self._last

    def step(self, token: int) -> int:
        """One forward on the library's last token and the choice of the next."""
        if token != self._last:
            raise ValueError(f"onnxruntime-genai chose token {self._last}, the caller fed {token}")
        self._last = self._next()
        return self._last


class LlamaCppDecoder:
    """llama.cpp through llama-cpp-python on a GGUF file.

    Args:
        path: The ``.gguf`` file.
        n_ctx: Context length to allocate (prompt plus generated tokens).
        n_threads: CPU threads (None: llama.cpp's default).
        f32_cache: Keep the KV cache in float32 (llama.cpp's default is float16).
    """

    def __init__(
        self, path: str | Path, *, n_ctx: int, n_threads: int | None = None, f32_cache: bool = False
    ):
        import llama_cpp

        self._llama_cpp = llama_cpp
        cache_type = (
            {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}
        )
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False, **cache_type
        )

    def _eval(self, ids: list[int]) -> int:
        self.llm.eval(
            ids
        )  # without logits_all, as a server runs it: llama.cpp outputs the last position only
        last = self._llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(last, shape=(self.llm.n_vocab(),))))

    def prefill(self, prompt_ids: Sequence[int]) -> int:
        """Clear the context, evaluate the prompt, return the first token."""
        self.llm.reset()
        return self._eval(list(prompt_ids))

    def step(self, token: int) -> int:
        """Evaluate one token after the context; return the next."""
        return self._eval([token])

    def close(self) -> None:
        """Free llama.cpp's model and context."""
        self.llm.close()
