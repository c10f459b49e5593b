"""The gradient-checkpointing probe's arithmetic: medians, and which arm divides which."""

from __future__ import annotations

import pytest
from benchmarks.gradient_checkpointing_memory import summarise


def _run(peak: float, setup: float, step: float) -> dict:
    return {"peak_rss_mb": peak, "setup_peak_rss_mb": setup, "step_s": step}


def test_ratios_are_on_over_off_and_apt_over_lora_of_the_medians() -> None:
    runs = {
        "lora-off": [_run(3800, 1500, 4.0), _run(3900, 1500, 4.2)],
        "lora-on": [_run(2000, 1500, 5.0)],
        "apt-off": [_run(3400, 1800, 3.0)],
        "apt-on": [_run(1700, 1200, 4.0)],
    }
    summary = summarise(runs)
    assert summary["arms"]["lora-off"]["peak_rss_mb"] == pytest.approx(3850)  # median of the two
    assert summary["on_over_off"]["lora"]["peak_rss_mb"] == pytest.approx(2000 / 3850)
    assert summary["on_over_off"]["apt"]["step_s"] == pytest.approx(4.0 / 3.0)
    assert summary["apt_over_lora"]["on"]["peak_rss_mb"] == pytest.approx(1700 / 2000)
    assert summary["apt_over_lora"]["off"]["setup_peak_rss_mb"] == pytest.approx(1800 / 1500)
    # the whole run peaks in the training loop unless the setup went higher (APT off: 3400 vs 1800)
    assert summary["arms"]["apt-off"]["run_peak_rss_mb"] == pytest.approx(3400)
    assert summary["arms"]["lora-on"]["run_peak_rss_mb"] == pytest.approx(2000)


def test_the_whole_run_peak_is_the_setup_when_it_is_higher() -> None:
    summary = summarise({"apt-on": [_run(2300, 2450, 3.5), _run(2340, 2480, 3.0)]})
    assert summary["arms"]["apt-on"]["run_peak_rss_mb"] == pytest.approx((2450 + 2480) / 2)


def test_a_missing_arm_leaves_out_only_its_ratios() -> None:
    runs = {"lora-off": [_run(3800, 1500, 4.0)], "apt-off": [_run(3400, 1800, 3.0)], "apt-on": []}
    summary = summarise(runs)
    assert summary["on_over_off"] == {} and set(summary["apt_over_lora"]) == {"off"}
