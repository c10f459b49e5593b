"""Which KV groups of a decoder copy from the context, and which of them a pruned model kept.

The induction score (`aptune.copy_heads`) of a query head is its mean attention, on random token
sequences repeated once, from each token of the second copy to the token after its earlier
occurrence (the position an in-context copy reads); a KV group scores its best query head, and
``AptConfig.keep_copy_heads`` protects the groups above a threshold. For every exported
model named, the kept groups are identified by matching each of its key projections to the base
model's (cosine similarity of the ``[head_dim, hidden]`` blocks; tuning moves them little).

With ``--salience TEXT.jsonl`` it also ranks the KV groups by the salience of aptune's pruning
before tuning (summed over ``--rows`` blocks of ``--length`` tokens of the texts, in micro-batches
of 2, on the pretrained model), once as given and once per ``--repeat-shares`` share of blocks whose
second half is rewritten to repeat their first half: whether the salience sees the copying heads.

Usage:
    python benchmarks/induction_heads.py BASE_MODEL [NAME=EXPORTED_MODEL ...] [--out FILE.json]
        [--salience TEXT.jsonl --rows 8 --length 512 --repeat-shares 0.25]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import aptune
from aptune.atomic import write_json_atomic
from aptune.copy_heads import unit_induction_scores
from aptune.scores import summed_salience


def repeat_second_half(blocks: torch.Tensor, share: float) -> torch.Tensor:
    """``[rows, length]`` blocks with every ``1 / share``-th row's second half a copy of its first."""
    out = blocks.clone()
    half = blocks.shape[1] // 2
    for row in range(blocks.shape[0]):
        if int((row + 1) * share + 1e-9) > int(row * share + 1e-9):
            out[row, half : 2 * half] = blocks[row, :half]
    return out


def salience_ranks(base: str, blocks: torch.Tensor) -> list[int]:
    """Rank (0: least salient) of every KV group, flat over layers, by the calibration salience."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    aptune.prepare_(model, aptune.AptConfig(target_density=0.7))
    controller = model._aptune_controller
    # [rows, length] -> micro-batches of 2 rows, labels as inputs (the model shifts them)
    batches = [{"input_ids": b, "labels": b.clone()} for b in blocks.split(2)]
    total, _ = summed_salience(
        controller.model,
        batches,
        controller.state.collector,
        controller.current_salience,
        controller.batch_loss,
    )
    scores = torch.cat([h.flatten() for h in total.heads])
    return scores.argsort().argsort().tolist()


def kept_groups(
    base: dict[str, torch.Tensor], pruned: dict[str, torch.Tensor], layers: int, head_dim: int
) -> tuple[list[list[int]], float]:
    """The base model's KV groups each pruned layer kept, and the lowest winning similarity.

    Each ``head_dim`` block of rows of the pruned ``k_proj`` is matched to the base group whose
    block it is most similar to (cosine). The lowest best similarity tells how sure the matching is.
    """
    kept, weakest = [], 1.0
    for layer in range(layers):
        key = f"model.layers.{layer}.self_attn.k_proj.weight"
        reference = base[key].float()
        mine = pruned[key].float()
        # [groups * head_dim, hidden] -> [groups, head_dim * hidden]
        ref_blocks = reference.view(-1, head_dim * reference.shape[1])
        my_blocks = mine.view(-1, head_dim * mine.shape[1])
        if not my_blocks.shape[0]:  # every group of the layer was pruned
            kept.append([])
            continue
        similarity = (
            torch.nn.functional.normalize(my_blocks, dim=1)
            @ torch.nn.functional.normalize(ref_blocks, dim=1).T
        )  # [kept, groups]
        best = similarity.max(dim=1)
        kept.append(best.indices.tolist())
        weakest = min(weakest, float(best.values.min()))
    return kept, weakest


def main(argv: list[str] | None = None) -> int:
    """Print and optionally write the scores and kept groups."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the pretrained model folder")
    parser.add_argument("models", nargs="*", help="NAME=EXPORTED_MODEL_FOLDER")
    parser.add_argument("--out", help="write the result as JSON here")
    parser.add_argument("--salience", help="JSONL texts ({'text': ...}) to rank the groups' salience on")
    parser.add_argument("--rows", type=int, default=8, help="blocks of the salience pass")
    parser.add_argument("--length", type=int, default=512, help="tokens per block")
    parser.add_argument("--repeat-shares", default="0.25", help="comma-separated shares of repeated blocks")
    args = parser.parse_args(argv)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    model.eval()
    config = model.config
    kv_heads = config.num_key_value_heads
    layers = list(range(config.num_hidden_layers))
    groups = torch.stack(unit_induction_scores(model, [kv_heads] * len(layers), layers))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base = {k: v.detach() for k, v in model.state_dict().items()}
    kept, weakest = {}, {}
    for item in args.models:
        name, _, folder = item.partition("=")
        if not folder:
            parser.error(f"{item!r}: expected NAME=EXPORTED_MODEL_FOLDER")
        weights = load_file(str(Path(folder) / "model.safetensors"))
        kept[name], weakest[name] = kept_groups(base, weights, config.num_hidden_layers, head_dim)
    print("layer  " + " ".join(f"g{g}" for g in range(kv_heads)).ljust(6 * kv_heads) + "  " + "  ".join(kept))
    for layer, row in enumerate(groups.tolist()):
        scores = " ".join(f"{x:.2f}" for x in row)
        print(f"{layer:5d}  {scores}  " + "  ".join(str(kept[n][layer]) for n in kept))
    for name, value in weakest.items():
        print(f"{name}: lowest matching similarity {value:.3f}")
    ranks = {}
    if args.salience:
        tokenizer = AutoTokenizer.from_pretrained(args.base)
        texts = [json.loads(line)["text"] for line in Path(args.salience).read_text().splitlines() if line]
        needed, tokens = args.rows * args.length, []
        for text in texts:
            if len(tokens) >= needed:
                break
            tokens += tokenizer(text + "\n\n").input_ids
        flat = torch.tensor(tokens[:needed])
        if flat.numel() < needed:
            parser.error(f"{args.salience} has fewer than {args.rows} x {args.length} tokens")
        blocks = flat.view(args.rows, args.length)  # [rows, length]
        top = groups.flatten().argsort(descending=True)[:3].tolist()
        print(f"salience rank (0: least salient of {groups.numel()}) of the 3 best-copying groups:")
        for share in [0.0] + [float(x) for x in args.repeat_shares.split(",") if x]:
            ranks[str(share)] = salience_ranks(
                args.base, repeat_second_half(blocks, share) if share else blocks
            )
            named = ", ".join(
                f"layer {g // kv_heads} group {g % kv_heads}: {ranks[str(share)][g]}" for g in top
            )
            print(f"  repeated share {share:g}: {named}")
    if args.out:
        payload = {"group_scores": groups.tolist(), "kept": kept, "weakest_similarity": weakest}
        if ranks:
            payload["salience_ranks"] = ranks
        write_json_atomic(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
