"""Peak RSS of evaluating SmolLM2-135M (batch 4 x 256, 4 batches): the model's own loss vs in blocks.

    python benchmarks/eval_memory_smollm2.py full|chunked

Run each mode in its own process. ``full``: the model's forward with labels, then the per-token
losses from its logits (`aptune.tasks.token_nll`), as ``Trainer.evaluate`` computes perplexity;
``chunked``: `aptune.losses.chunked_lm_eval` with 512-token blocks (the smollm2 suite's
``lm_loss_chunk``). Prints the resting RSS, the peak, and what the evaluation adds.
"""

from __future__ import annotations

import resource
import sys

import torch

from aptune.losses import chunked_lm_eval
from aptune.runner import load_model_and_tokenizer
from aptune.tasks import token_nll


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def main(mode: str) -> None:
    model, _ = load_model_and_tokenizer("smollm2-135m", "causal-lm")
    model.eval()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 49152, (4, 256), generator=generator) for _ in range(4)]
    resting = _peak_mb()
    losses = []
    for ids in batches:
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        if mode == "full":
            out = model(**inputs)
            nll = token_nll(out.logits, ids)
        else:
            _, nll = chunked_lm_eval(model, inputs, 512)
        losses.append(float(nll[:, :-1].mean()))
    peak = _peak_mb()
    print(
        f"{mode}: resting {resting:.0f} MB, peak {peak:.0f} MB, evaluation adds {peak - resting:.0f} MB "
        f"(mean token loss {sum(losses) / len(losses):.4f})"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "chunked")
