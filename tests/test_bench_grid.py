"""The learning-rate grid's extension past an end where a method's best dev rate sits."""

from __future__ import annotations

import pytest

from aptune.bench import BenchConfig
from aptune.bench.plan import extend_grid, plan_grid
from aptune.errors import ConfigError


def _config(**fields) -> BenchConfig:
    return BenchConfig(methods="lora,apt", adapter_lr_grid="5e-4,1e-3,2e-3", target_density=0.7, **fields)


def _chosen(method: str, best: float, fallback: bool = False) -> dict:
    return {method: {"lr": best, "dev": {}, "metric": "perplexity", "fallback": fallback}}


def _grid(config: BenchConfig, method: str):
    return [j for j in plan_grid(config)[0] if j.method == method]


def test_a_best_rate_at_the_top_adds_the_next_rate_up_for_that_method_only():
    config = _config()
    jobs = plan_grid(config)[0]
    chosen = {**_chosen("apt", 2e-3), **_chosen("lora", 1e-3)}
    [extra] = extend_grid(config, jobs, chosen)
    apt = _grid(config, "apt")[-1]
    assert (extra.method, extra.lr, extra.phase) == ("apt", 4e-3, "grid")
    assert (extra.density, extra.seed) == (apt.density, apt.seed) == (0.7, 0)
    assert extra.id == "grid-apt-lr0.004-d0.70-s0"


def test_a_best_rate_at_the_bottom_adds_the_next_rate_down():
    config = _config()
    [extra] = extend_grid(config, _grid(config, "lora"), _chosen("lora", 5e-4))
    assert extra.lr == 2.5e-4 and extra.density == 1.0 and extra.id == "grid-lora-lr0.00025-s0"


def test_a_best_rate_inside_the_grid_adds_nothing():
    config = _config()
    assert extend_grid(config, _grid(config, "apt"), _chosen("apt", 1e-3)) == []


def test_no_extension_without_a_finished_run_or_with_a_single_rate():
    config = _config()
    assert extend_grid(config, _grid(config, "apt"), _chosen("apt", 1e-3, fallback=True)) == []
    single = BenchConfig(methods="lora", adapter_lr_grid="1e-3")
    assert extend_grid(single, _grid(single, "lora"), _chosen("lora", 1e-3)) == []


def test_the_extension_stops_after_grid_extend_rates_past_an_end():
    config = _config(grid_extend=2)
    jobs = _grid(config, "apt")
    for expected in (4e-3, 8e-3):
        [extra] = extend_grid(config, jobs, _chosen("apt", expected / 2))
        assert extra.lr == pytest.approx(expected)
        jobs.append(extra)
    assert extend_grid(config, jobs, _chosen("apt", 8e-3)) == []  # two past the top: the limit
    # the limit counts per end: the bottom may still grow
    [down] = extend_grid(config, jobs, _chosen("apt", 5e-4))
    assert down.lr == 2.5e-4
    assert extend_grid(_config(grid_extend=0), _grid(config, "apt"), _chosen("apt", 2e-3)) == []


def test_a_rate_tried_past_the_top_that_is_not_best_stops_the_extension():
    # 4e-3 ran and was worse than 2e-3: the best is now inside the rates tried
    config = _config()
    jobs = _grid(config, "apt")
    jobs.append(extend_grid(config, jobs, _chosen("apt", 2e-3))[0])
    assert extend_grid(config, jobs, _chosen("apt", 2e-3)) == []


def test_a_negative_extension_is_refused():
    with pytest.raises(ConfigError, match="--grid-extend"):
        _config(grid_extend=-1).validate()
