"""The job plan of a benchmark: which training runs it needs, in which order, and how long they take.

`plan_jobs` turns a `aptune.bench.config.BenchConfig` into the list of `Job`s, one training process
each: the learning-rate grid's two stages (`plan_grid`, widened by `extend_grid` when a method's best
rate sits at an end of its grid), then the headline runs and ablations (`plan_headline`).
`estimate_seconds` prices a plan on the reference machine.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from aptune.bench.config import (
    ABLATIONS,
    HALFWAY_DENSITY,
    JOB_DENSITY,
    LORA_PRUNE_METHODS,
    LR_FIELDS,
    METHOD_LABELS,
    PRUNE_THEN_LORA,
    TUNING_SAMPLES,
    BenchConfig,
    tuned_prune_then_lora,
)

__all__ = ["Job", "estimate_seconds", "extend_grid", "plan_grid", "plan_headline", "plan_jobs"]


@dataclass
class Job:
    """One training run (one process): a method at a density, seed, learning rate and allocator setting.

    Attributes:
        id: Unique, file-name safe (``apt-d0.40-s0``, ``grid-ft-lr5e-05-s0``, ``lora-s0-pinned``).
        method: One of `METHODS`.
        label: Display name of its group (``"APT"``, ``"APT static rank"``, ``"LoRA+Prune (Kwon et al.)"``).
        seed: Training seed.
        density: Target density (1.0 for dense methods).
        variant: Ablation name, or ``""``.
        apt_overrides: `AptConfig` fields that differ from the APT default of the suite.
        depends: Ids of jobs that must finish first. For the LoRA+Prune methods: ``[lora job, apt
            job]`` (phase 1, and the run whose final adapter count the retraining matches; the second
            is absent when APT is not run).
        lr: Learning rate (of the retraining for LoRA+Prune); 0 until the grid has chosen it.
        phase: ``"grid"`` (learning-rate choice on dev) or ``"headline"``.
        allocator: ``"default"`` (the C library's settings) or ``"pinned"`` (aptune's mmap threshold).
        reuse: Id of a finished grid job that is this very run (same method, rate, seed, settings); its
            record is reused instead of training again.
    """

    id: str
    method: str
    label: str
    seed: int
    density: float
    variant: str = ""
    apt_overrides: dict[str, Any] = field(default_factory=dict)
    depends: list[str] = field(default_factory=list)
    lr: float = 0.0
    phase: str = "headline"
    allocator: str = "default"
    reuse: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


def _job_id(
    method: str,
    seed: int,
    density: float,
    variant: str = "",
    *,
    lr: float = 0.0,
    phase="headline",
    allocator="default",
) -> str:
    dense = method in ("ft", "lora")
    name = method + (f"-{variant}" if variant and variant != method else "")
    base = f"{name}-s{seed}" if dense else f"{name}-d{density:.2f}-s{seed}"
    if phase == "grid":
        base = f"grid-{name}-lr{lr:g}" + (f"-d{density:.2f}" if not dense else "") + f"-s{seed}"
    return base + ("-pinned" if allocator == "pinned" else "")


def _job(
    method: str,
    seed: int,
    density: float = 1.0,
    variant: str = "",
    *,
    lr: float = 0.0,
    phase: str = "headline",
    allocator: str = "default",
    depends: list[str] | None = None,
) -> Job:
    dense = method in ("ft", "lora")
    label = ABLATIONS[variant][0] if variant else METHOD_LABELS[method]
    placeholders = {JOB_DENSITY: density, HALFWAY_DENSITY: 1.0 - (1.0 - density) / 2.0}
    overrides = (
        {k: placeholders.get(v, v) if isinstance(v, str) else v for k, v in ABLATIONS[variant][1].items()}
        if variant
        else {}
    )
    job_id = _job_id(method, seed, density, variant, lr=lr, phase=phase, allocator=allocator)
    return Job(
        job_id,
        method,
        label,
        seed,
        1.0 if dense else density,
        variant,
        overrides,
        list(depends or []),
        lr,
        phase,
        allocator,
    )


def _fixed_rates(config: BenchConfig) -> dict[str, float]:
    """The configured rates; with the grid on, stand-ins from the grid until it has chosen (the
    configured rate when the grid holds it, else the grid's first), so that a plan made before the
    grid ran names the runs it will reuse."""
    rates = {method: float(getattr(config, name)) for method, name in LR_FIELDS.items()}
    if config.grid:
        for method, rate in rates.items():
            grid = config.lr_grid(method)
            if grid and not any(math.isclose(rate, g) for g in grid):
                rates[method] = grid[0]
    return rates


def plan_grid(config: BenchConfig, rates: dict[str, float] | None = None) -> tuple[list[Job], list[Job]]:
    """The learning-rate grid: ``(first, second)`` stage, one seed (``grid_seed``), default allocator.

    The first stage runs FT, LoRA and APT at every rate of their grids. The second runs the
    LoRA+Prune retraining at every adapter rate; its phase 1 is the first stage's LoRA run at LoRA's
    chosen rate, and its retraining rank matches the first stage's APT run at APT's chosen rate.
    ``rates`` holds the first stage's choices (without them, the configured rates stand in, for a
    plan or a time estimate before the grid ran).
    """
    if not config.grid:
        return [], []
    methods = config.method_list()
    rates = {**_fixed_rates(config), **(rates or {})}
    seed, d0 = config.grid_seed, config.target_density
    first: list[Job] = []
    for method in ("ft", "lora", "apt"):
        needed = method in methods or (method == "lora" and any(m in LORA_PRUNE_METHODS for m in methods))
        if needed:
            density = d0 if method == "apt" else 1.0
            first += [_job(method, seed, density, lr=lr, phase="grid") for lr in config.lr_grid(method)]
    prune_then_lora = tuned_prune_then_lora(methods)
    if prune_then_lora:  # prunes the pretrained model: no dependency, so in the first stage
        first += [
            _job(prune_then_lora, seed, d0, lr=lr, phase="grid") for lr in config.lr_grid(prune_then_lora)
        ]
    lora_id = _job_id("lora", seed, 1.0, lr=rates["lora"], phase="grid")
    apt_id = _job_id("apt", seed, d0, lr=rates["apt"], phase="grid")
    depends = [lora_id] + ([apt_id] if "apt" in methods else [])
    # the retraining rate is tuned once, on the Kwon pipeline; the Torch-Pruning baseline applies
    # "the same LoRA retraining" (its rate too) to its own pruned model
    tuned = "lora-prune-kwon" if "lora-prune-kwon" in methods else "lora-prune-tp"
    second = [
        _job(tuned, seed, d0, lr=lr, phase="grid", depends=depends)
        for lr in config.lr_grid(tuned)
        if any(m in methods for m in ("lora-prune-kwon", "lora-prune-tp"))
    ]
    return first, second


def extend_grid(config: BenchConfig, jobs: list[Job], chosen: dict[str, Any]) -> list[Job]:
    """Grid runs one step past an end of a method's grid where its best dev rate sits at that end.

    A best rate at the largest (smallest) rate tried says that a better one may lie beyond it, so the
    grid tries the next rate out, at the ratio of the two outermost rates at that end (for 5e-4, 1e-3,
    2e-3: 4e-3, then 8e-3). At most ``config.grid_extend`` rates are added past each end of the
    configured grid, under the same rule for every method.

    Args:
        config: The suite settings.
        jobs: The grid jobs so far (one stage, extensions included).
        chosen: `aptune.bench.harness.choose_rates` of those jobs.

    Returns:
        The new grid jobs (none once every best rate lies inside its grid, a run at the next rate
        has not finished, or the limit is reached).
    """
    new: list[Job] = []
    for method, entry in chosen.items():
        runs = sorted((j for j in jobs if j.phase == "grid" and j.method == method), key=lambda j: j.lr)
        rates = [j.lr for j in runs]
        configured = config.lr_grid(method)
        if entry.get("fallback") or len(rates) < 2 or not configured:
            continue
        best = float(entry["lr"])
        if math.isclose(best, rates[-1]):
            past, step, template = sum(r > max(configured) for r in rates), rates[-1] / rates[-2], runs[-1]
        elif math.isclose(best, rates[0]):
            past, step, template = sum(r < min(configured) for r in rates), rates[0] / rates[1], runs[0]
        else:
            continue
        if past >= config.grid_extend:
            continue
        lr = float(f"{best * step:.3g}")
        new.append(
            _job(method, template.seed, template.density, lr=lr, phase="grid", depends=template.depends)
        )
    return new


def plan_headline(config: BenchConfig, rates: dict[str, float] | None = None) -> list[Job]:
    """The headline jobs at the chosen ``rates`` (method -> rate; the configured rates without a grid).

    Every method at ``target_density`` for every seed under the default allocator, and again under
    the pinned setting for ``pinned_seeds``. Ablations (``one-shot`` included) run with the first
    seed, or with every seed for those ``ablation_seeds`` names; the density sweep runs with the
    first seed. A headline job equal to a grid run (same method, rate, seed and setting) reuses its
    record.
    """
    rates = {**_fixed_rates(config), **(rates or {})}
    seeds = config.seed_list()
    methods = config.method_list()
    d0 = config.target_density
    jobs: list[Job] = []

    def add(method: str, seed: int, density: float, variant: str = "", allocator: str = "default") -> Job:
        lr = rates["one-shot" if variant == "one-shot" else method]
        depends: list[str] = []
        if method in LORA_PRUNE_METHODS:  # (the prune-then-LoRA methods depend on no other run)
            depends = [_job_id("lora", seed, 1.0, allocator=allocator)]
            if "apt" in methods:
                depends.append(_job_id("apt", seed, d0, allocator=allocator))
        job = _job(method, seed, density, variant, lr=lr, allocator=allocator, depends=depends)
        tuned = "lora-prune-kwon" if "lora-prune-kwon" in methods else "lora-prune-tp"
        grid_run = method in ("ft", "lora", "apt", tuned, tuned_prune_then_lora(methods)) and (
            method in ("ft", "lora") or math.isclose(density, d0)
        )
        if config.grid and seed == config.grid_seed and allocator == "default" and not variant and grid_run:
            job.reuse = _job_id(method, seed, density, lr=lr, phase="grid")
        jobs.append(job)
        return job

    wants_lora = "lora" in methods or any(m in LORA_PRUNE_METHODS for m in methods)
    runs = [(s, "default") for s in seeds] + [(s, "pinned") for s in config.pinned_seed_list()]

    def on(method: str, seed: int) -> bool:
        # LoRA stays on every seed a LoRA+Prune method needs it as phase 1
        needed = method == "lora" and any(
            m in methods and seed in config.seeds_of(m) for m in LORA_PRUNE_METHODS
        )
        return seed in config.seeds_of(method) or needed

    for seed, allocator in runs:
        if "ft" in methods and on("ft", seed):
            add("ft", seed, 1.0, allocator=allocator)
        if wants_lora and on("lora", seed):
            add("lora", seed, 1.0, allocator=allocator)
        if "apt" in methods and on("apt", seed):
            add("apt", seed, d0, allocator=allocator)
        for method in ("lora-prune-kwon", "lora-prune-tp", *PRUNE_THEN_LORA):
            if method in methods and on(method, seed):
                add(method, seed, d0, allocator=allocator)
    first = seeds[0]
    for variant in config.ablation_list():
        for seed in config.seeds_of_ablation(variant):
            add("one-shot" if variant == "one-shot" else "apt", seed, d0, variant)
    for density in config.density_list():
        if math.isclose(density, d0):
            continue
        if "apt" in methods:
            add("apt", first, density)
        if "lora-prune-kwon" in methods:
            add("lora-prune-kwon", first, density)
    return jobs


def plan_jobs(config: BenchConfig, rates: dict[str, float] | None = None) -> list[Job]:
    """All jobs of a benchmark, in a valid order (every dependency first): the grid's two stages, then
    the headline (see `plan_grid` and `plan_headline`)."""
    first, second = plan_grid(config, rates)
    return first + second + plan_headline(config, rates)


# ------------------------------------------------------------------------------------------- estimate
def estimate_seconds(
    config: BenchConfig,
    jobs: list[Job],
    num_train: int,
    num_eval: int,
    num_test: int | None = None,
    num_heldout: int = 0,
) -> float | None:
    """Rough wall time of the whole benchmark on the reference machine (2 cores), in seconds.

    Uses ``est_seconds_per_token`` (FT training seconds per token, measured once per model) and fixed
    factors (``num_*`` count sequences of ``max_length`` tokens; ``num_heldout`` those of the held-out
    domain, evaluated after pruning and after tuning): LoRA 0.95x FT per step, the prune-then-LoRA
    baselines ``0.2 + 0.8 x density`` plus a calibration pass on ``prune_samples`` examples, APT
    ``0.45 + 0.9 x density`` (0.8x without distillation), LoRA+Prune retraining ``0.2 + 0.75 x density``
    plus its calibration (forward and backward on ``prune_samples`` examples, mask tuning two forwards per
    sub-layer); an evaluation token costs a third of a training token (dev evaluations, the test
    evaluation, and the epoch-1 test view; for a causal LM also the dev and held-out perplexities every
    method measures before tuning, after pruning for the pruned ones); 20 s per process for start-up,
    loading and export. Jobs that reuse a grid run cost nothing. ``None`` without a per-token cost.
    """
    per_token = config.est_seconds_per_token
    if per_token <= 0:
        return None
    num_test = num_eval if num_test is None else num_test
    step_tokens = config.batch_size * config.max_length
    steps = config.max_steps or math.ceil(math.ceil(num_train / config.batch_size) * config.epochs)
    step = per_token * step_tokens
    eval_seconds = per_token * num_eval * config.max_length / 3
    test_seconds = per_token * num_test * config.max_length / 3 * (2 if config.epoch1_view else 1)
    heldout_seconds = per_token * num_heldout * config.max_length / 3
    total = 0.0
    for job in jobs:
        if job.reuse:
            continue
        if job.method == "ft":
            factor, n = 1.0, steps
        elif job.method == "lora":
            factor, n = 0.95, steps
        elif job.method == "apt":
            factor, n = 0.45 + 0.9 * job.density, steps
            if (
                job.apt_overrides.get("distill") is False
                or config.apt_pretune_prune
                or not config.apt_distill
            ):
                factor *= 0.8
        elif job.method in PRUNE_THEN_LORA:
            # LoRA on every Linear of the pruned stack (the frozen weights' gradients are not
            # needed), a calibration pass with backward, and perplexity after pruning on dev and
            # the held-out domain
            factor, n = 0.2 + 0.8 * job.density, steps
            total += per_token * config.prune_samples * config.max_length * 0.85
            total += (eval_seconds + heldout_seconds) * job.density
        else:
            factor, n = 0.2 + 0.75 * job.density, max(1, round(steps * config.retrain_fraction))
            samples = config.calibration_samples if job.method == "one-shot" else config.prune_samples
            total += per_token * samples * config.max_length * 0.85
            if job.method == "lora-prune-kwon":  # mask tuning: a dense and a pruned forward per sub-layer
                total += per_token * min(samples, TUNING_SAMPLES) * config.max_length / 3 * 2 * 12
        if job.method == "apt" and config.task == "causal-lm":  # perplexities after its pruning
            total += (eval_seconds + heldout_seconds) * 0.9
        elif job.method in ("ft", "lora") and config.task == "causal-lm":  # perplexities before tuning
            total += eval_seconds + heldout_seconds
        total += factor * n * step + (config.evaluations + 1) * eval_seconds * min(1.0, factor + 0.2)
        total += test_seconds + heldout_seconds + 20
    forward = per_token * config.latency_batch * config.latency_length / 3
    pruned = sum(1 for j in jobs if j.method not in ("ft", "lora"))
    total += (config.latency_repeats + config.latency_warmup) * forward * (1 + 0.5 * pruned) + 20
    return total
