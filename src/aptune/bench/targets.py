"""The benchmark's targets as a table of records: what is measured, the limit and the comparison.

Each `Target` reads one figure from the per-method groups of `aptune.bench.results.summarize` (medians
over seeds) and compares it with its limit; a target whose figure was not measured is not evaluated
(``met`` is ``None``), and one that needs a time-to-accuracy that some seed never reached is missed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aptune.bench.config import PRUNE_THEN_LORA, BenchConfig
from aptune.bench.records import ALLOCATOR_NAMES, is_lora_prune, median_of
from aptune.report.format import NA, fmt_fixed, fmt_percent, fmt_sig

__all__ = ["TARGETS", "Reading", "Target", "TargetContext", "evaluate_targets"]


@dataclass(frozen=True)
class Reading:
    """What a target measured.

    Attributes:
        value: The figure compared with the limit (``None``: not measured, the target is not evaluated).
        text: The measurement in words, for the page.
        missed: Why the target is missed whatever ``value`` is (a seed never reached the bar), or "".
        complete: Whether every figure the target needs was measured. Without all of them the target
            is missed when ``value`` (the worst figure measured) already breaks the limit, and not
            evaluated otherwise.
    """

    value: float | None
    text: str
    missed: str = ""
    complete: bool = True


@dataclass
class TargetContext:
    """What the target readings look at: the config and the groups by (label, density).

    Attributes:
        config: The benchmark configuration.
        groups: ``{(label, density): group}`` as built by `summarize`.
        reference: The TTA reference (``metric``, ``threshold``, ...).
    """

    config: BenchConfig
    groups: Mapping[tuple[str, float], Mapping[str, Any]]
    reference: Mapping[str, Any]

    @property
    def density(self) -> float:
        """The headline density."""
        return self.config.target_density

    def group(self, method: str, density: float | None = None) -> Mapping[str, Any] | None:
        """The headline group (no ablation variant) of ``method`` at ``density`` (any when ``None``)."""
        for g in self.groups.values():
            same_density = density is None or math.isclose(g["density"], density)
            if g["method"] == method and not g["variant"] and same_density:
                return g
        return None

    def lora_prune(self) -> Mapping[str, Any] | None:
        """The better LoRA+Prune at the headline density: the higher median test metric.

        Baselines without a test metric rank last; with none measured, the first one is returned.
        """
        candidates = [
            g
            for g in self.groups.values()
            if is_lora_prune(g["method"]) and not g["variant"] and math.isclose(g["density"], self.density)
        ]
        if not candidates:
            return None
        greater = self.reference.get("greater_is_better", True)

        def key(g: Mapping[str, Any]) -> float:
            m = median_of(g["metric"])
            if m is None:
                return -math.inf
            return m if greater else -m

        return max(candidates, key=key)


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda value, limit: value < limit - 1e-12,
    ">=": lambda value, limit: value >= limit - 1e-12,
    "<=": lambda value, limit: value <= limit + 1e-12,
}


@dataclass(frozen=True)
class Target:
    """One claim the benchmark checks: ``measure(context).value <compare> limit``.

    Attributes:
        id: Stable name (``accuracy_vs_ft``).
        claim: The claim in words; ``{density}`` and ``{limit}`` are filled in.
        measure: Reads the figure from the groups.
        limit: The bound.
        compare: ``">="``, ``"<="`` or ``"<"``.
        tasks: The tasks the target applies to.
    """

    id: str
    claim: str
    measure: Callable[[TargetContext], Reading]
    limit: float
    compare: str
    tasks: tuple[str, ...] = ("classification",)

    def evaluate(self, ctx: TargetContext) -> dict[str, Any]:
        """Measure and compare.

        Args:
            ctx: Config, groups and reference.

        Returns:
            ``{"id", "claim", "met", "measured", "value", "limit", "compare"}``; ``met`` is ``None``
            when the figure was not measured, ``False`` when a seed never reached a needed bar.
        """
        reading = self.measure(ctx)
        if reading.missed:
            met: bool | None = False
        elif reading.value is None:
            met = None
        else:
            met = _COMPARE[self.compare](reading.value, self.limit)
            if met and not reading.complete:
                met = None  # the figures still missing may break the limit
        text = reading.text + (f" ({reading.missed})" if reading.missed else "")
        return {
            "id": self.id,
            "claim": self.claim.format(density=f"{ctx.density:g}", limit=f"{self.limit:g}"),
            "met": met,
            "measured": text,
            "value": reading.value,
            "limit": self.limit,
            "compare": self.compare,
        }


def _med(group: Mapping[str, Any] | None, name: str) -> float | None:
    return median_of(group.get(name)) if group else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _accuracy_vs_ft(ctx: TargetContext) -> Reading:
    a, f = _med(ctx.group("apt", ctx.density), "metric"), _med(ctx.group("ft"), "metric")
    ratio = _ratio(a, f)
    return Reading(ratio, f"APT {fmt_percent(a)} vs FT {fmt_percent(f)}: {fmt_percent(ratio)} of FT")


def _accuracy_vs_lora_prune(ctx: TargetContext) -> Reading:
    lp = ctx.lora_prune()
    a, p = _med(ctx.group("apt", ctx.density), "metric"), _med(lp, "metric")
    gap = None if a is None or p is None else a - p
    name = lp["label"] if lp else "LoRA+Prune"
    points = NA if gap is None else f"{100 * gap:+.1f} points"
    return Reading(gap, f"APT {fmt_percent(a)} vs {name} {fmt_percent(p)}: {points}")


def _not_reached(label: str, stats: Mapping[str, Any] | None) -> str:
    if stats is None or stats["all_reached"]:
        return ""
    return f"{label} did not reach the bar in {stats['n'] - stats['reached']} of {stats['n']} seeds"


def _tta_vs_lora_prune(ctx: TargetContext) -> Reading:
    apt, lp = ctx.group("apt", ctx.density), ctx.lora_prune()
    if ctx.reference.get("threshold") is None or apt is None or lp is None:
        return Reading(None, "no bar (the reference has no test metric)" if apt and lp else "no result")
    t_apt, t_lp = apt["tta_seconds"], lp["tta_seconds"]
    ratio = _ratio(median_of(t_apt), median_of(t_lp))
    any_ratio = _ratio(median_of(apt["tta_any_seconds"]), median_of(lp["tta_any_seconds"]))
    text = (
        f"APT {fmt_sig(median_of(t_apt), 'not reached')} s vs {lp['label']} "
        f"{fmt_sig(median_of(t_lp), 'not reached')} s: {fmt_fixed(ratio, 2)}x "
        f"(any structure: {fmt_fixed(any_ratio, 2)}x)"
    )
    missed = "; ".join(m for m in (_not_reached("APT", t_apt), _not_reached(lp["label"], t_lp)) if m)
    return Reading(ratio, text, missed)


def _memory_vs_lora(ctx: TargetContext) -> Reading:
    apt, lora = ctx.group("apt", ctx.density), ctx.group("lora")
    if apt is None or lora is None:
        return Reading(None, "no result")
    a_by, l_by = apt["peak_rss_mb_by_allocator"], lora["peak_rss_mb_by_allocator"]
    shared = [s for s in ("default", "pinned") if a_by.get(s) and l_by.get(s)]
    if not shared:
        settings = ", ".join(f"APT {s}" for s in a_by) + "; " + ", ".join(f"LoRA {s}" for s in l_by)
        return Reading(None, f"no allocator setting with both APT and LoRA ({settings})")
    parts, ratios = [], []
    for s in shared:
        a, b = median_of(a_by[s]), median_of(l_by[s])
        ratios.append(a / b)
        parts.append(
            f"{ALLOCATOR_NAMES.get(s, s)}: APT {fmt_fixed(a, 0)} MB vs LoRA {fmt_fixed(b, 0)} MB "
            f"= {a / b:.2f}x"
        )
    return Reading(max(ratios), "; ".join(parts))


def _latency_vs_dense(ctx: TargetContext) -> Reading:
    apt = ctx.group("apt", ctx.density)
    ratio = _med(apt, "latency_ratio")
    return Reading(
        ratio, f"{fmt_fixed(ratio)}x the dense latency (FLOP ratio {fmt_fixed(_med(apt, 'flop_ratio'))})"
    )


def _latency_vs_flops(ctx: TargetContext) -> Reading:
    vs = _med(ctx.group("apt", ctx.density), "latency_vs_implied")
    return Reading(vs, f"{fmt_fixed(vs, 2)}x the latency implied by its FLOP ratio")


def _step_after_pruning(ctx: TargetContext) -> Reading:
    apt = ctx.group("apt", ctx.density)
    step = _med(apt, "step_ratio")
    return Reading(
        step,
        f"{fmt_fixed(step, 2)}x (median step {fmt_sig(_med(apt, 'step_after_pruning_s'))} s after "
        f"pruning vs {fmt_sig(_med(apt, 'step_start_s'))} s at the start)",
    )


#: The domains of a causal-LM suite: (name, group field of its after-tuning perplexity).
_DOMAINS = (("test", "metric"), ("held-out", "heldout_metric"))


def _domains(ctx: TargetContext) -> tuple[tuple[str, str], ...]:
    """The test split, and the held-out domain when the suite has one."""
    return _DOMAINS if ctx.config.heldout else _DOMAINS[:1]


def _perplexity_ratios(ctx: TargetContext, others: Sequence[str]) -> Reading:
    """APT's perplexity over each of ``others``' on every domain (after tuning, medians over seeds).

    The value is the worst (largest) ratio measured; the reading is incomplete while a method or a
    domain has no figure (see `Reading.complete`)."""
    apt = ctx.group("apt", ctx.density)
    groups = [g for m in others if (g := ctx.group(m, None if m == "lora" else ctx.density))]
    if apt is None or not groups:
        return Reading(None, "no result")
    parts, ratios, complete = [], [], len(groups) == len(others)
    for g in groups:
        pairs = [(_med(apt, field), _med(g, field)) for _, field in _domains(ctx)]
        domain_ratios = [_ratio(a, b) for a, b in pairs]
        complete = complete and all(r is not None for r in domain_ratios)
        ratios += [r for r in domain_ratios if r is not None]
        figures = " / ".join(fmt_fixed(b, 1) for _, b in pairs)
        parts.append(f"{g['label']} {figures} ({' / '.join(f'{fmt_fixed(r, 2)}x' for r in domain_ratios)})")
    apt_figures = " / ".join(fmt_fixed(_med(apt, field), 1) for _, field in _domains(ctx))
    names = " / ".join(name for name, _ in _domains(ctx))
    text = f"{names} perplexity: APT {apt_figures} vs " + "; ".join(parts)
    if not complete:
        text += f" (not every method and domain measured: {len(groups)} of {len(others)} methods)"
    return Reading(max(ratios) if ratios else None, text, complete=complete)


def _perplexity_vs_prune_then_lora(ctx: TargetContext) -> Reading:
    return _perplexity_ratios(ctx, [m for m in PRUNE_THEN_LORA if m in ctx.config.method_list()])


def _perplexity_vs_lora(ctx: TargetContext) -> Reading:
    return _perplexity_ratios(ctx, ["lora"])


def _params_vs_prune_then_lora(ctx: TargetContext) -> Reading:
    apt = ctx.group("apt", ctx.density)
    wanted = [m for m in PRUNE_THEN_LORA if m in ctx.config.method_list()]
    groups = [g for m in wanted if (g := ctx.group(m, ctx.density))]
    sizes = [(g["label"], _med(g, "params_after")) for g in groups]
    sizes = [(label, size) for label, size in sizes if size]
    a = _med(apt, "params_after")
    if not a or not sizes:
        return Reading(None, "no result")
    label, smallest = min(sizes, key=lambda item: item[1])
    text = f"APT {a / 1e6:.2f} M vs {label} {smallest / 1e6:.2f} M (the smallest baseline measured)"
    return Reading(a / smallest, text, complete=len(sizes) == len(wanted))


_MEMORY_CLAIM = (
    "APT's peak training memory is at most {limit}x LoRA's under the same allocator setting (job peak RSS)"
)

#: The targets, in page order.
TARGETS: tuple[Target, ...] = (
    Target(
        "accuracy_vs_ft",
        "APT at density {density} keeps >= 98 % of FT's test accuracy",
        _accuracy_vs_ft,
        0.98,
        ">=",
    ),
    Target(
        "accuracy_vs_lora_prune",
        "APT beats the better LoRA+Prune by at least 1 test accuracy point",
        _accuracy_vs_lora_prune,
        0.01,
        ">=",
    ),
    Target(
        "tta_vs_lora_prune",
        "APT's time-to-accuracy is at most a third of the better LoRA+Prune's",
        _tta_vs_lora_prune,
        1 / 3,
        "<=",
    ),
    Target("memory_vs_lora", _MEMORY_CLAIM, _memory_vs_lora, 1.1, "<="),
    Target(
        "perplexity_vs_prune_then_lora",
        "APT's perplexity at density {density} is at least 10 % below every prune-then-LoRA baseline's "
        "on the test split and the held-out domain (ratio <= {limit})",
        _perplexity_vs_prune_then_lora,
        0.9,
        "<=",
        ("causal-lm",),
    ),
    Target(
        "perplexity_vs_lora",
        "APT's perplexity is within {limit}x of dense LoRA's on the test split and the held-out domain",
        _perplexity_vs_lora,
        1.5,
        "<=",
        ("causal-lm",),
    ),
    Target(
        "params_vs_prune_then_lora",
        "APT's exported model is smaller than every prune-then-LoRA baseline's at the same backbone "
        "density (only hidden dimensions make it so; ratio < {limit})",
        _params_vs_prune_then_lora,
        1.0,
        "<",
        ("causal-lm",),
    ),
    Target("memory_vs_lora", _MEMORY_CLAIM, _memory_vs_lora, 0.8, "<=", ("causal-lm",)),
    Target(
        "latency_vs_dense",
        "The exported APT model's latency is at most {limit}x the dense model's",
        _latency_vs_dense,
        0.5,
        "<=",
    ),
    Target(
        "latency_vs_flops",
        "... and within {limit}x of the FLOP-proportional limit",
        _latency_vs_flops,
        1.2,
        "<=",
    ),
    Target(
        "step_after_pruning",
        "A training step after the last pruning event costs at most {limit}x the first steps",
        _step_after_pruning,
        0.6,
        "<=",
    ),
)


def evaluate_targets(ctx: TargetContext, targets: Sequence[Target] = TARGETS) -> list[dict[str, Any]]:
    """Evaluate the targets that apply to the task of ``ctx.config``.

    Args:
        ctx: Config, groups and reference.
        targets: The table (default `TARGETS`).

    Returns:
        One dict per target (see `Target.evaluate`).
    """
    return [t.evaluate(ctx) for t in targets if ctx.config.task in t.tasks]
