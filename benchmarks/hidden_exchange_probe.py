"""SmolLM2-135M: how many hidden dimensions the measured-loss pricing lets go, and at what cost.

    python benchmarks/hidden_exchange_probe.py [--model-dir DIR] [--densities 0.85 0.7]
        [--calibration-blocks 16] [--damage-blocks 2] [--eval-blocks 16] [--length 256]

On the pretrained model, after one calibration pass (BBC News training text, forward and backward;
the decoder default's kurtosis salience for heads and neurons, ``hidden_salience="norm_weighted"``
for the hidden dimensions), the hidden dimensions are priced against the heads and neurons as
``AptConfig.hidden_damage_curve`` does at a pruning event during tuning (`aptune.hidden_exchange`:
a block curve and a hidden curve measured on ``--damage-blocks`` calibration blocks, reaching 30 % of
the hidden dimensions). Then, for each density, aptune's selection with the priced hidden
dimensions competing, and the same selection with every hidden dimension kept, are masked (no
tuning) and their BBC dev perplexity, hidden dimensions removed and exported parameters (the stack
plus the tied embedding) are printed. Writes ``results/hidden_exchange_probe.json`` and ``.md``.

No tuning happens here: a run prices at every event during tuning on the tuned model, so this shows
what the pricing decides on the pretrained weights, not what a run ends at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import aptune
from aptune.atomic import write_json_atomic, write_text_atomic
from aptune.damage import hidden_curve_counts
from aptune.hidden_exchange import hidden_exchange_ranking
from aptune.scores import flat_score_vectors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2_selection_probe import add_probe_arguments, bbc_blocks, calibrate, load_model, perplexity

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "hidden_exchange_probe"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_probe_arguments(parser)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.85, 0.7])
    parser.add_argument("--damage-blocks", type=int, default=2)
    parser.add_argument("--points", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    model, tokenizer = load_model(args.model_dir)
    calib, dev_blocks = bbc_blocks(
        tokenizer, args.seed, args.length, args.calibration_blocks, args.eval_blocks
    )
    dense = perplexity(model, dev_blocks)
    print(f"dense perplexity {dense:.2f}", flush=True)
    total = sum(p.numel() for p in model.parameters())  # before any adapter is attached

    config = aptune.AptConfig(
        target_density=min(args.densities), hidden_salience="norm_weighted", distill=False, prune_hidden=True
    )
    controller = aptune.prepare_(model, config)
    sums = calibrate(model, controller, calib, args.micro_batch)
    salience = sums["kurtosis"]
    controller.scores.replace(salience)
    blocks = controller.blocks
    counts = hidden_curve_counts(blocks.hidden_size, 1.0 - config.target_density, args.points)
    damage_batches = [{"input_ids": b, "labels": b} for b in calib[: args.damage_blocks].split(1)]
    with controller._hard_mask_losses(damage_batches) as loss_of:
        priced, curves = hidden_exchange_ranking(salience, blocks, config, counts, loss_of)
    print(curves, flush=True)
    units, neurons, hidden_size = blocks.unit_counts(), blocks.neuron_counts(), blocks.hidden_size
    vectors = flat_score_vectors(priced, units, neurons, hidden_size)
    vocabulary = model.get_input_embeddings().weight.shape[0]
    embedding = vocabulary * hidden_size
    other = total - blocks.initial_params - embedding

    def measured(keep) -> dict:
        controller.set_hard_masks(keep)
        value = perplexity(model, dev_blocks)
        controller.state.clear()
        kept_hidden = int(keep.hidden.sum())
        # the stack, the tied embedding at the kept width, and the rest (norms: negligible)
        exported = float(keep.params) + vocabulary * kept_hidden + other
        return {"perplexity": value, "hidden_kept": kept_hidden, "exported_params": exported}

    rows = []
    for density in args.densities:
        row = {"density": density}
        row["priced"] = measured(blocks.select(vectors, density, config, prune_hidden=True))
        row["hidden_stay"] = measured(blocks.select(vectors, density, config, prune_hidden=False))
        print(row, flush=True)
        rows.append(row)

    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "dense": dense,
        "curves": curves,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / f"{NAME}.json", result, indent=2)
    lines = [
        "# Hidden dimensions priced by measured loss (SmolLM2-135M, no tuning)",
        "",
        f"Written by `python benchmarks/hidden_exchange_probe.py {' '.join(sys.argv[1:])}`. BBC dev "
        f"perplexity ({args.eval_blocks} blocks of {args.length} tokens) after masking; calibration on "
        f"{args.calibration_blocks} blocks of BBC training text, curves on {args.damage_blocks} of them. "
        f"Dense model: {dense:.2f}.",
        "",
        "Hidden curve (dimensions removed: loss increase): "
        + ", ".join(f"{c}: {d:.3f}" for c, d in zip(curves["hidden_counts"], curves["hidden"], strict=True)),
        "",
        "Block curve (stack parameters removed: loss increase): "
        + ", ".join(
            f"{p / 1e6:.2f} M: {d:.3f}" for p, d in zip(curves["block_params"], curves["blocks"], strict=True)
        ),
        "",
        "| density | hidden dims kept (priced) | perplexity (priced) | exported params (priced) | "
        "perplexity (every hidden dim kept) | exported params (every hidden dim kept) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        priced_row, kept_row = row["priced"], row["hidden_stay"]
        lines.append(
            f"| {row['density']} | {priced_row['hidden_kept']} | {priced_row['perplexity']:.2f} | "
            f"{priced_row['exported_params'] / 1e6:.2f} M | {kept_row['perplexity']:.2f} | "
            f"{kept_row['exported_params'] / 1e6:.2f} M |"
        )
    write_text_atomic(RESULTS / f"{NAME}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
