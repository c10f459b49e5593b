"""`AptTrainer`: a `transformers.Trainer` that prunes and tunes while it trains.

Only `compute_loss` is overridden (to mix in self-distillation); everything else comes from a thin
`AptCallback`, which calls ``controller.step(optimizer)`` after every optimizer step, shows the live
density and parameter count on the progress bar, adds them to the logs, prints a line at every
pruning event and feeds an optional `aptune.report.RunRecorder`.
"""

from __future__ import annotations

import copy
import logging
import math
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from aptune.checkpoint import (
    last_complete_checkpoint,
    load_controller_state,
    load_run_record,
    save_controller_state,
    save_run_record,
)
from aptune.config import AptConfig
from aptune.controller import DISTILL_MODULE_NAME, AptController
from aptune.distributed import all_reduce_gradients_, calibration_share, exclude_from_ddp_
from aptune.errors import AptuneError, ConfigError, ModelError
from aptune.export import export as export_model
from aptune.losses import chunked_lm_eval, chunked_lm_forward, is_causal_lm
from aptune.prepare import prepare_

__all__ = [
    "AptCallback",
    "AptSeq2SeqTrainer",
    "AptTrainer",
    "TrainingDivergedError",
    "chunked_prediction_step",
    "peak_rss_mb",
    "resolve_checkpoint",
]

logger = logging.getLogger("aptune")

POSTTUNE_DIR = "posttune"
"""Subfolder of ``TrainingArguments.output_dir`` that holds the post-distillation phase's checkpoints."""


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class TrainingDivergedError(AptuneError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


def _format_count(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


def describe_event(record: dict) -> str:
    """One log line summarising a pruning event."""
    removed = record["removed"]
    grown = record.get("grown") or {}
    ranks = sorted(set(record["ranks"].values()))
    rank_text = f"{ranks[0]}..{ranks[-1]}" if len(ranks) > 1 else (str(ranks[0]) if ranks else "-")
    return (
        f"[aptune] step {record['step']}: density {record['density']:.3f} "
        f"(target {record['target_density']:.3f}), removed {removed['heads']} heads, "
        f"{removed['neurons']} FFN neurons, {removed['hidden']} hidden dims; "
        f"hidden {record['hidden_size']}, heads/layer {record['heads_per_layer']}; "
        f"{len(grown)} adapters grew, ranks {rank_text}"
        + (f"; {record['hidden_note']}" if record.get("hidden_note") else "")
    )


def resolve_checkpoint(resume: str | bool | None, checkpoints_dir: str | Path) -> str | None:
    """The checkpoint folder a run resumes from.

    Args:
        resume: None or False (start fresh), True or ``"last"`` (the newest complete checkpoint of
            the post-distillation phase in ``checkpoints_dir/posttune`` if there is one, else the
            newest in ``checkpoints_dir``), or a checkpoint folder.
        checkpoints_dir: Where the run saves its checkpoints (``TrainingArguments.output_dir``).

    Returns:
        The folder, or None to start fresh.

    Raises:
        ConfigError: no complete checkpoint to resume from, or the folder does not exist.
    """
    if not resume:
        return None
    if resume is True or resume == "last":
        last = last_complete_checkpoint(Path(checkpoints_dir) / POSTTUNE_DIR) or last_complete_checkpoint(
            checkpoints_dir
        )
        if last is None:
            raise ConfigError(f"no complete aptune checkpoint found in {checkpoints_dir} to resume from")
        return str(last)
    if not Path(resume).is_dir():
        raise ConfigError(f"checkpoint folder {resume} does not exist")
    return str(resume)


class AptCallback(TrainerCallback):
    """Drives the controller from the Trainer's events; holds no training logic of its own."""

    def __init__(self, trainer: AptTrainer, recorder=None) -> None:
        self.trainer = trainer
        self.recorder = recorder
        self._step_started = 0.0
        self._phase_started = 0.0
        self._phase_times: dict[str, float] = {}
        self._phase = "pruning"
        self.step_offset = 0  # the post-distillation phase counts its steps after the main run's

    @property
    def controller(self) -> AptController:
        return self.trainer.apt_controller

    def _phase_of(self, step: int) -> str:
        if self.controller.posttuning:
            return "posttune"
        schedule = self.controller.schedule
        if schedule is None or step <= schedule.end:
            return "pruning"
        if self.controller.distilling:
            return "distillation"
        return "tuning"

    def on_train_begin(self, args, state, control, **kwargs):
        controller = self.controller
        if controller.posttuning:  # structure and schedule are final
            self._phase, self._phase_started = "posttune", time.perf_counter()
            return
        if state.max_steps <= 0:
            raise ConfigError("AptTrainer needs a known run length: set max_steps or num_train_epochs")
        if controller.schedule is None or controller.schedule.total_steps != state.max_steps:
            controller.set_total_steps(state.max_steps)
        if self._on_event not in controller.event_listeners:
            controller.event_listeners.append(self._on_event)  # announces and records every event
        if controller.pretune_density is not None and not controller.pretuned:
            started = time.perf_counter()
            self.trainer.calibrate_and_prune_()
            self._phase_times["calibration"] = time.perf_counter() - started
        self._phase_started = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        transform = self.controller.transform
        if transform is not None:
            all_reduce_gradients_(transform.parameters())

    def on_optimizer_step(self, args, state, control, **kwargs):
        if not self.controller.posttuning:
            self.controller.step(self.trainer.optimizer, wrapper=self.trainer.model_wrapped)

    def _on_event(self, record: dict) -> None:
        self._announce(describe_event(record))
        if self.recorder is not None:
            scores = record.get("scores") or {}
            event = {k: v for k, v in record.items() if k != "scores"}
            self.recorder.log_event(event)
            if scores:
                self.recorder.log_salience(
                    record["step"],
                    scores.get("heads", []),
                    scores.get("neurons", []),
                    scores.get("hidden", []),
                    event=record["index"],
                )

    def _announce(self, message: str) -> None:
        if not self.trainer.is_local_process_zero():
            return
        try:
            from tqdm.auto import tqdm

            tqdm.write(message)
        except ImportError:  # pragma: no cover - tqdm ships with transformers
            print(message)
        logger.debug(message)

    def on_step_end(self, args, state, control, **kwargs):
        controller = self.controller
        now = time.perf_counter()
        phase = self._phase_of(state.global_step)
        if phase != self._phase:
            self._phase_times[self._phase] = (
                self._phase_times.get(self._phase, 0.0) + now - self._phase_started
            )
            self._phase, self._phase_started = phase, now
        # one parameter count per step serves the progress bar and the recorder
        params = controller.param_count()
        density = params / controller.initial_param_count
        for callback in self.trainer.callback_handler.callbacks:
            bar = getattr(callback, "training_bar", None)
            if isinstance(callback, ProgressCallback) and bar is not None:
                bar.set_postfix(density=f"{density:.3f}", params=_format_count(params))
        if self.recorder is not None:
            parts = controller.last_loss_parts
            values = {
                "density": density,
                "params": params,
                "trainable_params": controller.trainable_parameter_count(),
                "step_time": now - self._step_started,
            }
            if controller.distilling and parts.mu is not None:
                values.update(task_loss=parts.task, pred_loss=parts.pred, layer_loss=parts.layer, mu=parts.mu)
            self.recorder.log_step(state.global_step + self.step_offset, **values)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        controller = self.controller
        extra = {"density": round(controller.density(), 4), "params": controller.param_count()}
        parts = controller.last_loss_parts
        if controller.distilling and parts.mu is not None:
            extra.update(
                task_loss=parts.task, distill_pred=parts.pred, distill_layer=parts.layer, mu=parts.mu
            )
        logs.update(extra)
        if state.log_history:
            state.log_history[-1].update(extra)
        if self.recorder is not None:
            self.recorder.log_step(
                state.global_step + self.step_offset, loss=logs["loss"], lr=logs.get("learning_rate", 0.0)
            )

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if self.trainer.is_world_process_zero() and folder.is_dir():
            if self.recorder is not None:  # before the controller state, which marks the save complete
                record = {"report": self.recorder.to_dict(), "phase_times": self._phases_so_far()}
                save_run_record(folder, record)
            save_controller_state(self.controller, folder)

    def _phases_so_far(self) -> dict[str, float]:
        """Seconds per phase up to now, the running phase included."""
        times = dict(self._phase_times)
        times[self._phase] = times.get(self._phase, 0.0) + time.perf_counter() - self._phase_started
        return times

    def restore_record(self, checkpoint: str | Path) -> None:
        """Continue the record saved with ``checkpoint`` (see `aptune.checkpoint.save_run_record`).

        The recorder takes the steps, events, evaluations and salience up to the checkpoint, the
        phase clocks continue from their saved totals, and ``resumed`` in the report lists the
        steps the run was resumed from. Nothing happens without a recorder or a saved record.
        """
        saved = load_run_record(checkpoint)
        if self.recorder is None or saved is None:
            return
        report = saved.get("report") or {}
        self.recorder.restore_history(report)
        self._phase_times = {k: float(v) for k, v in (saved.get("phase_times") or {}).items()}
        resumed = [*(report.get("resumed") or []), {"from_step": self.controller.step_count}]
        self.recorder.set("resumed", resumed)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics:
            return
        if self.trainer.posttune_steps() > 0 and not self.controller.posttuning:
            name, greater = self.trainer.selection_metric()
            if name in metrics:
                self.controller.remember_best_(name, float(metrics[name]), greater)
        if self.recorder is not None:
            clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            self.recorder.log_eval(state.global_step + self.step_offset, clean)

    def on_train_end(self, args, state, control, **kwargs):
        self._phase_times = self._phases_so_far()
        if self.recorder is not None:
            for phase, seconds in self._phase_times.items():
                self.recorder.set_phase_time(phase, seconds)
            memory = {"peak_rss_mb": peak_rss_mb()}
            if torch.cuda.is_available():
                memory["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            self.recorder.set("peak_memory", memory)
            self.recorder.set(
                "teacher_cost",
                {
                    "seconds": self.controller.teacher_seconds,
                    "peak_extra_mb": self.controller.teacher_peak_bytes / 2**20,
                    "note": "no-grad teacher forwards; memory the snapshot keeps alive beyond the student",
                },
            )


def chunked_prediction_step(
    trainer: Trainer, model, inputs: dict, prediction_loss_only: bool, chunk_size: int | None
) -> tuple | None:
    """A ``Trainer.prediction_step`` for a causal LM that never forms the ``[tokens, vocabulary]`` logits.

    Used when the per-token losses are all the metrics need: the trainer's
    ``preprocess_logits_for_metrics`` is `aptune.tasks.token_nll` (it passes them through), or only
    the loss is wanted. The losses come from `aptune.losses.chunked_lm_eval`, ``chunk_size`` tokens
    of logits at a time.

    Args:
        trainer: The trainer (its ``_prepare_inputs`` moves the batch to the device).
        model: The model being evaluated.
        inputs: The batch.
        prediction_loss_only: As in ``Trainer.prediction_step``.
        chunk_size: Tokens per logits block; None or 0 turns this off.

    Returns:
        ``(loss, per-token losses or None, labels)``, or None when this batch needs the model's own
        evaluation (no chunk size, training mode, no labels, not a causal LM, or metrics that read
        logits).
    """
    from aptune.tasks import token_nll

    if not chunk_size or model.training or inputs.get("labels") is None:
        return None
    if not (prediction_loss_only or trainer.preprocess_logits_for_metrics is token_nll):
        return None
    if not type(trainer.accelerator.unwrap_model(model)).__name__.endswith("ForCausalLM"):
        return None
    inputs = trainer._prepare_inputs(inputs)
    loss, nll = chunked_lm_eval(model, inputs, chunk_size)
    return loss.detach(), None if prediction_loss_only else nll, inputs["labels"]


class AptTrainer(Trainer):
    """`transformers.Trainer` with APT: adapters, pruning during training, self-distillation.

    For generation-based evaluation of seq2seq tasks use `AptSeq2SeqTrainer`.

    Accepts every `Trainer` argument plus:

    Args:
        apt_config: The `AptConfig` (default ``AptConfig()``); ignored when the model was already
            prepared with `aptune.prepare_`.
        recorder: Optional `aptune.report.RunRecorder` fed with steps, events and evaluations.
        calibration_dataset: Examples for the calibration pass of the pruning before tuning, in the
            training data's format (labels included: the salience needs gradients). The pass takes
            the first ``calibration_samples`` of them in order, so shuffle it for a random subset.
            Default: the training data, as the training loader shuffles it. Use it to prune with
            text of another domain than the task's, for example general text when the pruned
            model must keep more than the task.

    Example:
        >>> trainer = aptune.AptTrainer(model=model, args=TrainingArguments("out", max_steps=300),
        ...                             apt_config=aptune.AptConfig(target_density=0.4),
        ...                             train_dataset=train, eval_dataset=dev)
        >>> trainer.train()
        >>> small = trainer.export("out/model")
    """

    def __init__(
        self,
        model=None,
        args=None,
        *more,
        apt_config: AptConfig | None = None,
        recorder=None,
        calibration_dataset=None,
        **kwargs,
    ):
        if model is None:
            raise ModelError(
                "AptTrainer needs a model (model_init is not supported: the model is pruned in place)"
            )
        controller = getattr(model, "_aptune_controller", None) or prepare_(model, apt_config)
        self.apt_controller: AptController = controller
        sized = calibration_dataset is not None and hasattr(calibration_dataset, "__len__")
        if sized and not len(calibration_dataset):
            raise ConfigError(
                "calibration_dataset is empty: pass examples, or None to calibrate on the training data"
            )
        if calibration_dataset is not None and controller.pretune_density is None:
            raise ConfigError(
                "calibration data is read only by the pruning before tuning, which this run does not do: "
                "set pretune_density (CLI --pretune-density) or drop the calibration data"
            )
        # the distillation transform lives outside the forward pass: DDP must not track it
        exclude_from_ddp_(model, DISTILL_MODULE_NAME + ".")
        if args is not None and getattr(args, "ddp_find_unused_parameters", None) is None:
            # attention modules that lost every head leave their (empty) projections unused
            args.ddp_find_unused_parameters = True
        super().__init__(model, args, *more, **kwargs)
        self.calibration_dataset = calibration_dataset
        self.apt_callback = AptCallback(self, recorder)
        self.posttune_output = None
        self._main_output = None
        # first, so that on_log adds density and parameters before the progress bar prints them
        self.callback_handler.callbacks.insert(0, self.apt_callback)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Task loss, or the distillation mixture while a teacher snapshot is active."""
        controller = self.apt_controller
        if not (controller.distilling and model.training):
            if self._chunked_lm_loss(model, inputs, return_outputs):
                # logits per block of tokens (aptune.losses); the Trainer divides by the
                # accumulation steps itself unless the loss is normalised by num_items_in_batch
                items = num_items_in_batch if self.model_accepts_loss_kwargs else None
                loss = chunked_lm_forward(model, inputs, controller.config.lm_loss_chunk, items)
                self._check_finite(loss)
                return self._undo_token_average(loss, items)
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        if self._chunked_lm_loss(model, inputs, return_outputs):
            # both models' logits in blocks of tokens; per-batch means, as on the full logits below
            loss, _ = controller.chunked_distillation_loss(model, inputs)
        else:
            teacher_outputs = controller.teacher_forward(inputs)
            outputs = model(**inputs, output_hidden_states=True)
            task_loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
            if task_loss is None:
                raise ModelError("the model returned no loss: the training batches must contain labels")
            loss, _ = controller.distillation_loss(outputs, teacher_outputs, task_loss, inputs)
        self._check_finite(loss)
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            # the Trainer skips its own division when the model normalises by num_items_in_batch
            loss = loss / self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    def _undo_token_average(self, loss: torch.Tensor, items) -> torch.Tensor:
        # With average_tokens_across_devices, num_items_in_batch counts the tokens of every
        # process, so a rank's loss is its share of the global mean; DDP then averages the
        # gradients over the ranks, and `Trainer.compute_loss` multiplies by the number of
        # processes to undo that. The chunked loss bypasses it, so it scales the same way.
        if items is None or not self.args.average_tokens_across_devices:
            return loss
        return loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The chunked evaluation of a causal LM when ``lm_loss_chunk`` is set (see
        `chunked_prediction_step`); ``Trainer.prediction_step`` otherwise."""
        chunk = self.apt_controller.config.lm_loss_chunk
        chunked = chunked_prediction_step(self, model, inputs, prediction_loss_only, chunk)
        if chunked is not None:
            return chunked
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def _chunked_lm_loss(self, model, inputs: dict, return_outputs: bool) -> bool:
        # Training steps of a causal LM with labels, when no caller needs the logits.
        if self.apt_controller.config.lm_loss_chunk is None or return_outputs or not model.training:
            return False
        return is_causal_lm(self.accelerator.unwrap_model(model)) and inputs.get("labels") is not None

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not self.model.training:
            return
        value = float(loss.detach().float())
        if math.isfinite(value):
            return
        last = last_complete_checkpoint(self.args.output_dir)
        where = (
            f"the last good checkpoint is {last}; resume from it with a lower learning rate "
            f"(e.g. --resume-from-checkpoint {last} --learning-rate {self.args.learning_rate / 4:g})"
            if last
            else "no checkpoint was saved (set --save-steps to keep some); "
            "restart with a lower learning rate "
            f"(e.g. --learning-rate {self.args.learning_rate / 4:g})"
        )
        raise TrainingDivergedError(
            f"the training loss became {value} at step {self.state.global_step + 1}; {where}"
        )

    def train(self, resume_from_checkpoint=None, **kwargs):
        """`Trainer.train`, after rebuilding the pruned structure of ``resume_from_checkpoint``,
        then the post-distillation phase when ``AptConfig.posttune_steps`` asks for one.

        A pruned checkpoint only loads into a model of its own shapes, so the controller state saved
        with it is applied first (see `aptune.checkpoint`); the Trainer then loads weights, optimizer
        and scheduler as usual. A checkpoint of the post-distillation phase (in
        ``<output_dir>/posttune``; ``True`` or ``"last"`` looks there first) resumes that phase.

        Returns:
            The main run's ``TrainOutput`` (the phase's own is kept as ``posttune_output``).
        """
        resume_from_checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if resume_from_checkpoint:
            load_controller_state(self.apt_controller, resume_from_checkpoint)
            self.apt_callback.restore_record(resume_from_checkpoint)
        if self.apt_controller.posttuning:  # the checkpoint is one of the post-distillation phase
            self._main_output = self._main_output or TrainOutput(
                self.apt_controller.step_count, float("nan"), {}
            )
            self.posttune(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
            return self._main_output
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        self._main_output = output
        if self.posttune_steps() > 0:
            self.posttune(**kwargs)
        return output

    # ------------------------------------------------------------------ post-distillation phase
    def posttune_steps(self) -> int:
        """Optimizer steps of the post-distillation phase (`AptConfig.posttune_length`; 0: none)."""
        controller = self.apt_controller
        if controller.schedule is None:
            return 0
        return controller.config.posttune_length(controller.schedule.total_steps)

    def selection_metric(self) -> tuple[str, bool]:
        """The dev metric that picks the best checkpoint, and whether larger is better.

        ``TrainingArguments.metric_for_best_model`` (prefixed with ``eval_`` as the Trainer does)
        and ``greater_is_better``; the dev loss (lower is better) when none is set.
        """
        if self.args.metric_for_best_model is None:
            return "eval_loss", False
        name = self.args.metric_for_best_model
        if not name.startswith("eval_"):
            name = f"eval_{name}"
        greater = self.args.greater_is_better
        return name, (not name.endswith("loss")) if greater is None else bool(greater)

    def _posttune_arguments(self, main_args, steps: int):
        """The main run's `TrainingArguments` for the phase: its length, peak rate and warm-up."""
        config = self.apt_controller.config
        # a copy with new values, as the Trainer's own hyper-parameter search sets them: building new
        # TrainingArguments would set up (and reset) the accelerator state again
        args = copy.copy(main_args)
        args.output_dir = str(Path(main_args.output_dir) / POSTTUNE_DIR)
        args.max_steps = steps
        args.learning_rate = main_args.learning_rate * config.posttune_lr_scale
        args.warmup_steps = round(config.posttune_warmup * steps)
        return args

    def posttune(self, resume_from_checkpoint=None, **kwargs):
        """The post-distillation phase (the authors' last phase), after the main run.

        Restores the best dev checkpoint since the structure became final (the final model
        counts too: it is evaluated first), drops the teacher, freezes the structure (no scores,
        pruning or rank growth), and runs `Trainer.train` once more on a fresh optimizer and
        learning-rate schedule: ``posttune_steps`` steps whose rate warms up again (over
        ``posttune_warmup`` of them) to ``posttune_lr_scale`` x the main run's peak and then decays
        linearly (the main run's scheduler type). Checkpoints go to ``<output_dir>/posttune``. The
        record (``posttune_record`` on the controller, also in the recorder's report) holds the
        steps, the learning rate, the restored checkpoint and the dev metric before and after.

        Args:
            resume_from_checkpoint: A checkpoint of this phase to resume from.
            **kwargs: Passed on to `Trainer.train`.

        Returns:
            The phase's ``TrainOutput``, or None when ``posttune_steps`` is 0.
        """
        controller = self.apt_controller
        steps = self.posttune_steps()
        if steps <= 0:
            return None
        main_args = self.args
        post_args = self._posttune_arguments(main_args, steps)
        metric, greater = self.selection_metric()
        if not controller.posttuning:
            final = self._evaluate_now(metric)
            if final is not None:
                controller.remember_best_(metric, final, greater)
            restored = controller.restore_best_()
            controller.start_posttune_()
            controller.posttune_record = {
                "steps": steps,
                "main_steps": controller.step_count,
                "learning_rate": post_args.learning_rate,
                "warmup_steps": post_args.warmup_steps,
                "lr_scheduler_type": str(
                    getattr(post_args.lr_scheduler_type, "value", post_args.lr_scheduler_type)
                ),
                "metric": metric,
                "final_value": final,
                "restored_step": restored["step"] if restored else None,
                "restored_value": restored["value"] if restored else None,
            }
        self.apt_callback.step_offset = controller.step_count
        self.args = post_args
        # a fresh optimizer and schedule: the Trainer creates them when they are None
        self.optimizer, self.lr_scheduler = None, None
        try:
            output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
            controller.posttune_record["after_value"] = self._evaluate_now(metric)
        finally:
            self.args = main_args
        self.posttune_output = output
        if self.apt_callback.recorder is not None:
            self.apt_callback.recorder.set("posttune", controller.posttune_record)
        return output

    def _evaluate_now(self, metric: str) -> float | None:
        # The selection metric of the model as it is now, or None without dev data.
        if self.eval_dataset is None:
            return None
        value = self.evaluate().get(metric)
        return float(value) if value is not None else None

    def calibrate_and_prune_(self) -> dict:
        """One-shot pruning before tuning from ``calibration_samples`` examples.

        The examples come from ``calibration_dataset`` when the trainer has one, else from the
        training data. Sample count and micro-batch come from `aptune.AptConfig.calibration_plan`
        (decoders: 128 examples in micro-batches of 2 at the run's max length). Under data
        parallelism the count is the global one: every process calibrates on its share of it from
        its own shard of the data, and the salience is summed over the processes.
        """
        controller = self.apt_controller
        total, micro = controller.config.calibration_plan(
            controller.layout.is_decoder, self.args.per_device_train_batch_size
        )
        needed = calibration_share(total, self.accelerator.num_processes, self.accelerator.process_index)
        batches, seen = [], 0
        for batch in self.calibration_dataloader():
            size = len(next(iter(batch.values())))
            # micro-batches lower the peak memory (the salience is summed over them)
            for start in range(0, size, micro):
                stop = min(start + micro, size, start + needed - seen)
                batches.append({k: v[start:stop] if torch.is_tensor(v) else v for k, v in batch.items()})
                seen += stop - start
                if seen >= needed:
                    break
            if seen >= needed:
                break
        return controller.calibrate_and_prune_(batches, self.optimizer)

    def calibration_dataloader(self):
        """The loader of the calibration pass: ``calibration_dataset`` in order, at the training
        batch size, or the training loader when there is no calibration dataset."""
        if self.calibration_dataset is None:
            return self.get_train_dataloader()
        # the Trainer's own loader factory: the same collator, column removal and device placement
        # as training; no dataloader_key, so the evaluation loaders it may cache stay untouched
        return self._get_dataloader(
            dataset=self.calibration_dataset,
            description="Calibration",
            batch_size=self.args.per_device_train_batch_size,
            sampler_fn=self._get_eval_sampler,
        )

    def export(self, out_dir) -> torch.nn.Module:
        """Merge adapters and write ``out_dir`` (see `aptune.export`); returns the small model."""
        return export_model(self.model, self.apt_controller, out_dir, tokenizer=self.processing_class)


class AptSeq2SeqTrainer(AptTrainer, Seq2SeqTrainer):
    """`AptTrainer` whose evaluation can call ``generate()`` (``Seq2SeqTrainingArguments`` with
    ``predict_with_generate=True``), for metrics on generated text such as ROUGE."""
