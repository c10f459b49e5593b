"""Number formatting shared by the run report and the benchmark pages: one look for every figure."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from aptune.report.values import is_num

__all__ = [
    "DASH",
    "NA",
    "byte_unit",
    "fmt_bytes",
    "fmt_density",
    "fmt_fixed",
    "fmt_int",
    "fmt_number",
    "fmt_percent",
    "fmt_seconds",
    "fmt_sig",
    "fmt_spread",
    "fmt_value",
]

DASH = "–"
"""What an empty table cell shows."""

NA = "n/a"
"""What a sentence shows for a figure that was not measured."""


def fmt_int(value: Any) -> str:
    """``12,345`` or a dash."""
    return f"{round(value):,}" if is_num(value) else DASH


def fmt_density(value: Any) -> str:
    """Three decimals or a dash."""
    return f"{value:.3f}" if is_num(value) else DASH


def fmt_number(value: Any) -> str:
    """A metric or other number: ints with separators, floats with 4 decimals (or 3 significant digits)."""
    if isinstance(value, bool) or value is None:
        return DASH if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not is_num(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if abs(value) >= 0.01:
        return f"{value:.4f}"
    return f"{value:.3g}"


def fmt_seconds(seconds: Any) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``1 h 02 min``."""
    if not is_num(seconds):
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def fmt_bytes(value: Any) -> str:
    """``3.21 GiB`` (binary units) for a byte count."""
    if not is_num(value):
        return fmt_value("", value)
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} TiB"


_BYTE_UNITS = {
    "bytes": 1,
    "kb": 1024,
    "kib": 1024,
    "mb": 1024**2,
    "mib": 1024**2,
    "gb": 1024**3,
    "gib": 1024**3,
}


def byte_unit(key: str) -> int | None:
    """Bytes per unit named in a key, or ``None``.

    The unit is a ``_``-separated word of the key, at its end or inside it: ``peak_rss_mb`` and
    ``peak_rss_mb_after_export`` are both in MiB, ``vram_gib`` in GiB. A ratio (``rss_mb_ratio``) has
    no unit.

    Args:
        key: The field name.

    Returns:
        The scale to bytes (1 for ``bytes``, 1024**2 for ``mb``/``mib``, ...), or ``None``.
    """
    words = key.lower().split("_")
    if "ratio" in words:
        return None
    units = [_BYTE_UNITS[w] for w in words[1:] if w in _BYTE_UNITS]
    return units[-1] if units else None


def fmt_value(key: str, value: Any) -> str:
    """Format a free-form value by its key.

    Memory: a unit word in the key (``_bytes``, ``_mb``, ``_gb``, ``_kib``, ``_mib``, ``_gib``, at the
    end or followed by more words, see `byte_unit`) gives the unit, otherwise a key containing
    ``memory`` is taken as bytes; ``..._seconds`` / ``..._time`` are durations; ``ratio`` / ``density``
    get three decimals; whole numbers get thousands separators.

    Args:
        key: The field name (decides the unit).
        value: The value.

    Returns:
        The text of a table cell.
    """
    low = key.lower()
    if is_num(value):
        scale = byte_unit(low)
        if scale is not None:
            return fmt_bytes(value * scale)
        if "memory" in low:
            return fmt_bytes(value)
        if low.endswith(("seconds", "_time", "_s")) or low in {"time", "seconds"}:
            return fmt_seconds(value)
        if "ratio" in low or "density" in low:
            return f"{value:.3f}"
        if isinstance(value, int) or (abs(value) >= 1000 and float(value).is_integer()):
            return fmt_int(value)
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 90 else text[:87] + "..."
    return DASH if value is None else str(value)


def fmt_sig(value: Any, missing: str = NA) -> str:
    """Three significant digits, without an exponent (``0.0123``, ``1.23``, ``123``, ``12345``).

    Args:
        value: A number.
        missing: Text for ``None`` or a non-finite value.

    Returns:
        The text.
    """
    if not is_num(value):
        return missing
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def fmt_fixed(value: Any, digits: int = 3, missing: str = NA) -> str:
    """A fixed number of decimals.

    Args:
        value: A number.
        digits: Decimals.
        missing: Text for ``None`` or a non-finite value.

    Returns:
        The text.
    """
    return f"{value:.{digits}f}" if is_num(value) else missing


def fmt_percent(value: Any, missing: str = NA) -> str:
    """A fraction as a percentage with one decimal (``0.9712`` -> ``97.1 %``).

    Args:
        value: A fraction.
        missing: Text for ``None`` or a non-finite value.

    Returns:
        The text.
    """
    return f"{100 * value:.1f} %" if is_num(value) else missing


def fmt_spread(stats: Mapping[str, Any] | None, digits: int | None = 3, scale: float = 1.0) -> str:
    """``median [min–max]`` of a spread over seeds (the range only when it is not zero).

    Args:
        stats: ``{"median", "min", "max", "n"}`` or ``None``.
        digits: Decimals, or ``None`` for three significant digits (`fmt_sig`).
        scale: Factor applied first (100 for a percentage).

    Returns:
        The table cell (a dash when ``stats`` is missing).
    """
    if not stats:
        return DASH

    def one(value: float) -> str:
        return fmt_sig(value * scale) if digits is None else fmt_fixed(value * scale, digits)

    text = one(stats["median"])
    if stats.get("n", 1) > 1 and stats["max"] != stats["min"]:
        return f"{text} [{one(stats['min'])}–{one(stats['max'])}]"
    return text
