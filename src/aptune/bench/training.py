"""What every benchmark method's training process shares.

The worker's view of the work folder (`WorkerContext`), the run length and evaluation cadence, the
Trainer settings of the peft jobs, the step clock that times training without evaluation
(`StepClock`, saved into every checkpoint so that a resumed job keeps its times), model and data
loading, the test-set evaluation (`evaluate_model`), the epoch-1 test view, and the fields of a
job record every method shares (`common_record`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from aptune.atomic import write_json_atomic
from aptune.bench.config import BenchConfig
from aptune.bench.measure import MemoryMonitor, curve_from_step_times
from aptune.bench.plan import Job
from aptune.trainer import peak_rss_mb

__all__ = [
    "CLOCK_FILE",
    "EpochTest",
    "StepClock",
    "WorkerContext",
    "clean_metrics",
    "common_record",
    "epoch_callbacks",
    "epoch_record",
    "eval_every",
    "evaluate_model",
    "last_clocked_checkpoint",
    "load_job_model",
    "load_test",
    "param_count",
    "total_steps",
    "train_to_end",
    "trainer_data_kwargs",
    "training_args",
]

_SKIP_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch")


@dataclass
class WorkerContext:
    """What every method needs besides its `Job`: the config and the files the harness prepared.

    Attributes:
        config: The benchmark configuration.
        workdir: The work folder (``runs/<job>``, ``results/<job>.json``, ``logs/``).
        train_file: Training data (JSON Lines written by the harness).
        eval_file: Dev data.
        test_file: Test data (evaluated once at the end, and after epoch 1 for the 1-epoch view).
        model: Model name or folder every method loads.
        tokenizer: Tokenizer folder or name, or ``None`` (the model's).
        label_names: Class names (classification with named labels), else ``None``.
        num_labels: Number of classes (classification), else ``None``.
        num_train: Training examples (documents for causal LM).
        heldout_file: The held-out text domain of a causal-LM suite (JSON Lines), or ``""``.
    """

    config: BenchConfig
    workdir: Path
    train_file: str
    eval_file: str
    test_file: str
    model: str
    tokenizer: str | None
    label_names: list[str] | None
    num_labels: int | None
    num_train: int
    heldout_file: str = ""

    def run_dir(self, job_id: str) -> Path:
        """Output folder of a job's training run."""
        return self.workdir / "runs" / job_id

    def result_path(self, job_id: str) -> Path:
        """The JSON result of a job."""
        return self.workdir / "results" / f"{job_id}.json"

    def job_lr(self, job: Job) -> float:
        """The job's learning rate (the grid's choice), else the configured rate of its method."""
        from aptune.bench.config import LR_FIELDS

        return job.lr or float(getattr(self.config, LR_FIELDS[job.method]))


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric dev metrics without the ``eval_`` prefix and without timing entries."""
    clean = {}
    for key, value in metrics.items():
        name = key.removeprefix("eval_")
        if isinstance(value, (int, float)) and not name.endswith(_SKIP_METRICS) and name != "epoch":
            clean[name] = float(value)
    return clean


def total_steps(ctx: WorkerContext, num_train: int) -> int:
    """Optimizer steps of one run: ``max_steps``, else ``ceil(steps per epoch x epochs)``."""
    cfg = ctx.config
    return cfg.max_steps or math.ceil(math.ceil(num_train / cfg.batch_size) * cfg.epochs)


def eval_every(ctx: WorkerContext, steps: int) -> int:
    """The evaluation cadence, the same formula as `aptune.runner.run_training`."""
    return max(1, steps // ctx.config.evaluations)


#: File a `StepClock` writes into every Trainer checkpoint: its step times and evaluations so far.
#: Written after the Trainer's own files, so it also marks the checkpoint as complete.
CLOCK_FILE = "bench_clock.json"


class StepClock(TrainerCallback):
    """Times every optimizer step (evaluation excluded), records evaluations and the training peak RSS.

    When the Trainer saves checkpoints, the clock's record so far goes into each (`CLOCK_FILE`), and
    `load_state_dict` on a clock of a resumed run restores it, so the record covers every step.
    """

    def __init__(self, monitor: MemoryMonitor | None = None) -> None:
        self.monitor = monitor
        self.step_times: dict[int, float] = {}
        self.evals: list[tuple[int, dict[str, float]]] = []
        self.eval_seconds = 0.0
        self.peak_rss_mb: float | None = None
        self.cuda_max_allocated_mb: float | None = None
        self._began = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.mark("train_start")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_begin(self, args, state, control, **kwargs):
        self._began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_times[state.global_step] = time.perf_counter() - self._began

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.eval_seconds += float((metrics or {}).get("eval_runtime") or 0.0)
        clean = clean_metrics(metrics or {})
        if self.evals and self.evals[-1][0] == state.global_step:
            self.evals[-1] = (state.global_step, clean)
        else:
            self.evals.append((state.global_step, clean))

    def state_dict(self) -> dict[str, Any]:
        """The step times and evaluations so far (JSON-ready)."""
        return {
            "step_times": {str(k): v for k, v in self.step_times.items()},
            "evals": [[step, metrics] for step, metrics in self.evals],
            "eval_seconds": self.eval_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict` (a run resumed from a checkpoint)."""
        self.step_times = {int(k): float(v) for k, v in state["step_times"].items()}
        self.evals = [(int(step), dict(metrics)) for step, metrics in state["evals"]]
        self.eval_seconds = float(state["eval_seconds"])

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            write_json_atomic(folder / CLOCK_FILE, self.state_dict())

    def on_train_end(self, args, state, control, **kwargs):
        self.peak_rss_mb = peak_rss_mb()
        if torch.cuda.is_available():
            self.cuda_max_allocated_mb = torch.cuda.max_memory_allocated() / 2**20
        if self.monitor is not None:
            self.monitor.mark("train_end")


def last_clocked_checkpoint(folder: Path) -> Path | None:
    """The newest Trainer checkpoint in ``folder`` whose save finished (it holds a `CLOCK_FILE`)."""
    from aptune.checkpoint import last_complete_checkpoint

    return last_complete_checkpoint(folder, is_complete=lambda path: (path / CLOCK_FILE).is_file())


def training_args(
    ctx: WorkerContext, job: Job, out: Path, lr: float, steps: int, *, save_steps: int = 0
) -> TrainingArguments:
    """The Trainer settings of a peft job; ``save_steps`` > 0 checkpoints that often (the newest 2 kept)."""
    cfg = ctx.config
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=lr,
        weight_decay=0.0,
        warmup_steps=round(0.06 * steps),
        lr_scheduler_type="linear",
        logging_steps=10,
        eval_strategy="steps",
        eval_steps=eval_every(ctx, steps),
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=2 if save_steps else None,
        report_to=[],
        seed=job.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        disable_tqdm=True,
    )


def load_job_model(ctx: WorkerContext, path: str | None = None):
    """Model, tokenizer and task data (the tokenizer of a saved phase-1 model is the same)."""
    from aptune.runner import load_model_and_tokenizer
    from aptune.tasks import load_task

    cfg = ctx.config
    names = ctx.label_names
    model, tokenizer = load_model_and_tokenizer(
        path or ctx.model,
        cfg.task,
        tokenizer_name=None if path else ctx.tokenizer,
        num_labels=ctx.num_labels,
        label_names=names,
    )
    task = load_task(
        cfg.task, tokenizer, train_file=ctx.train_file, eval_file=ctx.eval_file, max_length=cfg.max_length
    )
    if names and task.label_names and list(task.label_names) != list(names):
        raise RuntimeError(f"label order changed: {task.label_names} != {names}")
    return model, tokenizer, task


def trainer_data_kwargs(task) -> dict[str, Any]:
    """The Trainer arguments that come from a task: datasets, collator and metric functions."""
    return {
        "train_dataset": task.train,
        "eval_dataset": task.eval,
        "data_collator": task.collator,
        "compute_metrics": task.compute_metrics,
        "preprocess_logits_for_metrics": task.preprocess_logits_for_metrics,
    }


def train_to_end(trainer: Trainer, clock: StepClock, steps: int, resume: Path | None = None) -> None:
    """Train for the run (from ``resume``'s checkpoint and clock, if given), then evaluate at the last
    step unless the Trainer just did."""
    if resume is not None:
        clock.load_state_dict(json.loads((resume / CLOCK_FILE).read_text(encoding="utf-8")))
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    if not clock.evals or clock.evals[-1][0] != steps:
        trainer.evaluate()  # the final evaluation, as run_training does


def common_record(
    task, clock: StepClock, *, offset: float | dict[str, float] = 0.0, final_from: int = 0
) -> dict[str, Any]:
    """The record fields every method shares: its metric, the dev curve against training time, step
    times, training seconds (``offset``: seconds spent before the first step, or per phase) and peaks."""
    curve = curve_from_step_times(clock.step_times, clock.evals, offset=offset, final_from_step=final_from)
    if isinstance(offset, dict):
        offset = sum(offset.values())
    return {
        "primary_metric": task.primary_metric,
        "greater_is_better": task.greater_is_better,
        "final_metrics": curve[-1]["metrics"] if curve else {},
        "curve": curve,
        "step_times": {str(k): v for k, v in sorted(clock.step_times.items())},
        "train_seconds": offset + sum(clock.step_times.values()),
        "peak_rss_mb": clock.peak_rss_mb,
        "cuda_max_allocated_mb": clock.cuda_max_allocated_mb,
    }


def param_count(model: torch.nn.Module) -> int:
    """Every parameter of ``model`` (frozen ones included)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module, dataset, collator, batch_size: int, task: str, lm_loss_chunk: int | None = None
) -> dict[str, float]:
    """Accuracy (classification) or perplexity (causal LM) of ``model`` on a tokenized data set.

    The model is put in evaluation mode for the pass and back in its former mode afterwards. With
    ``lm_loss_chunk`` a causal LM's loss comes from `aptune.losses.chunked_lm_eval` (the logits of
    that many tokens at a time, as in training).

    Returns:
        ``{"accuracy": a, "macro_f1": f}`` or ``{"perplexity": p, "loss": l}``, plus ``"examples"``.
    """
    from torch.utils.data import DataLoader

    from aptune.tasks.classification import macro_f1

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    right = seen = 0
    loss_sum, tokens = 0.0, 0
    predicted: list[int] = []
    gold: list[int] = []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collator, shuffle=False):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            labels = batch["labels"]
            if task != "classification" and lm_loss_chunk:
                from aptune.losses import chunked_lm_eval

                loss, _ = chunked_lm_eval(model, batch, lm_loss_chunk)
                out = {"loss": loss}
            else:
                out = model(**batch)
            if task == "classification":
                ids = out["logits"].argmax(-1)
                right += int((ids == labels).sum())
                seen += int(labels.shape[0])
                predicted += ids.tolist()
                gold += labels.tolist()
            else:
                count = int((labels[:, 1:] != -100).sum())  # targets after the shift
                loss_sum += float(out["loss"]) * count
                tokens += count
                seen += int(labels.shape[0])
    finally:
        model.train(was_training)
    if task == "classification":
        f1 = macro_f1(predicted, gold) if seen else 0.0
        return {"accuracy": right / max(1, seen), "macro_f1": f1, "examples": float(seen)}
    loss = loss_sum / max(1, tokens)
    return {"perplexity": math.exp(min(loss, 50.0)), "loss": loss, "examples": float(seen)}


def load_test(ctx: WorkerContext, tokenizer):
    """The tokenized test split (labels mapped as in training)."""
    from aptune.tasks import load_task

    cfg = ctx.config
    return load_task(
        cfg.task, tokenizer, train_file=ctx.train_file, eval_file=ctx.test_file, max_length=cfg.max_length
    )


class EpochTest(TrainerCallback):
    """The 1-epoch view: evaluates the model in training on the test split at the end of epoch 1.

    The evaluation runs between steps (after the epoch's last step), so no step time includes it;
    its seconds are recorded apart.
    """

    def __init__(self, ctx: WorkerContext, test_task) -> None:
        self.ctx = ctx
        self.task = test_task
        self.record: dict[str, Any] | None = None

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.record is not None or model is None or state.epoch is None or state.epoch < 1 - 1e-6:
            return
        began = time.perf_counter()
        config = self.ctx.config
        metrics = evaluate_model(
            model,
            self.task.eval,
            self.task.collator,
            config.eval_batch_size,
            config.task,
            lm_loss_chunk=config.lm_loss_chunk or None,
        )
        self.record = {
            "step": int(state.global_step),
            "epoch": float(state.epoch),
            "metrics": metrics,
            "eval_seconds": time.perf_counter() - began,
        }


def epoch_callbacks(ctx: WorkerContext, tokenizer) -> list[EpochTest]:
    """The callback that records the test metrics after epoch 1, when ``epoch1_view`` is on."""
    if not ctx.config.epoch1_view:
        return []
    return [EpochTest(ctx, load_test(ctx, tokenizer))]


def epoch_record(
    callbacks: list[EpochTest], *, final_from_step: int | None = 0, why: str = ""
) -> dict | None:
    """The epoch-1 test record, with whether the model had its final structure then."""
    if not callbacks:
        return None
    record = callbacks[0].record
    if record is None:
        return {"metrics": None, "note": why or "the run is shorter than one epoch"}
    final = final_from_step is not None and record["step"] >= final_from_step
    return {**record, "final_structure": final}
