"""Exceptions raised by aptune for problems a user can fix.

Every error carries a message that names what is wrong and how to fix it. The CLI prints the
message without a traceback and exits with a non-zero status.
"""

from __future__ import annotations

__all__ = [
    "AptuneError",
    "ConfigError",
    "DataError",
    "ExportError",
    "ModelError",
    "UnsupportedModelError",
]


class AptuneError(Exception):
    """Base class of every error aptune raises on purpose (bad input, bad state)."""


class ConfigError(AptuneError, ValueError):
    """An `AptConfig` (or CLI option) value is out of range or inconsistent."""


class DataError(AptuneError, ValueError):
    """A data file is missing, empty, or lacks the expected columns or labels."""


class ModelError(AptuneError, ValueError):
    """A model path is not a model, or a model is in a state aptune cannot work with."""


class UnsupportedModelError(ModelError):
    """The model's architecture has no aptune table."""


class ExportError(AptuneError, ValueError):
    """An exported folder is incomplete or its plan does not match its weights."""
