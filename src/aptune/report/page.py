"""The Markdown page of a run report (``report.md``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aptune.report.format import DASH, fmt_density, fmt_int, fmt_number, fmt_seconds, fmt_value
from aptune.report.plots import PLOT_TITLES, event_name
from aptune.report.recorder import RESERVED_KEYS
from aptune.report.summary import metric_keys, per_layer, sum_list, summarize
from aptune.report.tables import md_table
from aptune.report.values import is_num, mapping_of, rows_of

__all__ = ["render_markdown"]


def _flatten_fields(key: str, value: Any) -> list[tuple[str, str]]:
    """``(label, text)`` rows for a free-form field: dicts one level deep become one row per entry."""
    if isinstance(value, dict) and value:
        return [(f"{key}: {k}", fmt_value(f"{key}_{k}", v)) for k, v in value.items()]
    return [(key, fmt_value(key, value))]


def _removed_text(removed: Any) -> str:
    """``12 heads, 1,024 neurons, 16 hidden`` from an event's ``removed`` dict."""
    if not isinstance(removed, dict) or not removed:
        return DASH
    parts = [f"{fmt_int(removed[k])} {k}" for k in ("heads", "neurons", "hidden") if is_num(removed.get(k))]
    parts += [f"{fmt_number(v)} {k}" for k, v in removed.items() if k not in ("heads", "neurons", "hidden")]
    return ", ".join(parts) if parts else DASH


def _copy_heads_lines(events: list[Mapping[str, Any]]) -> list[str]:
    """The attention units kept as copying heads (``AptConfig.keep_copy_heads``), from the event
    that measured them; nothing when no event did."""
    measured = next((e["copy_heads"] for e in events if isinstance(e.get("copy_heads"), list)), None)
    if measured is None:
        return []
    units = [u for u in measured if isinstance(u, Mapping)]
    if not units:
        return [
            "**Copying heads:** no attention unit reached the induction threshold; none was protected.",
            "",
        ]
    listed = ", ".join(
        f"layer {u.get('layer')} unit {u.get('unit')} ({fmt_number(u.get('score'))})" for u in units
    )
    return [f"**Copying heads kept by every selection** (induction score): {listed}.", ""]


def render_markdown(data: Mapping[str, Any], plot_links: Mapping[str, str]) -> str:
    """The text of ``report.md``."""
    model, config = mapping_of(data.get("model")), mapping_of(data.get("config"))
    summary = mapping_of(data.get("summary")) or summarize(data)
    name = model.get("name") or "model"
    out = [f"# aptune report: {name}", ""]

    facts = []
    if model.get("model_type"):
        facts.append(f"type `{model['model_type']}`")
    if is_num(model.get("num_layers")):
        facts.append(f"{model['num_layers']} layers")
    for key, label in (("heads_per_layer", "heads / layer"), ("ffn_per_layer", "FFN neurons / layer")):
        v = model.get(key)
        if is_num(v):
            facts.append(f"{fmt_int(v)} {label}")
        elif isinstance(v, list) and v:
            facts.append(f"{fmt_int(sum_list(v))} {label.split(' /')[0]} in total")
    if is_num(model.get("hidden_size")):
        facts.append(f"hidden size {model['hidden_size']}")
    meta = [f"aptune {data['aptune_version']}"] if data.get("aptune_version") else []
    if data.get("created"):
        meta.append(f"recorded {data['created']}")
    if facts:
        out += ["Model: " + ", ".join(facts) + ".  ", ""]
    if meta:
        out += ["_" + " · ".join(meta) + "_", ""]

    # Summary
    rows: list[tuple[str, str]] = [
        ("Backbone parameters before", fmt_int(summary.get("params_before"))),
        ("Backbone parameters after", fmt_int(summary.get("params_after"))),
    ]
    ratio = summary.get("params_ratio")
    rows.append(("Parameters kept (after / before)", f"{ratio:.3f} ({ratio:.1%})" if is_num(ratio) else DASH))
    if is_num(summary.get("total_params_before")):
        rows.append(
            ("All parameters before (incl. embeddings, head)", fmt_int(summary["total_params_before"]))
        )
    rows.append(("Final density", fmt_density(summary.get("final_density"))))
    if is_num(summary.get("target_density")):
        rows.append(("Target density", fmt_density(summary["target_density"])))
    rows.append(("Pruning events", str(summary.get("num_events", 0))))
    if is_num(summary.get("final_step")):
        rows.append(("Final step", fmt_int(summary["final_step"])))
    if is_num(summary.get("trainable_params")):
        rows.append(("Trainable parameters (final)", fmt_int(summary["trainable_params"])))
    final = mapping_of(summary.get("final_metrics"))
    final = {k: final[k] for k in metric_keys([{"metrics": final}])}  # without runtime, epoch, ...
    where = (
        " (final model)" if summary.get("final_metrics_source") == "final_metrics" else " (last evaluation)"
    )
    for k, v in final.items():
        rows.append((f"Dev {k}{where}", fmt_number(v)))
    if not final:
        rows.append(("Dev metrics", "none recorded"))
    phase_times = mapping_of(data.get("phase_times"))
    for phase, secs in phase_times.items():
        rows.append((f"Wall time: {phase}", fmt_seconds(secs)))
    if len(phase_times) > 1:
        rows.append(("Wall time: total", fmt_seconds(summary.get("wall_time_seconds"))))
    for key, label in (("peak_memory", "Peak memory"), ("throughput", "Throughput")):
        if key in data:
            rows += [(lab.replace(key, label, 1), text) for lab, text in _flatten_fields(key, data[key])]
    out += ["## Summary", "", *md_table(["", "value"], rows, "lr"), ""]

    # Events
    events = rows_of(data.get("events"))
    if events:
        start_heads = sum_list(per_layer(model.get("heads_per_layer"), model.get("num_layers")))
        start_ffn = sum_list(per_layer(model.get("ffn_per_layer"), model.get("num_layers")))
        table = [
            [
                "start",
                "0",
                DASH,
                fmt_density(1.0),
                fmt_int(model.get("params_before")),
                fmt_int(start_heads),
                fmt_int(start_ffn),
                fmt_int(model.get("hidden_size")),
                DASH,
                DASH,
            ]
        ]
        for i, e in enumerate(events):
            table.append(
                [
                    event_name(e, i).lstrip("#"),
                    fmt_int(e.get("step")),
                    fmt_density(e.get("target_density")),
                    fmt_density(e.get("density")),
                    fmt_int(e.get("params")),
                    fmt_int(sum_list(e.get("heads_per_layer"))),
                    fmt_int(sum_list(e.get("ffn_per_layer"))),
                    fmt_int(e.get("hidden_size")),
                    _removed_text(e.get("removed")),
                    fmt_int(e.get("trainable_params")),
                ]
            )
        headers = [
            "event",
            "step",
            "target density",
            "density",
            "params",
            "heads",
            "neurons",
            "hidden",
            "removed",
            "trainable params",
        ]
        out += ["## Pruning events", "", *md_table(headers, table, "rrrrrrrrlr"), ""]
        notes = [
            f"{event_name(e, i).lstrip('#')}: {e['hidden_note']}."
            for i, e in enumerate(events)
            if e.get("hidden_note")
        ]
        out += [*(f"**Note:** {n}" for n in notes), *([""] if notes else [])]
        out += _copy_heads_lines(events)

    # Dev metrics over time
    evals = rows_of(data.get("evals"))
    keys = metric_keys(evals)
    if evals and keys:
        shown = evals[-30:]
        out += ["## Dev evaluations", ""]
        if len(evals) > len(shown):
            out += [f"Last {len(shown)} of {len(evals)} evaluations (all are in report.json).", ""]
        table = [
            [fmt_int(e.get("step"))] + [fmt_number(mapping_of(e.get("metrics")).get(k)) for k in keys]
            for e in shown
        ]
        out += [*md_table(["step", *keys], table, "r" * (len(keys) + 1)), ""]

    # Other free-form fields
    extra = [
        (k, v)
        for k, v in data.items()
        if k not in RESERVED_KEYS and k not in ("final_metrics", "peak_memory", "throughput")
    ]
    if extra:
        rows = [row for k, v in extra for row in _flatten_fields(k, v)]
        out += ["## Other measurements", "", *md_table(["", "value"], rows, "lr"), ""]

    # Plots
    if plot_links:
        out += ["## Plots", ""]
        for key, link in plot_links.items():
            title = PLOT_TITLES.get(key.removesuffix(".png"), key)
            out += [f"### {title}", "", f"![{title}]({link})", ""]

    if config:
        out += [
            "## Configuration",
            "",
            "<details><summary>config</summary>",
            "",
            "```json",
            json.dumps(config, indent=2, ensure_ascii=False),
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(out)
