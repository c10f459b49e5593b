"""``aptune train``: one APT run (`aptune.runner.run_training`) from command-line options."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from aptune.cli.errors import user_errors
from aptune.cli.options import dataclass_options, given_on_command_line
from aptune.config import AptConfig
from aptune.runner import RunArguments

__all__ = ["train_command"]

# options of AptConfig the CLI sets from RunArguments instead (one seed for the whole run)
_SHARED_WITH_RUN = {"seed"}


def _configs(values: dict, config_file: str | None) -> tuple[RunArguments, AptConfig]:
    """Split the options into the two dataclasses; command-line values override ``config_file``."""
    run_fields = {f.name for f in dataclasses.fields(RunArguments)}
    apt_fields = {f.name for f in dataclasses.fields(AptConfig)}
    run_args = RunArguments(**{k: v for k, v in values.items() if k in run_fields})
    apt_values = {k: v for k, v in values.items() if k in apt_fields and k not in _SHARED_WITH_RUN}
    if config_file:
        base = AptConfig.from_json(config_file).to_dict()
        base.pop("format_version", None)
        apt_values = {**base, **given_on_command_line(apt_values)}
    apt_values["seed"] = run_args.seed
    return run_args, AptConfig(**apt_values)


def _echo_summary(summary: dict) -> None:
    metrics = ", ".join(
        f"{k} {v:.4f}"
        for k, v in summary["final_metrics"].items()
        if not k.endswith(("runtime", "per_second"))
    )
    click.echo("")
    click.echo(
        f"aptune: done in {summary['seconds']:.0f} s; density {summary['density']:.3f}; "
        f"parameters {summary['params_before']:,} -> {summary['params_after']:,}"
    )
    if metrics:
        click.echo(f"aptune: dev metrics: {metrics}")
    click.echo(f"aptune: exported model: {summary['model_dir']}")
    click.echo(f"aptune: report: {summary['report']} (plots in {Path(summary['output_dir']) / 'plots'})")


def _train(**values) -> None:
    from aptune.distributed import close_process_group
    from aptune.runner import run_training

    config_file = values.pop("config", None)
    with user_errors():
        run_args, config = _configs(values, config_file)
        summary = run_training(run_args, config)
    close_process_group()  # the command owns the process: every rank leaves the group together
    if summary["params_after"] is None:  # a non-zero rank under torchrun: rank 0 reports
        return
    _echo_summary(summary)


train_command = click.Command(
    "train",
    callback=_train,
    params=[
        click.Option(
            ["--config", "config"],
            type=click.Path(dir_okay=False),
            help="AptConfig JSON file; options given on the command line override it.",
        ),
        *dataclass_options(RunArguments, group="run"),
        *dataclass_options(AptConfig, skip=_SHARED_WITH_RUN, group="apt"),
    ],
    help=(
        "Fine-tune and prune a model (APT). With no options: MiniLM-L6 on BBC News, 40 % density, about "
        "10 minutes on 2 CPU cores. Writes the exported model, report.json, report.md and plots to "
        "--output-dir."
    ),
)
