"""``aptune eval``: evaluate a run's exported model (`aptune.runner.evaluate_run`)."""

from __future__ import annotations

from pathlib import Path

import click

from aptune.cli.errors import user_errors

__all__ = ["eval_command"]


@click.command("eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--eval-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Data to evaluate on (default: the run's dev split).",
)
@click.option("--batch-size", default=64, show_default=True, help="Evaluation batch size.")
def eval_command(run_dir: Path, eval_file: Path | None, batch_size: int) -> None:
    """Evaluate a run's exported model; writes <run_dir>/eval.json.

    RUN_DIR is a run folder written by `aptune train`.
    """
    from aptune.runner import evaluate_run

    with user_errors():
        metrics = evaluate_run(
            run_dir, eval_file=str(eval_file) if eval_file else None, batch_size=batch_size
        )
    for key, value in metrics.items():
        click.echo(f"{key}: {value:.4f}")
