"""The benchmark's plots: accuracy vs latency, time to accuracy, metric curves and RSS over time.

Each plot function takes the summary and the job records and returns a figure from
`aptune.report.figures.new_figure`, or ``None`` when its data are missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from aptune.bench.page import metric_name
from aptune.bench.records import flat_curve, is_lora_prune, median_of
from aptune.report.figures import new_figure
from aptune.report.format import fmt_fixed

__all__ = ["PLOTS"]

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
    scale = 100.0 if metric_name(summary) == "accuracy" else 1.0
    for label in dict.fromkeys(g["label"] for g in sweep):
        points = sorted(
            (median_of(g["latency_ms"]), median_of(g["metric"]), g["density"])
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
                [median_of(g["metric"]) * scale],
                marker="s",
                color=_color(g["label"], g["method"]),
                label=f"{g['label']} (dense)",
            )
    ax.set_xlabel(
        f"inference latency of the exported model (ms per batch of {summary['config']['latency_batch']})"
    )
    ax.set_ylabel(f"test {metric_name(summary)}" + (" (%)" if scale == 100 else ""))
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
            total = median_of(g["train_seconds"]) or 0
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
    # the runs behind the groups' medians: a seed repeated under the other allocator setting is left out
    in_groups = {job_id for g in summary["groups"] for job_id in g.get("jobs", [])}
    picked = []
    for row in summary["jobs"]:
        if (
            row["seed"] == first
            and row["id"] in in_groups
            and not row["variant"]
            and (row["method"] in ("ft", "lora") or math.isclose(row["density"], d0))
        ):
            picked.append((row["label"], row["method"], results[row["id"]]))
    return picked


def _plot_curves(summary: dict, results: dict) -> Any:
    picked = _headline_results(summary, results)
    if not picked:
        return None
    metric = metric_name(summary)
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    split = summary["reference"].get("curve_split", "dev")
    for label, method, result in picked:
        curve = [
            p for p in flat_curve(result.get("curve") or [], split) if p["metrics"].get(metric) is not None
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


PLOTS: dict[str, Callable[[dict, dict], Any]] = {
    "accuracy_vs_latency": _plot_accuracy_vs_latency,
    "tta": _plot_tta,
    "curves": _plot_curves,
    "memory": _plot_memory,
}
