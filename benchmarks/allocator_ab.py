"""glibc's default allocator vs aptune's pinned mmap threshold: step time and peak RSS, side by side.

    python benchmarks/allocator_ab.py [--model minilm|smollm2] [--workloads lora,apt]
        [--repeats 3] [--steps 40] [--threshold BYTES]

``minilm`` (MiniLM-L6, synthetic batch 16 x 128): peft LoRA on q, v and FFN-up (fixed shapes;
"pinned" = from the first step) and aptune APT at density 0.4 (pruning events at steps 2-16 of 40,
so activation sizes change; "pinned" = aptune's default, from its first pruning event; "default" =
``APTUNE_PIN_MMAP_THRESHOLD=0``).

``smollm2`` (SmolLM2-135M, synthetic batch 4 x 256, the causal-LM loss in blocks of 512 tokens, as
the decoder suite runs it): peft LoRA on every projection, and APT at density 0.7 under the decoder
default, everything pruned once before tuning from a calibration pass of 8 examples in
micro-batches of 2 (no damage curves, to keep the pass short), the events during tuning only growing
adapter ranks; "pinned" pins right after that pass, as aptune did before it kept the C library's
threshold for runs with nothing left to prune.

Each (workload, allocator) pair runs ``--repeats`` times, every run in its own process, the pairs
interleaved. Prints and writes ``results/allocator_ab.json`` and ``.md`` (``allocator_ab_smollm2.*``
for the decoder): median step time over the steps after the last event (all steps for LoRA), the
peak RSS of the training loop (VmHWM reset after loading, and for APT on the decoder after its
calibration pass), medians over the repeats, and the ratios pinned / default.

``--threshold`` sets the pinned threshold (default: aptune's `DEFAULT_MMAP_THRESHOLD`); a
threshold other than the default writes ``allocator_ab[_<model>]_<bytes>.json`` and ``.md``.
``--whole-process`` sets it for each whole "pinned" run through glibc's ``MALLOC_MMAP_THRESHOLD_``
instead (no later heap to keep; aptune pins nothing) and writes
``allocator_ab[_<model>]_<bytes>_whole_process.*``. ``--note`` adds a sentence on the machine's
conditions to the page.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from aptune.atomic import write_json_atomic, write_text_atomic
from aptune.host_memory import DEFAULT_MMAP_THRESHOLD

RESULTS = Path(__file__).resolve().parent / "results"


#: Per model: what is loaded, the synthetic batch, the LoRA targets and APT's settings.
MODELS: dict[str, dict] = {
    "minilm": {
        "name": None,  # the built-in default
        "task": "classification",
        "batch": (16, 128),
        "lora_targets": ["query", "value", "intermediate.dense"],
        "apt": {"target_density": 0.4},
        "lm_loss_chunk": None,
        "title": "MiniLM-L6, batch 16 x 128",
        "pinned_when": "LoRA from its first step; APT at its first pruning event, as aptune does.",
    },
    "smollm2": {
        "name": "smollm2-135m",
        "task": "causal-lm",
        "batch": (4, 256),
        "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "apt": {
            "target_density": 0.7,
            "distill": False,
            "adapter_targets": ("q", "k", "v", "o", "up", "gate", "down"),
            "calibration_samples": 8,
            "calibration_batch_size": 2,
            "damage_curves": 0,  # the salience alone decides: a shorter pass, the same kind of structure
        },
        "lm_loss_chunk": 512,
        "title": "SmolLM2-135M, batch 4 x 256, chunked causal-LM loss (512 tokens)",
        "pinned_when": (
            "LoRA from its first step; APT right after its calibration pass, whose heap it keeps, so "
            "the pinned APT / LoRA ratio compares a later pin with an earlier one."
        ),
    },
}


def _batches(spec: dict, count: int, rows: int | None = None) -> list[dict]:
    import torch

    gen = torch.Generator().manual_seed(0)
    size, length = spec["batch"]
    rows = rows or size
    batches = []
    for _ in range(count):
        ids = torch.randint(1000, 20000, (rows, length), generator=gen)
        labels = ids.clone() if spec["task"] == "causal-lm" else torch.arange(rows) % 5
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return batches


def enable_checkpointing(model, use_reentrant: bool = False) -> None:
    """transformers' gradient checkpointing on ``model`` (non-reentrant by default, transformers'
    own default), under the method's current name (recent versions renamed it)."""
    kwargs = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _run_once(
    model_key: str,
    workload: str,
    steps: int,
    apt_overrides: dict | None = None,
    trace: bool = False,
    checkpointing: bool = False,
) -> dict:
    """One training loop of ``workload``; ``apt_overrides`` change APT's settings, ``trace``
    adds every step's RSS, time and trainable parameter count (``"trace"``), and ``checkpointing``
    turns on transformers' gradient checkpointing (non-reentrant, its default) before any pass,
    the calibration pass included, as the Trainer does. ``"setup_peak_rss_mb"`` is the peak of
    loading, preparing and calibrating, before the loop's peak is reset."""
    import torch

    from aptune.bench.measure import current_rss_mb, peak_rss_mb, reset_peak_rss
    from aptune.host_memory import pin_mmap_threshold, pinned_mmap_threshold
    from aptune.losses import chunked_lm_forward
    from aptune.runner import load_model_and_tokenizer

    spec = MODELS[model_key]
    if workload == "lora":
        pin_mmap_threshold()  # from the start; APTUNE_PIN_MMAP_THRESHOLD=0 makes this a no-op
    num_labels = 5 if spec["task"] == "classification" else None
    model, _ = load_model_and_tokenizer(spec["name"], spec["task"], num_labels=num_labels)
    batches = _batches(spec, 4)
    controller = None
    if workload == "lora":
        from peft import LoraConfig, get_peft_model

        extra = {"modules_to_save": ["classifier", "pooler"]} if spec["task"] == "classification" else {}
        config = LoraConfig(r=8, lora_alpha=16, target_modules=spec["lora_targets"], **extra)
        model = get_peft_model(model, config)
        if checkpointing:
            enable_checkpointing(model)
    else:
        import aptune

        apt = aptune.AptConfig(
            **{**spec["apt"], **(apt_overrides or {})}, lm_loss_chunk=spec["lm_loss_chunk"]
        )
        controller = aptune.prepare_(model, apt, total_steps=steps)
        if checkpointing:
            enable_checkpointing(model)
        if spec["task"] == "causal-lm":  # the decoder default: everything pruned before tuning
            controller.calibrate_and_prune_(_batches(spec, apt.calibration_samples // 2, rows=2))
            # nothing is left to prune, so aptune keeps the C library's threshold: "pinned" pins
            # here, where aptune did before (a no-op under APTUNE_PIN_MMAP_THRESHOLD=0)
            pin_mmap_threshold()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    chunk = spec["lm_loss_chunk"]
    setup_peak = peak_rss_mb()
    reset_peak_rss()
    times, steps_seen = [], []
    for step in range(steps):
        began = time.perf_counter()
        batch = batches[step % len(batches)]
        loss = chunked_lm_forward(model, batch, chunk) if chunk else model(**batch).loss
        loss.backward()
        del loss  # its graph refers to the shapes before the next event
        optimizer.step()
        if controller is not None:
            controller.step(optimizer)
        optimizer.zero_grad()
        times.append(time.perf_counter() - began)
        if trace:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            steps_seen.append(
                {"step": step + 1, "rss_mb": current_rss_mb(), "step_s": times[-1], "trainable": trainable}
            )
    last_event = controller.schedule.events[-1] if controller is not None else 0
    result = {
        "pinned": pinned_mmap_threshold(),  # APT: set by the controller at its first pruning event
        "peak_rss_mb": peak_rss_mb(),
        "setup_peak_rss_mb": setup_peak,
        "step_s": statistics.median(times[last_event + 1 :] or times),
    }
    if trace:
        result.update(trace=steps_seen, events=list(controller.schedule.events) if controller else [])
    return result


def child_env(
    base: dict[str, str], allocator: str, threshold: int, whole_process: bool = False
) -> dict[str, str]:
    """The environment of one child run.

    ``default`` leaves the C library's dynamic threshold alone (``APTUNE_PIN_MMAP_THRESHOLD=0``).
    ``pinned`` lets aptune pin ``threshold`` where it pins (see ``pinned_when``); with
    ``whole_process`` it is set instead through glibc's ``MALLOC_MMAP_THRESHOLD_``, from the
    process's first allocation, and aptune pins nothing.
    """
    env = {k: v for k, v in base.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    if allocator == "default":
        env["APTUNE_PIN_MMAP_THRESHOLD"] = "0"
    elif whole_process:
        env["APTUNE_PIN_MMAP_THRESHOLD"] = "0"
        env["MALLOC_MMAP_THRESHOLD_"] = str(threshold)
    else:
        env["APTUNE_PIN_MMAP_THRESHOLD"] = str(threshold)
    return env


def page_name(model_key: str, threshold: int, whole_process: bool = False) -> str:
    """``allocator_ab[_<model>][_<bytes>][_whole_process]``: the default threshold pinned by aptune
    keeps the plain name."""
    name = "allocator_ab" if model_key == "minilm" else f"allocator_ab_{model_key}"
    if threshold != DEFAULT_MMAP_THRESHOLD or whole_process:
        name += f"_{threshold}"
    if whole_process:
        name += "_whole_process"
    return name


def run_child(script: str, child_args: list[str], env: dict[str, str]) -> dict:
    """Run ``script`` with ``child_args`` in its own Python process; its last stdout line is JSON."""
    done = subprocess.run(
        [sys.executable, script, *child_args], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _spawn(
    model_key: str, workload: str, allocator: str, steps: int, threshold: int, whole_process: bool = False
) -> dict:
    env = child_env(dict(os.environ), allocator, threshold, whole_process)
    return run_child(__file__, ["--child", workload, "--model", model_key, "--steps", str(steps)], env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="minilm")
    parser.add_argument("--workloads", default="lora,apt", help="comma-separated: lora, apt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--threshold",
        type=int,
        default=DEFAULT_MMAP_THRESHOLD,
        help="the pinned mmap threshold in bytes (default: aptune's)",
    )
    parser.add_argument(
        "--whole-process",
        action="store_true",
        help="set the threshold for each whole run (MALLOC_MMAP_THRESHOLD_) instead of where aptune pins it",
    )
    parser.add_argument("--note", default="", help="appended to the machine sentence (e.g. what else ran)")
    parser.add_argument("--child", choices=["lora", "apt"])
    parser.add_argument(
        "--page-only", action="store_true", help="rewrite the .md page from the saved .json, measure nothing"
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run_once(args.model, args.child, args.steps)))
        return
    if args.threshold <= 0:
        parser.error("--threshold: give a positive number of bytes, e.g. 524288")
    name = page_name(args.model, args.threshold, args.whole_process)
    if args.page_only:
        summary = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
        # pages saved before the command was recorded: the options given now name it
        summary.setdefault("command", _command(args, args.workloads.split(",")))
    else:
        workloads = [w for w in ("lora", "apt") if w in args.workloads.split(",")]
        if not workloads:
            parser.error("--workloads: name lora, apt or both")
        summary = _measure(args, workloads)
        if args.note:
            summary["machine"]["note"] = args.note
        RESULTS.mkdir(exist_ok=True)
        write_json_atomic(RESULTS / f"{name}.json", summary)
    page = _page(args.model, summary)
    write_text_atomic(RESULTS / f"{name}.md", page)
    print(page)


def _measure(args: argparse.Namespace, workloads: list[str]) -> dict:
    """Run every (workload, allocator) pair ``repeats`` times, interleaved; medians and every run."""
    machine = {"load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count()}
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for workload in workloads:
            for allocator in ("default", "pinned"):
                result = _spawn(
                    args.model, workload, allocator, args.steps, args.threshold, args.whole_process
                )
                runs.setdefault(f"{workload}/{allocator}", []).append(result)
                print(f"[{repeat + 1}/{args.repeats}] {workload:4s} {allocator:7s} {result}", flush=True)
    summary: dict = {}
    for key, results in runs.items():
        summary[key] = {
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            "step_s": statistics.median(r["step_s"] for r in results),
            "runs": results,
        }
    summary["machine"] = machine
    summary["command"] = _command(args, workloads)
    summary["threshold"] = args.threshold
    summary["whole_process"] = args.whole_process
    return summary


def _command(args: argparse.Namespace, workloads: list[str]) -> str:
    """The command line that measures what ``args`` asks for (``--note`` left out)."""
    options = f"--model {args.model} --workloads {','.join(workloads)} --repeats {args.repeats}"
    options += f" --steps {args.steps}"
    if args.threshold != DEFAULT_MMAP_THRESHOLD:
        options += f" --threshold {args.threshold}"
    if args.whole_process:
        options += " --whole-process"
    return f"python benchmarks/allocator_ab.py {options}"


def _size(nbytes: int) -> str:
    """``4 MiB``, ``512 KiB`` or a plain byte count."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes % scale == 0:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} bytes"


def _page(model_key: str, summary: dict) -> str:
    """The Markdown page of a saved summary (see `_measure`)."""
    workloads = [w for w in ("lora", "apt") if f"{w}/default" in summary and f"{w}/pinned" in summary]
    command = summary.get("command", "python benchmarks/allocator_ab.py")
    machine = summary.get("machine")
    if machine:
        load = (
            f"1-minute load average before the first run: {machine['load_average_1min']:.2f} on "
            f"{machine['cpus']} CPUs." + (f" {machine['note']}" if machine.get("note") else "")
        )
    else:
        load = "The load of the machine before the runs was not recorded."
    lines = [
        # pages saved before the threshold was an option measured the default of the time, 4 MiB
        f"# Allocator A/B: glibc default vs pinned {_size(summary.get('threshold', 4 << 20))} mmap threshold",
        "",
        f"`{command}`; {MODELS[model_key]['title']}, medians over the repeats (each run its own "
        f"process, pairs interleaved). APT step time: median over the steps after its last event. {load}",
        "",
        "When the threshold is pinned: "
        + (
            "in the whole process, from its start (glibc's MALLOC_MMAP_THRESHOLD_; aptune pins nothing)."
            if summary.get("whole_process")
            else MODELS[model_key]["pinned_when"]
        ),
        "",
        "| workload | peak RSS default (MB) | pinned (MB) | ratio | step default (s) | pinned (s) | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for workload in workloads:
        d, p = summary[f"{workload}/default"], summary[f"{workload}/pinned"]
        lines.append(
            f"| {workload} | {d['peak_rss_mb']:.0f} | {p['peak_rss_mb']:.0f} | "
            f"{p['peak_rss_mb'] / d['peak_rss_mb']:.2f} | {d['step_s']:.3f} | {p['step_s']:.3f} | "
            f"{p['step_s'] / d['step_s']:.2f} |"
        )
    lines += [
        "",
        "Every run, in the order it ran:",
        "",
        "| workload | allocator | peak RSS (MB) | step (s) |",
    ]
    lines.append("| --- | --- | --- | --- |")
    for workload in workloads:
        for allocator in ("default", "pinned"):
            runs = summary[f"{workload}/{allocator}"]["runs"]
            rss = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in runs)
            step = ", ".join(f"{r['step_s']:.3f}" for r in runs)
            lines.append(f"| {workload} | {allocator} | {rss} | {step} |")
    if len(workloads) == 2:
        for allocator in ("default", "pinned"):
            ratio = summary[f"apt/{allocator}"]["peak_rss_mb"] / summary[f"lora/{allocator}"]["peak_rss_mb"]
            lines.append(f"\nAPT / LoRA peak RSS with the {allocator} allocator: {ratio:.2f}x")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
