"""The benchmark harness: the plan, the command line, and tiny end-to-end runs (encoder and decoder)."""

import json

import pytest
import torch
from transformers import BertTokenizerFast, LlamaConfig, LlamaForCausalLM

import aptune
from aptune.bench import BenchConfig, plan_jobs, suite_config
from aptune.bench.config import estimate_seconds
from aptune.cli import main
from tiny import tiny_bert

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "film", "plot", "very", "the", "was"]


def test_plan_of_the_full_suite():
    config = suite_config("minilm-bbc")
    jobs = plan_jobs(config)
    ids = [j.id for j in jobs]
    assert len(ids) == len(set(ids)) == 3 * 4 + 4 + 4 * 2
    done: set[str] = set()
    for job in jobs:  # every dependency comes first
        assert set(job.depends) <= done
        done.add(job.id)
    assert all(j.depends == [f"lora-s{j.seed}"] for j in jobs if j.method == "lora-prune")
    assert {j.variant for j in jobs} == {"", "static", "uniform", "distill", "kurtosis-on"}
    assert estimate_seconds(config, jobs, 1780, 445) < 90 * 60
    quick = suite_config("minilm-bbc", quick=True)
    assert estimate_seconds(quick, plan_jobs(quick), 320, 120) < 5 * 60
    decoder = suite_config("smollm2-bbc", seeds="0")
    assert [j.method for j in plan_jobs(decoder)] == ["lora", "lora-prune", "apt"]
    with pytest.raises(aptune.ConfigError, match="methods"):
        BenchConfig(methods="ft,bogus")


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    model_dir = folder / "model"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n"
    )
    BertTokenizerFast(vocab_file=str(model_dir / "vocab.txt")).save_pretrained(model_dir)
    model = tiny_bert(num_labels=2)
    model.config.vocab_size = 120
    model.save_pretrained(model_dir)
    positive = ["the movie was very good", "great film", "the plot was fine", "very good plot"]
    negative = ["the movie was awful", "bad film", "the plot was poor", "very bad plot"]
    rows = [
        f"{(positive if i % 2 == 0 else negative)[i % 4]},{'pos' if i % 2 == 0 else 'neg'}" for i in range(64)
    ]
    (folder / "train.csv").write_text("text,label\n" + "\n".join(rows[:48]) + "\n")
    (folder / "dev.csv").write_text("text,label\n" + "\n".join(rows[48:]) + "\n")
    return folder


def _bench_args(folder, workdir, results):
    return [
        "bench",
        *("--model", str(folder / "model"), "--dataset-name", ""),
        *("--train-file", str(folder / "train.csv"), "--eval-file", str(folder / "dev.csv")),
        *("--max-length", "16", "--batch-size", "4", "--eval-batch-size", "16", "--max-steps", "24"),
        *("--evaluations", "3", "--seeds", "0", "--target-density", "0.5", "--densities", "0.5,0.7"),
        *("--ablations", "no-distill", "--apt-num-events", "3", "--calibration-samples", "8"),
        *("--retrain-fraction", "0.5", "--ft-lr", "0.002", "--lora-lr", "0.005", "--apt-lr", "0.005"),
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
    workdir, results = tmp_path / "work", tmp_path / "results"
    code, out, err = _run(_bench_args(tiny_setup, workdir, results), capsys)
    assert code == 0, err[-3000:]
    assert "MET" in out or "MISSED" in out or "NOT EVALUATED" in out
    for name in ("tiny.md", "tiny.json"):
        assert (results / name).is_file()
    data = json.loads((results / "tiny.json").read_text())
    assert not data["failures"]
    has_bar = data["reference"]["threshold"] is not None  # needs the reference's test metric
    for plot in ("accuracy_vs_latency", "curves", "memory", *(["tta"] if has_bar else [])):
        assert (results / "tiny" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["id"]: r for r in data["jobs"]}
    assert set(rows) == {
        "ft-s0",
        "lora-s0",
        "lora-prune-d0.50-s0",
        "apt-d0.50-s0",
        "apt-no-distill-d0.50-s0",
        "apt-d0.70-s0",
        "lora-prune-d0.70-s0",
    }
    for row in rows.values():
        assert 0 <= row["dev_metric"] <= 1 and row["train_seconds"] > 0 and row["peak_rss_mb"] > 0
        assert row["metric"] is None or 0 <= row["metric"] <= 1  # the test split, when the record has it
        assert row["latency_ms"] > 0 and row["throughput"] > 0 and row["flop_ratio"] > 0
        assert row["step_start_s"] > 0
    assert rows["ft-s0"]["flop_ratio"] == 1.0 and rows["ft-s0"]["latency_ratio"] == 1.0
    if has_bar:  # FT's final metric sets the bar, so FT reaches it
        assert rows["ft-s0"]["tta_seconds"] is not None
    for job in ("apt-d0.50-s0", "lora-prune-d0.50-s0"):
        assert rows[job]["flop_ratio"] < 0.75 and rows[job]["params_after"] < rows["ft-s0"]["params_after"]
        assert rows[job]["step_after_pruning_s"] > 0
    assert rows["apt-d0.70-s0"]["flop_ratio"] > rows["apt-d0.50-s0"]["flop_ratio"]
    # LoRA+Prune's time includes its LoRA phase, and its curve starts with that phase
    lp = data["results"]["lora-prune-d0.50-s0"]
    assert lp["train_seconds"] > data["results"]["lora-s0"]["train_seconds"]
    assert lp["curve"][0]["phase"] == "lora" and not lp["curve"][0]["final_structure"]
    # ... and its retraining's clock starts after the LoRA phase AND the calibration
    first_retrain = next(p for p in lp["curve"] if p["final_structure"])
    steps_before = sum(s for k, s in lp["step_times"].items() if int(k) <= first_retrain["step"])
    clock = lp["phases"]["lora"] + lp["phases"]["calibration"] + steps_before
    assert first_retrain["train_seconds"] == pytest.approx(clock)
    # every job's peak is its own VmHWM since its start, with the allocator setting it ran under
    assert all(r["peak_rss_reset"] for r in data["results"].values())
    assert {r["allocator"] for r in rows.values()} <= {"default", "pinned"}
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
    if has_bar:
        assert measured["accuracy_vs_ft"] is not None and measured["tta_vs_lora_prune"] is not None
    page = (results / "tiny.md").read_text()
    assert "## Targets" in page and "tiny/accuracy_vs_latency.png" in page and "## Density sweep" in page

    # the same work folder resumes: nothing trains again
    code, _, err = _run(_bench_args(tiny_setup, workdir, results), capsys)
    assert code == 0 and err.count("done earlier") == 7


def test_bench_help_and_dry_run(tiny_setup, tmp_path, capsys):
    code, out, _ = _run(["bench", "--help"], capsys)
    assert code == 0 and "--suite" in out and "--target-density" in out and "--quick" in out
    args = [*_bench_args(tiny_setup, tmp_path / "work", tmp_path / "results"), "--dry-run"]
    code, _, err = _run(args, capsys)
    assert code == 0 and "7 training jobs" in err and "apt-no-distill-d0.50-s0" in err
    assert not (tmp_path / "results").exists()
    code, _, err = _run(["bench", "--suite", "nope"], capsys)
    assert code == 2 and "unknown bench suite" in err


@pytest.mark.integration
def test_bench_decoder_path_on_a_tiny_llama(word_tokenizer, tmp_path):
    """Causal LM: LoRA, LoRA+Prune and APT pruning before tuning, perplexity, LoRA sets the TTA bar."""
    from aptune.bench import run_benchmark

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
    outcome = run_benchmark(bench, log=lambda line: None)
    assert not outcome.failures
    summary = outcome.summary
    assert summary["reference"]["metric"] == "perplexity" and not summary["reference"]["greater_is_better"]
    rows = {r["id"]: r for r in summary["jobs"]}
    assert set(rows) == {"lora-s0", "lora-prune-d0.70-s0", "apt-d0.70-s0"}
    if summary["reference"]["threshold"] is not None:  # needs the reference's test metric
        assert rows["lora-s0"]["tta_seconds"] is not None
    for job in ("lora-prune-d0.70-s0", "apt-d0.70-s0"):
        assert rows[job]["dev_metric"] > 1 and rows[job]["flop_ratio"] < 0.9
    assert [t["id"] for t in summary["targets"]] == ["memory_vs_lora"]
    assert outcome.files["md"].is_file()
