"""``aptune bench``: the command-line face of `aptune.bench.run_benchmark`.

Its options are generated from `BenchConfig` (one option per field, with the field's help). ``--suite``
picks a preset (and ``--quick`` its quick variant); options given on the command line override the
preset's values.
"""

from __future__ import annotations

import click

from aptune.bench.config import SUITES, BenchConfig
from aptune.bench.records import NOT_RUN_YET
from aptune.cli.errors import user_errors
from aptune.cli.options import dataclass_options, given_on_command_line

__all__ = ["bench_command"]

_EPILOG = (
    "Suites: "
    + ", ".join(SUITES)
    + ". The defaults shown are those of minilm-bbc; another suite (or --quick) brings its own, and "
    "options given here override them. Examples: `aptune bench --quick` (a few minutes), "
    "`aptune bench --suite minilm-bbc` (the full comparison), `aptune bench --suite smollm2-bbc`, "
    "`aptune bench --dry-run` (plan and time estimate)."
)


def _run(**values) -> None:
    from aptune.bench.config import suite_config
    from aptune.bench.harness import run_benchmark

    given = {k: v for k, v in given_on_command_line(values).items() if k not in ("suite", "quick")}
    with user_errors():
        config = suite_config(values["suite"], values["quick"], **given)
        outcome = run_benchmark(config, log=lambda line: click.echo(line, err=True))
    if outcome.summary is None:
        return
    for target in outcome.summary["targets"]:
        status = {True: "MET", False: "MISSED", None: "NOT EVALUATED"}[target["met"]]
        click.echo(f"{status:>12}  {target['claim']}: {target['measured']}")
    click.echo(f"aptune: results: {outcome.files['md']} and {outcome.files['json']}")
    pending = [job_id for job_id, error in outcome.failures.items() if error == NOT_RUN_YET]
    failed = [job_id for job_id in outcome.failures if job_id not in pending]
    if pending:
        click.echo(f"aptune: partial page: {len(pending)} part(s) not run yet: {', '.join(pending)}")
    if failed:
        click.echo(f"aptune: error: {len(failed)} job(s) failed: {', '.join(failed)}", err=True)
        raise SystemExit(1)


def bench_command() -> click.Command:
    """The ``bench`` click command (options from `BenchConfig`).

    Returns:
        A new command; ``bench_command().main(args)`` runs it on its own (as the benchmark scripts do).
    """
    return click.Command(
        "bench",
        callback=_run,
        params=dataclass_options(BenchConfig),
        help=(
            "Side-by-side benchmark of FT, LoRA (peft), LoRA+Prune and APT (with ablations and a density "
            "sweep): accuracy, time to accuracy, training time and memory, step times, exported size, "
            "latency and FLOPs. Every job runs in its own process; results go to "
            "<results-dir>/<name>.md, .json and plots."
        ),
        epilog=_EPILOG,
    )
