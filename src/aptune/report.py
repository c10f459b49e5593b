"""Run reports: ``report.json``, PNG plots and a Markdown page.

A run hands what it measures to a :class:`RunRecorder` (per-step scalars, pruning events, dev
evaluations, salience snapshots, wall time per phase, free-form extras). :func:`write_report` turns the
record into ``report.json`` (every figure the run measured), ``plots/*.png`` and ``report.md`` (a
summary page that embeds the plots); :func:`load_report` reads ``report.json`` back.

Example:
    >>> rec = RunRecorder({"target_density": 0.4}, {"name": "tiny", "params_before": 1000})
    >>> rec.log_step(10, loss=0.7, density=1.0, params=1000)
    >>> rec.log_event({"step": 20, "index": 0, "density": 0.5, "params": 500})
    >>> paths = write_report("runs/x", rec)        # doctest: +SKIP
    >>> load_report("runs/x")["summary"]["params_after"]  # doctest: +SKIP
    500

``report.json`` (``schema_version`` 1) is one object:

- ``schema_version`` (int), ``aptune_version`` (str), ``created`` (ISO-8601 UTC time of the recorder).
- ``model``: the ``model_info`` given to the recorder (``name``, ``model_type``, ``params_before``
  (backbone), ``total_params_before``, ``num_layers``, ``heads_per_layer``, ``ffn_per_layer``,
  ``hidden_size``).
- ``config``: the configuration of the run (``AptConfig.to_dict()`` or any JSON-ready dict).
- ``summary``: figures derived from the rest, recomputed on every write: ``params_before``,
  ``params_after``, ``params_ratio`` (after / before), ``total_params_before``, ``final_density``,
  ``target_density``, ``num_events``, ``final_step``, ``trainable_params``, ``heads_kept``,
  ``neurons_kept``, ``hidden_size``, ``final_metrics``, ``final_metrics_source`` (``"final_metrics"`` or
  ``"last_eval"``), ``wall_time_seconds`` (sum over phases). Unknown figures are ``null``.
- ``steps``: list of ``{"step": int, <name>: number, ...}`` rows (``loss``, ``task_loss``,
  ``distill_loss``, ``pred_loss``, ``layer_loss``, ``density``, ``params``, ``trainable_params``, ``lr``,
  ``mu``, ``step_time``, or any other scalar).
- ``events``: list of pruning events, each ``{"step", "index", "target_density", "density", "params",
  "heads_per_layer": [int], "ffn_per_layer": [int], "hidden_size": int, "removed": {"heads", "neurons",
  "hidden"}, "ranks": {adapter: rank}, "trainable_params"}`` (as logged; extra keys are kept).
- ``evals``: list of ``{"step": int, "metrics": {name: number}}``.
- ``salience``: the latest snapshot ``{"step", "heads": [float], "neurons": [float], "hidden": [float]}``
  or ``null``; ``salience_history``: snapshots logged with ``event=`` (each also has ``"event"``).
- ``phase_times``: ``{phase: seconds}``.
- any free-form top-level field set with :meth:`RunRecorder.set` (``final_metrics``, ``peak_memory``
  (bytes, or ``{name: bytes}``), ``throughput``, ``export``, ``teacher_cost``, ...).

Non-finite floats (NaN, inf) are stored as ``null``; tensors and numpy values become plain numbers and
lists. Plots are drawn on ``matplotlib.figure.Figure`` objects with an Agg canvas attached directly, so
neither importing this module nor writing a report imports ``pyplot`` or changes matplotlib's backend.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import io
import json
import logging
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aptune.errors import DataError

if TYPE_CHECKING:  # pragma: no cover - typing only; matplotlib is imported lazily
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["REPORT_SCHEMA_VERSION", "RunRecorder", "load_report", "write_report"]

logger = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = 1
"""Version of the ``report.json`` layout; bumped when a field changes meaning."""

_RESERVED_KEYS = frozenset(
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
_LOSS_KEYS = ("loss", "task_loss", "distill_loss", "pred_loss", "layer_loss")
_LOSS_COLORS = {
    "loss": "tab:blue",
    "task_loss": "tab:orange",
    "distill_loss": "tab:green",
    "pred_loss": "tab:purple",
    "layer_loss": "tab:brown",
}
# HF Trainer puts bookkeeping numbers next to the metrics of an evaluation; they are not dev metrics.
_NON_METRIC_MARKERS = ("runtime", "per_second", "epoch", "flos", "samples", "step")
_DPI = 110
_MAX_RANK_LINES = 12
_JSON_NAME = "report.json"
_MD_NAME = "report.md"
_PLOTS_DIR = "plots"


# ---------------------------------------------------------------------------------------------- JSON values
def _jsonable(value: Any, where: str = "value") -> Any:
    """Return ``value`` as plain JSON data (dict / list / str / int / float / bool / None).

    Tensors and numpy values become numbers or (nested) lists, dataclasses and objects with a
    ``to_dict()`` method become dicts, paths become strings, and NaN / inf become ``None``.

    Args:
        value: What to convert.
        where: Name of the value, used in the error message.

    Returns:
        A fresh JSON-ready structure (never shares mutable containers with ``value``).

    Raises:
        TypeError: ``value`` (or something inside it) has no JSON form.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return _jsonable(value.value, where)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _jsonable(to_dict(), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value), where)
    tolist = getattr(value, "tolist", None)  # torch.Tensor, numpy arrays and numpy scalars
    if callable(tolist):
        return _jsonable(tolist(), where)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return _jsonable(float(value), where)
    raise TypeError(
        f"{where} has type {type(value).__name__}, which cannot be stored in report.json; "
        "pass numbers, strings, lists or dicts"
    )


def _scalar(value: Any, where: str) -> int | float | None:
    """Convert a logged scalar (number, 0-d tensor, numpy scalar) to ``int`` / ``float`` / ``None``.

    Raises:
        TypeError: ``value`` is not a single number.
    """
    out = _jsonable(value, where)
    if out is None or (isinstance(out, (int, float)) and not isinstance(out, bool)):
        return out
    raise TypeError(f"{where} must be a single number, got {type(value).__name__}")


def _as_step(step: Any) -> int:
    """Validate an optimizer step number.

    Raises:
        ValueError: ``step`` is not a non-negative whole number.
    """
    try:
        value = _scalar(step, "step")
    except TypeError as exc:
        raise ValueError(f"step must be a non-negative integer, got {step!r}") from exc
    if value is None or value < 0 or value != int(value):
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    return int(value)


def _flat_floats(values: Any, where: str) -> list[float | None]:
    """Flatten a (nested) sequence or tensor of scores into a list of floats (non-finite -> None)."""
    data = _jsonable(values, where)
    out: list[float | None] = []

    def visit(item: Any) -> None:
        if isinstance(item, list):
            for sub in item:
                visit(sub)
        elif item is None:
            out.append(None)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            out.append(float(item))
        else:
            raise TypeError(f"{where} must hold numbers, got {type(item).__name__}")

    visit(data)
    return out


def _is_num(value: Any) -> bool:
    """True for a finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _rows(value: Any) -> list[dict[str, Any]]:
    """The dict entries of a list field of the report (tolerates missing or malformed fields)."""
    if not isinstance(value, list):
        return []
    return [row for row in value if isinstance(row, dict)]


def _mapping(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else an empty dict."""
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------------------------- recorder
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
        self._config: dict[str, Any] = _mapping(_jsonable(config, "config"))
        self._model: dict[str, Any] = _mapping(_jsonable(model_info, "model_info"))
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
        step = _as_step(step)
        row = {name: _scalar(value, f"log_step {name}") for name, value in values.items()}
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
        data = _jsonable(event, "event")
        data["step"] = _as_step(event["step"])
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
        step = _as_step(step)
        if not isinstance(metrics, Mapping):
            raise TypeError(f"log_eval expects a dict of metrics, got {type(metrics).__name__}")
        clean = {str(k): _scalar(v, f"log_eval {k}") for k, v in metrics.items()}
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
            "step": _as_step(step),
            "heads": _flat_floats(heads, "heads"),
            "neurons": _flat_floats(neurons, "neurons"),
            "hidden": _flat_floats(hidden, "hidden"),
        }
        self._salience = snapshot
        if event is not None:
            self._salience_history.append({"event": _scalar(event, "event"), **copy.deepcopy(snapshot)})

    def set_phase_time(self, phase: str, seconds: float) -> None:
        """Set the wall time of a phase (e.g. ``"calibration"``, ``"train"``, ``"eval"``, ``"export"``).

        Args:
            phase: Name of the phase; a second call for the same phase overwrites the first.
            seconds: Wall-clock seconds.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        value = _scalar(seconds, f"phase time {phase}")
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
        if key in _RESERVED_KEYS:
            raise ValueError(f"RunRecorder.set: {key!r} is a reserved report field; use another name")
        self._extra[str(key)] = _jsonable(value, key)

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
        data["summary"] = _summarize(data)
        return data

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
        data = _jsonable(data, "report")
        rec = cls(_mapping(data.get("config")), _mapping(data.get("model")))
        if isinstance(data.get("created"), str):
            rec._created = data["created"]
        rec._steps = _rows(data.get("steps"))
        rec._events = _rows(data.get("events"))
        rec._evals = _rows(data.get("evals"))
        rec._salience = data.get("salience") if isinstance(data.get("salience"), dict) else None
        rec._salience_history = _rows(data.get("salience_history"))
        rec._phase_times = {k: v for k, v in _mapping(data.get("phase_times")).items() if _is_num(v)}
        rec._extra = {k: v for k, v in data.items() if k not in _RESERVED_KEYS}
        return rec


# ---------------------------------------------------------------------------------------------- summary
def _config_value(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]``, also looked up one level down (e.g. ``config["apt"][key]``)."""
    if key in config:
        return config[key]
    for value in config.values():
        if isinstance(value, Mapping) and key in value:
            return value[key]
    return None


def _latest(steps: list[dict[str, Any]], events: list[dict[str, Any]], key: str) -> int | float | None:
    """The value of ``key`` at the largest step among step rows and events (events win ties)."""
    best: tuple[int, int] | None = None
    value = None
    for priority, rows in ((0, steps), (1, events)):
        for row in rows:
            v, s = row.get(key), row.get("step")
            if _is_num(v) and _is_num(s) and (best is None or (s, priority) >= best):
                best, value = (s, priority), v
    return value


def _per_layer(value: Any, num_layers: Any) -> list[float] | None:
    """A per-layer count from ``model_info``: a list as given, or an int repeated ``num_layers`` times."""
    if isinstance(value, list) and value and all(_is_num(v) for v in value):
        return [float(v) for v in value]
    if _is_num(value) and _is_num(num_layers) and num_layers > 0:
        return [float(value)] * int(num_layers)
    return None


def _sum_list(value: Any) -> int | float | None:
    """Sum of a list of numbers, or None when ``value`` is not one."""
    if isinstance(value, list) and value and all(_is_num(v) for v in value):
        return sum(value)
    return None


def _summarize(data: Mapping[str, Any]) -> dict[str, Any]:
    """Derive the ``summary`` block of a report from its other fields (missing figures are None)."""
    model = _mapping(data.get("model"))
    config = _mapping(data.get("config"))
    steps, events, evals = _rows(data.get("steps")), _rows(data.get("events")), _rows(data.get("evals"))
    before = model.get("params_before") if _is_num(model.get("params_before")) else None
    after = _latest(steps, events, "params")
    density = _latest(steps, events, "density")
    if density is None and before and after is not None:
        density = after / before
    last_event = events[-1] if events else {}
    final_metrics = data.get("final_metrics")
    source: str | None = "final_metrics"
    if not isinstance(final_metrics, dict) or not final_metrics:
        last_eval = next((e for e in reversed(evals) if _mapping(e.get("metrics"))), None)
        final_metrics = dict(last_eval["metrics"]) if last_eval else None
        source = "last_eval" if last_eval else None
    all_steps = [r["step"] for r in (*steps, *events, *evals) if _is_num(r.get("step"))]
    times = [v for v in _mapping(data.get("phase_times")).values() if _is_num(v)]
    hidden = last_event.get("hidden_size", model.get("hidden_size"))
    target = _config_value(config, "target_density")
    return {
        "params_before": before,
        "params_after": after,
        "params_ratio": after / before if before and after is not None else None,
        "total_params_before": model.get("total_params_before"),
        "final_density": density,
        "target_density": target if _is_num(target) else None,
        "num_events": len(events),
        "final_step": max(all_steps) if all_steps else None,
        "trainable_params": _latest(steps, events, "trainable_params"),
        "heads_kept": _sum_list(last_event.get("heads_per_layer")),
        "neurons_kept": _sum_list(last_event.get("ffn_per_layer")),
        "hidden_size": hidden if _is_num(hidden) else None,
        "final_metrics": final_metrics,
        "final_metrics_source": source,
        "wall_time_seconds": sum(times) if times else None,
    }


# ---------------------------------------------------------------------------------------------- files
def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    Readers never see a half-written file; on failure the old file (if any) is left untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _dump_json(value: Any, indent: int = 0) -> str:
    """Readable JSON: objects indented, but lists of scalars and flat rows kept on one line each.

    A run of thousands of steps then takes one line per step instead of a dozen.
    """
    pad, inner = "  " * indent, "  " * (indent + 1)

    def flat(v: Any) -> bool:
        if isinstance(v, dict):
            return all(not isinstance(x, (dict, list)) for x in v.values())
        if isinstance(v, list):
            return all(not isinstance(x, (dict, list)) for x in v)
        return True

    if isinstance(value, dict) and value and not (indent > 0 and flat(value) and len(value) <= 16):
        items = [f"{inner}{json.dumps(k)}: {_dump_json(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and not flat(value):
        items = [f"{inner}{_dump_json(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def load_report(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a run's ``report.json``.

    Args:
        run_dir: The run folder (or the path of ``report.json`` itself).

    Returns:
        The report dict, as written by :func:`write_report`.

    Raises:
        DataError: the file is missing, unreadable, not JSON, not a JSON object, or written by a newer
            report schema than this aptune reads.
    """
    path = Path(run_dir)
    if path.is_dir() or path.suffix != ".json":
        path = path / _JSON_NAME
    if not path.is_file():
        raise DataError(
            f"no report found: {path} does not exist; pass the folder of a finished run "
            "(write_report creates report.json there)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "the file is corrupt, re-create it with write_report"
        ) from exc
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, expected an object (a run report)")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise DataError(f"{path} has no integer 'schema_version'; it is not an aptune run report")
    if version > REPORT_SCHEMA_VERSION:
        raise DataError(
            f"{path} uses report schema {version}, newer than this aptune reads ({REPORT_SCHEMA_VERSION}); "
            "upgrade aptune"
        )
    return data


def write_report(
    run_dir: str | os.PathLike[str], report: Mapping[str, Any] | RunRecorder, *, plots: bool = True
) -> dict[str, Path]:
    """Write ``report.json``, ``plots/*.png`` and ``report.md`` into ``run_dir``.

    Each file is written atomically (temporary file in the same folder, then ``os.replace``).
    ``report.json`` is written first, so a failure while plotting never loses the numbers; a plot whose
    data is missing (no evaluations, no salience snapshot, ...) is skipped, and a plot that fails for
    any other reason is skipped with a logged warning. ``report.md`` embeds only the plots written by
    this call. Plots are drawn without ``pyplot`` and without touching matplotlib's backend.

    Args:
        run_dir: Output folder (created if missing).
        report: A :class:`RunRecorder` or a report dict (e.g. from :func:`load_report`); the ``summary``
            block is recomputed from the other fields.
        plots: Draw the PNG plots.

    Returns:
        ``{file name: path}`` of the files written: ``"report.json"``, ``"report.md"`` and one entry per
        plot written (``"density.png"``, ``"structure.png"``, ``"ranks.png"``, ``"loss.png"``,
        ``"salience.png"``; the files are in ``run_dir/plots/``).

    Raises:
        TypeError: ``report`` is neither a recorder nor a dict, or holds values with no JSON form.
        OSError: a file cannot be written.
    """
    if isinstance(report, RunRecorder):
        data = report.to_dict()
    elif isinstance(report, Mapping):
        data = _jsonable(report, "report")
        data.setdefault("schema_version", REPORT_SCHEMA_VERSION)
        data["summary"] = _summarize(data)
    else:
        raise TypeError(f"write_report expects a RunRecorder or a dict, got {type(report).__name__}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    json_path = run_dir / _JSON_NAME
    _atomic_write(json_path, (_dump_json(data) + "\n").encode("utf-8"))
    written[_JSON_NAME] = json_path

    if plots:
        written.update(_write_plots(data, run_dir / _PLOTS_DIR))

    md_path = run_dir / _MD_NAME
    plot_links = {
        name: path.relative_to(run_dir).as_posix() for name, path in written.items() if name.endswith(".png")
    }
    _atomic_write(md_path, _render_markdown(data, plot_links).encode("utf-8"))
    written[_MD_NAME] = md_path
    return written


# ---------------------------------------------------------------------------------------------- plots
def _write_plots(data: dict[str, Any], plots_dir: Path) -> dict[str, Path]:
    """Draw every plot that has data, save it as ``plots_dir/<name>.png``; return ``{"<name>.png": path}``."""
    import matplotlib

    written: dict[str, Path] = {}
    style = {
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
    for name, draw in _PLOT_FUNCTIONS.items():
        try:
            with matplotlib.rc_context(style):
                fig = draw(data)
                if fig is None:
                    logger.info("report: no data for %s.png, skipped", name)
                    continue
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=_DPI, facecolor="white")
        except Exception:  # a broken plot must not cost the rest of the report
            logger.warning("report: could not draw %s.png, skipped", name, exc_info=True)
            continue
        path = plots_dir / f"{name}.png"
        _atomic_write(path, buf.getvalue())
        written[path.name] = path
    return written


def _new_figure(width: float, height: float) -> Figure:
    """A constrained-layout ``Figure`` with its own Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _series(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of the rows that have a finite ``key``."""
    xs: list[float] = []
    ys: list[float] = []
    for row in rows:
        value, step = row.get(key), row.get("step")
        if _is_num(value) and _is_num(step):
            xs.append(step)
            ys.append(value)
    return xs, ys


def _count_unit(max_value: float) -> tuple[float, str]:
    """Divisor and unit word for a parameter count axis (``(1e6, "millions")``)."""
    for divisor, unit in ((1e9, "billions"), (1e6, "millions"), (1e3, "thousands")):
        if max_value >= divisor:
            return divisor, unit
    return 1.0, ""


def _step_axis(ax: Axes) -> None:
    """Label an x axis of optimizer steps and keep its ticks on whole steps."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _event_steps(data: Mapping[str, Any]) -> list[float]:
    """Steps of the pruning events."""
    return [e["step"] for e in _rows(data.get("events")) if _is_num(e.get("step"))]


def _mark_events(ax: Axes, steps: Sequence[float]) -> list[Any]:
    """Draw pruning events as dotted vertical lines; return ``[first line]`` (for a legend) or ``[]``."""
    lines = [
        ax.axvline(
            step, color="0.35", linestyle=":", linewidth=1.1, label="pruning event" if i == 0 else None
        )
        for i, step in enumerate(steps)
    ]
    return lines[:1]


def _ghost_twin_lines(ax: Axes, twin: Axes) -> None:
    """Let ``ax.legend(loc="best")`` avoid the lines of its twin axes too.

    "best" only looks at the artists of the legend's own axes; invisible copies of the twin's lines
    (in the twin's coordinates, added with ``add_artist`` so ``ax``'s data limits do not change) make
    it see them. The legend goes on the twin drawn last (``twinx()``), so no line is drawn over it.
    """
    from matplotlib.lines import Line2D

    for line in twin.get_lines():
        ghost = Line2D(line.get_xdata(), line.get_ydata(), transform=twin.transData, visible=False)
        ax.add_artist(ghost)


def _plot_density(data: Mapping[str, Any]) -> Figure | None:
    """Density and backbone parameter count vs step (twin y axes), events as dotted lines."""
    steps, events = _rows(data.get("steps")), _rows(data.get("events"))
    model, config = _mapping(data.get("model")), _mapping(data.get("config"))
    before = model.get("params_before") if _is_num(model.get("params_before")) else None
    xd, yd = _series(steps, "density")
    xp, yp = _series(steps, "params")
    if not xd and not xp:  # fall back to the events, starting from the dense model
        xd, yd = _series(events, "density")
        xp, yp = _series(events, "params")
        if xd:
            xd, yd = [0, *xd], [1.0, *yd]
        if xp and before:
            xp, yp = [0, *xp], [before, *yp]
    if not xd and not xp:
        return None

    fig = _new_figure(9.0, 4.8)
    ax = fig.add_subplot()
    handles = []
    if xd:
        handles += ax.plot(xd, yd, color="tab:blue", linewidth=2.2, label="density (kept / original)")
    xt, yt = _series(events, "target_density")
    if xt:
        handles += ax.plot(
            xt,
            yt,
            linestyle="none",
            marker="x",
            markersize=8,
            mew=2,
            color="tab:red",
            label="target density at event",
        )
    target = _config_value(config, "target_density")
    if _is_num(target):
        handles.append(
            ax.axhline(
                target,
                color="tab:red",
                linestyle="--",
                linewidth=1,
                alpha=0.6,
                label=f"final target ({target:.3f})",
            )
        )
    ax.set_ylim(0, 1.05)
    _step_axis(ax)
    ax.set_ylabel("density (fraction of backbone params kept)")
    handles += _mark_events(ax, _event_steps(data))

    if xp:
        ax2 = ax.twinx()
        ax2.grid(False)
        top = max([*yp, before or 0])
        divisor, unit = _count_unit(top)
        handles += ax2.plot(
            xp,
            [v / divisor for v in yp],
            color="tab:orange",
            linewidth=1.6,
            linestyle="--",
            label="backbone parameters",
        )
        ax2.set_ylim(0, top * 1.05 / divisor)
        ax2.set_ylabel(f"backbone parameters ({unit})" if unit else "backbone parameters", color="tab:orange")
        ax2.tick_params(axis="y", colors="tab:orange")
        _ghost_twin_lines(ax2, ax)
        ax2.legend(handles=handles, loc="best", framealpha=0.9)  # on the top axes: not drawn over
    else:
        ax.legend(handles=handles, loc="best", framealpha=0.9)
    name = model.get("name")
    ax.set_title(f"Density and backbone parameters over training{f' - {name}' if name else ''}")
    return fig


def _heatmap(
    fig: Figure,
    ax: Axes,
    matrix: Any,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    vmax: float,
    cbar_label: str,
    annotate: bool,
    fontsize: float = 8.0,
) -> None:
    """Draw a rows x columns heat map with optional numbers in the cells (NaN cells shown grey)."""
    import matplotlib
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.88")
    im = ax.imshow(
        np.ma.masked_invalid(matrix),
        aspect="auto",
        cmap=cmap,
        vmin=0,
        vmax=max(vmax, 1),
        interpolation="nearest",
    )
    ax.grid(False)
    n_rows, n_cols = matrix.shape
    ax.set_xticks(range(n_cols), col_labels, fontsize=8)
    step = max(1, math.ceil(n_rows / 40))
    ax.set_yticks(
        range(0, n_rows, step),
        [row_labels[i] for i in range(0, n_rows, step)],
        fontsize=8 if n_rows <= 24 else 7,
    )
    cbar = fig.colorbar(im, ax=ax, label=cbar_label, shrink=0.9, aspect=max(20, n_rows), pad=0.02)
    cbar.locator = MaxNLocator(integer=True)  # counts: no 0.5-heads ticks
    cbar.update_ticks()
    if annotate:
        for r in range(n_rows):
            for c in range(n_cols):
                v = matrix[r, c]
                if not np.isfinite(v):
                    continue
                dark = v / max(vmax, 1) < 0.55  # viridis is dark at the low end
                ax.text(
                    c,
                    r,
                    f"{v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if dark else "black",
                )


def _event_name(event: Mapping[str, Any], position: int) -> str:
    """``"#3"`` for pruning event 3, ``"pre-tune"`` for the one-shot pruning before tuning."""
    if event.get("kind") == "pretune":
        return "pre-tune"
    return f"#{event.get('index', position)}"


def _event_label(event: Mapping[str, Any], position: int) -> str:
    """Short column label of an event: name and step."""
    step = event.get("step")
    name = _event_name(event, position)
    return f"{name}\nstep {step}" if step is not None else name


def _plot_structure(data: Mapping[str, Any]) -> Figure | None:
    """Heat maps of heads and FFN neurons kept per layer (rows = layers, columns = start + events)."""
    import numpy as np

    model = _mapping(data.get("model"))
    events = [e for e in _rows(data.get("events")) if "heads_per_layer" in e or "ffn_per_layer" in e]
    if not events:
        return None
    panels = []
    for key, model_key, title, cbar in (
        ("heads_per_layer", "heads_per_layer", "Attention heads kept per layer", "heads kept"),
        ("ffn_per_layer", "ffn_per_layer", "FFN neurons kept per layer", "neurons kept"),
    ):
        columns = [e.get(key) if isinstance(e.get(key), list) else None for e in events]
        if not any(columns):
            continue
        start = _per_layer(model.get(model_key), model.get("num_layers"))
        cols = ([start] if start else []) + columns
        n_layers = max(len(c) for c in cols if c)
        matrix = np.full((n_layers, len(cols)), np.nan)
        for j, col in enumerate(cols):
            for i, v in enumerate(col or []):
                if _is_num(v):
                    matrix[i, j] = v
        labels = (["start"] if start else []) + [_event_label(e, i) for i, e in enumerate(events)]
        vmax = float(np.nanmax(matrix)) if np.isfinite(matrix).any() else 1.0
        panels.append((matrix, labels, vmax, title, cbar))
    if not panels:
        return None

    n_layers = max(p[0].shape[0] for p in panels)
    n_cols = max(p[0].shape[1] for p in panels)
    height = min(14.0, max(4.2, 0.32 * n_layers + 2.2))
    width_per_panel = min(9.0, max(4.8, 0.62 * n_cols + 2.2))
    fig = _new_figure(width_per_panel * len(panels), height)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    row_h_in = (height - 2.2) / n_layers
    annotate = row_h_in >= 0.17 and n_cols <= 16
    for ax, (matrix, labels, vmax, title, cbar) in zip(axes, panels, strict=True):
        digits = len(str(int(vmax)))
        fontsize = 8.0 if (digits <= 3 or n_cols <= 8) else 6.5
        _heatmap(
            fig,
            ax,
            matrix,
            row_labels=[str(i) for i in range(matrix.shape[0])],
            col_labels=labels,
            vmax=vmax,
            cbar_label=cbar,
            annotate=annotate,
            fontsize=fontsize,
        )
        ax.set_title(title)
        ax.set_xlabel("pruning event")
        ax.set_ylabel("layer")

    hidden = [model.get("hidden_size")] + [e.get("hidden_size") for e in events]
    known = [str(int(h)) if _is_num(h) else "?" for h in hidden]
    if any(_is_num(h) for h in hidden):
        if len(known) > 12:
            known = [*known[:6], "...", *known[-5:]]
        subtitle = "hidden size: " + " → ".join(known)
        if _is_num(hidden[0]):
            subtitle = "hidden size: " + known[0] + " (start) → " + " → ".join(known[1:])
    else:
        subtitle = ""
    title = "Structure kept after each pruning event"
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title)
    return fig


def _short_names(names: Sequence[str]) -> list[str]:
    """Adapter names without the dotted prefix they all share (``bert.encoder.layer.``)."""
    parts = [n.split(".") for n in names]
    if len(parts) < 2:
        return [n.split(".")[-1] if len(n) > 30 else n for n in names]
    common = 0
    for group in zip(*parts, strict=False):
        if len(set(group)) != 1:
            break
        common += 1
    common = min(common, min(len(p) for p in parts) - 1)
    short = [".".join(p[common:]) for p in parts]
    return [s if len(s) <= 34 else "…" + s[-33:] for s in short]


def _plot_ranks(data: Mapping[str, Any]) -> Figure | None:
    """Adapter ranks over events (lines, or a heat map for many adapters) and trainable parameters."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    events = _rows(data.get("events"))
    config = _mapping(data.get("config"))
    rank_events = [e for e in events if isinstance(e.get("ranks"), dict) and e["ranks"]]
    names: list[str] = []
    for e in rank_events:
        names += [n for n in e["ranks"] if n not in names]
    # Trainable parameters (adapters + task head + distillation layers) per step, or else per event;
    # the adapters' own parameter count at each event when the event reports it.
    counts = []
    xs, ys = _series(_rows(data.get("steps")), "trainable_params")
    if xs:
        counts.append((xs, ys, "trainable parameters (all)", "tab:green", None))
    else:
        xs, ys = _series(events, "trainable_params")
        if xs:
            counts.append((xs, ys, "trainable parameters (all)", "tab:green", "o"))
    xs, ys = _series(events, "adapter_params")
    if xs:
        counts.append((xs, ys, "adapter parameters (at events)", "tab:purple", "D"))
    if not names and not counts:
        return None

    many = len(names) > _MAX_RANK_LINES
    height = min(14.0, max(4.8, 0.24 * len(names) + 2.0)) if many else 4.8
    panels = (1 if names else 0) + (1 if counts else 0)
    fig = _new_figure(6.5 * panels if not many else 7.5 + 5.5 * (panels - 1), height)
    if panels == 2:
        axes = fig.subplots(1, 2, width_ratios=[1.35, 1] if many else [1, 1])
    else:
        axes = [fig.add_subplot()]
    ax_iter = iter(axes)

    if names:
        ax = next(ax_iter)
        initial = _config_value(config, "initial_rank")
        start = [float(initial)] * len(names) if _is_num(initial) else None
        labels = (["start"] if start else []) + [_event_label(e, i) for i, e in enumerate(rank_events)]
        matrix = np.full((len(names), len(labels)), np.nan)
        offset = 1 if start else 0
        if start:
            matrix[:, 0] = start
        for j, e in enumerate(rank_events):
            for i, n in enumerate(names):
                if _is_num(e["ranks"].get(n)):
                    matrix[i, j + offset] = e["ranks"][n]
        short = _short_names(names)
        if many:
            vmax = float(np.nanmax(matrix)) if np.isfinite(matrix).any() else 1.0
            row_h = (height - 2.0) / len(names)
            _heatmap(
                fig,
                ax,
                matrix,
                row_labels=short,
                col_labels=labels,
                vmax=vmax,
                cbar_label="rank",
                annotate=row_h >= 0.17 and len(labels) <= 16,
                fontsize=7,
            )
            ax.set_xlabel("pruning event")
            ax.set_title(f"Adapter ranks ({len(names)} adapters)")
        else:
            x = np.arange(len(labels))
            markers = "osD^v<>pP*hX"
            for i, n in enumerate(short):
                # Adapters often share a rank; later lines are thinner so identical ones stay visible.
                thick = (len(short) - 1 - i) / max(len(short) - 1, 1)
                ax.plot(
                    x,
                    matrix[i],
                    marker=markers[i % len(markers)],
                    linewidth=1.2 + 2.4 * thick,
                    markersize=4 + 4 * thick,
                    label=n,
                    alpha=0.85,
                )
            ax.set_xticks(x, labels, fontsize=8)
            ax.set_xlabel("pruning event")
            ax.set_ylabel("adapter rank")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7.5, loc="upper left", ncol=1 if len(names) <= 6 else 2, framealpha=0.9)
            ax.set_title("Adapter ranks")

    if counts:
        ax = next(ax_iter)
        top = max(max(ys) for _, ys, _, _, _ in counts)
        divisor, unit = _count_unit(top)
        for xs, ys, label, color, marker in counts:
            ax.plot(xs, [v / divisor for v in ys], color=color, marker=marker, linewidth=1.8, label=label)
        _mark_events(ax, _event_steps(data))
        ax.set_ylim(bottom=0, top=top * 1.1 / divisor if top > 0 else 1)
        _step_axis(ax)
        ax.set_ylabel(f"parameters ({unit})" if unit else "parameters")
        ax.set_title("Trainable parameters")
        ax.legend(loc="lower right", framealpha=0.9)
    return fig


def _ema(values: Sequence[float], span: int) -> list[float]:
    """Exponential moving average with the usual ``alpha = 2 / (span + 1)``."""
    alpha = 2.0 / (span + 1)
    out: list[float] = []
    acc = values[0]
    for v in values:
        acc = alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def _metric_keys(evals: list[dict[str, Any]]) -> list[str]:
    """Metric names of the evaluations, without Trainer bookkeeping (runtime, samples per second, ...)."""
    keys: list[str] = []
    for e in evals:
        for k, v in _mapping(e.get("metrics")).items():
            if k not in keys and _is_num(v) and not any(m in k.lower() for m in _NON_METRIC_MARKERS):
                keys.append(k)
    return keys


def _is_loss_like(name: str) -> bool:
    """Metrics where lower is better and the scale differs from accuracy-like ones."""
    low = name.lower()
    return "loss" in low or "perplexity" in low or low.endswith("ppl")


def _plot_loss(data: Mapping[str, Any]) -> Figure | None:
    """Training loss (and its components) vs step, and the dev metrics vs step on a second panel."""
    steps = _rows(data.get("steps"))
    evals = _rows(data.get("evals"))
    losses = [(k, *_series(steps, k)) for k in _LOSS_KEYS]
    losses = [(k, x, y) for k, x, y in losses if x]
    metric_keys = _metric_keys(evals)
    if not losses and not metric_keys:
        return None
    n_panels = (1 if losses else 0) + (1 if metric_keys else 0)
    fig = _new_figure(9.0, 3.9 * n_panels + 0.4)
    axes = fig.subplots(n_panels, 1, sharex=True, squeeze=False)[:, 0]
    ev = _event_steps(data)
    i = 0
    if losses:
        ax = axes[i]
        i += 1
        for key, x, y in losses:
            color = _LOSS_COLORS.get(key)
            label = key.replace("_", " ")
            if len(y) > 60:
                ax.plot(x, y, color=color, linewidth=0.7, alpha=0.25)
                ax.plot(
                    x, _ema(y, max(5, len(y) // 40)), color=color, linewidth=1.8, label=f"{label} (smoothed)"
                )
            else:
                ax.plot(x, y, color=color, linewidth=1.6, marker="." if len(y) < 30 else None, label=label)
        positive = [v for _, _, y in losses for v in y if v > 0]
        if (
            positive
            and min(positive) > 0
            and max(positive) / min(positive) > 200
            and len(positive) == sum(len(y) for _, _, y in losses)
        ):
            ax.set_yscale("log")  # components on very different scales (e.g. tiny distillation terms)
        _mark_events(ax, ev)
        ax.set_ylabel("training loss" + (" (log scale)" if ax.get_yscale() == "log" else ""))
        ax.set_title("Training loss")
        ax.legend(loc="best", framealpha=0.9)
    if metric_keys:
        ax = axes[i]
        plain = [k for k in metric_keys if not _is_loss_like(k)]
        lossy = [k for k in metric_keys if _is_loss_like(k)]
        handles = []
        main_keys, twin_keys = (plain, lossy) if plain else (lossy, [])
        for k in main_keys:
            x, y = _series(({"step": e.get("step"), **_mapping(e.get("metrics"))} for e in evals), k)
            handles += ax.plot(x, y, marker="o", linewidth=1.6, markersize=4, label=k)
        ax.set_ylabel(main_keys[0] if len(main_keys) == 1 else "dev metric")
        if twin_keys:
            ax2 = ax.twinx()
            ax2.grid(False)
            grays = ("0.35", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
            for j, k in enumerate(twin_keys):
                x, y = _series(({"step": e.get("step"), **_mapping(e.get("metrics"))} for e in evals), k)
                handles += ax2.plot(
                    x,
                    y,
                    marker="s",
                    linestyle="--",
                    linewidth=1.3,
                    markersize=4,
                    color=grays[j % len(grays)],
                    label=f"{k} (right axis)",
                )
            ax2.set_ylabel(twin_keys[0] if len(twin_keys) == 1 else "dev loss")
        handles += _mark_events(ax, ev)
        ax.set_title("Dev metrics")
        if twin_keys:
            _ghost_twin_lines(ax2, ax)
            ax2.legend(handles=handles, loc="best", framealpha=0.9)  # on the top axes: not drawn over
        else:
            ax.legend(handles=handles, loc="best", framealpha=0.9)
    _step_axis(axes[-1])
    return fig


def _plot_salience(data: Mapping[str, Any]) -> Figure | None:
    """Histograms (log x) of the latest salience scores of heads, neurons and hidden dimensions.

    Zeros cannot sit on a log axis; they are counted in each panel's note instead. Snapshots kept per
    pruning event (``salience_history``, last five) are drawn as grey outlines, darker = later.
    """
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    snap = _mapping(data.get("salience"))
    kinds = (
        ("heads", "Attention heads", "tab:blue"),
        ("neurons", "FFN neurons", "tab:orange"),
        ("hidden", "Hidden dimensions", "tab:green"),
    )
    values = {k: [v for v in (snap.get(k) or []) if _is_num(v)] for k, _, _ in kinds}
    if not any(values.values()):
        return None
    history = [h for h in _rows(data.get("salience_history")) if h.get("step") != snap.get("step")][-5:]
    shades = [str(round(0.78 - 0.5 * (j + 1) / (len(history) + 1), 2)) for j in range(len(history))]

    fig = _new_figure(14.0, 4.6 if history else 4.2)
    axes = fig.subplots(1, 3)
    for ax, (key, title, color) in zip(axes, kinds, strict=True):
        arr = np.asarray(values[key], dtype=float)
        pos = arr[arr > 0]
        zeros, neg = int((arr == 0).sum()), int((arr < 0).sum())
        ax.set_title(f"{title} (n={arr.size:,})")
        if pos.size == 0:
            message = "no scores logged" if arr.size == 0 else "no score above 0"
            ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        old = [
            np.asarray([v for v in (h.get(key) or []) if _is_num(v) and v > 0], dtype=float) for h in history
        ]
        everything = np.concatenate([pos, *old])
        lo, hi = float(everything.min()), float(everything.max())
        if hi / lo < 1.5:  # (nearly) one value: give the bins some width
            lo, hi = lo / 1.5, hi * 1.5
        n_bins = int(min(40, max(10, 2 * math.sqrt(pos.size))))
        bins = np.logspace(math.log10(lo), math.log10(hi), n_bins + 1)
        for scores, shade in zip(old, shades, strict=True):
            if scores.size:
                ax.hist(scores, bins=bins, histtype="step", color=shade, linewidth=1.0)
        ax.hist(pos, bins=bins, color=color, alpha=0.8, edgecolor="white", linewidth=0.4)
        median = float(np.median(pos))
        ax.axvline(median, color="black", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("salience score (log scale)")
        ax.set_ylabel("count")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if math.log10(hi / lo) < 2:  # narrow range: label 1-2-5 steps, not crowded minor ticks
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.2g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        note = f"median: {median:.3g}\nzeros: {zeros:,}" + (f"\nnegative: {neg:,}" if neg else "")
        ax.text(
            0.02,
            0.97,
            note,
            ha="left",
            va="top",
            transform=ax.transAxes,
            fontsize=8.5,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"},
        )
    handles: list[Any] = [
        Patch(facecolor="0.55", label=f"scores at step {snap.get('step')}"),
        Line2D([], [], color="black", linestyle="--", linewidth=1, label="median"),
    ]
    handles += [
        Line2D([], [], color=shade, linewidth=1.2, label=f"event {h.get('event')} (step {h.get('step')})")
        for h, shade in zip(history, shades, strict=True)
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"Salience distributions at step {snap.get('step')} (zeros counted, not drawn)")
    return fig


_PLOT_FUNCTIONS: dict[str, Callable[[Mapping[str, Any]], Figure | None]] = {
    "density": _plot_density,
    "structure": _plot_structure,
    "ranks": _plot_ranks,
    "loss": _plot_loss,
    "salience": _plot_salience,
}
_PLOT_TITLES = {
    "density": "Density and backbone parameters over training",
    "structure": "Heads and FFN neurons kept per layer",
    "ranks": "Adapter ranks and trainable parameters",
    "loss": "Training loss and dev metrics",
    "salience": "Salience distributions",
}


# ---------------------------------------------------------------------------------------------- markdown
_DASH = "–"


def _fmt_int(value: Any) -> str:
    """``12,345`` or a dash."""
    return f"{round(value):,}" if _is_num(value) else _DASH


def _fmt_density(value: Any) -> str:
    """Three decimals or a dash."""
    return f"{value:.3f}" if _is_num(value) else _DASH


def _fmt_number(value: Any) -> str:
    """A metric or other number: ints with separators, floats with 4 decimals (or 3 significant digits)."""
    if isinstance(value, bool) or value is None:
        return _DASH if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not _is_num(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if abs(value) >= 0.01:
        return f"{value:.4f}"
    return f"{value:.3g}"


def _fmt_seconds(seconds: Any) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``1 h 02 min``."""
    if not _is_num(seconds):
        return _DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def _fmt_bytes(value: Any) -> str:
    """``3.21 GiB`` (binary units) for a byte count."""
    if not _is_num(value):
        return _fmt_value("", value)
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} TiB"


_BYTE_SUFFIXES = (
    ("_bytes", 1),
    ("_kb", 1024),
    ("_kib", 1024),
    ("_mb", 1024**2),
    ("_mib", 1024**2),
    ("_gb", 1024**3),
    ("_gib", 1024**3),
)


def _fmt_value(key: str, value: Any) -> str:
    """Format a free-form value by its key.

    Memory: a ``_bytes`` / ``_mb`` / ``_gb`` (or ``_kib`` / ``_mib`` / ``_gib``) suffix gives the unit,
    otherwise a key containing ``memory`` is taken as bytes; ``..._seconds`` / ``..._time`` are
    durations; ``ratio`` / ``density`` get three decimals; whole numbers get thousands separators.
    """
    low = key.lower()
    if _is_num(value):
        for suffix, scale in _BYTE_SUFFIXES:
            if low.endswith(suffix):
                return _fmt_bytes(value * scale)
        if "memory" in low:
            return _fmt_bytes(value)
        if low.endswith(("seconds", "_time", "_s")) or low in {"time", "seconds"}:
            return _fmt_seconds(value)
        if "ratio" in low or "density" in low:
            return f"{value:.3f}"
        if isinstance(value, int) or (abs(value) >= 1000 and float(value).is_integer()):
            return _fmt_int(value)
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 90 else text[:87] + "..."
    return _DASH if value is None else str(value)


def _md_escape(text: Any) -> str:
    """Make text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> list[str]:
    """Lines of a Markdown table; ``align`` is one letter per column (``l`` / ``r``)."""
    align = align or "l" * len(headers)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return lines


def _flatten_fields(key: str, value: Any) -> list[tuple[str, str]]:
    """``(label, text)`` rows for a free-form field: dicts one level deep become one row per entry."""
    if isinstance(value, dict) and value:
        return [(f"{key}: {k}", _fmt_value(f"{key}_{k}", v)) for k, v in value.items()]
    return [(key, _fmt_value(key, value))]


def _removed_text(removed: Any) -> str:
    """``12 heads, 1,024 neurons, 16 hidden`` from an event's ``removed`` dict."""
    if not isinstance(removed, dict) or not removed:
        return _DASH
    parts = [f"{_fmt_int(removed[k])} {k}" for k in ("heads", "neurons", "hidden") if _is_num(removed.get(k))]
    parts += [f"{_fmt_number(v)} {k}" for k, v in removed.items() if k not in ("heads", "neurons", "hidden")]
    return ", ".join(parts) if parts else _DASH


def _render_markdown(data: Mapping[str, Any], plot_links: Mapping[str, str]) -> str:
    """The text of ``report.md``."""
    model, config = _mapping(data.get("model")), _mapping(data.get("config"))
    summary = _mapping(data.get("summary")) or _summarize(data)
    name = model.get("name") or "model"
    out = [f"# aptune report: {name}", ""]

    facts = []
    if model.get("model_type"):
        facts.append(f"type `{model['model_type']}`")
    if _is_num(model.get("num_layers")):
        facts.append(f"{model['num_layers']} layers")
    for key, label in (("heads_per_layer", "heads / layer"), ("ffn_per_layer", "FFN neurons / layer")):
        v = model.get(key)
        if _is_num(v):
            facts.append(f"{_fmt_int(v)} {label}")
        elif isinstance(v, list) and v:
            facts.append(f"{_fmt_int(_sum_list(v))} {label.split(' /')[0]} in total")
    if _is_num(model.get("hidden_size")):
        facts.append(f"hidden size {model['hidden_size']}")
    meta = [f"aptune {data['aptune_version']}"] if data.get("aptune_version") else []
    if data.get("created"):
        meta.append(f"recorded {data['created']}")
    if facts:
        out += ["Model: " + ", ".join(facts) + ".  ", ""]
    if meta:
        out += ["_" + " · ".join(meta) + "_", ""]

    # Summary
    rows: list[tuple[str, str]] = [
        ("Backbone parameters before", _fmt_int(summary.get("params_before"))),
        ("Backbone parameters after", _fmt_int(summary.get("params_after"))),
    ]
    ratio = summary.get("params_ratio")
    rows.append(
        ("Parameters kept (after / before)", f"{ratio:.3f} ({ratio:.1%})" if _is_num(ratio) else _DASH)
    )
    if _is_num(summary.get("total_params_before")):
        rows.append(
            ("All parameters before (incl. embeddings, head)", _fmt_int(summary["total_params_before"]))
        )
    rows.append(("Final density", _fmt_density(summary.get("final_density"))))
    if _is_num(summary.get("target_density")):
        rows.append(("Target density", _fmt_density(summary["target_density"])))
    rows.append(("Pruning events", str(summary.get("num_events", 0))))
    if _is_num(summary.get("final_step")):
        rows.append(("Final step", _fmt_int(summary["final_step"])))
    if _is_num(summary.get("trainable_params")):
        rows.append(("Trainable parameters (final)", _fmt_int(summary["trainable_params"])))
    final = _mapping(summary.get("final_metrics"))
    final = {k: final[k] for k in _metric_keys([{"metrics": final}])}  # without runtime, epoch, ...
    where = (
        " (final model)" if summary.get("final_metrics_source") == "final_metrics" else " (last evaluation)"
    )
    for k, v in final.items():
        rows.append((f"Dev {k}{where}", _fmt_number(v)))
    if not final:
        rows.append(("Dev metrics", "none recorded"))
    phase_times = _mapping(data.get("phase_times"))
    for phase, secs in phase_times.items():
        rows.append((f"Wall time: {phase}", _fmt_seconds(secs)))
    if len(phase_times) > 1:
        rows.append(("Wall time: total", _fmt_seconds(summary.get("wall_time_seconds"))))
    for key, label in (("peak_memory", "Peak memory"), ("throughput", "Throughput")):
        if key in data:
            rows += [(lab.replace(key, label, 1), text) for lab, text in _flatten_fields(key, data[key])]
    out += ["## Summary", "", *_md_table(["", "value"], rows, "lr"), ""]

    # Events
    events = _rows(data.get("events"))
    if events:
        start_heads = _sum_list(_per_layer(model.get("heads_per_layer"), model.get("num_layers")))
        start_ffn = _sum_list(_per_layer(model.get("ffn_per_layer"), model.get("num_layers")))
        table = [
            [
                "start",
                "0",
                _DASH,
                _fmt_density(1.0),
                _fmt_int(model.get("params_before")),
                _fmt_int(start_heads),
                _fmt_int(start_ffn),
                _fmt_int(model.get("hidden_size")),
                _DASH,
                _DASH,
            ]
        ]
        for i, e in enumerate(events):
            table.append(
                [
                    _event_name(e, i).lstrip("#"),
                    _fmt_int(e.get("step")),
                    _fmt_density(e.get("target_density")),
                    _fmt_density(e.get("density")),
                    _fmt_int(e.get("params")),
                    _fmt_int(_sum_list(e.get("heads_per_layer"))),
                    _fmt_int(_sum_list(e.get("ffn_per_layer"))),
                    _fmt_int(e.get("hidden_size")),
                    _removed_text(e.get("removed")),
                    _fmt_int(e.get("trainable_params")),
                ]
            )
        headers = [
            "event",
            "step",
            "target density",
            "density",
            "params",
            "heads",
            "neurons",
            "hidden",
            "removed",
            "trainable params",
        ]
        out += ["## Pruning events", "", *_md_table(headers, table, "rrrrrrrrlr"), ""]

    # Dev metrics over time
    evals = _rows(data.get("evals"))
    keys = _metric_keys(evals)
    if evals and keys:
        shown = evals[-30:]
        out += ["## Dev evaluations", ""]
        if len(evals) > len(shown):
            out += [f"Last {len(shown)} of {len(evals)} evaluations (all are in report.json).", ""]
        table = [
            [_fmt_int(e.get("step"))] + [_fmt_number(_mapping(e.get("metrics")).get(k)) for k in keys]
            for e in shown
        ]
        out += [*_md_table(["step", *keys], table, "r" * (len(keys) + 1)), ""]

    # Other free-form fields
    extra = [
        (k, v)
        for k, v in data.items()
        if k not in _RESERVED_KEYS and k not in ("final_metrics", "peak_memory", "throughput")
    ]
    if extra:
        rows = [row for k, v in extra for row in _flatten_fields(k, v)]
        out += ["## Other measurements", "", *_md_table(["", "value"], rows, "lr"), ""]

    # Plots
    if plot_links:
        out += ["## Plots", ""]
        for key, link in plot_links.items():
            title = _PLOT_TITLES.get(key.removesuffix(".png"), key)
            out += [f"### {title}", "", f"![{title}]({link})", ""]

    if config:
        out += [
            "## Configuration",
            "",
            "<details><summary>config</summary>",
            "",
            "```json",
            json.dumps(config, indent=2, ensure_ascii=False),
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(out)
