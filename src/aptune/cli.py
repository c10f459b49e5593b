"""The ``aptune`` command: ``train``, ``export``, ``eval``, ``bench``.

``aptune train`` takes its options from the same dataclasses as the Python API (`RunArguments` and
`AptConfig`): every field is an option (``target_density`` -> ``--target-density``), with the
field's help text. With no options it runs the built-in default (MiniLM-L6 on BBC News at 40 %
density). Problems a user can fix end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import click
import typer

from aptune.config import AptConfig
from aptune.errors import AptuneError
from aptune.runner import RunArguments

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="aptune: fine-tune a transformer with adapters and prune it in the same run (APT).",
)

# options of AptConfig the CLI sets from RunArguments instead (one seed for the whole run)
_SHARED_WITH_RUN = {"seed"}


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn aptune's own errors into one line on stderr and exit status 2."""
    try:
        yield
    except AptuneError as exc:
        click.echo(f"aptune: error: {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        click.echo("aptune: interrupted", err=True)
        raise SystemExit(130) from None


class _SchedulePoint(click.ParamType):
    """A fraction of the run (``0.4``) or an absolute step (``120``)."""

    name = "FRACTION|STEP"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return value
        text = str(value).strip()
        try:
            return int(text) if text.isdigit() else float(text)
        except ValueError:
            self.fail(f"{value!r} is neither a fraction like 0.4 nor a step like 120", param, ctx)


class _Roles(click.ParamType):
    """Comma-separated adapter roles (``q,v,up``)."""

    name = "ROLES"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        return tuple(part.strip() for part in str(value).split(",") if part.strip())


def _strip_optional(tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007
    return tp


def _param_type(tp):
    tp = _strip_optional(tp)
    if tp in (int, float, str):
        return {int: click.INT, float: click.FLOAT, str: click.STRING}[tp]
    args = set(typing.get_args(tp))
    if args == {float, int}:
        return _SchedulePoint()
    if typing.get_origin(tp) is tuple:
        return _Roles()
    raise TypeError(f"no CLI type for {tp!r}")


def dataclass_options(cls, *, skip: set[str] = frozenset(), group: str = "") -> list[click.Option]:
    """Click options for every field of a dataclass (bools become ``--x/--no-x`` flags)."""
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if group:
            help_text = f"[{group}] {help_text}"
        default = f.default if f.default is not dataclasses.MISSING else None
        if _strip_optional(tp) is bool:
            options.append(
                click.Option(
                    [f"{flag}/--no-{flag[2:]}", f.name], default=default, help=help_text, show_default=True
                )
            )
        else:
            options.append(
                click.Option(
                    [flag, f.name], type=_param_type(tp), default=default, help=help_text, show_default=True
                )
            )
    return options


def _train(**values) -> None:
    run_fields = {f.name for f in dataclasses.fields(RunArguments)}
    apt_fields = {f.name for f in dataclasses.fields(AptConfig)}
    config_file = values.pop("config", None)
    with user_errors():
        run_args = RunArguments(**{k: v for k, v in values.items() if k in run_fields})
        apt_values = {k: v for k, v in values.items() if k in apt_fields and k not in _SHARED_WITH_RUN}
        if config_file:
            base = AptConfig.from_json(config_file).to_dict()
            base.pop("format_version", None)
            ctx = click.get_current_context()
            given = {
                k: v
                for k, v in apt_values.items()
                if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT
            }
            apt_values = {**base, **given}
        apt_values["seed"] = run_args.seed
        config = AptConfig(**apt_values)
        from aptune.runner import run_training

        summary = run_training(run_args, config)
    if summary["params_after"] is None:  # a non-zero rank under torchrun: rank 0 reports
        return
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


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="A run folder written by `aptune train`."),
    out: Path = typer.Option(..., "--out", help="Where to write the model folder (hf) or file (gguf, onnx)."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16."),
    fmt: str = typer.Option("hf", "--format", help="hf | gguf (LLaMA family) | onnx (BERT/RoBERTa)."),
) -> None:
    """Write the run's exported model to another folder or serving format (optionally in another dtype)."""
    if fmt != "hf":
        from aptune.formats import export_format

        with user_errors():
            export_format(run_dir, out, fmt, dtype)
        click.echo(f"aptune: wrote {out}")
        return
    import torch

    from aptune.errors import ConfigError
    from aptune.export import load

    with user_errors():
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(dtypes)}")
        source = run_dir / "model" if (run_dir / "model").is_dir() else run_dir
        model = load(source, dtype=dtypes[dtype])
        _copy_export(source, out, model)
    click.echo(f"aptune: wrote {out}")


def _copy_export(source: Path, out: Path, model) -> None:
    import shutil

    from aptune.export import _atomic_write_dir, _check_plan_against_weights

    def fill(folder: Path) -> None:
        for item in source.iterdir():
            if item.name != "model.safetensors" and item.is_file():
                shutil.copyfile(item, folder / item.name)
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        import json

        plan = json.loads((folder / "config.json").read_text())["aptune_plan"]
        save_file(
            {k: state[k] for k in plan["shapes"]},
            str(folder / "model.safetensors"),
            metadata={"format": "pt"},
        )
        _check_plan_against_weights(folder, plan)

    _atomic_write_dir(out, fill)


@app.command("eval")
def eval_command(
    run_dir: Path = typer.Argument(..., help="A run folder written by `aptune train`."),
    eval_file: Path | None = typer.Option(
        None, "--eval-file", help="Data to evaluate on (default: the run's dev split)."
    ),
    batch_size: int = typer.Option(64, help="Evaluation batch size."),
) -> None:
    """Evaluate a run's exported model; writes <run_dir>/eval.json."""
    from aptune.runner import evaluate_run

    with user_errors():
        metrics = evaluate_run(
            run_dir, eval_file=str(eval_file) if eval_file else None, batch_size=batch_size
        )
    for key, value in metrics.items():
        click.echo(f"{key}: {value:.4f}")


@app.command(
    "bench",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def bench_command(ctx: typer.Context) -> None:
    """Side-by-side benchmark: FT, LoRA, LoRA+Prune, APT, ablations, density sweep (--help for options)."""
    from aptune.bench.cli import bench_command as build

    # the options live on aptune.bench's own command, generated from BenchConfig
    build().main(args=list(ctx.args), prog_name="aptune bench", standalone_mode=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``aptune`` console script."""
    import transformers

    # one clean line per problem: no weight-loading bars or library warnings on stderr
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    group = typer.main.get_command(app)
    group.add_command(train_command, "train")
    try:
        group.main(args=argv if argv is not None else sys.argv[1:], prog_name="aptune")
    except click.exceptions.Exit as exc:  # raised by --help of typer sub-commands in some versions
        raise SystemExit(exc.exit_code) from None


if __name__ == "__main__":  # pragma: no cover
    main()
