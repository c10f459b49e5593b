"""SmolLM2-135M: prune to 70 % before tuning, then tune on BBC texts; next to plain LoRA.

    python benchmarks/smollm2_prune_then_tune.py [--steps 30] [--train-docs 240] [--eval-docs 48]

Measures held-out perplexity of the dense model, right after one-shot pruning (calibration pass with
forward and backward, kurtosis salience), after APT tuning, and after plain LoRA tuning (peft, q and
v, r 8) for the same number of steps; the exported model's parameter count and its forward latency
next to the dense model's (batch 4 x 128 tokens, median of 10). Writes
``benchmarks/results/smollm2_prune_then_tune.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed

import aptune
from aptune.atomic import write_json_atomic, write_text_atomic
from aptune.runner import load_model_and_tokenizer
from aptune.tasks import load_task

RESULTS = Path(__file__).parent / "results"


def _args(out: str, steps: int, lr: float) -> TrainingArguments:
    return TrainingArguments(
        out,
        max_steps=steps,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=lr,
        warmup_steps=max(1, steps // 20),
        lr_scheduler_type="linear",
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        seed=0,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )


def _perplexity(model, task, out: str) -> float:
    trainer = Trainer(
        model=model,
        args=_args(out, 1, 1e-4),
        eval_dataset=task.eval,
        data_collator=task.collator,
        compute_metrics=task.compute_metrics,
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
    )
    return float(trainer.evaluate()["eval_perplexity"])


@torch.inference_mode()
def _latency(model, vocab: int, repeats: int = 10) -> float:
    model.eval()
    ids = torch.randint(10, vocab, (4, 128), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        model(input_ids=ids)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        model(input_ids=ids)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--train-docs", type=int, default=240)
    parser.add_argument("--eval-docs", type=int, default=48)
    parser.add_argument("--density", type=float, default=0.7)
    args = parser.parse_args()
    set_seed(0)
    work = tempfile.mkdtemp(prefix="aptune-smollm2-")
    model, tokenizer = load_model_and_tokenizer("smollm2-135m", "causal-lm")
    task = load_task(
        "causal-lm",
        tokenizer,
        dataset_name="bbc_causal_lm",
        max_length=128,
        max_train_samples=args.train_docs,
        max_eval_samples=args.eval_docs,
    )
    result: dict = {"steps": args.steps, "density": args.density, "data": task.info}
    dense_params = sum(p.numel() for p in model.parameters())
    lora_model = copy.deepcopy(model)
    result["ppl_dense"] = _perplexity(model, task, work)
    vocab = model.config.vocab_size
    dense_latency = _latency(model, vocab)

    # APT: one-shot pruning before tuning, then adaptive tuning without distillation
    config = aptune.AptConfig(
        target_density=args.density,
        pretune_prune=True,
        distill=False,
        calibration_samples=32,
        calibration_batch_size=4,
        num_events=3,
    )
    began = time.perf_counter()
    trainer = aptune.AptTrainer(
        model=model,
        args=_args(work + "/apt", args.steps, 1e-3),
        apt_config=config,
        train_dataset=task.train,
        data_collator=task.collator,
        processing_class=tokenizer,
    )
    record = trainer.calibrate_and_prune_()
    result["calibration_seconds"] = time.perf_counter() - began
    result["pruned_structure"] = {k: record[k] for k in ("heads_per_layer", "ffn_per_layer", "hidden_size")}
    result["backbone_density"] = trainer.apt_controller.density()
    result["ppl_after_pruning"] = _perplexity(model, task, work)
    began = time.perf_counter()
    trainer.train()
    result["apt_train_seconds"] = time.perf_counter() - began
    result["ppl_apt"] = _perplexity(model, task, work)
    small = trainer.export(work + "/apt-model")
    result["params_dense"] = dense_params
    result["params_exported"] = sum(p.numel() for p in small.parameters())
    result["latency_dense_s"] = dense_latency
    result["latency_exported_s"] = _latency(small, vocab)
    result["inference_speedup"] = dense_latency / result["latency_exported_s"]
    del small, trainer, model

    # plain LoRA (peft) on the dense model, same steps
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(lora_model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    began = time.perf_counter()
    Trainer(
        model=lora,
        args=_args(work + "/lora", args.steps, 1e-3),
        train_dataset=task.train,
        data_collator=task.collator,
    ).train()
    result["lora_train_seconds"] = time.perf_counter() - began
    result["ppl_lora"] = _perplexity(lora, task, work)

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "smollm2_prune_then_tune.json", result, indent=2)
    lines = [
        f"# SmolLM2-135M on BBC texts: prune to {args.density:.0%} before tuning, {args.steps} steps",
        "",
        "| model | held-out perplexity |",
        "| --- | --- |",
        f"| dense (before pruning) | {result['ppl_dense']:.2f} |",
        f"| after one-shot pruning, before tuning | {result['ppl_after_pruning']:.2f} |",
        f"| APT (pruned, adaptive tuning) | {result['ppl_apt']:.2f} |",
        f"| LoRA (dense, q/v r8) | {result['ppl_lora']:.2f} |",
        "",
        f"Parameters: {dense_params:,} dense, {result['params_exported']:,} exported "
        f"(backbone density {result['backbone_density']:.3f}). Forward latency, batch 4 x 128: "
        f"{result['latency_dense_s'] * 1000:.0f} ms dense, "
        f"{result['latency_exported_s'] * 1000:.0f} ms exported "
        f"({result['inference_speedup']:.2f}x). Training: APT {result['apt_train_seconds']:.0f} s "
        f"(+ {result['calibration_seconds']:.0f} s calibration), LoRA {result['lora_train_seconds']:.0f} s.",
    ]
    write_text_atomic(RESULTS / "smollm2_prune_then_tune.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
