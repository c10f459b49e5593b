"""Tests of `aptune.schedule`: event layout, densities, budgets, windows, mu and validation."""

from __future__ import annotations

import json
import re

import pytest

from aptune.config import AptConfig
from aptune.errors import ConfigError
from aptune.schedule import Schedule, build_schedule, resolve_point


def _gaps(schedule: Schedule) -> list[int]:
    points = (schedule.start, *schedule.events)
    return [points[i + 1] - points[i] for i in range(len(schedule.events))]


def _linspace_rounded(start: int, end: int, count: int) -> list[int]:
    # Independent of the implementation: plain float linspace, then round.
    step = (end - start) / count
    return [round(start + step * k) for k in range(1, count + 1)]


@pytest.fixture
def example() -> Schedule:
    config = AptConfig(prune_start=0.05, prune_end=0.4, density_warmup=0.05, num_events=6, target_density=0.4)
    return build_schedule(config, 1000)


# ---------------------------------------------------------------------------------------------- points
def test_resolve_point_fraction_and_absolute() -> None:
    assert resolve_point(0.05, 1000) == 50
    assert resolve_point(0.0, 1000) == 0
    assert resolve_point(1.0, 1000) == 1000
    assert resolve_point(30, 1000) == 30
    assert resolve_point(5000, 1000) == 1000  # clamped to the run
    assert resolve_point(-3, 1000) == 0


@pytest.mark.parametrize("point", [1.5, -0.1, float("nan"), "0.3", True, None])
def test_resolve_point_rejects_bad_points(point: object) -> None:
    with pytest.raises(ConfigError):
        resolve_point(point, 1000)  # type: ignore[arg-type]


@pytest.mark.parametrize("total", [0, -5, 10.0, True])
def test_total_steps_must_be_positive_int(total: object) -> None:
    with pytest.raises(ConfigError, match="total_steps"):
        build_schedule(AptConfig(), total)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- layout
def test_example_from_the_brief(example: Schedule) -> None:
    assert (example.start, example.end, example.warmup_end) == (50, 400, 100)
    assert list(example.events) == _linspace_rounded(50, 400, 6) == [108, 167, 225, 283, 342, 400]
    assert example.total_steps == 1000
    assert example.num_events == 6
    assert example.distill_end == 700


def test_densities_follow_the_cubic(example: Schedule) -> None:
    for event, density in zip(example.events, example.densities, strict=True):
        expected = min(1.0, 0.4 + 0.6 * ((400 - event) / (400 - 100)) ** 3)
        assert density == pytest.approx(expected, abs=1e-12)
    assert example.densities[-1] == 0.4  # exactly the target
    assert all(b <= a for a, b in zip(example.densities, example.densities[1:], strict=False))
    assert all(0.4 <= d <= 1.0 for d in example.densities)


def test_events_strictly_increasing_and_end_at_prune_end(example: Schedule) -> None:
    assert all(b > a for a, b in zip(example.events, example.events[1:], strict=False))
    assert example.events[0] > example.start
    assert example.events[-1] == example.end


def test_budgets_grow_linearly_to_budget_growth(example: Schedule) -> None:
    for event, budget in zip(example.events, example.budgets, strict=True):
        assert budget == pytest.approx(1.0 + 3.0 * (event - 50) / 350)
    assert example.budgets[-1] == 4.0
    assert all(b > a for a, b in zip(example.budgets, example.budgets[1:], strict=False))
    assert example.budget_factor(example.events[0] - 1) == 1.0
    assert example.budget_factor(example.events[2]) == example.budgets[2]
    assert example.budget_factor(999) == 4.0


def test_budget_growth_one_keeps_budget_flat() -> None:
    schedule = build_schedule(AptConfig(budget_growth=1.0), 1000)
    assert schedule.budgets == (1.0,) * 6


def test_paper_sst2_densities_are_reproduced() -> None:
    # The authors' RoBERTa-base SST-2 timeline: 10 events, 1-epoch warm-up.
    config = AptConfig(
        prune_start=200, prune_end=6315, density_warmup=2105, num_events=10, target_density=0.4
    )
    schedule = build_schedule(config, 84_200)
    rounded = [round(d, 3) for d in schedule.densities]
    assert rounded == [1.0, 1.0, 1.0, 0.86, 0.666, 0.536, 0.457, 0.417, 0.402, 0.4]


def test_density_is_one_up_to_warmup_end() -> None:
    config = AptConfig(prune_start=100, prune_end=700, density_warmup=300, num_events=6)
    schedule = build_schedule(config, 1000)
    assert schedule.warmup_end == 400
    for event, density in zip(schedule.events, schedule.densities, strict=True):
        if event <= 400:
            assert density == 1.0
        else:
            assert density < 1.0


def test_warmup_reaching_end_drops_at_the_last_event_only() -> None:
    config = AptConfig(prune_start=100, prune_end=400, density_warmup=500, num_events=3, target_density=0.3)
    schedule = build_schedule(config, 1000)
    assert schedule.warmup_end == schedule.end == 400
    assert schedule.densities == (1.0, 1.0, 0.3)


def test_pretune_prune_is_at_target_from_the_start() -> None:
    schedule = build_schedule(AptConfig(pretune_prune=True, target_density=0.7), 1000)
    assert schedule.densities == (0.7,) * 6
    assert schedule.initial_density == 0.7
    assert schedule.density_target(0) == 0.7
    assert schedule.budgets[-1] == 4.0  # ranks still grow at the events


def test_fraction_and_absolute_points_agree() -> None:
    fractions = AptConfig(prune_start=0.1, prune_end=0.5, density_warmup=0.1, distill_end=0.8)
    absolute = AptConfig(prune_start=200, prune_end=1000, density_warmup=200, distill_end=1600)
    assert build_schedule(fractions, 2000) == build_schedule(absolute, 2000)


def test_fractions_scale_with_run_length() -> None:
    short = build_schedule(AptConfig(), 1000)
    long = build_schedule(AptConfig(), 10_000)
    assert (long.start, long.end) == (10 * short.start, 10 * short.end)


def test_distill_end_is_clamped_to_pruning_end() -> None:
    schedule = build_schedule(AptConfig(prune_start=0.1, prune_end=0.5, distill_end=100), 1000)
    assert schedule.distill_end == schedule.end == 500
    late = build_schedule(AptConfig(distill_end=10**6), 1000)
    assert late.distill_end == 1000


def test_to_dict_is_json_ready(example: Schedule) -> None:
    data = json.loads(json.dumps(example.to_dict()))
    assert data["events"] == list(example.events)
    assert data["densities"] == list(example.densities)
    assert data["window"] == example.window


# ---------------------------------------------------------------------------------------------- windows
def test_default_window_is_half_the_smallest_gap(example: Schedule) -> None:
    gaps = _gaps(example)
    assert example.window == max(2, min(gaps) // 2) == 29
    assert example.mask_step == pytest.approx(2.0 / 29)


def test_explicit_window_and_mask_step() -> None:
    schedule = build_schedule(AptConfig(mask_window=10, mask_step=0.01), 1000)
    assert (schedule.window, schedule.mask_step) == (10, 0.01)
    fraction = build_schedule(AptConfig(mask_window=0.02), 1000)
    assert fraction.window == 20
    assert fraction.mask_step == pytest.approx(0.1)


def test_window_is_clipped_to_the_smallest_gap(example: Schedule) -> None:
    schedule = build_schedule(AptConfig(mask_window=500), 1000)
    assert schedule.window == min(_gaps(schedule)) - 1
    assert build_schedule(AptConfig(mask_window=0), 1000).window == 1


def test_window_and_event_index(example: Schedule) -> None:
    window = example.window
    for k, event in enumerate(example.events):
        assert example.event_index(event) == k
        assert example.window_index(event) is None
        assert example.window_index(event - 1) == k
        assert example.window_index(event - window) == k
        assert example.window_index(event - window - 1) is None
        assert example.event_index(event - 1) is None
    assert example.window_index(0) is None
    assert example.window_index(999) is None


def test_windows_never_overlap_and_stay_after_start() -> None:
    for total in (34, 50, 137, 1000):
        schedule = build_schedule(AptConfig(), total)
        owners = [schedule.window_index(step) for step in range(total + 1)]
        for k, event in enumerate(schedule.events):
            assert owners.count(k) == schedule.window
            assert event - schedule.window > schedule.start
            assert all(schedule.window_index(e) is None for e in schedule.events)


def test_hard_step_two_before_each_event(example: Schedule) -> None:
    hard = [step for step in range(1001) if example.is_hard_step(step)]
    assert hard == [event - 2 for event in example.events]
    assert all(example.window_index(step) is not None for step in hard)


def test_hard_step_with_a_one_step_window() -> None:
    schedule = build_schedule(AptConfig(mask_window=1), 1000)
    hard = [step for step in range(1001) if schedule.is_hard_step(step)]
    assert hard == [event - 1 for event in schedule.events]
    assert all(schedule.window_index(step) is not None for step in hard)


@pytest.mark.parametrize("mask_window", [None, 1, 2, 5])
def test_mask_moves_soft_then_hard_inside_each_window(mask_window) -> None:
    schedule = build_schedule(AptConfig(mask_window=mask_window), 1000)
    window, lead = schedule.window, 2 if schedule.window >= 2 else 1
    expected = {}
    for event in schedule.events:
        # written out from the rule: soft from the window's first step up to the hard step, hard on it,
        # nothing on the step between the hard step and the event
        expected.update({step: "soft" for step in range(event - window, event - lead)})
        expected[event - lead] = "hard"
    assert {step: schedule.mask_move(step) for step in range(1001) if schedule.mask_move(step)} == expected
    assert [s for s in range(1001) if schedule.opens_window(s)] == [e - window for e in schedule.events]


def test_salience_is_collected_from_start_to_end(example: Schedule) -> None:
    assert [s for s in range(1001) if example.collects(s)] == list(range(example.start, example.end + 1))


def test_budget_factor_at_each_event(example: Schedule) -> None:
    assert [example.budget_factor(e) for e in example.events] == list(example.budgets)


def test_density_target_by_step(example: Schedule) -> None:
    first, second = example.events[0], example.events[1]
    assert example.density_target(0) == 1.0
    assert example.density_target(first - example.window - 1) == 1.0
    assert example.density_target(first - example.window) == example.densities[0]
    assert example.density_target(first) == example.densities[0]
    # Between two windows the density of the last event holds.
    assert example.density_target(first + 1) == example.densities[0]
    assert example.density_target(second - example.window) == example.densities[1]
    assert example.density_target(1000) == 0.4


def test_two_step_gaps_get_a_one_step_window() -> None:
    # 34 steps: start 2, events every 2 steps. A 2-step window would put the hard step of event k on
    # event k - 1, so the window shrinks to the single (hard) step before each event.
    schedule = build_schedule(AptConfig(), 34)
    assert set(_gaps(schedule)) == {2}
    assert schedule.window == 1
    assert schedule.mask_step == 1.0
    for k, event in enumerate(schedule.events):
        assert schedule.window_index(event - 1) == k
        assert schedule.is_hard_step(event - 1)
        assert schedule.window_index(event) is None
        assert schedule.density_target(event - 1) == schedule.densities[k]


def test_mu_ramps_over_the_pruning_span(example: Schedule) -> None:
    assert example.mu(0) == 0.0
    assert example.mu(50) == 0.0
    assert example.mu(225) == pytest.approx(0.5)
    assert example.mu(400) == 1.0
    assert example.mu(900) == 1.0


# ---------------------------------------------------------------------------------------------- errors
def test_too_short_run_names_the_minimum_length() -> None:
    with pytest.raises(ConfigError) as info:
        build_schedule(AptConfig(), 20)
    message = str(info.value)
    assert "num_events=6" in message
    assert "at least 34 total steps" in message
    assert "lower AptConfig.num_events" in message


def test_reported_minimum_length_is_exact() -> None:
    for config in (
        AptConfig(),
        AptConfig(num_events=10, prune_start=0.1, prune_end=0.3),
        AptConfig(num_events=3, prune_start=7, prune_end=0.5),
    ):
        with pytest.raises(ConfigError) as info:
            build_schedule(config, 5)
        found = re.search(r"at least (\d+) total steps", str(info.value))
        assert found is not None, str(info.value)
        minimum = int(found.group(1))
        with pytest.raises(ConfigError):
            build_schedule(config, minimum - 1)
        for total in range(minimum, minimum + 300):
            schedule = build_schedule(config, total)
            gaps = _gaps(schedule)
            assert min(gaps) >= 2


def test_fixed_span_too_small_suggests_fewer_events() -> None:
    with pytest.raises(ConfigError) as info:
        build_schedule(AptConfig(prune_start=10, prune_end=20, num_events=6), 1000)
    message = str(info.value)
    assert "num_events to 5 or fewer" in message
    assert "total steps" not in message.split(";", 1)[1]  # more steps would not help


def test_prune_end_beyond_the_run() -> None:
    with pytest.raises(ConfigError, match=r"prune_end=2000.*at least 2000 total steps"):
        build_schedule(AptConfig(prune_end=2000), 1000)


def test_prune_end_before_start_after_resolution() -> None:
    with pytest.raises(ConfigError, match="prune_end=20 is invalid"):
        build_schedule(AptConfig(prune_start=0.5, prune_end=20), 1000)


def test_hand_built_schedule_is_checked() -> None:
    with pytest.raises(ValueError):
        Schedule(10, 0, 6, 0, (3, 3), (1.0, 0.5), (1.0, 2.0), 1, 1.0, 6)
