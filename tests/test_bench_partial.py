"""A partial benchmark page (``--report-only``): read the finished jobs, run nothing, say what is missing."""

from __future__ import annotations

import dataclasses
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


def _stale_headline(tmp_path):
    """A work folder whose headline APT record reused the grid run at 1e-3; the grid now chooses 2e-3."""
    from aptune.bench.plan import Job

    results = tmp_path / "results"
    results.mkdir()
    grid = {"lr": 2e-3, "primary_metric": "perplexity", "final_metrics": {"perplexity": 36.5}}
    (results / "grid-apt-lr0.002-s0.json").write_text(json.dumps(grid))
    stale = {"lr": 1e-3, "reused_from": "grid-apt-lr0.001-s0", "final_metrics": {"perplexity": 38.0}}
    (results / "apt-s0.json").write_text(json.dumps(stale))
    job = Job(
        id="apt-s0", method="apt", label="APT", seed=0, density=0.7, lr=2e-3, reuse="grid-apt-lr0.002-s0"
    )
    return job, stale


def test_a_headline_record_run_at_another_rate_is_not_read_as_done(tmp_path):
    from aptune.bench.harness import _read_results, _run_one

    job, stale = _stale_headline(tmp_path)
    # the page reads the grid run at the chosen rate, never the 1e-3 record, and copies nothing
    assert _read_results(tmp_path, [job])["apt-s0"]["final_metrics"] == {"perplexity": 36.5}
    failures: dict[str, str] = {}
    lines: list[str] = []
    config = BenchConfig(report_only=True, workdir=str(tmp_path))
    assert not _run_one(config, tmp_path, job, failures, lines.append, "[1] apt-s0")
    assert failures == {} and lines[0].startswith("[1] apt-s0: the grid run grid-apt-lr0.002-s0 (")
    assert json.loads((tmp_path / "results" / "apt-s0.json").read_text()) == stale  # left as it was

    ran = _run_one(BenchConfig(workdir=str(tmp_path)), tmp_path, job, {}, lines.append, "[1] apt-s0")
    assert not ran  # the grid run at the chosen rate is this very run: reused, nothing trained
    kept = tmp_path / "results-other-rates" / "apt-s0.lr0.001.json"
    assert json.loads(kept.read_text()) == stale  # set aside, never deleted
    now = json.loads((tmp_path / "results" / "apt-s0.json").read_text())
    assert now["lr"] == 2e-3 and now["reused_from"] == "grid-apt-lr0.002-s0"
    assert _read_results(tmp_path, [job])["apt-s0"]["final_metrics"] == {"perplexity": 36.5}


def test_a_partial_page_counts_a_job_run_at_another_rate_as_not_run(tmp_path):
    from aptune.bench.harness import _read_results, _run_one
    from aptune.bench.records import NOT_RUN_YET

    job, stale = _stale_headline(tmp_path)
    (tmp_path / "results" / "grid-apt-lr0.002-s0.json").unlink()  # the chosen rate's grid run is gone
    assert _read_results(tmp_path, [job]) == {}
    failures: dict[str, str] = {}
    lines: list[str] = []
    config = BenchConfig(report_only=True, workdir=str(tmp_path))
    _run_one(config, tmp_path, job, failures, lines.append, "[1] apt-s0")
    assert failures == {"apt-s0": NOT_RUN_YET}
    assert "the record there ran at lr 0.001, the grid now chooses 0.002" in lines[0]
    assert json.loads((tmp_path / "results" / "apt-s0.json").read_text()) == stale


def test_the_grid_table_tells_a_rate_not_run_yet_from_a_failed_one():
    from aptune.bench.page import _grid_lines

    chosen = {
        "apt": {
            "lr": 0.002,
            "dev": {"0.0005": None, "0.001": 38.0, "0.002": 36.5},
            "metric": "perplexity",
            "not_run": [],
        },
        "llm-pruner": {
            "lr": 0.001,
            "dev": {"0.0005": None, "0.001": 41.5, "0.002": None},
            "metric": "perplexity",
            "not_run": ["0.002"],
        },
    }
    text = "\n".join(_grid_lines({"grid": {"seed": 0, "chosen": chosen, "rates": {}}}))
    assert "0.0005: failed, 0.001: 38.0000, 0.002: 36.5000" in text
    assert (
        "| LLM-Pruner layer recipe + LoRA | 0.001 | dev perplexity: 0.0005: failed, 0.001: 41.5000, "
        "0.002: not run yet |" in text
    )
    assert "The grid is not complete" in text
    # APT chose the largest rate it tried; the LLM-Pruner recipe a rate inside its grid, but the only one
    # that finished, which settles nothing
    assert "At an end of its grid: APT." in text
    # a rate past the chosen one that has not run yet does not put the choice inside the grid
    chosen["apt"]["dev"]["0.004"] = None
    chosen["apt"]["not_run"] = ["0.004"]
    text = "\n".join(_grid_lines({"grid": {"seed": 0, "chosen": chosen, "rates": {}}}))
    assert "At an end of its grid: APT." in text and "0.004: not run yet" in text


def test_the_grid_table_says_nothing_of_edges_when_the_choice_is_inside():
    from aptune.bench.page import _grid_lines

    entry = {"lr": 0.001, "dev": {"0.0005": 40.0, "0.001": 38.0, "0.002": 39.0}, "metric": "perplexity"}
    text = "\n".join(_grid_lines({"grid": {"seed": 0, "chosen": {"apt": entry}, "rates": {}}}))
    assert "end of its grid" not in text
    low = {**entry, "lr": 0.0005, "dev": {"0.0005": 37.0, "0.001": 38.0, "0.002": 39.0}}
    text = "\n".join(_grid_lines({"grid": {"seed": 0, "chosen": {"apt": low}, "rates": {}}}))
    assert "At an end of its grid: APT." in text


def test_a_job_without_a_grid_rate_keeps_its_record(tmp_path):
    """Without a grid a job's rate is 0 in the plan and its record holds the configured rate."""
    from aptune.bench.harness import _read_results
    from aptune.bench.plan import Job

    (tmp_path / "results").mkdir()
    record = {"lr": 1e-3, "final_metrics": {"perplexity": 30.0}}
    (tmp_path / "results" / "apt-s0.json").write_text(json.dumps(record))
    job = Job(id="apt-s0", method="apt", label="APT", seed=0, density=0.7)
    assert _read_results(tmp_path, [job]) == {"apt-s0": record}


def test_only_jobs_is_checked():
    with pytest.raises(ConfigError, match="--only-jobs"):
        BenchConfig(report_only=True, workdir="w", only_jobs="apt-d0.70-s0").validate()
    with pytest.raises(ConfigError, match="--only-jobs"):
        BenchConfig(only_jobs=" , ").validate()
    config = BenchConfig(only_jobs="apt-d0.70-s0, latency,apt-d0.70-s0")
    assert config.only_job_list() == ["apt-d0.70-s0", "latency"]
    assert config.runs_now("latency") and not config.runs_now("lora-s0")
    assert BenchConfig().runs_now("lora-s0")  # no list: everything runs


def test_a_sitting_runs_only_the_named_jobs_and_a_later_one_completes_the_page(word_tokenizer, tmp_path):
    """--only-jobs: the named job trains, the others and the latency stage wait for a later sitting."""
    from test_bench import _tiny_decoder_bench

    bench = _tiny_decoder_bench(word_tokenizer, tmp_path, methods="lora,apt", only_jobs="apt-d0.70-s0,nope")
    work = tmp_path / "work"
    lines: list[str] = []
    first = run_benchmark(bench, log=lines.append)
    assert (work / "results" / "apt-d0.70-s0.json").is_file()
    assert not (work / "results" / "lora-s0.json").exists() and not (work / LATENCY_FILE).exists()
    assert first.failures == {"lora-s0": "not run yet", "latency": "not run yet"}
    assert any(line.endswith("lora-s0: not run yet (not among --only-jobs)") for line in lines)
    assert any("--only-jobs named nope, which this plan has no job of" in line for line in lines)
    assert first.files["md"].read_text().startswith("# Benchmark `llama` (partial)")
    # the next sitting runs what is left; the APT job is not trained again
    apt_record = (work / "results" / "apt-d0.70-s0.json").read_bytes()
    lines.clear()
    later = dataclasses.replace(bench, only_jobs="lora-s0,latency")
    second = run_benchmark(later, log=lines.append)
    assert not second.failures
    assert (work / "results" / "apt-d0.70-s0.json").read_bytes() == apt_record
    assert any("apt-d0.70-s0: done earlier" in line for line in lines)
    assert (work / LATENCY_FILE).is_file()
    assert not second.files["md"].read_text().startswith("# Benchmark `llama` (partial)")


def test_an_apt_record_run_with_other_settings_does_not_stand_for_the_job(tmp_path):
    """A default that changed since a record was written makes the record stale, never mislabelled."""
    from aptune.bench.harness import _read_results, _run_one
    from aptune.bench.methods import apt_settings, apt_settings_mismatch
    from aptune.bench.plan import Job
    from aptune.bench.records import NOT_RUN_YET

    config = BenchConfig(workdir=str(tmp_path))
    job = Job(id="apt-d0.70-s0", method="apt", label="APT", seed=0, density=0.7)
    now = json.loads(json.dumps(apt_settings(config, job).to_dict()))
    (tmp_path / "results").mkdir()
    record = {"final_metrics": {"accuracy": 0.9}, "apt_config": now}
    path = tmp_path / "results" / f"{job.id}.json"
    path.write_text(json.dumps(record))
    assert apt_settings_mismatch(record, config, job) == []  # the same settings
    unreadable = {**record, "apt_config": {**now, "format_version": -1}}
    assert apt_settings_mismatch(unreadable, config, job) == ["format_version"]
    assert set(_read_results(tmp_path, [job], config)) == {job.id}
    # a field the record does not know ran as its default: no difference unless the job sets it
    older = {k: v for k, v in now.items() if k not in ("initial_rank", "hidden_cost")}
    assert apt_settings_mismatch({"apt_config": older}, config, job) == []
    newer = dataclasses.replace(job, apt_overrides={"hidden_cost": "initial"})
    assert apt_settings_mismatch({"apt_config": older}, config, newer) == ["hidden_cost"]
    changed = {**record, "apt_config": {**now, "initial_rank": now["initial_rank"] + 1, "seed": 5}}
    assert apt_settings_mismatch(changed, config, job) == ["initial_rank", "seed"]
    lora = Job(id="lora-s0", method="lora", label="LoRA", seed=0, density=1.0)
    assert apt_settings_mismatch(changed, config, lora) == []  # only APT jobs carry APT settings
    path.write_text(json.dumps(changed))
    assert _read_results(tmp_path, [job], config) == {}
    assert set(_read_results(tmp_path, [job])) == {job.id}  # without the options, as before
    failures: dict[str, str] = {}
    lines: list[str] = []
    report = BenchConfig(report_only=True, workdir=str(tmp_path))
    _run_one(report, tmp_path, job, failures, lines.append, "[1] apt-d0.70-s0")
    assert failures == {job.id: NOT_RUN_YET}
    assert "ran with other APT settings (initial_rank, seed)" in lines[0]
    assert json.loads(path.read_text()) == changed  # a partial page leaves it in place


def test_copy_heads_compare_by_the_threshold_they_resolve_to() -> None:
    """A format-1 record's None ran without protection; the decoder default now protects from 0.3."""
    from aptune.bench.methods import apt_settings, apt_settings_mismatch, one_shot_selection_settings
    from aptune.bench.plan import Job, _job

    decoder = BenchConfig(task="causal-lm")
    job = Job(id="apt-d0.70-s0", method="apt", label="APT", seed=0, density=0.7)
    now = json.loads(json.dumps(apt_settings(decoder, job).to_dict()))
    assert now["keep_copy_heads"] is None and now["format_version"] == 3

    def ran(value, version=1, settings=now):
        return {"apt_config": {**settings, "format_version": version, "keep_copy_heads": value}}

    assert apt_settings_mismatch(ran(None), decoder, job) == ["keep_copy_heads"]  # ran off
    assert apt_settings_mismatch(ran(0.3), decoder, job) == []  # what the default computes now
    assert apt_settings_mismatch(ran(None, version=2), decoder, job) == []
    assert apt_settings_mismatch(ran(0.5, version=2), decoder, job) == ["keep_copy_heads"]
    older = {k: v for k, v in now.items() if k != "keep_copy_heads"}  # before the option existed
    assert apt_settings_mismatch({"apt_config": {**older, "format_version": 1}}, decoder, job) == [
        "keep_copy_heads"
    ]
    # the ablation that turns it off stands where the old default's record does
    off = _job("apt", 0, 0.7, "no-copy-heads", lr=1e-3)
    assert apt_settings_mismatch(ran(None), decoder, off) == []
    assert apt_settings_mismatch(ran(0.3), decoder, off) == ["keep_copy_heads"]
    # a suite's ablations can keep the earlier default; the headline APT job is not affected
    static = _job("apt", 0, 0.7, "static", lr=1e-3)
    pinned = BenchConfig(task="causal-lm", ablation_keep_copy_heads=0.0)
    static_now = json.loads(json.dumps(apt_settings(pinned, static).to_dict()))
    assert static_now["keep_copy_heads"] == 0.0
    assert apt_settings_mismatch(ran(None, settings=static_now), pinned, static) == []
    assert apt_settings(pinned, job).keep_copy_heads is None
    # on an encoder None and 0 both resolve to no protection
    encoder = BenchConfig(task="classification")
    assert apt_settings_mismatch(ran(None), encoder, job) == []
    assert apt_settings_mismatch(ran(0.0, version=2), encoder, job) == []
    # aptune's one-shot selection is compared through its pruning record
    one_shot = Job(id="aptune-one-shot-d0.70-s0", method="aptune-one-shot", label="x", seed=0, density=0.7)
    selection = json.loads(json.dumps(one_shot_selection_settings(decoder, one_shot).to_dict()))
    assert selection["pretune_density"] == 0.7
    record = {"pruning": {"apt_config": {**selection, "format_version": 1, "keep_copy_heads": None}}}
    assert apt_settings_mismatch(record, decoder, one_shot) == ["keep_copy_heads"]
    record["pruning"]["apt_config"].update(format_version=2)
    assert apt_settings_mismatch(record, decoder, one_shot) == []


def test_uniform_heads_compare_by_the_choice_they_resolve_to() -> None:
    """A format-2 uniform record ran the salience's choice; the decoders' default now measures."""
    from aptune.bench.config import suite_config
    from aptune.bench.methods import apt_settings, apt_settings_mismatch
    from aptune.bench.plan import _job

    decoder = suite_config("smollm2-bbc")  # prunes before tuning, so the default would measure
    for ablation in ("apt-uniform", "apt-uniform-copy-heads", "apt-uniform-all-heads"):
        job = _job("apt", 0, 0.7, ablation, lr=1e-3)
        now = json.loads(json.dumps(apt_settings(decoder, job).to_dict()))
        assert now["uniform_heads"] == "salience"
        older = {k: v for k, v in now.items() if k != "uniform_heads"}  # before the option existed
        assert apt_settings_mismatch({"apt_config": {**older, "format_version": 2}}, decoder, job) == []
        assert apt_settings_mismatch({"apt_config": {**now, "format_version": 2}}, decoder, job) == []
        measured = {**now, "uniform_heads": "measured"}
        assert apt_settings_mismatch({"apt_config": measured}, decoder, job) == ["uniform_heads"]
        # the same record asked for by the family default (None) resolves to the measured choice
        default = {**now, "uniform_heads": None, "format_version": 3}
        assert apt_settings_mismatch({"apt_config": default}, decoder, job) == ["uniform_heads"]
    # the ablation of the decoders' default measures, and an old uniform record does not stand for it
    default_job = _job("apt", 0, 0.7, "apt-uniform-measured", lr=1e-3)
    assert apt_settings(decoder, default_job).uniform_heads_choice(is_decoder=True) == "measured"
    old = {**json.loads(json.dumps(apt_settings(decoder, default_job).to_dict())), "format_version": 2}
    assert apt_settings_mismatch({"apt_config": old}, decoder, default_job) == ["uniform_heads"]
    # the headline job's free layout does not read the field, whatever an old record wrote
    headline = _job("apt", 0, 0.7, lr=1e-3)
    now = json.loads(json.dumps(apt_settings(decoder, headline).to_dict()))
    assert now["uniform_heads"] is None
    written = {**now, "uniform_heads": "salience", "format_version": 2}
    assert apt_settings_mismatch({"apt_config": written}, decoder, headline) == []


def test_a_stale_result_takes_its_run_folder_aside(tmp_path):
    """The job's next run must not resume the stale run's checkpoints or reload its pruned model."""
    from aptune.bench.harness import _set_aside

    (tmp_path / "results").mkdir()
    for number in range(2):
        result = tmp_path / "results" / "aptune-one-shot-d0.70-s0.json"
        result.write_text(json.dumps({"n": number}))
        run = tmp_path / "runs" / "aptune-one-shot-d0.70-s0" / "pruned-before-lora"
        run.mkdir(parents=True)
        (run / "weights").write_text(str(number))
        moved = _set_aside(tmp_path, result, 1e-3)
        assert json.loads(moved.read_text()) == {"n": number}
        kept = moved.parent / "runs" / moved.stem / "pruned-before-lora" / "weights"
        assert kept.read_text() == str(number)
        assert not result.exists() and not (tmp_path / "runs" / "aptune-one-shot-d0.70-s0").exists()
    names = sorted(p.name for p in (tmp_path / "results-other-rates" / "runs").iterdir())
    assert names == ["aptune-one-shot-d0.70-s0.lr0.001", "aptune-one-shot-d0.70-s0.lr0.001.2"]


def test_adapter_roles_compare_as_a_set_and_the_all_linear_ablation_can_be_the_default(tmp_path):
    """A record that lists the same roles in another order ran the same settings; other roles did not."""
    from aptune.bench.methods import apt_settings, apt_settings_mismatch
    from aptune.bench.plan import Job, _job

    every = BenchConfig(workdir=str(tmp_path), adapter_roles="q,k,v,o,up,gate,down")
    default = Job(id="apt-d0.70-s0", method="apt", label="APT", seed=0, density=0.7, lr=2e-3)
    ran = json.loads(json.dumps(apt_settings(every, default).to_dict()))
    reordered = {"apt_config": {**ran, "adapter_targets": ["q", "k", "v", "o", "gate", "up", "down"]}}
    assert apt_settings_mismatch(reordered, every, default) == []
    all_linear = _job("apt", 0, 0.7, "all-linear", lr=2e-3)
    assert apt_settings_mismatch({"apt_config": ran}, every, all_linear) == []  # the default's run
    qv = _job("apt", 0, 0.7, "qv-only", lr=2e-3)
    assert apt_settings_mismatch({"apt_config": ran}, every, qv) == ["adapter_targets"]
    fewer = BenchConfig(workdir=str(tmp_path), adapter_roles="q,v,up")
    ran_fewer = json.loads(json.dumps(apt_settings(fewer, default).to_dict()))
    assert apt_settings_mismatch({"apt_config": ran_fewer}, fewer, all_linear) == ["adapter_targets"]


def test_a_changed_default_lets_one_run_stand_for_the_job_that_now_asks_for_it(tmp_path):
    """Decoders now prune to the target before tuning: the default and the ablations trade records."""
    from aptune.bench.harness import _read_results, _run_one
    from aptune.bench.methods import apt_settings, apt_settings_mismatch
    from aptune.bench.plan import Job, _job

    config = BenchConfig(workdir=str(tmp_path), task="causal-lm", apt_pretune_prune=True)
    default = Job(id="apt-d0.70-s0", method="apt", label="APT", seed=0, density=0.7, lr=2e-3)
    halfway = _job("apt", 0, 0.7, "pretune-halfway", lr=2e-3)
    at_target = _job("apt", 0, 0.7, "pretune-at-target", lr=2e-3)
    assert halfway.apt_overrides["pretune_density"] == pytest.approx(0.85)

    def record(job: Job, initial: float, perplexity: float) -> dict:
        settings = json.loads(json.dumps(apt_settings(config, job).to_dict()))
        return {
            "job": job.to_dict(),
            "lr": job.lr,
            "apt_config": settings,
            "schedule": {"initial_density": initial},
            "final_metrics": {"perplexity": perplexity},
        }

    # the default's record ran when the family default pruned halfway (0.85) before tuning
    old_default, target_run = record(default, 0.85, 36.5), record(at_target, 0.7, 34.8)
    assert apt_settings_mismatch(old_default, config, default) == ["pretune_density"]
    assert apt_settings_mismatch(old_default, config, halfway) == []  # asked otherwise, the same run
    assert apt_settings_mismatch(target_run, config, default) == []
    assert apt_settings_mismatch(target_run, config, halfway) == ["pretune_density"]
    # an ablation that sets a field the old record predates is not its run
    damage = _job("apt", 0, 0.7, "damage-during-tuning", lr=2e-3)
    predates = {k: v for k, v in old_default["apt_config"].items() if k != "tuning_damage_curves"}
    assert apt_settings_mismatch({**old_default, "apt_config": predates}, config, damage) == [
        "tuning_damage_curves"
    ]
    results = tmp_path / "results"
    results.mkdir()
    (results / f"{default.id}.json").write_text(json.dumps(old_default))
    (results / f"{at_target.id}.json").write_text(json.dumps(target_run))

    read = _read_results(tmp_path, [default, halfway, at_target], config)
    assert read[default.id]["final_metrics"] == {"perplexity": 34.8}
    assert read[default.id]["same_run_as"] == at_target.id and read[default.id]["job"]["id"] == default.id
    assert read[halfway.id]["final_metrics"] == {"perplexity": 36.5}
    assert read[halfway.id]["same_run_as"] == default.id
    assert "same_run_as" not in read[at_target.id]
    # another rate or another seed is another run
    other_rate = dataclasses.replace(default, lr=1e-3)
    other_seed = dataclasses.replace(default, id="apt-d0.70-s1", seed=1)
    assert _read_results(tmp_path, [other_rate, other_seed], config) == {}

    lines: list[str] = []
    for job in (default, halfway):
        trained = _run_one(config, tmp_path, job, {}, lines.append, f"[1] {job.id}")
        assert not trained
    assert "ran with other APT settings (pretune_density); moved to" in lines[0]
    assert lines[1].startswith(f"[1] {default.id}: the run of {at_target.id}, the same settings (")
    assert lines[2].startswith(f"[1] {halfway.id}: the run of {default.id}, the same settings (")
    written = json.loads((results / f"{default.id}.json").read_text())
    assert written["same_run_as"] == at_target.id and written["final_metrics"] == {"perplexity": 34.8}
    # the old default's record was set aside, and still stands for the halfway ablation
    set_aside = tmp_path / "results-other-rates" / f"{default.id}.lr0.002.json"
    assert json.loads(set_aside.read_text()) == old_default
    assert json.loads((results / f"{halfway.id}.json").read_text())["same_run_as"] == default.id


def test_the_page_does_not_call_settings_frozen_when_a_default_changed_after_some_runs():
    from aptune.bench.page import _apt_settings_line

    data = {"apt_settings": {"target_density": 0.7, "pretune_density": None}}
    assert "frozen in the suite before any test figure" in _apt_settings_line(data)[0]
    changed = _apt_settings_line(data, default_changed=True)[0]
    assert "frozen in the suite" not in changed and "a default changed after some of the runs" in changed
    assert changed.endswith("target_density 0.7.")


def test_a_work_folder_planned_before_the_ablation_default_option_resumes():
    """The ablations' copy-head setting is checked per record, not by refusing the work folder."""
    from aptune.bench.config import differing_options, suite_config

    now = suite_config("smollm2-bbc")
    assert now.ablation_keep_copy_heads == 0.0
    before = dataclasses.replace(now, ablation_keep_copy_heads=None, ablations="copy-heads")
    assert differing_options(before, now) == []
    assert differing_options(dataclasses.replace(now, max_steps=10), now) == ["max_steps"]
