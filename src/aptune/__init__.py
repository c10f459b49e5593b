"""aptune: adaptive pruning and tuning (APT) of pretrained transformers.

Fine-tune a HuggingFace model with growable low-rank adapters and, during the same run, remove its
least salient attention heads, FFN neurons and hidden dimensions; end with a smaller, faster model.

    >>> import aptune
    >>> controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4), total_steps=1000)
    >>> config = aptune.AptConfig(target_density=0.4)
    >>> trainer = aptune.AptTrainer(model=model, args=args, apt_config=config, train_dataset=train)
"""

from aptune.config import AptConfig
from aptune.controller import AptController
from aptune.errors import AptuneError, ConfigError, DataError, ExportError, ModelError, UnsupportedModelError
from aptune.export import export, load
from aptune.prepare import prepare_

__version__ = "0.1.0"

__all__ = [
    "AptConfig",
    "AptController",
    "AptSeq2SeqTrainer",
    "AptTrainer",
    "AptuneError",
    "ConfigError",
    "DataError",
    "ExportError",
    "ModelError",
    "UnsupportedModelError",
    "__version__",
    "export",
    "load",
    "prepare_",
]


def __getattr__(name: str):
    # The Trainer subclass pulls in transformers.Trainer (and accelerate); import it lazily so that
    # `import aptune` stays light.
    if name in ("AptTrainer", "AptSeq2SeqTrainer"):
        from aptune import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'aptune' has no attribute {name!r}")
