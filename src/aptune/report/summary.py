"""The ``summary`` block of a report, derived from its other fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aptune.report.values import is_num, mapping_of, rows_of

__all__ = [
    "NON_METRIC_MARKERS",
    "config_value",
    "latest_value",
    "metric_keys",
    "per_layer",
    "sum_list",
    "summarize",
]

# HF Trainer puts bookkeeping numbers next to the metrics of an evaluation; they are not dev metrics.
NON_METRIC_MARKERS = ("runtime", "per_second", "epoch", "flos", "samples", "step")


def config_value(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]``, also looked up one level down (e.g. ``config["apt"][key]``)."""
    if key in config:
        return config[key]
    for value in config.values():
        if isinstance(value, Mapping) and key in value:
            return value[key]
    return None


def latest_value(steps: list[dict[str, Any]], events: list[dict[str, Any]], key: str) -> int | float | None:
    """The value of ``key`` at the largest step among step rows and events (events win ties)."""
    best: tuple[int, int] | None = None
    value = None
    for priority, rows in ((0, steps), (1, events)):
        for row in rows:
            v, s = row.get(key), row.get("step")
            if is_num(v) and is_num(s) and (best is None or (s, priority) >= best):
                best, value = (s, priority), v
    return value


def per_layer(value: Any, num_layers: Any) -> list[float] | None:
    """A per-layer count from ``model_info``: a list as given, or an int repeated ``num_layers`` times."""
    if isinstance(value, list) and value and all(is_num(v) for v in value):
        return [float(v) for v in value]
    if is_num(value) and is_num(num_layers) and num_layers > 0:
        return [float(value)] * int(num_layers)
    return None


def sum_list(value: Any) -> int | float | None:
    """Sum of a list of numbers, or None when ``value`` is not one."""
    if isinstance(value, list) and value and all(is_num(v) for v in value):
        return sum(value)
    return None


def summarize(data: Mapping[str, Any]) -> dict[str, Any]:
    """Derive the ``summary`` block of a report from its other fields (missing figures are None)."""
    model = mapping_of(data.get("model"))
    config = mapping_of(data.get("config"))
    steps, events, evals = rows_of(data.get("steps")), rows_of(data.get("events")), rows_of(data.get("evals"))
    before = model.get("params_before") if is_num(model.get("params_before")) else None
    after = latest_value(steps, events, "params")
    density = latest_value(steps, events, "density")
    if density is None and before and after is not None:
        density = after / before
    last_event = events[-1] if events else {}
    final_metrics = data.get("final_metrics")
    source: str | None = "final_metrics"
    if not isinstance(final_metrics, dict) or not final_metrics:
        last_eval = next((e for e in reversed(evals) if mapping_of(e.get("metrics"))), None)
        final_metrics = dict(last_eval["metrics"]) if last_eval else None
        source = "last_eval" if last_eval else None
    all_steps = [r["step"] for r in (*steps, *events, *evals) if is_num(r.get("step"))]
    times = [v for v in mapping_of(data.get("phase_times")).values() if is_num(v)]
    hidden = last_event.get("hidden_size", model.get("hidden_size"))
    target = config_value(config, "target_density")
    return {
        "params_before": before,
        "params_after": after,
        "params_ratio": after / before if before and after is not None else None,
        "total_params_before": model.get("total_params_before"),
        "final_density": density,
        "target_density": target if is_num(target) else None,
        "num_events": len(events),
        "final_step": max(all_steps) if all_steps else None,
        "trainable_params": latest_value(steps, events, "trainable_params"),
        "heads_kept": sum_list(last_event.get("heads_per_layer")),
        "neurons_kept": sum_list(last_event.get("ffn_per_layer")),
        "hidden_size": hidden if is_num(hidden) else None,
        "final_metrics": final_metrics,
        "final_metrics_source": source,
        "wall_time_seconds": sum(times) if times else None,
    }


def metric_keys(evals: list[dict[str, Any]]) -> list[str]:
    """Metric names of the evaluations, without Trainer bookkeeping (runtime, samples per second, ...)."""
    keys: list[str] = []
    for e in evals:
        for k, v in mapping_of(e.get("metrics")).items():
            if k not in keys and is_num(v) and not any(m in k.lower() for m in NON_METRIC_MARKERS):
                keys.append(k)
    return keys
