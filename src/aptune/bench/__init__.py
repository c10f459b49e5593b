"""Side-by-side benchmark of APT against the methods users would pick instead.

``aptune bench`` (or `run_benchmark`) deduplicates and splits the data (train / dev / test), chooses
every method's learning rate on dev from a small grid, then trains FT, LoRA (the ``peft`` package),
LoRA+Prune (Kwon et al.'s post-training pruning, and Torch-Pruning's Taylor importance) and APT with
its ablations on the same model, split, sequence length, batch and seeds, each job in its own
process, evaluates every exported model on test, measures latency, and writes
``benchmarks/results/<name>.md``, ``.json`` and plots (see ``benchmarks/README.md``).

    >>> from aptune.bench import run_benchmark, suite_config
    >>> outcome = run_benchmark(suite_config("minilm-bbc", quick=True))
    >>> [t["met"] for t in outcome.summary["targets"]]

The measurement functions are usable on their own: `count_matmul_flops`, `measure_latency`,
`time_to_accuracy`, `step_time_summary`.
"""

from aptune.bench.config import ABLATIONS, METHODS, SUITES, BenchConfig, suite_config
from aptune.bench.data import prepare_data
from aptune.bench.harness import BenchOutcome, run_benchmark
from aptune.bench.measure import (
    FlopCount,
    count_matmul_flops,
    measure_latencies,
    measure_latency,
    step_time_summary,
    time_to_accuracy,
)
from aptune.bench.plan import Job, plan_jobs
from aptune.bench.results import summarize, write_results

__all__ = [
    "ABLATIONS",
    "METHODS",
    "SUITES",
    "BenchConfig",
    "BenchOutcome",
    "FlopCount",
    "Job",
    "count_matmul_flops",
    "measure_latencies",
    "measure_latency",
    "plan_jobs",
    "prepare_data",
    "run_benchmark",
    "step_time_summary",
    "suite_config",
    "summarize",
    "time_to_accuracy",
    "write_results",
]
