"""Gradient checkpointing on a decoder: peak RSS and step time of APT and LoRA, with and without.

    python benchmarks/gradient_checkpointing_memory.py [--repeats 2] [--steps 34] [--page-only]

SmolLM2-135M as ``allocator_ab.py --model smollm2`` runs it (synthetic batch 4 x 256, the causal-LM
loss in blocks of 512 tokens, the C library's default allocator): peft LoRA (rank 8) on every
projection of the dense model, and APT at density 0.7 under the decoder default (everything pruned
before tuning from a short calibration pass, the events during tuning growing adapter ranks). Each
workload runs with transformers' gradient checkpointing off and on (non-reentrant, its default,
turned on before the calibration pass as the Trainer does), every run its own process, the four
arms interleaved.

Reported per arm (medians over the repeats): the peak RSS of the training loop (``VmHWM`` reset
after loading, preparing and calibrating), the peak of that setup (for APT its calibration pass
through the dense model), the larger of the two (the whole run's), the median step time after the
last event, and the ratios on / off and APT / LoRA. Writes
``results/gradient_checkpointing_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from aptune.atomic import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "gradient_checkpointing_memory"
WORKLOADS = ("lora", "apt")
#: arm name -> (workload, gradient checkpointing)
ARMS = {f"{w}-{'on' if on else 'off'}": (w, on) for w in WORKLOADS for on in (False, True)}
MEASURES = ("peak_rss_mb", "setup_peak_rss_mb", "run_peak_rss_mb", "step_s")


def _child(arm: str, steps: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from allocator_ab import _run_once

    workload, checkpointing = ARMS[arm]
    return _run_once("smollm2", workload, steps, checkpointing=checkpointing)


def _spawn(arm: str, steps: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from allocator_ab import child_env, run_child

    env = child_env(dict(os.environ), "default", 0)  # the C library's default allocator in every arm
    return run_child(__file__, ["--child", arm, "--steps", str(steps)], env)


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Medians per arm; per workload the ratios checkpointing on / off, and per setting APT / LoRA."""
    summary: dict = {"arms": {}, "on_over_off": {}, "apt_over_lora": {}}
    for arm, results in runs.items():
        if results:
            # the whole run's peak: the larger of the setup's and the training loop's
            results = [
                {**r, "run_peak_rss_mb": max(r["peak_rss_mb"], r["setup_peak_rss_mb"])} for r in results
            ]
            summary["arms"][arm] = {m: statistics.median(r[m] for r in results) for m in MEASURES}
    arms = summary["arms"]
    for workload in WORKLOADS:
        on, off = arms.get(f"{workload}-on"), arms.get(f"{workload}-off")
        if on and off:
            summary["on_over_off"][workload] = {m: on[m] / off[m] for m in MEASURES}
    for setting in ("off", "on"):
        apt, lora = arms.get(f"apt-{setting}"), arms.get(f"lora-{setting}")
        if apt and lora:
            summary["apt_over_lora"][setting] = {m: apt[m] / lora[m] for m in MEASURES}
    return summary


def _page(record: dict) -> str:
    summary, machine = record["summary"], record["machine"]
    lines = [
        "# Gradient checkpointing on a decoder: peak RSS and step time, APT and LoRA",
        "",
        f"`{record['command']}`; SmolLM2-135M, batch 4 x 256, chunked causal-LM loss (512 tokens), C "
        f"library default allocator; LoRA rank 8 on every projection of the dense model, APT at density "
        f"0.7 pruned before tuning; medians over {record['repeats']} runs per arm, each its own process, "
        f"arms interleaved. 1-minute load average before the first run: "
        f"{machine['load_average_1min']:.2f} on {machine['cpus']} CPUs{machine.get('note', '')}.",
        "",
        "| method | gradient checkpointing | training-loop peak RSS (MB) | setup peak RSS (MB) "
        "| whole-run peak RSS (MB) | step after last event (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for arm, (workload, on) in ARMS.items():
        s = summary["arms"].get(arm)
        if s:
            lines.append(
                f"| {workload.upper() if workload == 'apt' else 'LoRA'} | {'on' if on else 'off'} | "
                f"{s['peak_rss_mb']:.0f} | {s['setup_peak_rss_mb']:.0f} | {s['run_peak_rss_mb']:.0f} | "
                f"{s['step_s']:.3f} |"
            )
    lines.append("")
    for workload, r in summary["on_over_off"].items():
        name = "APT" if workload == "apt" else "LoRA"
        lines.append(
            f"- {name}, checkpointing on / off: training-loop peak {r['peak_rss_mb']:.2f}x, "
            f"setup peak {r['setup_peak_rss_mb']:.2f}x, whole-run peak {r['run_peak_rss_mb']:.2f}x, "
            f"step time {r['step_s']:.2f}x."
        )
    for setting, r in summary["apt_over_lora"].items():
        lines.append(
            f"- APT / LoRA, checkpointing {setting}: training-loop peak {r['peak_rss_mb']:.2f}x, "
            f"setup peak {r['setup_peak_rss_mb']:.2f}x, whole-run peak {r['run_peak_rss_mb']:.2f}x, "
            f"step time {r['step_s']:.2f}x."
        )
    lines += ["", "Every run (training-loop peak MB / setup peak MB / step s):", ""]
    for arm in ARMS:
        runs = record["runs"].get(arm, [])
        text = ", ".join(
            f"{r['peak_rss_mb']:.0f} / {r['setup_peak_rss_mb']:.0f} / {r['step_s']:.3f}" for r in runs
        )
        lines.append(f"- {arm}: {text}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=34)
    parser.add_argument("--note", default="", help="appended to the machine sentence (e.g. what else ran)")
    parser.add_argument("--child", choices=list(ARMS))
    parser.add_argument("--page-only", action="store_true", help="rewrite the page from the saved .json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.steps)))
        return
    if args.page_only:
        record = json.loads((RESULTS / f"{NAME}.json").read_text(encoding="utf-8"))
        record["summary"] = summarise(record["runs"])  # from the runs, with this version's measures
        write_json_atomic(RESULTS / f"{NAME}.json", record)
    else:
        machine = {"load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count()}
        if args.note:
            machine["note"] = f"; {args.note}"
        runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        record = {
            "command": f"python benchmarks/{NAME}.py --repeats {args.repeats} --steps {args.steps}",
            "repeats": args.repeats,
            "machine": machine,
            "runs": runs,
        }
        for repeat in range(args.repeats):
            for arm in ARMS:
                result = _spawn(arm, args.steps)
                runs[arm].append(result)
                print(f"[{repeat + 1}/{args.repeats}] {arm}: peak {result['peak_rss_mb']:.0f} MB", flush=True)
                record["summary"] = summarise(runs)
                write_json_atomic(RESULTS / f"{NAME}.json", record)  # partial results survive a stop
    page = _page(record)
    write_text_atomic(RESULTS / f"{NAME}.md", page)
    print(page)


if __name__ == "__main__":
    main()
