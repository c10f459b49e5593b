"""SmolLM2-135M: what removing hidden dimensions costs against heads and neurons of the same size.

    python benchmarks/hidden_damage_probe.py [--model-dir DIR] [--hidden 14 28 57]
        [--calibration-blocks 16] [--eval-blocks 16] [--length 256]

Asks whether the selection is right to keep a decoder's hidden (residual-stream) dimensions, apart
from how their scores are scaled. On the pretrained model, after one calibration pass (BBC News
training text, forward and backward, the decoder default's kurtosis salience for heads and neurons,
``hidden_salience="norm_weighted"`` for the hidden dimensions), it masks (no tuning):

- the ``k`` hidden dimensions with the lowest norm-weighted score, every head and neuron kept;
- heads and FFN neurons chosen by aptune's selection (hidden dimensions kept) with as many stack
  parameters removed as those ``k`` hidden dimensions hold (``k`` x the attention and FFN widths),
  and FFN neurons only (every head kept) with the same count;
- the same with as many parameters removed as the ``k`` dimensions take from the exported model
  (the stack's plus the tied embedding's ``k`` x vocabulary).

and prints the BBC dev perplexity of each (deduplicated split, documents packed into blocks). Writes
``results/hidden_damage_probe.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

import aptune
from aptune.atomic import write_json_atomic, write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2_selection_probe import add_probe_arguments, bbc_blocks, calibrate, load_model, perplexity

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "hidden_damage_probe"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_probe_arguments(parser)
    parser.add_argument("--hidden", type=int, nargs="+", default=[14, 28, 57])
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    model, tokenizer = load_model(args.model_dir)
    calib, dev_blocks = bbc_blocks(
        tokenizer, args.seed, args.length, args.calibration_blocks, args.eval_blocks
    )
    dense = perplexity(model, dev_blocks)
    print(f"dense perplexity {dense:.2f}", flush=True)

    config = aptune.AptConfig(target_density=0.7, hidden_salience="norm_weighted", distill=False)
    controller = aptune.prepare_(model, config)
    sums = calibrate(model, controller, calib, args.micro_batch)
    controller.scores.replace(sums["kurtosis"])
    vectors = controller._score_vectors()
    hidden_scores = sums["kurtosis"].hidden
    num_hidden = hidden_scores.numel()
    stack = controller.blocks.initial_params  # hidden x (attention + FFN widths)
    per_hidden_stack = stack / num_hidden
    vocabulary = model.get_input_embeddings().weight.shape[0]
    neurons_only = dataclasses.replace(config, min_heads_per_layer=1 << 20)  # every head kept
    everything = controller.blocks.select(vectors, 1.0, config, prune_hidden=False)

    def masked_perplexity(keep) -> float:
        controller.set_hard_masks(keep)
        value = perplexity(model, dev_blocks)
        controller.state.clear()
        return value

    rows = []
    for k in args.hidden:
        hidden_keep = torch.ones(num_hidden, dtype=torch.bool)
        hidden_keep[torch.argsort(hidden_scores)[:k]] = False
        row = {"hidden_removed": k, "stack_params_removed": k * per_hidden_stack}
        row["hidden_perplexity"] = masked_perplexity(
            dataclasses.replace(everything, hidden=hidden_keep.to(everything.hidden.device))
        )
        for label, removed, chosen in (
            ("stack", k * per_hidden_stack, config),
            ("neurons", k * per_hidden_stack, neurons_only),
            ("export", k * (per_hidden_stack + vocabulary), config),
        ):
            density = 1.0 - removed / stack
            keep = controller.blocks.select(vectors, density, chosen, prune_hidden=False)
            row[f"{label}_matched_density"] = density
            row[f"{label}_matched_perplexity"] = masked_perplexity(keep)
        print(row, flush=True)
        rows.append(row)

    result = {"args": {k: str(v) for k, v in vars(args).items()}, "dense": dense, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / f"{NAME}.json", result, indent=2)
    lines = [
        "# Hidden dimensions against heads and neurons of the same size (SmolLM2-135M, no tuning)",
        "",
        f"Written by `python benchmarks/hidden_damage_probe.py {' '.join(sys.argv[1:])}`. BBC dev perplexity "
        f"({args.eval_blocks} blocks of {args.length} tokens) after masking, calibration on "
        f"{args.calibration_blocks} blocks of BBC training text. Dense model: {dense:.2f}.",
        "",
        "| hidden dims removed | stack params removed (M) | hidden dims masked | heads + neurons, "
        "same stack params | neurons only, same stack params | heads + neurons, same exported params |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['hidden_removed']} | {row['stack_params_removed'] / 1e6:.2f} | "
            f"{row['hidden_perplexity']:.2f} | {row['stack_matched_perplexity']:.2f} "
            f"(density {row['stack_matched_density']:.3f}) | {row['neurons_matched_perplexity']:.2f} | "
            f"{row['export_matched_perplexity']:.2f} "
            f"(density {row['export_matched_density']:.3f}) |"
        )
    write_text_atomic(RESULTS / f"{NAME}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
