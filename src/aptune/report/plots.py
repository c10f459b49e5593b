"""The PNG plots of a run report: density, structure, ranks, loss and salience.

Each ``_plot_*`` function takes the report dict and returns a `matplotlib.figure.Figure` or ``None``
when its data are missing; `write_plots` draws every plot that has data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aptune.atomic import write_bytes_atomic
from aptune.report.figures import new_figure, plot_style, png_bytes
from aptune.report.summary import config_value, metric_keys, per_layer
from aptune.report.values import is_num, mapping_of, rows_of

if TYPE_CHECKING:  # pragma: no cover - typing only; matplotlib is imported lazily
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PLOT_FUNCTIONS", "PLOT_TITLES", "event_name", "write_plots"]

logger = logging.getLogger(__name__)

_LOSS_KEYS = ("loss", "task_loss", "distill_loss", "pred_loss", "layer_loss")
_LOSS_COLORS = {
    "loss": "tab:blue",
    "task_loss": "tab:orange",
    "distill_loss": "tab:green",
    "pred_loss": "tab:purple",
    "layer_loss": "tab:brown",
}
_MAX_RANK_LINES = 12


def write_plots(data: dict[str, Any], plots_dir: Path) -> dict[str, Path]:
    """Draw every plot that has data and save it as ``plots_dir/<name>.png`` (atomically).

    A plot whose data are missing is skipped; a plot that fails for any other reason is skipped with a
    logged warning.

    Args:
        data: The report dict.
        plots_dir: Folder of the PNG files (created when a plot is written).

    Returns:
        ``{"<name>.png": path}`` of the plots written.
    """
    written: dict[str, Path] = {}
    for name, draw in PLOT_FUNCTIONS.items():
        try:
            with plot_style():
                fig = draw(data)
                if fig is None:
                    logger.info("report: no data for %s.png, skipped", name)
                    continue
                png = png_bytes(fig)
        except Exception:  # a broken plot must not cost the rest of the report
            logger.warning("report: could not draw %s.png, skipped", name, exc_info=True)
            continue
        path = write_bytes_atomic(plots_dir / f"{name}.png", png)
        written[path.name] = path
    return written


def _series(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of the rows that have a finite ``key``."""
    xs: list[float] = []
    ys: list[float] = []
    for row in rows:
        value, step = row.get(key), row.get("step")
        if is_num(value) and is_num(step):
            xs.append(step)
            ys.append(value)
    return xs, ys


def _count_unit(max_value: float) -> tuple[float, str]:
    """Divisor and unit word for a parameter count axis (``(1e6, "millions")``)."""
    for divisor, unit in ((1e9, "billions"), (1e6, "millions"), (1e3, "thousands")):
        if max_value >= divisor:
            return divisor, unit
    return 1.0, ""


def _step_axis(ax: Axes) -> None:
    """Label an x axis of optimizer steps and keep its ticks on whole steps."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _event_steps(data: Mapping[str, Any]) -> list[float]:
    """Steps of the pruning events."""
    return [e["step"] for e in rows_of(data.get("events")) if is_num(e.get("step"))]


def _mark_events(ax: Axes, steps: Sequence[float]) -> list[Any]:
    """Draw pruning events as dotted vertical lines; return ``[first line]`` (for a legend) or ``[]``."""
    lines = [
        ax.axvline(
            step, color="0.35", linestyle=":", linewidth=1.1, label="pruning event" if i == 0 else None
        )
        for i, step in enumerate(steps)
    ]
    return lines[:1]


def _ghost_twin_lines(ax: Axes, twin: Axes) -> None:
    """Let ``ax.legend(loc="best")`` avoid the lines of its twin axes too.

    "best" only looks at the artists of the legend's own axes; invisible copies of the twin's lines
    (in the twin's coordinates, added with ``add_artist`` so ``ax``'s data limits do not change) make
    it see them. The legend goes on the twin drawn last (``twinx()``), so no line is drawn over it.
    """
    from matplotlib.lines import Line2D

    for line in twin.get_lines():
        ghost = Line2D(line.get_xdata(), line.get_ydata(), transform=twin.transData, visible=False)
        ax.add_artist(ghost)


def _plot_density(data: Mapping[str, Any]) -> Figure | None:
    """Density and backbone parameter count vs step (twin y axes), events as dotted lines."""
    steps, events = rows_of(data.get("steps")), rows_of(data.get("events"))
    model, config = mapping_of(data.get("model")), mapping_of(data.get("config"))
    before = model.get("params_before") if is_num(model.get("params_before")) else None
    xd, yd = _series(steps, "density")
    xp, yp = _series(steps, "params")
    if not xd and not xp:  # fall back to the events, starting from the dense model
        xd, yd = _series(events, "density")
        xp, yp = _series(events, "params")
        if xd:
            xd, yd = [0, *xd], [1.0, *yd]
        if xp and before:
            xp, yp = [0, *xp], [before, *yp]
    if not xd and not xp:
        return None

    fig = new_figure(9.0, 4.8)
    ax = fig.add_subplot()
    handles = []
    if xd:
        handles += ax.plot(xd, yd, color="tab:blue", linewidth=2.2, label="density (kept / original)")
    xt, yt = _series(events, "target_density")
    if xt:
        handles += ax.plot(
            xt,
            yt,
            linestyle="none",
            marker="x",
            markersize=8,
            mew=2,
            color="tab:red",
            label="target density at event",
        )
    target = config_value(config, "target_density")
    if is_num(target):
        handles.append(
            ax.axhline(
                target,
                color="tab:red",
                linestyle="--",
                linewidth=1,
                alpha=0.6,
                label=f"final target ({target:.3f})",
            )
        )
    ax.set_ylim(0, 1.05)
    _step_axis(ax)
    ax.set_ylabel("density (fraction of backbone params kept)")
    handles += _mark_events(ax, _event_steps(data))

    if xp:
        ax2 = ax.twinx()
        ax2.grid(False)
        top = max([*yp, before or 0])
        divisor, unit = _count_unit(top)
        handles += ax2.plot(
            xp,
            [v / divisor for v in yp],
            color="tab:orange",
            linewidth=1.6,
            linestyle="--",
            label="backbone parameters",
        )
        ax2.set_ylim(0, top * 1.05 / divisor)
        ax2.set_ylabel(f"backbone parameters ({unit})" if unit else "backbone parameters", color="tab:orange")
        ax2.tick_params(axis="y", colors="tab:orange")
        _ghost_twin_lines(ax2, ax)
        ax2.legend(handles=handles, loc="best", framealpha=0.9)  # on the top axes: not drawn over
    else:
        ax.legend(handles=handles, loc="best", framealpha=0.9)
    name = model.get("name")
    ax.set_title(f"Density and backbone parameters over training{f' - {name}' if name else ''}")
    return fig


def _heatmap(
    fig: Figure,
    ax: Axes,
    matrix: Any,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    vmax: float,
    cbar_label: str,
    annotate: bool,
    fontsize: float = 8.0,
) -> None:
    """Draw a rows x columns heat map with optional numbers in the cells (NaN cells shown grey)."""
    import matplotlib
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.88")
    im = ax.imshow(
        np.ma.masked_invalid(matrix),
        aspect="auto",
        cmap=cmap,
        vmin=0,
        vmax=max(vmax, 1),
        interpolation="nearest",
    )
    ax.grid(False)
    n_rows, n_cols = matrix.shape
    ax.set_xticks(range(n_cols), col_labels, fontsize=8)
    step = max(1, math.ceil(n_rows / 40))
    ax.set_yticks(
        range(0, n_rows, step),
        [row_labels[i] for i in range(0, n_rows, step)],
        fontsize=8 if n_rows <= 24 else 7,
    )
    cbar = fig.colorbar(im, ax=ax, label=cbar_label, shrink=0.9, aspect=max(20, n_rows), pad=0.02)
    cbar.locator = MaxNLocator(integer=True)  # counts: no 0.5-heads ticks
    cbar.update_ticks()
    if annotate:
        for r in range(n_rows):
            for c in range(n_cols):
                v = matrix[r, c]
                if not np.isfinite(v):
                    continue
                dark = v / max(vmax, 1) < 0.55  # viridis is dark at the low end
                ax.text(
                    c,
                    r,
                    f"{v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if dark else "black",
                )


def event_name(event: Mapping[str, Any], position: int) -> str:
    """``"#3"`` for pruning event 3, ``"pre-tune"`` for the one-shot pruning before tuning."""
    if event.get("kind") == "pretune":
        return "pre-tune"
    return f"#{event.get('index', position)}"


def _event_label(event: Mapping[str, Any], position: int) -> str:
    """Short column label of an event: name and step."""
    step = event.get("step")
    name = event_name(event, position)
    return f"{name}\nstep {step}" if step is not None else name


def _plot_structure(data: Mapping[str, Any]) -> Figure | None:
    """Heat maps of heads and FFN neurons kept per layer (rows = layers, columns = start + events)."""
    import numpy as np

    model = mapping_of(data.get("model"))
    events = [e for e in rows_of(data.get("events")) if "heads_per_layer" in e or "ffn_per_layer" in e]
    if not events:
        return None
    panels = []
    for key, model_key, title, cbar in (
        ("heads_per_layer", "heads_per_layer", "Attention heads kept per layer", "heads kept"),
        ("ffn_per_layer", "ffn_per_layer", "FFN neurons kept per layer", "neurons kept"),
    ):
        columns = [e.get(key) if isinstance(e.get(key), list) else None for e in events]
        if not any(columns):
            continue
        start = per_layer(model.get(model_key), model.get("num_layers"))
        cols = ([start] if start else []) + columns
        n_layers = max(len(c) for c in cols if c)
        matrix = np.full((n_layers, len(cols)), np.nan)
        for j, col in enumerate(cols):
            for i, v in enumerate(col or []):
                if is_num(v):
                    matrix[i, j] = v
        labels = (["start"] if start else []) + [_event_label(e, i) for i, e in enumerate(events)]
        vmax = float(np.nanmax(matrix)) if np.isfinite(matrix).any() else 1.0
        panels.append((matrix, labels, vmax, title, cbar))
    if not panels:
        return None

    n_layers = max(p[0].shape[0] for p in panels)
    n_cols = max(p[0].shape[1] for p in panels)
    height = min(14.0, max(4.2, 0.32 * n_layers + 2.2))
    width_per_panel = min(9.0, max(4.8, 0.62 * n_cols + 2.2))
    fig = new_figure(width_per_panel * len(panels), height)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    row_h_in = (height - 2.2) / n_layers
    annotate = row_h_in >= 0.17 and n_cols <= 16
    for ax, (matrix, labels, vmax, title, cbar) in zip(axes, panels, strict=True):
        digits = len(str(int(vmax)))
        fontsize = 8.0 if (digits <= 3 or n_cols <= 8) else 6.5
        _heatmap(
            fig,
            ax,
            matrix,
            row_labels=[str(i) for i in range(matrix.shape[0])],
            col_labels=labels,
            vmax=vmax,
            cbar_label=cbar,
            annotate=annotate,
            fontsize=fontsize,
        )
        ax.set_title(title)
        ax.set_xlabel("pruning event")
        ax.set_ylabel("layer")

    hidden = [model.get("hidden_size")] + [e.get("hidden_size") for e in events]
    known = [str(int(h)) if is_num(h) else "?" for h in hidden]
    if any(is_num(h) for h in hidden):
        if len(known) > 12:
            known = [*known[:6], "...", *known[-5:]]
        subtitle = "hidden size: " + " → ".join(known)
        if is_num(hidden[0]):
            subtitle = "hidden size: " + known[0] + " (start) → " + " → ".join(known[1:])
    else:
        subtitle = ""
    title = "Structure kept after each pruning event"
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title)
    return fig


def _short_names(names: Sequence[str]) -> list[str]:
    """Adapter names without the dotted prefix they all share (``bert.encoder.layer.``)."""
    parts = [n.split(".") for n in names]
    if len(parts) < 2:
        return [n.split(".")[-1] if len(n) > 30 else n for n in names]
    common = 0
    for group in zip(*parts, strict=False):
        if len(set(group)) != 1:
            break
        common += 1
    common = min(common, min(len(p) for p in parts) - 1)
    short = [".".join(p[common:]) for p in parts]
    return [s if len(s) <= 34 else "…" + s[-33:] for s in short]


def _plot_ranks(data: Mapping[str, Any]) -> Figure | None:
    """Adapter ranks over events (lines, or a heat map for many adapters) and trainable parameters."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    events = rows_of(data.get("events"))
    config = mapping_of(data.get("config"))
    rank_events = [e for e in events if isinstance(e.get("ranks"), dict) and e["ranks"]]
    names: list[str] = []
    for e in rank_events:
        names += [n for n in e["ranks"] if n not in names]
    # Trainable parameters (adapters + task head + distillation layers) per step, or else per event;
    # the adapters' own parameter count at each event when the event reports it.
    counts = []
    xs, ys = _series(rows_of(data.get("steps")), "trainable_params")
    if xs:
        counts.append((xs, ys, "trainable parameters (all)", "tab:green", None))
    else:
        xs, ys = _series(events, "trainable_params")
        if xs:
            counts.append((xs, ys, "trainable parameters (all)", "tab:green", "o"))
    xs, ys = _series(events, "adapter_params")
    if xs:
        counts.append((xs, ys, "adapter parameters (at events)", "tab:purple", "D"))
    if not names and not counts:
        return None

    many = len(names) > _MAX_RANK_LINES
    height = min(14.0, max(4.8, 0.24 * len(names) + 2.0)) if many else 4.8
    panels = (1 if names else 0) + (1 if counts else 0)
    fig = new_figure(6.5 * panels if not many else 7.5 + 5.5 * (panels - 1), height)
    if panels == 2:
        axes = fig.subplots(1, 2, width_ratios=[1.35, 1] if many else [1, 1])
    else:
        axes = [fig.add_subplot()]
    ax_iter = iter(axes)

    if names:
        ax = next(ax_iter)
        initial = config_value(config, "initial_rank")
        start = [float(initial)] * len(names) if is_num(initial) else None
        labels = (["start"] if start else []) + [_event_label(e, i) for i, e in enumerate(rank_events)]
        matrix = np.full((len(names), len(labels)), np.nan)
        offset = 1 if start else 0
        if start:
            matrix[:, 0] = start
        for j, e in enumerate(rank_events):
            for i, n in enumerate(names):
                if is_num(e["ranks"].get(n)):
                    matrix[i, j + offset] = e["ranks"][n]
        short = _short_names(names)
        if many:
            vmax = float(np.nanmax(matrix)) if np.isfinite(matrix).any() else 1.0
            row_h = (height - 2.0) / len(names)
            _heatmap(
                fig,
                ax,
                matrix,
                row_labels=short,
                col_labels=labels,
                vmax=vmax,
                cbar_label="rank",
                annotate=row_h >= 0.17 and len(labels) <= 16,
                fontsize=7,
            )
            ax.set_xlabel("pruning event")
            ax.set_title(f"Adapter ranks ({len(names)} adapters)")
        else:
            x = np.arange(len(labels))
            markers = "osD^v<>pP*hX"
            for i, n in enumerate(short):
                # Adapters often share a rank; later lines are thinner so identical ones stay visible.
                thick = (len(short) - 1 - i) / max(len(short) - 1, 1)
                ax.plot(
                    x,
                    matrix[i],
                    marker=markers[i % len(markers)],
                    linewidth=1.2 + 2.4 * thick,
                    markersize=4 + 4 * thick,
                    label=n,
                    alpha=0.85,
                )
            ax.set_xticks(x, labels, fontsize=8)
            ax.set_xlabel("pruning event")
            ax.set_ylabel("adapter rank")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7.5, loc="upper left", ncol=1 if len(names) <= 6 else 2, framealpha=0.9)
            ax.set_title("Adapter ranks")

    if counts:
        ax = next(ax_iter)
        top = max(max(ys) for _, ys, _, _, _ in counts)
        divisor, unit = _count_unit(top)
        for xs, ys, label, color, marker in counts:
            ax.plot(xs, [v / divisor for v in ys], color=color, marker=marker, linewidth=1.8, label=label)
        _mark_events(ax, _event_steps(data))
        ax.set_ylim(bottom=0, top=top * 1.1 / divisor if top > 0 else 1)
        _step_axis(ax)
        ax.set_ylabel(f"parameters ({unit})" if unit else "parameters")
        ax.set_title("Trainable parameters")
        ax.legend(loc="lower right", framealpha=0.9)
    return fig


def _ema(values: Sequence[float], span: int) -> list[float]:
    """Exponential moving average with the usual ``alpha = 2 / (span + 1)``."""
    alpha = 2.0 / (span + 1)
    out: list[float] = []
    acc = values[0]
    for v in values:
        acc = alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def _is_loss_like(name: str) -> bool:
    """Metrics where lower is better and the scale differs from accuracy-like ones."""
    low = name.lower()
    return "loss" in low or "perplexity" in low or low.endswith("ppl")


def _plot_loss(data: Mapping[str, Any]) -> Figure | None:
    """Training loss (and its components) vs step, and the dev metrics vs step on a second panel."""
    steps = rows_of(data.get("steps"))
    evals = rows_of(data.get("evals"))
    losses = [(k, *_series(steps, k)) for k in _LOSS_KEYS]
    losses = [(k, x, y) for k, x, y in losses if x]
    metric_names = metric_keys(evals)
    if not losses and not metric_names:
        return None
    n_panels = (1 if losses else 0) + (1 if metric_names else 0)
    fig = new_figure(9.0, 3.9 * n_panels + 0.4)
    axes = fig.subplots(n_panels, 1, sharex=True, squeeze=False)[:, 0]
    ev = _event_steps(data)
    i = 0
    if losses:
        ax = axes[i]
        i += 1
        for key, x, y in losses:
            color = _LOSS_COLORS.get(key)
            label = key.replace("_", " ")
            if len(y) > 60:
                ax.plot(x, y, color=color, linewidth=0.7, alpha=0.25)
                ax.plot(
                    x, _ema(y, max(5, len(y) // 40)), color=color, linewidth=1.8, label=f"{label} (smoothed)"
                )
            else:
                ax.plot(x, y, color=color, linewidth=1.6, marker="." if len(y) < 30 else None, label=label)
        positive = [v for _, _, y in losses for v in y if v > 0]
        if (
            positive
            and min(positive) > 0
            and max(positive) / min(positive) > 200
            and len(positive) == sum(len(y) for _, _, y in losses)
        ):
            ax.set_yscale("log")  # components on very different scales (e.g. tiny distillation terms)
        _mark_events(ax, ev)
        ax.set_ylabel("training loss" + (" (log scale)" if ax.get_yscale() == "log" else ""))
        ax.set_title("Training loss")
        ax.legend(loc="best", framealpha=0.9)
    if metric_names:
        ax = axes[i]
        plain = [k for k in metric_names if not _is_loss_like(k)]
        lossy = [k for k in metric_names if _is_loss_like(k)]
        handles = []
        main_keys, twin_keys = (plain, lossy) if plain else (lossy, [])
        for k in main_keys:
            x, y = _series(({"step": e.get("step"), **mapping_of(e.get("metrics"))} for e in evals), k)
            handles += ax.plot(x, y, marker="o", linewidth=1.6, markersize=4, label=k)
        ax.set_ylabel(main_keys[0] if len(main_keys) == 1 else "dev metric")
        if twin_keys:
            ax2 = ax.twinx()
            ax2.grid(False)
            grays = ("0.35", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
            for j, k in enumerate(twin_keys):
                x, y = _series(({"step": e.get("step"), **mapping_of(e.get("metrics"))} for e in evals), k)
                handles += ax2.plot(
                    x,
                    y,
                    marker="s",
                    linestyle="--",
                    linewidth=1.3,
                    markersize=4,
                    color=grays[j % len(grays)],
                    label=f"{k} (right axis)",
                )
            ax2.set_ylabel(twin_keys[0] if len(twin_keys) == 1 else "dev loss")
        handles += _mark_events(ax, ev)
        ax.set_title("Dev metrics")
        if twin_keys:
            _ghost_twin_lines(ax2, ax)
            ax2.legend(handles=handles, loc="best", framealpha=0.9)  # on the top axes: not drawn over
        else:
            ax.legend(handles=handles, loc="best", framealpha=0.9)
    _step_axis(axes[-1])
    return fig


def _plot_salience(data: Mapping[str, Any]) -> Figure | None:
    """Histograms (log x) of the latest salience scores of heads, neurons and hidden dimensions.

    Zeros cannot sit on a log axis; they are counted in each panel's note instead. Snapshots kept per
    pruning event (``salience_history``, last five) are drawn as grey outlines, darker = later.
    """
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    snap = mapping_of(data.get("salience"))
    kinds = (
        ("heads", "Attention heads", "tab:blue"),
        ("neurons", "FFN neurons", "tab:orange"),
        ("hidden", "Hidden dimensions", "tab:green"),
    )
    values = {k: [v for v in (snap.get(k) or []) if is_num(v)] for k, _, _ in kinds}
    if not any(values.values()):
        return None
    history = [h for h in rows_of(data.get("salience_history")) if h.get("step") != snap.get("step")][-5:]
    shades = [str(round(0.78 - 0.5 * (j + 1) / (len(history) + 1), 2)) for j in range(len(history))]

    fig = new_figure(14.0, 4.6 if history else 4.2)
    axes = fig.subplots(1, 3)
    for ax, (key, title, color) in zip(axes, kinds, strict=True):
        arr = np.asarray(values[key], dtype=float)
        pos = arr[arr > 0]
        zeros, neg = int((arr == 0).sum()), int((arr < 0).sum())
        ax.set_title(f"{title} (n={arr.size:,})")
        if pos.size == 0:
            message = "no scores logged" if arr.size == 0 else "no score above 0"
            ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        old = [
            np.asarray([v for v in (h.get(key) or []) if is_num(v) and v > 0], dtype=float) for h in history
        ]
        everything = np.concatenate([pos, *old])
        lo, hi = float(everything.min()), float(everything.max())
        if hi / lo < 1.5:  # (nearly) one value: give the bins some width
            lo, hi = lo / 1.5, hi * 1.5
        n_bins = int(min(40, max(10, 2 * math.sqrt(pos.size))))
        bins = np.logspace(math.log10(lo), math.log10(hi), n_bins + 1)
        for scores, shade in zip(old, shades, strict=True):
            if scores.size:
                ax.hist(scores, bins=bins, histtype="step", color=shade, linewidth=1.0)
        ax.hist(pos, bins=bins, color=color, alpha=0.8, edgecolor="white", linewidth=0.4)
        median = float(np.median(pos))
        ax.axvline(median, color="black", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("salience score (log scale)")
        ax.set_ylabel("count")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if math.log10(hi / lo) < 2:  # narrow range: label 1-2-5 steps, not crowded minor ticks
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.2g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        note = f"median: {median:.3g}\nzeros: {zeros:,}" + (f"\nnegative: {neg:,}" if neg else "")
        ax.text(
            0.02,
            0.97,
            note,
            ha="left",
            va="top",
            transform=ax.transAxes,
            fontsize=8.5,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"},
        )
    handles: list[Any] = [
        Patch(facecolor="0.55", label=f"scores at step {snap.get('step')}"),
        Line2D([], [], color="black", linestyle="--", linewidth=1, label="median"),
    ]
    handles += [
        Line2D([], [], color=shade, linewidth=1.2, label=f"event {h.get('event')} (step {h.get('step')})")
        for h, shade in zip(history, shades, strict=True)
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"Salience distributions at step {snap.get('step')} (zeros counted, not drawn)")
    return fig


PLOT_FUNCTIONS: dict[str, Callable[[Mapping[str, Any]], Figure | None]] = {
    "density": _plot_density,
    "structure": _plot_structure,
    "ranks": _plot_ranks,
    "loss": _plot_loss,
    "salience": _plot_salience,
}
PLOT_TITLES = {
    "density": "Density and backbone parameters over training",
    "structure": "Heads and FFN neurons kept per layer",
    "ranks": "Adapter ranks and trainable parameters",
    "loss": "Training loss and dev metrics",
    "salience": "Salience distributions",
}
