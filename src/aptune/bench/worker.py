"""The worker side of the benchmark: one job (or the latency phase) per process.

The harness writes ``plan.json`` into the work folder and starts, for every job,
``python -m aptune.bench.worker job <workdir> <job id>``; the worker runs the method, measures, and
writes ``results/<job id>.json``. ``python -m aptune.bench.worker latency <workdir>`` measures the
exported models side by side, ``python -m aptune.bench.worker onnx-latency <workdir>`` the same
models exported to ONNX under ONNX Runtime; ``python -m aptune.bench.worker convert <model> <task> <folder>``
turns a GGUF checkpoint into a plain folder once, so that no job pays for dequantisation.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aptune.atomic import replace_dir_atomic, write_json_atomic
from aptune.bench.config import LATENCY_FILE, PLAN_FILE, BenchConfig
from aptune.bench.measure import JobPeakMemory, MemoryMonitor, allocator_setting, current_rss_mb
from aptune.bench.plan import Job
from aptune.host_memory import pinned_mmap_threshold

__all__ = [
    "apply_allocator",
    "context_from_plan",
    "convert_model",
    "evaluate_test",
    "main",
    "run_job",
    "run_latency",
    "run_onnx_latency",
]


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Use ``count`` torch threads inside the block (0: leave torch's setting alone)."""
    import torch

    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _at_least(value: float | None, floor: float | None) -> float | None:
    """``max(value, floor)`` over the values present (None when neither is)."""
    present = [v for v in (value, floor) if v is not None]
    return max(present) if present else None


def context_from_plan(workdir: str | Path):
    """Read ``plan.json`` of a work folder; return ``(WorkerContext, jobs by id)``."""
    from aptune.bench.training import WorkerContext

    workdir = Path(workdir)
    plan = json.loads((workdir / PLAN_FILE).read_text(encoding="utf-8"))
    data = plan["data"]
    ctx = WorkerContext(
        config=BenchConfig.from_dict(plan["config"]),
        workdir=workdir,
        train_file=data["train_file"],
        eval_file=data["eval_file"],
        test_file=data["test_file"],
        model=plan["model"],
        tokenizer=plan.get("tokenizer"),
        label_names=data.get("label_names"),
        num_labels=data.get("num_labels"),
        num_train=data["num_train"],
        heldout_file=data.get("heldout_file") or "",
    )
    jobs = {j["id"]: Job(**j) for j in plan["jobs"]}
    return ctx, jobs


def apply_allocator(setting: str) -> int | None:
    """Put this process under an allocator setting before any tensor is made; return the threshold.

    ``"default"``: the C library's defaults for the whole job (``APTUNE_PIN_MMAP_THRESHOLD=0``, so not
    even aptune's pruning pins the threshold). ``"pinned"``: aptune's fixed mmap threshold from the
    first step, for every method (`aptune.host_memory.pin_mmap_threshold`).
    """
    from aptune.host_memory import pin_mmap_threshold

    if setting == "default":
        os.environ["APTUNE_PIN_MMAP_THRESHOLD"] = "0"
        return None
    if setting == "pinned":
        os.environ.pop("APTUNE_PIN_MMAP_THRESHOLD", None)
        return pin_mmap_threshold()
    raise ValueError(f"unknown allocator setting {setting!r}")


def evaluate_test(ctx, result: dict[str, Any]) -> dict[str, Any]:
    """The exported model of a job, reloaded from its folder, on the test split: metrics and seconds."""
    from aptune.bench.training import evaluate_model, load_test
    from aptune.runner import load_tokenizer

    began = time.perf_counter()
    model = _load_exported(result["model_dir"], ctx.config.task)
    tokenizer = load_tokenizer(ctx.model, ctx.tokenizer)
    test = load_test(ctx, tokenizer)
    metrics = evaluate_model(
        model,
        test.eval,
        test.collator,
        ctx.config.eval_batch_size,
        ctx.config.task,
        lm_loss_chunk=ctx.config.lm_loss_chunk or None,
    )
    extras = {}
    if ctx.config.task == "causal-lm":  # held-out domain and stack size (aptune.bench.decoder_methods)
        from aptune.bench.decoder_methods import exported_extras

        extras = exported_extras(ctx, model, tokenizer)
    return {"test_metrics": metrics, "test_eval_seconds": time.perf_counter() - began, **extras}


def run_job(workdir: str | Path, job_id: str) -> dict[str, Any]:
    """Run one job of the plan in this process and write ``results/<job_id>.json``.

    The process first applies the job's allocator setting (`apply_allocator`), then starts its own
    peak-memory count (`JobPeakMemory`: ``VmHWM`` reset once, after the imports and the plan are
    loaded). Besides the method's own figures the result holds ``job``, ``wall_seconds``,
    ``resting_rss_mb`` (before loading anything) and ``peak_rss_mb``: the job process's own peak RSS
    up to the end of the method's work, before the test evaluation (``None`` with
    ``peak_rss_reset=False`` when the reset failed; ``process_peak_rss_mb`` is the same count at the
    very end). Also: the method's own figure as ``method_peak_rss_mb``; the C allocator setting the
    job ran under (``allocator``, see `allocator_setting`, with the job's ``requested`` setting;
    ``mmap_threshold`` is the value aptune pinned, None for the C library's dynamic threshold);
    ``test_metrics`` and ``test_eval_seconds`` (the exported model reloaded and evaluated on the test
    split, see `evaluate_test`); and the RSS timeline of the process.

    Returns:
        The result dict.
    """
    from aptune.bench.methods import RUNNERS

    ctx, jobs = context_from_plan(workdir)
    job = jobs[job_id]
    apply_allocator(job.allocator)
    monitor = MemoryMonitor()
    resting = current_rss_mb()
    memory = JobPeakMemory()
    memory.start()
    began = time.perf_counter()
    monitor.start()
    try:
        with _threads(ctx.config.threads):
            result = RUNNERS[job.method](ctx, job, monitor)
            peak = memory.to_dict()  # the method's whole work; the test evaluation below is apart
            result.update(evaluate_test(ctx, result))
    finally:
        monitor.stop()
    result.update(
        job=job.to_dict(),
        wall_seconds=time.perf_counter() - began,
        resting_rss_mb=resting,
        method_peak_rss_mb=result.get("peak_rss_mb"),
        **peak,
        # VmHWM is not strictly monotone where pages are reclaimed behind the counter's back (the
        # kernel refreshes it lazily), so the peak at the end is at least the one already read
        process_peak_rss_mb=_at_least(memory.peak_mb(), peak.get("peak_rss_mb")),
        # "pinned": apply_allocator pinned the threshold at the start; "default": the environment keeps
        # aptune's pruning from pinning it (see aptune.host_memory)
        mmap_threshold=pinned_mmap_threshold(),
        allocator={
            **allocator_setting(os.environ, pinned_mmap_threshold()),
            "requested": job.allocator,
        },
        memory_timeline=monitor.to_dict(),
    )
    write_json_atomic(ctx.result_path(job_id), result)
    return result


def convert_model(model: str, task: str, target: str | Path) -> str:
    """Load ``model`` (e.g. a GGUF built-in) once and save it as a plain folder; return its path."""
    from aptune.runner import load_model_and_tokenizer

    target = Path(target)
    loaded, tokenizer = load_model_and_tokenizer(model, task)

    def fill(folder: Path) -> None:
        loaded.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    replace_dir_atomic(target, fill)
    return str(target)


def _load_exported(path: str, task: str):
    import transformers

    from aptune.export import load

    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    if "aptune_plan" in config:
        return load(path)
    auto = {
        "classification": transformers.AutoModelForSequenceClassification,
        "causal-lm": transformers.AutoModelForCausalLM,
    }[task]
    return auto.from_pretrained(path).eval()


def _dense_model(ctx):
    """The dense reference model (the base model with the task head), in eval mode."""
    from aptune.runner import load_model_and_tokenizer

    cfg = ctx.config
    dense, _ = load_model_and_tokenizer(
        ctx.model,
        cfg.task,
        tokenizer_name=ctx.tokenizer,
        num_labels=ctx.num_labels,
        label_names=ctx.label_names,
    )
    return dense.eval()


def _exported_models(ctx, jobs: dict[str, Job], dense) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The models the latency stages time: the dense one and every distinct exported model.

    Models with the same parameter shapes (the dense model, FT, merged LoRA) are timed once: the
    first of them names the measurement (``"dense"`` for the dense shapes).

    Returns:
        ``({key: model}, {job id: {"key": key, "params": count}})`` for the jobs with an exported model.
    """

    def signature(model) -> tuple:
        return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())

    models: dict[str, Any] = {"dense": dense}
    keys: dict[tuple, str] = {signature(dense): "dense"}
    entries: dict[str, dict[str, Any]] = {}
    for job_id in jobs:
        path = ctx.result_path(job_id)
        if not path.is_file():
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        model_dir = result.get("model_dir")
        if not model_dir or not Path(model_dir).is_dir():
            continue
        model = _load_exported(model_dir, ctx.config.task)
        sig = signature(model)
        key = keys.setdefault(sig, job_id)
        if key == job_id:
            models[job_id] = model
        entries[job_id] = {"key": key, "params": sum(p.numel() for p in model.parameters())}
    return models, entries


def run_latency(workdir: str | Path) -> dict[str, Any]:
    """Latency, throughput and FLOPs of every exported model next to the dense model; writes ``latency.json``.

    Models with the same parameter shapes (the dense model, FT, merged LoRA) are measured once.
    All models are timed interleaved on the same synthetic batch (see `measure_latencies`).
    """
    import torch

    from aptune.bench.measure import count_matmul_flops, measure_latencies

    ctx, jobs = context_from_plan(workdir)
    cfg = ctx.config
    batch, length = cfg.latency_batch, cfg.latency_length
    dense = _dense_model(ctx)
    models, entries = _exported_models(ctx, jobs, dense)
    flops = {key: count_matmul_flops(m, length, batch).to_dict() for key, m in models.items()}
    with _threads(cfg.threads):
        timings = measure_latencies(
            models, batch_size=batch, seq_len=length, repeats=cfg.latency_repeats, warmup=cfg.latency_warmup
        )
    dense_total = flops["dense"]["total"]
    dense_ms = timings["dense"]["median_ms"]
    for entry in entries.values():
        key = entry["key"]
        ratio = flops[key]["total"] / dense_total
        entry.update(
            flops=flops[key],
            flop_ratio=ratio,
            stack_flop_ratio=flops[key]["stack"] / flops["dense"]["stack"],
            latency=timings[key],
            latency_ratio=timings[key]["median_ms"] / dense_ms,
            implied_ms=dense_ms * ratio,
        )
    data = {
        "settings": {
            "batch_size": batch,
            "seq_len": length,
            "repeats": cfg.latency_repeats,
            "warmup": cfg.latency_warmup,
            "threads": torch.get_num_threads(),
            "device": str(next(dense.parameters()).device),
        },
        "dense": {
            "flops": flops["dense"],
            "latency": timings["dense"],
            "params": sum(p.numel() for p in dense.parameters()),
        },
        "jobs": entries,
    }
    write_json_atomic(Path(workdir) / LATENCY_FILE, data)
    return data


def run_onnx_latency(workdir: str | Path) -> dict[str, Any]:
    """ONNX Runtime latency of the models `run_latency` times; writes ``onnx_latency.json``.

    The dense model and every distinct exported model are written with
    `aptune.formats.onnx.export_onnx` to ``<workdir>/onnx/<key>.onnx``, then timed as ONNX Runtime
    sessions (CPU, intra-op threads = torch's thread count under the benchmark's ``threads``) on the
    batch of the PyTorch measurement, warmed up and interleaved round by round
    (`aptune.bench.onnx_latency.measure_onnx_latencies`). A model family the exporter does not
    cover gives a file with ``{"skipped": reason}`` instead.

    Returns:
        ``{"settings", "dense": {"latency", "file"}, "jobs": {job id: {"key", "latency",
        "latency_ratio" (job / dense median), "file"}}}`` or ``{"skipped": reason}``.
    """
    import onnxruntime
    import torch

    from aptune.bench.onnx_latency import ONNX_DIR, ONNX_LATENCY_FILE, measure_onnx_latencies, onnx_session
    from aptune.formats.onnx import ONNX_FAMILIES, export_onnx

    ctx, jobs = context_from_plan(workdir)
    cfg = ctx.config
    out = Path(workdir) / ONNX_LATENCY_FILE
    dense = _dense_model(ctx)
    model_type = getattr(dense.config, "model_type", None)
    if model_type not in ONNX_FAMILIES:
        data: dict[str, Any] = {
            "skipped": f"the ONNX export covers {', '.join(ONNX_FAMILIES)} models, not {model_type!r}"
        }
        write_json_atomic(out, data)
        return data
    vocab_size = int(dense.config.vocab_size)
    models, entries = _exported_models(ctx, jobs, dense)
    folder = Path(workdir) / ONNX_DIR
    files = {key: export_onnx(model, folder / f"{key}.onnx") for key, model in models.items()}
    del models, dense  # the sessions below hold their own weights
    batch, length = cfg.latency_batch, cfg.latency_length
    with _threads(cfg.threads):
        threads = torch.get_num_threads()
        sessions = {key: onnx_session(path, threads) for key, path in files.items()}
        timings = measure_onnx_latencies(
            sessions,
            vocab_size=vocab_size,
            batch_size=batch,
            seq_len=length,
            repeats=cfg.latency_repeats,
            warmup=cfg.latency_warmup,
        )
    dense_ms = timings["dense"]["median_ms"]
    for entry in entries.values():
        key = entry["key"]
        entry.update(
            latency=timings[key], latency_ratio=timings[key]["median_ms"] / dense_ms, file=str(files[key])
        )
    data = {
        "settings": {
            "batch_size": batch,
            "seq_len": length,
            "repeats": cfg.latency_repeats,
            "warmup": cfg.latency_warmup,
            "threads": threads,
            "onnxruntime": onnxruntime.__version__,
            "provider": "CPUExecutionProvider",
            "graph_optimization": "ORT_ENABLE_ALL",
        },
        "dense": {"latency": timings["dense"], "file": str(files["dense"])},
        "jobs": entries,
    }
    write_json_atomic(out, data)
    return data


def main(argv: list[str] | None = None) -> None:
    """``python -m aptune.bench.worker job|latency|onnx-latency|convert ...`` (started by the harness)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["job"] and len(args) == 3:
        run_job(args[1], args[2])
    elif args[:1] == ["latency"] and len(args) == 2:
        run_latency(args[1])
    elif args[:1] == ["onnx-latency"] and len(args) == 2:
        run_onnx_latency(args[1])
    elif args[:1] == ["convert"] and len(args) == 4:
        convert_model(args[1], args[2], args[3])
    else:
        raise SystemExit(
            "usage: python -m aptune.bench.worker job WORKDIR JOB | latency WORKDIR | onnx-latency WORKDIR "
            "| convert ..."
        )


if __name__ == "__main__":  # pragma: no cover
    main()
