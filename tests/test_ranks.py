"""`aptune.ranks.allocate_ranks`: hand-computed allocations and the budget invariants on random inputs."""

import math
import random

import pytest

from aptune.ranks import allocate_ranks


def test_salience_grows_the_top_half_by_one_common_factor():
    ranks = {"a": 8, "b": 8, "c": 8, "d": 8}
    widths = {"a": 10, "b": 20, "c": 10, "d": 20}  # 480 parameters now
    importance = {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.0}
    # top half: b (0.9) and c (0.5), holding 160 + 80 = 240 parameters; the increment is 960 - 480
    factor = 1 + (960 - 480) / 240
    new = allocate_ranks(ranks, widths, importance, 960, max_rank=64)
    assert new == {"b": math.floor(8 * factor), "c": math.floor(8 * factor)} == {"b": 24, "c": 24}
    assert list(new) == ["b", "c"]  # growth order: by importance


def test_uniform_scales_every_rank_and_static_changes_nothing():
    ranks, widths = {"a": 8, "b": 4}, {"a": 10, "b": 10}
    assert allocate_ranks(ranks, widths, {}, 2 * 120, max_rank=64, mode="uniform") == {"a": 16, "b": 8}
    assert allocate_ranks(ranks, widths, {}, 10 * 120, max_rank=64, mode="static") == {}


def test_nothing_grows_when_the_budget_is_met_or_there_are_no_adapters():
    assert allocate_ranks({"a": 8}, {"a": 10}, {"a": 1.0}, 80, max_rank=64) == {}
    assert allocate_ranks({}, {}, {}, 1000, max_rank=64) == {}


def test_max_rank_caps_and_excludes():
    ranks, widths = {"a": 64, "b": 8, "c": 8}, {"a": 10, "b": 10, "c": 10}
    importance = {"a": 9.0, "b": 1.0, "c": 0.0}
    new = allocate_ranks(ranks, widths, importance, 10_000, max_rank=16)
    assert "a" not in new  # already at max_rank: not a candidate, so b takes its place in the top half
    assert new == {"b": 16}


def test_missing_importance_counts_as_zero_and_ties_keep_the_given_order():
    ranks, widths = {"a": 4, "b": 4, "c": 4, "d": 4}, {p: 10 for p in "abcd"}
    new = allocate_ranks(ranks, widths, {"c": 1.0}, 320, max_rank=64)
    assert list(new) == ["c", "a"]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("mode", ["salience", "uniform"])
def test_random_allocations_respect_budget_and_bounds(seed, mode):
    rng = random.Random(seed)
    paths = [f"m{i}" for i in range(rng.randint(1, 9))]
    ranks = {p: rng.randint(1, 16) for p in paths}
    widths = {p: rng.randint(8, 200) for p in paths}
    importance = {p: rng.random() for p in paths}
    current = sum(widths[p] * ranks[p] for p in paths)
    budget = current * rng.uniform(0.5, 4.0)
    new = allocate_ranks(ranks, widths, importance, budget, max_rank=32, mode=mode)
    after = {**ranks, **new}
    assert all(ranks[p] < r <= 32 for p, r in new.items())
    if new:
        assert sum(widths[p] * after[p] for p in paths) <= budget
    if mode == "salience":
        below_max = sorted((p for p in paths if ranks[p] < 32), key=lambda p: -importance[p])
        assert set(new) <= set(below_max[: max(1, len(paths) // 2)])


def test_growth_factor_is_the_factor_of_the_allocation():
    from aptune.ranks import growth_factor

    ranks = {"a": 8, "b": 8, "c": 8, "d": 8}
    widths = {"a": 10, "b": 20, "c": 10, "d": 20}
    importance = {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.0}
    assert growth_factor(ranks, widths, importance, 960, max_rank=64) == 1 + (960 - 480) / 240
    small = {"a": 8, "b": 4}
    assert growth_factor(small, {"a": 10, "b": 10}, {}, 240, max_rank=64, mode="uniform") == 2.0
    assert growth_factor(small, {"a": 10, "b": 10}, {}, 1200, max_rank=64, mode="static") == 1.0
    assert growth_factor({"a": 8}, {"a": 10}, {"a": 1.0}, 80, max_rank=64) == 1.0
