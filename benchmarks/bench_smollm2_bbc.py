"""SmolLM2-135M (LLaMA, grouped-query attention) on BBC News text: LoRA, LoRA+Prune and APT at density 0.7.

    python benchmarks/bench_smollm2_bbc.py           # about 8 minutes on 2 cores
    python benchmarks/bench_smollm2_bbc.py --quick

Same as ``aptune bench --suite smollm2-bbc [options]``. APT prunes once before tuning (the paper's
LLaMA recipe, no distillation); LoRA's perplexity sets the time-to-accuracy bar.
Writes ``benchmarks/results/smollm2-bbc[-quick].md``, ``.json`` and plots.
"""

import sys
from pathlib import Path

from aptune.cli.bench import bench_command

if __name__ == "__main__":
    results = str(Path(__file__).resolve().parent / "results")  # options given later win
    args = ["--suite", "smollm2-bbc", "--results-dir", results, *sys.argv[1:]]
    bench_command().main(args, prog_name="bench_smollm2_bbc.py")
