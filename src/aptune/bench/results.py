"""From per-job results to the benchmark's figures and result files.

`summarize` turns the job records into per-job rows and per-method groups (medians over seeds, never
the best seed, with their min–max spread), computes time-to-accuracy against the reference method's
bar, and evaluates the table of targets (`aptune.bench.targets.TARGETS`); `write_results` writes
``<name>.json``, ``<name>.md`` (`aptune.bench.page`) and ``<name>/<plot>.png``
(`aptune.bench.plots`), atomically.

The headline figures are TEST metrics; a record without them shows "n/a" and leaves the targets that
need them not evaluated (see `aptune.bench.records`).
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aptune.atomic import write_json_atomic, write_text_atomic
from aptune.bench.config import BenchConfig, config_command
from aptune.bench.measure import time_to_accuracy
from aptune.bench.page import markdown
from aptune.bench.plan import Job
from aptune.bench.plots import PLOTS
from aptune.bench.records import (
    ALLOCATOR_NAMES,
    allocator_of,
    curve_split,
    flat_curve,
    is_headline,
    is_lora_prune,
    main_allocator,
    median_of,
    record_metrics,
    split_metrics,
    spread,
    tta_spread,
)
from aptune.bench.targets import TARGETS, Reading, Target, TargetContext, evaluate_targets
from aptune.report.figures import save_png

__all__ = [
    "ALLOCATOR_NAMES",
    "TARGETS",
    "Reading",
    "Target",
    "TargetContext",
    "evaluate_targets",
    "is_lora_prune",
    "reference_bar",
    "split_metrics",
    "spread",
    "summarize",
    "tta_spread",
    "write_results",
]


def _job_peak(job: Job, results: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The job's peak RSS; a LoRA+Prune job also counts its LoRA phase (a job of its own).

    The LoRA phase is the first dependency (``job.depends[0]``); the second, when present, is the APT
    run whose adapter count the retraining matches, which is not part of LoRA+Prune's work.
    """
    own = results[job.id].get("peak_rss_mb")
    if not is_lora_prune(job.method) or not job.depends:
        return own
    phase1 = job.depends[0]
    phases = [own] + ([results[phase1].get("peak_rss_mb")] if phase1 in results else [])
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
    onnx_latency: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    result = results[job.id]
    metric = result.get("primary_metric", "accuracy")
    test = record_metrics(result, "test") or {}
    dev = record_metrics(result, "dev") or {}
    timing = (latency.get("jobs") or {}).get(job.id) or {}
    steps = result.get("step_summary") or {}
    curve = result.get("curve") or []
    split = curve_split(curve)
    flat = flat_curve(curve, split)
    tta = tta_any = None
    if threshold is not None:
        tta = time_to_accuracy(flat, threshold, metric, greater_is_better=greater)
        tta_any = time_to_accuracy(
            flat, threshold, metric, greater_is_better=greater, final_structure_only=False
        )
    lat = timing.get("latency") or {}
    onnx = ((onnx_latency or {}).get("jobs") or {}).get(job.id) or {}
    epoch1 = result.get("epoch1_test") or {}
    return {
        "id": job.id,
        "label": job.label,
        "method": job.method,
        "variant": job.variant,
        "seed": job.seed,
        "density": job.density,
        "metric": test.get(metric),
        "dev_metric": dev.get(metric),
        "heldout_metric": result.get("heldout_perplexity"),
        "heldout_kinds": result.get("heldout_kinds"),
        "macro_f1": test.get("macro_f1"),
        "epoch1_metric": (epoch1.get("metrics") or {}).get(metric),
        "epoch1_final_structure": epoch1.get("final_structure"),
        "final_metrics": {"dev": dev, "test": test},
        "curve_split": split,
        "tta_seconds": tta,
        "tta_any_seconds": tta_any,
        "train_seconds": result.get("train_seconds"),
        "phases": result.get("phases"),
        "allocator": allocator_of(result),
        "peak_rss_mb": _job_peak(job, results),
        "peak_rss_reset": result.get("peak_rss_reset"),
        "resumed_from_steps": [int(r["from_step"]) for r in result.get("resumed") or []],
        "same_run_as": result.get("same_run_as") or "",
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
        "onnx_latency_ms": (onnx.get("latency") or {}).get("median_ms"),
        "onnx_latency_ratio": onnx.get("latency_ratio"),
        "teacher_seconds": result.get("teacher_seconds"),
        "total_steps": result.get("total_steps"),
        "wall_seconds": result.get("wall_seconds"),
        "structure": result.get("structure") or result.get("pruning"),
        "stack_params": result.get("stack_params"),
        "domain_perplexity": _domain_perplexity(result, metric, dev, test),
    }


def _domain_perplexity(
    result: Mapping[str, Any], metric: str, dev: Mapping[str, Any], test: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Causal LM: perplexity after pruning (dev, held-out; before tuning for dense methods) and after
    tuning (dev, test, held-out), or None for other tasks."""
    recorded = result.get("domain_perplexity")
    if metric != "perplexity" or recorded is None:
        return None
    return {
        "after_pruning": recorded.get("after_pruning"),
        "after_pruning_density": _density_after_pruning(result),
        "after_tuning": {
            "dev": dev.get(metric),
            "test": test.get(metric),
            "heldout": result.get("heldout_perplexity"),
        },
    }


def _density_after_pruning(result: Mapping[str, Any]) -> float:
    """The backbone density at which the perplexity *after pruning* was measured.

    APT measures it after its one-shot pruning before tuning, which stops at the schedule's initial
    density (above the target when the rest is pruned during tuning); a one-shot baseline measures it
    at its final density; a dense method at 1.
    """
    initial = (result.get("schedule") or {}).get("initial_density")
    if isinstance(initial, (int, float)):
        return float(initial)
    density = result.get("density")
    return float(density) if isinstance(density, (int, float)) else 1.0


_GROUP_FIELDS = (
    "metric",
    "dev_metric",
    "heldout_metric",
    "macro_f1",
    "epoch1_metric",
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
    "onnx_latency_ms",
    "onnx_latency_ratio",
    "teacher_seconds",
)


def _group(rows: list[dict], label: str, density: float) -> dict[str, Any]:
    """Medians and spreads over the seeds of one (label, density)."""
    runs = [r for r in rows if r["label"] == label and math.isclose(r["density"], density)]
    allocator = main_allocator([(r["allocator"], r["seed"]) for r in runs])
    # medians over the seeds of one allocator setting; the repeats under the other setting count only
    # for the memory comparison (peak_rss_mb_by_allocator)
    members = [r for r in runs if r["allocator"] == allocator]
    group: dict[str, Any] = {
        "label": label,
        "method": members[0]["method"],
        "variant": members[0]["variant"],
        "density": density,
        "allocator": allocator,
        "seeds": [r["seed"] for r in members],
        "jobs": [r["id"] for r in members],
        "other_allocator_jobs": [r["id"] for r in runs if r["allocator"] != allocator],
    }
    for name in _GROUP_FIELDS:
        group[name] = spread([r[name] for r in members])
    group["tta_seconds"] = tta_spread([r["tta_seconds"] for r in members])
    group["tta_any_seconds"] = tta_spread([r["tta_any_seconds"] for r in members])
    measured = [r for r in members if r["epoch1_metric"] is not None]
    pruning = sum(1 for r in measured if r["epoch1_final_structure"] is False)
    group["epoch1_note"] = (
        "final" if not pruning else f"still to be pruned in {pruning} of {len(measured)} seeds"
    )
    group["reached"] = group["tta_seconds"]["reached"] if group["tta_seconds"] else 0
    settings = sorted({r["allocator"] for r in runs})
    group["peak_rss_mb_by_allocator"] = {
        s: spread([r["peak_rss_mb"] for r in runs if r["allocator"] == s]) for s in settings
    }
    phase_names: list[str] = []
    for r in members:
        phase_names += [k for k in (r["phases"] or {}) if k not in phase_names]
    group["phases"] = {k: spread([(r["phases"] or {}).get(k) for r in members]) for k in phase_names}
    params_before = next((r["params_before"] for r in members if r["params_before"]), None)
    params_after = median_of(group["params_after"])
    group["params_before"] = params_before
    group["params_ratio"] = params_after / params_before if params_after and params_before else None
    return group


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


def _profile(
    config: BenchConfig, rows: list[dict], results: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Facts that explain the APT figures, from the first headline seed."""
    first = config.seed_list()[0]
    density = config.target_density
    picks: dict[str, str] = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        runs = [r for r in rows if r["label"] == label and r["seed"] == first and is_headline(r, density)]
        allocator = main_allocator([(r["allocator"], r["seed"]) for r in rows if r["label"] == label])
        # the run of the setting the medians use (the repeat under the other setting is shown apart)
        pick = next((r for r in runs if r["allocator"] == allocator), runs[0] if runs else None)
        if pick is not None:
            picks[label] = pick["id"]
    profile: dict[str, Any] = {"seed": first, "memory": {}, "time": {}}
    for label, job_id in picks.items():
        result = results.get(job_id) or {}
        profile["memory"][label] = {
            "resting_rss_mb": result.get("resting_rss_mb"),
            "peak_rss_mb": result.get("peak_rss_mb"),
            "allocator": allocator_of(result),
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
    allocator = main_allocator([(allocator_of(results[j.id]), j.seed) for j in ref_jobs])
    # the seeds of one allocator setting (a seed repeated under the other setting counts once)
    ref_jobs = [j for j in ref_jobs if allocator_of(results[j.id]) == allocator]
    metric = next((results[j.id].get("primary_metric") for j in done), "accuracy") or "accuracy"
    greater = next((results[j.id].get("greater_is_better") for j in done), True)
    greater = True if greater is None else bool(greater)
    values = [(record_metrics(results[j.id], "test") or {}).get(metric) for j in ref_jobs]
    value = median_of(spread(values))
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


def _onnx_summary(onnx_latency: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ONNX Runtime stage for the summary: why it was skipped, settings, dense median, every timing."""
    onnx_latency = onnx_latency or {}
    dense = (onnx_latency.get("dense") or {}).get("latency") or {}
    return {
        "skipped": onnx_latency.get("skipped"),
        "settings": onnx_latency.get("settings"),
        "dense_ms": dense.get("median_ms"),
        "dense_throughput": dense.get("throughput"),
        "dense": onnx_latency.get("dense"),
        "jobs": onnx_latency.get("jobs"),
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
    onnx_latency: dict[str, Any] | None = None,
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
        onnx_latency: The ONNX Runtime stage's output (``onnx_latency.json``), ``{"skipped": reason}``
            when the stage did not run, or ``None``/``{}`` when it has no figures.

    Returns:
        The summary dict written to ``<name>.json``.
    """
    done = [j for j in jobs if j.id in results]
    reference = reference_bar(config, jobs, results)
    rows = [
        _job_row(j, results, latency, reference["threshold"], reference["greater_is_better"], onnx_latency)
        for j in done
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
        "latency_imported_from": latency.get("imported_from"),
        "onnx_latency": _onnx_summary(onnx_latency),
        "groups": list(groups.values()),
        "jobs": rows,
        "targets": evaluate_targets(TargetContext(config, groups, reference)),
        "profile": _profile(config, rows, results),
        "failures": failures or {},
        "seconds": seconds,
        "estimate_seconds": estimate,
    }


def write_results(
    config: BenchConfig,
    summary: dict,
    results: dict[str, dict],
    latency: dict[str, Any],
    grid_records: dict[str, dict] | None = None,
) -> dict[str, Path]:
    """Write ``<name>.json`` (summary, per-job results, latency), ``<name>.md`` and ``<name>/*.png``.

    Every file is written atomically. The JSON keeps the full record of every finished job, grid
    runs included, so that ``aptune bench --import-results <name>.json`` can resume the benchmark
    in a fresh work folder.

    Args:
        config: The benchmark configuration (results folder and name).
        summary: The output of `summarize`.
        results: ``{job id: record}`` of the headline jobs.
        latency: The latency phase's output.
        grid_records: ``{job id: record}`` of the finished learning-rate grid runs.

    Returns:
        ``{"json": path, "md": path, <plot>: path}``.
    """
    out = Path(config.results_dir)
    name = config.results_name()
    files: dict[str, Path] = {}
    links: dict[str, str] = {}
    for plot, draw in PLOTS.items():
        fig = draw(summary, results)
        if fig is None:
            continue
        files[plot] = save_png(fig, out / name / f"{plot}.png")
        links[plot] = f"{name}/{plot}.png"
    payload = {**summary, "results": results, "latency": latency, "grid_records": grid_records or {}}
    files["json"] = write_json_atomic(out / f"{name}.json", payload, default=str)
    files["md"] = write_text_atomic(out / f"{name}.md", markdown(summary, links))
    return files
