"""glibc's default allocator vs aptune's pinned mmap threshold: step time and peak RSS, side by side.

    python benchmarks/allocator_ab.py [--repeats 3] [--steps 40]

MiniLM-L6, synthetic batch 16 x 128, two workloads: peft LoRA (fixed shapes; "pinned" = from the
first step) and aptune APT at density 0.4 (pruning events at steps 2-16 of 40, so activation sizes
change; "pinned" = aptune's default, from its first pruning event; "default" =
``APTUNE_PIN_MMAP_THRESHOLD=0``). Each (workload, allocator) pair runs ``--repeats`` times, every
run in its own process, the pairs interleaved. Prints and writes ``results/allocator_ab.json`` and
``.md``: median step time over the steps after the last pruning event (all steps for LoRA), the
peak RSS of the training loop (VmHWM reset after loading), medians over the repeats, and the
ratios pinned / default.
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

RESULTS = Path(__file__).resolve().parent / "results"


def _run_once(workload: str, steps: int) -> dict:
    import torch

    from aptune.bench.measure import peak_rss_mb, reset_peak_rss
    from aptune.host_memory import pin_mmap_threshold, pinned_mmap_threshold
    from aptune.runner import load_model_and_tokenizer

    if workload == "lora":
        pin_mmap_threshold()  # from the start; APTUNE_PIN_MMAP_THRESHOLD=0 makes this a no-op
    model, _ = load_model_and_tokenizer(None, "classification", num_labels=5)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        ids = torch.randint(1000, 20000, (16, 128), generator=gen)
        batches.append(
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.arange(16) % 5}
        )
    controller = None
    if workload == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=8, lora_alpha=16, target_modules=["query", "value", "intermediate.dense"],
            modules_to_save=["classifier", "pooler"],
        )  # fmt: skip
        model = get_peft_model(model, config)
    else:
        import aptune

        controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4), total_steps=steps)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    reset_peak_rss()
    times = []
    for step in range(steps):
        began = time.perf_counter()
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        del loss  # its graph refers to the shapes before the next pruning event
        optimizer.step()
        if controller is not None:
            controller.step(optimizer)
        optimizer.zero_grad()
        times.append(time.perf_counter() - began)
    last_event = controller.schedule.events[-1] if controller is not None else 0
    return {
        "pinned": pinned_mmap_threshold(),  # APT: set by the controller at its first pruning event
        "peak_rss_mb": peak_rss_mb(),
        "step_s": statistics.median(times[last_event + 1 :] or times),
    }


def _spawn(workload: str, allocator: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    env["APTUNE_PIN_MMAP_THRESHOLD"] = "0" if allocator == "default" else ""
    cmd = [sys.executable, __file__, "--child", workload, "--steps", str(steps)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--child", choices=["lora", "apt"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run_once(args.child, args.steps)))
        return
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for workload in ("lora", "apt"):
            for allocator in ("default", "pinned"):
                result = _spawn(workload, allocator, args.steps)
                runs.setdefault(f"{workload}/{allocator}", []).append(result)
                print(f"[{repeat + 1}/{args.repeats}] {workload:4s} {allocator:7s} {result}", flush=True)
    summary = {}
    for key, results in runs.items():
        summary[key] = {
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            "step_s": statistics.median(r["step_s"] for r in results),
            "runs": results,
        }
    lines = [
        "# Allocator A/B: glibc default vs pinned 4 MiB mmap threshold",
        "",
        f"`python benchmarks/allocator_ab.py --repeats {args.repeats} --steps {args.steps}`; MiniLM-L6, "
        "batch 16 x 128, medians over the repeats (each run its own process, pairs interleaved). APT "
        "step time: median over the steps after its last pruning event.",
        "",
        "| workload | peak RSS default (MB) | pinned (MB) | ratio | step default (s) | pinned (s) | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for workload in ("lora", "apt"):
        d, p = summary[f"{workload}/default"], summary[f"{workload}/pinned"]
        lines.append(
            f"| {workload} | {d['peak_rss_mb']:.0f} | {p['peak_rss_mb']:.0f} | "
            f"{p['peak_rss_mb'] / d['peak_rss_mb']:.2f} | {d['step_s']:.3f} | {p['step_s']:.3f} | "
            f"{p['step_s'] / d['step_s']:.2f} |"
        )
    for allocator in ("default", "pinned"):
        ratio = summary[f"apt/{allocator}"]["peak_rss_mb"] / summary[f"lora/{allocator}"]["peak_rss_mb"]
        lines.append(f"\nAPT / LoRA peak RSS with the {allocator} allocator: {ratio:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "allocator_ab.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    (RESULTS / "allocator_ab.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
