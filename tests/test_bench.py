"""The benchmark harness: FLOPs against hand counts, latency, TTA, step times, the plan, a tiny run."""

import json
import statistics

import pytest
import torch
from transformers import BertTokenizerFast, LlamaConfig, LlamaForCausalLM

import aptune
from aptune.bench import (
    BenchConfig,
    count_matmul_flops,
    measure_latency,
    plan_jobs,
    step_time_summary,
    suite_config,
    time_to_accuracy,
)
from aptune.bench.config import estimate_seconds
from aptune.bench.measure import curve_from_step_times
from aptune.cli import main
from tiny import batch, tiny_bert

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "film", "plot", "very", "the", "was"]


def _bert_flops(t, b, layers, hidden, labels):
    """Hand count for BERT: per layer and token q, k, v, o (2 * in * out each) and the FFN; scores and
    context 2 * T^2 * head_dim per head each; pooler and classifier once per sequence."""
    per_sequence = 0
    for heads_width, ffn in layers:
        per_sequence += t * (3 * 2 * hidden * heads_width + 2 * heads_width * hidden)  # q, k, v, o
        per_sequence += 2 * 2 * t * t * heads_width  # Q K^T and P V over all heads
        per_sequence += t * (2 * hidden * ffn + 2 * ffn * hidden)  # up, down
    per_sequence += 2 * hidden * hidden + 2 * hidden * labels  # pooler, classifier
    return b * per_sequence


def test_flops_match_a_hand_count_dense_pruned_and_exported(tmp_path):
    model = tiny_bert(num_labels=3)  # 2 layers, hidden 32, 4 heads of 8, FFN 64
    flops = count_matmul_flops(model, seq_len=16, batch_size=2)
    assert flops.total == _bert_flops(16, 2, [(32, 64), (32, 64)], 32, 3)
    assert flops.attention == 2 * 2 * (4 * 16 * 16 * 32)
    assert flops.head == 2 * (2 * 32 * 32 + 2 * 32 * 3)

    # prune heads and neurons (not the hidden size) with aptune, then count from the new shapes
    config = aptune.AptConfig(target_density=0.5, prune_hidden=False, distill=False)
    controller = aptune.prepare_(model, config, total_steps=100)
    controller.calibrate_and_prune_([batch(num_labels=3)])
    summary = controller.layer_summary()
    layers = [(h * 8, f) for h, f in zip(summary["heads_per_layer"], summary["ffn_per_layer"], strict=True)]
    assert layers != [(32, 64), (32, 64)]
    expected = _bert_flops(16, 2, layers, 32, 3)
    assert count_matmul_flops(model, 16, 2).total == expected
    # the exported model (an Apt* class) counts the same
    exported = aptune.export(model, controller, tmp_path / "small")
    assert count_matmul_flops(exported, 16, 2).total == expected


def test_flops_grouped_query_attention_and_lm_head():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=24,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = LlamaForCausalLM(config)
    t, h, d = 8, 24, 4
    kv = 2 * d
    per_layer = t * (2 * h * h + 2 * 2 * h * kv + 2 * h * h)  # q, k, v, o
    per_layer += 4 * t * t * h  # scores and context over the 6 query heads
    per_layer += t * 3 * 2 * h * 40  # gate, up, down
    expected = 2 * per_layer + t * 2 * h * 50  # the LM head runs on every token
    assert count_matmul_flops(model, t, 1).total == expected


def test_latency_is_the_median_of_the_requested_repeats():
    model = tiny_bert(num_labels=2)
    stats = measure_latency(model, batch_size=2, seq_len=8, repeats=7, warmup=1)
    assert stats["repeats"] == 7 and len(stats["times_ms"]) == 7
    assert stats["median_ms"] == pytest.approx(statistics.median(stats["times_ms"]))
    assert stats["min_ms"] <= stats["p25_ms"] <= stats["median_ms"] <= stats["p75_ms"] <= stats["max_ms"]
    assert stats["throughput"] == pytest.approx(2 / (stats["median_ms"] / 1000))
    with pytest.raises(ValueError):
        measure_latency(model, repeats=0)


def test_time_to_accuracy_on_a_synthetic_curve():
    step_times = {s: 0.5 for s in range(1, 41)}  # 40 steps of half a second
    evals = [
        (10, {"accuracy": 0.95}),
        (20, {"accuracy": 0.80}),
        (30, {"accuracy": 0.92}),
        (40, {"accuracy": 0.97}),
    ]
    # a dense model that reaches the bar at step 10 and is pruned at step 15 does not count
    curve = curve_from_step_times(step_times, evals, offset=100.0, final_from_step=15)
    assert [p["train_seconds"] for p in curve] == [105.0, 110.0, 115.0, 120.0]
    assert [p["final_structure"] for p in curve] == [False, True, True, True]
    assert time_to_accuracy(curve, 0.9, "accuracy") == 115.0
    assert time_to_accuracy(curve, 0.9, "accuracy", final_structure_only=False) == 105.0
    assert time_to_accuracy(curve, 0.99, "accuracy") is None
    # lower is better (perplexity): the first point at or below the bar
    ppl = [{"train_seconds": s, "metrics": {"perplexity": p}} for s, p in [(1, 30.0), (2, 20.5), (3, 19.0)]]
    assert time_to_accuracy(ppl, 20.0 / 0.97, "perplexity", greater_is_better=False) == 2


def test_step_time_summary_start_after_pruning_and_ratio():
    times = {1: 9.0, **{s: 1.0 for s in range(2, 21)}, **{s: 0.4 for s in range(21, 41)}}
    summary = step_time_summary(times, last_prune_step=20, first_event_step=15)
    assert summary["start"] == 1.0  # step 1 (warm-up) is left out
    assert summary["after_pruning"] == 0.4 and summary["ratio_after_pruning"] == pytest.approx(0.4)
    assert step_time_summary({})["start"] is None


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
        *("--ablations", "no-distill,one-shot", "--apt-num-events", "3", "--calibration-samples", "8"),
        *("--retrain-fraction", "0.5", "--ft-lr-grid", "0.002", "--adapter-lr-grid", "0.005,0.01"),
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


def test_bench_end_to_end_on_a_tiny_model(tiny_setup, tmp_path, capsys):
    workdir, results = tmp_path / "work", tmp_path / "results"
    code, out, err = _run(_bench_args(tiny_setup, workdir, results), capsys)
    assert code == 0, err[-3000:]
    assert "MET" in out or "MISSED" in out
    for name in ("tiny.md", "tiny.json"):
        assert (results / name).is_file()
    for plot in ("accuracy_vs_latency", "tta", "curves", "memory"):
        assert (results / "tiny" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((results / "tiny.json").read_text())
    assert not data["failures"]
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
        assert 0 <= row["metric"] <= 1 and row["train_seconds"] > 0 and row["peak_rss_mb"] > 0
        assert row["latency_ms"] > 0 and row["throughput"] > 0 and row["flop_ratio"] > 0
        assert row["step_start_s"] > 0
    assert rows["ft-s0"]["flop_ratio"] == 1.0 and rows["ft-s0"]["latency_ratio"] == 1.0
    assert rows["ft-s0"]["tta_seconds"] is not None  # FT's final metric sets the bar, so FT reaches it
    for job in ("apt-d0.50-s0", "lora-prune-d0.50-s0"):
        assert rows[job]["flop_ratio"] < 0.75 and rows[job]["params_after"] < rows["ft-s0"]["params_after"]
        assert rows[job]["step_after_pruning_s"] > 0
    assert rows["apt-d0.70-s0"]["flop_ratio"] > rows["apt-d0.50-s0"]["flop_ratio"]
    # LoRA+Prune's time includes its LoRA phase, and its curve starts with that phase
    lp = data["results"]["lora-prune-d0.50-s0"]
    assert lp["train_seconds"] > data["results"]["lora-s0"]["train_seconds"]
    assert lp["curve"][0]["phase"] == "lora" and not lp["curve"][0]["final_structure"]
    assert {t["id"] for t in data["targets"]} == {
        "accuracy_vs_ft",
        "accuracy_vs_lora_prune",
        "tta_vs_lora_prune",
        "memory_vs_lora",
        "latency_vs_dense",
        "latency_vs_flops",
        "step_after_pruning",
    }
    assert all(t["met"] is not None for t in data["targets"])
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
    assert rows["lora-s0"]["tta_seconds"] is not None
    for job in ("lora-prune-d0.70-s0", "apt-d0.70-s0"):
        assert rows[job]["metric"] > 1 and rows[job]["flop_ratio"] < 0.9
    assert [t["id"] for t in summary["targets"]] == ["memory_vs_lora"]
    assert outcome.files["md"].is_file()
