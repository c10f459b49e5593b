"""Baseline and APT training runs on the same model, data split, length, batch and seed.

Each function trains one method and returns a JSON-ready dict of what it measured. Run every method in
its own process (see ``minilm_bbc.py``) so that peak memory figures do not mix.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from aptune.runner import load_model_and_tokenizer
from aptune.tasks import load_task
from aptune.trainer import peak_rss_mb


@dataclass
class Budget:
    """What every method shares."""

    model: str | None = None
    epochs: float = 3.0
    batch_size: int = 16
    max_length: int = 128
    seed: int = 0
    evaluations: int = 6
    max_train_samples: int | None = None


class _EvalClock(TrainerCallback):
    """Records wall time (training only, evaluation excluded) at each evaluation."""

    def __init__(self) -> None:
        self.started = 0.0
        self.paused = 0.0
        self.curve: list[dict] = []
        self._eval_started = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_evaluate:
            self._eval_started = time.perf_counter()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        now = time.perf_counter()
        if self._eval_started is not None:
            self.paused += now - self._eval_started
            self._eval_started = None
        train_seconds = now - self.started - self.paused
        self.curve.append({"step": state.global_step, "train_seconds": train_seconds, **(metrics or {})})


def _task(budget: Budget):
    _, tokenizer = load_model_and_tokenizer(budget.model, "classification")
    return load_task(
        "classification",
        tokenizer,
        dataset_name="bbc_news",
        max_length=budget.max_length,
        seed=0,
        max_train_samples=budget.max_train_samples,
    ), tokenizer


def _args(budget: Budget, out: str, lr: float, total_steps: int) -> TrainingArguments:
    return TrainingArguments(
        out,
        max_steps=total_steps,
        per_device_train_batch_size=budget.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=lr,
        warmup_steps=round(0.06 * total_steps),
        lr_scheduler_type="linear",
        eval_strategy="steps",
        eval_steps=max(1, total_steps // budget.evaluations),
        logging_steps=20,
        save_strategy="no",
        report_to=[],
        seed=budget.seed,
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )


def _finish(
    name: str, trainer: Trainer, clock: _EvalClock, started: float, model, extra: dict | None = None
) -> dict:
    final = trainer.evaluate()
    return {
        "method": name,
        "final": {k: float(v) for k, v in final.items() if isinstance(v, (int, float))},
        "curve": clock.curve,
        "train_seconds": clock.curve[-1]["train_seconds"] if clock.curve else None,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "params": sum(p.numel() for p in model.parameters()),
        **(extra or {}),
    }


def run_full_finetuning(budget: Budget, out: str, lr: float = 5e-5) -> dict:
    """FT: every parameter trains."""
    set_seed(budget.seed)
    started = time.perf_counter()
    task, _ = _task(budget)
    model, _ = load_model_and_tokenizer(budget.model, "classification", num_labels=task.num_labels)
    total = math.ceil(len(task.train) / budget.batch_size * budget.epochs)
    clock = _EvalClock()
    trainer = Trainer(
        model=model,
        args=_args(budget, out, lr, total),
        train_dataset=task.train,
        eval_dataset=task.eval,
        data_collator=task.collator,
        compute_metrics=task.compute_metrics,
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
        callbacks=[clock],
    )
    trainer.train()
    return _finish("FT", trainer, clock, started, model, {"lr": lr, "steps": total})


def run_lora(budget: Budget, out: str, lr: float = 5e-4) -> dict:
    """LoRA (the peft package): r 8, alpha 16 on query, value and FFN-up; pooler and classifier train."""
    from peft import LoraConfig, get_peft_model

    set_seed(budget.seed)
    started = time.perf_counter()
    task, _ = _task(budget)
    model, _ = load_model_and_tokenizer(budget.model, "classification", num_labels=task.num_labels)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["query", "value", "intermediate.dense"],
        modules_to_save=["classifier", "pooler"],
    )
    model = get_peft_model(model, config)
    total = math.ceil(len(task.train) / budget.batch_size * budget.epochs)
    clock = _EvalClock()
    trainer = Trainer(
        model=model,
        args=_args(budget, out, lr, total),
        train_dataset=task.train,
        eval_dataset=task.eval,
        data_collator=task.collator,
        compute_metrics=task.compute_metrics,
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
        callbacks=[clock],
    )
    trainer.train()
    merged = model.merge_and_unload()
    return _finish("LoRA", trainer, clock, started, merged, {"lr": lr, "steps": total})


def run_apt(budget: Budget, out: str, lr: float = 1e-3, **apt_overrides) -> dict:
    """APT through aptune's runner (the same path as `aptune train`)."""
    from aptune import AptConfig
    from aptune.report import load_report
    from aptune.runner import RunArguments, run_training

    started = time.perf_counter()
    run_args = RunArguments(
        model=budget.model,
        output_dir=out,
        overwrite=True,
        num_train_epochs=budget.epochs,
        batch_size=budget.batch_size,
        max_length=budget.max_length,
        seed=budget.seed,
        learning_rate=lr,
        evaluations=budget.evaluations,
        max_train_samples=budget.max_train_samples,
    )
    summary = run_training(run_args, AptConfig(seed=budget.seed, **apt_overrides))
    report = load_report(out)
    phase = report.get("phase_times", {})
    train_seconds = sum(
        v for k, v in phase.items() if k in ("pruning", "distillation", "tuning", "calibration")
    )
    return {
        "method": "APT",
        "final": summary["final_metrics"],
        "curve": [
            {"step": e["step"], **{f"eval_{k}": v for k, v in e["metrics"].items()}} for e in report["evals"]
        ],
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "params": summary["params_after"],
        "density": summary["density"],
        "lr": lr,
        "apt_overrides": apt_overrides,
    }


if torch.get_num_threads() < 1:  # pragma: no cover - keeps linters from flagging torch as unused
    raise RuntimeError
