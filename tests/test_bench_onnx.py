"""The benchmark's ONNX Runtime latency: warm-up and interleaving, the ratio, the page, skips, resuming."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import aptune
from aptune.bench import BenchConfig, Job, run_benchmark, summarize
from aptune.bench.config import LATENCY_FILE, PLAN_FILE
from aptune.bench.measure import synthetic_ids
from aptune.bench.onnx_latency import (
    ONNX_LATENCY_FILE,
    measure_onnx_latencies,
    onnx_feed,
    onnx_session,
    onnx_skip_reason,
)
from aptune.bench.page import markdown
from test_bench import tiny_bench_options, tiny_setup  # noqa: F401  (the fixture: a tiny BERT folder and a CSV split)
from test_export import _pruned
from tiny import tiny_bert


# ------------------------------------------------------------------- warm-up and interleaving
class FakeClock:
    """A clock that only the fake sessions advance; it records which session ran, in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now


class FakeSession:
    """An ONNX Runtime session stand-in: ``first_ms`` on its first run, ``ms`` afterwards (fake clock)."""

    def __init__(
        self, name: str, clock: FakeClock, ms: float, inputs=("input_ids", "attention_mask")
    ) -> None:
        self.name, self.clock, self.ms = name, clock, ms
        self.inputs = inputs
        self.runs = 0
        self.feeds: list[dict] = []

    def get_inputs(self):
        return [SimpleNamespace(name=n) for n in self.inputs]

    def run(self, output_names, feed):
        self.clock.now += (1000.0 if self.runs == 0 else self.ms) / 1000.0
        self.runs += 1
        self.clock.calls.append(self.name)
        self.feeds.append(feed)
        return [np.zeros((1, 2), dtype=np.float32)]


def test_onnx_latency_excludes_the_warm_up_and_interleaves_dense_and_pruned():
    clock = FakeClock()
    sessions = {
        "dense": FakeSession("dense", clock, 10.0, ("input_ids", "attention_mask", "token_type_ids")),
        "pruned": FakeSession("pruned", clock, 4.0),
    }
    stats = measure_onnx_latencies(
        sessions, vocab_size=50, batch_size=3, seq_len=5, repeats=4, warmup=2, timer=clock
    )
    # the slow first run of either session is not among the timed ones
    assert stats["dense"]["times_ms"] == pytest.approx([10.0] * 4)
    assert stats["pruned"]["times_ms"] == pytest.approx([4.0] * 4)
    assert stats["pruned"]["median_ms"] == pytest.approx(4.0) and stats["pruned"]["warmup"] == 2
    assert stats["dense"]["throughput"] == pytest.approx(3 / 0.010)
    # warm-up rounds first, then timed rounds alternate dense, pruned, dense, pruned ...
    assert clock.calls == ["dense", "pruned"] * (2 + 4)
    # every session gets the inputs it declares, the PyTorch measurement's ids and an all-ones mask
    ids = synthetic_ids(50, 3, 5).numpy()
    assert set(sessions["dense"].feeds[0]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert set(sessions["pruned"].feeds[0]) == {"input_ids", "attention_mask"}
    np.testing.assert_array_equal(sessions["pruned"].feeds[-1]["input_ids"], ids)
    assert sessions["dense"].feeds[0]["attention_mask"].all()
    assert not sessions["dense"].feeds[0]["token_type_ids"].any()


def test_onnx_latency_without_warm_up_times_the_first_run():
    """The control case: with warmup=0 the one-off cost shows up, so the test above can tell."""
    clock = FakeClock()
    sessions = {"dense": FakeSession("dense", clock, 10.0), "pruned": FakeSession("pruned", clock, 4.0)}
    stats = measure_onnx_latencies(
        sessions, vocab_size=50, batch_size=2, seq_len=4, repeats=3, warmup=0, timer=clock
    )
    assert stats["dense"]["max_ms"] == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="repeats"):
        measure_onnx_latencies(sessions, vocab_size=50, repeats=0, timer=clock)


def test_the_synthetic_ids_are_the_pytorch_measurements():
    from aptune.bench.measure import synthetic_batch

    model = tiny_bert()
    torch.testing.assert_close(synthetic_batch(model, 2, 7)["input_ids"], synthetic_ids(120, 2, 7))


# ---------------------------------------------------------------- the worker: exports and ratio
def _work_folder(tmp_path):
    """A work folder as the harness leaves it: plan.json, a dense-shaped FT result and a pruned APT one."""
    from transformers import BertTokenizerFast

    base = tmp_path / "base"
    dense = tiny_bert(num_labels=2)
    dense.save_pretrained(base)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]
    BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(base)
    ft = tiny_bert(num_labels=2, seed=1)  # other weights, the dense shapes
    ft.save_pretrained(tmp_path / "ft-model")
    pruned, controller = _pruned(lambda: tiny_bert(num_labels=2), 1)
    pruned.eval()
    aptune.export(pruned, controller, tmp_path / "apt-model")
    config = BenchConfig(
        methods="ft,apt", ablations="", seeds="0", pinned_seeds="", grid=False, target_density=0.4,
        latency_batch=2, latency_length=8, latency_repeats=3, latency_warmup=1, threads=1,
    )  # fmt: skip
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    jobs = [Job("ft-s0", "ft", "FT", 0, 1.0), Job("apt-d0.40-s0", "apt", "APT", 0, 0.4)]
    data = {"train_file": "", "eval_file": "", "test_file": "", "num_train": 0, "num_labels": 2}
    plan = {"config": config.to_dict(), "jobs": [j.to_dict() for j in jobs], "data": data, "model": str(base)}
    (work / PLAN_FILE).write_text(json.dumps(plan))
    for job_id, folder in (("ft-s0", "ft-model"), ("apt-d0.40-s0", "apt-model")):
        (work / "results" / f"{job_id}.json").write_text(json.dumps({"model_dir": str(tmp_path / folder)}))
    return work


def test_onnx_stage_exports_each_model_and_divides_pruned_by_dense(tmp_path, monkeypatch):
    from aptune.bench import onnx_latency
    from aptune.bench.worker import run_onnx_latency
    from aptune.export import load

    work = _work_folder(tmp_path)
    seen = {}

    def fake_measure(sessions, **kwargs):
        seen.update(sessions=sessions, **kwargs)
        return {name: {"median_ms": {"dense": 10.0}.get(name, 4.0)} for name in sessions}

    monkeypatch.setattr(onnx_latency, "measure_onnx_latencies", fake_measure)
    data = run_onnx_latency(work)
    assert json.loads((work / ONNX_LATENCY_FILE).read_text()) == data
    # the FT model has the dense shapes: it shares the dense measurement, as in the PyTorch stage
    assert set(seen["sessions"]) == {"dense", "apt-d0.40-s0"}
    assert data["jobs"]["ft-s0"]["key"] == "dense" and data["jobs"]["ft-s0"]["latency_ratio"] == 1.0
    assert data["jobs"]["apt-d0.40-s0"]["latency_ratio"] == pytest.approx(0.4)  # pruned / dense, not 2.5
    assert seen["batch_size"] == 2 and seen["seq_len"] == 8 and seen["repeats"] == 3 and seen["warmup"] == 1
    assert data["settings"]["threads"] == 1 and data["settings"]["onnxruntime"]
    # each file is the model it is named after: ONNX Runtime's logits equal the exported model's
    inputs = {"input_ids": torch.randint(3, 120, (2, 6), generator=torch.Generator().manual_seed(0))}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    for path, model in (
        (data["dense"]["file"], tiny_bert(num_labels=2)),
        (data["jobs"]["apt-d0.40-s0"]["file"], load(tmp_path / "apt-model")),
    ):
        session = onnx_session(path, 1)
        feed = onnx_feed(session, 120, 2, 6)
        feed.update({k: v.numpy() for k, v in inputs.items()})
        with torch.no_grad():
            expected = model(**inputs, token_type_ids=torch.zeros_like(inputs["input_ids"])).logits.numpy()
        np.testing.assert_allclose(session.run(["logits"], feed)[0], expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------- summary and page
def _synthetic():
    jobs = [Job("ft-s0", "ft", "FT", 0, 1.0), Job("apt-d0.40-s0", "apt", "APT", 0, 0.4)]
    results = {
        j.id: {"primary_metric": "accuracy", "final_metrics": {"test": {"accuracy": 0.9}}} for j in jobs
    }
    latency = {
        "dense": {"params": 1000, "latency": {"median_ms": 50.0}},
        "jobs": {
            "ft-s0": {"key": "dense", "latency": {"median_ms": 50.0}, "latency_ratio": 1.0},
            "apt-d0.40-s0": {"key": "apt-d0.40-s0", "latency": {"median_ms": 30.0}, "latency_ratio": 0.6},
        },
    }
    onnx = {
        "settings": {"batch_size": 32, "seq_len": 128, "repeats": 20, "warmup": 3, "threads": 2},
        "dense": {"latency": {"median_ms": 20.0}},
        "jobs": {
            "ft-s0": {"key": "dense", "latency": {"median_ms": 20.0}, "latency_ratio": 1.0},
            "apt-d0.40-s0": {"key": "apt-d0.40-s0", "latency": {"median_ms": 5.0}, "latency_ratio": 0.25},
        },
    }
    config = BenchConfig(methods="ft,apt", ablations="", seeds="0", pinned_seeds="", target_density=0.4)
    return config, jobs, results, latency, onnx


def test_page_shows_pytorch_and_onnx_runtime_latency_side_by_side():
    config, jobs, results, latency, onnx = _synthetic()
    summary = summarize(config, jobs, results, latency, onnx_latency=onnx)
    rows = {r["id"]: r for r in summary["jobs"]}
    assert (
        rows["apt-d0.40-s0"]["onnx_latency_ms"] == 5.0 and rows["apt-d0.40-s0"]["onnx_latency_ratio"] == 0.25
    )
    apt = next(g for g in summary["groups"] if g["method"] == "apt")
    assert apt["onnx_latency_ratio"]["median"] == 0.25
    page = markdown(summary, {})
    section = page.split("## Exported latency: PyTorch vs ONNX Runtime")[1].split("\n## ")[0]
    assert "| Dense model | 1 | 50.0 | 1.000 | 20.0 | 1.000 |" in section
    assert "| APT | 0.4 | 30.0 | 0.600 | 5.00 | 0.250 |" in section
    assert "intra-op threads 2" in section and "interleaved" in section


def test_page_says_why_the_onnx_table_is_missing():
    config, jobs, results, latency, _ = _synthetic()
    summary = summarize(config, jobs, results, latency, onnx_latency={"skipped": "onnxruntime not installed"})
    section = markdown(summary, {}).split("## Exported latency: PyTorch vs ONNX Runtime")[1].split("\n## ")[0]
    assert "Not measured: onnxruntime not installed." in section and "| APT |" not in section
    summary = summarize(config, jobs, results, latency)  # the stage failed: no figures
    assert "Not measured: the ONNX Runtime stage wrote no figures" in markdown(summary, {})


# ---------------------------------------------------------------------------------------- skipping
def test_the_stage_is_skipped_without_onnxruntime_and_for_causal_lm(tmp_path, monkeypatch):
    from aptune.bench import harness, worker

    assert onnx_skip_reason("classification") is None
    assert "causal-lm" in onnx_skip_reason("causal-lm") and "GGUF" in onnx_skip_reason("causal-lm")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert onnx_skip_reason("classification") == "onnxruntime not installed (pip install 'aptune[onnx]')"

    def must_not_run(workdir):
        raise AssertionError("the ONNX stage ran without onnxruntime")

    monkeypatch.setattr(worker, "run_onnx_latency", must_not_run)
    lines, failures = [], {}
    config = BenchConfig(isolate=False, workdir=str(tmp_path))
    got = harness._onnx_latency_stage(config, tmp_path, True, failures, lines.append)
    assert got == {"skipped": "onnxruntime not installed (pip install 'aptune[onnx]')"}
    assert lines == [
        "[bench] ONNX Runtime latency skipped: onnxruntime not installed (pip install 'aptune[onnx]')"
    ]
    assert not failures and not (tmp_path / ONNX_LATENCY_FILE).exists()


# ------------------------------------------------------------------------- resuming an older folder
@pytest.mark.integration
def test_a_work_folder_without_onnx_figures_resumes_with_the_onnx_stage_only(
    tiny_setup,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """A folder finished before the ONNX stage existed: no job trains, no PyTorch latency, ONNX only."""
    from aptune.bench import harness

    config = tiny_bench_options(tiny_setup, tmp_path)
    work = tmp_path / "work"
    # the first run as the code before the ONNX stage ran it: the same plan, jobs and latency, no ONNX
    with monkeypatch.context() as before:
        before.setattr(harness, "_onnx_latency_stage", lambda *args: {})
        first = run_benchmark(BenchConfig(isolate=False, **config), log=lambda line: None)
    assert not first.failures and not (work / ONNX_LATENCY_FILE).exists()
    jobs, latency = json.loads((work / PLAN_FILE).read_text())["jobs"], (work / LATENCY_FILE).read_bytes()
    assert not (work / "logs").exists()  # the first run trained in this process
    lines: list[str] = []
    again = run_benchmark(BenchConfig(isolate=True, **config), log=lines.append)  # as `aptune bench` runs
    assert not again.failures, again.failures
    assert sum("done earlier" in line for line in lines) == 2
    assert not any("latency and FLOPs" in line for line in lines)
    assert "[bench] ONNX Runtime latency of the exported models ..." in lines
    # nothing but the ONNX stage started a process (every job and stage logs to logs/<name>.log)
    assert sorted(p.name for p in (work / "logs").glob("*.log")) == ["onnx-latency.log"]
    assert (work / LATENCY_FILE).read_bytes() == latency
    assert json.loads((work / PLAN_FILE).read_text())["jobs"] == jobs
    onnx = json.loads((work / ONNX_LATENCY_FILE).read_text())
    assert set(onnx["jobs"]) == {"ft-s0", "apt-d0.50-s0"} and onnx["jobs"]["ft-s0"]["key"] == "dense"
    page = (tmp_path / "results" / "tiny.md").read_text()
    assert "| APT | 0.5 |" in page.split("## Exported latency: PyTorch vs ONNX Runtime")[1].split("\n## ")[0]
    # a third run finds the file: no stage at all
    lines.clear()
    run_benchmark(BenchConfig(isolate=True, **config), log=lines.append)
    assert not any("ONNX Runtime latency" in line for line in lines)
