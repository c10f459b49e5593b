"""Resuming a benchmark from a results file (``--import-results``): the records move, nothing retrains."""

from __future__ import annotations

import json

import pytest

from aptune.bench import BenchConfig, run_benchmark
from aptune.bench.config import suite_config
from aptune.bench.imported import ImportedRecords
from aptune.bench.plan import plan_grid
from aptune.errors import ConfigError
from test_bench import tiny_bench_options, tiny_setup  # noqa: F401  (the fixture: a tiny BERT folder and a CSV split)


def _results_file(
    tmp_path,
    config: BenchConfig,
    records: dict,
    grid_records: dict | None = None,
    latency: dict | None = None,
):
    path = tmp_path / "page.json"
    payload = {"config": config.to_dict(), "results": records, "grid_records": grid_records or {}}
    if latency is not None:
        payload["latency"] = latency
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def _record(job, perplexity: float) -> dict:
    return {"job": job.to_dict(), "final_metrics": {"perplexity": perplexity}, "reused_from": "x"}


def test_a_record_seeds_the_job_that_computed_the_same_thing_whatever_its_id(tmp_path):
    config = suite_config("smollm2-bbc")
    first, _ = plan_grid(config)
    lora = [j for j in first if j.method == "lora"]
    headline_like = lora[0].__class__(**{**lora[0].to_dict(), "id": "lora-s0", "phase": "headline"})
    path = _results_file(tmp_path, config, {"lora-s0": _record(headline_like, 23.7)})
    imported = ImportedRecords.load(path, config)
    found = imported.find(lora[0])
    assert found is not None and found["final_metrics"]["perplexity"] == 23.7
    assert found["job"] == lora[0].to_dict() and found["imported_from"] == str(path)
    assert "reused_from" not in found
    assert imported.find(lora[1]) is None  # another learning rate is another run
    apt = next(j for j in first if j.method == "apt" and j.lr == lora[0].lr)
    assert imported.find(apt) is None


def test_grid_records_are_read_too(tmp_path):
    config = suite_config("smollm2-bbc")
    first, _ = plan_grid(config)
    job = first[-1]
    path = _results_file(tmp_path, config, {}, {job.id: _record(job, 40.0)})
    assert ImportedRecords.load(path, config).find(job)["final_metrics"]["perplexity"] == 40.0


def test_a_variant_restated_when_a_default_changed_finds_its_record(tmp_path):
    """apt-uniform ran before it named uniform_heads; its record still stands for it."""
    from aptune.bench.plan import _job

    config = suite_config("smollm2-bbc")
    job = _job("apt", 0, 0.7, "apt-uniform", lr=2e-3)
    assert job.apt_overrides["uniform_heads"] == "salience"
    earlier = job.__class__(**{**job.to_dict(), "apt_overrides": {"layout": "uniform"}})
    imported = ImportedRecords.load(_results_file(tmp_path, config, {job.id: _record(earlier, 39.8)}), config)
    assert imported.find(job)["final_metrics"]["perplexity"] == 39.8
    # another variant, seed or rate is still another run
    assert imported.find(_job("apt", 0, 0.7, "apt-uniform-copy-heads", lr=2e-3)) is None
    assert imported.find(_job("apt", 1, 0.7, "apt-uniform", lr=2e-3)) is None
    assert imported.find(_job("apt", 0, 0.7, "apt-uniform", lr=1e-3)) is None


LATENCY = {"settings": {"batch_size": 4}, "dense": {"latency": {"median_ms": 9.0}}, "jobs": {"a": {}}}


def test_the_latency_measurements_seed_a_work_folder_that_has_none(tmp_path):
    from aptune.bench.harness import _seed_latency

    config = suite_config("smollm2-bbc")
    path = _results_file(tmp_path, config, {}, latency=LATENCY)
    imported = ImportedRecords.load(path, config)
    assert imported.latency == LATENCY
    target, lines = tmp_path / "work" / "latency.json", []
    target.parent.mkdir()
    _seed_latency(target, imported, lines.append)
    assert json.loads(target.read_text()) == {**LATENCY, "imported_from": str(path)}
    assert len(lines) == 1 and str(path) in lines[0]
    # a work folder's own measurements are never replaced
    target.write_text('{"jobs": {}}')
    _seed_latency(target, imported, lines.append)
    assert json.loads(target.read_text()) == {"jobs": {}} and len(lines) == 1


def test_a_results_file_without_latency_seeds_none(tmp_path):
    from aptune.bench.harness import _seed_latency

    config = suite_config("smollm2-bbc")
    for latency in (None, {"skipped": "no models"}):
        imported = ImportedRecords.load(_results_file(tmp_path, config, {}, latency=latency), config)
        assert imported.latency is None
        _seed_latency(tmp_path / "latency.json", imported, print)
        assert not (tmp_path / "latency.json").exists()


def test_the_page_says_where_imported_latency_came_from():
    from aptune.bench.page import _imported_latency_note

    note = _imported_latency_note({"latency_imported_from": "/elsewhere/smollm2-bbc.json"})
    assert "`smollm2-bbc.json`" in note and "jobs trained since have none" in note
    assert _imported_latency_note({"latency_imported_from": None}) == ""
    assert _imported_latency_note({}) == ""


def test_a_results_file_of_other_options_is_refused_naming_them(tmp_path):
    config = suite_config("smollm2-bbc")
    path = _results_file(tmp_path, suite_config("smollm2-bbc", max_steps=7), {})
    with pytest.raises(ConfigError, match=r"--max-steps 7 \(this run: 300\)"):
        ImportedRecords.load(path, config)
    # execution options (work folder, page name, note) do not count
    other = suite_config("smollm2-bbc", workdir="/elsewhere", name="other", page_note="n")
    ImportedRecords.load(_results_file(tmp_path, other, {}), config)
    # nor do options that only add or drop jobs (another seed list, more ablations)
    more = suite_config(
        "smollm2-bbc", seeds="0,1,2", ablations="static,pretune-at-target", ablation_seeds="static"
    )
    ImportedRecords.load(_results_file(tmp_path, more, {}), config)


def test_a_work_folder_takes_more_jobs_but_not_other_options(tmp_path):
    from aptune.bench.harness import _write_plan

    config = suite_config("smollm2-bbc", ablations="static")
    _write_plan(tmp_path, config, [], {}, "model")
    # more ablations, on every seed: the finished records stay valid
    _write_plan(
        tmp_path, suite_config("smollm2-bbc", ablations="static,apt-uniform", seeds="0,1"), [], {}, "m"
    )
    with pytest.raises(ConfigError, match=r"other --lm-loss-chunk, --max-steps; choose another --workdir"):
        _write_plan(tmp_path, suite_config("smollm2-bbc", max_steps=7, lm_loss_chunk=64), [], {}, "model")


def test_report_only_does_not_import():
    with pytest.raises(ConfigError, match="--import-results"):
        BenchConfig(report_only=True, workdir="w", import_results="page.json").validate()


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), ("{not json", "not JSON"), ('{"results": {}}', "no benchmark options")],
)
def test_a_bad_results_file_gets_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "page.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as err:
        ImportedRecords.load(path, suite_config("smollm2-bbc"))
    assert "\n" not in str(err.value)


@pytest.mark.integration
def test_a_fresh_work_folder_resumes_from_the_results_file_without_training(tiny_setup, tmp_path):  # noqa: F811
    options = tiny_bench_options(tiny_setup, tmp_path)
    options.update(grid=True, ft_lr_grid="0.002", adapter_lr_grid="0.005,0.01", grid_extend=0)
    first = run_benchmark(BenchConfig(isolate=False, **options), log=lambda line: None)
    assert not first.failures
    payload = json.loads(first.files["json"].read_text())
    assert set(payload["grid_records"]) == {
        "grid-ft-lr0.002-s0",
        "grid-apt-lr0.005-d0.50-s0",
        "grid-apt-lr0.01-d0.50-s0",
    }

    lines: list[str] = []
    fresh = {**options, "workdir": str(tmp_path / "fresh"), "results_dir": str(tmp_path / "again")}
    again = run_benchmark(
        BenchConfig(isolate=False, import_results=str(first.files["json"]), **fresh), log=lines.append
    )
    trained = [line for line in lines if "density" in line and line.endswith("...")]
    assert trained == []  # every job came from the file
    assert sum("imported from" in line for line in lines) == 3  # the grid runs; the headline reuses them
    resumed = json.loads(again.files["json"].read_text())
    for job_id, record in payload["results"].items():
        assert resumed["results"][job_id]["final_metrics"] == record["final_metrics"]
        assert resumed["results"][job_id]["test_metrics"] == record["test_metrics"]
    assert resumed["data"]["grid"]["chosen"] == payload["data"]["grid"]["chosen"]
    # the latency of the first sitting's exported models comes along, and the page says so
    assert resumed["latency"]["jobs"] == payload["latency"]["jobs"]
    assert resumed["latency"]["imported_from"] == str(first.files["json"])
    assert f"The latency figures are those of `{first.files['json'].name}`" in again.files["md"].read_text()
