"""Tests of `aptune.report`: the run record, report.json round trip, plots and the Markdown page."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from aptune.errors import DataError
from aptune.report import REPORT_SCHEMA_VERSION, RunRecorder, load_report, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("density", "structure", "ranks", "loss", "salience")
ADAPTERS = ("layer.0.query", "layer.0.value", "layer.1.query", "layer.1.value")


def _model_info() -> dict:
    return {
        "name": "tiny-bert",
        "model_type": "bert",
        "params_before": 10_000,
        "total_params_before": 12_500,
        "num_layers": 2,
        "heads_per_layer": 4,
        "ffn_per_layer": 32,
        "hidden_size": 16,
    }


def _recorder(*, evals: bool = True, salience: bool = True) -> RunRecorder:
    """A 2-layer run: 21 steps, 2 pruning events (steps 5 and 10), evaluations at steps 10 and 20."""
    rec = RunRecorder({"target_density": 0.5, "initial_rank": 2}, _model_info())
    events = {
        5: {
            "index": 0,
            "target_density": 0.8,
            "density": 0.8123,
            "params": 8_123,
            "heads_per_layer": [4, 3],
            "ffn_per_layer": [28, 28],
            "hidden_size": 16,
            "removed": {"heads": 1, "neurons": 8, "hidden": 0},
            "ranks": dict.fromkeys(ADAPTERS, 4),
            "trainable_params": 1_234,
        },
        10: {
            "index": 1,
            "target_density": 0.5,
            "density": 0.5012,
            "params": 5_012,
            "heads_per_layer": [3, 2],
            "ffn_per_layer": [20, 16],
            "hidden_size": 12,
            "removed": {"heads": 2, "neurons": 20, "hidden": 4},
            "ranks": {"layer.0.query": 6, "layer.0.value": 4, "layer.1.query": 8, "layer.1.value": 6},
            "trainable_params": 2_468,
        },
    }
    density, params, trainable = 1.0, 10_000, 640
    for step in range(21):
        if step in events:
            rec.log_event({"step": step, **events[step]})
            density, params = events[step]["density"], events[step]["params"]
            trainable = events[step]["trainable_params"]
            if salience:
                rec.log_salience(
                    step,
                    [0.1 * (i + 1) for i in range(7)],
                    [0.0, *range(1, 56)],
                    [1e-3] * 16,
                    event=events[step]["index"],
                )
        task = 1.0 / (1 + step)
        rec.log_step(
            step,
            loss=task + 0.1,
            task_loss=task,
            distill_loss=0.1,
            density=density,
            params=params,
            trainable_params=trainable,
            lr=1e-4,
        )
        if evals and step in (10, 20):
            rec.log_eval(
                step, {"eval_accuracy": 0.5 + step / 100, "eval_loss": 1.0 - step / 40, "eval_runtime": 0.3}
            )
    if salience:
        rec.log_salience(20, [0.5, 0.0, 0.25, 0.125, 1.0], list(np.linspace(0, 2, 36)), [1.0, 2.0] * 6)
    rec.set_phase_time("train", 75.5)
    rec.set_phase_time("export", 2.25)
    rec.set("peak_memory", 3 * 1024**3)
    rec.set("throughput", {"train_samples_per_second": 123.4})
    return rec


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"


def test_write_report_round_trip_plots_and_markdown(tmp_path: Path) -> None:
    import matplotlib
    from matplotlib.image import imread

    rec = _recorder()
    pyplot_before = "matplotlib.pyplot" in sys.modules
    backend_before = dict.__getitem__(matplotlib.rcParams, "backend")  # raw value: no backend resolution
    written = write_report(tmp_path / "run", rec)
    # Plots use Figure objects with their own Agg canvas: no pyplot, no global backend change.
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend_before
    if not pyplot_before:
        assert "matplotlib.pyplot" not in sys.modules
    run = tmp_path / "run"

    assert set(written) == {"report.json", "report.md", *(f"{name}.png" for name in PLOTS)}
    assert written["report.json"] == run / "report.json"
    assert written["report.md"] == run / "report.md"
    loaded = load_report(run)
    assert loaded == rec.to_dict()
    assert loaded["schema_version"] == REPORT_SCHEMA_VERSION
    assert load_report(run / "report.json") == loaded  # the file path works too

    summary = loaded["summary"]
    assert summary["params_before"] == 10_000
    assert summary["params_after"] == 5_012
    assert summary["params_ratio"] == pytest.approx(0.5012)
    assert summary["final_density"] == pytest.approx(0.5012)
    assert summary["target_density"] == 0.5
    assert summary["num_events"] == 2
    assert summary["final_step"] == 20
    assert summary["heads_kept"] == 5 and summary["neurons_kept"] == 36 and summary["hidden_size"] == 12
    assert summary["final_metrics"] == {"eval_accuracy": 0.7, "eval_loss": 0.5, "eval_runtime": 0.3}
    assert summary["final_metrics_source"] == "last_eval"
    assert summary["wall_time_seconds"] == pytest.approx(77.75)
    assert loaded["salience"]["step"] == 20
    assert [(h["event"], h["step"]) for h in loaded["salience_history"]] == [(0, 5), (1, 10)]

    for name in PLOTS:
        assert written[f"{name}.png"] == run / "plots" / f"{name}.png"
        _assert_png(written[f"{name}.png"])
        image = imread(written[f"{name}.png"])
        height, width = image.shape[:2]
        assert 300 <= height <= 2000 and 500 <= width <= 2000, (name, image.shape)
        assert image.std() > 0.01, f"{name}.png is blank"
    assert not list(run.rglob("*.tmp")), "temporary files left behind"

    md = written["report.md"].read_text(encoding="utf-8")
    assert md.startswith("# aptune report: tiny-bert")
    for row in (
        "| Backbone parameters before | 10,000 |",
        "| Backbone parameters after | 5,012 |",
        "| Parameters kept (after / before) | 0.501 (50.1%) |",
        "| Final density | 0.501 |",
        "| Target density | 0.500 |",
        "| Dev eval_accuracy (last evaluation) | 0.7000 |",
        "| Wall time: train | 1 min 16 s |",
        "| Wall time: export | 2.2 s |",
        "| Peak memory | 3.00 GiB |",
        "| Throughput: train_samples_per_second | 123.4 |",
        "| start | 0 | – | 1.000 | 10,000 | 8 | 64 | 16 | – | – |",
        "| 0 | 5 | 0.800 | 0.812 | 8,123 | 7 | 56 | 16 | 1 heads, 8 neurons, 0 hidden | 1,234 |",
        "| 1 | 10 | 0.500 | 0.501 | 5,012 | 5 | 36 | 12 | 2 heads, 20 neurons, 4 hidden | 2,468 |",
        "| 20 | 0.7000 | 0.5000 |",
    ):
        assert row in md, f"missing row: {row}"
    assert (
        "eval_runtime |" not in md.split("## Dev evaluations")[1].split("\n")[2]
    )  # bookkeeping not a metric
    for name in PLOTS:
        assert f"](plots/{name}.png)" in md


def test_run_without_evals_or_salience(tmp_path: Path) -> None:
    written = write_report(tmp_path, _recorder(evals=False, salience=False))
    assert set(written) == {
        "report.json",
        "report.md",
        "density.png",
        "structure.png",
        "ranks.png",
        "loss.png",
    }
    md = written["report.md"].read_text(encoding="utf-8")
    assert "plots/salience.png" not in md
    assert "| Dev metrics | none recorded |" in md
    assert "## Dev evaluations" not in md
    assert load_report(tmp_path)["summary"]["final_metrics"] is None


def test_empty_run_and_no_plots(tmp_path: Path) -> None:
    rec = RunRecorder({}, {"name": "empty"})
    written = write_report(tmp_path / "a", rec)
    assert set(written) == {"report.json", "report.md"}
    assert load_report(tmp_path / "a") == rec.to_dict()
    assert "# aptune report: empty" in written["report.md"].read_text(encoding="utf-8")

    written = write_report(tmp_path / "b", _recorder(), plots=False)
    assert set(written) == {"report.json", "report.md"}
    assert not (tmp_path / "b" / "plots").exists()
    assert "![" not in written["report.md"].read_text(encoding="utf-8")


def test_write_report_accepts_a_loaded_dict(tmp_path: Path) -> None:
    rec = _recorder()
    write_report(tmp_path / "a", rec, plots=False)
    data = load_report(tmp_path / "a")
    data["summary"] = {"stale": True}  # recomputed on write
    write_report(tmp_path / "b", data, plots=False)
    assert load_report(tmp_path / "b") == rec.to_dict()
    again = RunRecorder.from_dict(load_report(tmp_path / "b"))
    assert again.to_dict() == rec.to_dict()
    with pytest.raises(TypeError, match="RunRecorder or a dict"):
        write_report(tmp_path / "c", [1, 2])  # type: ignore[arg-type]


def test_many_adapters_use_a_heat_map_and_final_metrics_win(tmp_path: Path) -> None:
    rec = RunRecorder({"initial_rank": 4}, _model_info())
    names = [f"encoder.layer.{i // 8}.m{i % 8}" for i in range(16)]
    for k in range(3):
        rec.log_event({"step": 10 * (k + 1), "ranks": {n: 4 + k * (i % 3) for i, n in enumerate(names)}})
    rec.log_eval(30, {"accuracy": 0.5})
    rec.set("final_metrics", {"accuracy": 0.75})
    written = write_report(tmp_path, rec)
    assert set(written) == {
        "report.json",
        "report.md",
        "ranks.png",
        "loss.png",
    }  # no structure, density or salience
    _assert_png(written["ranks.png"])
    assert "| Dev accuracy (final model) | 0.7500 |" in written["report.md"].read_text(encoding="utf-8")


def test_a_failing_plot_is_skipped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import aptune.report.plots as plots

    def broken(data: dict) -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(plots.PLOT_FUNCTIONS, "salience", broken)
    with caplog.at_level(logging.WARNING, logger="aptune.report"):
        written = write_report(tmp_path, _recorder())
    assert "salience.png" not in written and "density.png" in written
    assert "salience.png" in caplog.text
    assert "plots/salience.png" not in written["report.md"].read_text(encoding="utf-8")


def test_recorder_converts_and_validates_values() -> None:
    torch = pytest.importorskip("torch")
    rec = RunRecorder({"target_density": np.float32(0.5)}, {"name": "m", "params_before": np.int64(100)})
    rec.log_step(np.int64(3), loss=torch.tensor(0.5), density=float("nan"), params=np.int64(90))
    rec.log_step(3, lr=1e-3)  # same step: merged
    rec.log_step(4, loss=math.inf)
    rec.log_salience(4, torch.tensor([[0.5, 0.25], [1.0, 0.0]]), np.arange(3), [0.1])
    rec.log_eval(4, {"acc": np.float64(0.25)})
    rec.set("export", {"path": Path("out"), "sizes": (1, 2)})
    data = rec.to_dict()
    json.dumps(data, allow_nan=False)  # plain JSON, no NaN
    assert data["config"]["target_density"] == pytest.approx(0.5)
    assert data["steps"] == [
        {"step": 3, "loss": 0.5, "density": None, "params": 90, "lr": 1e-3},
        {"step": 4, "loss": None},
    ]
    assert data["salience"] == {
        "step": 4,
        "heads": [0.5, 0.25, 1.0, 0.0],
        "neurons": [0.0, 1.0, 2.0],
        "hidden": [0.1],
    }
    assert data["export"] == {"path": "out", "sizes": [1, 2]}
    assert data["summary"]["params_after"] == 90

    data["steps"].clear()  # to_dict returns a copy
    assert len(rec.to_dict()["steps"]) == 2

    with pytest.raises(ValueError, match="reserved"):
        rec.set("steps", [])
    with pytest.raises(ValueError, match="step"):
        rec.log_step(-1, loss=1.0)
    with pytest.raises(ValueError, match="step"):
        rec.log_event({"density": 0.5})
    with pytest.raises(TypeError, match="single number"):
        rec.log_step(5, loss=[1.0, 2.0])
    with pytest.raises(ValueError, match="seconds"):
        rec.set_phase_time("train", -1.0)
    with pytest.raises(TypeError, match="cannot be stored"):
        rec.set("thing", object())


def test_load_report_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no report found.*report\.json"):
        load_report(tmp_path / "missing")
    with pytest.raises(DataError, match="no report found"):
        load_report(tmp_path)

    write_report(tmp_path, RunRecorder({}, {"name": "m"}), plots=False)
    path = tmp_path / "report.json"
    path.write_text(path.read_text(encoding="utf-8")[:40], encoding="utf-8")  # truncated write
    with pytest.raises(DataError, match="not valid JSON"):
        load_report(tmp_path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_report(tmp_path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match="expected an object"):
        load_report(tmp_path)
    path.write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(DataError, match="schema_version"):
        load_report(tmp_path)
    path.write_text(json.dumps({"schema_version": REPORT_SCHEMA_VERSION + 1}), encoding="utf-8")
    with pytest.raises(DataError, match="newer"):
        load_report(tmp_path)


def test_markdown_formats_free_form_fields_and_pretune_event(tmp_path: Path) -> None:
    rec = RunRecorder({}, _model_info())
    rec.log_event({"step": 0, "index": -1, "kind": "pretune", "density": 0.75, "params": 7_500})
    rec.set("peak_memory", {"peak_rss_mb": 512.0, "cuda_max_allocated_mb": 2048})
    rec.set("export", {"total_params": 1_234_567, "total_params_ratio": 0.4567, "path": "out/model"})
    rec.set("teacher_cost", {"seconds": 75.0, "note": "no-grad | forwards"})
    md = write_report(tmp_path, rec, plots=False)["report.md"].read_text(encoding="utf-8")
    for row in (
        "| Peak memory: peak_rss_mb | 512.00 MiB |",
        "| Peak memory: cuda_max_allocated_mb | 2.00 GiB |",
        "| export: total_params | 1,234,567 |",
        "| export: total_params_ratio | 0.457 |",
        "| export: path | out/model |",
        "| teacher_cost: seconds | 1 min 15 s |",
        "| teacher_cost: note | no-grad \\| forwards |",
        "| pre-tune | 0 | – | 0.750 | 7,500 |",
    ):
        assert row in md, f"missing row: {row}"
    assert "**Note:**" not in md  # no event carries a note


def test_markdown_shows_why_hidden_dimensions_stayed(tmp_path: Path) -> None:
    from aptune.option_checks import hidden_stay_note

    rec = RunRecorder({}, _model_info())
    event = {"step": 0, "index": -1, "kind": "pretune", "density": 0.7, "params": 7_000}
    rec.log_event({**event, "hidden_note": hidden_stay_note(0.7)})
    md = write_report(tmp_path, rec, plots=False)["report.md"].read_text(encoding="utf-8")
    events = md.split("## Pruning events")[1]
    assert "**Note:** pre-tune: hidden dimensions stay:" in events
    assert "pretune_density 0.7 (the target)" in events


def test_markdown_lists_the_copying_heads_the_selection_kept(tmp_path: Path) -> None:
    event = {"step": 0, "index": -1, "kind": "pretune", "density": 0.7, "params": 7_000}
    units = [{"layer": 17, "unit": 1, "score": 0.7812}, {"layer": 18, "unit": 2, "score": 0.8875}]
    pages = {}
    for name, measured in (("some", units), ("none", []), ("off", None)):
        rec = RunRecorder({}, _model_info())
        rec.log_event({**event, **({"copy_heads": measured} if measured is not None else {})})
        rec.log_event({**event, "step": 5, "index": 0, "kind": "prune"})
        folder = tmp_path / name
        pages[name] = write_report(folder, rec, plots=False)["report.md"].read_text(encoding="utf-8")
    listed = "layer 17 unit 1 (0.7812), layer 18 unit 2 (0.8875)."
    assert f"**Copying heads kept by every selection** (induction score): {listed}" in pages["some"]
    assert "no attention unit reached the induction threshold" in pages["none"]
    assert "Copying heads" not in pages["off"]


def test_memory_fields_with_a_unit_word_inside_the_key_use_that_unit(tmp_path: Path) -> None:
    """``peak_rss_mb_after_export`` holds MiB: 1610 MiB is 1.57 GiB, not 1,610 bytes (1.57 KiB)."""
    rec = RunRecorder({}, _model_info())
    rec.set("peak_memory", {"peak_rss_mb": 1500.0, "peak_rss_mb_after_export": 1610.0, "total_bytes": 2048})
    md = write_report(tmp_path, rec, plots=False)["report.md"].read_text(encoding="utf-8")
    assert "| Peak memory: peak_rss_mb_after_export | 1.57 GiB |" in md
    assert "| Peak memory: peak_rss_mb | 1.46 GiB |" in md
    assert "| Peak memory: total_bytes | 2.00 KiB |" in md
    assert "KiB" not in md.split("total_bytes")[0]


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("peak_rss_mb_after_export", 1610.0, "1.57 GiB"),
        ("vram_gib", 2.0, "2.00 GiB"),
        ("cache_kib_at_end", 512, "512.00 KiB"),
        ("peak_memory", 3 * 1024**3, "3.00 GiB"),  # no unit word: bytes
        ("rss_mb_ratio", 1.0834, "1.083"),  # a ratio has no unit
        ("teacher_seconds", 75.0, "1 min 15 s"),
    ],
)
def test_fmt_value_units(key: str, value: float, text: str) -> None:
    from aptune.report.format import fmt_value

    assert fmt_value(key, value) == text
