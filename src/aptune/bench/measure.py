"""What the benchmark measures, as small functions that are tested on their own.

* `count_matmul_flops`: matrix-multiply FLOPs of one forward pass, from the layer shapes of a model
  (attention projections, attention scores and context per head, FFN, task or LM head).
* `measure_latencies` / `measure_latency`: median forward time of exported models on a fixed synthetic
  batch, interleaved so that a change in the machine's load hits every model alike
  (`time_interleaved` and `latency_stats` do the timing and the statistics for any engine).
* `time_to_accuracy`, `curve_from_step_times`, `chained_curve`: training time (evaluation excluded,
  every phase from the method's first step included) until a metric first reaches a bar.
* `step_time_summary`: training step time at the start and after the last pruning event.
* `JobPeakMemory`, `MemoryMonitor` and the RSS helpers: a job's own peak resident memory (Linux
  ``VmHWM``, reset at the job's start, so no peak of the parent process is inherited) and an RSS
  timeline; `allocator_setting` names the C allocator setting a job ran under.

Everything here runs on CPU or CUDA; nothing imports the rest of the benchmark.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "FlopCount",
    "JobPeakMemory",
    "MemoryMonitor",
    "allocator_setting",
    "chained_curve",
    "count_matmul_flops",
    "current_rss_mb",
    "curve_from_step_times",
    "interleaved_latency_stats",
    "latency_stats",
    "measure_latencies",
    "measure_latency",
    "peak_rss_mb",
    "reset_peak_rss",
    "step_time_summary",
    "synthetic_batch",
    "synthetic_ids",
    "time_interleaved",
    "time_to_accuracy",
]


# ---------------------------------------------------------------------------------------------- FLOPs
@dataclass
class FlopCount:
    """Matrix-multiply FLOPs of one forward pass (a multiply-add counts 2).

    Attributes:
        projections: Attention q, k, v and output projections.
        attention: Attention scores (``Q K^T``) and context (``P V``), per query head.
        ffn: Feed-forward up (and gate) and down projections.
        head: Every other linear layer (pooler and classifier, or the LM head).
        batch_size: Sequences in the batch.
        seq_len: Tokens per sequence.
    """

    projections: int
    attention: int
    ffn: int
    head: int
    batch_size: int
    seq_len: int

    @property
    def stack(self) -> int:
        """FLOPs of the transformer layers (projections + attention + FFN)."""
        return self.projections + self.attention + self.ffn

    @property
    def total(self) -> int:
        """FLOPs of the whole forward pass counted here (stack + head)."""
        return self.stack + self.head

    def to_dict(self) -> dict[str, int]:
        """JSON-ready counts, with ``stack`` and ``total``."""
        return {
            "projections": self.projections,
            "attention": self.attention,
            "ffn": self.ffn,
            "head": self.head,
            "stack": self.stack,
            "total": self.total,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
        }


def _weight_shape(module: nn.Module) -> tuple[int, int]:
    # adapters wrap the frozen linear as ``base_layer``; exported models hold plain linears
    layer = getattr(module, "base_layer", module)
    out_features, in_features = layer.weight.shape
    return int(out_features), int(in_features)


def _layout(model: nn.Module):
    """aptune's layout of ``model``; for an exported (``Apt*``) model, that of its stock class.

    Exported models keep the stock module names, so the layout of a stock twin built on the meta
    device (no memory) names the same modules; their shapes are then read from ``model`` itself.
    """
    from aptune.arch import build_layout
    from aptune.errors import UnsupportedModelError

    try:
        return build_layout(model)
    except UnsupportedModelError:
        stock = next((c for c in type(model).__mro__[1:] if c.__module__.startswith("transformers.")), None)
        if stock is None:
            raise
        with torch.device("meta"):
            twin = stock(model.config)
        return build_layout(twin)


def count_matmul_flops(model: nn.Module, seq_len: int, batch_size: int = 1) -> FlopCount:
    """Count the matrix-multiply FLOPs of one forward pass from the model's current layer shapes.

    Per layer and token a linear ``in -> out`` costs ``2 * in * out``; per attention module and
    sequence the scores and the context cost ``2 * T * T * d`` each per query head, i.e.
    ``4 * T^2 * q_out`` with ``q_out`` the query projection's output width (heads x head size, so
    grouped-query attention counts its query heads). Linear layers outside the attention and FFN
    sites form the head: for BERT-family encoders (pooler, classifier) they run once per sequence,
    otherwise (LM head, decoder classification score) once per token. Embedding look-ups, norms,
    softmax and activations are not matrix multiplies and are left out.

    Args:
        model: A model of a family aptune supports (stock, prepared, or exported by aptune).
        seq_len: Tokens per sequence ``T``.
        batch_size: Sequences per batch.

    Returns:
        The `FlopCount`.

    Raises:
        UnsupportedModelError: the model family has no aptune layout.

    Example:
        >>> flops = count_matmul_flops(model, seq_len=128, batch_size=32)
        >>> flops.total / count_matmul_flops(dense, 128, 32).total  # the FLOP ratio
    """
    layout = _layout(model)
    site_paths: set[str] = set()
    projections = attention = ffn = 0
    for site in layout.attention:
        for path in (site.q, site.k, site.v, site.o):
            out_f, in_f = _weight_shape(model.get_submodule(path))
            projections += 2 * seq_len * in_f * out_f
            site_paths.add(path)
        q_out, _ = _weight_shape(model.get_submodule(site.q))
        attention += 4 * seq_len * seq_len * q_out
    for site in layout.ffn:
        for path in (site.up, site.gate, site.down):
            if path is None:
                continue
            out_f, in_f = _weight_shape(model.get_submodule(path))
            ffn += 2 * seq_len * in_f * out_f
            site_paths.add(path)
    per_sequence = layout.family == "bert"
    head = 0
    inner = {f"{name}.base_layer" for name in site_paths}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name in site_paths or name in inner:
            continue
        if name.startswith("aptune_distill") or ".lora_" in name:
            continue
        out_f, in_f = _weight_shape(module)
        head += 2 * in_f * out_f * (1 if per_sequence else seq_len)
    return FlopCount(
        projections=projections * batch_size,
        attention=attention * batch_size,
        ffn=ffn * batch_size,
        head=head * batch_size,
        batch_size=batch_size,
        seq_len=seq_len,
    )


# -------------------------------------------------------------------------------------------- latency
def synthetic_ids(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """Fixed random token ids ``[batch_size, seq_len]`` below ``vocab_size`` (speed does not depend on ids).

    Args:
        vocab_size: Ids are drawn from ``0 .. vocab_size - 1``.
        batch_size: Sequences.
        seq_len: Tokens per sequence.
        seed: Seed of the ids.

    Returns:
        A CPU ``int64`` tensor; the same arguments always give the same ids.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)


def synthetic_batch(
    model: nn.Module, batch_size: int, seq_len: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A fixed batch of random token ids with an all-ones attention mask (speed does not depend on ids).

    Args:
        model: Its ``config.vocab_size`` bounds the ids; the tensors go to its device.
        batch_size: Sequences.
        seq_len: Tokens per sequence.
        seed: Seed of the ids.
    """
    vocab = int(getattr(model.config, "vocab_size", 1000) or 1000)
    input_ids = synthetic_ids(vocab, batch_size, seq_len, seed)
    device = next(model.parameters()).device
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    return {k: v.to(device) for k, v in batch.items()}


def _forward_kwargs(model: nn.Module) -> dict[str, Any]:
    # decoders would otherwise build a KV cache nobody reads
    return {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}


def _sync(model: nn.Module) -> None:
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()


def _check_rounds(repeats: int, warmup: int) -> None:
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")


def time_interleaved(
    runs: Mapping[str, Callable[[], Any]],
    *,
    repeats: int = 20,
    warmup: int = 3,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Time several workloads round by round: ``warmup`` untimed rounds, then ``repeats`` timed ones.

    Each round calls every workload once, in the order of ``runs`` (A B A B ...), so a change in
    background load hits every workload alike and their *ratios* stay meaningful on a shared machine.
    The warm-up rounds take the one-off costs (allocation, kernel selection, lazy initialisation)
    and are not timed. Any engine fits: a workload is a call that does one whole forward (and waits
    for it to finish).

    Args:
        runs: ``{name: call}``; the first is usually the dense reference.
        repeats: Timed calls per workload.
        warmup: Untimed calls per workload first.
        timer: Clock in seconds (`time.perf_counter`; tests pass a fake one).

    Returns:
        ``{name: [milliseconds of each timed call]}``.

    Raises:
        ValueError: ``repeats`` < 1 or ``warmup`` < 0.
    """
    _check_rounds(repeats, warmup)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(warmup):
        for run in runs.values():
            run()
    for _ in range(repeats):
        for name, run in runs.items():
            began = timer()
            run()
            times[name].append((timer() - began) * 1000.0)
    return times


def latency_stats(values: Sequence[float], *, warmup: int, batch_size: int, seq_len: int) -> dict[str, Any]:
    """Median, quartiles, extremes and throughput of timed forwards.

    Args:
        values: Milliseconds of each timed forward.
        warmup: Untimed forwards that came first (recorded).
        batch_size: Sequences per forward (for the throughput).
        seq_len: Tokens per sequence (recorded).

    Returns:
        ``{"median_ms", "p25_ms", "p75_ms", "min_ms", "max_ms", "times_ms", "repeats", "warmup",
        "throughput" (sequences per second at the median), "batch_size", "seq_len"}``.
    """
    values = list(values)
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    median = statistics.median(values)
    return {
        "median_ms": median,
        "p25_ms": quartiles[0],
        "p75_ms": quartiles[2],
        "min_ms": min(values),
        "max_ms": max(values),
        "times_ms": values,
        "repeats": len(values),
        "warmup": warmup,
        "throughput": batch_size / (median / 1000.0) if median > 0 else None,
        "batch_size": batch_size,
        "seq_len": seq_len,
    }


def _forward(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        model(**batch, **_forward_kwargs(model))
        _sync(model)

    return run


def measure_latencies(
    models: Mapping[str, nn.Module],
    *,
    batch_size: int = 32,
    seq_len: int = 128,
    repeats: int = 20,
    warmup: int = 3,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, Any]]:
    """Forward latency of several models, interleaved round by round on the same synthetic batch.

    Every model first runs ``warmup`` untimed forwards (one-off costs: allocation, kernel selection,
    lazy initialisation), also round by round; then each of ``repeats`` rounds times one forward of
    every model in turn (A B A B ...), under `torch.inference_mode` and in eval mode (see
    `time_interleaved`). Interleaving makes a change in background load hit every model alike, so
    latency *ratios* stay meaningful on a shared machine.

    Args:
        models: ``{name: model}``; the first is usually the dense reference.
        batch_size: Sequences per forward.
        seq_len: Tokens per sequence.
        repeats: Timed forwards per model (the median is over these).
        warmup: Untimed forwards per model first.
        timer: Clock in seconds (`time.perf_counter`; tests pass a fake one).

    Returns:
        ``{name: {"median_ms", "p25_ms", "p75_ms", "min_ms", "max_ms", "times_ms", "repeats", "warmup",
        "throughput" (sequences per second at the median), "batch_size", "seq_len"}}``.

    Raises:
        ValueError: ``repeats`` < 1 or ``warmup`` < 0.
    """
    _check_rounds(repeats, warmup)
    batches = {name: synthetic_batch(m, batch_size, seq_len) for name, m in models.items()}
    with torch.inference_mode():
        for model in models.values():
            model.eval()
        return interleaved_latency_stats(
            {name: _forward(model, batches[name]) for name, model in models.items()},
            repeats=repeats,
            warmup=warmup,
            batch_size=batch_size,
            seq_len=seq_len,
            timer=timer,
        )


def interleaved_latency_stats(
    runs: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int,
    batch_size: int,
    seq_len: int,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, Any]]:
    """`time_interleaved` of ``runs``, then `latency_stats` of each (what both latency stages report).

    Returns:
        ``{name: latency_stats(...)}``.
    """
    times = time_interleaved(runs, repeats=repeats, warmup=warmup, timer=timer)
    return {
        name: latency_stats(values, warmup=warmup, batch_size=batch_size, seq_len=seq_len)
        for name, values in times.items()
    }


def measure_latency(
    model: nn.Module, *, batch_size: int = 32, seq_len: int = 128, repeats: int = 20, warmup: int = 3
) -> dict[str, Any]:
    """Forward latency of one model (see `measure_latencies` for the fields).

    Example:
        >>> stats = measure_latency(model, batch_size=32, seq_len=128, repeats=20)
        >>> stats["median_ms"], stats["throughput"]
    """
    return measure_latencies(
        {"model": model}, batch_size=batch_size, seq_len=seq_len, repeats=repeats, warmup=warmup
    )["model"]


# ------------------------------------------------------------------------------------ time-to-accuracy
def time_to_accuracy(
    curve: Sequence[Mapping[str, Any]],
    threshold: float,
    metric: str,
    *,
    greater_is_better: bool = True,
    final_structure_only: bool = True,
) -> float | None:
    """Training seconds until ``metric`` first reaches ``threshold`` on the evaluation curve.

    Args:
        curve: Evaluation points in training order, each ``{"train_seconds": float, "metrics":
            {name: value}, "final_structure": bool}``. ``train_seconds`` is training time only
            (evaluation excluded) from the start of the method, all its phases included.
        threshold: The value to reach (e.g. 0.97 x the reference's final accuracy).
        metric: Key in ``metrics``.
        greater_is_better: ``False`` for perplexity or loss (reach = at or below).
        final_structure_only: Count only points at which the model already has its final (exported)
            structure, i.e. after the last pruning event; a dense model that reaches the threshold
            before it is pruned does not count.

    Returns:
        The ``train_seconds`` of the first qualifying point, or ``None`` if no point qualifies.

    Example:
        >>> curve = [{"train_seconds": 10, "metrics": {"accuracy": 0.8}, "final_structure": True},
        ...          {"train_seconds": 20, "metrics": {"accuracy": 0.95}, "final_structure": True}]
        >>> time_to_accuracy(curve, 0.9, "accuracy")
        20
    """
    for point in curve:
        if final_structure_only and not point.get("final_structure", True):
            continue
        value = (point.get("metrics") or {}).get(metric)
        if value is None:
            continue
        if (value >= threshold) if greater_is_better else (value <= threshold):
            return point["train_seconds"]
    return None


def curve_from_step_times(
    step_times: Mapping[int, float],
    evals: Sequence[tuple[int, Mapping[str, Any]]],
    *,
    offset: float | Mapping[str, float] = 0.0,
    final_from_step: int = 0,
) -> list[dict[str, Any]]:
    """Evaluation curve on the method's training clock: earlier phases plus the step times so far.

    The step times must hold each step's whole work (forward, backward, optimizer step and, for APT,
    the pruning event run inside the step); evaluation is left out.

    Args:
        step_times: ``{step: seconds}`` of every optimizer step (1-based), evaluation excluded.
        evals: ``(step, metrics)`` in order.
        offset: Seconds spent before the first step: a number, or ``{phase: seconds}`` of the earlier
            phases (LoRA+Prune: ``{"lora": ..., "calibration": ..., "prune": ...}``), all of which count.
        final_from_step: First step at which the model has its final structure.

    Returns:
        ``[{"step", "train_seconds", "metrics", "final_structure"}]``.
    """
    if isinstance(offset, Mapping):
        offset = float(sum(offset.values()))
    ordered = sorted(step_times.items())
    curve = []
    for step, metrics in evals:
        seconds = offset + sum(t for s, t in ordered if s <= step)
        curve.append(
            {
                "step": int(step),
                "train_seconds": seconds,
                "metrics": dict(metrics),
                "final_structure": step >= final_from_step,
            }
        )
    return curve


def chained_curve(
    first_curve: Sequence[Mapping[str, Any]],
    phases_before: Mapping[str, float],
    step_times: Mapping[int, float],
    evals: Sequence[tuple[int, Mapping[str, Any]]],
    *,
    first_phase: str = "lora",
    last_phase: str = "retrain",
) -> list[dict[str, Any]]:
    """The curve of a two-stage method (LoRA+Prune): the first run's curve, then the retraining's.

    The first run's points keep their clock and are marked ``final_structure=False`` (the model is
    pruned afterwards). The retraining's points start after *every* phase in ``phases_before`` (the
    first run's training time, calibration, mask search, pruning, ...), so the clock runs from the
    method's first step.

    Args:
        first_curve: Points of the first run (``train_seconds`` from its own first step).
        phases_before: ``{phase: seconds}`` of everything before the retraining's first step.
        step_times: ``{step: seconds}`` of the retraining.
        evals: ``(step, metrics)`` of the retraining.
        first_phase: Name stored as ``phase`` on the first run's points.
        last_phase: Name stored as ``phase`` on the retraining's points.

    Returns:
        The joined curve.
    """
    head = [{**point, "final_structure": False, "phase": first_phase} for point in first_curve]
    tail = curve_from_step_times(step_times, evals, offset=phases_before, final_from_step=0)
    return head + [{**point, "phase": last_phase} for point in tail]


# --------------------------------------------------------------------------------------- step times
def step_time_summary(
    step_times: Mapping[int, float],
    *,
    last_prune_step: int | None = None,
    first_event_step: int | None = None,
    window: int = 10,
) -> dict[str, float | int | None]:
    """Median training step time at the start, after the last pruning event, and at the end.

    ``start`` is the median over steps ``2 .. window + 1`` (step 1 pays one-off allocation costs),
    cut before ``first_event_step`` when pruning begins earlier; ``after_pruning`` is the median over
    every step after ``last_prune_step``; ``end`` over the last ``window`` steps.

    Returns:
        ``{"start", "after_pruning", "end", "ratio_after_pruning", "ratio_end", "steps"}`` (seconds;
        ratios relative to ``start``; ``None`` where undefined).
    """
    steps = sorted(step_times)
    if not steps:
        return {
            "start": None,
            "after_pruning": None,
            "end": None,
            "ratio_after_pruning": None,
            "ratio_end": None,
            "steps": 0,
        }
    limit = steps[0] + window
    if first_event_step is not None:
        limit = min(limit, first_event_step)
    early = [step_times[s] for s in steps if steps[0] < s <= limit] or [step_times[steps[0]]]
    start = statistics.median(early)
    after = None
    if last_prune_step is not None:
        later = [step_times[s] for s in steps if s > last_prune_step]
        after = statistics.median(later) if later else None
    end = statistics.median([step_times[s] for s in steps[-window:]])
    return {
        "start": start,
        "after_pruning": after,
        "end": end,
        "ratio_after_pruning": after / start if after is not None and start else None,
        "ratio_end": end / start if start else None,
        "steps": len(steps),
    }


# ------------------------------------------------------------------------------------------- memory
STATUS_FILE = Path("/proc/self/status")
"""Where Linux reports this process's current (``VmRSS``) and peak (``VmHWM``) resident memory."""

CLEAR_REFS_FILE = Path("/proc/self/clear_refs")
"""Writing ``5`` here resets ``VmHWM`` to the current RSS (Linux 4.0 and later)."""


def _status_kib(key: str) -> int | None:
    try:
        text = STATUS_FILE.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def current_rss_mb() -> float | None:
    """Resident set size of this process now, in MiB (``None`` where ``/proc`` is missing)."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS; returns whether it worked.

    After a reset, `peak_rss_mb` reports the peak since the reset. ``getrusage``'s ``ru_maxrss`` is
    *not* reset and, in a process started by fork and exec, can still hold the parent's peak: use
    `peak_rss_mb`, not ``ru_maxrss``, for a job's own peak.
    """
    try:
        CLEAR_REFS_FILE.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float | None:
    """Peak RSS of this process (``VmHWM``, since the last `reset_peak_rss`) in MiB.

    Returns:
        The peak, or ``None`` where ``/proc/self/status`` has no ``VmHWM`` (not Linux): ``ru_maxrss``
        is not a substitute, since it cannot be reset.
    """
    kib = _status_kib("VmHWM")
    return kib / 1024 if kib is not None else None


@dataclass
class JobPeakMemory:
    """The peak resident memory of one job process, from its start (after the imports) to now.

    `start` resets ``VmHWM``; `to_dict` reads it. When the reset fails, the peak is reported as
    ``None`` with ``peak_rss_reset=False``, never a figure that may include the parent's peak.

    Example:
        >>> memory = JobPeakMemory()
        >>> memory.start()
        >>> run_the_job()
        >>> memory.to_dict()  # {"peak_rss_mb": ..., "peak_rss_reset": True, "peak_rss_source": "VmHWM"}
    """

    reset: bool | None = None

    def start(self) -> bool:
        """Reset the process's peak RSS; returns whether the reset worked."""
        self.reset = reset_peak_rss()
        return self.reset

    def peak_mb(self) -> float | None:
        """Peak RSS since `start` in MiB, or ``None`` when the reset failed or was not done."""
        return peak_rss_mb() if self.reset else None

    def to_dict(self) -> dict[str, Any]:
        """``{"peak_rss_mb", "peak_rss_reset", "peak_rss_source"}`` for a job's result."""
        peak = self.peak_mb()
        return {
            "peak_rss_mb": peak,
            "peak_rss_reset": bool(self.reset),
            "peak_rss_source": "VmHWM since the job's start" if peak is not None else None,
        }


def allocator_setting(env: Mapping[str, str], pinned_threshold: int | None) -> dict[str, Any]:
    """The C allocator setting a job ran under.

    ``"pinned"`` when glibc's mmap threshold was fixed, either from the environment
    (``MALLOC_MMAP_THRESHOLD_``) or by aptune (`aptune.host_memory`) during the job; otherwise
    ``"default"`` (the C library's dynamic threshold).

    Args:
        env: The job's environment variables.
        pinned_threshold: The threshold aptune pinned during the job, or ``None``.

    Returns:
        ``{"setting": "default" | "pinned", "mmap_threshold": bytes or None, "source": ...}``.
    """
    from_env = env.get("MALLOC_MMAP_THRESHOLD_")
    if from_env:
        return {"setting": "pinned", "mmap_threshold": int(from_env), "source": "environment"}
    if pinned_threshold is not None:
        return {"setting": "pinned", "mmap_threshold": int(pinned_threshold), "source": "aptune"}
    return {"setting": "default", "mmap_threshold": None, "source": None}


@dataclass
class MemoryMonitor:
    """Samples this process's RSS on a background thread, with named time marks.

    Example:
        >>> with MemoryMonitor() as monitor:
        ...     monitor.mark("train_start"); train(); monitor.mark("train_end")
        >>> monitor.to_dict()["peak_mb"]
    """

    interval: float = 0.1
    samples: list[tuple[float, float]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    _started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemoryMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start sampling (time 0 is now)."""
        self._started = time.perf_counter()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="aptune-bench-rss", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def now(self) -> float:
        """Seconds since `start`."""
        return time.perf_counter() - self._started

    def mark(self, name: str, at: float | None = None) -> None:
        """Remember a named point in time (seconds since `start`; default now)."""
        self.marks[name] = self.now() if at is None else at

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = current_rss_mb()
            if rss is not None:
                self.samples.append((self.now(), rss))
            self._stop.wait(self.interval)

    def to_dict(self, max_points: int = 400) -> dict[str, Any]:
        """Samples reduced to at most ``max_points`` (each bucket keeps its maximum), marks, peak."""
        samples = list(self.samples)
        if len(samples) > max_points:
            size = -(-len(samples) // max_points)
            samples = [max(samples[i : i + size], key=lambda s: s[1]) for i in range(0, len(samples), size)]
        return {
            "seconds": [round(t, 3) for t, _ in samples],
            "rss_mb": [round(r, 1) for _, r in samples],
            "marks": dict(self.marks),
            "peak_mb": max((r for _, r in self.samples), default=None),
        }
