"""Click options generated from dataclass fields (one option per field, with the field's help)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import click

__all__ = ["dataclass_options", "given_on_command_line"]


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


def _param_type(tp) -> click.ParamType:
    tp = _strip_optional(tp)
    if tp in (int, float, str):
        return {int: click.INT, float: click.FLOAT, str: click.STRING}[tp]
    args = set(typing.get_args(tp))
    if args == {float, int}:
        return _SchedulePoint()
    if typing.get_origin(tp) is tuple:
        return _Roles()
    raise TypeError(f"no CLI type for {tp!r}")


def dataclass_options(cls: type, *, skip: Iterable[str] = frozenset(), group: str = "") -> list[click.Option]:
    """Click options for every field of a dataclass (bools become ``--x/--no-x`` flags).

    Args:
        cls: The dataclass; a field's ``metadata["help"]`` becomes the option's help.
        skip: Names of fields that get no option.
        group: A tag shown in front of every help text (``[run]``, ``[apt]``).

    Returns:
        The options, in field order; each stores its value under the field's name.

    Raises:
        TypeError: a field's type has no command-line type.
    """
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


def given_on_command_line(values: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``values`` whose options were given (not left at their defaults).

    Args:
        values: Parameter values of the running click command.

    Returns:
        Name -> value for the options set on the command line (or from the environment).
    """
    ctx = click.get_current_context()
    return {
        name: value
        for name, value in values.items()
        if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
    }
