"""Peak RSS of the pruning before tuning, with the model's own loss and with the chunked loss.

    python benchmarks/calibration_memory.py WORKDIR [--batches 3] [--length 256] [--chunk 512]

WORKDIR is a work folder of the smollm2-bbc suite (its ``base-model``). Each setting runs in its
own process: load the model, prepare it for APT at density 0.7 (decoder defaults, no damage
curves), reset the peak RSS (VmHWM) and run the calibration pass and the pruning on ``--batches``
micro-batches of 2 x ``--length`` random tokens. Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def _run_once(model_dir: str, chunk: int | None, batches: int, length: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    import aptune
    from aptune.bench.measure import peak_rss_mb, reset_peak_rss

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    data = []
    for _ in range(batches):
        ids = torch.randint(100, model.config.vocab_size, (2, length), generator=generator)
        data.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    config = aptune.AptConfig(target_density=0.7, distill=False, lm_loss_chunk=chunk, damage_curves=0)
    controller = aptune.prepare_(model, config, total_steps=300)
    reset_peak_rss()
    controller.calibrate_and_prune_(data)
    return {"lm_loss_chunk": chunk, "peak_rss_mb": round(peak_rss_mb(), 1), "density": controller.density()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process's setting
    args = parser.parse_args()
    model_dir = str(args.workdir / "base-model")
    if args.one is not None:
        chunk = None if args.one == "none" else int(args.one)
        print(json.dumps(_run_once(model_dir, chunk, args.batches, args.length)))
        return
    for setting in ("none", str(args.chunk)):
        command = [sys.executable, __file__, str(args.workdir), "--one", setting]
        command += ["--batches", str(args.batches), "--length", str(args.length)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        print(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
