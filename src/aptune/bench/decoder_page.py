"""The causal-LM section of the benchmark page: perplexity on both domains, after pruning and tuning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aptune.report.format import DASH, fmt_fixed
from aptune.report.tables import md_table

__all__ = ["domain_lines", "heldout_kind_lines", "structure_lines"]


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


def heldout_kind_lines(summary: Mapping[str, Any]) -> list[str]:
    """Per job that recorded it: the held-out perplexity after tuning split by kind of token.

    Returns:
        Markdown lines (empty when no job recorded ``heldout_kinds``; jobs run before the suite
        recorded them, or imported from another machine without them, are left out).
    """
    from aptune.bench.token_kinds import KINDS

    rows = [r for r in summary.get("jobs") or [] if r.get("heldout_kinds")]
    if not rows:
        return []
    table = []
    for row in rows:
        kinds = row["heldout_kinds"]
        total = (kinds.get("all") or {}).get("tokens") or 0
        cells = [f"`{row['id']}`", row["label"]]
        for kind in (*KINDS, "all"):
            entry = kinds.get(kind) or {}
            share = f" ({100 * entry['tokens'] / total:.0f} %)" if total and kind != "all" else ""
            perplexity = entry.get("perplexity")
            cells.append(f"{perplexity:,.1f}{share}" if isinstance(perplexity, (int, float)) else DASH)
        table.append(cells)
    head = ["job", "method", "line breaks", "line starts", "other tokens", "all"]
    return [
        "Held-out perplexity after tuning by kind of target token (share of the tokens): a *line break*",
        "holds a newline, a *line start* is the first token after one (a speaker's name, a verse line's",
        "first word), *other* is the rest. BBC's text breaks only between paragraphs, with two newlines,",
        "so tuning on it teaches a newline to follow a newline; the held-out text breaks lines with one.",
        "Only jobs that recorded the split are listed.",
        "",
        *md_table(head, table, "ll" + "r" * 4),
        "",
    ]


def _thirds(values: list[int]) -> list[int]:
    """Sums over the first, middle and last third of the layers (the first thirds one longer)."""
    size, extra = divmod(len(values), 3)
    bounds = [0]
    for part in range(3):
        bounds.append(bounds[-1] + size + (1 if part < extra else 0))
    return [sum(values[bounds[i] : bounds[i + 1]]) for i in range(3)]


def structure_lines(summary: Mapping[str, Any]) -> list[str]:
    """Per pruned job: query heads and FFN neurons kept in the first, middle and last third of the
    layers (share of the dense model when its shape is known), and the hidden size.

    Returns:
        Markdown lines (empty when no job recorded a per-layer structure).
    """
    dense = (summary.get("data") or {}).get("dense_structure") or {}
    layers = dense.get("layers")
    rows = []
    for row in summary.get("jobs") or []:
        structure = row.get("structure") or {}
        heads, ffn = structure.get("heads_per_layer"), structure.get("ffn_per_layer")
        if not heads or not ffn or len(heads) != len(ffn) or (layers and len(heads) != layers):
            continue  # (an encoder-decoder lists both stacks: not split into thirds here)
        cells = [f"`{row['id']}`", row["label"]]
        for counts, per_layer in ((heads, dense.get("heads")), (ffn, dense.get("ffn"))):
            for total, span in zip(_thirds(counts), _thirds([1] * len(counts)), strict=True):
                cells.append(
                    f"{total:,} ({100 * total / (per_layer * span):.0f} %)"
                    if per_layer and span
                    else f"{total:,}"
                )
        cells.append(str(structure.get("hidden_size", DASH)))
        rows.append(cells)
    if not rows:
        return []
    head = [
        "job",
        "method",
        "heads, first third",
        "heads, middle",
        "heads, last third",
        "FFN neurons, first third",
        "FFN, middle",
        "FFN, last third",
        "hidden",
    ]
    title = "Kept in the exported model, by third of the layers"
    if dense:
        title += (
            f" (share of the dense model's {dense['heads']} query heads and {dense['ffn']:,} FFN neurons per "
            f"layer, {layers} layers, hidden {dense['hidden']})"
        )
    return [title + ".", "", *md_table(head, rows, "ll" + "r" * 7), ""]
