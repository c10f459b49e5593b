"""`AptConfig`: every knob of the APT method in one validated dataclass.

Schedule points (``prune_start``, ``prune_end``, ``density_warmup``, ``distill_end``, ``mask_window``)
are *fractions of the total number of optimizer steps* when given as a float in [0, 1], and
*absolute step numbers* when given as an int. ``AptConfig(target_density=0.4)`` therefore works for a
run of any length. The defaults are tuned for short runs (a few hundred to a few thousand steps); the
paper's own values for 40-epoch GLUE runs are in its Table 6 (training details).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptune.errors import ConfigError

__all__ = ["CONFIG_FORMAT_VERSION", "AptConfig"]

CONFIG_FORMAT_VERSION = 1

_RANK_ALLOCATIONS = ("salience", "uniform", "static")
_LAYER_MAPPINGS = ("nearest", "same")
_SCHEDULE_POINTS = ("prune_start", "prune_end", "density_warmup", "distill_end", "mask_window")


def _is_schedule_point(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    if isinstance(value, float):
        return 0.0 <= value <= 1.0 and math.isfinite(value)
    return False


@dataclass
class AptConfig:
    """Configuration of an APT run (adaptive pruning + adaptive tuning + self-distillation).

    Args:
        target_density: Fraction of the prunable backbone parameters (attention, FFN, hidden
            dimensions; embeddings and task head excluded) kept at the end, in (0, 1]. 1 disables
            pruning.
        initial_rank: Rank of every adapter at the start.
        max_rank: Cap on an adapter's rank during growth.
        lora_scaling: Fixed scaling ``s`` of the adapter update ``s * B @ A`` (the paper uses 2).
        budget_growth: Trainable adapter parameters grow linearly to this multiple of the start.
        rank_allocation: ``"salience"`` (top half by importance grows, the paper), ``"uniform"``
            (every adapter grows by the same factor) or ``"static"`` (ranks never change).
        salience_beta: EMA factor of the salience and adapter-importance scores.
        use_kurtosis: Add ``sqrt(excess kurtosis)`` of the weight x activation products to each
            block's salience. ``None`` picks the family default (on for decoders, off for encoders).
        prune_hidden: Whether hidden (residual-stream) dimensions compete for removal.
        num_events: Number of pruning events between ``prune_start`` and ``prune_end``.
        prune_start: Schedule point of the first step of salience collection.
        prune_end: Schedule point of the last pruning event.
        density_warmup: Schedule point offset after ``prune_start`` during which the density target
            stays at 1 (rank growth still happens at those events).
        mask_window: Length of the soft-mask window before each event. ``None``: half the gap
            between two events.
        mask_step: Per-step change of a soft mask inside the window. ``None``: ``2 / window``, so a
            mask goes from 1 to 0 within half a window.
        distill: Self-distillation from a snapshot of the model's own adapters (the paper's D_S).
            Off by default: on the short runs measured here (MiniLM-L6, 3 epochs of BBC News, 40 %
            density, one seed) it did not help: 95.5 % dev accuracy with distillation until 70 % of
            the run (the task-loss weight falls to 0 while the teacher is an early snapshot), 96.6 %
            with distillation ending at 45 %, and 96.6 % without, at a lower cost. The paper's runs
            are 40 epochs long with distillation over 20 of them.
        distill_end: Schedule point at which distillation stops and student-only tuning begins.
        alpha_pred: Weight of the prediction (KL) term inside the distillation loss.
        alpha_layer: Weight of the layer (MSE) term inside the distillation loss.
        temperature: Softmax temperature of the prediction term.
        kl_scale: Constant factor on the KL term of per-example predictions (classification
            logits, QA start/end logits); the authors' code uses 10.
        token_kl_scale: Constant factor on the KL term of token-level predictions (causal LM and
            seq2seq logits, averaged over the counted target tokens); the authors' code uses none (1).
        num_teacher_layers: How many teacher layers are matched per step (one per block).
        layer_mapping: ``"nearest"`` (same index if alive, else the better nearest alive
            neighbour) or ``"same"`` (same index, skipped if dead).
        pretune_prune: Prune once to ``target_density`` before tuning, from a calibration pass
            with forward and backward (the paper's LLaMA mode); then no further pruning.
        calibration_samples: Number of examples of the calibration pass.
        calibration_batch_size: Examples per forward/backward of the calibration pass. The
            salience (a product of per-channel sums) is computed per micro-batch and then summed,
            so the split changes the scores somewhat, and dropout is active. ``None``:
            half the training batch, so that this pass through the dense model stays below the
            memory of a training step of the pruned model (SmolLM2-135M, batch 4 x 128: calibration
            peak 2.37 GB in micro-batches of 4, 1.72 GB in micro-batches of 2, training 1.87 GB).
        adapter_targets: Roles that get adapters (``"q"``, ``"k"``, ``"v"``, ``"o"``, ``"up"``,
            ``"gate"``, ``"down"``). ``None``: q, v and FFN-up for encoders, q and v for decoders.
        min_heads_per_layer: Heads every attention module keeps (0 lets a layer lose all heads;
            the attention sub-layer then contributes only its output bias).
        min_neurons_per_layer: FFN neurons every layer keeps (0 allows removing the whole FFN).
        min_hidden: Hidden dimensions always kept.
        seed: Seed of the teacher-layer sampling and of new adapter rows.
    """

    target_density: float = field(
        default=0.4, metadata={"help": "Fraction of backbone parameters kept, in (0, 1]."}
    )
    initial_rank: int = field(default=8, metadata={"help": "Initial adapter rank."})
    max_rank: int = field(default=64, metadata={"help": "Maximum adapter rank reached by growth."})
    lora_scaling: float = field(default=2.0, metadata={"help": "Fixed adapter scaling s (paper: 2)."})
    budget_growth: float = field(
        default=4.0, metadata={"help": "Final / initial trainable adapter parameters."}
    )
    rank_allocation: str = field(default="salience", metadata={"help": "salience | uniform | static."})
    salience_beta: float = field(default=0.85, metadata={"help": "EMA factor of salience scores."})
    use_kurtosis: bool | None = field(
        default=None, metadata={"help": "Outlier-aware kurtosis term; default on for decoders only."}
    )
    prune_hidden: bool = field(default=True, metadata={"help": "Let hidden dimensions be pruned."})
    num_events: int = field(default=6, metadata={"help": "Number of pruning events."})
    prune_start: float | int = field(
        default=0.05, metadata={"help": "First scoring step (fraction or step)."}
    )
    prune_end: float | int = field(default=0.4, metadata={"help": "Last pruning event (fraction or step)."})
    density_warmup: float | int = field(
        default=0.05, metadata={"help": "Delay after prune_start before density drops (fraction or steps)."}
    )
    mask_window: float | int | None = field(
        default=None, metadata={"help": "Soft-mask window before each event (fraction or steps)."}
    )
    mask_step: float | None = field(default=None, metadata={"help": "Per-step soft-mask change."})
    distill: bool = field(
        default=False, metadata={"help": "Self-distillation from the model's own snapshot (off: see docs)."}
    )
    distill_end: float | int = field(
        default=0.7, metadata={"help": "End of distillation (fraction or step)."}
    )
    alpha_pred: float = field(default=0.1, metadata={"help": "Weight of the prediction KL term."})
    alpha_layer: float = field(default=0.9, metadata={"help": "Weight of the layer MSE term."})
    temperature: float = field(default=2.0 / 3.0, metadata={"help": "Distillation softmax temperature."})
    kl_scale: float = field(
        default=10.0, metadata={"help": "KL factor, per-example predictions (classification, QA)."}
    )
    token_kl_scale: float = field(
        default=1.0, metadata={"help": "KL factor, token-level predictions (LM, seq2seq)."}
    )
    num_teacher_layers: int = field(default=4, metadata={"help": "Teacher layers matched per step."})
    layer_mapping: str = field(default="nearest", metadata={"help": "nearest | same."})
    pretune_prune: bool = field(default=False, metadata={"help": "One-shot pruning before tuning."})
    calibration_samples: int = field(default=64, metadata={"help": "Examples in the calibration pass."})
    calibration_batch_size: int | None = field(
        default=None, metadata={"help": "Calibration micro-batch (default: half the training batch)."}
    )
    adapter_targets: tuple[str, ...] | None = field(
        default=None, metadata={"help": "Roles with adapters (q,k,v,o,up,gate,down)."}
    )
    min_heads_per_layer: int = field(default=0, metadata={"help": "Heads every attention module keeps."})
    min_neurons_per_layer: int = field(default=0, metadata={"help": "FFN neurons every layer keeps."})
    min_hidden: int = field(default=1, metadata={"help": "Hidden dimensions always kept."})
    seed: int = field(default=0, metadata={"help": "Seed of teacher sampling and new adapter rows."})

    def __post_init__(self) -> None:
        if isinstance(self.adapter_targets, list):
            self.adapter_targets = tuple(self.adapter_targets)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field; raise `ConfigError` naming the first bad one.

        Raises:
            ConfigError: a value is out of range, of the wrong type, or inconsistent.
        """

        def bad(name: str, why: str) -> None:
            raise ConfigError(f"AptConfig.{name}={getattr(self, name)!r} is invalid: {why}")

        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                bad(name, "expected a finite number")
            return float(value)

        def integer(name: str, low: int) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                bad(name, "expected an integer")
            if value < low:
                bad(name, f"must be >= {low}")
            return value

        density = number("target_density")
        if not 0.0 < density <= 1.0:
            bad("target_density", "must lie in (0, 1]; e.g. 0.4 keeps 40 % of the backbone parameters")
        integer("initial_rank", 1)
        if integer("max_rank", 1) < self.initial_rank:
            bad("max_rank", f"must be >= initial_rank ({self.initial_rank})")
        if number("lora_scaling") <= 0:
            bad("lora_scaling", "must be > 0")
        if number("budget_growth") < 1.0:
            bad("budget_growth", "must be >= 1 (1 keeps the adapter budget constant)")
        if self.rank_allocation not in _RANK_ALLOCATIONS:
            bad("rank_allocation", f"choose one of {', '.join(_RANK_ALLOCATIONS)}")
        if not 0.0 <= number("salience_beta") < 1.0:
            bad("salience_beta", "must lie in [0, 1)")
        if self.use_kurtosis is not None and not isinstance(self.use_kurtosis, bool):
            bad("use_kurtosis", "expected true, false or null")
        integer("num_events", 1)
        for name in _SCHEDULE_POINTS:
            value = getattr(self, name)
            if name == "mask_window" and value is None:
                continue
            if not _is_schedule_point(value):
                bad(name, "expected a fraction of the run in [0, 1] (float) or a step number >= 0 (int)")
        if isinstance(self.prune_start, float) and isinstance(self.prune_end, float):
            if self.prune_end <= self.prune_start:
                bad("prune_end", f"must come after prune_start ({self.prune_start})")
            if isinstance(self.distill_end, float) and self.distill_end < self.prune_end:
                bad("distill_end", f"must not come before prune_end ({self.prune_end})")
        if (
            isinstance(self.prune_start, int)
            and isinstance(self.prune_end, int)
            and self.prune_end <= self.prune_start
        ):
            bad("prune_end", f"must come after prune_start ({self.prune_start})")
        if self.mask_step is not None and not 0.0 < number("mask_step") <= 1.0:
            bad("mask_step", "must lie in (0, 1]")
        for name in ("alpha_pred", "alpha_layer", "kl_scale", "token_kl_scale"):
            if number(name) < 0:
                bad(name, "must be >= 0")
        if number("temperature") <= 0:
            bad("temperature", "must be > 0")
        integer("num_teacher_layers", 1)
        if self.layer_mapping not in _LAYER_MAPPINGS:
            bad("layer_mapping", f"choose one of {', '.join(_LAYER_MAPPINGS)}")
        integer("calibration_samples", 1)
        if self.calibration_batch_size is not None:
            integer("calibration_batch_size", 1)
        if self.adapter_targets is not None:
            roles = {"q", "k", "v", "o", "up", "gate", "down"}
            if not isinstance(self.adapter_targets, tuple) or not self.adapter_targets:
                bad("adapter_targets", f"expected a non-empty list of roles from {sorted(roles)}")
            unknown = [r for r in self.adapter_targets if r not in roles]
            if unknown:
                bad("adapter_targets", f"unknown role(s) {unknown}; choose from {sorted(roles)}")
        integer("min_heads_per_layer", 0)
        integer("min_neurons_per_layer", 0)
        integer("min_hidden", 1)
        integer("seed", 0)
        for name in ("prune_hidden", "distill", "pretune_prune"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "expected true or false")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict including ``format_version``."""
        data = dataclasses.asdict(self)
        if data["adapter_targets"] is not None:
            data["adapter_targets"] = list(data["adapter_targets"])
        return {"format_version": CONFIG_FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AptConfig:
        """Build a config from `to_dict` output.

        Raises:
            ConfigError: unknown keys, or a format version this aptune cannot read.
        """
        data = dict(data)
        version = data.pop("format_version", CONFIG_FORMAT_VERSION)
        if version != CONFIG_FORMAT_VERSION:
            raise ConfigError(
                f"AptConfig format_version {version!r} is not supported (this aptune reads "
                f"{CONFIG_FORMAT_VERSION}); re-create the config with this version of aptune"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"AptConfig got unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> AptConfig:
        """Read a config from a JSON string or a path to a JSON file.

        Raises:
            ConfigError: the file is missing, not JSON, or holds invalid values.
        """
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError("config JSON must be an object")
        return cls.from_dict(data)
