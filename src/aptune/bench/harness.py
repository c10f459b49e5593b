"""The harness: prepare data and model once, run every job in its own process, measure, write results.

`run_benchmark` is what ``aptune bench`` calls. It

1. writes the data split once (``data/train.jsonl``, ``data/dev.jsonl`` in the work folder), so all
   methods and seeds see the same split (and the same subsets in quick mode);
2. converts a GGUF model to a plain folder once (SmolLM2);
3. writes ``plan.json`` and runs the jobs in order, each as ``python -m aptune.bench.worker job ...``
   (or in this process with ``isolate=False``, for tests), logging to ``logs/<job>.log``; a job whose
   result file exists is skipped, so rerunning with the same ``--workdir`` resumes;
4. measures the exported models' latency and FLOPs in one more process, and their ONNX Runtime
   latency (encoders) in another (`aptune.bench.onnx_latency`);
5. summarises and writes ``<results_dir>/<name>.md``, ``.json`` and the plots.

A failed job does not stop the run: the page lists it with the end of its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptune.atomic import write_json_atomic
from aptune.bench.config import (
    GRID_FIRST_STAGE,
    LATENCY_FILE,
    LR_FIELDS,
    PLAN_FILE,
    PRUNE_THEN_LORA,
    RATE_OF,
    RATES_FILE,
    BenchConfig,
    differing_options,
)
from aptune.bench.data import prepare_data
from aptune.bench.imported import ImportedRecords
from aptune.bench.plan import Job, estimate_seconds, extend_grid, plan_grid, plan_headline, plan_jobs
from aptune.bench.records import NOT_RUN_YET, record_metrics
from aptune.errors import ConfigError

__all__ = [
    "BenchOutcome",
    "check_dependencies",
    "choose_rates",
    "run_benchmark",
]


@dataclass
class BenchOutcome:
    """What `run_benchmark` produced.

    Attributes:
        files: ``{"md": path, "json": path, <plot name>: path}`` (empty for a dry run).
        summary: The summary written to the JSON file (``None`` for a dry run).
        jobs: The planned jobs.
        failures: ``{job id: error text}``.
        estimate_seconds: The time estimate printed before the run (``None`` if unknown).
        seconds: Wall time of the whole benchmark.
        workdir: The work folder (deleted afterwards when it was temporary and not kept).
    """

    files: dict[str, Path]
    summary: dict[str, Any] | None
    jobs: list[Job]
    failures: dict[str, str] = field(default_factory=dict)
    estimate_seconds: float | None = None
    seconds: float = 0.0
    workdir: Path | None = None


# ------------------------------------------------------------------------------------------- running
def _worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "aptune.bench.worker", *args]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit (so ``finally`` clauses run) instead of ending
    the process at once; outside the main thread, where no handler can be set, nothing changes."""

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_isolated(args: list[str], log_file: Path) -> str | None:
    """Run a worker command; return None on success, else the end of its log.

    When the benchmark itself is stopped (Ctrl-C, or SIGTERM from ``kill``) the worker is stopped
    with it, rather than left training on its own and writing its result after the run has ended.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with log_file.open("w", encoding="utf-8") as log, _sigterm_raises():
        proc = subprocess.Popen(_worker_command(*args), stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # the benchmark is stopping: stop the job too
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    if returncode != 0:
        return f"exit status {returncode}:\n{_tail(log_file)}"
    return None


def _run_inline(call: Callable[[], Any]) -> str | None:
    try:
        call()
    except Exception:
        return traceback.format_exc(limit=8)
    return None


def _prepare_model(config: BenchConfig, workdir: Path, log: Callable[[str], None]) -> str:
    """The model every job loads: the given name, or a plain copy of a GGUF checkpoint."""
    from aptune.assets import resolve_model_name

    _, extra = resolve_model_name(config.model)
    if "gguf_file" not in extra:
        return config.model
    target = workdir / "base-model"
    if (target / "config.json").is_file():
        return str(target)
    log(f"[bench] converting {config.model} (GGUF) to a plain checkpoint once: {target}")
    if config.isolate:
        error = _run_isolated(
            ["convert", config.model, config.task, str(target)], workdir / "logs" / "convert.log"
        )
    else:
        from aptune.bench.worker import convert_model

        error = _run_inline(lambda: convert_model(config.model, config.task, target))
    if error:
        raise ConfigError(f"could not prepare the model {config.model}: {error}")
    return str(target)


def _dense_structure(model: str) -> dict[str, int] | None:
    """Layers, query heads and FFN neurons per layer of the dense model (None if its config won't load)."""
    from transformers import AutoConfig

    from aptune.assets import resolve_model_name

    try:
        path = model if Path(model).is_dir() else resolve_model_name(model)[0]
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception:  # the page then shows counts without the dense share
        return None
    values = {
        "layers": getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None),
        "heads": getattr(cfg, "num_attention_heads", None) or getattr(cfg, "num_heads", None),
        "ffn": getattr(cfg, "intermediate_size", None) or getattr(cfg, "d_ff", None),
        "hidden": getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None),
    }
    return values if all(isinstance(v, int) for v in values.values()) else None


def _write_plan(workdir: Path, config: BenchConfig, jobs: list[Job], data: dict, model: str) -> None:
    plan_path = workdir / PLAN_FILE
    if plan_path.is_file():
        old = json.loads(plan_path.read_text(encoding="utf-8"))
        differing = differing_options(BenchConfig.from_dict(old["config"]), config)
        if differing:
            shown = ", ".join(f"--{n.replace('_', '-')}" for n in differing)
            raise ConfigError(
                f"{workdir} holds a benchmark run with other {shown}; choose another --workdir or delete it"
            )
    plan = {
        "config": config.to_dict(),
        "jobs": [j.to_dict() for j in jobs],
        "data": data,
        "model": model,
        "tokenizer": config.tokenizer or None,
    }
    _write_json(plan_path, plan)


def _write_json(path: Path, data: Any) -> None:
    write_json_atomic(path, data)


#: Optional packages -> (methods that need them, pip command).
OPTIONAL_DEPENDENCIES: dict[str, tuple[tuple[str, ...], str]] = {
    "peft": (
        ("lora", "lora-prune-kwon", "lora-prune-tp", "one-shot", *PRUNE_THEN_LORA),
        "pip install 'aptune[bench]'",
    ),
    "torch_pruning": (("lora-prune-tp", "llm-pruner", "tp-uniform"), "pip install 'aptune[bench]'"),
}


def check_dependencies(methods: list[str]) -> None:
    """Stop before the first job when a method's optional package is missing.

    Raises:
        ConfigError: one line naming the missing packages, the methods that need them and the pip
            command (``pip install 'aptune[bench]'`` installs peft and torch-pruning).
    """
    import importlib.util

    missing = []
    for module, (needs, _) in OPTIONAL_DEPENDENCIES.items():
        users = [m for m in methods if m in needs]
        if users and importlib.util.find_spec(module) is None:
            missing.append((module, users))
    if missing:
        names = ", ".join(f"{module.replace('_', '-')} (for {', '.join(users)})" for module, users in missing)
        raise ConfigError(
            f"the benchmark needs {names}: pip install 'aptune[bench]' (or pip install peft torch-pruning), "
            "or leave those methods out with --methods"
        )


def choose_rates(
    config: BenchConfig, jobs: list[Job], results: dict[str, dict], methods: tuple[str, ...]
) -> dict[str, Any]:
    """The learning rate of each method in ``methods`` with the best final *dev* metric in the grid.

    Ties go to the smaller rate. A method none of whose grid runs finished keeps its configured rate
    (``"fallback": True``).

    Returns:
        ``{method: {"lr": rate, "dev": {str(rate): metric or None}, "metric": name,
        "greater_is_better": bool, "fallback": bool}}``.
    """
    chosen: dict[str, Any] = {}
    for method in methods:
        runs = [j for j in jobs if j.phase == "grid" and j.method == method]
        if not runs:
            continue
        dev: dict[str, float | None] = {}
        best: tuple[float, float] | None = None
        metric, greater = "accuracy", True
        for job in sorted(runs, key=lambda j: j.lr):
            result = results.get(job.id)
            value = None
            if result is not None:
                metric = result.get("primary_metric", metric)
                greater = bool(result.get("greater_is_better", greater))
                value = (record_metrics(result, "dev") or {}).get(metric)
            dev[f"{job.lr:g}"] = value
            if value is None:
                continue
            key = value if greater else -value
            if best is None or key > best[0]:
                best = (key, job.lr)
        fallback = best is None
        rate = float(getattr(config, LR_FIELDS[method])) if fallback else best[1]
        chosen[method] = {
            "lr": rate,
            "dev": dev,
            "metric": metric,
            "greater_is_better": greater,
            "fallback": fallback,
        }
    return chosen


def _rate_map(chosen: dict[str, Any]) -> dict[str, float]:
    rates = {method: entry["lr"] for method, entry in chosen.items()}
    for method, source in RATE_OF.items():
        if source in rates and method not in rates:
            rates[method] = rates[source]
    return rates


def _describe(result: dict) -> str:
    metric = result.get("primary_metric", "accuracy")
    value = (record_metrics(result, "dev") or {}).get(metric)
    text = f"dev {metric} {value:.4f}" if isinstance(value, float) else "no metric"
    test = (record_metrics(result, "test") or {}).get(metric)
    if isinstance(test, float):
        text += f", test {test:.4f}"
    seconds, peak = result.get("train_seconds") or 0.0, result.get("peak_rss_mb") or 0.0
    return f"{text}, train {seconds:.0f} s, peak RSS {peak:.0f} MB"


def _load_average() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return None


def format_duration(seconds: float | None) -> str:
    """``"1 h 12 min"``, ``"4 min 5 s"`` or ``"unknown"``."""
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"


def run_benchmark(config: BenchConfig, *, log: Callable[[str], None] = print) -> BenchOutcome:
    """Run a whole benchmark (see the module docstring) and write its results.

    Args:
        config: The options (e.g. ``suite_config("minilm-bbc", quick=True)``).
        log: Receives one line per step of the run.

    Returns:
        A `BenchOutcome` with the files written and the summary.

    Raises:
        ConfigError, DataError, ModelError: bad options, data or model (before any training).

    Example:
        >>> outcome = run_benchmark(suite_config("minilm-bbc", quick=True))
        >>> outcome.files["md"]
        PosixPath('benchmarks/results/minilm-bbc-quick.md')
    """
    from aptune.bench.results import summarize, write_results

    started = time.perf_counter()
    load_at_start = _load_average()
    config.validate()
    check_dependencies(config.method_list() + (["one-shot"] if "one-shot" in config.ablation_list() else []))
    planned = plan_jobs(config)
    imported = ImportedRecords.load(config.import_results, config) if config.import_results else None
    temporary = not config.workdir
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="aptune-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(config, workdir / "data")
    blocks = data.get("blocks") or {}  # causal LM: packed blocks, not documents
    estimate = estimate_seconds(
        config,
        planned,
        data["num_train"],
        blocks.get("dev", data["num_eval"]),
        blocks.get("test", data["num_test"]),
        blocks.get("heldout", 0),
    )
    log(
        f"[bench] {config.results_name()}: {len(planned)} training jobs + latency; data "
        f"{data['num_train']} train / {data['num_eval']} dev / {data['num_test']} test "
        f"({data['dedupe']['removed']} duplicates removed); estimated {format_duration(estimate)} "
        f"on 2 CPU cores; work folder {workdir if not config.dry_run else '(none: dry run)'}"
        + (
            f"; plus up to {config.grid_extend} grid runs past each end of a method's grid if its best rate "
            "sits there"
            if config.grid and config.grid_extend
            else ""
        )
    )
    if config.dry_run:
        for job in planned:
            rate = "rate from the grid" if job.phase == "headline" and config.grid else f"lr {job.lr:g}"
            reuse = ", reuses the grid run at the chosen rate" if job.reuse else ""
            log(
                f"[bench]   {job.id}: {job.label}, density {job.density:g}, seed {job.seed}, {rate}, "
                f"{job.allocator} allocator{reuse}"
            )
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
        return BenchOutcome({}, None, planned, estimate_seconds=estimate, workdir=None)
    failures: dict[str, str] = {}
    state = {"ran_any": False, "number": 0}
    known: dict[str, Job] = {}
    try:
        model = _prepare_model(config, workdir, log)

        def run_stage(stage: list[Job]) -> None:
            for job in stage:
                known[job.id] = job
            if not config.report_only:  # a partial page leaves the work folder as it is
                _write_plan(workdir, config, list(known.values()), data, model)
            for job in stage:
                state["number"] += 1
                ran = _run_one(
                    config, workdir, job, failures, log, f"[bench] [{state['number']}] {job.id}", imported
                )
                state["ran_any"] = state["ran_any"] or ran

        rates: dict[str, float] = {}
        grid_record: dict[str, Any] = {}
        if config.grid:

            def run_grid_stage(stage: list[Job], methods: tuple[str, ...]) -> list[Job]:
                # the stage, then one rate further out wherever a best rate sits at an end of its grid
                run_stage(stage)
                chosen = choose_rates(config, stage, _read_results(workdir, stage, config), methods)
                while extra := extend_grid(config, stage, chosen):
                    stage = [*stage, *extra]
                    run_stage(extra)
                    chosen = choose_rates(config, stage, _read_results(workdir, stage, config), methods)
                grid_record.update(chosen)
                return stage

            first = run_grid_stage(plan_grid(config)[0], GRID_FIRST_STAGE)
            rates = _rate_map(grid_record)
            second = run_grid_stage(plan_grid(config, rates)[1], ("lora-prune-kwon", "lora-prune-tp"))
            rates = _rate_map(grid_record)
            for entry_method, entry in grid_record.items():
                entry["not_run"] = [
                    f"{j.lr:g}"
                    for j in (*first, *second)
                    if j.method == entry_method and failures.get(j.id) == NOT_RUN_YET
                ]
            if not config.report_only:  # a partial page leaves the work folder as it is
                _write_json(
                    workdir / RATES_FILE, {"seed": config.grid_seed, "chosen": grid_record, "rates": rates}
                )
            for method, entry in grid_record.items():
                dev = ", ".join(
                    f"{lr}: {v:.4f}"
                    if isinstance(v, float)
                    else f"{lr}: {'not run yet' if lr in entry['not_run'] else 'failed'}"
                    for lr, v in entry["dev"].items()
                )
                log(f"[bench] grid: {method} lr {entry['lr']:g} (dev {entry['metric']} {dev})")
        headline = plan_headline(config, rates)
        run_stage(headline)
        stages = ("latency", "onnx-latency")
        stray = [p for p in config.only_job_list() if p not in known and p not in stages]
        if stray:
            named = ", ".join(stray)
            log(f"[bench] --only-jobs named {named}, which this plan has no job of (--dry-run lists them)")
        latency_path = workdir / LATENCY_FILE
        _seed_latency(latency_path, imported, log)
        latency: dict[str, Any] = {}
        if config.report_only or not config.runs_now("latency"):
            if not latency_path.is_file():
                failures["latency"] = NOT_RUN_YET
        elif state["ran_any"] or not latency_path.is_file():
            log("[bench] latency and FLOPs of the exported models ...")
            if config.isolate:
                error = _run_isolated(["latency", str(workdir)], workdir / "logs" / "latency.log")
            else:
                from aptune.bench.worker import run_latency

                error = _run_inline(lambda: run_latency(workdir))
            if error:
                failures["latency"] = error
                log(f"[bench] latency FAILED\n{error}")
        if latency_path.is_file():
            latency = json.loads(latency_path.read_text(encoding="utf-8"))
        onnx_latency = _onnx_latency_stage(config, workdir, state["ran_any"], failures, log)
        results = _read_results(workdir, headline, config)
        from aptune.bench.methods import apt_settings

        headline_apt = next((j for j in headline if j.method == "apt" and not j.variant), None)
        headline_settings = apt_settings(config, headline_apt) if headline_apt else None
        data = {
            **data,
            "dense_structure": _dense_structure(model),
            # APT's settings, fixed in the suite before any test figure (its rate comes from the grid)
            "apt_settings": headline_settings.to_dict() if headline_settings else None,
            # the family default it resolves to (None: no unit protected)
            "copy_heads_threshold": headline_settings.copy_heads_threshold(config.task == "causal-lm")
            if headline_settings
            else None,
            "grid": {"seed": config.grid_seed, "chosen": grid_record, "rates": rates}
            if config.grid
            else None,
            "grid_results": {
                j.id: {
                    "lr": j.lr,
                    "method": j.method,
                    "dev": record_metrics(r, "dev"),
                    "test": record_metrics(r, "test"),
                }
                for j in known.values()
                if j.phase == "grid"
                for r in [_read_results(workdir, [j], config).get(j.id) or {}]
            },
        }
        seconds = time.perf_counter() - started
        summary = summarize(
            config,
            headline,
            results,
            latency,
            data=data,
            failures=failures,
            seconds=seconds,
            estimate=estimate,
            load_at_start=None if config.report_only else load_at_start,
            onnx_latency=onnx_latency,
        )
        grid_jobs = [j for j in known.values() if j.phase == "grid"]
        files = write_results(config, summary, results, latency, _read_results(workdir, grid_jobs, config))
        log(f"[bench] done in {format_duration(seconds)}: {files['md']}")
        return BenchOutcome(files, summary, headline, failures, estimate, seconds, workdir)
    finally:
        if temporary and not config.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _onnx_latency_stage(
    config: BenchConfig, workdir: Path, trained: bool, failures: dict[str, str], log: Callable[[str], None]
) -> dict[str, Any]:
    """The ONNX Runtime latency of the exported models (``onnx_latency.json``), measured when needed.

    Measured in its own process when the file is absent or a job trained in this run; skipped, with
    one line in the log and ``{"skipped": reason}`` for the page, for a causal-LM suite or when
    onnxruntime (or onnx) is not installed. A failure is recorded under ``failures["onnx-latency"]``.
    """
    from aptune.bench.onnx_latency import ONNX_LATENCY_FILE, onnx_skip_reason

    reason = onnx_skip_reason(config.task)
    if reason:
        log(f"[bench] ONNX Runtime latency skipped: {reason}")
        return {"skipped": reason}
    path = workdir / ONNX_LATENCY_FILE
    if config.report_only or not config.runs_now("onnx-latency"):
        if not path.is_file():
            failures["onnx-latency"] = NOT_RUN_YET
    elif trained or not path.is_file():
        log("[bench] ONNX Runtime latency of the exported models ...")
        if config.isolate:
            error = _run_isolated(["onnx-latency", str(workdir)], workdir / "logs" / "onnx-latency.log")
        else:
            from aptune.bench.worker import run_onnx_latency

            error = _run_inline(lambda: run_onnx_latency(workdir))
        if error:
            failures["onnx-latency"] = error
            log(f"[bench] ONNX Runtime latency FAILED\n{error}")
            return {}  # never an earlier run's figures next to this run's models
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _ran_at(record: dict[str, Any]) -> float | None:
    """The learning rate a result record was trained with (None when it does not say)."""
    rate = record.get("lr", (record.get("job") or {}).get("lr"))
    return float(rate) if isinstance(rate, (int, float)) else None


def _stale_reason(record: dict[str, Any], job: Job, config: BenchConfig | None = None) -> str | None:
    """Why ``record`` is not a run of ``job`` as planned now, or None when it is.

    A headline job's id does not name its rate, so a record written while the grid was incomplete
    (a partial page reuses the grid run chosen so far) belongs to another rate once the grid has
    chosen differently. With ``config``, an APT record whose settings differ from what the job would
    run with now (a default changed since) does not stand for the job either.
    """
    rate = _ran_at(record)
    if rate is not None and job.lr and abs(rate - job.lr) > 1e-12 * max(abs(rate), abs(job.lr), 1.0):
        return f"the record there ran at lr {rate:g}, the grid now chooses {job.lr:g}"
    if config is not None:
        from aptune.bench.methods import apt_settings_mismatch

        changed = apt_settings_mismatch(record, config, job)
        if changed:
            return f"the record there ran with other APT settings ({', '.join(changed)})"
    return None


def _is_current(record: dict[str, Any], job: Job, config: BenchConfig | None = None) -> bool:
    """Whether ``record`` is a run of ``job`` as planned now (see `_stale_reason`)."""
    return _stale_reason(record, job, config) is None


def _reused_record(workdir: Path, job: Job) -> dict[str, Any] | None:
    """The record of the grid run ``job`` reuses (marked ``reused_from``), or None when there is none."""
    path = workdir / "results" / f"{job.reuse}.json"
    if not job.reuse or not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    record.update(job=job.to_dict(), reused_from=job.reuse)
    return record


def _seed_latency(latency_path: Path, imported: ImportedRecords | None, log: Callable[[str], None]) -> None:
    """Write the imported results file's latency measurements where the work folder has none."""
    if imported is None or imported.latency is None or latency_path.is_file():
        return
    write_json_atomic(latency_path, {**imported.latency, "imported_from": str(imported.source)})
    log(f"[bench] latency: the measurements of {imported.source} (its sitting's exported models)")


def _finished_records(workdir: Path, imported: ImportedRecords | None = None) -> list[dict[str, Any]]:
    """Every record in the work folder's results and set-aside results, then the imported file's."""
    records = [
        json.loads(path.read_text(encoding="utf-8"))
        for folder in ("results", "results-other-rates")
        for path in sorted((workdir / folder).glob("*.json"))
    ]
    return records + (list(imported.records.values()) if imported is not None else [])


def _same_run_record(
    workdir: Path,
    job: Job,
    config: BenchConfig | None,
    imported: ImportedRecords | None = None,
    candidates: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """A finished APT record of another job that computed what ``job`` computes, or None.

    When a default changes, an ablation can come to ask for what the default now does (or the
    default for what an ablation did): the same seed, density, rate and allocator, and settings
    that resolve to the same run (`aptune.bench.methods.apt_settings_mismatch`). Such a record
    stands for ``job`` too, marked ``same_run_as`` with the job that ran it. Looked up in the work
    folder's results, then its set-aside results, then the imported results file (or in
    ``candidates``, `_finished_records` read once by a caller that looks up many jobs). Only APT
    jobs with a chosen rate are matched: their records carry the settings that make the match exact.
    """
    if job.method != "apt" or config is None or not job.lr:
        return None
    if candidates is None:
        candidates = _finished_records(workdir, imported)
    wanted = (job.method, job.seed, job.allocator, list(job.depends))
    for record in candidates:
        ran = record.get("job") or {}
        if not isinstance(record.get("apt_config"), dict) or _ran_at(record) is None:
            continue
        found = (ran.get("method"), ran.get("seed"), ran.get("allocator"), list(ran.get("depends") or []))
        if found != wanted:
            continue
        if not isinstance(ran.get("density"), (int, float)) or abs(ran["density"] - job.density) > 1e-9:
            continue
        if _is_current(record, job, config):
            copy = {k: v for k, v in record.items() if k not in ("reused_from", "same_run_as")}
            copy.update(job=job.to_dict(), same_run_as=record.get("same_run_as") or ran.get("id"))
            return copy
    return None


def _read_results(workdir: Path, jobs: list[Job], config: BenchConfig | None = None) -> dict[str, dict]:
    """The finished records of ``jobs`` in ``workdir``.

    A record run at a rate the grid no longer chooses (or, with ``config``, with other APT settings)
    is left out; a job that reuses a finished grid run reads that run's record when its own copy is
    not there yet (a partial page copies nothing), and an APT job without a current record of its
    own reads that of a job that computed the same (`_same_run_record`).
    """
    results = {}
    candidates: list[dict[str, Any]] | None = None  # read once, when a job first needs them
    for job in jobs:
        path = workdir / "results" / f"{job.id}.json"
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if record is None or not _is_current(record, job, config):
            record = _reused_record(workdir, job)
            if record is not None and not _is_current(record, job, config):
                record = None
        if record is None and job.method == "apt" and config is not None:
            if candidates is None:
                candidates = _finished_records(workdir)
            record = _same_run_record(workdir, job, config, candidates=candidates)
        if record is not None:
            results[job.id] = record
    return results


def _set_aside(workdir: Path, result_path: Path, rate: float | None) -> Path:
    """Move a stale result out of ``results/`` (kept, never deleted); return where.

    A result run at another rate is named by its rate; one run with other settings at the same rate
    gets a numbered name, so no earlier set-aside record is overwritten. The job's run folder (its
    checkpoints, and the pruned model a prune-then-LoRA job would reload) moves beside it under the
    same name, so that the job's next run starts afresh instead of resuming the stale one.
    """
    folder = workdir / "results-other-rates"
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"lr{rate:g}" if rate is not None else "other"
    target = folder / f"{result_path.stem}.{tag}.json"
    number = 1
    while target.exists() or (folder / "runs" / target.stem).exists():
        number += 1
        target = folder / f"{result_path.stem}.{tag}.{number}.json"
    result_path.replace(target)
    run = workdir / "runs" / result_path.stem
    if run.is_dir():
        (folder / "runs").mkdir(exist_ok=True)
        run.replace(folder / "runs" / target.stem)
    return target


def _run_one(
    config: BenchConfig,
    workdir: Path,
    job: Job,
    failures: dict[str, str],
    log: Callable[[str], None],
    prefix: str,
    imported: ImportedRecords | None = None,
) -> bool:
    """Run (or resume, reuse or import) one job; return whether it trained."""
    result_path = workdir / "results" / f"{job.id}.json"
    stale = None  # why a record there no longer stands for the job (another rate or other settings)
    if result_path.is_file():
        earlier = json.loads(result_path.read_text(encoding="utf-8"))
        stale = _stale_reason(earlier, job, config)
        if stale is None:
            log(f"{prefix}: done earlier ({_describe(earlier)})")
            return False

    def replace_stale() -> None:
        if stale is not None:
            moved = _set_aside(workdir, result_path, _ran_at(earlier))
            log(f"{prefix}: {stale}; moved to {moved}")

    record = _reused_record(workdir, job)
    reason = _stale_reason(record, job, config) if record is not None else None
    if reason is not None:
        log(f"{prefix}: the grid run {job.reuse} does not stand for it ({reason})")
        record = None
    if record is not None:
        if config.report_only:  # read in place: a partial page writes nothing into the work folder
            log(f"{prefix}: the grid run {job.reuse} ({_describe(record)})")
            return False
        replace_stale()
        _write_json(result_path, record)
        log(f"{prefix}: the grid run {job.reuse} ({_describe(record)})")
        return False
    record = _same_run_record(workdir, job, config, None if config.report_only else imported)
    if record is not None and config.report_only:
        log(f"{prefix}: the run of {record['same_run_as']} ({_describe(record)})")
        return False
    if config.report_only:
        failures[job.id] = NOT_RUN_YET
        log(f"{prefix}: {NOT_RUN_YET}" + (f" ({stale})" if stale else ""))
        return False
    found = imported.find(job) if imported else None
    reason = _stale_reason(found, job, config) if found is not None else None
    if reason is not None:
        log(f"{prefix}: not imported: {reason}")
        found = None
    if found is not None:
        replace_stale()
        _write_json(result_path, found)
        log(f"{prefix}: imported from {imported.source} ({_describe(found)})")
        return False
    if record is not None:
        replace_stale()
        _write_json(result_path, record)
        log(f"{prefix}: the run of {record['same_run_as']}, the same settings ({_describe(record)})")
        return False
    if not config.runs_now(job.id):
        failures[job.id] = NOT_RUN_YET
        log(f"{prefix}: {NOT_RUN_YET} (not among --only-jobs)" + (f"; {stale}" if stale else ""))
        return False
    replace_stale()
    missing = [d for d in job.depends if d in failures or not (workdir / "results" / f"{d}.json").is_file()]
    if missing:
        failures[job.id] = f"skipped: {', '.join(missing)} did not finish"
        log(f"{prefix}: {failures[job.id]}")
        return False
    began = time.perf_counter()
    log(
        f"{prefix}: {job.label}, density {job.density:g}, seed {job.seed}, lr {job.lr:g}, "
        f"{job.allocator} allocator ..."
    )
    if config.isolate:
        error = _run_isolated(["job", str(workdir), job.id], workdir / "logs" / f"{job.id}.log")
    else:
        from aptune.bench.worker import run_job

        error = _run_inline(lambda: run_job(workdir, job.id))
    if error:
        failures[job.id] = error
        log(f"{prefix}: FAILED after {time.perf_counter() - began:.0f} s\n{error}")
    else:
        result = json.loads(result_path.read_text(encoding="utf-8"))
        log(f"{prefix}: {_describe(result)}; {time.perf_counter() - began:.0f} s")
    return True
