"""From per-job results to the benchmark's figures, the issue's targets, the Markdown page and plots.

`summarize` groups the jobs by (method label, density), takes medians and spreads over seeds, joins
the latency phase, computes time-to-accuracy against the reference method's bar, and checks the
targets; `write_results` writes ``<name>.json``, ``<name>.md`` and ``<name>/<plot>.png``.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aptune.bench.config import BenchConfig, Job, config_command
from aptune.bench.measure import time_to_accuracy

__all__ = ["spread", "summarize", "write_results"]


# ------------------------------------------------------------------------------------------- numbers
def spread(values: Sequence[float | None]) -> dict[str, Any] | None:
    """``{"median", "min", "max", "n", "values"}`` of the values that are present, else ``None``."""
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


def _median(stats: dict[str, Any] | None) -> float | None:
    return stats["median"] if stats else None


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


def _job_row(job: Job, result: dict, latency: dict, threshold: float | None, greater: bool) -> dict[str, Any]:
    metric = result.get("primary_metric", "accuracy")
    final = result.get("final_metrics") or {}
    timing = (latency.get("jobs") or {}).get(job.id) or {}
    steps = result.get("step_summary") or {}
    curve = result.get("curve") or []
    tta = tta_any = None
    if threshold is not None:
        tta = time_to_accuracy(curve, threshold, metric, greater_is_better=greater)
        tta_any = time_to_accuracy(
            curve, threshold, metric, greater_is_better=greater, final_structure_only=False
        )
    return {
        "id": job.id,
        "label": job.label,
        "method": job.method,
        "variant": job.variant,
        "seed": job.seed,
        "density": job.density,
        "metric": final.get(metric),
        "macro_f1": final.get("macro_f1"),
        "final_metrics": final,
        "tta_seconds": tta,
        "tta_any_seconds": tta_any,
        "train_seconds": result.get("train_seconds"),
        "peak_rss_mb": result.get("peak_rss_mb"),
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
        "latency_ms": (timing.get("latency") or {}).get("median_ms"),
        "latency_p25_ms": (timing.get("latency") or {}).get("p25_ms"),
        "latency_p75_ms": (timing.get("latency") or {}).get("p75_ms"),
        "throughput": (timing.get("latency") or {}).get("throughput"),
        "latency_ratio": timing.get("latency_ratio"),
        "flop_ratio": timing.get("flop_ratio"),
        "stack_flop_ratio": timing.get("stack_flop_ratio"),
        "implied_ms": timing.get("implied_ms"),
        "latency_vs_implied": (
            timing["latency"]["median_ms"] / timing["implied_ms"]
            if timing.get("implied_ms") and timing.get("latency")
            else None
        ),
        "latency_shared_with": timing.get("key") if timing.get("key") != job.id else None,
        "teacher_seconds": result.get("teacher_seconds"),
        "phases": result.get("phases"),
        "total_steps": result.get("total_steps"),
        "wall_seconds": result.get("wall_seconds"),
        "structure": result.get("structure") or result.get("pruning"),
    }


_GROUP_FIELDS = (
    "metric",
    "macro_f1",
    "tta_seconds",
    "tta_any_seconds",
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
    members = [r for r in rows if r["label"] == label and math.isclose(r["density"], density)]
    group = {
        "label": label,
        "method": members[0]["method"],
        "variant": members[0]["variant"],
        "density": density,
        "seeds": [r["seed"] for r in members],
        "jobs": [r["id"] for r in members],
        "reached": sum(1 for r in members if r["tta_seconds"] is not None),
    }
    for name in _GROUP_FIELDS:
        group[name] = spread([r[name] for r in members])
    params_before = next((r["params_before"] for r in members if r["params_before"]), None)
    params_after = _median(group["params_after"])
    group["params_before"] = params_before
    group["params_ratio"] = params_after / params_before if params_after and params_before else None
    return group


# ------------------------------------------------------------------------------------------- targets
def _target(tid: str, claim: str, met: bool | None, measured: str, value=None, limit=None) -> dict[str, Any]:
    return {"id": tid, "claim": claim, "met": met, "measured": measured, "value": value, "limit": limit}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _sig(value: float | None) -> str:
    return "n/a" if value is None else _num(value, None)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _targets(config: BenchConfig, groups: dict[tuple[str, float], dict]) -> list[dict]:
    d0 = config.target_density
    apt = groups.get(("APT", d0))
    lp = groups.get(("LoRA+Prune", d0))
    lora = groups.get(("LoRA", 1.0))
    ft = groups.get(("FT", 1.0))

    def med(group: dict | None, name: str) -> float | None:
        return _median(group.get(name)) if group else None

    targets: list[dict] = []
    if config.task == "classification":
        a, f, p = med(apt, "metric"), med(ft, "metric"), med(lp, "metric")
        targets.append(
            _target(
                "accuracy_vs_ft",
                f"APT at density {d0:g} keeps >= 98 % of FT's dev accuracy",
                None if a is None or f is None else a >= 0.98 * f,
                f"APT {_pct(a)} vs FT {_pct(f)}: {_pct(a / f if a and f else None)} of FT",
                a / f if a and f else None,
                0.98,
            )
        )
        targets.append(
            _target(
                "accuracy_vs_lora_prune",
                "APT beats LoRA+Prune by at least 1 accuracy point",
                None if a is None or p is None else a - p >= 0.01 - 1e-12,
                f"APT {_pct(a)} vs LoRA+Prune {_pct(p)}: "
                + ("n/a" if a is None or p is None else f"{100 * (a - p):+.1f} points"),
                None if a is None or p is None else a - p,
                0.01,
            )
        )
        t_apt, t_lp = med(apt, "tta_seconds"), med(lp, "tta_seconds")
        if t_apt is None:
            met, text = False, "APT did not reach the bar (median over seeds)"
        elif t_lp is None:
            lp_total = med(lp, "train_seconds")
            met, text = (
                (True, f"APT {_sig(t_apt)} s; LoRA+Prune never reached the bar in {_sig(lp_total)} s")
                if lp_total is not None
                else (None, "no LoRA+Prune result")
            )
        else:
            met, text = (
                t_apt <= t_lp / 3,
                f"APT {_sig(t_apt)} s vs LoRA+Prune {_sig(t_lp)} s: {t_apt / t_lp:.2f}x",
            )
        targets.append(
            _target(
                "tta_vs_lora_prune",
                "APT's time-to-accuracy is at most a third of LoRA+Prune's",
                met,
                text,
                t_apt / t_lp if t_apt and t_lp else None,
                1 / 3,
            )
        )
        memory_limit = 1.1
    else:
        memory_limit = 0.8
    m_apt, m_lora = med(apt, "peak_rss_mb"), med(lora, "peak_rss_mb")
    targets.append(
        _target(
            "memory_vs_lora",
            f"APT's peak training memory is at most {memory_limit:g}x LoRA's (process peak RSS)",
            None if m_apt is None or m_lora is None else m_apt <= memory_limit * m_lora,
            f"APT {_fmt(m_apt, 0)} MB vs LoRA {_fmt(m_lora, 0)} MB: "
            + ("n/a" if not m_apt or not m_lora else f"{m_apt / m_lora:.2f}x"),
            m_apt / m_lora if m_apt and m_lora else None,
            memory_limit,
        )
    )
    if config.task == "classification":
        ratio, vs = med(apt, "latency_ratio"), med(apt, "latency_vs_implied")
        targets.append(
            _target(
                "latency_vs_dense",
                "The exported APT model's latency is at most 0.5x the dense model's",
                None if ratio is None else ratio <= 0.5,
                f"{_fmt(ratio)}x the dense latency (FLOP ratio {_fmt(med(apt, 'flop_ratio'))})",
                ratio,
                0.5,
            )
        )
        targets.append(
            _target(
                "latency_vs_flops",
                "... and within 1.2x of the FLOP-proportional limit",
                None if vs is None else vs <= 1.2,
                f"{_fmt(vs, 2)}x the latency implied by its FLOP ratio",
                vs,
                1.2,
            )
        )
        step = med(apt, "step_ratio")
        targets.append(
            _target(
                "step_after_pruning",
                "A training step after the last pruning event costs at most 0.6x the first steps",
                None if step is None else step <= 0.6,
                f"{_fmt(step, 2)}x (median step {_sig(med(apt, 'step_after_pruning_s'))} s after "
                f"pruning vs {_sig(med(apt, 'step_start_s'))} s at the start)",
                step,
                0.6,
            )
        )
    return targets


# ------------------------------------------------------------------------------------------- profile
def _timeline_peaks(result: dict) -> dict[str, float | None]:
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


def _profile(config: BenchConfig, rows: list[dict], results: dict[str, dict]) -> dict[str, Any]:
    """Facts that explain the APT figures, from the first headline seed."""
    first = config.seed_list()[0]
    picks = {}
    for row in rows:
        if (
            row["seed"] == first
            and not row["variant"]
            and (row["method"] in ("ft", "lora") or math.isclose(row["density"], config.target_density))
        ):
            picks[row["label"]] = row["id"]
    profile: dict[str, Any] = {"seed": first, "memory": {}, "time": {}}
    for label, job_id in picks.items():
        result = results.get(job_id) or {}
        profile["memory"][label] = {
            "resting_rss_mb": result.get("resting_rss_mb"),
            "peak_rss_mb": result.get("peak_rss_mb"),
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

    The TTA bar is ``tta_fraction`` x the median final metric of the reference method (FT, or LoRA
    for the decoder suite); for a lower-is-better metric (perplexity) the bar is the reference
    divided by ``tta_fraction``.
    """
    done = [j for j in jobs if j.id in results]
    ref_jobs = [j for j in done if j.method == config.reference]
    metric = next((results[j.id].get("primary_metric") for j in done), "accuracy")
    greater = next((results[j.id].get("greater_is_better") for j in done), True)
    ref_value = _median(spread([(results[j.id].get("final_metrics") or {}).get(metric) for j in ref_jobs]))
    threshold = None
    if ref_value is not None:
        threshold = ref_value * config.tta_fraction if greater else ref_value / config.tta_fraction
    rows = [_job_row(j, results[j.id], latency, threshold, greater) for j in done]
    order: list[tuple[str, float]] = []
    for job in jobs:
        key = (job.label, job.density)
        if job.id in results and key not in order:
            order.append(key)
    groups = {key: _group(rows, *key) for key in order}
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
        "reference": {
            "method": config.reference,
            "metric": metric,
            "greater_is_better": greater,
            "value": ref_value,
            "fraction": config.tta_fraction,
            "threshold": threshold,
        },
        "dense": {
            "params": dense.get("params"),
            "latency_ms": (dense.get("latency") or {}).get("median_ms"),
            "throughput": (dense.get("latency") or {}).get("throughput"),
            "flops": dense.get("flops"),
        },
        "latency_settings": latency.get("settings"),
        "groups": list(groups.values()),
        "jobs": rows,
        "targets": _targets(config, groups),
        "profile": _profile(config, rows, results),
        "failures": failures or {},
        "seconds": seconds,
        "estimate_seconds": estimate,
    }


# ------------------------------------------------------------------------------------------ markdown
def _num(value: float, digits: int | None) -> str:
    """Fixed decimals, or (``digits=None``) three significant digits without a trailing exponent."""
    if digits is not None:
        return f"{value:.{digits}f}"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def _cell(stats: dict | None, digits: int | None = 3, scale: float = 1.0) -> str:
    """``median [min–max]`` (the spread only when it is not zero)."""
    if not stats:
        return "–"
    med = _num(stats["median"] * scale, digits)
    if stats["n"] > 1 and stats["max"] != stats["min"]:
        return f"{med} [{_num(stats['min'] * scale, digits)}–{_num(stats['max'] * scale, digits)}]"
    return med


def _tta_cell(group: dict) -> str:
    n = len(group["seeds"])
    if not group["tta_seconds"]:
        return f"not reached (0/{n})"
    text = _cell(group["tta_seconds"], None)
    return text if group["reached"] == n else f"{text} ({group['reached']}/{n} reached)"


def _metric_name(summary: dict) -> str:
    return summary["reference"]["metric"]


def _group_table(summary: dict, groups: list[dict]) -> list[str]:
    metric = _metric_name(summary)
    classification = metric == "accuracy"
    head = ["method", "density", "seeds", f"dev {metric}" + (" (%)" if classification else "")]
    if classification:
        head.append("macro-F1 (%)")
    head += [
        "TTA (s)",
        "train time (s)",
        "peak RSS (MB)",
        "step start → after pruning (s)",
        "exported params",
        "latency (ms)",
        "throughput (seq/s)",
        "latency / dense",
        "FLOP ratio",
        "FLOP-implied (ms)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        scale = 100.0 if classification else 1.0
        row = [
            g["label"],
            f"{g['density']:g}",
            str(len(g["seeds"])),
            _cell(g["metric"], 1 if classification else 2, scale),
        ]
        if classification:
            row.append(_cell(g["macro_f1"], 1, 100.0))
        start, after = _median(g["step_start_s"]), _median(g["step_after_pruning_s"])
        steps = "–" if start is None else _num(start, None) + (f" → {_num(after, None)}" if after else "")
        params = _median(g["params_after"])
        row += [
            _tta_cell(g),
            _cell(g["train_seconds"], None),
            _cell(g["peak_rss_mb"], 0),
            steps,
            "–" if params is None else f"{params / 1e6:.2f} M ({100 * (g['params_ratio'] or 0):.0f} %)",
            _cell(g["latency_ms"], None),
            _cell(g["throughput"], None),
            _cell(g["latency_ratio"], 3),
            _cell(g["flop_ratio"], 3),
            _cell(g["implied_ms"], None),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _job_table(summary: dict) -> list[str]:
    metric = _metric_name(summary)
    head = [
        "job",
        "seed",
        "density",
        metric,
        "TTA (s)",
        "TTA any (s)",
        "train (s)",
        "peak RSS (MB)",
        "latency (ms)",
        "params",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["jobs"]:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["id"],
                    str(r["seed"]),
                    f"{r['density']:g}",
                    _fmt(r["metric"], 4),
                    _sig(r["tta_seconds"]),
                    _sig(r["tta_any_seconds"]),
                    _sig(r["train_seconds"]),
                    _fmt(r["peak_rss_mb"], 0),
                    _sig(r["latency_ms"]),
                    f"{r['params_after']:,}" if r["params_after"] else "–",
                ]
            )
            + " |"
        )
    return lines


def _profile_lines(summary: dict) -> list[str]:
    profile = summary["profile"]
    lines = [f"From the headline runs with seed {profile['seed']}.", ""]
    for label, m in profile["memory"].items():
        t = profile["time"].get(label, {})
        parts = [
            f"resting RSS {_fmt(m.get('resting_rss_mb'), 0)} MB",
            f"training peak {_fmt(m.get('peak_rss_mb'), 0)} MB",
        ]
        if m.get("sampled_peak_until_last_prune_mb") is not None:
            parts.append(
                "sampled peak until the last pruning event "
                f"{_fmt(m['sampled_peak_until_last_prune_mb'], 0)} MB, "
                f"after it {_fmt(m.get('sampled_peak_after_last_prune_mb'), 0)} MB"
            )
        if m.get("phase_peak_rss_mb"):
            parts.append(
                "peak per phase "
                + ", ".join(f"{k} {_fmt(v, 0)} MB" for k, v in m["phase_peak_rss_mb"].items())
            )
        if t.get("phases"):
            parts.append("time per phase " + ", ".join(f"{k} {_sig(v)} s" for k, v in t["phases"].items()))
        if t.get("teacher_seconds") is not None:
            parts.append(f"teacher forwards {_sig(t['teacher_seconds'])} s")
        if t.get("step_start_s") is not None:
            text = f"step time {_sig(t['step_start_s'])} s at the start"
            if t.get("step_after_pruning_s") is not None:
                text += f", {_sig(t['step_after_pruning_s'])} s after the last pruning event"
            if t.get("step_after_distillation_s") is not None:
                text += f", {_sig(t['step_after_distillation_s'])} s once distillation ended"
            parts.append(text)
        lines.append(f"- **{label}**: " + "; ".join(parts) + ".")
    return lines


def _allocator_text(summary: dict) -> str:
    user = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if user:
        return f"Every job ran with MALLOC_MMAP_THRESHOLD_={user} from the environment."
    thresholds = sorted(set(summary.get("mmap_thresholds") or []))
    if not thresholds:
        return "Every job ran with the C library's default allocator settings."
    values = ", ".join(f"{t / 2**20:g} MiB" for t in thresholds)
    return (
        "FT and LoRA ran with the C library's default allocator settings, as their users would; "
        f"aptune (APT, LoRA+Prune) pinned glibc's mmap threshold at {values} from its first pruning "
        "event on (`aptune.host_memory`)."
    )


def _setup_lines(summary: dict) -> list[str]:
    cfg, data, env = summary["config"], summary["data"], summary["environment"]
    length = f"{cfg['max_steps']} steps" if cfg["max_steps"] else f"{cfg['epochs']:g} epoch(s)"
    ref = summary["reference"]
    settings = summary.get("latency_settings") or {}
    first_seed = cfg["seeds"].split(",")[0]
    bar = f"{'>=' if ref['greater_is_better'] else '<='} {_fmt(ref['threshold'], 4)}"
    lat_batch = settings.get("batch_size", cfg["latency_batch"])
    lat_len = settings.get("seq_len", cfg["latency_length"])
    lat_warm = settings.get("warmup", cfg["latency_warmup"])
    lat_rep = settings.get("repeats", cfg["latency_repeats"])
    lines = [
        f"- Model `{cfg['model']}`, task {cfg['task']}; data: {data.get('source', '?')}; "
        f"{data.get('num_train', '?')} training / {data.get('num_eval', '?')} dev examples.",
        f"- Every method: {cfg['max_length']} tokens, batch {cfg['batch_size']}, {length}, AdamW with "
        f"linear decay and 6 % warm-up, {cfg['evaluations']} cadence evaluations (every "
        f"`steps // {cfg['evaluations']}` steps) plus a final one; headline seeds {cfg['seeds']}; "
        f"ablations and sweep with seed {first_seed}.",
        f"- Learning rates: FT {cfg['ft_lr']:g}, LoRA and LoRA+Prune retraining {cfg['lora_lr']:g}, "
        f"APT {cfg['apt_lr']:g}. Adapters (LoRA and APT) on {cfg['adapter_roles']}, rank "
        f"{cfg['lora_rank']}, alpha {cfg['lora_alpha']:g}.",
        "- LoRA+Prune: phase 1 is the LoRA run of the same seed; then aptune's calibration salience on "
        f"{cfg['calibration_samples']} training examples, one-shot budgeted pruning to the target "
        f"density, and LoRA retraining for {cfg['retrain_fraction']:g}x the run's steps. Its times "
        "include every phase.",
        f"- TTA: training seconds (evaluation excluded) until the dev {ref['metric']} first reaches "
        f"{ref['fraction']:g} x the {ref['method'].upper()} median ({_fmt(ref['value'], 4)}), i.e. "
        f"{bar}, counting only evaluations of the final (exported) structure: after the last pruning "
        "event for APT, during retraining for LoRA+Prune. 'TTA any' in the per-run table also counts "
        "earlier evaluations (the paper's literal reading).",
        "- Peak RSS: the process's peak resident memory from just after the imports to the end of "
        "training (Linux VmHWM reset at the start of every job); LoRA+Prune takes the larger of its "
        f"two phases. {_allocator_text(summary)}",
        f"- Latency: exported merged models, batch {lat_batch} x {lat_len} tokens, {lat_warm} warm-up "
        f"forwards, median of {lat_rep}, torch.inference_mode, all models interleaved in one process "
        f"({settings.get('threads', '?')} threads). The FLOP ratio counts matrix-multiply FLOPs from "
        "the layer shapes (projections, attention scores and context per head, FFN, head); "
        "FLOP-implied latency = dense latency x FLOP ratio.",
        f"- Machine: {env['cpu_count']} CPUs, torch {env['torch']}, transformers {env['transformers']}, "
        f"peft {env['peft']}, Python {env['python']}; load average at the end "
        f"{env.get('load_average_at_end')}.",
    ]
    return lines


def _markdown(summary: dict, plots: dict[str, str]) -> str:
    cfg = summary["config"]
    d0 = cfg["target_density"]
    command = summary["command"]
    minutes = _fmt((summary["seconds"] or 0) / 60, 1)
    estimated = _fmt((summary["estimate_seconds"] or 0) / 60, 1)
    lines = [
        f"# Benchmark `{summary['name']}`",
        "",
        f"Written by `{command}` on {summary['created']}; whole run {minutes} min (estimated "
        f"{estimated} min). Every number below comes from this run; `{summary['name']}.json` holds "
        "all of them, per job.",
        "",
    ]
    env = summary["environment"]
    # only the load before the first job says whether others were busy: at the end, the load
    # average still counts the benchmark's own jobs
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
        status = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[t["met"]]
        lines.append(f"- **{status}** — {t['claim']}: {t['measured']}.")
    if summary["failures"]:
        lines += ["", "## Failed jobs", ""]
        for job_id, error in summary["failures"].items():
            lines += [f"- `{job_id}`:", "", "```", error.strip()[-2000:], "```"]
    groups = summary["groups"]
    headline = [
        g
        for g in groups
        if not g["variant"] and (g["method"] in ("ft", "lora") or math.isclose(g["density"], d0))
    ]
    ablations = [g for g in groups if g["variant"]]
    sweep = [g for g in groups if not g["variant"] and g["method"] in ("apt", "lora-prune")]
    sweep.sort(key=lambda g: (g["label"], g["density"]))
    dense = summary["dense"]
    lines += [
        "",
        f"## Headline: density {d0:g}",
        "",
        "Medians over seeds, [min–max] when they differ.",
        "",
        *_group_table(summary, headline),
        "",
        f"Dense model: {_fmt((dense['params'] or 0) / 1e6, 2)} M parameters, "
        f"{_fmt(dense['latency_ms'], 1)} ms per batch, {_fmt(dense['throughput'], 1)} sequences/s.",
    ]
    if "curves" in plots:
        lines += ["", f"![dev metric over training time]({plots['curves']})"]
    if "tta" in plots:
        lines += ["", f"![time to accuracy]({plots['tta']})"]
    if len({g["density"] for g in sweep}) > 1:
        lines += ["", "## Density sweep", "", *_group_table(summary, sweep)]
        if "accuracy_vs_latency" in plots:
            lines += ["", f"![accuracy vs latency]({plots['accuracy_vs_latency']})"]
    if ablations:
        apt = [g for g in headline if g["label"] == "APT"]
        lines += ["", f"## APT ablations (density {d0:g})", "", *_group_table(summary, apt + ablations)]
    lines += ["", "## Profile", "", *_profile_lines(summary)]
    if "memory" in plots:
        lines += ["", f"![RSS over time]({plots['memory']})"]
    lines += ["", "## Setup", "", *_setup_lines(summary), "", "## Every run", "", *_job_table(summary), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- plots
_COLORS = {"FT": "#444444", "LoRA": "#1f77b4", "LoRA+Prune": "#ff7f0e", "APT": "#2ca02c"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_accuracy_vs_latency(summary: dict, results: dict) -> Any:
    sweep = [g for g in summary["groups"] if not g["variant"] and g["method"] in ("apt", "lora-prune")]
    if len({g["density"] for g in sweep}) < 2:
        return None
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    scale = 100.0 if _metric_name(summary) == "accuracy" else 1.0
    for label in ("APT", "LoRA+Prune"):
        points = sorted(
            (_median(g["latency_ms"]), _median(g["metric"]), g["density"])
            for g in sweep
            if g["label"] == label and g["latency_ms"] and g["metric"]
        )
        if not points:
            continue
        xs, ys = [p[0] for p in points], [p[1] * scale for p in points]
        ax.plot(xs, ys, marker="o", color=_COLORS[label], label=label)
        for x, y, d in zip(xs, ys, [p[2] for p in points], strict=True):
            ax.annotate(f"{d:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for g in summary["groups"]:
        if g["method"] in ("ft", "lora") and g["metric"] and summary["dense"]["latency_ms"]:
            ax.scatter(
                [summary["dense"]["latency_ms"]],
                [_median(g["metric"]) * scale],
                marker="s",
                color=_COLORS[g["label"]],
                label=f"{g['label']} (dense)",
            )
    ax.set_xlabel(
        f"inference latency of the exported model (ms per batch of {summary['config']['latency_batch']})"
    )
    ax.set_ylabel(f"dev {_metric_name(summary)}" + (" (%)" if scale == 100 else ""))
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
    if not groups:
        return None
    fig = _figure(6.4, 0.5 * len(groups) + 1.4)
    ax = fig.add_subplot()
    for i, g in enumerate(groups):
        color = _COLORS.get(g["label"], "#2ca02c" if g["method"] == "apt" else "#888888")
        if g["tta_seconds"]:
            s = g["tta_seconds"]
            ax.barh(i, s["median"], color=color, alpha=0.85)
            ax.errorbar(
                s["median"],
                i,
                xerr=[[s["median"] - s["min"]], [s["max"] - s["median"]]],
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
    ax.set_xlabel(f"training seconds until dev {ref['metric']} reaches {_fmt(ref['threshold'], 3)}")
    ax.set_title("Time to accuracy (median, min–max over seeds)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _headline_results(summary: dict, results: dict) -> list[tuple[str, dict]]:
    d0 = summary["config"]["target_density"]
    first = int(summary["config"]["seeds"].split(",")[0])
    picked = []
    for row in summary["jobs"]:
        if (
            row["seed"] == first
            and not row["variant"]
            and (row["method"] in ("ft", "lora") or math.isclose(row["density"], d0))
        ):
            picked.append((row["label"], results[row["id"]]))
    return picked


def _plot_curves(summary: dict, results: dict) -> Any:
    picked = _headline_results(summary, results)
    if not picked:
        return None
    metric = _metric_name(summary)
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    for label, result in picked:
        curve = [p for p in result.get("curve") or [] if p["metrics"].get(metric) is not None]
        final = [p for p in curve if p.get("final_structure", True)]
        earlier = [p for p in curve if not p.get("final_structure", True)]
        if earlier:  # before the last pruning (LoRA+Prune: its LoRA phase, i.e. the LoRA curve)
            xs, ys = [p["train_seconds"] for p in earlier], [p["metrics"][metric] for p in earlier]
            ax.plot(xs, ys, linestyle="--", linewidth=1, color=_COLORS.get(label), alpha=0.7)
            if final:
                ax.plot(
                    [xs[-1], final[0]["train_seconds"]],
                    [ys[-1], final[0]["metrics"][metric]],
                    linestyle="--",
                    linewidth=1,
                    color=_COLORS.get(label),
                    alpha=0.7,
                )
        xs, ys = [p["train_seconds"] for p in final], [p["metrics"][metric] for p in final]
        ax.plot(xs, ys, marker=".", color=_COLORS.get(label), label=label)
    if summary["reference"]["threshold"] is not None:
        ax.axhline(
            summary["reference"]["threshold"], color="0.4", linestyle="--", linewidth=1, label="TTA bar"
        )
    ax.set_xlabel("training seconds (evaluation excluded); dashed: before the final structure")
    ax.set_ylabel(f"dev {metric}")
    ax.set_title(f"Dev {metric} over training time (seed {summary['config']['seeds'].split(',')[0]})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def _plot_memory(summary: dict, results: dict) -> Any:
    picked = [
        (label, r)
        for label, r in _headline_results(summary, results)
        if (r.get("memory_timeline") or {}).get("seconds")
    ]
    if not picked:
        return None
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    for label, result in picked:
        timeline = result["memory_timeline"]
        marks = timeline.get("marks") or {}
        start = marks.get("calibration_start", marks.get("train_start", 0.0))
        end = marks.get("train_end", math.inf)
        points = [
            (t - start, r) for t, r in zip(timeline["seconds"], timeline["rss_mb"], strict=False) if t <= end
        ]
        ax.plot([p[0] for p in points], [p[1] for p in points], color=_COLORS.get(label), label=label)
        if marks.get("last_prune") is not None:
            ax.axvline(marks["last_prune"] - start, color=_COLORS.get(label), linestyle=":", linewidth=1)
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

    Returns:
        ``{"json": path, "md": path, <plot>: path}``.
    """
    out = Path(config.results_dir)
    name = config.results_name()
    thresholds = {r.get("mmap_threshold") for r in results.values() if isinstance(r, dict)}
    summary = {**summary, "mmap_thresholds": sorted(t for t in thresholds if t is not None)}
    plot_dir = out / name
    plot_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    links: dict[str, str] = {}
    for plot, draw in _PLOTS.items():
        fig = draw(summary, results)
        if fig is None:
            continue
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", facecolor="white")
        path = plot_dir / f"{plot}.png"
        path.write_bytes(buffer.getvalue())
        files[plot] = path
        links[plot] = f"{name}/{plot}.png"
    payload = {**summary, "results": results, "latency": latency}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    md_path = out / f"{name}.md"
    md_path.write_text(_markdown(summary, links), encoding="utf-8")
    files["json"], files["md"] = json_path, md_path
    return files
