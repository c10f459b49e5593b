"""MiniLM-L6 on BBC News: APT next to full fine-tuning and LoRA, same steps, each in its own process.

    python -m benchmarks.minilm_bbc [--methods apt,ft,lora] [--epochs 3] [--seeds 0] [--name minilm_bbc]

Writes ``benchmarks/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _child(method: str, budget_json: str, out: str, result_file: str) -> None:
    from benchmarks.methods import Budget, run_apt, run_full_finetuning, run_lora

    budget = Budget(**json.loads(budget_json))
    runner = {"apt": run_apt, "ft": run_full_finetuning, "lora": run_lora}[method]
    result = runner(budget, out)
    result["budget"] = asdict(budget)
    Path(result_file).write_text(json.dumps(result, indent=2))


def _run(method: str, budget: dict, workdir: Path) -> dict:
    result_file = workdir / f"{method}-{budget['seed']}.json"
    code = (
        "import sys; from benchmarks.minilm_bbc import _child; "
        "_child(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])"
    )
    out = workdir / f"{method}-{budget['seed']}"
    subprocess.run(
        [sys.executable, "-c", code, method, json.dumps(budget), str(out), str(result_file)],
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    return json.loads(result_file.read_text())


def _markdown(results: list[dict]) -> str:
    lines = [
        "| method | seed | dev accuracy | macro-F1 | train time (s) | peak RSS (MB) | parameters |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        final = r["final"]
        acc = final.get("eval_accuracy", final.get("accuracy"))
        f1 = final.get("eval_macro_f1", final.get("macro_f1"))
        lines.append(
            f"| {r['method']} | {r['budget']['seed']} | {acc:.4f} | {f1:.4f} | {r['train_seconds']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['params']:,} |"
        )
    by_method: dict[str, list[float]] = {}
    for r in results:
        final = r["final"]
        by_method.setdefault(r["method"], []).append(final.get("eval_accuracy", final.get("accuracy")))
    lines += ["", "| method | median accuracy | runs |", "| --- | --- | --- |"]
    for method, values in by_method.items():
        lines.append(f"| {method} | {statistics.median(values):.4f} | {len(values)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", default="apt,ft,lora")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--name", default="minilm_bbc")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="aptune-bench-") as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for method in args.methods.split(","):
                budget = {"epochs": args.epochs, "seed": seed, "max_train_samples": args.max_train_samples}
                result = _run(method, budget, Path(tmp))
                results.append(result)
                (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2))
                print(f"{method} seed {seed}: {result['final']}", flush=True)
    (RESULTS / f"{args.name}.md").write_text(_markdown(results))


if __name__ == "__main__":
    main()
