"""The ``aptune`` command: ``train``, ``export``, ``eval``, ``bench`` (built with click).

``aptune train`` and ``aptune bench`` take their options from the same dataclasses as the Python API
(`aptune.runner.RunArguments` and `aptune.AptConfig`; `aptune.bench.BenchConfig`): every field is an
option (``target_density`` -> ``--target-density``) with the field's help text, see
`aptune.cli.options`. Problems a user can fix end with one line on stderr and exit status 2, never
a traceback.
"""

from __future__ import annotations

import sys

import click

from aptune.cli.bench import bench_command
from aptune.cli.eval import eval_command
from aptune.cli.export import export_command
from aptune.cli.train import train_command

__all__ = ["cli", "main"]

cli = click.Group(
    "aptune",
    commands=[train_command, export_command, eval_command, bench_command()],
    no_args_is_help=True,
    help="aptune: fine-tune a transformer with adapters and prune it in the same run (APT).",
)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``aptune`` console script.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Raises:
        SystemExit: always, with the command's exit status.
    """
    import transformers

    # one clean line per problem: no weight-loading bars or library warnings on stderr
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="aptune")
