"""The allocator A/B script's child environments and page names: which arm gets which setting."""

from __future__ import annotations

from benchmarks.allocator_ab import _page, child_env, page_name

from aptune.host_memory import DEFAULT_MMAP_THRESHOLD

BASE = {"PATH": "/usr/bin", "MALLOC_MMAP_THRESHOLD_": "999"}


def test_the_default_arm_keeps_the_c_library_threshold() -> None:
    env = child_env(BASE, "default", 524288)
    assert env["APTUNE_PIN_MMAP_THRESHOLD"] == "0"
    assert "MALLOC_MMAP_THRESHOLD_" not in env  # an inherited setting never leaks into the default arm
    assert env["PATH"] == "/usr/bin"


def test_the_pinned_arm_lets_aptune_pin_where_it_pins() -> None:
    env = child_env(BASE, "pinned", 524288)
    assert env["APTUNE_PIN_MMAP_THRESHOLD"] == "524288"
    assert "MALLOC_MMAP_THRESHOLD_" not in env


def test_the_whole_process_arm_sets_glibc_from_the_start_and_aptune_pins_nothing() -> None:
    env = child_env(BASE, "pinned", 524288, whole_process=True)
    assert env["MALLOC_MMAP_THRESHOLD_"] == "524288"
    assert env["APTUNE_PIN_MMAP_THRESHOLD"] == "0"
    assert "MALLOC_MMAP_THRESHOLD_" not in child_env(BASE, "default", 524288, whole_process=True)


def test_page_names_tell_the_settings_apart() -> None:
    assert page_name("minilm", DEFAULT_MMAP_THRESHOLD) == "allocator_ab"
    assert page_name("smollm2", DEFAULT_MMAP_THRESHOLD) == "allocator_ab_smollm2"
    assert page_name("smollm2", 524288) == "allocator_ab_smollm2_524288"
    assert page_name("smollm2", 524288, whole_process=True) == "allocator_ab_smollm2_524288_whole_process"
    assert page_name("smollm2", DEFAULT_MMAP_THRESHOLD, whole_process=True).endswith(
        f"_{DEFAULT_MMAP_THRESHOLD}_whole_process"
    )


def _summary(whole_process: bool) -> dict:
    run = {"peak_rss_mb": 2000.0, "step_s": 6.0}
    arms = {
        f"{w}/{a}": {"peak_rss_mb": 2000.0, "step_s": 6.0, "runs": [run]}
        for w in ("lora", "apt")
        for a in ("default", "pinned")
    }
    machine = {"load_average_1min": 0.1, "cpus": 2, "note": "Beside nothing else."}
    return {**arms, "machine": machine, "threshold": 524288, "whole_process": whole_process}


def test_the_page_says_where_the_threshold_was_set() -> None:
    whole = _page("smollm2", _summary(True))
    assert "in the whole process, from its start" in whole and "Beside nothing else." in whole
    where_aptune_pins = _page("smollm2", _summary(False))
    assert "in the whole process" not in where_aptune_pins
    assert "right after its calibration pass" in where_aptune_pins
