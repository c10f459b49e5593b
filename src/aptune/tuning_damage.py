"""Damage-curve rankings for the pruning events during tuning (``AptConfig.tuning_damage_curves``).

With the option on, the controller keeps the first ``damage_batches`` calibration batches of the
pruning before tuning, and at every pruning event during tuning ranks the heads and neurons by
damage curves (`aptune.damage`) measured on them with the model as it is then. A soft-mask window
spans several steps; the curves are measured once, on the window's first step, and every later step
of the window (and the event itself) reuses that ranking. `TuningDamageRanking` holds the kept
batches and the open window's ranking, and saves and restores both with the controller's state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from aptune.scores import Salience

__all__ = ["TuningDamageRanking"]

#: Measures a ranking: (running salience, calibration batches) -> (ranking, the curves behind it).
Measure = Callable[[Salience, list[dict]], tuple[Salience, dict]]


class TuningDamageRanking:
    """The calibration batches kept for damage curves during tuning, and the open window's ranking.

    Attributes:
        batches: Model-input dicts on the CPU (empty when the option is off or nothing was kept).
        window: ``(event index, ranking, curves)`` of the soft-mask window now open, or None.
    """

    def __init__(self) -> None:
        self.batches: list[dict] = []
        self.window: tuple[int, Salience, dict] | None = None

    @property
    def active(self) -> bool:
        """Whether batches are kept, so that events during tuning are ranked by damage curves."""
        return bool(self.batches)

    def keep(self, batches: Iterable[dict]) -> None:
        """Keep copies of ``batches`` on the CPU (detached) for every later measurement."""
        self.batches = [
            {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in batch.items()} for batch in batches
        ]

    def ranking(self, index: int, running: Salience, measure: Measure) -> Salience:
        """The ranking of event ``index``: measured by ``measure`` on its first call, then reused."""
        if self.window is None or self.window[0] != index:
            ranking, curves = measure(running, self.batches)
            self.window = (index, ranking, curves)
        return self.window[1]

    def close(self, index: int) -> dict | None:
        """End the window of event ``index``; return the curves it was ranked by (None if none)."""
        curves = self.window[2] if self.window is not None and self.window[0] == index else None
        self.window = None
        return curves

    def state_dict(self) -> dict[str, Any]:
        """The kept batches and the open window's ranking, as tensors keyed by position."""
        window = None
        if self.window is not None:
            index, ranking, curves = self.window
            window = {
                "index": index,
                "heads": {str(i): t for i, t in enumerate(ranking.heads) if t is not None},
                "neurons": {str(i): t for i, t in enumerate(ranking.neurons) if t is not None},
                "hidden": ranking.hidden,
                "curves": curves,
            }
        return {"batches": {str(i): dict(b) for i, b in enumerate(self.batches)}, "window": window}

    def load_state_dict(self, state: Mapping[str, Any] | None, attention_sites: int, ffn_sites: int) -> None:
        """Restore what `state_dict` saved (an empty or missing state keeps nothing)."""
        state = state or {}
        batches = state.get("batches") or {}
        self.batches = [dict(batches[str(i)]) for i in range(len(batches))]
        window = state.get("window")
        self.window = None
        if window is not None:
            ranking = Salience(
                [window["heads"].get(str(i)) for i in range(attention_sites)],
                [window["neurons"].get(str(i)) for i in range(ffn_sites)],
                window["hidden"],
            )
            self.window = (int(window["index"]), ranking, window["curves"])
