"""Run reports: ``report.json``, PNG plots and a Markdown page.

A run hands what it measures to a :class:`RunRecorder` (per-step scalars, pruning events, dev
evaluations, salience snapshots, wall time per phase, free-form extras). :func:`write_report` turns the
record into ``report.json`` (every figure the run measured), ``plots/*.png`` and ``report.md`` (a
summary page that embeds the plots); :func:`load_report` reads ``report.json`` back.

Modules: `recorder` (the record), `summary` (derived figures), `plots`, `page` (Markdown), `files`
(reading and writing), and the layer the benchmark pages share: `format` (numbers), `tables`
(Markdown tables), `figures` (matplotlib figures and PNG files).

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
neither importing this package nor writing a report imports ``pyplot`` or changes matplotlib's backend.
"""

from aptune.report.files import load_report, write_report
from aptune.report.recorder import REPORT_SCHEMA_VERSION, RunRecorder

__all__ = ["REPORT_SCHEMA_VERSION", "RunRecorder", "load_report", "write_report"]
