"""Where a model's held-out perplexity comes from: per-token losses by kind of token.

    python benchmarks/heldout_tokens.py WORKDIR NAME=MODEL [NAME=MODEL ...] [--out FILE.json] [--record]

WORKDIR is a work folder of the smollm2-bbc suite (its ``data/heldout.jsonl`` and ``plan.json``);
each MODEL is an aptune export folder (a job's ``runs/<job>/model``) or a plain checkpoint folder
(the suite's ``base-model``). The held-out text is evaluated as the suite evaluates it (the same
blocks of the suite's length, the chunked loss), and each target token is put in one of three
kinds by its own text and the token before it:

* ``line break``: the token holds a newline (verse is broken into lines, scenes into speeches);
* ``line start``: the first token after one (a speaker's name, or a verse line's first word);
* ``other``: the rest.

Per model it prints the tokens, the mean loss and the perplexity of each kind and of all, and, for
every model after the first, which share of its extra total loss over the first model each kind
carries. A kind whose share is far above its share of tokens is where the model lost the domain.

``--record`` writes the split into the work folder's record of each NAME that is a job id
(``results/<NAME>.json``, as ``heldout_kinds``, the field the suite now records itself), so a page
rewritten from that folder shows it for jobs that ran before the suite recorded it. It refuses a
model whose held-out perplexity is not the record's: that model is not the one the job exported.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from aptune.bench.token_kinds import KINDS, kind_losses, kind_perplexities, newline_token_ids

#: Largest relative difference between a recomputed and a recorded held-out perplexity.
SAME_MODEL_TOLERANCE = 1e-3


def _load(folder: Path):
    """A causal LM from an aptune export folder or a plain checkpoint folder, in eval mode, float32."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "aptune_plan" in config:
        from aptune.export import load

        return load(folder, dtype=torch.float32)
    from aptune.runner import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(folder), "causal-lm")
    return model.eval()


def record_kinds(result_file: Path, sums: dict) -> dict:
    """Add ``heldout_kinds`` (`kind_perplexities` of ``sums``) to a job's record, written atomically.

    Returns:
        The updated record.

    Raises:
        SystemExit: the record has no held-out perplexity, or the recomputed one differs from it by
            more than `SAME_MODEL_TOLERANCE` (relative).
    """
    from aptune.atomic import write_json_atomic

    record = json.loads(result_file.read_text(encoding="utf-8"))
    recorded = record.get("heldout_perplexity")
    kinds = kind_perplexities(sums)
    measured = kinds["all"]["perplexity"]
    if not isinstance(recorded, (int, float)):
        raise SystemExit(f"{result_file}: the record has no held-out perplexity to check the model against")
    if abs(measured - recorded) > SAME_MODEL_TOLERANCE * recorded:
        raise SystemExit(
            f"{result_file}: held-out perplexity {measured:.3f} of the model given, {recorded:.3f} in the "
            "record; give the job's own runs/<job>/model"
        )
    record["heldout_kinds"] = kinds
    write_json_atomic(result_file, record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("models", nargs="+", help="NAME=FOLDER")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--record", action="store_true", help="write the split into results/<NAME>.json of each job NAME"
    )
    args = parser.parse_args()
    plan = json.loads((args.workdir / "plan.json").read_text(encoding="utf-8"))
    config = plan["config"]
    from aptune.runner import load_tokenizer
    from aptune.tasks import load_task

    tokenizer = load_tokenizer(str(args.workdir / "base-model"))
    data = load_task(
        "causal-lm",
        tokenizer,
        train_file=str(args.workdir / "data" / "train.jsonl"),
        eval_file=str(args.workdir / "data" / "heldout.jsonl"),
        max_length=config["max_length"],
    )
    newline_ids = newline_token_ids(tokenizer)
    results = {}
    for spec in args.models:
        name, _, folder = spec.partition("=")
        model = _load(Path(folder))
        results[name] = kind_losses(
            model,
            data.eval,
            data.collator,
            newline_ids,
            config["lm_loss_chunk"] or config["max_length"],
            config.get("eval_batch_size") or 4,
        )
        del model
    first = next(iter(results.values()))
    for name, sums in results.items():
        row = []
        for kind in (*KINDS, "all"):
            s, n = sums[kind]["loss_sum"], sums[kind]["tokens"]
            row.append(f"{kind}: {n} tokens, loss {s / n:.3f} (ppl {math.exp(s / n):.1f})")
        extra = sums["all"]["loss_sum"] - first["all"]["loss_sum"]
        if name != next(iter(results)) and extra > 0:
            shares = [
                f"{kind} {100 * (sums[kind]['loss_sum'] - first[kind]['loss_sum']) / extra:.0f} % "
                f"of the extra loss ({100 * sums[kind]['tokens'] / sums['all']['tokens']:.0f} % of tokens)"
                for kind in KINDS
            ]
            row.append("; ".join(shares))
        print(f"{name}: " + "; ".join(row))
    if args.out:
        from aptune.atomic import write_json_atomic

        write_json_atomic(args.out, results)
    if args.record:
        for name, sums in results.items():
            result_file = args.workdir / "results" / f"{name}.json"
            if result_file.is_file():
                record_kinds(result_file, sums)
                print(f"recorded the split in {result_file}")
            else:
                print(f"{name}: no job record {result_file}, nothing recorded")


if __name__ == "__main__":
    main()
