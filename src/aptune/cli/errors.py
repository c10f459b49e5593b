"""How the commands report problems a user can fix."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from aptune.errors import AptuneError

__all__ = ["user_errors"]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn aptune's own errors into one line on stderr and exit status 2 (130 on Ctrl-C).

    Raises:
        SystemExit: on an `AptuneError` or a keyboard interrupt.
    """
    try:
        yield
    except AptuneError as exc:
        click.echo(f"aptune: error: {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        click.echo("aptune: interrupted", err=True)
        raise SystemExit(130) from None
