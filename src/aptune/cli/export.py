"""``aptune export``: write a run's exported model to another folder, optionally in another dtype."""

from __future__ import annotations

from pathlib import Path

import click

from aptune.cli.errors import user_errors

__all__ = ["export_command"]

_DTYPES = ("float32", "bfloat16", "float16")


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Where to write the model folder."
)
@click.option("--dtype", default="float32", show_default=True, help=" | ".join(_DTYPES) + ".")
def export_command(run_dir: Path, out: Path, dtype: str) -> None:
    """Write the run's exported model to another folder (optionally in another dtype).

    RUN_DIR is a run folder written by `aptune train` (or an exported model folder).
    """
    import torch

    from aptune.errors import ConfigError
    from aptune.export import reexport

    with user_errors():
        if dtype not in _DTYPES:
            raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
        source = run_dir / "model" if (run_dir / "model").is_dir() else run_dir
        reexport(source, out, dtype=getattr(torch, dtype))
    click.echo(f"aptune: wrote {out}")
