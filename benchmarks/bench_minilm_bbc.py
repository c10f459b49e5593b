"""MiniLM-L6 on BBC News: FT, LoRA, LoRA+Prune (Kwon et al.; Torch-Pruning) and APT, rates tuned on dev.

    python benchmarks/bench_minilm_bbc.py            # the full suite (about 2.5 hours on 2 idle cores)
    python benchmarks/bench_minilm_bbc.py --quick    # a few minutes, to check the pipeline
    python benchmarks/bench_minilm_bbc.py --dry-run  # the plan and the time estimate

Same as ``aptune bench --suite minilm-bbc [options]``; any ``aptune bench`` option works here.
Writes ``benchmarks/results/minilm-bbc[-quick].md``, ``.json`` and plots.
"""

import sys
from pathlib import Path

from aptune.cli.bench import bench_command

if __name__ == "__main__":
    results = str(Path(__file__).resolve().parent / "results")  # options given later win
    args = ["--suite", "minilm-bbc", "--results-dir", results, *sys.argv[1:]]
    bench_command().main(args, prog_name="bench_minilm_bbc.py")
