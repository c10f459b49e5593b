"""`RunRecorder`: collects what a run measured, as plain JSON data."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from aptune.errors import DataError
from aptune.report.summary import summarize
from aptune.report.values import as_step, flat_floats, is_num, mapping_of, rows_of, to_jsonable, to_scalar

__all__ = ["REPORT_SCHEMA_VERSION", "RESERVED_KEYS", "RunRecorder"]

REPORT_SCHEMA_VERSION = 1
"""Version of the ``report.json`` layout; bumped when a field changes meaning."""

RESERVED_KEYS = frozenset(
    {
        "schema_version",
        "aptune_version",
        "created",
        "model",
        "config",
        "summary",
        "steps",
        "events",
        "evals",
        "salience",
        "salience_history",
        "phase_times",
    }
)


class RunRecorder:
    """Collects what a run measured; JSON-serialisable via :meth:`to_dict`.

    The controller / trainer calls ``log_*`` as the run goes; :func:`write_report` turns the record into
    files. Every value is converted to plain JSON data when logged (tensors and numpy values become
    numbers / lists), so the recorder never keeps tensors alive.

    Args:
        config: The run's configuration: a dict, an ``AptConfig`` or anything with ``to_dict()``.
        model_info: Facts about the model before pruning: ``name``, ``model_type``, ``params_before``
            (backbone parameters), ``total_params_before``, ``num_layers``, ``heads_per_layer``,
            ``ffn_per_layer``, ``hidden_size`` (per-layer fields may be an int or a list per layer).

    Raises:
        TypeError: ``config`` or ``model_info`` holds values with no JSON form.

    Example:
        >>> rec = RunRecorder({"target_density": 0.4}, {"name": "bert-tiny", "params_before": 4_000_000})
        >>> rec.log_step(1, loss=1.2, density=1.0)
        >>> rec.log_eval(1, {"accuracy": 0.5})
        >>> rec.to_dict()["summary"]["final_metrics"]
        {'accuracy': 0.5}
    """

    def __init__(self, config: Mapping[str, Any] | Any, model_info: Mapping[str, Any]) -> None:
        self._config: dict[str, Any] = mapping_of(to_jsonable(config, "config"))
        self._model: dict[str, Any] = mapping_of(to_jsonable(model_info, "model_info"))
        self._created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._steps: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._evals: list[dict[str, Any]] = []
        self._salience: dict[str, Any] | None = None
        self._salience_history: list[dict[str, Any]] = []
        self._phase_times: dict[str, float] = {}
        self._extra: dict[str, Any] = {}

    # ------------------------------------------------------------------ logging
    def log_step(self, step: int, **values: Any) -> None:
        """Record scalars measured at an optimizer step.

        Calls for the same step as the previous call are merged into one row (so the trainer can log
        the loss and the controller the density of the same step separately).

        Args:
            step: Optimizer step (non-negative int).
            **values: Scalars such as ``loss``, ``task_loss``, ``distill_loss``, ``pred_loss``,
                ``layer_loss``, ``density``, ``params``, ``trainable_params``, ``lr``, ``mu``,
                ``step_time`` (seconds). Tensors are converted; NaN / inf are stored as ``None``.

        Raises:
            ValueError: ``step`` is not a non-negative integer.
            TypeError: a value is not a single number.
        """
        step = as_step(step)
        row = {name: to_scalar(value, f"log_step {name}") for name, value in values.items()}
        if self._steps and self._steps[-1]["step"] == step:
            self._steps[-1].update(row)
        else:
            self._steps.append({"step": step, **row})

    def log_event(self, event: Mapping[str, Any]) -> None:
        """Record a pruning event (the structure right after its surgery and rank growth).

        Args:
            event: ``step`` (required), ``index`` (defaults to the number of events logged before),
                ``target_density``, ``density``, ``params``, ``heads_per_layer`` (list of int),
                ``ffn_per_layer`` (list of int), ``hidden_size`` (int), ``removed`` (``{"heads": n,
                "neurons": n, "hidden": n}``), ``ranks`` (``{adapter_name: rank}``),
                ``trainable_params``. Other keys are kept as given.

        Raises:
            ValueError: ``event`` has no valid ``step``.
            TypeError: ``event`` is not a mapping or holds values with no JSON form.
        """
        if not isinstance(event, Mapping):
            raise TypeError(f"log_event expects a dict, got {type(event).__name__}")
        if "step" not in event:
            raise ValueError("log_event: the event has no 'step' key")
        data = to_jsonable(event, "event")
        data["step"] = as_step(event["step"])
        data.setdefault("index", len(self._events))
        self._events.append(data)

    def log_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record the dev metrics of an evaluation.

        A second call for the same step as the previous call merges its metrics into that entry.

        Args:
            step: Optimizer step the evaluation ran at.
            metrics: ``{name: number}``, e.g. ``{"eval_accuracy": 0.91, "eval_loss": 0.3}``.

        Raises:
            ValueError: ``step`` is not a non-negative integer.
            TypeError: ``metrics`` is not a mapping or a metric is not a single number.
        """
        step = as_step(step)
        if not isinstance(metrics, Mapping):
            raise TypeError(f"log_eval expects a dict of metrics, got {type(metrics).__name__}")
        clean = {str(k): to_scalar(v, f"log_eval {k}") for k, v in metrics.items()}
        if self._evals and self._evals[-1]["step"] == step:
            self._evals[-1]["metrics"].update(clean)
        else:
            self._evals.append({"step": step, "metrics": clean})

    def log_salience(
        self,
        step: int,
        heads: Sequence[float] | Any,
        neurons: Sequence[float] | Any,
        hidden: Sequence[float] | Any,
        *,
        event: int | None = None,
    ) -> None:
        """Record a snapshot of the salience scores of every prunable block.

        The latest snapshot replaces the previous one; with ``event`` given it is also kept in
        ``salience_history`` (one snapshot per pruning event is a sensible amount).

        Args:
            step: Optimizer step of the snapshot.
            heads: Scores of every attention head (flat, or nested per layer; tensors accepted).
            neurons: Scores of every FFN neuron (flat or nested per layer).
            hidden: Scores of every hidden dimension.
            event: Index of the pruning event this snapshot belongs to, to keep it in the history.

        Raises:
            ValueError: ``step`` is not a non-negative integer.
            TypeError: a score is not a number.
        """
        snapshot: dict[str, Any] = {
            "step": as_step(step),
            "heads": flat_floats(heads, "heads"),
            "neurons": flat_floats(neurons, "neurons"),
            "hidden": flat_floats(hidden, "hidden"),
        }
        self._salience = snapshot
        if event is not None:
            self._salience_history.append({"event": to_scalar(event, "event"), **copy.deepcopy(snapshot)})

    def set_phase_time(self, phase: str, seconds: float) -> None:
        """Set the wall time of a phase (e.g. ``"calibration"``, ``"train"``, ``"eval"``, ``"export"``).

        Args:
            phase: Name of the phase; a second call for the same phase overwrites the first.
            seconds: Wall-clock seconds.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        value = to_scalar(seconds, f"phase time {phase}")
        if value is None or value < 0:
            raise ValueError(
                f"set_phase_time({phase!r}): seconds must be a finite number >= 0, got {seconds!r}"
            )
        self._phase_times[str(phase)] = float(value)

    def set(self, key: str, value: Any) -> None:
        """Set a free-form top-level field of the report.

        Fields the Markdown page knows: ``final_metrics`` (``{name: number}``, the metrics of the final
        model; otherwise the last evaluation is used), ``peak_memory`` (bytes, or ``{name: bytes}``),
        ``throughput`` (a number or ``{name: number}``). Any other field (``export``, ``teacher_cost``,
        ...) is listed under "Other measurements".

        Args:
            key: Field name; must not be one of the recorder's own fields (``steps``, ``events``, ...).
            value: JSON-ready data (tensors and numpy values are converted).

        Raises:
            ValueError: ``key`` is reserved.
            TypeError: ``value`` has no JSON form.
        """
        if key in RESERVED_KEYS:
            raise ValueError(f"RunRecorder.set: {key!r} is a reserved report field; use another name")
        self._extra[str(key)] = to_jsonable(value, key)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Return the whole record as a fresh JSON-ready dict (the content of ``report.json``).

        Returns:
            A deep copy; changing it does not change the recorder.
        """
        from aptune import __version__  # lazy: aptune/__init__ may import this module

        data: dict[str, Any] = {
            "schema_version": REPORT_SCHEMA_VERSION,
            "aptune_version": __version__,
            "created": self._created,
            "model": self._model,
            "config": self._config,
            "steps": self._steps,
            "events": self._events,
            "evals": self._evals,
            "salience": self._salience,
            "salience_history": self._salience_history,
            "phase_times": self._phase_times,
            **self._extra,
        }
        data = copy.deepcopy(data)
        data["summary"] = summarize(data)
        return data

    def restore_history(self, data: Mapping[str, Any]) -> None:
        """Take the steps, events, evaluations, salience and phase times of an earlier record.

        A resumed run calls it with the record its checkpoint saved (`to_dict`), so that its report
        covers the whole run; this recorder's config, model and extra fields stay.

        Raises:
            DataError: ``data`` is not a report dict.
        """
        earlier = RunRecorder.from_dict(data)
        self._created = earlier._created
        self._steps = earlier._steps
        self._events = earlier._events
        self._evals = earlier._evals
        self._salience = earlier._salience
        self._salience_history = earlier._salience_history
        self._phase_times = {**earlier._phase_times, **self._phase_times}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecorder:
        """Rebuild a recorder from :meth:`to_dict` / :func:`load_report` output (e.g. to resume a run).

        Args:
            data: A report dict.

        Returns:
            A recorder holding the same record (``summary`` is recomputed on the next ``to_dict``).

        Raises:
            DataError: ``data`` is not a report dict.
        """
        if not isinstance(data, Mapping):
            raise DataError(f"RunRecorder.from_dict expects a report dict, got {type(data).__name__}")
        data = to_jsonable(data, "report")
        rec = cls(mapping_of(data.get("config")), mapping_of(data.get("model")))
        if isinstance(data.get("created"), str):
            rec._created = data["created"]
        rec._steps = rows_of(data.get("steps"))
        rec._events = rows_of(data.get("events"))
        rec._evals = rows_of(data.get("evals"))
        rec._salience = data.get("salience") if isinstance(data.get("salience"), dict) else None
        rec._salience_history = rows_of(data.get("salience_history"))
        rec._phase_times = {k: v for k, v in mapping_of(data.get("phase_times")).items() if is_num(v)}
        rec._extra = {k: v for k, v in data.items() if k not in RESERVED_KEYS}
        return rec
