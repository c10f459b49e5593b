"""The vLLM speed benchmark's clocks and figures, against a fake engine with a known cost model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from benchmarks.vllm_timing import time_calls

PREFILL_PER_PROMPT = 0.5  # fake seconds
DECODE_PER_TOKEN = 0.01
WARM_UP_EXTRA = 100.0  # only the first call of an engine pays it


class FakeEngine:
    """``generate(batch, max_tokens)`` that advances a fake clock by a known cost."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[tuple[int, int]] = []

    def clock(self) -> float:
        return self.now

    def generate(self, batch: int, max_tokens: int) -> list[list[int]]:
        self.now += WARM_UP_EXTRA if not self.calls else 0.0
        self.now += PREFILL_PER_PROMPT * batch + DECODE_PER_TOKEN * max_tokens
        self.calls.append((batch, max_tokens))
        return [[batch * 1000 + token for token in range(max_tokens)] for _ in range(batch)]


def test_first_token_and_whole_calls_are_timed_apart_and_the_warm_up_is_not_on_the_clock():
    engine = FakeEngine()
    timed = time_calls(engine.generate, [1, 4], repeats=3, new_tokens=64, clock=engine.clock)
    for batch in (1, 4):
        prefill = PREFILL_PER_PROMPT * batch
        assert timed["first_token_seconds"][batch] == pytest.approx([prefill + DECODE_PER_TOKEN] * 3)
        assert timed["seconds"][batch] == pytest.approx([prefill + DECODE_PER_TOKEN * 64] * 3)
        assert timed["tokens"][batch] == [[batch * 1000 + t for t in range(64)]] * batch
    # two warm-ups at the largest batch, then the two kinds of call in turn
    assert engine.calls[:4] == [(4, 1), (4, 64), (1, 1), (1, 64)]
    assert len(engine.calls) == 2 + 2 * 3 * 2


@pytest.fixture
def speed_module(monkeypatch):
    """benchmarks/vllm_speed_smollm2.py, imported as its script imports its neighbours."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import vllm_speed_smollm2

    yield vllm_speed_smollm2
    sys.modules.pop("vllm_speed_smollm2", None)


def test_summary_pools_rounds_and_the_page_ratio_is_pruned_over_dense(speed_module):
    dense_runs = [
        {"seconds": {"1": [4.0, 6.0]}, "first_token_seconds": {"1": [1.0, 3.0]}},
        {"seconds": {"1": [5.0]}, "first_token_seconds": {"1": [2.0]}},
    ]
    pruned_runs = [{"seconds": {"1": [2.0, 3.0, 4.0]}, "first_token_seconds": {"1": [0.5, 1.0, 1.5]}}]
    dense = speed_module.summary(dense_runs, 1, new_tokens=10)
    pruned = speed_module.summary(pruned_runs, 1, new_tokens=10)
    assert (dense["median_s"], dense["min_s"], dense["max_s"], dense["timed_calls"]) == (5.0, 4.0, 6.0, 3)
    assert dense["generated_tokens_per_s"] == pytest.approx(2.0)
    assert (dense["first_token_median_s"], dense["first_token_min_s"]) == (2.0, 1.0)
    # the pruned model's first token takes half the dense model's: the ratio is below 1
    assert speed_module._first_token_cells(pruned, dense) == "1.00 [0.50–1.50] | 0.50"


def test_records_without_first_token_calls_still_make_a_page(speed_module):
    old = [{"seconds": {"1": [4.0]}}]
    stats = speed_module.summary(old, 1, new_tokens=10)
    assert "first_token_median_s" not in stats
    assert speed_module._first_token_cells(stats, stats) == "— | —"
