"""What the benchmark measures: FLOPs against hand counts, latency (warm-up, interleaving), the
training clock and time-to-accuracy, step times, and peak memory (VmHWM reset, never current RSS)."""

import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import aptune
from aptune.bench import count_matmul_flops, measure_latencies, measure_latency, step_time_summary
from aptune.bench import measure as measure_module
from aptune.bench.measure import (
    JobPeakMemory,
    allocator_setting,
    chained_curve,
    current_rss_mb,
    curve_from_step_times,
    peak_rss_mb,
    reset_peak_rss,
    time_to_accuracy,
)
from tiny import batch, tiny_bert


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


# ------------------------------------------------------------------------- latency: warm-up, interleaving
class FakeClock:
    """A clock the fake models advance: the first call of each model is slow (one-off costs)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now


class FakeModel(nn.Module):
    """Costs ``first_ms`` on its first forward and ``ms`` afterwards, on the fake clock."""

    def __init__(self, name: str, clock: FakeClock, ms: float, first_ms: float = 1000.0) -> None:
        super().__init__()
        self.name, self.clock, self.ms, self.first_ms = name, clock, ms, first_ms
        self.weight = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(vocab_size=10)
        self.forwards = 0

    def forward(self, **batch):
        self.clock.now += (self.first_ms if self.forwards == 0 else self.ms) / 1000.0
        self.forwards += 1
        self.clock.calls.append(self.name)
        return None


def test_latency_excludes_the_warm_up_and_interleaves_the_models():
    clock = FakeClock()
    models = {"dense": FakeModel("dense", clock, 10.0), "pruned": FakeModel("pruned", clock, 4.0)}
    stats = measure_latencies(models, batch_size=2, seq_len=4, repeats=5, warmup=2, timer=clock)
    # the slow first forward of either model is not among the timed ones
    assert stats["dense"]["times_ms"] == pytest.approx([10.0] * 5)
    assert stats["pruned"]["times_ms"] == pytest.approx([4.0] * 5)
    assert stats["dense"]["median_ms"] == pytest.approx(10.0) and stats["dense"]["warmup"] == 2
    # warm-up first (2 rounds), then timed rounds alternate A B A B ...
    assert clock.calls == ["dense", "pruned"] * (2 + 5)
    assert models["dense"].forwards == models["pruned"].forwards == 7


def test_latency_without_warm_up_times_the_first_forward():
    """The control case: with warmup=0 the one-off cost shows up, so the test above can tell."""
    clock = FakeClock()
    models = {"dense": FakeModel("dense", clock, 10.0), "pruned": FakeModel("pruned", clock, 4.0)}
    stats = measure_latencies(models, batch_size=2, seq_len=4, repeats=3, warmup=0, timer=clock)
    assert stats["dense"]["max_ms"] == pytest.approx(1000.0)


# --------------------------------------------------------------------------------------- training clock
def test_lora_prune_clock_includes_its_lora_phase_calibration_and_pruning():
    lora_curve = curve_from_step_times({1: 2.0, 2: 2.0}, [(2, {"accuracy": 0.9})])
    phases = {"lora": 4.0, "calibration": 30.0, "prune": 6.0}
    curve = chained_curve(
        lora_curve, phases, {1: 1.0, 2: 1.0, 3: 1.0}, [(1, {"accuracy": 0.5}), (3, {"accuracy": 0.95})]
    )
    assert [p["train_seconds"] for p in curve] == [4.0, 41.0, 43.0]
    assert [p["final_structure"] for p in curve] == [False, True, True]
    assert [p["phase"] for p in curve] == ["lora", "retrain", "retrain"]
    assert time_to_accuracy(curve, 0.9, "accuracy") == 43.0  # not the LoRA phase's 4 s
    assert time_to_accuracy(curve, 0.9, "accuracy", final_structure_only=False) == 4.0
    # a number offset works as before
    assert curve_from_step_times({1: 1.0}, [(1, {})], offset=5.0)[0]["train_seconds"] == 6.0


def test_apt_step_time_includes_the_pruning_work_done_in_the_step(tmp_path):
    """The trainer times each step around the controller's step, where the pruning events run."""
    import datasets
    from transformers import TrainingArguments

    from aptune.report import RunRecorder

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 120, (48, 12), generator=generator)
    data = datasets.Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * 12] * 48, "labels": (ids[:, 1] % 3).tolist()}
    )
    args = TrainingArguments(
        str(tmp_path / "run"),
        max_steps=24,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    recorder = RunRecorder({}, {"name": "tiny"})
    trainer = aptune.AptTrainer(
        model=tiny_bert(),
        args=args,
        apt_config=aptune.AptConfig(target_density=0.5, num_events=2, distill=False),
        train_dataset=data,
        recorder=recorder,
    )
    controller = trainer.apt_controller
    real_step = controller.step
    pause = 1.0  # far above a tiny step, even on a loaded machine

    def step_with_slow_events(*args, **kwargs):
        before = len(controller.events)
        out = real_step(*args, **kwargs)
        if len(controller.events) > before:  # a pruning event ran in this step: make it cost
            time.sleep(pause)
        return out

    controller.step = step_with_slow_events
    trainer.train()
    report = recorder.to_dict()
    times = {row["step"]: row["step_time"] for row in report["steps"] if row.get("step_time") is not None}
    event_steps = [e["step"] for e in report["events"]]
    assert event_steps and len(times) == 24
    for step in event_steps:
        assert times[step] >= pause, f"the step time of event step {step} leaves out the pruning"
    # the clock of time-to-accuracy sums these step times
    curve = curve_from_step_times(times, [(24, {"accuracy": 1.0})], final_from_step=max(event_steps))
    assert curve[0]["train_seconds"] >= pause * len(event_steps)


# ----------------------------------------------------------------------------------------------- memory
def _fake_status(tmp_path: Path, monkeypatch, rss_kib: int, hwm_kib: int) -> None:
    status = tmp_path / "status"
    status.write_text(f"Name:\tpython\nVmHWM:\t{hwm_kib} kB\nVmRSS:\t{rss_kib} kB\n")
    monkeypatch.setattr(measure_module, "STATUS_FILE", status)


def test_peak_rss_is_the_high_water_mark_not_the_current_rss(tmp_path, monkeypatch):
    _fake_status(tmp_path, monkeypatch, rss_kib=100 * 1024, hwm_kib=500 * 1024)
    assert current_rss_mb() == 100.0
    assert peak_rss_mb() == 500.0
    clear_refs = tmp_path / "clear_refs"
    monkeypatch.setattr(measure_module, "CLEAR_REFS_FILE", clear_refs)
    memory = JobPeakMemory()
    assert memory.start() is True and clear_refs.read_text() == "5"  # "5" resets VmHWM
    assert memory.to_dict() == {
        "peak_rss_mb": 500.0,
        "peak_rss_reset": True,
        "peak_rss_source": "VmHWM since the job's start",
    }


def test_a_failed_reset_reports_no_peak_rather_than_an_inherited_one(tmp_path, monkeypatch):
    _fake_status(tmp_path, monkeypatch, rss_kib=100 * 1024, hwm_kib=900 * 1024)
    monkeypatch.setattr(measure_module, "CLEAR_REFS_FILE", tmp_path / "missing" / "clear_refs")
    memory = JobPeakMemory()
    assert memory.start() is False
    assert memory.to_dict() == {"peak_rss_mb": None, "peak_rss_reset": False, "peak_rss_source": None}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_reset_brings_the_real_high_water_mark_down_to_the_current_rss():
    size = 96 * 2**20
    block = bytearray(size)
    block[::4096] = b"\x01" * len(block[::4096])  # touch every page
    del block
    high = peak_rss_mb()
    assert high >= current_rss_mb() + 64  # the freed block is still in the peak
    assert reset_peak_rss()
    assert peak_rss_mb() < high - 64  # the parent's (here: earlier) peak is gone
    assert peak_rss_mb() >= current_rss_mb() - 1


def test_allocator_setting_of_a_job():
    assert allocator_setting({}, None) == {"setting": "default", "mmap_threshold": None, "source": None}
    assert allocator_setting({}, 2**20)["setting"] == "pinned"
    pinned = allocator_setting({"MALLOC_MMAP_THRESHOLD_": "131072"}, None)
    assert pinned == {"setting": "pinned", "mmap_threshold": 131072, "source": "environment"}
