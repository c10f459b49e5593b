"""Reading benchmark job records: split metrics, method kinds, allocator settings, and medians over seeds.

Job records (``results/<job>.json``, see `aptune.bench.worker.run_job`) hold ``final_metrics`` either
per split (``{"dev": {...}, "test": {...}}``) or flat (dev only). Every method whose name starts with
``lora-prune`` is a LoRA+Prune baseline. Figures over seeds are medians with their min–max spread,
never the best seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ALLOCATOR_NAMES",
    "LORA_PRUNE_PREFIX",
    "NOT_RUN_YET",
    "allocator_of",
    "curve_split",
    "flat_curve",
    "is_headline",
    "is_lora_prune",
    "main_allocator",
    "median_of",
    "record_metrics",
    "split_metrics",
    "spread",
    "tta_spread",
]

LORA_PRUNE_PREFIX = "lora-prune"

#: The failure text of a part of the benchmark that has not run yet (a ``report_only``, partial page).
NOT_RUN_YET = "not run yet"

#: Allocator settings as the page names them.
ALLOCATOR_NAMES = {"default": "C library defaults", "pinned": "aptune's pinned mmap threshold"}


def is_lora_prune(method: str) -> bool:
    """Whether a method is a LoRA+Prune baseline (its name starts with ``lora-prune``)."""
    return method.startswith(LORA_PRUNE_PREFIX)


def spread(values: Sequence[float | None]) -> dict[str, Any] | None:
    """``{"median", "min", "max", "n", "values"}`` of the values that are present, else ``None``.

    Args:
        values: One value per seed (``None`` / NaN: not measured).

    Returns:
        The median over seeds and its spread; never the best seed.
    """
    present = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present:
        return None
    return {
        "median": statistics.median(present),
        "min": min(present),
        "max": max(present),
        "n": len(present),
        "values": present,
    }


def tta_spread(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Time-to-accuracy over seeds, where ``None`` means the seed never reached the bar.

    A seed that did not reach the bar counts as infinitely slow: the median is ``None`` ("not
    reached") when half of the seeds or more did not reach it, and ``all_reached`` is False as soon
    as one seed did not.

    Args:
        values: Seconds per seed, ``None`` for "not reached".

    Returns:
        ``{"median", "min", "max", "n", "reached", "all_reached", "values"}`` (``min`` / ``max`` over
        the seeds that reached it), or ``None`` for no seeds.
    """
    if not values:
        return None
    reached = [float(v) for v in values if v is not None]
    median = statistics.median(sorted(reached) + [math.inf] * (len(values) - len(reached)))
    return {
        "median": median if math.isfinite(median) else None,
        "min": min(reached) if reached else None,
        "max": max(reached) if reached else None,
        "n": len(values),
        "reached": len(reached),
        "all_reached": len(reached) == len(values),
        "values": list(values),
    }


def median_of(stats: Mapping[str, Any] | None) -> float | None:
    """The ``median`` of a `spread` / `tta_spread`, or ``None``."""
    return stats["median"] if stats else None


def split_metrics(metrics: Mapping[str, Any] | None, split: str) -> dict[str, float] | None:
    """The metrics of one split from a record's ``final_metrics`` (or a curve point's ``metrics``).

    Args:
        metrics: ``{"dev": {...}, "test": {...}}``, or a flat ``{name: value}`` (dev only).
        split: ``"dev"`` or ``"test"``.

    Returns:
        ``{name: value}``, or ``None`` when the split is missing.
    """
    if not isinstance(metrics, Mapping) or not metrics:
        return None
    if any(isinstance(v, Mapping) for v in metrics.values()):
        block = metrics.get(split)
        return dict(block) if isinstance(block, Mapping) else None
    return dict(metrics) if split == "dev" else None


def record_metrics(result: Mapping[str, Any], split: str) -> dict[str, float] | None:
    """A record's final metrics of one split (``final_metrics[split]``, or ``<split>_metrics``)."""
    found = split_metrics(result.get("final_metrics"), split)
    if found is None and isinstance(result.get(f"{split}_metrics"), Mapping):
        found = dict(result[f"{split}_metrics"])
    return found


def curve_split(curve: Sequence[Mapping[str, Any]]) -> str:
    """``"test"`` when the evaluation points carry test metrics, else ``"dev"``."""
    return "test" if any(split_metrics(p.get("metrics"), "test") for p in curve) else "dev"


def flat_curve(curve: Sequence[Mapping[str, Any]], split: str) -> list[dict[str, Any]]:
    """The curve with ``metrics`` reduced to one split (for `time_to_accuracy`)."""
    return [{**p, "metrics": split_metrics(p.get("metrics"), split) or {}} for p in curve]


def allocator_of(result: Mapping[str, Any]) -> str:
    """``"default"`` or ``"pinned"``: the C allocator setting the job ran under."""
    allocator = result.get("allocator")
    if isinstance(allocator, Mapping) and allocator.get("setting"):
        return str(allocator["setting"])
    return "pinned" if result.get("mmap_threshold") else "default"


def main_allocator(settings: Sequence[tuple[str, int]]) -> str | None:
    """The allocator setting whose runs make a group's medians: the one with the most seeds.

    The headline runs every seed under one setting and repeats some seeds under the other (for the
    memory comparison); medians of accuracy and time mix no settings, so that a repeated seed does
    not count twice. Ties go to the C library's defaults.

    Args:
        settings: ``(allocator setting, seed)`` of every run of the group.

    Returns:
        The setting, or ``None`` for no runs.
    """
    seeds: dict[str, set[int]] = {}
    for setting, seed in settings:
        seeds.setdefault(setting, set()).add(seed)
    if not seeds:
        return None
    return max(seeds, key=lambda s: (len(seeds[s]), s == "default"))


def is_headline(row: Mapping[str, Any], density: float) -> bool:
    """A headline job: FT, LoRA, or a method at the headline density, without an ablation variant."""
    return not row["variant"] and (row["method"] in ("ft", "lora") or math.isclose(row["density"], density))
