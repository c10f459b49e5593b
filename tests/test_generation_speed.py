"""Generation timing: the clock splits prefill from decode, rounds interleave, ratios point the right
way, and every engine's decoder generates the tokens PyTorch does without a cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import aptune
from aptune.bench.generation_speed import (
    GenaiDecoder,
    GenerationTiming,
    LlamaCppDecoder,
    OnnxDecoder,
    TransformersDecoder,
    generation_ratios,
    generation_stats,
    time_generations_interleaved,
    time_greedy_generation,
)
from aptune.formats.gguf import export_gguf
from aptune.formats.onnx import export_onnx
from aptune.formats.onnx_genai import GENAI_CONFIG_FILE, export_onnx_genai
from test_formats_gguf import _pruned_export
from test_llama import _greedy_without_cache


class _FakeClock:
    """A clock that only moves when a fake engine says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _FakeDecoder:
    """Costs ``prefill_s`` seconds for the prompt and ``step_s`` per step; building it costs ``load_s``."""

    def __init__(self, clock: _FakeClock, prefill_s: float, step_s: float, load_s: float = 100.0, log=None):
        clock.now += load_s
        self.clock, self.prefill_s, self.step_s, self.log = clock, prefill_s, step_s, log

    def prefill(self, prompt_ids):
        self.clock.now += self.prefill_s
        if self.log is not None:
            self.log.append((self, "prefill"))
        return len(prompt_ids)

    def step(self, token):
        self.clock.now += self.step_s
        return token + 1


def test_prefill_and_decode_are_clocked_apart_and_loading_is_not_clocked():
    clock = _FakeClock()
    decoder = _FakeDecoder(clock, prefill_s=0.5, step_s=0.02, load_s=100.0)
    timing = time_greedy_generation(decoder, [7, 8, 9], new_tokens=5, timer=clock)
    assert timing.prefill_ms == pytest.approx(500.0)  # the prompt only, not the load, not a step
    assert timing.decode_ms == pytest.approx(4 * 20.0)  # four steps after the first token
    assert timing.decode_ms_per_token == pytest.approx(20.0)
    assert timing.tokens == (3, 4, 5, 6, 7)


def test_generation_needs_a_prompt_and_a_decode_step():
    clock = _FakeClock()
    decoder = _FakeDecoder(clock, 0.1, 0.1)
    with pytest.raises(ValueError, match="new_tokens must be at least 2"):
        time_greedy_generation(decoder, [1], new_tokens=1, timer=clock)
    with pytest.raises(ValueError, match="prompt is empty"):
        time_greedy_generation(decoder, [], new_tokens=3, timer=clock)
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_generations_interleaved({"a": decoder}, [1], new_tokens=3, repeats=0, timer=clock)


def test_rounds_interleave_after_untimed_warmup():
    clock, log = _FakeClock(), []
    dense = _FakeDecoder(clock, prefill_s=0.4, step_s=0.03, log=log)
    pruned = _FakeDecoder(clock, prefill_s=0.2, step_s=0.01, log=log)
    timings = time_generations_interleaved(
        {"dense": dense, "pruned": pruned}, [1, 2], new_tokens=3, repeats=4, warmup=2, timer=clock
    )
    assert [owner for owner, _ in log] == [dense, pruned] * 6  # A B A B ..., warm-up rounds first
    assert [len(timings["dense"]), len(timings["pruned"])] == [4, 4]  # warm-up rounds are not kept
    assert [t.prefill_ms for t in timings["pruned"]] == pytest.approx([200.0] * 4)


def test_stats_and_ratios_point_the_right_way():
    slow = [
        GenerationTiming(prefill_ms=p, decode_ms=d, tokens=(1, 2, 3))
        for p, d in [(40, 20), (50, 30), (60, 40)]
    ]
    fast = [
        GenerationTiming(prefill_ms=p, decode_ms=d, tokens=(1, 2, 3))
        for p, d in [(20, 10), (25, 12), (30, 14)]
    ]
    slow_stats, fast_stats = generation_stats(slow), generation_stats(fast)
    assert slow_stats["prefill_ms"]["median"] == 50
    assert slow_stats["decode_ms_per_token"]["median"] == 15  # 30 ms over two decoded tokens
    assert slow_stats["decode_tokens_per_second"] == pytest.approx(1000 / 15)
    assert slow_stats["same_tokens_every_time"]
    ratios = generation_ratios(fast_stats, slow_stats)  # the faster one over the reference: below 1
    assert ratios == {"prefill": pytest.approx(0.5), "decode_per_token": pytest.approx(6 / 15)}
    changed = [*fast[:2], GenerationTiming(prefill_ms=1, decode_ms=1, tokens=(1, 2, 4))]
    assert not generation_stats(changed)["same_tokens_every_time"]
    with pytest.raises(ValueError, match="no timed generations"):
        generation_stats([])


def _unused_token(tokens: np.ndarray, vocab_size: int) -> int:
    return min(set(range(3, vocab_size)) - set(tokens.flatten().tolist()))


def test_every_engine_decodes_like_pytorch_without_a_cache(tmp_path, bpe_tokenizer):
    """A free-layout plan (a layer without attention, FFN widths differ) through the four engines."""
    model = _pruned_export(tmp_path, bpe_tokenizer, [0, 1, 2], [40, 9, 21], "free")
    prompt = bpe_tokenizer("paris is the capital of")["input_ids"]
    steps = 12
    expected = _greedy_without_cache(
        model, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long), steps
    )
    expected = expected[0, len(prompt) :].tolist()
    genai_folder = export_onnx_genai(tmp_path / "model", tmp_path / "genai")
    config = json.loads((genai_folder / GENAI_CONFIG_FILE).read_text())
    # the reference runs all steps: give genai an EOS id the reference never produces
    config["model"]["eos_token_id"] = _unused_token(np.array(expected), model.config.vocab_size)
    (genai_folder / GENAI_CONFIG_FILE).write_text(json.dumps(config))
    decoders = {
        "transformers": TransformersDecoder(model),
        "onnx": OnnxDecoder(export_onnx(tmp_path / "model", tmp_path / "m.onnx", kv_cache=True)),
        "genai": GenaiDecoder(genai_folder, max_length=len(prompt) + steps),
        "llama.cpp": LlamaCppDecoder(
            export_gguf(tmp_path / "model", tmp_path / "m.gguf", dtype="f32"),
            n_ctx=64,
            n_threads=1,
            f32_cache=True,
        ),
    }
    timings = time_generations_interleaved(decoders, prompt, new_tokens=steps, repeats=2, warmup=1)
    decoders["llama.cpp"].close()
    for name, runs in timings.items():
        stats = generation_stats(runs)
        assert stats["tokens"] == expected, name
        assert stats["same_tokens_every_time"], name  # each prefill starts from a clean state


def test_genai_decoder_refuses_a_token_it_did_not_choose(tmp_path):
    from test_llama import _pruned as _masked_decoder
    from test_llama import tiny_llama

    model, controller = _masked_decoder(tiny_llama, drop_site=0)
    controller.prune_to_masks_()
    aptune.export(model, controller, tmp_path / "model")
    decoder = GenaiDecoder(export_onnx_genai(tmp_path / "model", tmp_path / "genai"), max_length=16)
    first = decoder.prefill([5, 6, 7])
    with pytest.raises(ValueError, match="onnxruntime-genai chose token"):
        decoder.step(first + 1)


def test_genai_decoder_can_be_kept_from_ending_at_eos(tmp_path, bpe_tokenizer):
    """A timing loop needs every token: with ignore_eos the library never picks EOS, without it it stops."""
    model = _pruned_export(tmp_path, bpe_tokenizer, [0, 1, 2], [40, 9, 21], "free")
    prompt, steps = bpe_tokenizer("paris is the capital of")["input_ids"], 10
    mask = torch.ones(1, len(prompt), dtype=torch.long)
    expected = _greedy_without_cache(model, torch.tensor([prompt]), mask, steps)[0, len(prompt) :].tolist()
    folder = export_onnx_genai(tmp_path / "model", tmp_path / "genai")
    config = json.loads((folder / GENAI_CONFIG_FILE).read_text())
    # the first generated token not seen before becomes EOS (not the first token: a prefill must run)
    first_new = next(k for k in range(1, steps) if expected[k] not in expected[:k])
    eos = expected[first_new]
    config["model"]["eos_token_id"] = eos
    (folder / GENAI_CONFIG_FILE).write_text(json.dumps(config))
    max_length = len(prompt) + steps
    with pytest.raises(RuntimeError):  # the library ended the generation at EOS and cannot go on
        time_greedy_generation(GenaiDecoder(folder, max_length=max_length), prompt, new_tokens=steps)
    kept_going = time_greedy_generation(
        GenaiDecoder(folder, max_length=max_length, ignore_eos=True), prompt, new_tokens=steps
    )
    assert list(kept_going.tokens[:first_new]) == expected[:first_new]
    assert eos not in kept_going.tokens and len(kept_going.tokens) == steps
