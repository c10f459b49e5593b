"""The causal-LM section of the benchmark page: perplexity on both domains, after pruning and tuning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aptune.report.format import DASH, fmt_fixed
from aptune.report.tables import md_table

__all__ = ["domain_lines"]


def _two_places(value: Any) -> str:
    return fmt_fixed(value, 2) if isinstance(value, (int, float)) else DASH


def domain_lines(summary: Mapping[str, Any]) -> list[str]:
    """Per headline job: stack parameters and perplexities on BBC dev/test and the held-out domain.

    Returns:
        Markdown lines (empty when no job recorded domain perplexities, e.g. classification).
    """
    rows = [r for r in summary.get("jobs") or [] if r.get("domain_perplexity")]
    if not rows:
        return []
    data = summary.get("data") or {}
    tokens = data.get("tokens") or {}
    table = []
    for row in rows:
        domains = row["domain_perplexity"]
        before = domains.get("after_pruning") or {}
        after = domains.get("after_tuning") or {}
        stack = row.get("stack_params")
        table.append(
            [
                f"`{row['id']}`",
                row["label"],
                fmt_fixed(stack / 1e6, 2) if stack else DASH,
                _two_places(domains.get("after_pruning_density")),
                _two_places(before.get("dev")),
                _two_places(before.get("heldout")),
                _two_places(after.get("dev")),
                _two_places(after.get("test")),
                _two_places(after.get("heldout")),
            ]
        )
    head = [
        "job",
        "method",
        "stack params (M)",
        "density after pruning",
        "dev after pruning",
        "held-out after pruning",
        "dev after tuning",
        "test after tuning",
        "held-out after tuning",
    ]
    lines = [
        "Perplexity (lower is better). *After pruning* is before the first tuning step (for dense LoRA:",
        "the pretrained model), at the backbone density in its column: APT prunes one-shot only to its",
        "pre-tuning density there and reaches the target during tuning, so its two columns are not at the",
        "same structure. Stack: the attention and FFN Linear weights of the exported model.",
        "",
        *md_table(head, table, "ll" + "r" * 7),
        "",
    ]
    if data.get("heldout_source"):
        lines.append(
            f"Held-out domain: {data['heldout_source']} ({data.get('heldout_licence')}), "
            f"{data.get('num_heldout')} documents, {tokens.get('heldout', '?')} tokens; never used to choose "
            "anything."
        )
    if tokens:
        lines.append(
            "Tokens per split: "
            + ", ".join(f"{split} {count:,}" for split, count in tokens.items() if isinstance(count, int))
            + "."
        )
    return lines
