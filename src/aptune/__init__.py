"""aptune: adaptive pruning and tuning (APT) of pretrained transformers."""

from aptune.config import AptConfig
from aptune.errors import AptuneError, ConfigError, DataError, ExportError, ModelError, UnsupportedModelError

__version__ = "0.1.0"

__all__ = [
    "AptConfig",
    "AptuneError",
    "ConfigError",
    "DataError",
    "ExportError",
    "ModelError",
    "UnsupportedModelError",
    "__version__",
]
