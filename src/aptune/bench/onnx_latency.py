"""ONNX Runtime latency of the exported encoders, next to the dense model's.

A deployer of a pruned encoder serves it with ONNX Runtime, not PyTorch, so the benchmark also times
the models the PyTorch latency stage times (the dense reference and every method's exported model),
exported with `aptune.formats.onnx.export_onnx`, as ONNX Runtime sessions on the same synthetic batch,
with the same warm-up and the same round-by-round interleaving (`aptune.bench.measure.time_interleaved`)
and as many intra-op threads as torch uses. The ratio pruned / dense is the figure that matters.

* `ONNX_LATENCY_FILE`: the stage's output in the work folder (``onnx_latency.json``).
* `onnx_skip_reason`: why a benchmark has no ONNX stage (a causal-LM suite, see `ONNX_TASKS`;
  onnxruntime or onnx not installed), or ``None``.
* `onnx_session`, `onnx_feed`, `measure_onnx_latencies`: the measurement, usable on its own.

The worker side (`aptune.bench.worker.run_onnx_latency`) exports the models and writes the file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aptune.bench.measure import interleaved_latency_stats, synthetic_ids

__all__ = [
    "ONNX_DIR",
    "ONNX_LATENCY_FILE",
    "measure_onnx_latencies",
    "onnx_feed",
    "onnx_session",
    "onnx_skip_reason",
]

#: Work-folder file of the ONNX Runtime latency stage.
ONNX_LATENCY_FILE = "onnx_latency.json"

#: Work-folder folder of the exported ``.onnx`` files (``dense.onnx``, ``<job id>.onnx``).
ONNX_DIR = "onnx"

#: Tasks whose suites time ONNX Runtime: the encoder suites. Decoders export to ONNX too, but the
#: suites time one forward of a batch, while decoders are served token by token (GGUF, vLLM, or
#: ONNX's KV-cache graph and onnxruntime-genai folder, whose outputs benchmarks/deploy_smollm2.py checks).
ONNX_TASKS = ("classification",)


def _missing_packages() -> list[str]:
    missing = []
    for module in ("onnxruntime", "onnx"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    return missing


def onnx_skip_reason(task: str) -> str | None:
    """Why a benchmark of ``task`` gets no ONNX Runtime latency, or ``None`` when it does.

    Args:
        task: The benchmark's task (``classification`` or ``causal-lm``).

    Returns:
        One sentence for the log and the page, or ``None``.
    """
    if task not in ONNX_TASKS:
        return (
            f"ONNX Runtime is timed in the encoder suites and this is a {task} suite, whose latency is "
            "one forward of a batch; decoders generate token by token through GGUF (aptune export "
            "--format gguf), a stock folder (vLLM) or ONNX with a KV cache (--format onnx --kv-cache, "
            "--format onnx-genai), whose tokens benchmarks/deploy_smollm2.py checks but does not time"
        )
    missing = _missing_packages()
    if missing:
        return f"{' and '.join(missing)} not installed (pip install 'aptune[onnx]')"
    return None


def onnx_session(path: str | Path, threads: int):
    """A CPU ONNX Runtime session of ``path`` with ``threads`` intra-op threads (ops run one at a time).

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads (the benchmark passes torch's thread count).

    Returns:
        An ``onnxruntime.InferenceSession``.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_feed(session: Any, vocab_size: int, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """The synthetic batch of the PyTorch measurement (same ids, all-ones mask) for a session's inputs.

    Args:
        session: An ONNX Runtime session (its ``get_inputs()`` names the inputs it takes).
        vocab_size: The model's vocabulary size (bounds the ids).
        batch_size: Sequences.
        seq_len: Tokens per sequence.

    Returns:
        ``{input name: int64 array [batch_size, seq_len]}`` (``token_type_ids`` all zeros).
    """
    ids = synthetic_ids(vocab_size, batch_size, seq_len).numpy()
    arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {i.name: arrays[i.name] for i in session.get_inputs()}


def measure_onnx_latencies(
    sessions: Mapping[str, Any],
    *,
    vocab_size: int,
    batch_size: int = 32,
    seq_len: int = 128,
    repeats: int = 20,
    warmup: int = 3,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, Any]]:
    """ONNX Runtime latency of several sessions, warmed up and interleaved like `measure_latencies`.

    Args:
        sessions: ``{name: InferenceSession}``; the first is usually the dense reference.
        vocab_size: Bounds the synthetic ids (the same ids as the PyTorch measurement).
        batch_size: Sequences per run.
        seq_len: Tokens per sequence.
        repeats: Timed runs per session (the median is over these).
        warmup: Untimed runs per session first.
        timer: Clock in seconds (tests pass a fake one).

    Returns:
        ``{name: stats}`` with the fields of `aptune.bench.measure.latency_stats`.

    Raises:
        ValueError: ``repeats`` < 1 or ``warmup`` < 0.
    """
    feeds = {name: onnx_feed(s, vocab_size, batch_size, seq_len) for name, s in sessions.items()}

    def run(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], None]:
        return lambda: session.run(None, feed)

    return interleaved_latency_stats(
        {name: run(session, feeds[name]) for name, session in sessions.items()},
        repeats=repeats,
        warmup=warmup,
        batch_size=batch_size,
        seq_len=seq_len,
        timer=timer,
    )
