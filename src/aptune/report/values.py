"""Plain JSON values for the run record: conversion of tensors / numpy values and tolerant field access."""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["as_step", "flat_floats", "is_num", "mapping_of", "rows_of", "to_jsonable", "to_scalar"]


def to_jsonable(value: Any, where: str = "value") -> Any:
    """Return ``value`` as plain JSON data (dict / list / str / int / float / bool / None).

    Tensors and numpy values become numbers or (nested) lists, dataclasses and objects with a
    ``to_dict()`` method become dicts, paths become strings, and NaN / inf become ``None``.

    Args:
        value: What to convert.
        where: Name of the value, used in the error message.

    Returns:
        A fresh JSON-ready structure (never shares mutable containers with ``value``).

    Raises:
        TypeError: ``value`` (or something inside it) has no JSON form.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, where)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_jsonable(to_dict(), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), where)
    tolist = getattr(value, "tolist", None)  # torch.Tensor, numpy arrays and numpy scalars
    if callable(tolist):
        return to_jsonable(tolist(), where)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return to_jsonable(float(value), where)
    raise TypeError(
        f"{where} has type {type(value).__name__}, which cannot be stored in report.json; "
        "pass numbers, strings, lists or dicts"
    )


def to_scalar(value: Any, where: str) -> int | float | None:
    """Convert a logged scalar (number, 0-d tensor, numpy scalar) to ``int`` / ``float`` / ``None``.

    Raises:
        TypeError: ``value`` is not a single number.
    """
    out = to_jsonable(value, where)
    if out is None or (isinstance(out, (int, float)) and not isinstance(out, bool)):
        return out
    raise TypeError(f"{where} must be a single number, got {type(value).__name__}")


def as_step(step: Any) -> int:
    """Validate an optimizer step number.

    Raises:
        ValueError: ``step`` is not a non-negative whole number.
    """
    try:
        value = to_scalar(step, "step")
    except TypeError as exc:
        raise ValueError(f"step must be a non-negative integer, got {step!r}") from exc
    if value is None or value < 0 or value != int(value):
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    return int(value)


def flat_floats(values: Any, where: str) -> list[float | None]:
    """Flatten a (nested) sequence or tensor of scores into a list of floats (non-finite -> None)."""
    data = to_jsonable(values, where)
    out: list[float | None] = []

    def visit(item: Any) -> None:
        if isinstance(item, list):
            for sub in item:
                visit(sub)
        elif item is None:
            out.append(None)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            out.append(float(item))
        else:
            raise TypeError(f"{where} must hold numbers, got {type(item).__name__}")

    visit(data)
    return out


def is_num(value: Any) -> bool:
    """True for a finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rows_of(value: Any) -> list[dict[str, Any]]:
    """The dict entries of a list field of the report (tolerates missing or malformed fields)."""
    if not isinstance(value, list):
        return []
    return [row for row in value if isinstance(row, dict)]


def mapping_of(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else an empty dict."""
    return value if isinstance(value, dict) else {}
