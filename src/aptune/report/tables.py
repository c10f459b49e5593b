"""Markdown tables shared by the run report and the benchmark pages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["md_escape", "md_table"]


def md_escape(text: Any) -> str:
    """Make text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> list[str]:
    """Lines of a Markdown table; ``align`` is one letter per column (``l`` / ``r``)."""
    align = align or "l" * len(headers)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(md_escape(h) for h in headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return lines
