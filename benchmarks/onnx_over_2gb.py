"""Check that a causal LM over protobuf's 2 GB limit exports to ONNX and runs in ONNX Runtime.

A LLaMA config with a 500k-token vocabulary and untied embeddings (578 M parameters, 2.3 GB in
float32; random weights, no download) is exported as a KV-cache graph with the last position's
logits only. The check: the files written (``model.onnx`` and ``model.onnx.data`` only), the declared
logits shape, the prompt's last-position logits against PyTorch's, and 8 greedy tokens against
transformers' ``generate``. The same model is then written as an onnxruntime-genai folder (all
positions' logits, weights in ``model.onnx.data`` beside the graph) and generates the same 8 tokens
with ``og.Generator``. Too large for the unit tests (7 GB of disk at its peak); run by hand:

    python benchmarks/onnx_over_2gb.py --work-dir /tmp/onnx-big

Writes ``benchmarks/results/onnx_over_2gb.json``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import onnxruntime
import onnxruntime_genai as og  # its version goes into the result
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from aptune.atomic import write_json_atomic
from aptune.bench.generation_speed import GenaiDecoder
from aptune.formats.onnx import export_onnx
from aptune.formats.onnx_genai import export_onnx_genai
from aptune.formats.onnx_generate import empty_caches, greedy_generate

RESULT = Path(__file__).parent / "results" / "onnx_over_2gb.json"


def genai_greedy(folder: Path, input_ids: torch.Tensor, steps: int) -> list[list[int]]:
    """The ``steps`` new tokens onnxruntime-genai generates greedily from one prompt (EOS ignored)."""
    decoder = GenaiDecoder(folder, max_length=input_ids.shape[1] + steps, ignore_eos=True)
    tokens = [decoder.prefill(input_ids[0].tolist())]
    while len(tokens) < steps:
        tokens.append(decoder.step(tokens[-1]))
    return [tokens]


def main() -> None:
    """Export the large model, run it, compare, and write the result file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, required=True, help="folder for the graph (emptied first)")
    args = parser.parse_args()
    shutil.rmtree(args.work_dir, ignore_errors=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=500_000,
        hidden_size=576,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    path = export_onnx(model, args.work_dir / "model.onnx", kv_cache=True, last_logits_only=True)
    export_seconds = time.perf_counter() - start
    files = {p.name: p.stat().st_size for p in sorted(args.work_dir.iterdir())}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    attention_mask = torch.ones_like(input_ids)
    feed = {
        "input_ids": input_ids.numpy(),
        "attention_mask": attention_mask.numpy(),
        "position_ids": np.arange(input_ids.shape[1])[None],
        **empty_caches(session, 1),
    }
    logits = session.run(["logits"], feed)[0]
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, -1:]
        reference = model.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=8, do_sample=False, pad_token_id=0
        )[:, input_ids.shape[1] :]
    # greedy_generate returns each row's prompt followed by its new tokens
    tokens = greedy_generate(session, input_ids.numpy(), attention_mask.numpy(), max_new_tokens=8)
    tokens = tokens[:, input_ids.shape[1] :]
    declared_shape = session.get_outputs()[0].shape
    del session  # frees the first graph's weights before the second export
    genai_dir = export_onnx_genai(model, args.work_dir / "genai")
    genai_files = {p.name: p.stat().st_size for p in sorted(genai_dir.iterdir())}
    genai_tokens = genai_greedy(genai_dir, input_ids, steps=8)
    result = {
        "parameters": params,
        "float32_bytes": params * 4,
        "files": files,
        "declared_logits_shape": declared_shape,
        "max_abs_logit_difference": float(np.abs(logits - expected.numpy()).max()),
        "greedy_tokens_onnx": tokens.tolist(),
        "greedy_tokens_transformers": reference.tolist(),
        "same_tokens": tokens.tolist() == reference.tolist(),
        "genai_files": genai_files,
        "greedy_tokens_onnxruntime_genai": genai_tokens,
        "genai_same_tokens": genai_tokens == reference.tolist(),
        "export_seconds": round(export_seconds, 1),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_genai": og.__version__,
        "torch": torch.__version__,
    }
    write_json_atomic(RESULT, result)
    print(result)


if __name__ == "__main__":
    main()
