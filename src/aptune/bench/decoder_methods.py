"""The decoder suite's prune-then-LoRA baselines, and what every decoder method measures besides dev.

Each baseline prunes the *pretrained* model once to the job's density, at the same parameter count,
then tunes it with the ``peft`` package's LoRA on every Linear layer of the stack (rank and alpha of
the suite) for as many optimizer steps as APT tunes after its own pruning before tuning:

* ``llm-pruner``: LLM-Pruner's layer recipe (`aptune.bench.decoder_pruning.llm_pruner_keep`);
* ``tp-uniform``: Torch-Pruning's uniform LLM pruning of the FFN (`~.tp_uniform_keep`);
* ``aptune-one-shot``: aptune's own one-shot selection (calibration pass, `aptune.prepare_` and
  ``calibrate_and_prune_`` with APT's settings, straight to the target density), so that the
  selection is compared with everything else equal.

All of them (and dense LoRA and APT) train with the chunked causal-LM loss (``lm_loss_chunk``) and
record the perplexity on the BBC dev split and on the held-out domain (`aptune.bench.heldout`) right
after pruning (`domain_perplexities`); after tuning, the worker measures the exported model on the
BBC test split and the held-out domain (`exported_extras`).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, set_seed

from aptune.atomic import write_json_atomic
from aptune.bench.measure import MemoryMonitor, step_time_summary
from aptune.bench.plan import Job
from aptune.errors import ConfigError

__all__ = [
    "PRUNED_DIR",
    "PRUNED_FILE",
    "PRUNERS",
    "ChunkedLossTrainer",
    "DomainEval",
    "domain_perplexities",
    "exported_extras",
    "run_prune_then_lora",
    "save_plain_pruned",
]


class ChunkedLossTrainer(Trainer):
    """A plain `transformers.Trainer` whose causal-LM training loss is `aptune.losses.chunked_lm_forward`.

    Args:
        lm_loss_chunk: Tokens per logits block (0 or None: the model's own loss).
        *args, **kwargs: As `transformers.Trainer`.
    """

    def __init__(self, *args: Any, lm_loss_chunk: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lm_loss_chunk = lm_loss_chunk or None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The chunked loss on training steps with labels; the model's own loss otherwise."""
        from aptune.losses import chunked_lm_forward

        if self.lm_loss_chunk and model.training and not return_outputs and inputs.get("labels") is not None:
            items = num_items_in_batch if self.model_accepts_loss_kwargs else None
            return chunked_lm_forward(model, inputs, self.lm_loss_chunk, items)
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The chunked evaluation (`aptune.trainer.chunked_prediction_step`), as APT's trainer runs it."""
        from aptune.trainer import chunked_prediction_step

        chunked = chunked_prediction_step(self, model, inputs, prediction_loss_only, self.lm_loss_chunk)
        if chunked is not None:
            return chunked
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


def _perplexity(ctx, model: torch.nn.Module, tokenizer, path: str) -> float:
    """Perplexity of ``model`` on the text file ``path``, evaluated in the suite's logits blocks."""
    from aptune.bench.training import evaluate_model

    data = _eval_set(ctx, tokenizer, path)
    chunk = ctx.config.lm_loss_chunk or None
    batch = ctx.config.eval_batch_size
    metrics = evaluate_model(model, data.eval, data.collator, batch, "causal-lm", lm_loss_chunk=chunk)
    return metrics["perplexity"]


def _eval_set(ctx, tokenizer, path: str):
    from aptune.tasks import load_task

    return load_task(
        "causal-lm", tokenizer, train_file=ctx.train_file, eval_file=path, max_length=ctx.config.max_length
    )


def domain_perplexities(ctx, model: torch.nn.Module, tokenizer, splits: tuple[str, ...] = ("dev",)) -> dict:
    """Perplexity of ``model`` on BBC ``splits`` (``"dev"``, ``"test"``) and on the held-out domain.

    Returns:
        ``{split: perplexity, ..., "heldout": perplexity}`` (``heldout`` only when the suite has one).
    """
    files = {"dev": ctx.eval_file, "test": ctx.test_file}
    paths = {split: files[split] for split in splits}
    if ctx.heldout_file:
        paths["heldout"] = ctx.heldout_file
    return {name: _perplexity(ctx, model, tokenizer, path) for name, path in paths.items()}


class DomainEval(TrainerCallback):
    """Measures `domain_perplexities` once, at the start of training (after APT's pruning before tuning).

    With a ``store`` file the figures are also written there, and a run resumed from a checkpoint
    reads them back instead of measuring its partly tuned model.
    """

    def __init__(self, ctx, tokenizer, store: Path | None = None) -> None:
        self.ctx = ctx
        self.tokenizer = tokenizer
        self.store = store
        self.record: dict[str, float] | None = None
        self.seconds = 0.0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.record is not None or model is None:
            return
        if state.global_step > 0:  # resumed: the model is no longer the one right after pruning
            if self.store is not None and self.store.is_file():
                self.record = json.loads(self.store.read_text(encoding="utf-8"))
            return
        began = time.perf_counter()
        self.record = domain_perplexities(self.ctx, model, self.tokenizer)
        self.seconds = time.perf_counter() - began
        if self.store is not None:
            write_json_atomic(self.store, self.record)


def exported_extras(ctx, model: torch.nn.Module, tokenizer) -> dict[str, Any]:
    """What the worker adds for a decoder job from its exported model: held-out perplexity and the stack.

    Returns:
        ``{"heldout_perplexity": p or None, "heldout_kinds": {kind: {"tokens", "perplexity"}} or None,
        "stack_params": n}``: the held-out perplexity and its split by kind of token
        (`heldout_kinds`).
    """
    from aptune.arch import build_layout
    from aptune.bench.decoder_pruning import stack_params

    out: dict[str, Any] = {"heldout_perplexity": None, "heldout_kinds": None}
    if ctx.heldout_file:
        kinds = heldout_kinds(ctx, model, tokenizer)
        out["heldout_perplexity"] = kinds["all"]["perplexity"]
        out["heldout_kinds"] = kinds
    out["stack_params"] = stack_params(model, build_layout(model))
    return out


def heldout_kinds(ctx, model: torch.nn.Module, tokenizer) -> dict[str, dict[str, Any]]:
    """The held-out perplexity of ``model`` split by kind of token (`aptune.bench.token_kinds`).

    Evaluated as `_perplexity` evaluates (the same blocks, batch size and logits chunks), so its
    ``all`` entry is the suite's held-out perplexity. Line starts (a speaker's name, a verse line's
    first word) follow a single newline in the held-out text and a paragraph break in BBC's, so a
    model tuned on BBC can lose them while keeping the words.

    Returns:
        ``{kind: {"tokens": n, "perplexity": p}}`` for each of `KINDS` and ``all``.
    """
    from aptune.bench.token_kinds import kind_losses, kind_perplexities, newline_token_ids

    data = _eval_set(ctx, tokenizer, ctx.heldout_file)
    chunk = ctx.config.lm_loss_chunk or ctx.config.max_length
    was_training = model.training
    model.eval()
    try:
        sums = kind_losses(
            model, data.eval, data.collator, newline_token_ids(tokenizer), chunk, ctx.config.eval_batch_size
        )
    finally:
        model.train(was_training)
    return kind_perplexities(sums)


def save_plain_pruned(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    """Write a plain (merged, pruned) causal LM as an aptune export folder that `aptune.export.load` reads.

    The per-layer shapes go to the plan of the export; the adapters `aptune.prepare_` attaches to q
    for that are zero and add nothing.
    """
    import aptune
    from aptune.export import export
    from aptune.hub import modeling_aptune

    if type(model).__name__ in modeling_aptune.__all__:
        # loaded from an aptune export: its class only resizes at construction; the stock class
        # (its base) is what the export names
        model.__class__ = type(model).__mro__[1]
    controller = aptune.prepare_(
        model,
        aptune.AptConfig(target_density=1.0, distill=False, pretune_prune=False, adapter_targets=("q",)),
    )
    export(model, controller, folder, tokenizer=tokenizer)


def _prune_llm_pruner(ctx, job, model, layout, batches):
    from aptune.bench.decoder_pruning import apply_keep_, llm_pruner_keep

    cfg = ctx.config
    heads, neurons, record = llm_pruner_keep(
        model,
        layout,
        batches,
        job.density,
        first_layers=cfg.recipe_first_layers,
        last_layers=cfg.recipe_last_layers,
    )
    apply_keep_(model, layout, heads, neurons)
    return model, record


def _prune_tp_uniform(ctx, job, model, layout, batches):
    from aptune.bench.decoder_pruning import apply_keep_, tp_uniform_keep

    heads, neurons, record = tp_uniform_keep(model, layout, batches, job.density)
    apply_keep_(model, layout, heads, neurons)
    return model, record


def _prune_aptune_one_shot(ctx, job, model, layout, batches):
    """aptune's calibration pass and selection, straight to the density; returns the plain pruned model."""
    import aptune
    from aptune.bench.methods import one_shot_selection_settings
    from aptune.export import export

    settings = one_shot_selection_settings(ctx.config, job)
    controller = aptune.prepare_(model, settings)
    record = controller.calibrate_and_prune_(batches)
    folder = ctx.run_dir(job.id) / "pruned"
    small = export(model, controller, folder)
    kept = {k: record[k] for k in ("density", "removed") if k in record}
    return small, {"recipe": "aptune one-shot", **kept, "apt_config": settings.to_dict()}


#: Method -> ``prune(ctx, job, model, layout, batches) -> (pruned plain model, record)``.
PRUNERS = {
    "llm-pruner": _prune_llm_pruner,
    "tp-uniform": _prune_tp_uniform,
    "aptune-one-shot": _prune_aptune_one_shot,
}


def _lora_targets(model: torch.nn.Module, roles: tuple[str, ...]) -> list[str]:
    from aptune.arch import build_layout

    layout = build_layout(model)
    targets = []
    for role in roles:
        for path in layout.role_paths(role):
            if min(model.get_submodule(path).weight.shape) > 0:  # a layer that lost every head
                targets.append(path)
    return targets


#: Folder (an aptune export) and record of the pruned model before LoRA, kept when checkpoints are on.
PRUNED_DIR = "pruned-before-lora"
PRUNED_FILE = "pruned-before-lora.json"


def _prune_or_reload(ctx, job: Job, out: Path, model, tokenizer, task, save: bool):
    """The pruned model and what its pruning measured: pruned now, or read back from an earlier sitting.

    With ``save`` (checkpoints on) the pruned model is written as an export folder and its record
    after it, so a resumed job trains the same structure instead of pruning again (a second pruning
    is not guaranteed to choose the same heads and neurons).
    """
    from aptune.arch import build_layout
    from aptune.bench.decoder_pruning import stack_params
    from aptune.bench.methods import calibration_batches
    from aptune.bench.training import param_count

    stored = out / PRUNED_FILE
    if save and stored.is_file():
        from aptune.bench.methods import apt_settings_mismatch
        from aptune.export import load

        earlier = json.loads(stored.read_text(encoding="utf-8"))
        changed = apt_settings_mismatch({"pruning": earlier.get("record") or {}}, ctx.config, job)
        if changed:
            raise ConfigError(
                f"{out} holds a pruning made with other APT settings ({', '.join(changed)}); move that "
                "folder aside or delete it, and the job prunes again"
            )
        model = load(out / PRUNED_DIR, dtype=torch.float32)
        return model, earlier
    layout = build_layout(model)
    pruned = {"params_before": param_count(model), "stack_before": stack_params(model, layout)}
    began = time.perf_counter()
    batches = calibration_batches(task, ctx.config.prune_samples, ctx.config.calibration_batch_size, job.seed)
    model, record = PRUNERS[job.method](ctx, job, model, layout, batches)
    pruned["prune_seconds"] = time.perf_counter() - began
    layout = build_layout(model)
    record.update(
        heads_per_layer=[
            int(model.get_submodule(s.q).weight.shape[0]) // s.head_dim for s in layout.attention
        ],
        ffn_per_layer=[int(model.get_submodule(s.up).weight.shape[0]) for s in layout.ffn],
        hidden_size=layout.hidden_size,
    )
    pruned.update(
        record=record,
        stack_after=stack_params(model, layout),
        after_pruning=domain_perplexities(ctx, model, tokenizer),
    )
    if save:
        save_plain_pruned(copy.deepcopy(model), tokenizer, out / PRUNED_DIR)  # it attaches (zero) adapters
        write_json_atomic(stored, pruned)  # last: its presence marks the folder complete
    return model, pruned


def run_prune_then_lora(ctx, job: Job, monitor: MemoryMonitor | None = None) -> dict[str, Any]:
    """Prune the pretrained model with the job's method, then peft LoRA for the run's steps.

    With the suite's ``checkpoint_steps`` the pruned model is kept and LoRA saves checkpoints, so a
    job stopped partway resumes in a later sitting from its last complete checkpoint (its record
    then lists ``resumed``; the step times span every process, the peak memory is the last one's).

    Returns:
        The common record (`aptune.bench.training.common_record`) plus ``pruning`` (the recipe's plan and the
        heads and FFN neurons per layer), ``domain_perplexity`` (``after_pruning``: BBC dev and
        held-out), ``stack_params_before`` / ``stack_params_after`` and ``retrain_steps``.
    """
    from peft import LoraConfig, get_peft_model

    from aptune.bench.training import (
        StepClock,
        common_record,
        last_clocked_checkpoint,
        load_job_model,
        param_count,
        total_steps,
        train_to_end,
        trainer_data_kwargs,
        training_args,
    )

    cfg = ctx.config
    set_seed(job.seed)
    out = ctx.run_dir(job.id)
    model, tokenizer, task = load_job_model(ctx)
    steps = total_steps(ctx, len(task.train))
    resume = last_clocked_checkpoint(out / "checkpoints") if cfg.checkpoint_steps else None
    if monitor is not None:
        monitor.mark("calibration_start")
    model, pruned = _prune_or_reload(ctx, job, out, model, tokenizer, task, save=bool(cfg.checkpoint_steps))
    prune_seconds, record = pruned["prune_seconds"], pruned["record"]
    targets = _lora_targets(model, cfg.role_list())
    lora = get_peft_model(
        model,
        LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets),
    )
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    clock = StepClock(monitor)
    trainer = ChunkedLossTrainer(
        model=lora,
        args=training_args(ctx, job, out, ctx.job_lr(job), steps, save_steps=cfg.checkpoint_steps),
        callbacks=[clock],
        lm_loss_chunk=cfg.lm_loss_chunk,
        **trainer_data_kwargs(task),
    )
    train_to_end(trainer, clock, steps, resume)
    merged = lora.merge_and_unload()
    params_after = param_count(merged)  # before the export attaches its (zero) adapters
    save_plain_pruned(merged, tokenizer, out / "model")
    result = common_record(task, clock, offset={"calibration_pruning": prune_seconds})
    result.update(
        model_dir=str(out / "model"),
        total_steps=steps,
        retrain_steps=steps,
        params_before=pruned["params_before"],
        params_after=params_after,
        stack_params_before=pruned["stack_before"],
        stack_params_after=pruned["stack_after"],
        density=pruned["stack_after"] / pruned["stack_before"],
        trainable_params=trainable,
        adapter_params=trainable,
        lora_rank=cfg.lora_rank,
        lora_targets=targets,
        step_summary=step_time_summary(clock.step_times, last_prune_step=0),
        phases={"calibration_pruning": prune_seconds},
        pruning=record,
        domain_perplexity={"after_pruning": pruned["after_pruning"]},
        lr=ctx.job_lr(job),
        eval_seconds=clock.eval_seconds,
        epoch1_test=None,
    )
    if resume is not None:
        result["resumed"] = [{"from_step": int(resume.name.rsplit("-", 1)[-1])}]
    return result
