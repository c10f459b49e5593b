"""Figures shared by the run report and the benchmark pages: one size, style and PNG writer.

Figures are `matplotlib.figure.Figure` objects with an Agg canvas attached directly, so neither
importing this module nor drawing a figure imports ``pyplot`` or changes matplotlib's backend.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from aptune.atomic import write_bytes_atomic

if TYPE_CHECKING:  # pragma: no cover - typing only; matplotlib is imported lazily
    from matplotlib.figure import Figure

__all__ = ["DPI", "PLOT_STYLE", "new_figure", "plot_style", "png_bytes", "save_png"]

DPI = 110
"""Resolution of every PNG aptune writes."""

PLOT_STYLE = {
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "figure.titlesize": 12,
    "axes.spines.top": False,
}
"""matplotlib rc settings of the run report's plots (see `plot_style`)."""


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout ``Figure`` with its own Agg canvas (no pyplot, no global backend change).

    Args:
        width: Width in inches.
        height: Height in inches.

    Returns:
        The empty figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


@contextlib.contextmanager
def plot_style() -> Iterator[None]:
    """Apply `PLOT_STYLE` inside the block (restored afterwards)."""
    import matplotlib

    with matplotlib.rc_context(PLOT_STYLE):
        yield


def png_bytes(fig: Figure) -> bytes:
    """The figure rendered as PNG (white background, `DPI`).

    Args:
        fig: The figure to render.

    Returns:
        The PNG file content.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` and write it to ``path`` atomically.

    Args:
        fig: The figure.
        path: Destination ``.png`` file (folders are created).

    Returns:
        ``path`` as a `Path`.

    Raises:
        OSError: the file cannot be written.
    """
    return write_bytes_atomic(path, png_bytes(fig))
