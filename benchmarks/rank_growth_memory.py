"""What adapter rank growth costs a decoder's tuning step: peak RSS and step time, growth vs static.

    python benchmarks/rank_growth_memory.py [--repeats 2] [--steps 34] [--page-only]

SmolLM2-135M under the decoder default as ``allocator_ab.py --model smollm2`` runs it (synthetic
batch 4 x 256, the causal-LM loss in blocks of 512 tokens, everything pruned to density 0.7 before
tuning from a short calibration pass), with the C library's default allocator. Two arms differ only
in ``rank_allocation``: ``salience`` (aptune's default: at every event of the schedule the adapters
of the top half by importance grow towards the trainable-parameter budget) and ``static`` (ranks stay
at ``initial_rank``). Each run is its own process, the arms interleaved.

Reported per arm (medians over the repeats): the peak RSS of the tuning loop (``VmHWM`` reset after
the calibration pass), the RSS after the last step, the median step time after the last event, and
the trainable parameters at the end. The expected cost of the grown adapters themselves is their
extra parameters x 16 bytes (fp32 weight, gradient and AdamW's two moments); the page sets it against
the measured RSS difference. Writes ``results/rank_growth_memory.json`` and ``.md``.
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
NAME = "rank_growth_memory"
ARMS = ("salience", "static")
#: fp32 weight + gradient + AdamW's first and second moment, per trainable parameter
BYTES_PER_TRAINABLE = 16


def _child(arm: str, steps: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from allocator_ab import _run_once

    return _run_once("smollm2", "apt", steps, apt_overrides={"rank_allocation": arm}, trace=True)


def _spawn(arm: str, steps: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from allocator_ab import child_env, run_child

    env = child_env(dict(os.environ), "default", 0)  # the C library's default allocator in both arms
    return run_child(__file__, ["--child", arm, "--steps", str(steps)], env)


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Medians per arm and the salience - static differences, from every run's result."""
    summary: dict = {}
    for arm, results in runs.items():
        summary[arm] = {
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            "final_rss_mb": statistics.median(r["trace"][-1]["rss_mb"] for r in results),
            "step_s": statistics.median(r["step_s"] for r in results),
            "trainable_end": statistics.median(r["trace"][-1]["trainable"] for r in results),
            "trainable_start": statistics.median(r["trace"][0]["trainable"] for r in results),
        }
    if all(arm in summary for arm in ARMS):
        grown, static = summary["salience"], summary["static"]
        extra = grown["trainable_end"] - static["trainable_end"]
        summary["difference"] = {
            "peak_rss_mb": grown["peak_rss_mb"] - static["peak_rss_mb"],
            "final_rss_mb": grown["final_rss_mb"] - static["final_rss_mb"],
            "step_s": grown["step_s"] - static["step_s"],
            "extra_trainable": extra,
            "expected_state_mb": extra * BYTES_PER_TRAINABLE / 2**20,
        }
    return summary


def _page(record: dict) -> str:
    summary, machine = record["summary"], record["machine"]
    lines = [
        "# Rank growth on a decoder: peak RSS and step time, growth vs static ranks",
        "",
        f"`{record['command']}`; SmolLM2-135M, batch 4 x 256, density 0.7 pruned before tuning, C library "
        f"default allocator; medians over {record['repeats']} runs per arm, each its own process, arms "
        f"interleaved. 1-minute load average before the first run: {machine['load_average_1min']:.2f} on "
        f"{machine['cpus']} CPUs{machine.get('note', '')}.",
        "",
        "| ranks | trainable at start | at end | peak RSS (MB) | RSS after last step (MB) "
        "| step after last event (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for arm in ARMS:
        if arm in summary:
            s = summary[arm]
            lines.append(
                f"| {arm} | {s['trainable_start'] / 1e6:.2f} M | {s['trainable_end'] / 1e6:.2f} M | "
                f"{s['peak_rss_mb']:.0f} | {s['final_rss_mb']:.0f} | {s['step_s']:.3f} |"
            )
    diff = summary.get("difference")
    if diff:
        lines += [
            "",
            f"Growth minus static: peak RSS {diff['peak_rss_mb']:+.0f} MB, RSS after the last step "
            f"{diff['final_rss_mb']:+.0f} MB, step {diff['step_s']:+.3f} s. The grown adapters hold "
            f"{diff['extra_trainable'] / 1e6:.2f} M more trainable parameters: "
            f"{diff['expected_state_mb']:.0f} MB of weights, gradients and AdamW moments "
            f"({BYTES_PER_TRAINABLE} bytes each).",
        ]
    lines += ["", "Every run (peak RSS MB / step s):", ""]
    for arm in ARMS:
        runs = record["runs"].get(arm, [])
        text = ", ".join(f"{r['peak_rss_mb']:.0f} / {r['step_s']:.3f}" for r in runs)
        lines.append(f"- {arm}: {text}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=34)
    parser.add_argument("--note", default="", help="appended to the machine sentence (e.g. what else ran)")
    parser.add_argument("--child", choices=ARMS)
    parser.add_argument("--page-only", action="store_true", help="rewrite the page from the saved .json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.steps)))
        return
    if args.page_only:
        record = json.loads((RESULTS / f"{NAME}.json").read_text(encoding="utf-8"))
    else:
        machine = {"load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count()}
        if args.note:
            machine["note"] = f"; {args.note}"
        runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        for repeat in range(args.repeats):
            for arm in ARMS:
                result = _spawn(arm, args.steps)
                runs[arm].append(result)
                print(f"[{repeat + 1}/{args.repeats}] {arm}: peak {result['peak_rss_mb']:.0f} MB", flush=True)
        record = {
            "command": f"python benchmarks/{NAME}.py --repeats {args.repeats} --steps {args.steps}",
            "repeats": args.repeats,
            "machine": machine,
            "runs": runs,
            "summary": summarise(runs),
        }
        write_json_atomic(RESULTS / f"{NAME}.json", record)
    page = _page(record)
    write_text_atomic(RESULTS / f"{NAME}.md", page)
    print(page)


if __name__ == "__main__":
    main()
