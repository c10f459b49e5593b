"""Peak RSS of a few training steps of MiniLM-L6 (batch 16 x 128): peft LoRA vs aptune's step.

    python benchmarks/memory_per_step.py lora|apt|collect|masks

Run each mode in its own process. ``apt``: adapters and hooks, nothing collected; ``collect``: with
salience collection; ``masks``: with soft masks (0.5) on every head, neuron and hidden dimension, as
inside a pruning window. Prints the resting RSS, the peak, and the difference.
"""

from __future__ import annotations

import resource
import sys

import torch

from aptune.runner import load_model_and_tokenizer


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(mode: str) -> None:
    model, _ = load_model_and_tokenizer(None, "classification", num_labels=5)
    ids = torch.randint(1000, 20000, (16, 128), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.arange(16) % 5}
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["query", "value", "intermediate.dense"],
            modules_to_save=["classifier", "pooler"],
        )
        model = get_peft_model(model, config)
    else:
        import aptune

        controller = aptune.prepare_(model, aptune.AptConfig(), total_steps=300)
        controller.state.collector.active = mode in ("collect", "masks")
        if mode == "masks":
            controller.state.heads = [torch.full((12,), 0.5) for _ in controller.state.heads]
            controller.state.neurons = [torch.full((1536,), 0.5) for _ in controller.state.neurons]
            controller.state.hidden = torch.full((384,), 0.5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    resting = _rss_mb()
    for _ in range(3):
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peak = _rss_mb()
    print(f"{mode}: resting {resting:.0f} MB, peak {peak:.0f} MB, step adds {peak - resting:.0f} MB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "apt")
