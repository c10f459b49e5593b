"""SmolLM2-135M pruned once with and without `AptConfig.neuron_multiple`: structure, perplexity, exports.

    python benchmarks/neuron_multiple_smollm2.py --out DIR --dev FILE.jsonl [--density 0.7] [--multiples 1,8]

For each layout (free, uniform) and each multiple, the model is pruned once to ``--density`` from the
same calibration pass (the 16 sentences of `benchmarks/deploy_smollm2.py`; no tuning), its BBC dev
perplexity is computed on the first 16 documents of ``--dev`` (a JSON-lines file of ``{"text": ...}``,
e.g. the decoder suite's ``data/dev.jsonl``) in blocks of 256 tokens, and it is exported to
``DIR/<layout>-m<multiple>``. Writes ``benchmarks/results/neuron_multiple_smollm2.json``; time the
exports with ``benchmarks/generation_speed_smollm2.py --name ...``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from deploy_smollm2 import calibration_batches

import aptune
from aptune.atomic import write_json_atomic
from aptune.runner import load_model_and_tokenizer

RESULTS = Path(__file__).parent / "results"
_BLOCK = 256


def _perplexity(model, tokenizer, texts: list[str]) -> float:
    """Token-weighted perplexity of ``texts`` (each ending with EOS), packed into blocks of 256."""
    ids = [token for text in texts for token in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), _BLOCK):
            block = torch.tensor([ids[start : start + _BLOCK]])
            if block.shape[1] < 2:
                break
            loss = model(input_ids=block, labels=block).loss  # the model shifts the labels by one
            tokens = block.shape[1] - 1
            total, count = total + float(loss) * tokens, count + tokens
    return math.exp(total / count)


def main() -> None:
    """Prune, evaluate and export every layout and multiple; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--dev", required=True)
    parser.add_argument("--density", type=float, default=0.7)
    parser.add_argument("--multiples", default="1,8")
    parser.add_argument("--layouts", default="free,uniform")
    args = parser.parse_args()
    texts = [json.loads(line)["text"] for line in Path(args.dev).read_text().splitlines()[:16]]
    results = {"density": args.density, "dev_documents": len(texts), "block": _BLOCK, "runs": {}}
    for layout in args.layouts.split(","):
        for multiple in (int(m) for m in args.multiples.split(",")):
            model, tokenizer = load_model_and_tokenizer("smollm2-135m", "causal-lm")
            model.float()
            config = aptune.AptConfig(
                target_density=args.density,
                layout=layout,
                pretune_prune=True,
                distill=False,
                neuron_multiple=multiple,
            )
            controller = aptune.prepare_(model, config)
            controller.calibrate_and_prune_(calibration_batches(tokenizer))
            name = f"{layout}-m{multiple}"
            summary = controller.layer_summary()
            results["runs"][name] = {
                "layout": layout,
                "neuron_multiple": multiple,
                "density": controller.density(),
                "layers": summary,
                "dev_perplexity": _perplexity(model.eval(), tokenizer, texts),
            }
            aptune.export(model, controller, Path(args.out) / name, tokenizer=tokenizer)
            print(name, json.dumps(results["runs"][name])[:400], flush=True)
            RESULTS.mkdir(exist_ok=True)
            write_json_atomic(RESULTS / "neuron_multiple_smollm2.json", results, indent=2)


if __name__ == "__main__":
    main()
