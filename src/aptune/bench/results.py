"""From per-job results to the benchmark's figures, its targets, the Markdown page and plots.

`summarize` turns the job records into per-job rows and per-method groups (medians over seeds, never
the best seed, with their min–max spread), computes time-to-accuracy against the reference method's
bar, and evaluates `TARGETS`, a table of `Target` records; `write_results` writes ``<name>.json``,
``<name>.md`` and ``<name>/<plot>.png`` with the number, table and figure helpers of
`aptune.report`.

Job records (``results/<job>.json``, see `aptune.bench.worker.run_job`) hold ``final_metrics`` either
per split (``{"dev": {...}, "test": {...}}``) or flat (dev only); the headline figures are TEST
metrics, and a record without them shows "n/a" and leaves the targets that need them not evaluated.
Every method whose name starts with ``lora-prune`` is a LoRA+Prune baseline; "the better LoRA+Prune"
is the one with the higher median test metric.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aptune.atomic import write_json_atomic, write_text_atomic
from aptune.bench.config import BenchConfig, Job, config_command
from aptune.bench.measure import time_to_accuracy
from aptune.report.figures import new_figure, save_png
from aptune.report.format import DASH, NA, fmt_fixed, fmt_percent, fmt_sig, fmt_spread
from aptune.report.tables import md_table

__all__ = [
    "ALLOCATOR_NAMES",
    "TARGETS",
    "Reading",
    "Target",
    "TargetContext",
    "evaluate_targets",
    "is_lora_prune",
    "split_metrics",
    "spread",
    "summarize",
    "tta_spread",
    "write_results",
]

LORA_PRUNE_PREFIX = "lora-prune"

#: Allocator settings as the page names them.
ALLOCATOR_NAMES = {"default": "C library defaults", "pinned": "aptune's pinned mmap threshold"}


def is_lora_prune(method: str) -> bool:
    """Whether a method is a LoRA+Prune baseline (its name starts with ``lora-prune``)."""
    return method.startswith(LORA_PRUNE_PREFIX)


# ------------------------------------------------------------------------------------------- numbers
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


def _median(stats: Mapping[str, Any] | None) -> float | None:
    return stats["median"] if stats else None


# ------------------------------------------------------------------------------------- job records
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


def _record_metrics(result: Mapping[str, Any], split: str) -> dict[str, float] | None:
    found = split_metrics(result.get("final_metrics"), split)
    if found is None and isinstance(result.get(f"{split}_metrics"), Mapping):
        found = dict(result[f"{split}_metrics"])
    return found


def _curve_split(curve: Sequence[Mapping[str, Any]]) -> str:
    """``"test"`` when the evaluation points carry test metrics, else ``"dev"``."""
    return "test" if any(split_metrics(p.get("metrics"), "test") for p in curve) else "dev"


def _flat_curve(curve: Sequence[Mapping[str, Any]], split: str) -> list[dict[str, Any]]:
    """The curve with ``metrics`` reduced to one split (for `time_to_accuracy`)."""
    return [{**p, "metrics": split_metrics(p.get("metrics"), split) or {}} for p in curve]


def _allocator(result: Mapping[str, Any]) -> str:
    """``"default"`` or ``"pinned"``: the C allocator setting the job ran under."""
    allocator = result.get("allocator")
    if isinstance(allocator, Mapping) and allocator.get("setting"):
        return str(allocator["setting"])
    return "pinned" if result.get("mmap_threshold") else "default"


def _job_peak(job: Job, results: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The job's peak RSS; a LoRA+Prune job also counts its LoRA phase (a job of its own)."""
    own = results[job.id].get("peak_rss_mb")
    if not is_lora_prune(job.method):
        return own
    phases = [own] + [results[d].get("peak_rss_mb") for d in job.depends if d in results]
    present = [p for p in phases if p is not None]
    return max(present) if len(present) == len(phases) else None


def _environment() -> dict[str, Any]:
    import torch
    import transformers

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:  # pragma: no cover - peft is needed for the LoRA methods only
        peft_version = None
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        load = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_end": list(load) if load else None,
    }


def _job_row(
    job: Job,
    results: Mapping[str, Mapping[str, Any]],
    latency: Mapping[str, Any],
    threshold: float | None,
    greater: bool,
) -> dict[str, Any]:
    result = results[job.id]
    metric = result.get("primary_metric", "accuracy")
    test = _record_metrics(result, "test") or {}
    dev = _record_metrics(result, "dev") or {}
    timing = (latency.get("jobs") or {}).get(job.id) or {}
    steps = result.get("step_summary") or {}
    curve = result.get("curve") or []
    split = _curve_split(curve)
    flat = _flat_curve(curve, split)
    tta = tta_any = None
    if threshold is not None:
        tta = time_to_accuracy(flat, threshold, metric, greater_is_better=greater)
        tta_any = time_to_accuracy(
            flat, threshold, metric, greater_is_better=greater, final_structure_only=False
        )
    lat = timing.get("latency") or {}
    return {
        "id": job.id,
        "label": job.label,
        "method": job.method,
        "variant": job.variant,
        "seed": job.seed,
        "density": job.density,
        "metric": test.get(metric),
        "dev_metric": dev.get(metric),
        "macro_f1": test.get("macro_f1"),
        "final_metrics": {"dev": dev, "test": test},
        "curve_split": split,
        "tta_seconds": tta,
        "tta_any_seconds": tta_any,
        "train_seconds": result.get("train_seconds"),
        "phases": result.get("phases"),
        "allocator": _allocator(result),
        "peak_rss_mb": _job_peak(job, results),
        "peak_rss_reset": result.get("peak_rss_reset"),
        "resting_rss_mb": result.get("resting_rss_mb"),
        "cuda_max_allocated_mb": result.get("cuda_max_allocated_mb"),
        "step_start_s": steps.get("start"),
        "step_after_pruning_s": steps.get("after_pruning"),
        "step_end_s": steps.get("end"),
        "step_ratio": steps.get("ratio_after_pruning"),
        "step_after_distillation_s": steps.get("after_distillation"),
        "params_before": result.get("params_before"),
        "params_after": result.get("params_after"),
        "backbone_density": result.get("density"),
        "latency_ms": lat.get("median_ms"),
        "latency_p25_ms": lat.get("p25_ms"),
        "latency_p75_ms": lat.get("p75_ms"),
        "throughput": lat.get("throughput"),
        "latency_ratio": timing.get("latency_ratio"),
        "flop_ratio": timing.get("flop_ratio"),
        "stack_flop_ratio": timing.get("stack_flop_ratio"),
        "implied_ms": timing.get("implied_ms"),
        "latency_vs_implied": (
            lat["median_ms"] / timing["implied_ms"]
            if timing.get("implied_ms") and lat.get("median_ms")
            else None
        ),
        "latency_shared_with": timing.get("key") if timing.get("key") != job.id else None,
        "teacher_seconds": result.get("teacher_seconds"),
        "total_steps": result.get("total_steps"),
        "wall_seconds": result.get("wall_seconds"),
        "structure": result.get("structure") or result.get("pruning"),
    }


_GROUP_FIELDS = (
    "metric",
    "dev_metric",
    "macro_f1",
    "train_seconds",
    "peak_rss_mb",
    "resting_rss_mb",
    "cuda_max_allocated_mb",
    "step_start_s",
    "step_after_pruning_s",
    "step_ratio",
    "step_after_distillation_s",
    "params_after",
    "latency_ms",
    "throughput",
    "latency_ratio",
    "flop_ratio",
    "stack_flop_ratio",
    "implied_ms",
    "latency_vs_implied",
    "teacher_seconds",
)


def _group(rows: list[dict], label: str, density: float) -> dict[str, Any]:
    """Medians and spreads over the seeds of one (label, density)."""
    members = [r for r in rows if r["label"] == label and math.isclose(r["density"], density)]
    group: dict[str, Any] = {
        "label": label,
        "method": members[0]["method"],
        "variant": members[0]["variant"],
        "density": density,
        "seeds": [r["seed"] for r in members],
        "jobs": [r["id"] for r in members],
    }
    for name in _GROUP_FIELDS:
        group[name] = spread([r[name] for r in members])
    group["tta_seconds"] = tta_spread([r["tta_seconds"] for r in members])
    group["tta_any_seconds"] = tta_spread([r["tta_any_seconds"] for r in members])
    group["reached"] = group["tta_seconds"]["reached"] if group["tta_seconds"] else 0
    settings = sorted({r["allocator"] for r in members})
    group["peak_rss_mb_by_allocator"] = {
        s: spread([r["peak_rss_mb"] for r in members if r["allocator"] == s]) for s in settings
    }
    phase_names: list[str] = []
    for r in members:
        phase_names += [k for k in (r["phases"] or {}) if k not in phase_names]
    group["phases"] = {k: spread([(r["phases"] or {}).get(k) for r in members]) for k in phase_names}
    params_before = next((r["params_before"] for r in members if r["params_before"]), None)
    params_after = _median(group["params_after"])
    group["params_before"] = params_before
    group["params_ratio"] = params_after / params_before if params_after and params_before else None
    return group


# ------------------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Reading:
    """What a target measured.

    Attributes:
        value: The figure compared with the limit (``None``: not measured, the target is not evaluated).
        text: The measurement in words, for the page.
        missed: Why the target is missed whatever ``value`` is (a seed never reached the bar), or "".
    """

    value: float | None
    text: str
    missed: str = ""


@dataclass
class TargetContext:
    """What the target readings look at: the config and the groups by (label, density).

    Attributes:
        config: The benchmark configuration.
        groups: ``{(label, density): group}`` as built by `summarize`.
        reference: The TTA reference (``metric``, ``threshold``, ...).
    """

    config: BenchConfig
    groups: Mapping[tuple[str, float], Mapping[str, Any]]
    reference: Mapping[str, Any]

    @property
    def density(self) -> float:
        """The headline density."""
        return self.config.target_density

    def group(self, method: str, density: float | None = None) -> Mapping[str, Any] | None:
        """The headline group (no ablation variant) of ``method`` at ``density`` (any when ``None``)."""
        for g in self.groups.values():
            same_density = density is None or math.isclose(g["density"], density)
            if g["method"] == method and not g["variant"] and same_density:
                return g
        return None

    def lora_prune(self) -> Mapping[str, Any] | None:
        """The better LoRA+Prune at the headline density: the higher median test metric.

        Baselines without a test metric rank last; with none measured, the first one is returned.
        """
        candidates = [
            g
            for g in self.groups.values()
            if is_lora_prune(g["method"]) and not g["variant"] and math.isclose(g["density"], self.density)
        ]
        if not candidates:
            return None
        greater = self.reference.get("greater_is_better", True)

        def key(g: Mapping[str, Any]) -> float:
            m = _median(g["metric"])
            if m is None:
                return -math.inf
            return m if greater else -m

        return max(candidates, key=key)


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, limit: value >= limit - 1e-12,
    "<=": lambda value, limit: value <= limit + 1e-12,
}


@dataclass(frozen=True)
class Target:
    """One claim the benchmark checks: ``measure(context).value <compare> limit``.

    Attributes:
        id: Stable name (``accuracy_vs_ft``).
        claim: The claim in words; ``{density}`` and ``{limit}`` are filled in.
        measure: Reads the figure from the groups.
        limit: The bound.
        compare: ``">="`` or ``"<="``.
        tasks: The tasks the target applies to.
    """

    id: str
    claim: str
    measure: Callable[[TargetContext], Reading]
    limit: float
    compare: str
    tasks: tuple[str, ...] = ("classification",)

    def evaluate(self, ctx: TargetContext) -> dict[str, Any]:
        """Measure and compare.

        Args:
            ctx: Config, groups and reference.

        Returns:
            ``{"id", "claim", "met", "measured", "value", "limit", "compare"}``; ``met`` is ``None``
            when the figure was not measured, ``False`` when a seed never reached a needed bar.
        """
        reading = self.measure(ctx)
        if reading.missed:
            met: bool | None = False
        elif reading.value is None:
            met = None
        else:
            met = _COMPARE[self.compare](reading.value, self.limit)
        text = reading.text + (f" ({reading.missed})" if reading.missed else "")
        return {
            "id": self.id,
            "claim": self.claim.format(density=f"{ctx.density:g}", limit=f"{self.limit:g}"),
            "met": met,
            "measured": text,
            "value": reading.value,
            "limit": self.limit,
            "compare": self.compare,
        }


def _med(group: Mapping[str, Any] | None, name: str) -> float | None:
    return _median(group.get(name)) if group else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _accuracy_vs_ft(ctx: TargetContext) -> Reading:
    a, f = _med(ctx.group("apt", ctx.density), "metric"), _med(ctx.group("ft"), "metric")
    ratio = _ratio(a, f)
    return Reading(ratio, f"APT {fmt_percent(a)} vs FT {fmt_percent(f)}: {fmt_percent(ratio)} of FT")


def _accuracy_vs_lora_prune(ctx: TargetContext) -> Reading:
    lp = ctx.lora_prune()
    a, p = _med(ctx.group("apt", ctx.density), "metric"), _med(lp, "metric")
    gap = None if a is None or p is None else a - p
    name = lp["label"] if lp else "LoRA+Prune"
    points = NA if gap is None else f"{100 * gap:+.1f} points"
    return Reading(gap, f"APT {fmt_percent(a)} vs {name} {fmt_percent(p)}: {points}")


def _not_reached(label: str, stats: Mapping[str, Any] | None) -> str:
    if stats is None or stats["all_reached"]:
        return ""
    return f"{label} did not reach the bar in {stats['n'] - stats['reached']} of {stats['n']} seeds"


def _tta_vs_lora_prune(ctx: TargetContext) -> Reading:
    apt, lp = ctx.group("apt", ctx.density), ctx.lora_prune()
    if ctx.reference.get("threshold") is None or apt is None or lp is None:
        return Reading(None, "no bar (the reference has no test metric)" if apt and lp else "no result")
    t_apt, t_lp = apt["tta_seconds"], lp["tta_seconds"]
    ratio = _ratio(_median(t_apt), _median(t_lp))
    any_ratio = _ratio(_median(apt["tta_any_seconds"]), _median(lp["tta_any_seconds"]))
    text = (
        f"APT {fmt_sig(_median(t_apt), 'not reached')} s vs {lp['label']} "
        f"{fmt_sig(_median(t_lp), 'not reached')} s: {fmt_fixed(ratio, 2)}x "
        f"(any structure: {fmt_fixed(any_ratio, 2)}x)"
    )
    missed = "; ".join(m for m in (_not_reached("APT", t_apt), _not_reached(lp["label"], t_lp)) if m)
    return Reading(ratio, text, missed)


def _memory_vs_lora(ctx: TargetContext) -> Reading:
    apt, lora = ctx.group("apt", ctx.density), ctx.group("lora")
    if apt is None or lora is None:
        return Reading(None, "no result")
    a_by, l_by = apt["peak_rss_mb_by_allocator"], lora["peak_rss_mb_by_allocator"]
    shared = [s for s in ("default", "pinned") if a_by.get(s) and l_by.get(s)]
    if not shared:
        settings = ", ".join(f"APT {s}" for s in a_by) + "; " + ", ".join(f"LoRA {s}" for s in l_by)
        return Reading(None, f"no allocator setting with both APT and LoRA ({settings})")
    parts, ratios = [], []
    for s in shared:
        a, b = _median(a_by[s]), _median(l_by[s])
        ratios.append(a / b)
        parts.append(
            f"{ALLOCATOR_NAMES.get(s, s)}: APT {fmt_fixed(a, 0)} MB vs LoRA {fmt_fixed(b, 0)} MB "
            f"= {a / b:.2f}x"
        )
    return Reading(max(ratios), "; ".join(parts))


def _latency_vs_dense(ctx: TargetContext) -> Reading:
    apt = ctx.group("apt", ctx.density)
    ratio = _med(apt, "latency_ratio")
    return Reading(
        ratio, f"{fmt_fixed(ratio)}x the dense latency (FLOP ratio {fmt_fixed(_med(apt, 'flop_ratio'))})"
    )


def _latency_vs_flops(ctx: TargetContext) -> Reading:
    vs = _med(ctx.group("apt", ctx.density), "latency_vs_implied")
    return Reading(vs, f"{fmt_fixed(vs, 2)}x the latency implied by its FLOP ratio")


def _step_after_pruning(ctx: TargetContext) -> Reading:
    apt = ctx.group("apt", ctx.density)
    step = _med(apt, "step_ratio")
    return Reading(
        step,
        f"{fmt_fixed(step, 2)}x (median step {fmt_sig(_med(apt, 'step_after_pruning_s'))} s after "
        f"pruning vs {fmt_sig(_med(apt, 'step_start_s'))} s at the start)",
    )


_MEMORY_CLAIM = (
    "APT's peak training memory is at most {limit}x LoRA's under the same allocator setting (job peak RSS)"
)

#: The targets, in page order.
TARGETS: tuple[Target, ...] = (
    Target(
        "accuracy_vs_ft",
        "APT at density {density} keeps >= 98 % of FT's test accuracy",
        _accuracy_vs_ft,
        0.98,
        ">=",
    ),
    Target(
        "accuracy_vs_lora_prune",
        "APT beats the better LoRA+Prune by at least 1 test accuracy point",
        _accuracy_vs_lora_prune,
        0.01,
        ">=",
    ),
    Target(
        "tta_vs_lora_prune",
        "APT's time-to-accuracy is at most a third of the better LoRA+Prune's",
        _tta_vs_lora_prune,
        1 / 3,
        "<=",
    ),
    Target("memory_vs_lora", _MEMORY_CLAIM, _memory_vs_lora, 1.1, "<="),
    Target("memory_vs_lora", _MEMORY_CLAIM, _memory_vs_lora, 0.8, "<=", ("causal-lm",)),
    Target(
        "latency_vs_dense",
        "The exported APT model's latency is at most {limit}x the dense model's",
        _latency_vs_dense,
        0.5,
        "<=",
    ),
    Target(
        "latency_vs_flops",
        "... and within {limit}x of the FLOP-proportional limit",
        _latency_vs_flops,
        1.2,
        "<=",
    ),
    Target(
        "step_after_pruning",
        "A training step after the last pruning event costs at most {limit}x the first steps",
        _step_after_pruning,
        0.6,
        "<=",
    ),
)


def evaluate_targets(ctx: TargetContext, targets: Sequence[Target] = TARGETS) -> list[dict[str, Any]]:
    """Evaluate the targets that apply to the task of ``ctx.config``.

    Args:
        ctx: Config, groups and reference.
        targets: The table (default `TARGETS`).

    Returns:
        One dict per target (see `Target.evaluate`).
    """
    return [t.evaluate(ctx) for t in targets if ctx.config.task in t.tasks]


# ------------------------------------------------------------------------------------------- profile
def _timeline_peaks(result: Mapping[str, Any]) -> dict[str, float | None]:
    timeline = result.get("memory_timeline") or {}
    marks = timeline.get("marks") or {}
    seconds, rss = timeline.get("seconds") or [], timeline.get("rss_mb") or []

    def peak(lo: float | None, hi: float | None) -> float | None:
        values = [
            r
            for t, r in zip(seconds, rss, strict=False)
            if (lo is None or t >= lo) and (hi is None or t <= hi)
        ]
        return max(values) if values else None

    start, prune, end = marks.get("train_start"), marks.get("last_prune"), marks.get("train_end")
    return {
        "before_training": peak(None, start),
        "until_last_prune": peak(start, prune) if prune is not None else None,
        "after_last_prune": peak(prune, end) if prune is not None else None,
        "training": peak(start, end),
    }


def _headline(row: Mapping[str, Any], density: float) -> bool:
    """A headline job: FT, LoRA, or a method at the headline density, without an ablation variant."""
    return not row["variant"] and (row["method"] in ("ft", "lora") or math.isclose(row["density"], density))


def _profile(
    config: BenchConfig, rows: list[dict], results: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Facts that explain the APT figures, from the first headline seed."""
    first = config.seed_list()[0]
    picks = {r["label"]: r["id"] for r in rows if r["seed"] == first and _headline(r, config.target_density)}
    profile: dict[str, Any] = {"seed": first, "memory": {}, "time": {}}
    for label, job_id in picks.items():
        result = results.get(job_id) or {}
        profile["memory"][label] = {
            "resting_rss_mb": result.get("resting_rss_mb"),
            "peak_rss_mb": result.get("peak_rss_mb"),
            "allocator": _allocator(result),
            "phase_peak_rss_mb": result.get("phase_peak_rss_mb"),
            **{f"sampled_peak_{k}_mb": v for k, v in _timeline_peaks(result).items()},
        }
        steps = result.get("step_summary") or {}
        profile["time"][label] = {
            "train_seconds": result.get("train_seconds"),
            "phases": result.get("phases"),
            "teacher_seconds": result.get("teacher_seconds"),
            "step_start_s": steps.get("start"),
            "step_after_pruning_s": steps.get("after_pruning"),
            "step_after_distillation_s": steps.get("after_distillation"),
            "step_end_s": steps.get("end"),
            "last_prune_step": result.get("last_prune_step"),
            "total_steps": result.get("total_steps"),
        }
    return profile


# ------------------------------------------------------------------------------------------- summary
def reference_bar(
    config: BenchConfig, jobs: Sequence[Job], results: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The time-to-accuracy bar: ``tta_fraction`` x the reference method's median TEST metric.

    For a lower-is-better metric (perplexity) the bar is the reference divided by ``tta_fraction``.
    Only headline runs of the reference (no ablation variant) count; without test metrics the bar is
    ``None`` and time-to-accuracy is not measured.

    Returns:
        ``{"method", "metric", "split", "greater_is_better", "value", "fraction", "threshold", "seeds"}``.
    """
    done = [j for j in jobs if j.id in results]
    ref_jobs = [j for j in done if j.method == config.reference and not j.variant]
    metric = next((results[j.id].get("primary_metric") for j in done), "accuracy") or "accuracy"
    greater = next((results[j.id].get("greater_is_better") for j in done), True)
    greater = True if greater is None else bool(greater)
    values = [(_record_metrics(results[j.id], "test") or {}).get(metric) for j in ref_jobs]
    value = _median(spread(values))
    threshold = None
    if value is not None:
        threshold = value * config.tta_fraction if greater else value / config.tta_fraction
    return {
        "method": config.reference,
        "metric": metric,
        "split": "test",
        "greater_is_better": greater,
        "value": value,
        "fraction": config.tta_fraction,
        "threshold": threshold,
        "seeds": len([v for v in values if v is not None]),
    }


def summarize(
    config: BenchConfig,
    jobs: list[Job],
    results: dict[str, dict],
    latency: dict[str, Any],
    *,
    data: dict[str, Any] | None = None,
    failures: dict[str, str] | None = None,
    seconds: float | None = None,
    estimate: float | None = None,
    load_at_start: list[float] | None = None,
) -> dict[str, Any]:
    """Everything the result files show: per-job rows, groups with medians and spreads, targets.

    Args:
        config: The benchmark configuration.
        jobs: The plan (jobs without a result are left out).
        results: ``{job id: record}``.
        latency: The latency phase's output (``latency.json``).
        data: Facts about the data split, shown in the page.
        failures: ``{job id: error text}``.
        seconds: Wall time of the whole run.
        estimate: The time estimate made before it.
        load_at_start: Load average before the first job.

    Returns:
        The summary dict written to ``<name>.json``.
    """
    done = [j for j in jobs if j.id in results]
    reference = reference_bar(config, jobs, results)
    rows = [
        _job_row(j, results, latency, reference["threshold"], reference["greater_is_better"]) for j in done
    ]
    order: list[tuple[str, float]] = []
    for job in done:
        if (job.label, job.density) not in order:
            order.append((job.label, job.density))
    groups = {key: _group(rows, *key) for key in order}
    reference["curve_split"] = next((r["curve_split"] for r in rows), "dev")
    dense = latency.get("dense") or {}
    return {
        "name": config.results_name(),
        "suite": config.suite,
        "quick": config.quick,
        "command": config_command(config),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": {**_environment(), "load_average_at_start": load_at_start},
        "config": config.to_dict(),
        "data": data or {},
        "reference": reference,
        "dense": {
            "params": dense.get("params"),
            "latency_ms": (dense.get("latency") or {}).get("median_ms"),
            "throughput": (dense.get("latency") or {}).get("throughput"),
            "flops": dense.get("flops"),
        },
        "latency_settings": latency.get("settings"),
        "groups": list(groups.values()),
        "jobs": rows,
        "targets": evaluate_targets(TargetContext(config, groups, reference)),
        "profile": _profile(config, rows, results),
        "failures": failures or {},
        "seconds": seconds,
        "estimate_seconds": estimate,
    }


# ------------------------------------------------------------------------------------------ markdown
_TTA_WHY = (
    "Why this reading: a user deploys the pruned model, so the clock stops only when a model with the "
    "structure that will be exported is as good as the bar. Counting an evaluation of a model that is "
    "still to be pruned (APT before its last pruning event, LoRA+Prune's LoRA phase) would credit "
    "accuracy the deployed model does not have. The clock starts at the method's first training step "
    "and includes every phase (LoRA+Prune: its LoRA run, calibration and pruning), evaluation excluded. "
    "A seed that never reaches the bar counts as not reached (infinitely slow), and a target that needs "
    "that method's time-to-accuracy is then missed."
)


def _metric_name(summary: Mapping[str, Any]) -> str:
    return summary["reference"]["metric"]


def _tta_cell(stats: Mapping[str, Any] | None) -> str:
    if not stats:
        return DASH
    n = stats["n"]
    if stats["median"] is None:
        return f"not reached ({stats['reached']}/{n} reached)"
    text = fmt_spread({**stats, "n": stats["reached"]}, None)
    return text if stats["all_reached"] else f"{text} ({stats['reached']}/{n} reached)"


def _memory_cell(group: Mapping[str, Any], setting: str) -> str:
    return fmt_spread((group.get("peak_rss_mb_by_allocator") or {}).get(setting), 0)


def _group_table(summary: Mapping[str, Any], groups: Sequence[Mapping[str, Any]]) -> list[str]:
    metric = _metric_name(summary)
    classification = metric == "accuracy"
    scale, digits = (100.0, 1) if classification else (1.0, 2)
    unit = " (%)" if classification else ""
    settings = _allocator_settings(groups)
    head = ["method", "density", "seeds", f"test {metric}{unit}", f"dev {metric}{unit}"]
    if classification:
        head.append("test macro-F1 (%)")
    head += [
        "TTA (s)",
        "train time (s)",
        "peak RSS (MB)"
        + (", " + " / ".join(ALLOCATOR_NAMES.get(s, s) for s in settings) if len(settings) > 1 else ""),
        "step start → after pruning (s)",
        "exported params",
        "latency (ms)",
        "throughput (seq/s)",
        "latency / dense",
        "FLOP ratio",
        "FLOP-implied (ms)",
    ]
    table = []
    for g in groups:
        row = [
            g["label"],
            f"{g['density']:g}",
            str(len(set(g["seeds"]))),
            fmt_spread(g["metric"], digits, scale),
            fmt_spread(g["dev_metric"], digits, scale),
        ]
        if classification:
            row.append(fmt_spread(g["macro_f1"], 1, 100.0))
        start, after = _median(g["step_start_s"]), _median(g["step_after_pruning_s"])
        steps = DASH if start is None else fmt_sig(start) + (f" → {fmt_sig(after)}" if after else "")
        params = _median(g["params_after"])
        row += [
            _tta_cell(g["tta_seconds"]),
            fmt_spread(g["train_seconds"], None),
            " / ".join(_memory_cell(g, s) for s in settings) if settings else DASH,
            steps,
            DASH if params is None else f"{params / 1e6:.2f} M ({100 * (g['params_ratio'] or 0):.0f} %)",
            fmt_spread(g["latency_ms"], None),
            fmt_spread(g["throughput"], None),
            fmt_spread(g["latency_ratio"], 3),
            fmt_spread(g["flop_ratio"], 3),
            fmt_spread(g["implied_ms"], None),
        ]
        table.append(row)
    return md_table(head, table, "llr" + "r" * (len(head) - 3))


def _tta_lines(summary: Mapping[str, Any], groups: Sequence[Mapping[str, Any]]) -> list[str]:
    ref = summary["reference"]
    if ref["threshold"] is None:
        return [
            f"No bar: the reference ({ref['method']}) has no {ref['split']} {ref['metric']}, so "
            "time-to-accuracy is not measured.",
            "",
        ]
    bar = f"{'>=' if ref['greater_is_better'] else '<='} {fmt_fixed(ref['threshold'], 4)}"
    lines = [
        f"Bar: {ref['fraction']:g} x {ref['method'].upper()}'s median {ref['split']} {ref['metric']} "
        f"({fmt_fixed(ref['value'], 4)} over {ref['seeds']} runs), i.e. {ref['metric']} {bar} at an "
        f"evaluation on the {ref.get('curve_split', 'dev')} split during training. Medians over seeds "
        "[min–max of the seeds that reached it].",
        "",
    ]
    phase_names: list[str] = []
    for g in groups:
        phase_names += [k for k in g.get("phases") or {} if k not in phase_names]
    head = ["method", "density", "TTA, final structure (s)", "TTA, any structure (s)", "train time (s)"]
    head += [f"{k} (s)" for k in phase_names]
    table = [
        [
            g["label"],
            f"{g['density']:g}",
            _tta_cell(g["tta_seconds"]),
            _tta_cell(g["tta_any_seconds"]),
            fmt_spread(g["train_seconds"], None),
            *[fmt_spread((g.get("phases") or {}).get(k), None) for k in phase_names],
        ]
        for g in groups
    ]
    return [*lines, *md_table(head, table, "llrrr" + "r" * len(phase_names)), "", _TTA_WHY, ""]


def _allocator_name(setting: str) -> str:
    return ALLOCATOR_NAMES.get(setting, setting)


def _allocator_settings(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """The allocator settings with a peak in any group: the defaults first, then pinned."""
    found = {s for g in groups for s, stats in (g.get("peak_rss_mb_by_allocator") or {}).items() if stats}
    return [s for s in ("default", "pinned") if s in found] + sorted(found - {"default", "pinned"})


def _memory_lines(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    settings = _allocator_settings(groups)
    if not settings:
        return ["No peak memory was measured.", ""]
    head = ["method", "density", *[f"peak RSS (MB), {ALLOCATOR_NAMES.get(s, s)}" for s in settings]]
    table = [[g["label"], f"{g['density']:g}", *[_memory_cell(g, s) for s in settings]] for g in groups]
    note = (
        "Peak RSS: the job process's own peak resident memory (Linux VmHWM, reset after the imports at "
        "the start of every job, so nothing is inherited from the parent process); LoRA+Prune counts "
        "the larger of its LoRA job and its prune-and-retrain job. Targets compare methods only under "
        "the same allocator setting."
    )
    if len(settings) == 1:
        note += f" Every job here ran with {ALLOCATOR_NAMES.get(settings[0], settings[0])}."
    return [*md_table(head, table, "ll" + "r" * len(settings)), "", note, ""]


def _job_table(summary: Mapping[str, Any]) -> list[str]:
    metric = _metric_name(summary)
    head = [
        "job",
        "seed",
        "density",
        f"test {metric}",
        f"dev {metric}",
        "TTA (s)",
        "TTA any (s)",
        "train (s)",
        "allocator",
        "peak RSS (MB)",
        "latency (ms)",
        "params",
    ]
    table = [
        [
            r["id"],
            str(r["seed"]),
            f"{r['density']:g}",
            fmt_fixed(r["metric"], 4),
            fmt_fixed(r["dev_metric"], 4),
            fmt_sig(r["tta_seconds"], "not reached" if summary["reference"]["threshold"] is not None else NA),
            fmt_sig(
                r["tta_any_seconds"], "not reached" if summary["reference"]["threshold"] is not None else NA
            ),
            fmt_sig(r["train_seconds"]),
            r["allocator"],
            fmt_fixed(r["peak_rss_mb"], 0),
            fmt_sig(r["latency_ms"]),
            f"{r['params_after']:,}" if r["params_after"] else DASH,
        ]
        for r in summary["jobs"]
    ]
    return md_table(head, table, "lrr" + "r" * (len(head) - 3))


def _profile_lines(summary: Mapping[str, Any]) -> list[str]:
    profile = summary["profile"]
    lines = [f"From the headline runs with seed {profile['seed']}.", ""]
    for label, m in profile["memory"].items():
        t = profile["time"].get(label, {})
        parts = [
            f"resting RSS {fmt_fixed(m.get('resting_rss_mb'), 0)} MB",
            f"job peak {fmt_fixed(m.get('peak_rss_mb'), 0)} MB "
            f"({ALLOCATOR_NAMES.get(m.get('allocator'), m.get('allocator'))})",
        ]
        if m.get("sampled_peak_until_last_prune_mb") is not None:
            parts.append(
                "sampled peak until the last pruning event "
                f"{fmt_fixed(m['sampled_peak_until_last_prune_mb'], 0)} MB, "
                f"after it {fmt_fixed(m.get('sampled_peak_after_last_prune_mb'), 0)} MB"
            )
        if m.get("phase_peak_rss_mb"):
            parts.append(
                "peak per phase "
                + ", ".join(f"{k} {fmt_fixed(v, 0)} MB" for k, v in m["phase_peak_rss_mb"].items())
            )
        if t.get("phases"):
            parts.append("time per phase " + ", ".join(f"{k} {fmt_sig(v)} s" for k, v in t["phases"].items()))
        if t.get("teacher_seconds") is not None:
            parts.append(f"teacher forwards {fmt_sig(t['teacher_seconds'])} s")
        if t.get("step_start_s") is not None:
            text = f"step time {fmt_sig(t['step_start_s'])} s at the start"
            if t.get("step_after_pruning_s") is not None:
                text += f", {fmt_sig(t['step_after_pruning_s'])} s after the last pruning event"
            if t.get("step_after_distillation_s") is not None:
                text += f", {fmt_sig(t['step_after_distillation_s'])} s once distillation ended"
            parts.append(text)
        lines.append(f"- **{label}**: " + "; ".join(parts) + ".")
    return lines


_LR_FIELDS = (("FT", "ft_lr"), ("LoRA and LoRA+Prune retraining", "lora_lr"), ("APT", "apt_lr"))


def _setup_lines(summary: Mapping[str, Any]) -> list[str]:
    cfg, data, env = summary["config"], summary["data"], summary["environment"]
    length = f"{cfg['max_steps']} steps" if cfg["max_steps"] else f"{cfg['epochs']:g} epoch(s)"
    settings = summary.get("latency_settings") or {}
    first_seed = cfg["seeds"].split(",")[0]
    lat_batch = settings.get("batch_size", cfg["latency_batch"])
    lat_len = settings.get("seq_len", cfg["latency_length"])
    lat_warm = settings.get("warmup", cfg["latency_warmup"])
    lat_rep = settings.get("repeats", cfg["latency_repeats"])
    counts = ", ".join(
        f"{data[k]} {label}"
        for k, label in (("num_train", "training"), ("num_eval", "dev"), ("num_test", "test"))
        if data.get(k) is not None
    )
    return [
        f"- Model `{cfg['model']}`, task {cfg['task']}; data: {data.get('source', '?')}; "
        f"{counts or '?'} examples.",
        f"- Every method: {cfg['max_length']} tokens, batch {cfg['batch_size']}, {length}, "
        f"{cfg['evaluations']} cadence evaluations plus a final one; headline seeds {cfg['seeds']}; "
        f"ablations and sweep with seed {first_seed}. Headline figures are medians over seeds on the test "
        "split; dev is for choices only.",
        "- Learning rates: "
        + ", ".join(f"{name} {cfg[key]:g}" for name, key in _LR_FIELDS if cfg.get(key) is not None)
        + ".",
        "- Time-to-accuracy: see the section above; per-run values in the last table.",
        "- Peak RSS: see the memory section.",
        f"- Latency: exported merged models, batch {lat_batch} x {lat_len} tokens, {lat_warm} untimed "
        f"warm-up forwards per model, then the median of {lat_rep} timed forwards, all models interleaved "
        f"round by round in one process ({settings.get('threads', '?')} threads), torch.inference_mode. "
        "The FLOP ratio counts matrix-multiply FLOPs from the layer shapes; FLOP-implied latency = dense "
        "latency x FLOP ratio.",
        f"- Machine: {env['cpu_count']} CPUs, torch {env['torch']}, transformers {env['transformers']}, "
        f"peft {env['peft']}, Python {env['python']}; load average at the end "
        f"{env.get('load_average_at_end')}.",
    ]


def _markdown(summary: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    cfg = summary["config"]
    d0 = cfg["target_density"]
    minutes = fmt_fixed((summary["seconds"] or 0) / 60, 1)
    estimated = fmt_fixed((summary["estimate_seconds"] or 0) / 60, 1)
    lines = [
        f"# Benchmark `{summary['name']}`",
        "",
        f"Written by `{summary['command']}` on {summary['created']}; whole run {minutes} min (estimated "
        f"{estimated} min). Every number below comes from this run; `{summary['name']}.json` holds "
        "all of them, per job.",
        "",
    ]
    env = summary["environment"]
    # only the load before the first job says whether others were busy
    start_load = (env.get("load_average_at_start") or [None])[0]
    if start_load is not None and env.get("cpu_count") and start_load > 0.5 * env["cpu_count"]:
        lines += [
            f"**The machine was busy** (1-minute load average {start_load:.1f} on {env['cpu_count']} CPUs "
            "before the first job): times and memory of concurrent jobs are mixed into these figures; "
            "rerun on an otherwise idle machine before quoting them.",
            "",
        ]
    if summary["quick"]:
        lines += [
            "**Quick mode**: a small subset, short runs and one seed, to check that everything works. "
            "These numbers say nothing about the method; the full suite does.",
            "",
        ]
    lines += ["## Targets", ""]
    for t in summary["targets"]:
        status = {True: "MET", False: "MISSED", None: "NOT EVALUATED"}[t["met"]]
        lines.append(f"- **{status}** — {t['claim']}: {t['measured']}.")
    if summary["failures"]:
        lines += ["", "## Failed jobs", ""]
        for job_id, error in summary["failures"].items():
            lines += [f"- `{job_id}`:", "", "```", error.strip()[-2000:], "```"]
    groups = summary["groups"]
    headline = [g for g in groups if _headline(g, d0)]
    ablations = [g for g in groups if g["variant"]]
    sweep = sorted(
        (g for g in groups if not g["variant"] and (g["method"] == "apt" or is_lora_prune(g["method"]))),
        key=lambda g: (g["label"], g["density"]),
    )
    dense = summary["dense"]
    lines += [
        "",
        f"## Headline: density {d0:g}",
        "",
        "Medians over seeds, [min–max] when they differ.",
        "",
        *_group_table(summary, headline),
        "",
        f"Dense model: {fmt_fixed((dense['params'] or 0) / 1e6, 2)} M parameters, "
        f"{fmt_fixed(dense['latency_ms'], 1)} ms per batch, {fmt_fixed(dense['throughput'], 1)} sequences/s.",
        "",
        "## Time to accuracy",
        "",
        *_tta_lines(summary, headline),
    ]
    if "curves" in plots:
        lines += [f"![metric over training time]({plots['curves']})", ""]
    if "tta" in plots:
        lines += [f"![time to accuracy]({plots['tta']})", ""]
    lines += ["## Peak memory by allocator setting", "", *_memory_lines(headline)]
    if len({g["density"] for g in sweep}) > 1:
        lines += ["## Density sweep", "", *_group_table(summary, sweep), ""]
        if "accuracy_vs_latency" in plots:
            lines += [f"![accuracy vs latency]({plots['accuracy_vs_latency']})", ""]
    if ablations:
        apt = [g for g in headline if g["method"] == "apt"]
        lines += [f"## APT ablations (density {d0:g})", "", *_group_table(summary, apt + ablations), ""]
    lines += ["## Profile", "", *_profile_lines(summary)]
    if "memory" in plots:
        lines += ["", f"![RSS over time]({plots['memory']})"]
    lines += ["", "## Setup", "", *_setup_lines(summary), "", "## Every run", "", *_job_table(summary), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- plots
_COLORS = {"FT": "#444444", "LoRA": "#1f77b4", "LoRA+Prune": "#ff7f0e", "APT": "#2ca02c"}


def _color(label: str, method: str = "") -> str:
    if label in _COLORS:
        return _COLORS[label]
    if is_lora_prune(method) or label.startswith("LoRA+Prune"):
        return "#d62728" if "tp" in method.split("-") or "Torch" in label else "#ff7f0e"
    return "#2ca02c" if method == "apt" else "#888888"


def _plot_accuracy_vs_latency(summary: dict, results: dict) -> Any:
    sweep = [
        g
        for g in summary["groups"]
        if not g["variant"] and (g["method"] == "apt" or is_lora_prune(g["method"]))
    ]
    if len({g["density"] for g in sweep}) < 2:
        return None
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    scale = 100.0 if _metric_name(summary) == "accuracy" else 1.0
    for label in dict.fromkeys(g["label"] for g in sweep):
        points = sorted(
            (_median(g["latency_ms"]), _median(g["metric"]), g["density"])
            for g in sweep
            if g["label"] == label and g["latency_ms"] and g["metric"]
        )
        if not points:
            continue
        method = next(g["method"] for g in sweep if g["label"] == label)
        xs, ys = [p[0] for p in points], [p[1] * scale for p in points]
        ax.plot(xs, ys, marker="o", color=_color(label, method), label=label)
        for x, y, d in zip(xs, ys, [p[2] for p in points], strict=True):
            ax.annotate(f"{d:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for g in summary["groups"]:
        if g["method"] in ("ft", "lora") and g["metric"] and summary["dense"]["latency_ms"]:
            ax.scatter(
                [summary["dense"]["latency_ms"]],
                [_median(g["metric"]) * scale],
                marker="s",
                color=_color(g["label"], g["method"]),
                label=f"{g['label']} (dense)",
            )
    ax.set_xlabel(
        f"inference latency of the exported model (ms per batch of {summary['config']['latency_batch']})"
    )
    ax.set_ylabel(f"test {_metric_name(summary)}" + (" (%)" if scale == 100 else ""))
    ax.set_title("Density sweep: accuracy vs latency (labels: density)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def _plot_tta(summary: dict, results: dict) -> Any:
    d0 = summary["config"]["target_density"]
    groups = [
        g
        for g in summary["groups"]
        if g["variant"] or g["method"] in ("ft", "lora") or math.isclose(g["density"], d0)
    ]
    if not groups or summary["reference"]["threshold"] is None:
        return None
    fig = new_figure(6.4, 0.5 * len(groups) + 1.4)
    ax = fig.add_subplot()
    for i, g in enumerate(groups):
        color = _color(g["label"], g["method"])
        s = g["tta_seconds"]
        if s and s["median"] is not None:
            ax.barh(i, s["median"], color=color, alpha=0.85)
            ax.errorbar(
                s["median"],
                i,
                xerr=[[s["median"] - s["min"]], [max(s["max"], s["median"]) - s["median"]]],
                color="black",
                capsize=3,
            )
        else:
            total = _median(g["train_seconds"]) or 0
            ax.barh(i, total, color="white", edgecolor=color, hatch="//")
            ax.text(total, i, " not reached", va="center", fontsize=8)
    ax.set_yticks(range(len(groups)), [f"{g['label']} ({g['density']:g})" for g in groups])
    ax.invert_yaxis()
    ref = summary["reference"]
    ax.set_xlabel(
        f"training seconds until {ref.get('curve_split', 'dev')} {ref['metric']} reaches "
        f"{fmt_fixed(ref['threshold'], 3)} (final structure)"
    )
    ax.set_title("Time to accuracy (median, min–max over seeds)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _headline_results(summary: dict, results: dict) -> list[tuple[str, str, dict]]:
    d0 = summary["config"]["target_density"]
    first = int(summary["config"]["seeds"].split(",")[0])
    picked = []
    for row in summary["jobs"]:
        if (
            row["seed"] == first
            and not row["variant"]
            and (row["method"] in ("ft", "lora") or math.isclose(row["density"], d0))
        ):
            picked.append((row["label"], row["method"], results[row["id"]]))
    return picked


def _plot_curves(summary: dict, results: dict) -> Any:
    picked = _headline_results(summary, results)
    if not picked:
        return None
    metric = _metric_name(summary)
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    split = summary["reference"].get("curve_split", "dev")
    for label, method, result in picked:
        curve = [
            p for p in _flat_curve(result.get("curve") or [], split) if p["metrics"].get(metric) is not None
        ]
        final = [p for p in curve if p.get("final_structure", True)]
        earlier = [p for p in curve if not p.get("final_structure", True)]
        if earlier:  # before the last pruning (LoRA+Prune: its LoRA phase, i.e. the LoRA curve)
            xs, ys = [p["train_seconds"] for p in earlier], [p["metrics"][metric] for p in earlier]
            ax.plot(xs, ys, linestyle="--", linewidth=1, color=_color(label, method), alpha=0.7)
            if final:
                ax.plot(
                    [xs[-1], final[0]["train_seconds"]],
                    [ys[-1], final[0]["metrics"][metric]],
                    linestyle="--",
                    linewidth=1,
                    color=_color(label, method),
                    alpha=0.7,
                )
        xs, ys = [p["train_seconds"] for p in final], [p["metrics"][metric] for p in final]
        ax.plot(xs, ys, marker=".", color=_color(label, method), label=label)
    if summary["reference"]["threshold"] is not None:
        ax.axhline(
            summary["reference"]["threshold"], color="0.4", linestyle="--", linewidth=1, label="TTA bar"
        )
    ax.set_xlabel("training seconds (evaluation excluded); dashed: before the final structure")
    ax.set_ylabel(f"{split} {metric}")
    ax.set_title(
        f"{split.capitalize()} {metric} over training time (seed {summary['config']['seeds'].split(',')[0]})"
    )
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def _plot_memory(summary: dict, results: dict) -> Any:
    picked = [
        (label, method, r)
        for label, method, r in _headline_results(summary, results)
        if (r.get("memory_timeline") or {}).get("seconds")
    ]
    if not picked:
        return None
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    for label, method, result in picked:
        timeline = result["memory_timeline"]
        marks = timeline.get("marks") or {}
        start = marks.get("calibration_start", marks.get("train_start", 0.0))
        end = marks.get("train_end", math.inf)
        points = [
            (t - start, r) for t, r in zip(timeline["seconds"], timeline["rss_mb"], strict=False) if t <= end
        ]
        ax.plot([p[0] for p in points], [p[1] for p in points], color=_color(label, method), label=label)
        if marks.get("last_prune") is not None:
            ax.axvline(marks["last_prune"] - start, color=_color(label, method), linestyle=":", linewidth=1)
    ax.set_xlabel("seconds since the start of training (dotted: APT's last pruning event)")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title("Process RSS during training (LoRA+Prune: its prune-and-retrain process)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


_PLOTS: dict[str, Callable[[dict, dict], Any]] = {
    "accuracy_vs_latency": _plot_accuracy_vs_latency,
    "tta": _plot_tta,
    "curves": _plot_curves,
    "memory": _plot_memory,
}


def write_results(
    config: BenchConfig, summary: dict, results: dict[str, dict], latency: dict[str, Any]
) -> dict[str, Path]:
    """Write ``<name>.json`` (summary, per-job results, latency), ``<name>.md`` and ``<name>/*.png``.

    Every file is written atomically.

    Args:
        config: The benchmark configuration (results folder and name).
        summary: The output of `summarize`.
        results: ``{job id: record}``.
        latency: The latency phase's output.

    Returns:
        ``{"json": path, "md": path, <plot>: path}``.
    """
    out = Path(config.results_dir)
    name = config.results_name()
    files: dict[str, Path] = {}
    links: dict[str, str] = {}
    for plot, draw in _PLOTS.items():
        fig = draw(summary, results)
        if fig is None:
            continue
        files[plot] = save_png(fig, out / name / f"{plot}.png")
        links[plot] = f"{name}/{plot}.png"
    payload = {**summary, "results": results, "latency": latency}
    files["json"] = write_json_atomic(out / f"{name}.json", payload, default=str)
    files["md"] = write_text_atomic(out / f"{name}.md", _markdown(summary, links))
    return files
