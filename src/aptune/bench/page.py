"""The Markdown page of a benchmark (``<name>.md``), from the output of `aptune.bench.results.summarize`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from aptune.bench.config import LORA_PRUNE_METHODS, METHOD_LABELS, RATE_OF
from aptune.bench.records import ALLOCATOR_NAMES, NOT_RUN_YET, is_headline, is_lora_prune, median_of
from aptune.report.format import DASH, NA, fmt_fixed, fmt_sig, fmt_spread
from aptune.report.tables import md_table

__all__ = ["markdown", "metric_name"]

_TTA_WHY = (
    "Why this reading: a user deploys the pruned model, so the clock stops only when a model with the "
    "structure that will be exported is as good as the bar. Counting an evaluation of a model that is "
    "still to be pruned (APT before its last pruning event, LoRA+Prune's LoRA phase) would credit "
    "accuracy the deployed model does not have. The clock starts at the method's first training step "
    "and includes every phase (LoRA+Prune: its LoRA run, calibration and pruning), evaluation excluded. "
    "A seed that never reaches the bar counts as not reached (infinitely slow), and a target that needs "
    "that method's time-to-accuracy is then missed."
)


def metric_name(summary: Mapping[str, Any]) -> str:
    """The primary metric of the benchmark (``accuracy``, ``perplexity``)."""
    return summary["reference"]["metric"]


def _tta_cell(stats: Mapping[str, Any] | None) -> str:
    if not stats:
        return DASH
    n = stats["n"]
    if stats["median"] is None:
        return f"not reached ({stats['reached']}/{n} reached)"
    text = fmt_spread({**stats, "n": stats["reached"]}, None)
    return text if stats["all_reached"] else f"{text} ({stats['reached']}/{n} reached)"


def _memory_cell(group: Mapping[str, Any], setting: str) -> str:
    return fmt_spread((group.get("peak_rss_mb_by_allocator") or {}).get(setting), 0)


def _dense_line(dense: Mapping[str, Any], pending: bool) -> str:
    if pending or not dense.get("params"):
        return "Dense model: not measured yet (the latency stage runs after every job)."
    return (
        f"Dense model: {fmt_fixed(dense['params'] / 1e6, 2)} M parameters, "
        f"{fmt_fixed(dense['latency_ms'], 1)} ms per batch, {fmt_fixed(dense['throughput'], 1)} sequences/s."
    )


def _group_table(summary: Mapping[str, Any], groups: Sequence[Mapping[str, Any]]) -> list[str]:
    metric = metric_name(summary)
    classification = metric == "accuracy"
    scale, digits = (100.0, 1) if classification else (1.0, 2)
    unit = " (%)" if classification else ""
    settings = _allocator_settings(groups)
    head = ["method", "density", "seeds", f"test {metric}{unit}", f"dev {metric}{unit}"]
    # results written before the test evaluation recorded macro-F1 have none: no empty column then
    with_f1 = classification and any(v is not None for g in groups for v in g.get("macro_f1") or [])
    if with_f1:
        head.append("test macro-F1 (%)")
    head += [
        "TTA (s)",
        "train time (s)",
        "peak RSS (MB)"
        + (", " + " / ".join(ALLOCATOR_NAMES.get(s, s) for s in settings) if len(settings) > 1 else ""),
        "step start → after pruning (s)",
        "exported params",
        "latency (ms)",
        "throughput (seq/s)",
        "latency / dense",
        "FLOP ratio",
        "FLOP-implied (ms)",
    ]
    table = []
    for g in groups:
        row = [
            g["label"],
            f"{g['density']:g}",
            str(len(set(g["seeds"]))),
            fmt_spread(g["metric"], digits, scale),
            fmt_spread(g["dev_metric"], digits, scale),
        ]
        if with_f1:
            row.append(fmt_spread(g["macro_f1"], 1, 100.0))
        start, after = median_of(g["step_start_s"]), median_of(g["step_after_pruning_s"])
        steps = DASH if start is None else fmt_sig(start) + (f" → {fmt_sig(after)}" if after else "")
        params = median_of(g["params_after"])
        row += [
            _tta_cell(g["tta_seconds"]),
            fmt_spread(g["train_seconds"], None),
            " / ".join(_memory_cell(g, s) for s in settings) if settings else DASH,
            steps,
            DASH if params is None else f"{params / 1e6:.2f} M ({100 * (g['params_ratio'] or 0):.0f} %)",
            fmt_spread(g["latency_ms"], None),
            fmt_spread(g["throughput"], None),
            fmt_spread(g["latency_ratio"], 3),
            fmt_spread(g["flop_ratio"], 3),
            fmt_spread(g["implied_ms"], None),
        ]
        table.append(row)
    return md_table(head, table, "llr" + "r" * (len(head) - 3))


def _tta_lines(summary: Mapping[str, Any], groups: Sequence[Mapping[str, Any]]) -> list[str]:
    ref = summary["reference"]
    if ref["threshold"] is None:
        return [
            f"No bar: the reference ({ref['method']}) has no {ref['split']} {ref['metric']}, so "
            "time-to-accuracy is not measured.",
            "",
        ]
    bar = f"{'>=' if ref['greater_is_better'] else '<='} {fmt_fixed(ref['threshold'], 4)}"
    lines = [
        f"Bar: {ref['fraction']:g} x {ref['method'].upper()}'s median {ref['split']} {ref['metric']} "
        f"({fmt_fixed(ref['value'], 4)} over {ref['seeds']} runs), i.e. {ref['metric']} {bar} at an "
        f"evaluation on the {ref.get('curve_split', 'dev')} split during training. Medians over seeds "
        "[min–max of the seeds that reached it].",
        "",
    ]
    phase_names: list[str] = []
    for g in groups:
        phase_names += [k for k in g.get("phases") or {} if k not in phase_names]
    head = ["method", "density", "TTA, final structure (s)", "TTA, any structure (s)", "train time (s)"]
    head += [f"{k} (s)" for k in phase_names]
    table = [
        [
            g["label"],
            f"{g['density']:g}",
            _tta_cell(g["tta_seconds"]),
            _tta_cell(g["tta_any_seconds"]),
            fmt_spread(g["train_seconds"], None),
            *[fmt_spread((g.get("phases") or {}).get(k), None) for k in phase_names],
        ]
        for g in groups
    ]
    return [*lines, *md_table(head, table, "llrrr" + "r" * len(phase_names)), "", _TTA_WHY, ""]


def _allocator_name(setting: str) -> str:
    return ALLOCATOR_NAMES.get(setting, setting)


def _allocator_settings(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """The allocator settings with a peak in any group: the defaults first, then pinned."""
    found = {s for g in groups for s, stats in (g.get("peak_rss_mb_by_allocator") or {}).items() if stats}
    return [s for s in ("default", "pinned") if s in found] + sorted(found - {"default", "pinned"})


def _memory_lines(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    settings = _allocator_settings(groups)
    if not settings:
        return ["No peak memory was measured.", ""]
    head = ["method", "density", *[f"peak RSS (MB), {ALLOCATOR_NAMES.get(s, s)}" for s in settings]]
    table = [[g["label"], f"{g['density']:g}", *[_memory_cell(g, s) for s in settings]] for g in groups]
    note = (
        "Peak RSS: the job process's own peak resident memory (Linux VmHWM, reset after the imports at "
        "the start of every job, so nothing is inherited from the parent process); LoRA+Prune counts "
        "the larger of its LoRA job and its prune-and-retrain job. Targets compare methods only under "
        "the same allocator setting."
    )
    if len(settings) == 1:
        note += f" Every job here ran with {ALLOCATOR_NAMES.get(settings[0], settings[0])}."
    return [*md_table(head, table, "ll" + "r" * len(settings)), "", note, ""]


def _onnx_lines(summary: Mapping[str, Any], groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """The exported models' latency under PyTorch and under ONNX Runtime, each relative to its dense model."""
    onnx = summary.get("onnx_latency") or {}
    if onnx.get("skipped"):
        return [f"Not measured: {onnx['skipped']}.", ""]
    if onnx.get("dense_ms") is None:
        if (summary.get("failures") or {}).get("onnx-latency") == NOT_RUN_YET:
            return ["Not measured yet: the ONNX Runtime stage runs after every job.", ""]
        return ["Not measured: the ONNX Runtime stage wrote no figures (see the failed jobs above).", ""]
    dense = summary["dense"]
    head = ["method", "density", "PyTorch (ms)", "PyTorch / dense"]
    head += ["ONNX Runtime (ms)", "ONNX Runtime / dense"]
    table = [
        [
            "Dense model",
            "1",
            fmt_sig(dense.get("latency_ms")),
            "1.000" if dense.get("latency_ms") else DASH,
            fmt_sig(onnx["dense_ms"]),
            "1.000",
        ]
    ]
    table += [
        [
            g["label"],
            f"{g['density']:g}",
            fmt_spread(g["latency_ms"], None),
            fmt_spread(g["latency_ratio"], 3),
            fmt_spread(g.get("onnx_latency_ms"), None),
            fmt_spread(g.get("onnx_latency_ratio"), 3),
        ]
        for g in groups
    ]
    settings = onnx.get("settings") or {}
    note = (
        f"The same exported models (`aptune export --format onnx`'s exporter, float32) under ONNX Runtime "
        f"{settings.get('onnxruntime', '?')} ({settings.get('provider', 'CPU')}, graph optimisation "
        f"{settings.get('graph_optimization', '?')}, intra-op threads {settings.get('threads', '?')}, as "
        f"many as torch's): batch {settings.get('batch_size', '?')} x {settings.get('seq_len', '?')} "
        f"tokens, {settings.get('warmup', '?')} untimed warm-up runs per model, then the median of "
        f"{settings.get('repeats', '?')} timed runs, dense and pruned sessions interleaved round by round "
        "in one process. Each ratio is the model's median over the dense model's median of the same engine "
        "(below 1: faster than dense)."
    )
    return [*md_table(head, table, "llrrrr"), "", note, ""]


def _job_table(summary: Mapping[str, Any]) -> list[str]:
    metric = metric_name(summary)
    head = [
        "job",
        "seed",
        "density",
        f"test {metric}",
        f"dev {metric}",
        "TTA (s)",
        "TTA any (s)",
        "train (s)",
        "allocator",
        "peak RSS (MB)",
        "latency (ms)",
        "params",
    ]
    table = [
        [
            r["id"],
            str(r["seed"]),
            f"{r['density']:g}",
            fmt_fixed(r["metric"], 4),
            fmt_fixed(r["dev_metric"], 4),
            fmt_sig(r["tta_seconds"], "not reached" if summary["reference"]["threshold"] is not None else NA),
            fmt_sig(
                r["tta_any_seconds"], "not reached" if summary["reference"]["threshold"] is not None else NA
            ),
            fmt_sig(r["train_seconds"]),
            r["allocator"],
            fmt_fixed(r["peak_rss_mb"], 0),
            fmt_sig(r["latency_ms"]),
            f"{r['params_after']:,}" if r["params_after"] else DASH,
        ]
        for r in summary["jobs"]
    ]
    return md_table(head, table, "lrr" + "r" * (len(head) - 3))


def _profile_lines(summary: Mapping[str, Any]) -> list[str]:
    profile = summary["profile"]
    lines = [f"From the headline runs with seed {profile['seed']}.", ""]
    for label, m in profile["memory"].items():
        t = profile["time"].get(label, {})
        parts = [
            f"resting RSS {fmt_fixed(m.get('resting_rss_mb'), 0)} MB",
            f"job peak {fmt_fixed(m.get('peak_rss_mb'), 0)} MB "
            f"({ALLOCATOR_NAMES.get(m.get('allocator'), m.get('allocator'))})",
        ]
        if m.get("sampled_peak_until_last_prune_mb") is not None:
            parts.append(
                "sampled peak until the last pruning event "
                f"{fmt_fixed(m['sampled_peak_until_last_prune_mb'], 0)} MB, "
                f"after it {fmt_fixed(m.get('sampled_peak_after_last_prune_mb'), 0)} MB"
            )
        if m.get("phase_peak_rss_mb"):
            parts.append(
                "peak per phase "
                + ", ".join(f"{k} {fmt_fixed(v, 0)} MB" for k, v in m["phase_peak_rss_mb"].items())
            )
        if t.get("phases"):
            parts.append("time per phase " + ", ".join(f"{k} {fmt_sig(v)} s" for k, v in t["phases"].items()))
        if t.get("teacher_seconds") is not None:
            parts.append(f"teacher forwards {fmt_sig(t['teacher_seconds'])} s")
        if t.get("step_start_s") is not None:
            text = f"step time {fmt_sig(t['step_start_s'])} s at the start"
            if t.get("step_after_pruning_s") is not None:
                text += f", {fmt_sig(t['step_after_pruning_s'])} s after the last pruning event"
            if t.get("step_after_distillation_s") is not None:
                text += f", {fmt_sig(t['step_after_distillation_s'])} s once distillation ended"
            parts.append(text)
        lines.append(f"- **{label}**: " + "; ".join(parts) + ".")
    return lines


_LR_FIELDS = (
    ("FT", "ft_lr"),
    ("LoRA", "lora_lr"),
    ("APT", "apt_lr"),
    ("LoRA+Prune retraining", "retrain_lr"),
)

#: A grid's method name: its label, and for the methods that retrain a pruned model, which rate it is.
_METHOD_NAMES = {
    method: label + (" retraining" if method in LORA_PRUNE_METHODS else "")
    for method, label in METHOD_LABELS.items()
}


def _data_lines(data: Mapping[str, Any]) -> list[str]:
    """The data the harness recorded: duplicates removed per test, the split, sizes per class per split."""
    lines: list[str] = []
    dedupe = data.get("dedupe")
    if dedupe:
        lines.append(
            f"- Deduplicated before splitting: {dedupe.get('before', '?')} examples, "
            f"{dedupe.get('removed', '?')} removed ({dedupe.get('exact', '?')} exact copies, "
            f"{dedupe.get('normalised', '?')} identical after normalising case and whitespace, "
            f"{dedupe.get('prefix', '?')} identical in the first {dedupe.get('max_length', '?')} tokens), "
            f"{dedupe.get('kept', '?')} kept."
        )
    if data.get("overlap_removed"):
        lines.append(f"- {data['overlap_removed']} training examples repeating a dev or test text removed.")
    split = data.get("split")
    if split:
        kind = "stratified by class" if split.get("stratified") else "random"
        lines.append(
            f"- Split ({kind}, seed {split.get('seed')}): train {split.get('train'):g} / dev "
            f"{split.get('dev'):g} / test {split.get('test'):g} of the deduplicated data; sizes used: "
            f"{data.get('num_train')} train, {data.get('num_eval')} dev, {data.get('num_test')} test."
        )
    counts = data.get("class_counts")
    if counts:
        names = sorted({name for per_split in counts.values() for name in per_split})
        table = [
            [split_name, *[str(per_split.get(n, 0)) for n in names], str(sum(per_split.values()))]
            for split_name, per_split in counts.items()
        ]
        lines += ["", *md_table(["split", *names, "total"], table, "l" + "r" * (len(names) + 1))]
    return lines


def _at_grid_edge(entry: Mapping[str, Any]) -> bool:
    """Whether the chosen rate is the smallest or the largest rate of the method's grid that finished
    (a rate past it that has not run, or failed, settles nothing)."""
    rates = [float(rate) for rate, value in entry["dev"].items() if value is not None]
    return len(rates) > 1 and float(entry["lr"]) in (min(rates), max(rates))


def _grid_lines(data: Mapping[str, Any]) -> list[str]:
    """The learning rates the dev grid chose, with the final dev metric of every rate tried."""
    grid = data.get("grid")
    if not grid or not grid.get("chosen"):
        return []
    lines = [
        f"Every method's learning rate is the one with the best final dev metric of its grid (seed "
        f"{grid.get('seed')}, ties to the smaller rate); the test split played no part.",
        "",
    ]
    table = []
    for method, entry in grid["chosen"].items():
        pending = set(entry.get("not_run") or ())
        scores = ", ".join(
            f"{lr}: {fmt_fixed(value, 4)}"
            if value is not None
            else f"{lr}: {'not run yet' if lr in pending else 'failed'}"
            for lr, value in entry["dev"].items()
        )
        chosen = f"{entry['lr']:g}" + (" (configured: no grid run finished)" if entry.get("fallback") else "")
        table.append([_METHOD_NAMES.get(method, method), chosen, f"dev {entry['metric']}: {scores}"])
    lines += md_table(["method", "chosen rate", "grid"], table, "lrl")
    edge = [
        _METHOD_NAMES.get(method, method)
        for method, entry in grid["chosen"].items()
        if not entry.get("fallback") and _at_grid_edge(entry)
    ]
    if edge:
        lines += [
            "",
            f"At an end of its grid: {', '.join(edge)}. A better rate may lie beyond the rates tried; a "
            "grid that extends past it would settle that.",
        ]
    if any(entry.get("not_run") for entry in grid["chosen"].values()):
        lines += [
            "",
            "The grid is not complete: a rate chosen now may change when the rest has run, and a headline "
            "job run at another rate is not shown.",
        ]
    shared = [m for m in grid.get("rates") or {} if m not in grid["chosen"] and m in RATE_OF]
    if shared:
        taken = ", ".join(f"{_METHOD_NAMES.get(m, m)} uses that of {RATE_OF[m]}" for m in shared)
        lines += ["", f"Not tuned on their own (the same LoRA retraining): {taken}."]
    return [*lines, ""]


def _apt_settings_line(
    data: Mapping[str, Any], default_changed: bool = False, ablation_keep_copy_heads: float | None = None
) -> list[str]:
    settings = data.get("apt_settings")
    if not settings:
        return []
    fields = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "format_version" and v is not None)
    threshold = data.get("copy_heads_threshold")
    if threshold is not None and settings.get("keep_copy_heads") is None:
        fields += f", keep_copy_heads {threshold:g} (the decoder default)"
    tail = (
        [
            f"- Ablations run with keep_copy_heads {ablation_keep_copy_heads:g} unless they set it "
            "(--ablation-keep-copy-heads)."
        ]
        if ablation_keep_copy_heads is not None
        else []
    )
    if default_changed:  # some records ran under an earlier library default
        return [
            "- APT's settings (its learning rate comes from the dev grid), with the library defaults of "
            'this version; a default changed after some of the runs here (see "One run, two jobs"), so '
            f"they were not all frozen before every test figure was seen: {fields}.",
            *tail,
        ]
    return [
        "- APT's settings, frozen in the suite before any test figure was looked at (its learning rate "
        f"comes from the dev grid): {fields}.",
        *tail,
    ]


def _epoch1_lines(summary: Mapping[str, Any], groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """The 1-epoch view: test metric of the model in training after its first epoch."""
    rows = [g for g in groups if g.get("epoch1_metric")]
    if not rows:
        return []
    metric = metric_name(summary)
    scale, digits = (100.0, 1) if metric == "accuracy" else (1.0, 2)
    table = [
        [g["label"], f"{g['density']:g}", fmt_spread(g["epoch1_metric"], digits, scale), g["epoch1_note"]]
        for g in rows
    ]
    head = ["method", "density", f"test {metric} after epoch 1", "structure then"]
    note = (
        "The second view: the same runs evaluated on the test split at the end of their first epoch. "
        "LoRA+Prune has no 1-epoch model (it prunes after LoRA's whole run)."
    )
    return [note, "", *md_table(head, table, "llrl"), ""]


def _rates_line(cfg: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    rates = (data.get("grid") or {}).get("rates")
    if rates:
        return (
            "- Learning rates chosen on dev (see the grid above): "
            + ", ".join(f"{_METHOD_NAMES.get(m, m)} {lr:g}" for m, lr in rates.items())
            + "."
        )
    return (
        "- Learning rates (configured, no grid): "
        + ", ".join(f"{name} {cfg[key]:g}" for name, key in _LR_FIELDS if cfg.get(key) is not None)
        + "."
    )


def _imported_latency_note(summary: Mapping[str, Any]) -> str:
    source = summary.get("latency_imported_from")
    if not source:
        return ""
    return (
        f" The latency figures are those of `{PurePath(source).name}`, measured in the sitting that wrote it "
        "on the exported models that sitting had; jobs trained since have none."
    )


def _setup_lines(summary: Mapping[str, Any]) -> list[str]:
    cfg, data, env = summary["config"], summary["data"], summary["environment"]
    length = f"{cfg['max_steps']} steps" if cfg["max_steps"] else f"{cfg['epochs']:g} epoch(s)"
    settings = summary.get("latency_settings") or {}
    first_seed = cfg["seeds"].split(",")[0]
    lat_batch = settings.get("batch_size", cfg["latency_batch"])
    lat_len = settings.get("seq_len", cfg["latency_length"])
    lat_warm = settings.get("warmup", cfg["latency_warmup"])
    lat_rep = settings.get("repeats", cfg["latency_repeats"])
    counts = ", ".join(
        f"{data[k]} {label}"
        for k, label in (("num_train", "training"), ("num_eval", "dev"), ("num_test", "test"))
        if data.get(k) is not None
    )
    return [
        f"- Model `{cfg['model']}`, task {cfg['task']}; data: {data.get('source', '?')}; "
        f"{counts or '?'} examples.",
        f"- Every method: {cfg['max_length']} tokens, batch {cfg['batch_size']}, {length}, "
        f"{cfg['evaluations']} cadence evaluations plus a final one; headline seeds {cfg['seeds']}; "
        f"ablations and sweep with seed {first_seed}. Headline figures are medians over seeds on the test "
        "split; dev is for choices only.",
        _rates_line(cfg, data),
        *_apt_settings_line(
            data, any(r.get("same_run_as") for r in summary["jobs"]), cfg.get("ablation_keep_copy_heads")
        ),
        "- Time-to-accuracy: see the section above; per-run values in the last table.",
        "- Peak RSS: see the memory section.",
        f"- Latency: exported merged models, batch {lat_batch} x {lat_len} tokens, {lat_warm} untimed "
        f"warm-up forwards per model, then the median of {lat_rep} timed forwards, all models interleaved "
        f"round by round in one process ({settings.get('threads', '?')} threads), torch.inference_mode. "
        "The FLOP ratio counts matrix-multiply FLOPs from the layer shapes; FLOP-implied latency = dense "
        "latency x FLOP ratio." + _imported_latency_note(summary),
        f"- Machine: {env['cpu_count']} CPUs, torch {env['torch']}, transformers {env['transformers']}, "
        f"peft {env['peft']}, Python {env['python']}; load average at the end "
        f"{env.get('load_average_at_end')}.",
    ]


def markdown(summary: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    """The page text.

    Args:
        summary: The output of `aptune.bench.results.summarize`.
        plots: ``{plot name: relative link}`` of the plots written.

    Returns:
        Markdown.
    """
    cfg = summary["config"]
    d0 = cfg["target_density"]
    minutes = fmt_fixed((summary["seconds"] or 0) / 60, 1)
    estimated = fmt_fixed((summary["estimate_seconds"] or 0) / 60, 1)
    failures = summary["failures"] or {}
    pending = [job_id for job_id, error in failures.items() if error == NOT_RUN_YET]
    if cfg.get("report_only"):
        origin = (
            f"Written by `{summary['command']} --report-only` on {summary['created']} from the jobs "
            f"that had finished in its work folder (estimated whole run {estimated} min)."
        )
    else:
        origin = (
            f"Written by `{summary['command']}` on {summary['created']}; whole run {minutes} min "
            f"(estimated {estimated} min)."
        )
    lines = [
        f"# Benchmark `{summary['name']}`" + (" (partial)" if pending else ""),
        "",
        f"{origin} Every number below comes from this run; `{summary['name']}.json` holds all of "
        "them, per job.",
        "",
    ]
    if cfg.get("page_note"):
        lines += [f"**Note:** {cfg['page_note']}", ""]
    if pending:
        lines += [
            f"**Partial page**: {len(pending)} part(s) of the benchmark have not run yet "
            f"({', '.join(f'`{p}`' for p in pending)}). The figures below come from the jobs that had "
            "finished; a target whose figures are missing is NOT EVALUATED, and medians may cover "
            "fewer seeds than planned.",
            "",
        ]
    resumed = [r for r in summary["jobs"] if r.get("resumed_from_steps")]
    if resumed:
        listed = ", ".join(
            f"`{r['id']}` (from step {', '.join(str(s) for s in r['resumed_from_steps'])})" for r in resumed
        )
        lines += [
            f"**Resumed from a checkpoint**: {listed}. Their training times add up the steps of every "
            "process; their peak memory is the last process's only. Metrics are unaffected.",
            "",
        ]
    shared = [r for r in summary["jobs"] if r.get("same_run_as")]
    if shared:
        listed = ", ".join(f"`{r['id']}` is the run of `{r['same_run_as']}`" for r in shared)
        lines += [
            f"**One run, two jobs**: {listed}. Their settings resolve to the same run (a default "
            "changed, so an ablation and the default now ask for the same thing), so the record is "
            "shown under both and was trained once.",
            "",
        ]
    env = summary["environment"]
    # only the load before the first job says whether others were busy
    start_load = (env.get("load_average_at_start") or [None])[0]
    if start_load is not None and env.get("cpu_count") and start_load > 0.5 * env["cpu_count"]:
        lines += [
            f"**The machine was busy** (1-minute load average {start_load:.1f} on {env['cpu_count']} CPUs "
            "before the first job): times and memory of concurrent jobs are mixed into these figures; "
            "rerun on an otherwise idle machine before quoting them.",
            "",
        ]
    if summary["quick"]:
        lines += [
            "**Quick mode**: a small subset, short runs and one seed, to check that everything works. "
            "These numbers say nothing about the method; the full suite does.",
            "",
        ]
    lines += ["## Targets", ""]
    for t in summary["targets"]:
        status = {True: "MET", False: "MISSED", None: "NOT EVALUATED"}[t["met"]]
        lines.append(f"- **{status}** — {t['claim']}: {t['measured']}.")
    failed = {job_id: error for job_id, error in failures.items() if error != NOT_RUN_YET}
    if failed:
        lines += ["", "## Failed jobs", ""]
        for job_id, error in failed.items():
            lines += [f"- `{job_id}`:", "", "```", error.strip()[-2000:], "```"]
    groups = summary["groups"]
    headline = [g for g in groups if is_headline(g, d0)]
    ablations = [g for g in groups if g["variant"]]
    sweep = sorted(
        (g for g in groups if not g["variant"] and (g["method"] == "apt" or is_lora_prune(g["method"]))),
        key=lambda g: (g["label"], g["density"]),
    )
    dense = summary["dense"]
    lines += [
        "",
        f"## Headline: density {d0:g}",
        "",
        "Medians over seeds, [min–max] when they differ.",
        "",
        *_group_table(summary, headline),
        "",
        _dense_line(dense, "latency" in pending),
        "",
        "## Exported latency: PyTorch vs ONNX Runtime",
        "",
        *_onnx_lines(summary, groups),
        "## Time to accuracy",
        "",
        *_tta_lines(summary, headline),
    ]
    if "curves" in plots:
        lines += [f"![metric over training time]({plots['curves']})", ""]
    if "tta" in plots:
        lines += [f"![time to accuracy]({plots['tta']})", ""]
    lines += ["## Peak memory by allocator setting", "", *_memory_lines(headline)]
    if len({g["density"] for g in sweep}) > 1:
        lines += ["## Density sweep", "", *_group_table(summary, sweep), ""]
        if "accuracy_vs_latency" in plots:
            lines += [f"![accuracy vs latency]({plots['accuracy_vs_latency']})", ""]
    if ablations:
        apt = [g for g in headline if g["method"] == "apt"]
        lines += [f"## APT ablations (density {d0:g})", "", *_group_table(summary, apt + ablations), ""]
    from aptune.bench.decoder_page import domain_lines, heldout_kind_lines, structure_lines

    domains = domain_lines(summary)
    if domains:
        lines += ["## Perplexity on both domains", "", *domains, ""]
    kinds = heldout_kind_lines(summary)
    if kinds:
        lines += ["## Held-out perplexity by kind of token", "", *kinds]
    structure = structure_lines(summary)
    if structure:
        lines += ["## Where each method prunes", "", *structure]
    epoch1 = _epoch1_lines(summary, headline)
    if epoch1:
        lines += ["## 1-epoch view", "", *epoch1]
    data = summary.get("data") or {}
    if data.get("dedupe") or data.get("class_counts"):
        lines += ["## Data", "", *_data_lines(data), ""]
    grid = _grid_lines(data)
    if grid:
        lines += ["## Learning rates (dev grid)", "", *grid]
    lines += ["## Profile", "", *_profile_lines(summary)]
    if "memory" in plots:
        lines += ["", f"![RSS over time]({plots['memory']})"]
    lines += ["", "## Setup", "", *_setup_lines(summary), "", "## Every run", "", *_job_table(summary), ""]
    return "\n".join(lines)
