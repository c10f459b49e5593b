"""A partial benchmark page (``--report-only``): read the finished jobs, run nothing, say what is missing."""

from __future__ import annotations

import json

import pytest

from aptune.bench import BenchConfig, run_benchmark
from aptune.bench.config import LATENCY_FILE, PLAN_FILE
from aptune.errors import ConfigError
from test_bench import tiny_bench_options, tiny_setup  # noqa: F401  (the fixture: a tiny BERT folder and a CSV split)


def test_report_only_needs_a_work_folder():
    with pytest.raises(ConfigError, match="--report-only"):
        BenchConfig(report_only=True).validate()


@pytest.mark.integration
def test_a_partial_page_runs_nothing_and_names_what_has_not_run(tiny_setup, tmp_path):  # noqa: F811
    config = tiny_bench_options(tiny_setup, tmp_path)
    work = tmp_path / "work"
    first = run_benchmark(BenchConfig(isolate=False, **config), log=lambda line: None)
    assert not first.failures
    # as if the run had stopped before APT and the latency stage
    (work / "results" / "apt-d0.50-s0.json").unlink()
    (work / LATENCY_FILE).unlink()
    plan = (work / PLAN_FILE).read_bytes()
    lines: list[str] = []
    note = "Helpers ran niced beside the jobs."
    outcome = run_benchmark(
        BenchConfig(isolate=True, report_only=True, page_note=note, **config), log=lines.append
    )
    assert not (work / "logs").exists()  # no job or stage process started
    assert not (work / "results" / "apt-d0.50-s0.json").exists() and not (work / LATENCY_FILE).exists()
    assert (work / PLAN_FILE).read_bytes() == plan  # the folder of a running benchmark is left alone
    assert "[bench] [2] apt-d0.50-s0: not run yet" in lines
    page = outcome.files["md"].read_text()
    assert page.startswith("# Benchmark `tiny` (partial)")
    assert f"**Note:** {note}" in page
    banner = page.split("**Partial page**")[1].split("\n")[0]
    assert "`apt-d0.50-s0`" in banner and "`latency`" in banner and "`ft-s0`" not in banner
    assert "## Failed jobs" not in page  # work not run yet is not a failure
    assert "| FT | 1 | 1 |" in page.split("## Headline")[1]
    targets = page.split("## Targets")[1].split("##")[0]
    assert "MET" not in targets.replace("NOT EVALUATED", "")  # nothing about APT can be judged
    summary = json.loads(outcome.files["json"].read_text())
    assert summary["failures"]["apt-d0.50-s0"] == "not run yet"
