"""The methods of the benchmark, one function each; a worker process runs exactly one of them.

All four share the model, the data files written by the harness, the sequence length, the batch
size, the run length, the evaluation cadence (every ``total_steps // evaluations`` steps plus a final
evaluation, as `aptune.runner.run_training` does) and the optimiser recipe of the runner (AdamW,
linear decay, 6 % warm-up, no weight decay).

* `run_ft`: full fine-tuning with `transformers.Trainer`.
* `run_lora`: the ``peft`` package's LoRA on the adapter roles (default q, v, FFN-up), rank 8,
  alpha 16, the task head (pooler + classifier) trained; the merged model is saved, and is also
  phase 1 of LoRA+Prune.
* `run_lora_prune_kwon`: LoRA+Prune as the APT paper defines it. Phase 1 is the LoRA run of the same
  seed (converged, at its tuned rate). Phase 2 prunes heads and FFN neurons of the merged LoRA model
  with the post-training method of Kwon et al. 2022 (`aptune.bench.kwon`: Fisher mask search under
  the parameter budget, mask rearrangement, least-squares mask tuning) on ``prune_samples`` training
  examples, removes the pruned blocks, and retrains with LoRA adapters of the rank whose adapter
  count matches APT's final one (aptune's static-rank adapters: the same update as peft's LoRA,
  ``alpha / rank`` scaling, and an exportable pruned model). Its clock adds every phase.
* `run_lora_prune_tp`: the same, with the pruning step from the Torch-Pruning library (global
  Taylor importance over heads and FFN neurons, `aptune.bench.tp_pruning`).
* `run_one_shot`: the APT ablation "one-shot": aptune's own salience applied once to the converged
  LoRA model (``calibration_samples`` examples), then the same retraining.
* `run_apt`: APT through `aptune.runner.run_training` (the path of ``aptune train``).

Every function returns a JSON-ready dict (see `aptune.bench.worker.run_job` for the common fields).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, set_seed

from aptune.bench.config import BenchConfig
from aptune.bench.measure import MemoryMonitor, chained_curve, curve_from_step_times, step_time_summary
from aptune.bench.plan import Job
from aptune.bench.training import (
    StepClock,
    WorkerContext,
    clean_metrics,
    common_record,
    epoch_callbacks,
    epoch_record,
    load_job_model,
    param_count,
    total_steps,
    train_to_end,
    trainer_data_kwargs,
    training_args,
)
from aptune.errors import ConfigError

__all__ = [
    "RUNNERS",
    "apt_settings",
    "run_apt",
    "run_ft",
    "run_lora",
    "run_lora_prune_kwon",
    "run_lora_prune_tp",
    "run_one_shot",
]


def run_ft(ctx: WorkerContext, job: Job, monitor: MemoryMonitor | None = None) -> dict[str, Any]:
    """Full fine-tuning: every parameter trains at ``ft_lr``."""
    set_seed(job.seed)
    out = ctx.run_dir(job.id)
    model, tokenizer, task = load_job_model(ctx)
    params_before = param_count(model)
    steps = total_steps(ctx, len(task.train))
    clock = StepClock(monitor)
    epoch = epoch_callbacks(ctx, tokenizer)
    trainer = Trainer(
        model=model,
        args=training_args(ctx, job, out, ctx.job_lr(job), steps),
        callbacks=[clock, *epoch],
        **trainer_data_kwargs(task),
    )
    train_to_end(trainer, clock, steps)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    result = common_record(task, clock)
    result.update(
        model_dir=str(out / "model"),
        total_steps=steps,
        params_before=params_before,
        params_after=param_count(model),
        trainable_params=params_before,
        step_summary=step_time_summary(clock.step_times),
        lr=ctx.job_lr(job),
        eval_seconds=clock.eval_seconds,
        epoch1_test=epoch_record(epoch),
    )
    return result


def lora_targets(model: torch.nn.Module, roles: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Module paths of the LoRA targets (from aptune's layout roles) and of the task head to train."""
    from aptune.arch import build_layout

    layout = build_layout(model)
    targets = [path for role in roles for path in layout.role_paths(role)]
    return targets, list(layout.trainable_heads)


def run_lora(ctx: WorkerContext, job: Job, monitor: MemoryMonitor | None = None) -> dict[str, Any]:
    """PEFT LoRA (rank, alpha and roles from the config); saves the merged model."""
    from peft import LoraConfig, get_peft_model

    cfg = ctx.config
    set_seed(job.seed)
    out = ctx.run_dir(job.id)
    model, tokenizer, task = load_job_model(ctx)
    params_before = param_count(model)
    targets, heads = lora_targets(model, cfg.role_list())
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0,
        target_modules=targets,
        modules_to_save=heads or None,
    )
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapter_params = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    steps = total_steps(ctx, len(task.train))
    clock = StepClock(monitor)
    epoch = epoch_callbacks(ctx, tokenizer)
    before: dict[str, Any] = {}
    if cfg.task == "causal-lm":
        from aptune.bench.decoder_methods import domain_perplexities

        before = {"domain_perplexity": {"after_pruning": domain_perplexities(ctx, model, tokenizer)}}
    trainer = _plain_trainer(ctx)(
        model=model,
        args=training_args(ctx, job, out, ctx.job_lr(job), steps),
        callbacks=[clock, *epoch],
        **trainer_data_kwargs(task),
    )
    train_to_end(trainer, clock, steps)
    merged = model.merge_and_unload()
    merged.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    result = common_record(task, clock)
    result.update(
        model_dir=str(out / "model"),
        total_steps=steps,
        params_before=params_before,
        params_after=param_count(merged),
        trainable_params=trainable,
        step_summary=step_time_summary(clock.step_times),
        lr=ctx.job_lr(job),
        eval_seconds=clock.eval_seconds,
        epoch1_test=epoch_record(epoch),
        adapter_params=adapter_params,
        lora_rank=cfg.lora_rank,
        lora_targets=targets,
        lora_modules_to_save=heads,
        **before,
    )
    return result


def _plain_trainer(ctx: WorkerContext):
    """`transformers.Trainer`, or for causal LMs with ``lm_loss_chunk`` one with the chunked loss."""
    import functools

    cfg = ctx.config
    if cfg.task != "causal-lm" or not cfg.lm_loss_chunk:
        return Trainer
    from aptune.bench.decoder_methods import ChunkedLossTrainer

    return functools.partial(ChunkedLossTrainer, lm_loss_chunk=cfg.lm_loss_chunk)


def _apt_base(cfg: BenchConfig, job: Job) -> dict[str, Any]:
    """AptConfig fields shared by APT and the LoRA+Prune retraining."""
    return {
        "target_density": job.density,
        "adapter_targets": cfg.role_list(),
        "initial_rank": cfg.lora_rank,
        "max_rank": max(64, cfg.lora_rank),
        "lora_scaling": cfg.lora_alpha / cfg.lora_rank,
        "calibration_samples": cfg.calibration_samples,
        "num_events": cfg.apt_num_events,
        "seed": job.seed,
        "lm_loss_chunk": (cfg.lm_loss_chunk or None) if cfg.task == "causal-lm" else None,
    }


def calibration_batches(task, count: int, batch_size: int, seed: int) -> list[dict]:
    """``count`` training examples (a seeded sample, fixed per seed) collated into batches."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(task.train), generator=generator)[: min(count, len(task.train))].tolist()
    rows = [task.train[i] for i in order]
    return [task.collator(rows[k : k + batch_size]) for k in range(0, len(rows), batch_size)]


def adapter_cost_per_rank(model: torch.nn.Module, roles: tuple[str, ...]) -> int:
    """Adapter parameters per unit of rank on the adapter roles: ``in + out`` of each target Linear."""
    from aptune.arch import build_layout

    layout = build_layout(model)
    total = 0
    for role in roles:
        for path in layout.role_paths(role):
            weight = model.get_submodule(path).weight  # (out, in)
            total += int(weight.shape[0] + weight.shape[1])
    return total


def matched_rank(ctx: WorkerContext, job: Job, model: torch.nn.Module) -> dict[str, Any]:
    """The retraining rank whose adapter count on the pruned ``model`` is closest to APT's final one.

    APT's count comes from the APT job of the same seed and allocator (``job.depends[1]``); without
    it (APT not run) the configured ``lora_rank`` stands. ``retrain_rank`` > 0 overrides both.
    """
    cfg = ctx.config
    per_rank = adapter_cost_per_rank(model, cfg.role_list())
    apt_adapters = None
    if len(job.depends) > 1 and ctx.result_path(job.depends[1]).is_file():
        apt = json.loads(ctx.result_path(job.depends[1]).read_text(encoding="utf-8"))
        apt_adapters = apt.get("adapter_params")
    if cfg.retrain_rank:
        rank, source = cfg.retrain_rank, "retrain_rank option"
    elif apt_adapters:
        rank, source = max(1, round(apt_adapters / per_rank)), f"APT's final adapter count ({job.depends[1]})"
    else:
        rank, source = cfg.lora_rank, "lora_rank (no APT record)"
    return {
        "rank": int(rank),
        "adapter_params": int(rank * per_rank),
        "apt_adapter_params": apt_adapters,
        "per_rank": per_rank,
        "source": source,
    }


def _retrain(
    ctx: WorkerContext,
    job: Job,
    monitor: MemoryMonitor | None,
    *,
    phase1: dict,
    model,
    tokenizer,
    task,
    controller,
    apt_config,
    steps: int,
    prune_seconds: dict[str, float],
    pruning: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """LoRA retraining of a pruned model, export, and the LoRA+Prune record (all phases on one clock)."""
    from aptune.trainer import AptTrainer

    out = ctx.run_dir(job.id)
    clock = StepClock(monitor)
    trainer = AptTrainer(
        model=model,
        args=training_args(ctx, job, out, ctx.job_lr(job), steps),
        processing_class=tokenizer,
        callbacks=[clock],
        **trainer_data_kwargs(task),
    )
    # every phase before the retraining's first step, in order: LoRA's training, the calibration and
    # mask search, mask tuning, surgery (evaluations excluded)
    before = {"lora": float(phase1["train_seconds"]), **{k: float(v) for k, v in prune_seconds.items()}}
    train_to_end(trainer, clock, steps)
    small = trainer.export(out / "model")
    result = common_record(task, clock, offset=before)
    retrain_seconds = sum(clock.step_times.values())
    # LoRA's evaluations are of the model before pruning (final_structure False); the retraining's
    # are of the exported structure
    result["curve"] = chained_curve(phase1["curve"], before, clock.step_times, clock.evals)
    lora_steps = {int(k): v for k, v in phase1["step_times"].items()}
    start = step_time_summary(lora_steps)["start"]
    after = statistics.median(clock.step_times.values()) if clock.step_times else None
    peaks = [p for p in (phase1.get("peak_rss_mb"), clock.peak_rss_mb) if p is not None]
    result.update(
        model_dir=str(out / "model"),
        total_steps=phase1["total_steps"] + steps,
        retrain_steps=steps,
        params_before=phase1["params_before"],
        params_after=param_count(small),
        trainable_params=controller.trainable_parameter_count(),
        adapter_params=controller.adapter_parameter_count(),
        density=controller.density(),
        # the job process's own peak is the retraining phase's; phase 1 ran in its own process
        peak_rss_mb=max(peaks) if peaks else None,
        phase_peak_rss_mb={"lora": phase1.get("peak_rss_mb"), "prune_retrain": clock.peak_rss_mb},
        phases={**before, "retrain": retrain_seconds},
        phase1_job=job.depends[0],
        eval_seconds=float(phase1.get("eval_seconds") or 0.0) + clock.eval_seconds,
        epoch1_test={"metrics": None, "note": "LoRA+Prune prunes after LoRA's whole run: no 1-epoch model"},
        step_summary={
            "start": start,
            "after_pruning": after,
            "end": step_time_summary(clock.step_times)["end"],
            "ratio_after_pruning": after / start if after is not None and start else None,
            "steps": len(lora_steps) + len(clock.step_times),
        },
        pruning=pruning,
        lr=ctx.job_lr(job),
        apt_config=apt_config.to_dict(),
        **extra,
    )
    return result


def _retrain_config(ctx: WorkerContext, job: Job, rank: int, *, prune_hidden: bool = False):
    from aptune.config import AptConfig

    cfg = ctx.config
    return AptConfig(
        **{
            **_apt_base(cfg, job),
            "num_events": 1,
            "initial_rank": rank,
            "max_rank": max(64, rank),
            "lora_scaling": cfg.lora_alpha / rank,
        },
        pretune_prune=True,
        pretune_density=job.density,
        distill=False,
        rank_allocation="static",
        prune_hidden=prune_hidden,
    )


def _prune_and_retrain(ctx: WorkerContext, job: Job, monitor, prune) -> dict[str, Any]:
    """Phase 2 of the LoRA+Prune methods: ``prune(model, task, layout) -> (keep_heads, keep_neurons,
    seconds, record)`` on the merged phase-1 model, then the blocks are removed and LoRA retrains."""
    from aptune.arch import build_layout
    from aptune.prepare import prepare_
    from aptune.select import KeepSet

    cfg = ctx.config
    phase1 = json.loads(ctx.result_path(job.depends[0]).read_text(encoding="utf-8"))
    set_seed(job.seed)
    model, tokenizer, task = load_job_model(ctx, phase1["model_dir"])
    steps = max(1, round(total_steps(ctx, len(task.train)) * cfg.retrain_fraction))
    layout = build_layout(model)
    if monitor is not None:
        monitor.mark("calibration_start")
    keep_heads, keep_neurons, seconds, record = prune(model, task, layout)
    began = time.perf_counter()
    rank = matched_rank(ctx, job, _pruned_copy_shapes(model, layout, keep_heads, keep_neurons))
    apt_config = _retrain_config(ctx, job, rank["rank"])
    controller = prepare_(model, apt_config, total_steps=steps)
    hidden = torch.ones(layout.hidden_size, dtype=torch.bool)
    controller.set_hard_masks(KeepSet(torch.cat(keep_heads), torch.cat(keep_neurons), hidden, 0.0))
    controller.prune_to_masks_()
    controller.pretuned = True  # pruned once, here: no calibration pass before the retraining
    seconds = {**seconds, "surgery": time.perf_counter() - began}
    record = {
        **record,
        "heads_per_layer": [int(k.sum()) for k in keep_heads],
        "ffn_per_layer": [int(k.sum()) for k in keep_neurons],
        "hidden_size": layout.hidden_size,
    }
    return _retrain(
        ctx,
        job,
        monitor,
        phase1=phase1,
        model=model,
        tokenizer=tokenizer,
        task=task,
        controller=controller,
        apt_config=apt_config,
        steps=steps,
        prune_seconds=seconds,
        pruning=record,
        extra={"retrain_rank": rank},
    )


def _pruned_copy_shapes(model, layout, keep_heads, keep_neurons) -> torch.nn.Module:
    """A deep copy of ``model`` with the pruned blocks removed (only its shapes are read)."""
    import copy

    from aptune.surgery import prune_neurons_, prune_units_

    clone = copy.deepcopy(model)
    with torch.no_grad():
        for i, keep in enumerate(keep_heads):
            prune_units_(clone, layout, i, torch.nonzero(keep).squeeze(1))
        for i, keep in enumerate(keep_neurons):
            prune_neurons_(clone, layout, i, torch.nonzero(keep).squeeze(1))
    return clone


def run_lora_prune_kwon(ctx: WorkerContext, job: Job, monitor: MemoryMonitor | None = None) -> dict[str, Any]:
    """LoRA+Prune with Kwon et al.'s post-training pruning (see the module docstring)."""
    from aptune.bench.config import TUNING_SAMPLES
    from aptune.bench.kwon import kwon_prune

    cfg = ctx.config

    def prune(model, task, layout):
        began = time.perf_counter()
        batches = calibration_batches(task, cfg.prune_samples, cfg.batch_size, job.seed)
        tuning = calibration_batches(task, min(cfg.prune_samples, TUNING_SAMPLES), cfg.batch_size, job.seed)
        prepared = time.perf_counter() - began
        result = kwon_prune(model, layout, batches, job.density, tuning_batches=tuning)
        seconds = {
            "calibration_search": prepared + result.seconds["calibration_search"],
            "mask_tuning": result.seconds["mask_tuning"],
        }
        record = {"method": "kwon2022", **result.to_dict()}
        return result.keep_heads, result.keep_neurons, seconds, record

    return _prune_and_retrain(ctx, job, monitor, prune)


def run_lora_prune_tp(ctx: WorkerContext, job: Job, monitor: MemoryMonitor | None = None) -> dict[str, Any]:
    """LoRA+Prune with Torch-Pruning's global Taylor importance (see the module docstring)."""
    from aptune.bench.tp_pruning import taylor_keep_sets

    cfg = ctx.config

    def prune(model, task, layout):
        began = time.perf_counter()
        batches = calibration_batches(task, cfg.prune_samples, cfg.batch_size, job.seed)
        keep_heads, keep_neurons, record = taylor_keep_sets(model, layout, batches, job.density)
        seconds = {"calibration_search": time.perf_counter() - began, "mask_tuning": 0.0}
        return keep_heads, keep_neurons, seconds, {"method": "torch-pruning taylor", **record}

    return _prune_and_retrain(ctx, job, monitor, prune)


def run_one_shot(ctx: WorkerContext, job: Job, monitor: MemoryMonitor | None = None) -> dict[str, Any]:
    """The "one-shot" APT ablation: aptune's salience once on the converged LoRA model, then retraining."""
    from aptune.prepare import prepare_

    cfg = ctx.config
    phase1 = json.loads(ctx.result_path(job.depends[0]).read_text(encoding="utf-8"))
    set_seed(job.seed)
    model, tokenizer, task = load_job_model(ctx, phase1["model_dir"])
    steps = max(1, round(total_steps(ctx, len(task.train)) * cfg.retrain_fraction))
    rank = matched_rank(ctx, job, model)  # on the dense shapes: aptune's pass prunes after prepare_
    apt_config = _retrain_config(ctx, job, rank["rank"], prune_hidden=True)
    controller = prepare_(model, apt_config, total_steps=steps)
    if monitor is not None:
        monitor.mark("calibration_start")
    began = time.perf_counter()
    batches = calibration_batches(task, cfg.calibration_samples, cfg.batch_size, job.seed)
    record = controller.calibrate_and_prune_(batches)
    # aptune's one-shot pass removes the blocks itself: the surgery is inside calibration_search
    seconds = {"calibration_search": time.perf_counter() - began, "mask_tuning": 0.0, "surgery": 0.0}
    pruning = {k: record[k] for k in ("density", "removed") if k in record}
    pruning.update({k: v for k, v in controller.layer_summary().items()})
    return _retrain(
        ctx,
        job,
        monitor,
        phase1=phase1,
        model=model,
        tokenizer=tokenizer,
        task=task,
        controller=controller,
        apt_config=apt_config,
        steps=steps,
        prune_seconds=seconds,
        pruning=pruning,
        extra={"retrain_rank": rank},
    )


def apt_settings(cfg: BenchConfig, job: Job):
    """The `AptConfig` of an APT job: the suite's frozen settings plus the job's ablation overrides.

    An ablation that does not set ``keep_copy_heads`` itself takes the suite's
    ``ablation_keep_copy_heads`` when that is set (the decoder suite's ablations are measured from
    APT without protected copying heads, as they ran before that became the default).
    """
    from aptune.config import AptConfig

    base = {}
    if job.variant and cfg.ablation_keep_copy_heads is not None:
        base["keep_copy_heads"] = cfg.ablation_keep_copy_heads
    return AptConfig(
        **{
            **_apt_base(cfg, job),
            "pretune_prune": cfg.apt_pretune_prune,
            "distill": cfg.apt_distill,
            **base,
            **job.apt_overrides,
        }
    )


def one_shot_selection_settings(cfg: BenchConfig, job: Job):
    """The `AptConfig` of aptune's one-shot selection (``aptune-one-shot``).

    APT's settings, pruned once, before any tuning, to the job's density.
    """
    import dataclasses

    return dataclasses.replace(apt_settings(cfg, job), pretune_prune=True, pretune_density=job.density)


#: `AptConfig` fields whose only effect is the density of the pruning before tuning; records are
#: compared by that density as resolved when they ran (their schedule's ``initial_density``).
PRETUNE_FIELDS: tuple[str, ...] = ("pretune_prune", "pretune_density")


#: `AptConfig` fields compared by the value they resolve to for the suite's model family.
RESOLVED_FIELDS: tuple[str, ...] = ("keep_copy_heads", "uniform_heads")


def apt_settings_mismatch(record: dict[str, Any], cfg: BenchConfig, job: Job) -> list[str]:
    """The APT settings a finished job's ``record`` ran with that differ from what it would run with now.

    Covers APT jobs (the record's ``apt_config``) and aptune's one-shot selection (the
    ``apt_config`` of its ``pruning`` record). A field the record does not know was added later,
    and ran as its default then; a record of an older config format reads as it meant when it
    was written (`aptune.config.upgrade_config_dict`). So a record stays valid across versions
    until a default it depends on changes, or the job sets a newer field otherwise; then it no
    longer stands for the job. Fields the record has and `AptConfig` no longer has are not
    compared. Family defaults are compared by what they resolve to: the pruning before tuning by
    the density it resolved to (the record's schedule), not by how it was asked for (a record left
    with the family default when that default was 0.85 differs from a job whose default is now
    the target, and one that asked for the target explicitly computed the same as that job),
    ``keep_copy_heads`` by its threshold (`aptune.config.AptConfig.copy_heads_threshold`), and
    ``uniform_heads`` by the choice it resolves to (`aptune.config.resolve_uniform_heads`).

    Returns:
        The differing field names, sorted (empty for other methods and for records without settings).
    """
    from aptune.config import ADAPTER_ROLES, AptConfig, resolve_uniform_heads, upgrade_config_dict

    if job.method == "apt":
        saved = record.get("apt_config")
        settings = apt_settings(cfg, job)
    elif job.method == "aptune-one-shot":
        saved = (record.get("pruning") or {}).get("apt_config")
        settings = one_shot_selection_settings(cfg, job)
    else:
        return []
    if not isinstance(saved, dict):
        return []
    is_decoder = cfg.task == "causal-lm"
    now = json.loads(json.dumps(settings.to_dict()))
    try:
        upgraded = upgrade_config_dict(saved)
    except ConfigError:
        return ["format_version"]  # written by a format this aptune cannot read
    ran = {**json.loads(json.dumps(AptConfig().to_dict())), **upgraded}
    if isinstance(ran.get("adapter_targets"), list):
        # a set of roles: records written before AptConfig fixed their order list them as asked
        ran["adapter_targets"] = [r for r in ADAPTER_ROLES if r in ran["adapter_targets"]]
    ran_initial = (record.get("schedule") or {}).get("initial_density")
    compared_raw = () if isinstance(ran_initial, (int, float)) else PRETUNE_FIELDS
    changed = {
        k
        for k in now
        if k != "format_version"
        and k not in RESOLVED_FIELDS
        and (k not in PRETUNE_FIELDS or k in compared_raw)
        and ran.get(k) != now[k]
    }
    if not compared_raw:
        initial_now = settings.pretune_target(is_decoder=is_decoder) or 1.0
        if abs(float(ran_initial) - initial_now) > 1e-9:
            changed.add("pretune_density")
    ran_threshold = AptConfig(keep_copy_heads=ran["keep_copy_heads"]).copy_heads_threshold(is_decoder)
    if ran_threshold != settings.copy_heads_threshold(is_decoder):
        changed.add("keep_copy_heads")
    # a record whose pruning before tuning differs is already stale; resolve both with today's
    pretunes = settings.pretune_target(is_decoder) is not None
    ran_layout = ran.get("layout", "free")
    ran_units = resolve_uniform_heads(ran.get("uniform_heads"), ran_layout, is_decoder, pretunes)
    if ran_units != settings.uniform_heads_choice(is_decoder):
        changed.add("uniform_heads")
    return sorted(changed)


#: File in an APT job's run folder that keeps the perplexities measured right after the pruning
#: before tuning, for a resumed job.
AFTER_PRUNING_FILE = "after_pruning.json"


def _resumable(out: Path, cfg: BenchConfig) -> str | None:
    """The checkpoint an APT job resumes from: the last complete one, when checkpoints are on."""
    from aptune.checkpoint import last_complete_checkpoint
    from aptune.runner import CHECKPOINTS_DIR

    if not cfg.checkpoint_steps:
        return None
    last = last_complete_checkpoint(out / CHECKPOINTS_DIR)
    return str(last) if last is not None else None


def run_apt(ctx: WorkerContext, job: Job, monitor: MemoryMonitor | None = None) -> dict[str, Any]:
    """APT through `aptune.runner.run_training`; the figures come from its ``report.json``.

    With ``checkpoint_steps`` the run saves checkpoints, and a job whose run folder holds a complete
    one (an earlier sitting was stopped) resumes from it; its record lists ``resumed`` steps.
    """
    from aptune.report import load_report
    from aptune.runner import RunArguments, run_training

    cfg = ctx.config
    out = ctx.run_dir(job.id)
    resume = _resumable(out, cfg)
    run_args = RunArguments(
        model=ctx.model,
        tokenizer=ctx.tokenizer,
        task=cfg.task,
        train_file=ctx.train_file,
        eval_file=ctx.eval_file,
        max_length=cfg.max_length,
        output_dir=str(out),
        overwrite=resume is None,
        resume_from_checkpoint=resume,
        save_steps=cfg.checkpoint_steps or None,
        save_total_limit=2 if cfg.checkpoint_steps else None,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or None,
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        learning_rate=ctx.job_lr(job),
        weight_decay=0.0,
        warmup_ratio=0.06,
        evaluations=cfg.evaluations,
        seed=job.seed,
    )
    apt_config = apt_settings(cfg, job)
    if monitor is not None:
        monitor.mark("run_start")
    from aptune.runner import load_tokenizer

    epoch = epoch_callbacks(ctx, load_tokenizer(ctx.model, ctx.tokenizer)) if cfg.epoch1_view else []
    domains = []
    if cfg.task == "causal-lm":  # perplexities right after the pruning before tuning
        from aptune.bench.decoder_methods import DomainEval

        domains = [DomainEval(ctx, load_tokenizer(ctx.model, ctx.tokenizer), out / AFTER_PRUNING_FILE)]
    summary = run_training(run_args, apt_config, callbacks=[*epoch, *domains])
    report = load_report(out)
    steps = {
        int(row["step"]): float(row["step_time"])
        for row in report["steps"]
        if row.get("step_time") is not None
    }
    evals: dict[int, dict[str, float]] = {}
    for entry in report.get("evals", []):
        evals[int(entry["step"])] = {**evals.get(int(entry["step"]), {}), **clean_metrics(entry["metrics"])}
    pruning = [e for e in report.get("events", []) if sum((e.get("removed") or {}).values()) > 0]
    phases = report.get("phase_times", {})
    if apt_config.pretune_prune and "calibration" in phases:
        # the one-shot pruning before step 1 is not among report.json's events (the trainer starts
        # listening to events after it), so it is placed at step 0 here
        pruning.append({"step": 0})
    last_prune = max((int(e["step"]) for e in pruning), default=None)
    first_prune = min((int(e["step"]) for e in pruning), default=None)
    calibration = float(phases.get("calibration", 0.0))
    curve = curve_from_step_times(
        steps, sorted(evals.items()), offset=calibration, final_from_step=last_prune or 0
    )
    schedule = (report.get("config") or {}).get("schedule") or {}
    summary_steps = step_time_summary(
        steps, last_prune_step=last_prune, first_event_step=first_prune if first_prune else None
    )
    distill_end = schedule.get("distill_end")
    if apt_config.distill and distill_end is not None:
        tail = [t for s, t in steps.items() if s > distill_end]
        summary_steps["after_distillation"] = statistics.median(tail) if tail else None
    resumed = report.get("resumed") or []
    if monitor is not None and "load" in phases and not resumed:
        # run_training has no callback hook: place the marks from its own timings (load phase, step
        # times, evaluation run times), which is accurate to the duration of one step
        eval_runtimes = {
            int(e["step"]): float(e["metrics"].get("eval_runtime") or 0.0) for e in report.get("evals", [])
        }
        train_start = monitor.marks["run_start"] + float(phases["load"])
        monitor.mark("train_start", train_start)
        if last_prune:
            before = calibration + sum(t for s, t in steps.items() if s <= last_prune)
            before += sum(t for s, t in eval_runtimes.items() if s < last_prune)
            monitor.mark("last_prune", train_start + before)
        monitor.mark(
            "train_end", train_start + calibration + sum(steps.values()) + sum(eval_runtimes.values())
        )
    plan = json.loads((out / "model" / "config.json").read_text(encoding="utf-8")).get("aptune_plan", {})
    counted = [e["adapter_params"] for e in report.get("events", []) if e.get("adapter_params") is not None]
    adapter_params = counted[-1] if counted else None  # after the last event the ranks no longer change
    memory = report.get("peak_memory") or {}
    return {
        "primary_metric": "accuracy" if cfg.task == "classification" else "perplexity",
        "greater_is_better": cfg.task == "classification",
        "final_metrics": curve[-1]["metrics"] if curve else clean_metrics(summary["final_metrics"]),
        "curve": curve,
        "step_times": {str(k): v for k, v in sorted(steps.items())},
        "train_seconds": calibration + sum(steps.values()),
        "peak_rss_mb": memory.get("peak_rss_mb"),
        "cuda_max_allocated_mb": memory.get("cuda_max_allocated_mb"),
        "model_dir": summary["model_dir"],
        "total_steps": int((report.get("summary") or {}).get("final_step") or max(steps, default=0)),
        "params_before": summary["params_before"],
        "params_after": summary["params_after"],
        "density": summary["density"],
        "step_summary": summary_steps,
        "last_prune_step": last_prune,
        "phases": {k: float(v) for k, v in phases.items()},
        "teacher_seconds": (report.get("teacher_cost") or {}).get("seconds"),
        "schedule": schedule,
        "structure": {k: plan.get(k) for k in ("heads_per_layer", "ffn_per_layer", "hidden_size")},
        "lr": ctx.job_lr(job),
        "eval_seconds": sum(float(e["metrics"].get("eval_runtime") or 0.0) for e in report.get("evals", [])),
        "epoch1_test": epoch_record(epoch, final_from_step=last_prune or 0),
        "adapter_params": adapter_params,
        "trainable_params": (report.get("summary") or {}).get("trainable_params"),
        "apt_config": apt_config.to_dict(),
        "report": str(out / "report.md"),
        # resumed from a checkpoint: the step times span every process, the peak memory is the last one's
        **({"resumed": resumed} if resumed else {}),
        **({"domain_perplexity": {"after_pruning": domains[0].record}} if domains else {}),
    }


def _prune_then_lora(ctx: WorkerContext, job: Job, monitor: MemoryMonitor | None = None) -> dict[str, Any]:
    """A decoder baseline: prune the pretrained model, then peft LoRA (`aptune.bench.decoder_methods`)."""
    from aptune.bench.decoder_methods import run_prune_then_lora

    return run_prune_then_lora(ctx, job, monitor)


#: Method name -> runner.
RUNNERS = {
    "ft": run_ft,
    "lora": run_lora,
    "lora-prune-kwon": run_lora_prune_kwon,
    "lora-prune-tp": run_lora_prune_tp,
    "one-shot": run_one_shot,
    "apt": run_apt,
    **{method: _prune_then_lora for method in ("llm-pruner", "tp-uniform", "aptune-one-shot")},
}
