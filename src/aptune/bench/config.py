"""`BenchConfig` (every option of a benchmark run), the methods and ablations, and the built-in suites.

A *suite* is a named preset of `BenchConfig` (``minilm-bbc``: MiniLM-L6 on BBC News, the headline
comparison; ``smollm2-bbc``: the decoder path, SmolLM2-135M on BBC News text, perplexity), each with a
``--quick`` variant. `aptune.bench.plan` turns a config into the jobs it runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from aptune.config import ADAPTER_ROLES
from aptune.errors import ConfigError

__all__ = [
    "ABLATIONS",
    "LATENCY_FILE",
    "METHODS",
    "PLAN_FILE",
    "PLAN_ONLY_OPTIONS",
    "SUITES",
    "BenchConfig",
    "config_command",
    "differing_options",
    "result_options",
    "suite_config",
]

#: Work-folder files: the job plan the workers read, the latency phase's output, the rates the
#: learning-rate grid chose.
PLAN_FILE = "plan.json"
LATENCY_FILE = "latency.json"
RATES_FILE = "rates.json"

#: Calibration examples of Kwon et al.'s layer-wise mask tuning (the first ones of ``prune_samples``).
TUNING_SAMPLES = 128

#: Methods a benchmark can run. ``lora-prune-kwon`` and ``lora-prune-tp`` reuse the ``lora`` run of
#: the same seed as their phase 1 (and read APT's final adapter count for their retraining rank).
METHODS: tuple[str, ...] = (
    "ft",
    "lora",
    "lora-prune-kwon",
    "lora-prune-tp",
    "apt",
    "one-shot",
    "llm-pruner",
    "tp-uniform",
    "aptune-one-shot",
)

#: Methods that prune a converged LoRA model, then retrain it.
LORA_PRUNE_METHODS: tuple[str, ...] = ("lora-prune-kwon", "lora-prune-tp", "one-shot")

#: Methods that prune the pretrained model once, then tune it with peft LoRA on every Linear layer
#: (the decoder baselines, `aptune.bench.decoder_methods`); the first one present has its rate tuned.
PRUNE_THEN_LORA: tuple[str, ...] = ("llm-pruner", "tp-uniform", "aptune-one-shot")

#: Methods whose rate the grid's first stage chooses (those that depend on no other run).
GRID_FIRST_STAGE: tuple[str, ...] = ("ft", "lora", "apt", *PRUNE_THEN_LORA)

#: Allocator settings a job can run under: the C library's defaults, or aptune's pinned threshold.
ALLOCATORS: tuple[str, ...] = ("default", "pinned")

#: A per-layer head floor that no model reaches, so that every attention head is kept.
EVERY_HEAD = 1 << 20

#: An override value that stands for the job's density (resolved when the job is planned).
JOB_DENSITY = "<job density>"

#: An override value that stands for the density halfway from 1 to the job's density,
#: ``1 - (1 - d) / 2`` (the authors' LLaMA script prunes that far before tuning).
HALFWAY_DENSITY = "<halfway to the job density>"

#: APT ablations: name -> (label, AptConfig overrides). ``one-shot`` is its own method (aptune's
#: salience applied once to the converged LoRA model, then retraining).
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "static": ("APT static rank", {"rank_allocation": "static"}),
    "uniform": ("APT uniform rank growth", {"rank_allocation": "uniform"}),
    "no-distill": ("APT w/o self-distillation", {"distill": False}),
    "distill": ("APT with self-distillation", {"distill": True}),
    "kurtosis-on": ("APT kurtosis on", {"use_kurtosis": True}),
    "kurtosis-off": ("APT kurtosis off", {"use_kurtosis": False}),
    # the uniform ablations fix uniform_heads to the salience's choice they ran with before the
    # decoders' default became the measured one
    "apt-uniform": ("APT uniform layout", {"layout": "uniform", "uniform_heads": "salience"}),
    "apt-uniform-copy-heads": (
        "APT uniform layout keeping the heads that copy from the context",
        # the stock-config export with the decoder default's protection, where the suite's
        # ablations otherwise run without it (--ablation-keep-copy-heads)
        {"layout": "uniform", "uniform_heads": "salience", "keep_copy_heads": 0.3},
    ),
    "apt-uniform-all-heads": (
        "APT uniform layout with every attention head kept",
        # the stock-config export that spends the whole pruning on FFN width (and hidden dims), as
        # Torch-Pruning's uniform FFN baseline does, whose after-pruning perplexities were far lower
        # than the uniform layout's; with every head kept, copying heads need no protection
        {"layout": "uniform", "uniform_heads": "salience", "min_heads_per_layer": EVERY_HEAD},
    ),
    "apt-uniform-measured": (
        "APT uniform layout with its units per layer measured",
        # the decoders' default for the uniform layout (uniform_heads None resolves to "measured")
        {"layout": "uniform"},
    ),
    "hidden-residual": ("APT hidden dims scored with the residual path", {"hidden_salience": "residual"}),
    "hidden-block-inputs": (
        "APT hidden dims scored at the block inputs",
        {"hidden_salience": "block_inputs"},
    ),
    "hidden-norm-weighted": (
        "APT norm-weighted hidden dims",
        # they leave only during tuning, so half of the pruning is left for it
        {"hidden_salience": "norm_weighted", "pretune_density": HALFWAY_DENSITY},
    ),
    "hidden-cost-initial": ("APT hidden cost from the initial structure", {"hidden_cost": "initial"}),
    "no-damage-curves": ("APT without damage curves", {"damage_curves": 0}),
    "damage-during-tuning": (
        "APT with damage curves during tuning",
        {"tuning_damage_curves": True, "pretune_density": HALFWAY_DENSITY},
    ),
    "damage-during-tuning-copy-heads": (
        "APT with damage curves during tuning, keeping the heads that copy from the context",
        # the damage-during-tuning path with the decoder default's protection, where the suite's
        # ablations otherwise run without it
        {"tuning_damage_curves": True, "pretune_density": HALFWAY_DENSITY, "keep_copy_heads": 0.3},
    ),
    "hidden-damage": (
        "APT hidden dims priced by measured damage",
        # the heads and neurons by running salience as in APT, the hidden dims by their measured loss
        # against the blocks' (aptune.hidden_exchange), in the norm-weighted order (the best order,
        # benchmarks/results/hidden_damage_probe.md); they leave only during tuning
        {
            "hidden_damage_curve": True,
            "hidden_salience": "norm_weighted",
            "pretune_density": HALFWAY_DENSITY,
        },
    ),
    "pretune-at-target": (
        "APT pruned to the target before tuning",
        {"pretune_prune": True, "pretune_density": JOB_DENSITY},
    ),
    "all-heads": (
        "APT with every attention head kept",
        # a floor above any model's heads per layer: only FFN neurons (and hidden dims) compete
        {"min_heads_per_layer": EVERY_HEAD},
    ),
    "copy-heads": (
        "APT keeping the heads that copy from the context",
        # KV groups whose induction score reaches 0.3 (aptune.copy_heads), set before any run; since
        # that became the decoder default it asks for the default's run there
        {"keep_copy_heads": 0.3},
    ),
    "no-copy-heads": (
        "APT without protected copying heads",
        # the decoder default before it kept the KV groups whose induction score reaches 0.3
        # (aptune.copy_heads); on encoders it asks for the default's run
        {"keep_copy_heads": 0.0},
    ),
    "floors": (
        "APT with every attention head and half of every FFN kept",
        # the two floors that matched LLM-Pruner's layer recipe on both domains before tuning
        # (benchmarks/results/smollm2-selection.md, held-out section)
        {"min_heads_per_layer": EVERY_HEAD, "min_neurons_share": 0.5},
    ),
    "all-linear": (
        "APT with adapters on every linear layer",
        # what adapting every projection adds where the suite's roles are fewer (minilm-bbc: q, v,
        # up); where they are already all of them (smollm2-bbc) it asks for the default's run
        {"adapter_targets": ADAPTER_ROLES},
    ),
    "qv-only": (
        "APT with adapters on q and v only",
        # aptune's own default for decoders, measured where the suite adapts every projection
        {"adapter_targets": ("q", "v")},
    ),
    "distill-initial-copy-heads": (
        "APT distilled from the unpruned model, keeping the heads that copy from the context",
        # one teacher, the model before any pruning (causal LMs: its LM head is pretrained); token
        # predictions only, at temperature 1 (the logit distillation that recovers pruned LLMs), set
        # before any run and not tuned; with the decoder default's protection, where the suite's
        # ablations otherwise run without it (--ablation-keep-copy-heads)
        {
            "distill": True,
            "distill_teacher": "initial",
            "alpha_pred": 1.0,
            "alpha_layer": 0.0,
            "temperature": 1.0,
            "keep_copy_heads": 0.3,
        },
    ),
    "neuron-multiple-8": (
        "APT with FFN widths in multiples of 8, keeping the heads that copy from the context",
        # every layer keeps a multiple of 8 FFN neurons, the widths llama.cpp's prompt kernels
        # process fastest (benchmarks/results/llama_cpp_ffn_width.md); with the decoder default's
        # protection, where the suite's ablations otherwise run without it
        {"neuron_multiple": 8, "keep_copy_heads": 0.3},
    ),
    "pretune-halfway": (
        "APT pruned halfway before tuning, the rest during tuning",
        {"pretune_prune": True, "pretune_density": HALFWAY_DENSITY},
    ),
    "one-shot": ("APT one-shot (prune once after LoRA)", {}),
}

#: The display name of each method on the page and in the logs.
METHOD_LABELS: dict[str, str] = {
    "ft": "FT",
    "lora": "LoRA",
    "lora-prune-kwon": "LoRA+Prune (Kwon et al.)",
    "lora-prune-tp": "LoRA+Prune (Torch-Pruning)",
    "apt": "APT",
    "one-shot": "APT one-shot",
    "llm-pruner": "LLM-Pruner layer recipe + LoRA",
    "tp-uniform": "Torch-Pruning uniform FFN + LoRA",
    "aptune-one-shot": "aptune one-shot selection + LoRA",
}

#: The learning rate option of each method (used when the grid is off, and as its key in rates.json).
LR_FIELDS = {
    "ft": "ft_lr",
    "lora": "lora_lr",
    "apt": "apt_lr",
    "lora-prune-kwon": "retrain_lr",
    "lora-prune-tp": "retrain_lr",
    "one-shot": "retrain_lr",
    "llm-pruner": "retrain_lr",
    "tp-uniform": "retrain_lr",
    "aptune-one-shot": "retrain_lr",
}

#: Methods whose rate the grid tunes; the others take the rate of the method named here.
RATE_OF = {
    "lora-prune-tp": "lora-prune-kwon",
    "one-shot": "lora-prune-kwon",
    "tp-uniform": "llm-pruner",
    "aptune-one-shot": "llm-pruner",
}


def tuned_prune_then_lora(methods: list[str]) -> str | None:
    """The prune-then-LoRA method whose retraining rate the grid tunes (the others take its rate)."""
    return next((m for m in PRUNE_THEN_LORA if m in methods), None)


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
    checkpoint_steps: int = field(
        default=0,
        metadata={
            "help": "Save a checkpoint of every APT and decoder prune-then-LoRA job each N optimizer "
            "steps (0: none); a job "
            "interrupted by a later sitting resumes from its last checkpoint."
        },
    )
    dry_run: bool = field(default=False, metadata={"help": "Print the plan and time estimate only."})
    report_only: bool = field(
        default=False,
        metadata={
            "help": "Write the page from the jobs already finished in --workdir, running nothing; "
            "a page with unfinished jobs is marked partial."
        },
    )
    page_note: str = field(
        default="", metadata={"help": "A sentence printed at the top of the page (e.g. machine conditions)."}
    )
    only_jobs: str = field(
        default="",
        metadata={
            "help": "Comma-separated job ids (as --dry-run lists them, plus 'latency' and 'onnx-latency') "
            "to run in this sitting; every other unfinished part is left for a later one and the page "
            "is marked partial (default: run everything)."
        },
    )
    import_results: str = field(
        default="",
        metadata={
            "help": "A results file (<name>.json) whose finished jobs seed the work folder when they "
            "ran with these options: resumes a benchmark on another machine or in a fresh work folder."
        },
    )
    model: str = field(default="minilm-l6", metadata={"help": "Model folder, hub name or built-in name."})
    tokenizer: str = field(default="", metadata={"help": "Tokenizer (default: the model's)."})
    task: str = field(default="classification", metadata={"help": "classification | causal-lm."})
    dataset_name: str = field(default="bbc_news", metadata={"help": "Built-in data (bbc_news) or ''."})
    train_file: str = field(default="", metadata={"help": "Training file (instead of dataset_name)."})
    eval_file: str = field(default="", metadata={"help": "Dev file (instead of dataset_name)."})
    max_train_samples: int = field(default=0, metadata={"help": "Stratified training subset (0: all)."})
    max_eval_samples: int = field(default=0, metadata={"help": "Stratified dev subset (0: all)."})
    max_test_samples: int = field(default=0, metadata={"help": "Stratified test subset (0: all)."})
    test_file: str = field(default="", metadata={"help": "Test file (default: split off the training data)."})
    dev_fraction: float = field(default=0.15, metadata={"help": "Share of the deduplicated data for dev."})
    test_fraction: float = field(default=0.15, metadata={"help": "Share of the deduplicated data for test."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the stratified train/dev/test split."})
    max_length: int = field(default=128, metadata={"help": "Tokens per training input."})
    batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    epochs: float = field(default=3.0, metadata={"help": "Training epochs of every method."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps (overrides epochs; 0: off)."})
    evaluations: int = field(default=6, metadata={"help": "Dev evaluations per run (the TTA cadence)."})
    seeds: str = field(default="0,1,2", metadata={"help": "Seeds of the headline comparison."})
    methods: str = field(
        default="ft,lora,lora-prune-kwon,lora-prune-tp,apt", metadata={"help": "Methods to compare."}
    )
    target_density: float = field(default=0.4, metadata={"help": "Density of the headline comparison."})
    densities: str = field(
        default="", metadata={"help": "Density sweep of APT and LoRA+Prune (Kwon), first seed ('' off)."}
    )
    ablations: str = field(
        default="one-shot",
        metadata={"help": f"APT ablations, comma-separated: {', '.join(ABLATIONS)}."},
    )
    ablation_seeds: str = field(
        default="",
        metadata={"help": "Ablations run on every headline seed; the others on the first seed only."},
    )
    reference: str = field(default="ft", metadata={"help": "Method whose final metric sets the TTA bar."})
    tta_fraction: float = field(default=0.97, metadata={"help": "TTA bar: this share of the reference."})
    grid: bool = field(
        default=True, metadata={"help": "Choose every method's learning rate on dev from its grid first."}
    )
    grid_seed: int = field(default=0, metadata={"help": "Seed of the learning-rate grid runs."})
    grid_extend: int = field(
        default=2,
        metadata={
            "help": "Rates the grid may add past each end: while a method's best dev rate is the largest "
            "(smallest) it tried, it tries one more, a grid step further, up to this many per end."
        },
    )
    ft_lr_grid: str = field(default="2e-5,5e-5,1e-4", metadata={"help": "Learning rates FT tries."})
    adapter_lr_grid: str = field(
        default="2e-4,5e-4,1e-3,2e-3",
        metadata={"help": "Learning rates LoRA, APT and the LoRA+Prune retraining try."},
    )
    ft_lr: float = field(default=5e-5, metadata={"help": "Learning rate of FT (without --grid)."})
    lora_lr: float = field(default=5e-4, metadata={"help": "Learning rate of LoRA (without --grid)."})
    apt_lr: float = field(default=1e-3, metadata={"help": "Learning rate of APT (without --grid)."})
    retrain_lr: float = field(
        default=5e-4, metadata={"help": "Learning rate of the LoRA+Prune retraining (without --grid)."}
    )
    pinned_seeds: str = field(
        default="0",
        metadata={"help": "Headline seeds run a second time under aptune's pinned allocator setting."},
    )
    epoch1_view: bool = field(
        default=True, metadata={"help": "Evaluate on test after epoch 1 too (the 1-epoch view)."}
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank (and APT's initial rank)."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scaling alpha / rank)."})
    adapter_roles: str = field(default="q,v,up", metadata={"help": "Roles with adapters (LoRA and APT)."})
    retrain_fraction: float = field(
        default=1.0, metadata={"help": "LoRA+Prune retraining length, as a share of the run length."}
    )
    calibration_samples: int = field(
        default=128, metadata={"help": "Examples of APT's (and one-shot's) calibration pass."}
    )
    prune_samples: int = field(
        default=256,
        metadata={"help": "Calibration examples of the LoRA+Prune pruning (Fisher, Taylor, mask tuning)."},
    )
    retrain_rank: int = field(
        default=0, metadata={"help": "LoRA+Prune retraining rank (0: match APT's final adapter count)."}
    )
    apt_pretune_prune: bool = field(
        default=False, metadata={"help": "APT prunes once before tuning (the paper's LLaMA mode)."}
    )
    apt_distill: bool = field(
        default=False, metadata={"help": "APT self-distillation (aptune's default: off)."}
    )
    ablation_keep_copy_heads: float | None = field(
        default=None,
        metadata={
            "help": "AptConfig.keep_copy_heads of every APT ablation that does not set it (default: "
            "APT's); the decoder suite's ablations ran with 0, before copy-head protection became "
            "the default."
        },
    )
    apt_num_events: int = field(default=6, metadata={"help": "APT pruning events (AptConfig.num_events)."})
    latency_batch: int = field(default=32, metadata={"help": "Sequences per latency forward."})
    latency_length: int = field(default=128, metadata={"help": "Tokens per latency sequence."})
    latency_repeats: int = field(default=20, metadata={"help": "Timed forwards per model (median)."})
    latency_warmup: int = field(default=3, metadata={"help": "Untimed forwards per model first."})
    threads: int = field(default=0, metadata={"help": "torch threads per job (0: torch's default)."})
    lm_loss_chunk: int = field(
        default=0,
        metadata={"help": "Causal LM: tokens per logits block of every method's training loss (0: full)."},
    )
    calibration_batch_size: int = field(
        default=2, metadata={"help": "Examples per forward/backward of the prune-then-LoRA calibration."}
    )
    heldout: str = field(
        default="",
        metadata={"help": "Causal LM: a second held-out domain, 'shakespeare' or a text file ('' none)."},
    )
    heldout_samples: int = field(
        default=0, metadata={"help": "Documents of the held-out domain (0: all; scenes for shakespeare)."}
    )
    seed_methods: str = field(
        default="",
        metadata={"help": "Methods run on every seed; the others on the first seed only ('' all)."},
    )
    recipe_first_layers: int = field(
        default=4, metadata={"help": "LLM-Pruner recipe: leading layers left whole."}
    )
    recipe_last_layers: int = field(
        default=1, metadata={"help": "LLM-Pruner recipe: trailing layers left whole."}
    )
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

    def seeds_of_ablation(self, variant: str) -> list[int]:
        """The seeds of ablation ``variant``: every headline seed if ``ablation_seeds`` names it,
        else the first."""
        seeds = self.seed_list()
        return (
            seeds if variant in _names(self.ablation_seeds, "ablation_seeds", tuple(ABLATIONS)) else seeds[:1]
        )

    def density_list(self) -> list[float]:
        """The sweep densities (empty: no sweep)."""
        return [float(x) for x in _split(self.densities)]

    def seeds_of(self, method: str) -> list[int]:
        """The headline seeds of ``method``: all of them, or the first only when ``seed_methods``
        is set and does not name it."""
        seeds = self.seed_list()
        chosen = _names(self.seed_methods, "seed_methods", METHODS)
        return seeds if not chosen or method in chosen else seeds[:1]

    def pinned_seed_list(self) -> list[int]:
        """Headline seeds that also run under the pinned allocator setting."""
        return _ints(self.pinned_seeds, "pinned_seeds")

    def lr_grid(self, method: str) -> list[float]:
        """The learning rates ``method`` tries in the grid."""
        text = self.ft_lr_grid if method == "ft" else self.adapter_lr_grid
        try:
            return [float(x) for x in _split(text)]
        except ValueError:
            raise ConfigError(
                f"bench option: learning-rate grid {text!r} is not comma-separated numbers"
            ) from None

    def role_list(self) -> tuple[str, ...]:
        """Adapter roles shared by LoRA and APT."""
        return tuple(_split(self.adapter_roles))

    def only_job_list(self) -> list[str]:
        """The job ids (and stages) ``--only-jobs`` names, in order and without repeats."""
        return list(dict.fromkeys(_split(self.only_jobs)))

    def runs_now(self, part: str) -> bool:
        """Whether this sitting may run ``part`` (a job id, ``latency`` or ``onnx-latency``)."""
        return not self.only_jobs or part in self.only_job_list()

    def results_name(self) -> str:
        """Base name of the result files."""
        return self.name or (self.suite + ("-quick" if self.quick else ""))

    def validate(self) -> None:
        """Check the fields; raise `ConfigError` naming the first bad one."""

        def bad(name: str, why: str) -> None:
            raise ConfigError(f"bench option --{name.replace('_', '-')}={getattr(self, name)!r}: {why}")

        if self.task not in ("classification", "causal-lm"):
            bad("task", "the benchmark runs classification or causal-lm")
        if self.report_only and not self.workdir:
            bad("report_only", "needs the --workdir of a benchmark that ran (it reads finished jobs only)")
        if self.report_only and self.import_results:
            bad(
                "import_results",
                "seeds a work folder, which --report-only leaves as it is; run without --report-only",
            )
        if self.report_only and self.only_jobs:
            bad("only_jobs", "names jobs to run, and --report-only runs none; drop one of the two")
        if self.only_jobs and not self.only_job_list():
            bad("only_jobs", "give comma-separated job ids (see --dry-run), or leave it empty to run all")
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
            "calibration_batch_size",
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
        for name in ("dev_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 1:
                bad(name, "must lie in (0, 1)")
        if self.dev_fraction + self.test_fraction >= 0.9:
            bad("test_fraction", "dev and test together must leave at least 10 % for training")
        if self.max_test_samples < 0 or self.prune_samples < 1 or self.retrain_rank < 0:
            bad("prune_samples", "sample counts and the retraining rank must be >= 0 (prune-samples >= 1)")
        if self.grid_extend < 0:
            bad("grid_extend", "must be >= 0 (0 keeps the grid as configured)")
        if self.checkpoint_steps < 0:
            bad("checkpoint_steps", "must be >= 0 (0 saves no checkpoints)")
        if self.grid and (not self.lr_grid("ft") or not self.lr_grid("lora")):
            bad("adapter_lr_grid", "the learning-rate grids need at least one rate each")
        self.pinned_seed_list()
        if (
            self.lm_loss_chunk < 0
            or self.heldout_samples < 0
            or min(self.recipe_first_layers, self.recipe_last_layers) < 0
        ):
            bad("lm_loss_chunk", "lm-loss-chunk, heldout-samples and the recipe's layer counts must be >= 0")
        if self.heldout and self.task != "causal-lm":
            bad("heldout", "a held-out text domain is for causal-lm suites")
        _names(self.seed_methods, "seed_methods", METHODS)
        if self.reference not in METHODS:
            bad("reference", f"choose one of {', '.join(METHODS)}")
        if not self.seed_list():
            bad("seeds", "give at least one seed")
        if not self.method_list():
            bad("methods", "give at least one method")
        self.ablation_list()
        stray = set(_names(self.ablation_seeds, "ablation_seeds", tuple(ABLATIONS))) - set(
            self.ablation_list()
        )
        if stray:
            bad("ablation_seeds", f"{', '.join(sorted(stray))} is not among --ablations; add it there too")
        if not self.role_list() or set(self.role_list()) - set(ADAPTER_ROLES):
            bad("adapter_roles", f"comma-separated roles from {', '.join(ADAPTER_ROLES)}")

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


#: Options that do not change what a job computes: a work folder resumes, and a results file seeds
#: one, across different values of these.
EXECUTION_OPTIONS: tuple[str, ...] = (
    "name",
    "results_dir",
    "workdir",
    "keep_workdir",
    "isolate",
    "checkpoint_steps",
    "dry_run",
    "report_only",
    "page_note",
    "only_jobs",
    "import_results",
    "est_seconds_per_token",  # only the printed time estimate
)


#: Options that only add or drop jobs, or change only APT settings: no other computation reads them,
#: so a work folder or an imported page planned with other values still holds valid records for the
#: jobs both plans share (an APT record whose settings differ from its job's now is stale by
#: `aptune.bench.methods.apt_settings_mismatch`).
PLAN_ONLY_OPTIONS: tuple[str, ...] = (
    "seeds",
    "seed_methods",
    "pinned_seeds",
    "ablations",
    "ablation_seeds",
    "densities",
    "ablation_keep_copy_heads",
)


def result_options(config: BenchConfig) -> dict[str, Any]:
    """The options of ``config`` that change what a job computes (all but `EXECUTION_OPTIONS` and
    `PLAN_ONLY_OPTIONS`)."""
    data = config.to_dict()
    for name in (*EXECUTION_OPTIONS, *PLAN_ONLY_OPTIONS):
        data.pop(name, None)
    return data


def differing_options(theirs: BenchConfig, ours: BenchConfig) -> list[str]:
    """Names of the `result_options` whose values differ between two configs, sorted."""
    a, b = result_options(theirs), result_options(ours)
    return sorted(name for name in b if a.get(name) != b[name])


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
        option = name.replace("_", "-")
        raise ConfigError(f"bench option --{option}: unknown {unknown}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(values))


# ---------------------------------------------------------------------------------------------- suites
#: Suite name -> (full overrides, quick overrides) on top of the `BenchConfig` defaults.
SUITES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # MiniLM-L6 + BBC News: 2,225 articles, deduplicated, stratified 70/15/15 (seed 0), 128 tokens,
    # batch 16, 3 epochs. Learning rates from the dev grid (seed 0), then 3 seeds under the C library's
    # allocator defaults and seed 0 again under aptune's pinned threshold. FT took 1.9-2.0 s per step
    # in the suite's own grid runs on 2 cores (LoRA 0.95x FT); `estimate_seconds` gives about 4.2 hours
    # in all (the work folder resumes).
    "minilm-bbc": (
        {
            "evaluations": 3,
            "retrain_fraction": 1 / 3,
            "est_seconds_per_token": 2.0 / (16 * 128),
        },
        {
            "max_train_samples": 160,
            "max_eval_samples": 48,
            "max_test_samples": 48,
            "max_length": 64,
            "batch_size": 8,
            "epochs": 1.0,
            "evaluations": 4,
            "seeds": "0",
            "pinned_seeds": "",
            "ft_lr_grid": "1e-4",
            "adapter_lr_grid": "1e-3,2e-3",
            "grid_extend": 0,  # a smoke run: a two-rate grid would always extend
            "densities": "",
            "ablations": "one-shot",
            "retrain_fraction": 1 / 3,
            "calibration_samples": 32,
            "prune_samples": 32,
            "apt_num_events": 3,  # 20 steps: 6 events would not fit between prune_start and prune_end
            "latency_batch": 8,
            "latency_warmup": 2,
            "latency_repeats": 10,
            "est_seconds_per_token": 1.2 / (16 * 128),  # not re-measured at the quick shape
        },
    ),
    # SmolLM2-135M (LLaMA, GQA) on BBC News text, perplexity, density 0.7: APT (pruning before tuning
    # to its default pretune_density, then the cubic during tuning) against three prune-then-LoRA
    # baselines at the same parameter count (LLM-Pruner's layer recipe, Torch-Pruning's uniform FFN,
    # aptune's own one-shot selection) and dense LoRA; LoRA sets the TTA bar. Data: every deduplicated
    # article, 80/10/10 (about 1,700 training articles, 850k tokens), dev 64 articles (about 28k
    # tokens), test 64 articles, and Shakespeare (16 scenes, about 30k tokens) as a held-out domain.
    # 300 optimizer steps of 4 x 256 tokens for every method (307k tokens: about a third of an epoch,
    # so no document is seen twice and nothing overfits, which the 96-document suite did after 200
    # steps); every pruned method tunes all 300 steps after its pruning before tuning. peft LoRA
    # and APT's adapters on every Linear layer (rank 8, alpha 16), chunked LM loss for every method.
    # Rates from the dev grid (seed 0): LoRA, APT and the LLM-Pruner retraining each try 3 rates, the
    # other baselines take the retraining rate. Seeds 0 and 1 for APT and the LLM-Pruner recipe (the
    # best baseline in a one-shot probe: dev perplexity 113.8 after pruning, against 181 for uniform
    # FFN and 139.9 for aptune's selection), seed 0 for the others; APT with the uniform layout
    # (seed 0) measures what a stock-config export costs. About 9 s per FT step of 4 x 256 tokens on
    # 2 cores; `estimate_seconds` gives about 11.7 hours (the work folder resumes).
    "smollm2-bbc": (
        {
            "model": "smollm2-135m",
            "task": "causal-lm",
            "dev_fraction": 0.1,
            "test_fraction": 0.1,
            "max_eval_samples": 64,
            "max_test_samples": 64,
            "max_length": 256,
            "batch_size": 4,
            "eval_batch_size": 4,  # at 8, the 49k-word logits made evaluation the peak of every method
            "max_steps": 300,
            "evaluations": 3,
            "seeds": "0,1",
            "seed_methods": "apt,llm-pruner",
            "pinned_seeds": "",
            "grid": True,
            "adapter_lr_grid": "5e-4,1e-3,2e-3",
            "epoch1_view": False,
            "methods": "lora,apt,llm-pruner,tp-uniform,aptune-one-shot",
            "target_density": 0.7,
            "densities": "",
            "ablations": "apt-uniform",
            "reference": "lora",
            "adapter_roles": "q,k,v,o,up,gate,down",
            "lora_lr": 1e-3,
            "apt_lr": 1e-3,
            "retrain_lr": 1e-3,
            "calibration_samples": 128,
            "prune_samples": 128,
            "calibration_batch_size": 2,
            "apt_pretune_prune": True,
            "apt_distill": False,
            # the ablations ran before copy-head protection became the decoder default; they are
            # compared with the no-copy-heads row
            "ablation_keep_copy_heads": 0.0,
            "lm_loss_chunk": 512,
            "heldout": "shakespeare",
            "heldout_samples": 16,
            "latency_batch": 4,
            "est_seconds_per_token": 9.0 / (4 * 256),
        },
        {
            "model": "smollm2-135m",
            "task": "causal-lm",
            "dev_fraction": 0.1,
            "test_fraction": 0.1,
            "max_train_samples": 32,
            "max_eval_samples": 3,
            "max_test_samples": 3,
            "max_length": 64,
            "batch_size": 2,
            "eval_batch_size": 4,
            "max_steps": 8,
            "evaluations": 1,
            "seeds": "0",
            "pinned_seeds": "",
            "grid": False,
            "epoch1_view": False,
            "methods": "lora,apt,llm-pruner,tp-uniform,aptune-one-shot",
            "target_density": 0.7,
            "densities": "",
            "ablations": "",  # the quick run stays under 5 minutes without the uniform ablation
            "reference": "lora",
            "adapter_roles": "q,k,v,o,up,gate,down",
            "lora_lr": 1e-3,
            "apt_lr": 1e-3,
            "retrain_lr": 1e-3,
            "calibration_samples": 4,
            "prune_samples": 4,
            "calibration_batch_size": 2,
            "apt_pretune_prune": True,
            "apt_distill": False,
            "apt_num_events": 1,  # 8 steps: one event between prune_start and prune_end
            "lm_loss_chunk": 64,
            "heldout": "shakespeare",
            "heldout_samples": 1,
            "latency_batch": 2,
            "latency_length": 64,
            "latency_repeats": 5,
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
        240
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
        if f.name in (
            "suite",
            "quick",
            "dry_run",
            "report_only",
            "page_note",
            "only_jobs",
            "import_results",
        ) or value == getattr(base, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            text = str(value)
            parts.append(f"{flag} {text if text and ' ' not in text else repr(text)}")
    return " ".join(parts)
