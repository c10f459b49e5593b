"""The benchmark harness: the plan, the command line, and tiny end-to-end runs (encoder and decoder)."""

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizerFast, LlamaConfig, LlamaForCausalLM

import aptune
from aptune.bench import BenchConfig, plan_jobs, suite_config
from aptune.bench.config import ABLATIONS, JOB_DENSITY
from aptune.bench.plan import _job, estimate_seconds
from aptune.cli import main
from tiny import tiny_bert

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "film", "plot", "very", "the", "was"]


def test_plan_of_the_full_suite():
    config = suite_config("minilm-bbc")
    jobs = plan_jobs(config)
    ids = [j.id for j in jobs]
    assert len(ids) == len(set(ids))
    done: set[str] = set()
    for job in jobs:  # every dependency comes first
        assert set(job.depends) <= done
        done.add(job.id)
    grid = [j for j in jobs if j.phase == "grid"]
    rates = {m: sorted(j.lr for j in grid if j.method == m) for m in {j.method for j in grid}}
    assert rates == {
        "ft": [2e-5, 5e-5, 1e-4],
        "lora": [2e-4, 5e-4, 1e-3, 2e-3],
        "apt": [2e-4, 5e-4, 1e-3, 2e-3],
        "lora-prune-kwon": [2e-4, 5e-4, 1e-3, 2e-3],
    }
    assert {j.seed for j in grid} == {0} and {j.allocator for j in grid} == {"default"}
    headline = [j for j in jobs if j.phase == "headline"]
    for method in ("ft", "lora", "apt", "lora-prune-kwon", "lora-prune-tp"):
        runs = {(j.seed, j.allocator) for j in headline if j.method == method and not j.variant}
        assert runs == {(0, "default"), (1, "default"), (2, "default"), (0, "pinned")}, method
    for job in headline:
        if job.method in ("lora-prune-kwon", "lora-prune-tp", "one-shot"):
            lora = next(j for j in jobs if j.id == job.depends[0])
            apt = next(j for j in jobs if j.id == job.depends[1])
            assert (lora.method, lora.seed, lora.allocator) == ("lora", job.seed, job.allocator)
            assert (apt.method, apt.seed, apt.allocator) == ("apt", job.seed, job.allocator)
    # seed 0 under the default allocator is the grid run at the chosen rate; nothing else is reused
    reused = {j.id: j.reuse for j in headline if j.reuse}
    assert reused == {
        "ft-s0": "grid-ft-lr5e-05-s0",
        "lora-s0": "grid-lora-lr0.0005-s0",
        "apt-d0.40-s0": "grid-apt-lr0.001-d0.40-s0",
        "lora-prune-kwon-d0.40-s0": "grid-lora-prune-kwon-lr0.0005-d0.40-s0",
    }
    chosen = {"ft": 1e-4, "lora": 2e-3, "apt": 5e-4, "lora-prune-kwon": 2e-4, "lora-prune-tp": 2e-4}
    again = {j.id: j for j in plan_jobs(config, chosen)}
    assert again["ft-s1"].lr == 1e-4 and again["apt-d0.40-s0-pinned"].lr == 5e-4
    assert again["lora-prune-tp-d0.40-s1"].lr == 2e-4 and again["lora-s0"].reuse == "grid-lora-lr0.002-s0"
    assert again["grid-lora-prune-kwon-lr0.001-d0.40-s0"].depends == [
        "grid-lora-lr0.002-s0",
        "grid-apt-lr0.0005-d0.40-s0",
    ]
    # BBC News deduplicated, 70/15/15: about 1,480 / 318 / 318 articles; at the step times measured in
    # the suite's own runs (FT 2.0 s per step on 2 cores) the whole protocol takes over 4 hours
    assert 3.5 * 3600 < estimate_seconds(config, jobs, 1480, 318, 318) < 4.5 * 3600
    quick = suite_config("minilm-bbc", quick=True)
    assert estimate_seconds(quick, plan_jobs(quick), 160, 48, 48) < 5 * 60
    # APT's schedule fits the quick run (160 examples, batch 8, 1 epoch) and the full one
    from aptune.bench.methods import apt_settings
    from aptune.schedule import build_schedule

    for suite, steps in ((quick, 20), (config, 3 * 93)):
        apt_job = next(j for j in plan_jobs(suite) if j.method == "apt")
        build_schedule(apt_settings(suite, apt_job), steps)
    decoder = suite_config(
        "smollm2-bbc", seeds="0", grid=False, methods="lora,lora-prune-kwon,apt", ablations=""
    )
    assert [j.method for j in plan_jobs(decoder)] == ["lora", "apt", "lora-prune-kwon"]
    with pytest.raises(aptune.ConfigError, match="methods"):
        BenchConfig(methods="ft,bogus")


def test_ablation_seeds_repeat_only_the_named_ablations_on_every_seed():
    config = suite_config("smollm2-bbc", seeds="0,1", ablations="static,pretune-at-target")
    assert {(j.variant, j.seed) for j in plan_jobs(config) if j.variant} == {
        ("static", 0),
        ("pretune-at-target", 0),
    }
    both = suite_config(
        "smollm2-bbc", seeds="0,1", ablations="static,pretune-at-target", ablation_seeds="pretune-at-target"
    )
    jobs = plan_jobs(both)
    assert {(j.variant, j.seed) for j in jobs if j.variant} == {
        ("static", 0),
        ("pretune-at-target", 0),
        ("pretune-at-target", 1),
    }
    ids = [j.id for j in jobs]
    assert len(ids) == len(set(ids)) and "apt-pretune-at-target-d0.70-s1" in ids
    with pytest.raises(aptune.ConfigError, match="not among --ablations"):
        suite_config("smollm2-bbc", ablations="static", ablation_seeds="pretune-at-target")
    with pytest.raises(aptune.ConfigError, match="ablation-seeds"):
        suite_config("smollm2-bbc", ablation_seeds="bogus")


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    model_dir = folder / "model"
    model_dir.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(model_dir)
    model = tiny_bert(num_labels=2)
    model.config.vocab_size = 120
    model.save_pretrained(model_dir)
    # 64 distinct sentences (the benchmark removes duplicates): three filler words and a sentiment word
    fillers = list(itertools.product(["movie", "film", "plot", "very", "the", "was"], repeat=3))
    rows = []
    for i in range(64):
        sentiment = ["good", "great", "fine"] if i % 2 == 0 else ["bad", "awful", "poor"]
        words = [*fillers[i], sentiment[i % 3]]
        rows.append(f"{' '.join(words)},{'pos' if i % 2 == 0 else 'neg'}")
    (folder / "train.csv").write_text("text,label\n" + "\n".join(rows[:48]) + "\n")
    (folder / "dev.csv").write_text("text,label\n" + "\n".join(rows[48:]) + "\n")
    return folder


def tiny_bench_options(folder, tmp_path) -> dict:
    """`BenchConfig` fields of a tiny FT + APT benchmark on the `tiny_setup` folder (work and results
    folders under ``tmp_path``)."""
    return dict(
        model=str(folder / "model"), dataset_name="", train_file=str(folder / "train.csv"),
        eval_file=str(folder / "dev.csv"), dev_fraction=0.25, test_fraction=0.25, max_length=16,
        batch_size=4, eval_batch_size=16, max_steps=12, evaluations=2, seeds="0", pinned_seeds="",
        methods="ft,apt", ablations="", densities="", grid=False, target_density=0.5, apt_num_events=2,
        calibration_samples=8, epoch1_view=False, latency_batch=2, latency_length=16, latency_repeats=3,
        latency_warmup=1, threads=1, workdir=str(tmp_path / "work"), results_dir=str(tmp_path / "results"),
        name="tiny",
    )  # fmt: skip


def _bench_args(folder, workdir, results):
    return [
        "bench",
        *("--model", str(folder / "model"), "--dataset-name", ""),
        *("--train-file", str(folder / "train.csv"), "--eval-file", str(folder / "dev.csv")),
        *("--max-length", "16", "--batch-size", "4", "--eval-batch-size", "16", "--max-steps", "24"),
        *("--evaluations", "3", "--seeds", "0", "--target-density", "0.5", "--densities", "0.5,0.7"),
        *("--ablations", "no-distill,one-shot", "--apt-num-events", "3", "--calibration-samples", "8"),
        *("--retrain-fraction", "0.5", "--ft-lr-grid", "0.002", "--adapter-lr-grid", "0.005,0.01"),
        *("--grid-extend", "1"),
        *("--methods", "ft,lora,lora-prune-kwon,lora-prune-tp,apt", "--prune-samples", "8"),
        *("--dev-fraction", "0.25", "--test-fraction", "0.25", "--pinned-seeds", ""),
        *(
            "--latency-batch",
            "2",
            "--latency-length",
            "16",
            "--latency-repeats",
            "5",
            "--latency-warmup",
            "1",
        ),
        *("--no-isolate", "--threads", "1", "--workdir", str(workdir), "--results-dir", str(results)),
        *("--name", "tiny"),
    ]


def _run(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.integration
def test_bench_end_to_end_on_a_tiny_model(tiny_setup, tmp_path, capsys):
    from aptune.host_memory import pinned_mmap_threshold

    # jobs run inside this process here: a threshold pinned by an earlier test stays pinned; a
    # default-allocator job must not pin one itself (in the suite, every job is a fresh process)
    pinned_before = pinned_mmap_threshold()
    workdir, results = tmp_path / "work", tmp_path / "results"
    code, out, err = _run(_bench_args(tiny_setup, workdir, results), capsys)
    assert code == 0, err[-3000:]
    assert "MET" in out or "MISSED" in out or "NOT EVALUATED" in out
    for name in ("tiny.md", "tiny.json"):
        assert (results / name).is_file()
    data = json.loads((results / "tiny.json").read_text())
    assert not data["failures"]
    assert data["reference"]["threshold"] is not None  # FT's median test accuracy sets the bar
    for plot in ("accuracy_vs_latency", "curves", "memory", "tta"):
        assert (results / "tiny" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = {p.stem: json.loads(p.read_text()) for p in (workdir / "results").glob("*.json")}
    rows = {r["id"]: r for r in data["jobs"]}
    headline = {
        "ft-s0",
        "lora-s0",
        "apt-d0.50-s0",
        "lora-prune-kwon-d0.50-s0",
        "lora-prune-tp-d0.50-s0",
        "apt-no-distill-d0.50-s0",
        "one-shot-d0.50-s0",
        "apt-d0.70-s0",
        "lora-prune-kwon-d0.70-s0",
    }
    assert {r["id"] for r in data["jobs"]} == headline
    # the grid chose every rate on dev, and the headline ran at the chosen rates
    rates = json.loads((workdir / "rates.json").read_text())
    for method, entry in rates["chosen"].items():
        grid = {k: v for k, v in entry["dev"].items()}
        best = max(grid.values())
        assert grid[f"{entry['lr']:g}"] == best and entry["lr"] == min(
            float(k) for k, v in grid.items() if v == best
        )
        for lr in grid:  # the dev figure is the grid run's final dev metric
            job = next(r for k, r in records.items() if k.startswith(f"grid-{method}-lr{lr}-"))
            assert job["final_metrics"]["accuracy"] == grid[lr]
    assert set(rates["chosen"]) == {"ft", "lora", "apt", "lora-prune-kwon"}
    # with two rates the best is always at an end (ties: the smaller), so the grid tried one more
    # rate past that end, and only one (--grid-extend 1)
    for method in ("lora", "apt", "lora-prune-kwon"):
        dev = rates["chosen"][method]["dev"]
        past = 0.02 if dev["0.01"] > dev["0.005"] else 0.0025
        assert sorted(float(lr) for lr in dev) == sorted([0.005, 0.01, past])
    assert rates["rates"]["lora-prune-tp"] == rates["rates"]["lora-prune-kwon"]
    for job_id in headline:
        record = records[job_id]
        method = record["job"]["method"]
        assert record["lr"] == rates["rates"][method] == record["job"]["lr"]
        # dev during training, test once at the end; one allocator setting per job, VmHWM reset
        assert 0 <= record["final_metrics"]["accuracy"] <= 1 and 0 <= record["test_metrics"]["accuracy"] <= 1
        assert record["test_metrics"]["examples"] == data["data"]["num_test"] > 0
        # in this process a threshold pinned by an earlier test stays in force, and the record says so
        assert record["allocator"]["requested"] == "default" and record["mmap_threshold"] == pinned_before
        assert record["allocator"]["setting"] == ("pinned" if pinned_before else "default")
        assert record["peak_rss_reset"] is True and record["process_peak_rss_mb"] >= record["peak_rss_mb"] > 0
    for job_id in ("ft-s0", "lora-s0", "apt-d0.50-s0", "lora-prune-kwon-d0.50-s0"):
        assert records[job_id]["reused_from"].startswith("grid-")
    for job_id in ("ft-s0", "lora-s0", "apt-d0.50-s0"):  # the 1-epoch view: test after epoch 1
        epoch1 = records[job_id]["epoch1_test"]
        assert epoch1["epoch"] == pytest.approx(1.0) and 0 <= epoch1["metrics"]["accuracy"] <= 1
    assert records["ft-s0"]["epoch1_test"]["final_structure"] is True
    apt = records["apt-d0.50-s0"]
    assert apt["epoch1_test"]["final_structure"] == (apt["epoch1_test"]["step"] >= apt["last_prune_step"])
    for job_id in ("lora-prune-kwon-d0.50-s0", "lora-prune-tp-d0.50-s0", "one-shot-d0.50-s0"):
        lp = records[job_id]
        lora = records[lp["job"]["depends"][0]]
        # the clock starts at LoRA's first step and adds every phase; evaluations are apart
        assert set(lp["phases"]) == {"lora", "calibration_search", "mask_tuning", "surgery", "retrain"}
        assert lp["phases"]["lora"] == lora["train_seconds"] and lp["phases"]["calibration_search"] > 0
        assert lp["train_seconds"] == pytest.approx(sum(lp["phases"].values()))
        assert lp["curve"][0]["phase"] == "lora" and not lp["curve"][0]["final_structure"]
        assert lp["curve"][-1]["phase"] == "retrain" and lp["curve"][-1]["final_structure"]
        assert lp["curve"][-1]["train_seconds"] == pytest.approx(lp["train_seconds"])
        # the retraining adapters match APT's final adapter count (the nearest rank; one-shot sets its
        # rank before its own pruning, on the dense shapes)
        rank = lp["retrain_rank"]
        assert rank["apt_adapter_params"] == records[lp["job"]["depends"][1]]["adapter_params"] > 0
        if job_id.startswith("one-shot"):
            continue
        assert abs(lp["adapter_params"] - rank["apt_adapter_params"]) <= rank["per_rank"] / 2
        assert lp["adapter_params"] == rank["rank"] * rank["per_rank"]
    for job_id in ("lora-prune-kwon-d0.50-s0", "lora-prune-tp-d0.50-s0"):
        # the retraining keeps the baseline's own pruning: no aptune calibration or event changes it
        lp = records[job_id]
        plan = json.loads((Path(lp["model_dir"]) / "config.json").read_text(encoding="utf-8"))["aptune_plan"]
        assert plan["heads_per_layer"] == lp["pruning"]["heads_per_layer"]
        assert plan["ffn_per_layer"] == lp["pruning"]["ffn_per_layer"]
    kwon = records["lora-prune-kwon-d0.50-s0"]["pruning"]
    assert (
        kwon["method"] == "kwon2022" and kwon["kept_params"] <= kwon["budget"] == 0.5 * kwon["total_params"]
    )
    assert records["lora-prune-kwon-d0.50-s0"]["phases"]["mask_tuning"] > 0
    # the data info the page prints: dedupe counts, split, sizes per class per split
    info = data["data"]
    assert info["split"] == {"train": 0.5, "dev": 0.25, "test": 0.25, "seed": 0, "stratified": True}
    for split, size in (("train", "num_train"), ("dev", "num_eval"), ("test", "num_test")):
        assert sum(info["class_counts"][split].values()) == info[size]
    assert info["dedupe"]["before"] == 48 and info["dedupe"]["removed"] == 0
    for row in rows.values():
        assert 0 <= row["dev_metric"] <= 1 and row["train_seconds"] > 0 and row["peak_rss_mb"] > 0
        assert 0 <= row["metric"] <= 1  # the test split
        assert row["latency_ms"] > 0 and row["throughput"] > 0 and row["flop_ratio"] > 0
        assert row["step_start_s"] > 0
    assert rows["ft-s0"]["metric"] == records["ft-s0"]["test_metrics"]["accuracy"]
    assert rows["ft-s0"]["dev_metric"] == records["ft-s0"]["final_metrics"]["accuracy"]
    assert rows["ft-s0"]["flop_ratio"] == 1.0 and rows["ft-s0"]["latency_ratio"] == 1.0
    assert rows["ft-s0"]["tta_seconds"] is not None  # FT's final metric sets the bar, so FT reaches it
    for job in ("apt-d0.50-s0", "lora-prune-kwon-d0.50-s0", "lora-prune-tp-d0.50-s0"):
        assert rows[job]["flop_ratio"] < 0.75 and rows[job]["params_after"] < rows["ft-s0"]["params_after"]
        assert rows[job]["step_after_pruning_s"] > 0
    assert rows["apt-d0.70-s0"]["flop_ratio"] > rows["apt-d0.50-s0"]["flop_ratio"]
    # LoRA+Prune's time includes its LoRA phase, and its curve starts with that phase
    lp = data["results"]["lora-prune-kwon-d0.50-s0"]
    assert lp["train_seconds"] > data["results"]["lora-s0"]["train_seconds"]
    # ... and its retraining's clock starts after the LoRA phase AND every pruning phase
    first_retrain = next(p for p in lp["curve"] if p["final_structure"])
    steps_before = sum(s for k, s in lp["step_times"].items() if int(k) <= first_retrain["step"])
    before = sum(v for k, v in lp["phases"].items() if k != "retrain")
    assert first_retrain["train_seconds"] == pytest.approx(before + steps_before)
    # LoRA+Prune's peak is the larger of its two processes (LoRA; prune and retrain), not APT's
    lora_peak = records["lora-s0"]["peak_rss_mb"]
    assert rows["lora-prune-kwon-d0.50-s0"]["peak_rss_mb"] == max(lora_peak, lp["peak_rss_mb"])
    # every job's peak is its own VmHWM since its start, with the allocator setting it ran under
    assert all(r["peak_rss_reset"] for r in data["results"].values())
    assert {r["allocator"] for r in rows.values()} <= {"default", "pinned"}
    # both LoRA+Prune baselines are in the headline, and the target compares APT with the better one
    labels = {g["label"] for g in data["groups"]}
    assert {"LoRA+Prune (Kwon et al.)", "LoRA+Prune (Torch-Pruning)"} <= labels
    assert {t["id"] for t in data["targets"]} == {
        "accuracy_vs_ft",
        "accuracy_vs_lora_prune",
        "tta_vs_lora_prune",
        "memory_vs_lora",
        "latency_vs_dense",
        "latency_vs_flops",
        "step_after_pruning",
    }
    measured = {t["id"]: t["met"] for t in data["targets"]}
    assert all(
        measured[k] is not None for k in ("latency_vs_dense", "latency_vs_flops", "step_after_pruning")
    )
    assert measured["accuracy_vs_ft"] is not None and measured["tta_vs_lora_prune"] is not None
    page = (results / "tiny.md").read_text()
    assert "## Targets" in page and "tiny/accuracy_vs_latency.png" in page and "## Density sweep" in page

    # the same work folder resumes: nothing trains again
    code, _, err = _run(_bench_args(tiny_setup, workdir, results), capsys)
    assert code == 0 and err.count("done earlier") == len(records)


def test_bench_help_and_dry_run(tiny_setup, tmp_path, capsys):
    code, out, _ = _run(["bench", "--help"], capsys)
    assert code == 0 and "--suite" in out and "--target-density" in out and "--quick" in out
    args = [*_bench_args(tiny_setup, tmp_path / "work", tmp_path / "results"), "--dry-run"]
    code, _, err = _run(args, capsys)
    assert code == 0 and "16 training jobs" in err and "apt-no-distill-d0.50-s0" in err
    assert "lora-s0: LoRA, density 1, seed 0, rate from the grid, default allocator, reuses the grid" in err
    assert not (tmp_path / "results").exists()
    code, _, err = _run(["bench", "--suite", "nope"], capsys)
    assert code == 2 and "unknown bench suite" in err


@pytest.mark.integration
def _tiny_decoder_bench(word_tokenizer, tmp_path, **overrides):
    """The decoder suite on a 2-layer GQA LLaMA and 30 lines of random words (no held-out domain)."""
    word_tokenizer.save_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(word_tokenizer),
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=word_tokenizer.pad_token_id,
        eos_token_id=word_tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    words = ["the", "cat", "sat", "on", "mat", "dog", "river", "city", "flows", "through", "london"]
    generator = torch.Generator().manual_seed(0)
    for name, count in (("train", 24), ("dev", 6)):
        lines = []
        for _ in range(count):
            ids = torch.randint(0, len(words), (30,), generator=generator).tolist()
            lines.append(json.dumps({"text": " ".join(words[i] for i in ids)}))
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    bench = suite_config(
        "smollm2-bbc",
        model=str(tmp_path / "model"),
        dataset_name="",
        train_file=str(tmp_path / "train.jsonl"),
        eval_file=str(tmp_path / "dev.jsonl"),
        max_train_samples=0,
        max_eval_samples=0,
        max_length=16,
        max_steps=18,
        methods="lora,lora-prune-kwon,apt",
        ablations="",
        seeds="0",
        grid=False,
        heldout="",
        adapter_roles="q,v",
        retrain_fraction=0.5,
        apt_num_events=2,
        calibration_samples=4,
        latency_batch=2,
        latency_length=16,
        latency_repeats=3,
        latency_warmup=1,
        isolate=False,
        threads=1,
        workdir=str(tmp_path / "work"),
        results_dir=str(tmp_path / "results"),
        name="llama",
    )
    return dataclasses.replace(bench, **overrides)


def test_bench_decoder_path_on_a_tiny_llama(word_tokenizer, tmp_path):
    """Causal LM: LoRA, LoRA+Prune and APT pruning before tuning, perplexity, LoRA sets the TTA bar."""
    from aptune.bench import run_benchmark

    bench = _tiny_decoder_bench(word_tokenizer, tmp_path)
    outcome = run_benchmark(bench, log=lambda line: None)
    assert not outcome.failures
    summary = outcome.summary
    assert summary["reference"]["metric"] == "perplexity" and not summary["reference"]["greater_is_better"]
    rows = {r["id"]: r for r in summary["jobs"]}
    assert set(rows) == {"lora-s0", "lora-prune-kwon-d0.70-s0", "apt-d0.70-s0"}
    # the bar comes from LoRA's TEST perplexity, the curve is on dev: the first dev point at or below
    # the bar (lower is better), or "not reached" when the dev perplexity stays above it
    bar = summary["reference"]["threshold"]
    assert bar == pytest.approx(rows["lora-s0"]["metric"] / 0.97)
    lora_curve = json.loads((tmp_path / "work" / "results" / "lora-s0.json").read_text())["curve"]
    below = [p["train_seconds"] for p in lora_curve if p["metrics"]["perplexity"] <= bar]
    assert rows["lora-s0"]["tta_seconds"] == (below[0] if below else None)
    for job in ("lora-prune-kwon-d0.70-s0", "apt-d0.70-s0"):
        assert rows[job]["metric"] > 1 and rows[job]["flop_ratio"] < 0.9
    targets = {t["id"]: t for t in summary["targets"]}
    assert list(targets) == [
        "perplexity_vs_prune_then_lora",
        "perplexity_vs_lora",
        "params_vs_prune_then_lora",
        "memory_vs_lora",
    ]
    # no prune-then-LoRA baseline in this suite: nothing to compare with, not a pass
    assert targets["perplexity_vs_prune_then_lora"]["met"] is None
    assert targets["params_vs_prune_then_lora"]["met"] is None
    # without a held-out domain the test split alone decides
    apt_vs_lora = rows["apt-d0.70-s0"]["metric"] / rows["lora-s0"]["metric"]
    assert targets["perplexity_vs_lora"]["value"] == pytest.approx(apt_vs_lora)
    assert targets["perplexity_vs_lora"]["met"] is (apt_vs_lora <= 1.5)
    assert outcome.files["md"].is_file()


@pytest.mark.parametrize("name", sorted(set(ABLATIONS) - {"one-shot"}))
def test_every_ablation_is_a_valid_apt_setting(name: str) -> None:
    from aptune.config import AptConfig

    label, overrides = ABLATIONS[name]
    job = _job("apt", 0, 0.6, name)  # the planner resolves values that stand for the job's density
    config = AptConfig(target_density=job.density, **job.apt_overrides)  # a typo in a field fails here
    assert label.startswith("APT") and overrides and job.label == label
    assert all(getattr(config, key) == value for key, value in job.apt_overrides.items())
    assert JOB_DENSITY not in job.apt_overrides.values()


def test_pretune_at_target_ablation_prunes_to_the_job_density_before_tuning() -> None:
    from aptune.config import AptConfig

    job = _job("apt", 1, 0.55, "pretune-at-target")
    assert job.apt_overrides == {"pretune_prune": True, "pretune_density": 0.55}
    config = AptConfig(target_density=job.density, **job.apt_overrides)
    assert config.pretune_target(is_decoder=True) == 0.55


def _pruned_tiny_llama(ablation: str, density: float):
    """A tiny LLaMA prepared with ``ablation``'s overrides and pruned once from a calibration pass.

    Returns:
        ``(controller, units, neurons)``: the units and neurons per site are those before pruning.
    """
    import aptune
    from aptune.config import AptConfig
    from test_llama import _causal_lm_dataset, tiny_llama

    job = _job("apt", 0, density, ablation)
    config = AptConfig(target_density=density, distill=False, prune_hidden=False, **job.apt_overrides)
    controller = aptune.prepare_(tiny_llama(), config, total_steps=40)
    units, neurons = controller.blocks.unit_counts(), controller.blocks.neuron_counts()
    data = _causal_lm_dataset(8)
    controller.calibrate_and_prune_(
        [{k: torch.tensor(data[i : i + 2][k]) for k in data.column_names} for i in range(0, 8, 2)]
    )
    return controller, units, neurons


def test_the_all_heads_ablation_keeps_every_attention_unit() -> None:
    controller, units, neurons = _pruned_tiny_llama("all-heads", 0.5)
    assert controller.blocks.unit_counts() == units  # every head stays ...
    assert sum(controller.blocks.neuron_counts()) < sum(neurons)  # ... the FFN pays for the budget
    assert controller.density() <= 0.5 + 1e-9


def test_the_floors_ablation_keeps_every_head_and_half_of_every_ffn() -> None:
    controller, units, neurons = _pruned_tiny_llama("floors", 0.75)
    assert controller.blocks.unit_counts() == units  # every head stays ...
    kept = controller.blocks.neuron_counts()
    assert all(k >= n // 2 for k, n in zip(kept, neurons, strict=True))  # ... and half of every FFN
    assert sum(kept) < sum(neurons)  # the rest of the FFN pays for the budget
    assert controller.density() <= 0.75 + 1e-9


def test_the_all_linear_ablation_tunes_every_projection_through_pruning() -> None:
    import aptune
    from aptune.config import AptConfig
    from test_llama import _causal_lm_dataset, tiny_llama

    job = _job("apt", 0, 0.5, "all-linear")
    config = AptConfig(target_density=0.5, distill=False, prune_hidden=False, **job.apt_overrides)
    model = tiny_llama()
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    controller = aptune.prepare_(model, config, total_steps=40)
    assert set(controller.adapters) == linears  # seven per layer: q, k, v, o, gate, up, down
    data = _causal_lm_dataset(8)
    batches = [{k: torch.tensor(data[i : i + 2][k]) for k in data.column_names} for i in range(0, 8, 2)]
    controller.calibrate_and_prune_(batches)
    assert controller.density() <= 0.5 + 1e-9
    # the adapters on o and down lost the input columns of the removed heads and neurons
    for name, adapter in controller.adapters.items():
        assert adapter.lora_A.shape[1] == adapter.base_layer.weight.shape[1], name
    model(**batches[0]).loss.backward()
    # every projection that still has weights is tuned (a site pruned away entirely is skipped)
    present = {n: a for n, a in controller.adapters.items() if a.base_layer.weight.numel()}
    assert {n.rsplit(".", 1)[-1] for n in present} == {
        f"{r}_proj" for r in ("q", "k", "v", "o", "gate", "up", "down")
    }
    assert all(a.lora_B.grad is not None and a.lora_B.grad.abs().sum() > 0 for a in present.values())


def test_the_qv_only_ablation_adapts_q_and_v_and_nothing_else() -> None:
    import aptune
    from aptune.config import AptConfig
    from test_llama import tiny_llama

    job = _job("apt", 0, 0.5, "qv-only")
    config = AptConfig(target_density=0.5, distill=False, **job.apt_overrides)
    model = tiny_llama()
    controller = aptune.prepare_(model, config, total_steps=40)
    layers = model.config.num_hidden_layers
    assert sorted({n.rsplit(".", 1)[-1] for n in controller.adapters}) == ["q_proj", "v_proj"]
    assert len(controller.adapters) == 2 * layers


@pytest.mark.parametrize(
    "variant", ["pretune-halfway", "hidden-norm-weighted", "damage-during-tuning", "hidden-damage"]
)
def test_ablations_that_prune_during_tuning_leave_half_of_the_pruning_to_it(variant: str) -> None:
    from aptune.config import AptConfig
    from aptune.schedule import build_schedule

    job = _job("apt", 1, 0.4, variant)
    assert job.apt_overrides["pretune_density"] == pytest.approx(0.7)
    config = AptConfig(target_density=job.density, **job.apt_overrides)
    schedule = build_schedule(config, 300, is_decoder=True)
    assert schedule.initial_density == pytest.approx(0.7) and schedule.densities[-1] == pytest.approx(0.4)


def test_an_interrupted_apt_job_resumes_from_its_last_checkpoint(word_tokenizer, tmp_path):
    """With --checkpoint-steps an APT job that was stopped continues where its checkpoint left off."""
    import shutil

    from aptune.bench import run_benchmark

    bench = _tiny_decoder_bench(word_tokenizer, tmp_path, methods="apt", checkpoint_steps=4)
    first = run_benchmark(bench, log=lambda line: None)
    assert not first.failures
    work = tmp_path / "work"
    record = json.loads((work / "results" / "apt-d0.70-s0.json").read_text())
    assert "resumed" not in record
    checkpoints = work / "runs" / "apt-d0.70-s0" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-18"]
    # a sitting stopped after step 16's checkpoint: no later checkpoint, no model, no result
    shutil.rmtree(checkpoints / "checkpoint-18")
    shutil.rmtree(work / "runs" / "apt-d0.70-s0" / "model")
    (work / "results" / "apt-d0.70-s0.json").unlink()
    second = run_benchmark(bench, log=lambda line: None)
    assert not second.failures
    resumed = json.loads((work / "results" / "apt-d0.70-s0.json").read_text())
    assert resumed["resumed"] == [{"from_step": 16}]
    # the whole run's steps, and the perplexities right after pruning as measured before the stop
    assert sorted(int(s) for s in resumed["step_times"]) == list(range(1, 19))
    assert resumed["domain_perplexity"] == record["domain_perplexity"]
    assert resumed["total_steps"] == record["total_steps"] == 18
    after, before = resumed["final_metrics"]["perplexity"], record["final_metrics"]["perplexity"]
    assert after == pytest.approx(before, rel=1e-4)
    page = second.files["md"].read_text()
    assert "**Resumed from a checkpoint**: `apt-d0.70-s0` (from step 16)" in page


def test_an_interrupted_prune_then_lora_job_resumes_with_the_same_pruned_model(word_tokenizer, tmp_path):
    """With --checkpoint-steps a peft baseline keeps its pruned model and resumes LoRA from a checkpoint."""
    import shutil

    from aptune.bench import run_benchmark
    from aptune.bench.decoder_methods import PRUNED_FILE

    bench = _tiny_decoder_bench(word_tokenizer, tmp_path, methods="aptune-one-shot", checkpoint_steps=4)
    first = run_benchmark(bench, log=lambda line: None)
    assert not first.failures
    work, job = tmp_path / "work", "aptune-one-shot-d0.70-s0"
    record = json.loads((work / "results" / f"{job}.json").read_text())
    assert "resumed" not in record
    run = work / "runs" / job
    assert (run / PRUNED_FILE).is_file()
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-18"]
    # a sitting stopped after step 16's checkpoint: no later checkpoint, no model, no result
    shutil.rmtree(checkpoints / "checkpoint-18")
    shutil.rmtree(run / "model")
    (work / "results" / f"{job}.json").unlink()
    second = run_benchmark(bench, log=lambda line: None)
    assert not second.failures
    resumed = json.loads((work / "results" / f"{job}.json").read_text())
    assert resumed["resumed"] == [{"from_step": 16}]
    # the pruning was read back, not done again: the same plan, after-pruning figures and clock
    assert resumed["pruning"] == record["pruning"]
    assert resumed["domain_perplexity"]["after_pruning"] == record["domain_perplexity"]["after_pruning"]
    assert resumed["phases"] == record["phases"]
    # the clock of the whole run: steps 1..18, the evaluations before the stop kept
    assert sorted(int(s) for s in resumed["step_times"]) == list(range(1, 19))
    assert {k: v for k, v in resumed["step_times"].items() if int(k) <= 16} == {
        k: v for k, v in record["step_times"].items() if int(k) <= 16
    }
    assert [p["step"] for p in resumed["curve"]] == [p["step"] for p in record["curve"]]
    after, before = resumed["final_metrics"]["perplexity"], record["final_metrics"]["perplexity"]
    assert after == pytest.approx(before, rel=1e-4)
    assert resumed["params_after"] == record["params_after"]
    # a pruning kept from before a default changed is refused, not trained under the new label
    stored = json.loads((run / PRUNED_FILE).read_text())
    stored["record"]["apt_config"].update(format_version=1, keep_copy_heads=None)
    (run / PRUNED_FILE).write_text(json.dumps(stored))
    (work / "results" / f"{job}.json").unlink()
    third = run_benchmark(bench, log=lambda line: None)
    assert "holds a pruning made with other APT settings (keep_copy_heads)" in third.failures[job]
