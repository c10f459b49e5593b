"""`BenchConfig` (every option of a benchmark run), the built-in suites, and the job plan.

A *suite* is a named preset of `BenchConfig` (``minilm-bbc``: MiniLM-L6 on BBC News, the headline
comparison; ``smollm2-bbc``: the decoder path, SmolLM2-135M on BBC News text, perplexity), each with a
``--quick`` variant. `plan_jobs` turns a config into the list of `Job`s, one training process each.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from aptune.errors import ConfigError

__all__ = [
    "ABLATIONS",
    "LATENCY_FILE",
    "METHODS",
    "PLAN_FILE",
    "SUITES",
    "BenchConfig",
    "Job",
    "config_command",
    "estimate_seconds",
    "plan_jobs",
    "suite_config",
]

#: Work-folder files: the job plan the workers read, and the latency phase's output.
PLAN_FILE = "plan.json"
LATENCY_FILE = "latency.json"

#: Methods a benchmark can run (``lora-prune`` needs the ``lora`` run of the same seed as its phase 1).
METHODS: tuple[str, ...] = ("ft", "lora", "lora-prune", "apt")

#: APT ablations: name -> (label, AptConfig overrides).
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "static": ("APT static rank", {"rank_allocation": "static"}),
    "uniform": ("APT uniform rank growth", {"rank_allocation": "uniform"}),
    "no-distill": ("APT w/o self-distillation", {"distill": False}),
    "distill": ("APT with self-distillation", {"distill": True}),
    "kurtosis-on": ("APT kurtosis on", {"use_kurtosis": True}),
    "kurtosis-off": ("APT kurtosis off", {"use_kurtosis": False}),
    "apt-uniform": ("APT uniform layout", {"layout": "uniform"}),
}

_LABELS = {"ft": "FT", "lora": "LoRA", "lora-prune": "LoRA+Prune", "apt": "APT"}


@dataclass
class BenchConfig:
    """Options of one benchmark run; a suite fills them, command-line options override single fields.

    Every method shares the model, the data split (written once to JSON Lines files in the work
    folder, so a training seed never changes the split), the sequence length, the batch size, the
    run length and the seeds.
    """

    suite: str = field(default="minilm-bbc", metadata={"help": "Preset: minilm-bbc | smollm2-bbc."})
    quick: bool = field(default=False, metadata={"help": "The suite's quick variant (a few minutes)."})
    name: str = field(default="", metadata={"help": "Results name (default: the suite, + '-quick')."})
    results_dir: str = field(
        default="benchmarks/results", metadata={"help": "Folder of <name>.md, <name>.json and plots."}
    )
    workdir: str = field(
        default="", metadata={"help": "Work folder (runs, logs); reusing one resumes finished jobs."}
    )
    keep_workdir: bool = field(default=False, metadata={"help": "Keep a temporary work folder."})
    isolate: bool = field(default=True, metadata={"help": "Run every job in its own process."})
    dry_run: bool = field(default=False, metadata={"help": "Print the plan and time estimate only."})
    model: str = field(default="minilm-l6", metadata={"help": "Model folder, hub name or built-in name."})
    tokenizer: str = field(default="", metadata={"help": "Tokenizer (default: the model's)."})
    task: str = field(default="classification", metadata={"help": "classification | causal-lm."})
    dataset_name: str = field(default="bbc_news", metadata={"help": "Built-in data (bbc_news) or ''."})
    train_file: str = field(default="", metadata={"help": "Training file (instead of dataset_name)."})
    eval_file: str = field(default="", metadata={"help": "Dev file (instead of dataset_name)."})
    max_train_samples: int = field(default=0, metadata={"help": "Stratified training subset (0: all)."})
    max_eval_samples: int = field(default=0, metadata={"help": "Stratified dev subset (0: all)."})
    max_length: int = field(default=128, metadata={"help": "Tokens per training input."})
    batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs of every method."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps (overrides epochs; 0: off)."})
    evaluations: int = field(default=6, metadata={"help": "Dev evaluations per run (the TTA cadence)."})
    seeds: str = field(default="0,1,2", metadata={"help": "Seeds of the headline comparison."})
    methods: str = field(default="ft,lora,lora-prune,apt", metadata={"help": "Methods to compare."})
    target_density: float = field(default=0.4, metadata={"help": "Density of the headline comparison."})
    densities: str = field(
        default="0.3,0.4,0.5,0.6,0.7", metadata={"help": "Density sweep of APT and LoRA+Prune ('' off)."}
    )
    ablations: str = field(
        default="static,uniform,distill,kurtosis-on",
        metadata={"help": "APT ablations: static, uniform, distill, no-distill, kurtosis-on, kurtosis-off."},
    )
    reference: str = field(default="ft", metadata={"help": "Method whose final metric sets the TTA bar."})
    tta_fraction: float = field(default=0.97, metadata={"help": "TTA bar: this share of the reference."})
    ft_lr: float = field(default=5e-5, metadata={"help": "Learning rate of FT."})
    lora_lr: float = field(default=5e-4, metadata={"help": "Learning rate of LoRA (and its retraining)."})
    apt_lr: float = field(default=1e-3, metadata={"help": "Learning rate of APT."})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank (and APT's initial rank)."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scaling alpha / rank)."})
    adapter_roles: str = field(default="q,v,up", metadata={"help": "Roles with adapters (LoRA and APT)."})
    retrain_fraction: float = field(
        default=1.0, metadata={"help": "LoRA+Prune retraining length, as a share of the run length."}
    )
    calibration_samples: int = field(
        default=128, metadata={"help": "Examples of the one-shot pruning calibration pass."}
    )
    apt_pretune_prune: bool = field(
        default=False, metadata={"help": "APT prunes once before tuning (the paper's LLaMA mode)."}
    )
    apt_distill: bool = field(
        default=False, metadata={"help": "APT self-distillation (aptune's default: off)."}
    )
    apt_num_events: int = field(default=6, metadata={"help": "APT pruning events (AptConfig.num_events)."})
    latency_batch: int = field(default=32, metadata={"help": "Sequences per latency forward."})
    latency_length: int = field(default=128, metadata={"help": "Tokens per latency sequence."})
    latency_repeats: int = field(default=20, metadata={"help": "Timed forwards per model (median)."})
    latency_warmup: int = field(default=3, metadata={"help": "Untimed forwards per model first."})
    threads: int = field(default=0, metadata={"help": "torch threads per job (0: torch's default)."})
    est_seconds_per_token: float = field(
        default=0.0, metadata={"help": "FT training seconds per token, for the time estimate (0: none)."}
    )

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ parsed views
    def seed_list(self) -> list[int]:
        """The headline seeds."""
        return _ints(self.seeds, "seeds")

    def method_list(self) -> list[str]:
        """The methods, in the order given."""
        return _names(self.methods, "methods", METHODS)

    def ablation_list(self) -> list[str]:
        """The APT ablations."""
        return _names(self.ablations, "ablations", tuple(ABLATIONS))

    def density_list(self) -> list[float]:
        """The sweep densities (empty: no sweep)."""
        return [float(x) for x in _split(self.densities)]

    def role_list(self) -> tuple[str, ...]:
        """Adapter roles shared by LoRA and APT."""
        return tuple(_split(self.adapter_roles))

    def results_name(self) -> str:
        """Base name of the result files."""
        return self.name or (self.suite + ("-quick" if self.quick else ""))

    def validate(self) -> None:
        """Check the fields; raise `ConfigError` naming the first bad one."""

        def bad(name: str, why: str) -> None:
            raise ConfigError(f"bench option --{name.replace('_', '-')}={getattr(self, name)!r}: {why}")

        if self.task not in ("classification", "causal-lm"):
            bad("task", "the benchmark runs classification or causal-lm")
        if not self.dataset_name and not self.train_file:
            bad("train_file", "give --train-file (and --eval-file) or --dataset-name bbc_news")
        if self.dataset_name and self.dataset_name != "bbc_news":
            bad("dataset_name", "the only built-in data set is bbc_news; pass --train-file/--eval-file")
        for name in (
            "max_length",
            "batch_size",
            "eval_batch_size",
            "lora_rank",
            "latency_batch",
            "apt_num_events",
        ):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in ("latency_length",):
            if getattr(self, name) < 2:
                bad(name, "must be >= 2")
        if self.latency_repeats < 1 or self.latency_warmup < 0:
            bad("latency_repeats", "needs >= 1 timed and >= 0 warm-up forwards")
        if self.epochs <= 0 and self.max_steps <= 0:
            bad("epochs", "must be > 0 (or set --max-steps)")
        if self.max_steps < 0 or self.max_train_samples < 0 or self.max_eval_samples < 0:
            bad("max_steps", "max-steps and sample limits must be >= 0")
        if self.evaluations < 1:
            bad("evaluations", "time-to-accuracy needs >= 1 evaluation per run")
        if not 0 < self.target_density <= 1:
            bad("target_density", "must lie in (0, 1]")
        for d in self.density_list():
            if not 0 < d <= 1:
                bad("densities", f"{d} is not in (0, 1]")
        if not 0 < self.tta_fraction <= 1:
            bad("tta_fraction", "must lie in (0, 1]")
        if not 0 < self.retrain_fraction <= 1:
            bad("retrain_fraction", "must lie in (0, 1]")
        if self.calibration_samples < 1:
            bad("calibration_samples", "must be >= 1")
        if self.reference not in METHODS:
            bad("reference", f"choose one of {', '.join(METHODS)}")
        if not self.seed_list():
            bad("seeds", "give at least one seed")
        if not self.method_list():
            bad("methods", "give at least one method")
        self.ablation_list()
        roles = {"q", "k", "v", "o", "up", "gate", "down"}
        if not self.role_list() or set(self.role_list()) - roles:
            bad("adapter_roles", f"comma-separated roles from {sorted(roles)}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        """Inverse of `to_dict` (unknown keys are an error)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown bench option(s) {unknown}")
        return cls(**data)


def _split(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(part) for part in _split(text)]
    except ValueError:
        raise ConfigError(f"bench option --{name}={text!r}: expected comma-separated integers") from None


def _names(text: str, name: str, allowed: tuple[str, ...]) -> list[str]:
    values = _split(text)
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ConfigError(f"bench option --{name}: unknown {unknown}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(values))


# ---------------------------------------------------------------------------------------------- suites
#: Suite name -> (full overrides, quick overrides) on top of the `BenchConfig` defaults.
SUITES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # MiniLM-L6 + BBC News (1,780 / 445 articles), 128 tokens, batch 16: FT is about 1.2 s per step on
    # 2 cores, so one epoch (112 steps) per run keeps 3 headline seeds, 4 ablations and the sweep
    # within about 70 minutes (see `estimate_seconds`).
    "minilm-bbc": (
        {"est_seconds_per_token": 1.2 / (16 * 128)},
        {
            "max_train_samples": 320,
            "max_eval_samples": 120,
            "max_length": 64,
            "batch_size": 8,
            "epochs": 1.0,
            "evaluations": 4,
            "seeds": "0",
            "densities": "0.4,0.6",
            "ablations": "",
            "calibration_samples": 32,
            "latency_batch": 8,
            "latency_warmup": 2,
            "est_seconds_per_token": 1.2 / (16 * 128),
        },
    ),
    # SmolLM2-135M (LLaMA, GQA) on BBC News text, perplexity, density 0.7 with pruning before tuning
    # (the paper's LLaMA recipe: no distillation), against LoRA and LoRA+Prune; LoRA sets the TTA bar.
    "smollm2-bbc": (
        {
            "model": "smollm2-135m",
            "task": "causal-lm",
            "max_train_samples": 96,
            "max_eval_samples": 8,
            "max_length": 128,
            "batch_size": 4,
            "eval_batch_size": 4,  # at 8, the 49k-word logits made evaluation the peak of every method
            "max_steps": 30,
            "evaluations": 3,
            "seeds": "0",
            "methods": "lora,lora-prune,apt",
            "target_density": 0.7,
            "densities": "",
            "ablations": "",
            "reference": "lora",
            "lora_lr": 3e-4,
            "apt_lr": 3e-4,
            "retrain_fraction": 0.5,
            "calibration_samples": 16,
            "apt_pretune_prune": True,
            "apt_distill": False,
            "apt_num_events": 4,
            "latency_batch": 4,
            "est_seconds_per_token": 9.0 / (4 * 256),
        },
        {
            "model": "smollm2-135m",
            "task": "causal-lm",
            "max_train_samples": 16,
            "max_eval_samples": 4,
            "max_length": 64,
            "batch_size": 2,
            "eval_batch_size": 8,
            "max_steps": 17,
            "evaluations": 2,
            "seeds": "0",
            "methods": "lora,lora-prune,apt",
            "target_density": 0.7,
            "densities": "",
            "ablations": "",
            "reference": "lora",
            "lora_lr": 3e-4,
            "apt_lr": 3e-4,
            "retrain_fraction": 0.5,
            "calibration_samples": 4,
            "apt_pretune_prune": True,
            "apt_distill": False,
            "apt_num_events": 2,
            "latency_batch": 2,
            "latency_length": 64,
            "latency_warmup": 1,
            "est_seconds_per_token": 9.0 / (4 * 256),
        },
    ),
}


def suite_config(suite: str, quick: bool = False, **overrides: Any) -> BenchConfig:
    """The `BenchConfig` of a suite (its quick variant with ``quick``), with ``overrides`` applied.

    Raises:
        ConfigError: unknown suite or option.

    Example:
        >>> suite_config("minilm-bbc", quick=True).max_train_samples
        320
    """
    if suite not in SUITES:
        raise ConfigError(f"unknown bench suite {suite!r}; choose one of {', '.join(SUITES)}")
    full, fast = SUITES[suite]
    preset = fast if quick else full
    values = {**preset, "suite": suite, "quick": quick, **overrides}
    default_model = preset.get("model", BenchConfig.model)
    if values.get("model", default_model) != default_model and "est_seconds_per_token" not in overrides:
        values["est_seconds_per_token"] = 0.0  # the suite's per-token cost is for its own model
    return BenchConfig.from_dict(values)


def config_command(config: BenchConfig) -> str:
    """The ``aptune bench`` command line that reproduces ``config`` (options that differ from its suite)."""
    base = suite_config(config.suite, config.quick)
    parts = ["aptune bench", f"--suite {config.suite}"] + (["--quick"] if config.quick else [])
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in ("suite", "quick", "dry_run") or value == getattr(base, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            text = str(value)
            parts.append(f"{flag} {text if text and ' ' not in text else repr(text)}")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------------ jobs
@dataclass
class Job:
    """One training run (one process): a method at a density and seed.

    Attributes:
        id: Unique, file-name safe (``apt-d0.40-s0``, ``apt-static-d0.40-s0``).
        method: One of `METHODS`.
        label: Display name of its group (``"APT"``, ``"APT static rank"``, ``"LoRA+Prune"``).
        seed: Training seed.
        density: Target density (1.0 for dense methods).
        variant: Ablation name, or ``""``.
        apt_overrides: `AptConfig` fields that differ from the APT default of the suite.
        depends: Ids of jobs that must finish first (LoRA+Prune needs its LoRA phase).
    """

    id: str
    method: str
    label: str
    seed: int
    density: float
    variant: str = ""
    apt_overrides: dict[str, Any] = field(default_factory=dict)
    depends: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


def _job(method: str, seed: int, density: float = 1.0, variant: str = "") -> Job:
    dense = method in ("ft", "lora")
    name = method + (f"-{variant}" if variant else "")
    job_id = f"{name}-s{seed}" if dense else f"{name}-d{density:.2f}-s{seed}"
    label = ABLATIONS[variant][0] if variant else _LABELS[method]
    overrides = dict(ABLATIONS[variant][1]) if variant else {}
    depends = [f"lora-s{seed}"] if method == "lora-prune" else []
    return Job(job_id, method, label, seed, 1.0 if dense else density, variant, overrides, depends)


def plan_jobs(config: BenchConfig) -> list[Job]:
    """All jobs of a benchmark, in a valid order (every dependency first).

    Headline: every method at ``target_density`` for every seed. Ablations and the density sweep run
    with the first seed. LoRA+Prune reuses the LoRA run of its seed as its first phase (LoRA tuned for
    the whole budget), so a LoRA job is planned whenever LoRA+Prune is.
    """
    seeds = config.seed_list()
    methods = config.method_list()
    d0 = config.target_density
    jobs: list[Job] = []
    for seed in seeds:
        if "ft" in methods:
            jobs.append(_job("ft", seed))
        if "lora" in methods or "lora-prune" in methods:
            jobs.append(_job("lora", seed))
        if "lora-prune" in methods:
            jobs.append(_job("lora-prune", seed, d0))
        if "apt" in methods:
            jobs.append(_job("apt", seed, d0))
    first = seeds[0]
    for variant in config.ablation_list():
        jobs.append(_job("apt", first, d0, variant))
    for density in config.density_list():
        if math.isclose(density, d0):
            continue
        if "apt" in methods:
            jobs.append(_job("apt", first, density))
        if "lora-prune" in methods:
            jobs.append(_job("lora-prune", first, density))
    return jobs


# ------------------------------------------------------------------------------------------- estimate
def estimate_seconds(config: BenchConfig, jobs: list[Job], num_train: int, num_eval: int) -> float | None:
    """Rough wall time of the whole benchmark on the reference machine (2 cores), in seconds.

    Uses ``est_seconds_per_token`` (FT training seconds per token, measured once per model) and fixed
    factors: LoRA 0.85x FT per step, APT 0.8x at density 0.4 (dense start with a teacher, cheap end),
    LoRA+Prune retraining ``0.2 + 0.75 * density``; an evaluation token costs a third of a training
    token; 20 s per process for start-up, loading and export. ``None`` without a per-token cost.
    """
    per_token = config.est_seconds_per_token
    if per_token <= 0:
        return None
    step_tokens = config.batch_size * config.max_length
    steps = config.max_steps or math.ceil(math.ceil(num_train / config.batch_size) * config.epochs)
    step = per_token * step_tokens
    eval_seconds = per_token * num_eval * config.max_length / 3
    total = 0.0
    for job in jobs:
        if job.method == "ft":
            factor, n = 1.0, steps
        elif job.method == "lora":
            factor, n = 0.85, steps
        elif job.method == "apt":
            factor, n = 0.45 + 0.9 * job.density, steps
            if job.apt_overrides.get("distill") is False or config.apt_pretune_prune:
                factor *= 0.8
        else:
            factor, n = 0.2 + 0.75 * job.density, max(1, round(steps * config.retrain_fraction))
            total += per_token * config.calibration_samples * config.max_length * 0.85
        total += factor * n * step + (config.evaluations + 1) * eval_seconds * min(1.0, factor + 0.2) + 20
    forward = per_token * config.latency_batch * config.latency_length / 3
    pruned = sum(1 for j in jobs if j.method in ("apt", "lora-prune"))
    total += (config.latency_repeats + config.latency_warmup) * forward * (1 + 0.5 * pruned) + 20
    return total
