"""The rank-growth memory probe's arithmetic: which arm is subtracted from which, and the state bytes."""

from __future__ import annotations

import pytest
from benchmarks.rank_growth_memory import BYTES_PER_TRAINABLE, summarise


def _run(peak: float, final: float, step: float, start: int, end: int) -> dict:
    return {
        "peak_rss_mb": peak,
        "step_s": step,
        "trace": [{"rss_mb": final - 50, "trainable": start}, {"rss_mb": final, "trainable": end}],
    }


def test_the_difference_is_growth_minus_static_over_medians() -> None:
    runs = {
        "salience": [
            _run(3600, 3500, 6.2, 2_000_000, 9_000_000),
            _run(3640, 3520, 6.4, 2_000_000, 9_000_000),
        ],
        "static": [_run(3300, 3200, 6.0, 2_000_000, 2_000_000), _run(3280, 3220, 6.1, 2_000_000, 2_000_000)],
    }
    summary = summarise(runs)
    assert summary["salience"]["peak_rss_mb"] == pytest.approx(3620)  # median of the two runs
    assert summary["salience"]["final_rss_mb"] == pytest.approx(3510)  # the RSS after the last step
    diff = summary["difference"]
    assert diff["peak_rss_mb"] == pytest.approx(3620 - 3290)
    assert diff["final_rss_mb"] == pytest.approx(3510 - 3210)
    assert diff["step_s"] == pytest.approx(6.3 - 6.05)
    assert diff["extra_trainable"] == 7_000_000
    assert diff["expected_state_mb"] == pytest.approx(7_000_000 * BYTES_PER_TRAINABLE / 2**20)


def test_one_arm_alone_has_no_difference() -> None:
    summary = summarise({"static": [_run(3300, 3200, 6.0, 2_000_000, 2_000_000)]})
    assert "difference" not in summary and summary["static"]["trainable_end"] == 2_000_000
