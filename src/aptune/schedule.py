"""The APT timeline as pure functions of the optimizer step (paper sections 4.2 and 4.3).

`build_schedule` turns an `AptConfig` and the total number of optimizer steps into a frozen
`Schedule`: where salience collection starts, the ``K = num_events`` pruning events, the target
density and the trainable-budget factor at each event, the soft-mask window before each event, and
the distillation weight ``mu``. Nothing here looks at a model; the controller asks the schedule what
to do at a step.

Readings taken where the paper and the authors' code disagree:

* Density follows the cubic *density* schedule of the authors' code, not the paper's literal sparsity
  formula: ``density(e) = min(1, d_T + (1 - d_T) * ((end - e) / (end - warmup_end)) ** 3)``,
  sampled at the events only, so it is 1 at every event up to ``warmup_end`` and exactly ``d_T`` at
  the last event.
* Events are ``linspace(start, end, K + 1)[1:]`` rounded to the nearest integer step (ties to even,
  like ``numpy.round``); the authors' code truncates, which moves some events by one step.
* Masks move only inside a window before each event and snap to 0/1 two steps before it. The
  authors' code uses a fixed 200-step window and refuses shorter gaps; here the window defaults to
  half the smallest gap between events (at least 2 steps) so that short runs work too, and is always
  shorter than that gap so that no window contains an event step.
* ``mu`` ramps from 0 to 1 over the pruning span, as in the authors' code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise
from typing import Any

from aptune.config import AptConfig
from aptune.errors import ConfigError

__all__ = ["Schedule", "build_schedule", "resolve_point"]

# Every event needs at least two steps of its own before it: one on which the masks snap to 0/1 and
# the event step itself. Shorter gaps would make two events share their window.
_MIN_GAP = 2

# Bound on the search for the smallest workable run length; only reached when prune_end - prune_start
# is a tiny fraction, and then the closed-form bound is reported instead.
_MAX_SCAN = 100_000


def resolve_point(point: float | int, total_steps: int) -> int:
    """Turn a schedule point into a step number.

    A float is a fraction of the run, an int an absolute step, as in `AptConfig`.

    Args:
        point: Fraction of the run in [0, 1] (float) or a step number (int).
        total_steps: Number of optimizer steps of the run (> 0).

    Returns:
        ``round(point * total_steps)`` for a float, ``point`` for an int, clamped to
        ``[0, total_steps]``.

    Raises:
        ConfigError: ``total_steps`` is not a positive int, or ``point`` is not a number, is NaN, or
            is a float outside [0, 1] (a float of 2.0 is more likely a step typed as a float than a
            fraction, so it is refused instead of clamped).

    Example:
        >>> resolve_point(0.05, 1000), resolve_point(30, 1000), resolve_point(5000, 1000)
        (50, 30, 1000)
    """
    _check_total_steps(total_steps)
    if isinstance(point, bool) or not isinstance(point, (int, float)):
        raise ConfigError(
            f"schedule point {point!r} is invalid: expected a fraction of the run in [0, 1] (float) "
            "or a step number (int)"
        )
    if isinstance(point, float):
        if not (math.isfinite(point) and 0.0 <= point <= 1.0):
            raise ConfigError(
                f"schedule point {point!r} is invalid: a float is a fraction of the run and must lie "
                "in [0, 1]; pass an int for an absolute step"
            )
        step = round(point * total_steps)
    else:
        step = point
    return min(max(int(step), 0), total_steps)


@dataclass(frozen=True)
class Schedule:
    """Where every phase of an APT run happens, in optimizer steps (0-based).

    Built by `build_schedule`; every method is a pure function of the step.

    Args:
        total_steps: Optimizer steps of the run.
        start: First salience-collection step (resolved ``prune_start``).
        end: Step of the last pruning event (resolved ``prune_end``); ``end > start``.
        warmup_end: ``start`` + resolved ``density_warmup``, clamped to ``end``; the density target
            stays 1 at every event up to it.
        events: The ``K`` event steps, strictly increasing, ``events[-1] == end``.
        densities: Target density at each event, non-increasing, ``densities[-1] == target density``.
        budgets: Trainable-adapter budget at each event as a multiple of the initial one, rising
            linearly with the step to ``budget_growth`` at the last event.
        window: Length in steps of the soft-mask window before each event (1 <= window < smallest
            gap between events, the gap from ``start`` to the first event included, so no window
            contains an event step or ``start``).
        mask_step: Change of a soft mask per window step.
        distill_end: Step at which self-distillation stops (in ``[end, total_steps]``).
        initial_density: Density before any event: 1, or the target when the model was pruned before
            tuning (``AptConfig.pretune_prune``).

    Example:
        >>> s = build_schedule(AptConfig(target_density=0.4), total_steps=1000)
        >>> s.events[-1], s.densities[-1]
        (400, 0.4)
    """

    total_steps: int
    start: int
    end: int
    warmup_end: int
    events: tuple[int, ...]
    densities: tuple[float, ...]
    budgets: tuple[float, ...]
    window: int
    mask_step: float
    distill_end: int
    initial_density: float = 1.0

    def __post_init__(self) -> None:
        # Cheap guards for hand-built schedules; build_schedule never trips them.
        if not (len(self.events) == len(self.densities) == len(self.budgets) > 0):
            raise ValueError("Schedule needs one density and one budget per event and at least one event")
        if any(b <= a for a, b in pairwise(self.events)):
            raise ValueError(f"Schedule events must be strictly increasing, got {self.events}")

    @property
    def num_events(self) -> int:
        """Number of pruning events ``K``."""
        return len(self.events)

    def event_index(self, step: int) -> int | None:
        """Index of the event that happens at ``step``.

        Args:
            step: Optimizer step.

        Returns:
            ``k`` if ``step == events[k]``, else None.
        """
        for k, event in enumerate(self.events):
            if step == event:
                return k
        return None

    def window_index(self, step: int) -> int | None:
        """Index of the event whose soft-mask window contains ``step``.

        Args:
            step: Optimizer step.

        Returns:
            ``k`` if ``events[k] - window <= step < events[k]``, else None. Windows never overlap
            and never contain an event step (the window is shorter than the smallest gap).
        """
        for k, event in enumerate(self.events):
            if event - self.window <= step < event:
                return k
        return None

    def collects(self, step: int) -> bool:
        """Whether the salience of ``step`` is collected (``start <= step <= end``).

        Args:
            step: Optimizer step.
        """
        return self.start <= step <= self.end

    def opens_window(self, step: int) -> bool:
        """Whether ``step`` is the first step of a soft-mask window (where the teacher is snapshot).

        Args:
            step: Optimizer step.

        Returns:
            True if ``step == events[k] - window`` for some ``k``.
        """
        return any(step == event - self.window for event in self.events)

    def is_hard_step(self, step: int) -> bool:
        """Whether the masks snap to exactly 0/1 at ``step``.

        That is two steps before an event (paper section 4.2), or one step before it when the window
        is shorter than two steps, so that the hard step always lies inside the window.

        Args:
            step: Optimizer step.

        Returns:
            True if ``step == events[k] - 2`` (``events[k] - 1`` when ``window < 2``) for some ``k``.
        """
        return any(step == event - self._hard_lead for event in self.events)

    def mask_move(self, step: int) -> str | None:
        """How the masks move at ``step``.

        Args:
            step: Optimizer step.

        Returns:
            ``"soft"`` on the window steps before the hard step (masks move by ``mask_step`` towards
            the keep-set), ``"hard"`` on the hard step (`is_hard_step`), None elsewhere (outside the
            windows, and between the hard step and the event).
        """
        k = self.window_index(step)
        if k is None:
            return None
        if self.is_hard_step(step):
            return "hard"
        return "soft" if step < self.events[k] - self._hard_lead else None

    @property
    def _hard_lead(self) -> int:
        # steps from the hard step to its event
        return 2 if self.window >= 2 else 1

    def density_target(self, step: int) -> float:
        """Target density of the window or event that ``step`` belongs to.

        Args:
            step: Optimizer step.

        Returns:
            ``densities[k]`` inside the window of event ``k`` and at event ``k``; otherwise the density
            of the most recent event before ``step``; ``initial_density`` before the first window.
        """
        k = self.window_index(step)
        if k is not None:
            return self.densities[k]
        density = self.initial_density
        for event, event_density in zip(self.events, self.densities, strict=True):
            if event > step:
                break
            density = event_density
        return density

    def budget_factor(self, step: int) -> float:
        """Trainable-budget factor in force at ``step``.

        Args:
            step: Optimizer step.

        Returns:
            ``budgets[k]`` of the most recent event at or before ``step``, 1 before the first event.
        """
        factor = 1.0
        for event, event_budget in zip(self.events, self.budgets, strict=True):
            if event > step:
                break
            factor = event_budget
        return factor

    def mu(self, step: int) -> float:
        """Weight of the distillation loss against the task loss (0 at ``start``, 1 from ``end`` on).

        Args:
            step: Optimizer step.

        Returns:
            ``clip((step - start) / (end - start), 0, 1)``.
        """
        return min(1.0, max(0.0, (step - self.start) / (self.end - self.start)))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field (tuples become lists)."""
        return {
            "total_steps": self.total_steps,
            "start": self.start,
            "end": self.end,
            "warmup_end": self.warmup_end,
            "events": list(self.events),
            "densities": list(self.densities),
            "budgets": list(self.budgets),
            "window": self.window,
            "mask_step": self.mask_step,
            "distill_end": self.distill_end,
            "initial_density": self.initial_density,
        }


def build_schedule(config: AptConfig, total_steps: int) -> Schedule:
    """Lay out the pruning, tuning and distillation timeline of a run.

    Args:
        config: The run's configuration (``prune_start``, ``prune_end``, ``density_warmup``,
            ``num_events``, ``target_density``, ``budget_growth``, ``mask_window``, ``mask_step``,
            ``distill_end``, ``pretune_prune`` are read).
        total_steps: Number of optimizer steps of the run.

    Returns:
        The `Schedule`. With ``pretune_prune`` every event density is the target (the model is pruned
        before tuning) while the budgets still grow at the events.

    Raises:
        ConfigError: ``total_steps`` is not a positive int; ``prune_start`` or ``prune_end`` is a step
            beyond the run; ``prune_end`` does not resolve to a step after ``prune_start``; or the run
            is too short to give every event at least 2 steps of its own (the message says how many
            total steps are needed, or how far to lower ``num_events``).

    Example:
        >>> cfg = AptConfig(prune_start=0.05, prune_end=0.4, density_warmup=0.05, num_events=6)
        >>> build_schedule(cfg, 1000).events
        (108, 167, 225, 283, 342, 400)
    """
    _check_total_steps(total_steps)
    for name in ("prune_start", "prune_end"):
        value = getattr(config, name)
        if isinstance(value, int) and value > total_steps:
            needed = _min_total_steps(config) or value
            raise ConfigError(
                f"AptConfig.{name}={value!r} is step {value}, beyond the run of {total_steps} total steps; "
                f"train for at least {needed} total steps, or give {name} as a fraction of the run "
                "(e.g. 0.4)"
            )

    num_events = config.num_events
    start = resolve_point(config.prune_start, total_steps)
    end = resolve_point(config.prune_end, total_steps)
    if end - start < _MIN_GAP * num_events:
        _raise_too_short(config, total_steps, start, end)

    events = _event_steps(start, end, num_events)
    gaps = [b - a for a, b in pairwise((start, *events))]
    smallest_gap = min(gaps)
    # Guaranteed by end - start >= 2K (see _event_steps); kept as a guard against future edits.
    assert smallest_gap >= _MIN_GAP, (events, start)

    warmup_end = min(start + resolve_point(config.density_warmup, total_steps), end)
    target = float(config.target_density)
    if config.pretune_prune:
        densities = tuple(target for _ in events)
    else:
        densities = tuple(_cubic_density(e, end, warmup_end, target) for e in events)

    growth = float(config.budget_growth)
    # The last budget is set exactly (1 + (g - 1) * 1.0 can differ from g in the last bit).
    budgets = (*(1.0 + (growth - 1.0) * (e - start) / (end - start) for e in events[:-1]), growth)

    if config.mask_window is None:
        window = max(_MIN_GAP, smallest_gap // 2)
    else:
        window = resolve_point(config.mask_window, total_steps)
    # The window stays strictly shorter than the smallest gap: a window as long as the gap would start
    # on the previous event's step (for a gap of 2 its hard step would even be that event step, so
    # the previous event would prune to the next event's keep-set), or on ``start`` itself before any
    # salience exists. A window of 0 would leave no step on which to set the hard masks.
    window = min(max(window, 1), smallest_gap - 1)
    mask_step = float(config.mask_step) if config.mask_step is not None else min(1.0, 2.0 / window)

    distill_end = max(resolve_point(config.distill_end, total_steps), end)

    return Schedule(
        total_steps=total_steps,
        start=start,
        end=end,
        warmup_end=warmup_end,
        events=events,
        densities=densities,
        budgets=budgets,
        window=window,
        mask_step=mask_step,
        distill_end=distill_end,
        initial_density=target if config.pretune_prune else 1.0,
    )


# ---------------------------------------------------------------------------------------------- helpers
def _check_total_steps(total_steps: Any) -> None:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
        raise ConfigError(
            f"total_steps={total_steps!r} is invalid: expected a positive int (the number of optimizer "
            "steps of the run)"
        )


def _event_steps(start: int, end: int, num_events: int) -> tuple[int, ...]:
    """``linspace(start, end, K + 1)[1:]`` rounded to steps, with the last one exactly ``end``.

    With spacing ``s = (end - start) / K``, two rounded neighbours differ by ``floor(s)`` or
    ``ceil(s)`` (``s`` itself when it is an integer, since then nothing is rounded), and the first event
    is ``round(s)`` after ``start``. So every gap is >= 2 exactly when ``end - start >= 2 K``.
    """
    span = end - start
    # Exact rationals: no float error can move a point across a rounding boundary, and ties go to the
    # even step exactly as numpy's round(linspace(...)) would.
    inner = (round(Fraction(start * num_events + span * k, num_events)) for k in range(1, num_events))
    return (*inner, end)


def _cubic_density(event: int, end: int, warmup_end: int, target: float) -> float:
    if event >= end:
        return target
    if event <= warmup_end:
        return 1.0
    remaining = (end - event) / (end - warmup_end)
    return min(1.0, target + (1.0 - target) * remaining**3)


def _is_feasible(config: AptConfig, total_steps: int) -> bool:
    for name in ("prune_start", "prune_end"):
        value = getattr(config, name)
        if isinstance(value, int) and value > total_steps:
            return False
    start = resolve_point(config.prune_start, total_steps)
    end = resolve_point(config.prune_end, total_steps)
    return end - start >= _MIN_GAP * config.num_events


def _min_total_steps(config: AptConfig) -> int | None:
    """Smallest run length from which on every longer run is long enough, or None if none is.

    With a fractional ``prune_end`` the pruning span grows with the run. With both points absolute it
    is fixed once the run reaches them; with an absolute end and a fractional start it shrinks, so no
    "at least" length can be promised.
    """
    ps, pe, need = config.prune_start, config.prune_end, _MIN_GAP * config.num_events
    if not isinstance(pe, float):
        if isinstance(ps, float):
            return None
        shortest = max(pe, ps, 1)
        return shortest if _is_feasible(config, shortest) else None
    if isinstance(ps, float):
        if pe <= ps:
            return None
        # round() moves each endpoint by at most 1/2, so (need + 1) / (pe - ps) steps always suffice.
        upper = math.ceil((need + 1) / (pe - ps))
    else:
        if pe <= 0:
            return None
        upper = max(math.ceil((need + ps + 0.5) / pe), ps)
    upper = max(upper, 1)
    # Walk down from the guaranteed length while shorter runs still work: the answer is the start of
    # the run of feasible lengths that continues forever.
    best = upper
    for _ in range(_MAX_SCAN):
        if best <= 1 or not _is_feasible(config, best - 1):
            break
        best -= 1
    return best


def _raise_too_short(config: AptConfig, total_steps: int, start: int, end: int) -> None:
    num_events = config.num_events
    need = _MIN_GAP * num_events
    where = (
        f"prune_start={config.prune_start!r} and prune_end={config.prune_end!r} resolve to steps "
        f"{start} and {end} of a {total_steps}-step run"
    )
    min_steps = _min_total_steps(config)
    longer = f"train for at least {min_steps} total steps" if min_steps is not None else None
    if end <= start:
        fixes = [f for f in (longer, "move prune_end later or prune_start earlier") if f]
        raise ConfigError(
            f"AptConfig.prune_end={config.prune_end!r} is invalid: {where}, so the last pruning event "
            f"would not come after the first scoring step; {'; or '.join(fixes)}"
        )
    max_events = (end - start) // _MIN_GAP
    fixes = [f for f in (longer,) if f]
    if max_events >= 1:
        fixes.append(f"lower AptConfig.num_events to {max_events} or fewer")
    fixes.append("widen the span between prune_start and prune_end")
    raise ConfigError(
        f"the run is too short for AptConfig.num_events={num_events}: {where}, a span of "
        f"{end - start} steps, but every pruning event needs at least {_MIN_GAP} steps of its own "
        f"(a soft-mask window with a hard-mask step), i.e. {need} steps; {'; or '.join(fixes)}"
    )
