"""Load a model and its tokenizer from a name given by the user.

A name is resolved once into a `ModelSource` (built-in names such as ``minilm-l6`` point at
pip-shipped files, see `aptune.assets`; other names are local folders or hub ids), and every later
step (tokenizer, supported-type check, model) reads from that source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aptune.assets import DEFAULT_MODEL, resolve_model_name
from aptune.errors import ModelError, UnsupportedModelError

__all__ = [
    "MODEL_CLASSES",
    "ModelSource",
    "check_supported",
    "load_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "resolve_model",
]

# the transformers Auto class that loads a model for each task
MODEL_CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "qa": "AutoModelForQuestionAnswering",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
}

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


@dataclass(frozen=True)
class ModelSource:
    """A model name resolved to the files to load.

    Attributes:
        name: The name as the user gave it (the built-in default's name when none was given).
        path: Local folder or hub id passed to ``from_pretrained``.
        load_kwargs: Extra ``from_pretrained`` keyword arguments (``gguf_file`` for GGUF models).
    """

    name: str
    path: str
    load_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_gguf(self) -> bool:
        """True when the weights are a GGUF file (dequantised on load)."""
        return "gguf_file" in self.load_kwargs


def resolve_model(name: str | ModelSource | None) -> ModelSource:
    """Resolve a model name (None: the built-in default) and check that a local path holds a model.

    Args:
        name: A built-in name, a local folder, a hub id, None, or an already resolved source.

    Returns:
        The `ModelSource` (``name`` itself when it is one already).

    Raises:
        ModelError: a built-in model is not installed, or a local path is missing or holds no model.
    """
    if isinstance(name, ModelSource):
        return name
    path, extra = resolve_model_name(name)
    source = ModelSource(name or DEFAULT_MODEL, path, dict(extra))
    _check_model_path(source)
    return source


def _check_model_path(source: ModelSource) -> None:
    """A local path must exist and hold a model (hub names pass through to ``from_pretrained``)."""
    path = source.path
    local = Path(path)
    if local.exists() and not (local / "config.json").is_file() and not source.is_gguf:
        raise ModelError(
            f"{path} is not a model folder (no config.json); "
            "pass a folder written by save_pretrained or a hub name"
        )
    if not local.exists() and (path.startswith((".", "/", "~")) or (os.sep in path and path.count("/") > 1)):
        raise ModelError(f"model path {path} does not exist")


def _check_tokenizer_files(folder_name: str, source: ModelSource) -> None:
    """A local folder without tokenizer files would silently give an empty tokenizer (every word unknown)."""
    folder = Path(folder_name)
    if folder.is_dir() and not source.is_gguf and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(
            f"{folder} holds no tokenizer files ({', '.join(_TOKENIZER_FILES[:4])}, ...); "
            "pass --tokenizer with a folder that holds the tokenizer"
        )


def load_tokenizer(model: str | ModelSource | None, tokenizer_name: str | None = None):
    """Load the tokenizer of ``model`` (or the one in ``tokenizer_name``), with a padding token.

    Args:
        model: Model name or resolved source (see `resolve_model`).
        tokenizer_name: A tokenizer folder or name to use instead of the model's.

    Returns:
        The tokenizer; models without a padding token pad with their end-of-sequence token.

    Raises:
        ModelError: the model path is not a model, or no tokenizer files are there.
    """
    import transformers

    source = resolve_model(model)
    where = tokenizer_name or source.path
    _check_tokenizer_files(where, source)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(where, **source.load_kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(
            f"no tokenizer could be loaded from {where} ({str(exc).splitlines()[0]}); "
            "pass --tokenizer with a folder that holds the tokenizer files"
        ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_supported(model: str | ModelSource | None) -> None:
    """Fail before any data is read when the model type has no aptune table.

    Raises:
        ModelError: the config cannot be read.
        UnsupportedModelError: the model type is not supported (the message lists those that are).
    """
    import transformers

    from aptune.arch import SUPPORTED_MODEL_TYPES

    source = resolve_model(model)
    try:
        config = transformers.AutoConfig.from_pretrained(source.path, **source.load_kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"could not read the model config of {source.path}: {str(exc).splitlines()[0]}"
        ) from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type {config.model_type!r} of {source.path} is not supported by aptune; "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def load_model(
    model: str | ModelSource | None,
    task: str,
    tokenizer,
    *,
    num_labels: int | None = None,
    label_names: list[str] | None = None,
):
    """Load the model of ``task`` (see `MODEL_CLASSES`) in float32, ready to train and save.

    Args:
        model: Model name or resolved source.
        task: ``classification``, ``qa``, ``causal-lm`` or ``seq2seq``.
        tokenizer: Its tokenizer (gives the padding id when the config has none).
        num_labels: Number of classes (classification).
        label_names: Class names, stored as ``id2label`` / ``label2id`` (classification).

    Returns:
        The model.

    Raises:
        ModelError: loading failed.
    """
    import transformers

    source = resolve_model(model)
    auto = getattr(transformers, MODEL_CLASSES[task])
    kwargs: dict[str, Any] = dict(source.load_kwargs)
    if task == "classification":
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        if label_names:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    if source.is_gguf:
        kwargs["dtype"] = torch.float32
    try:
        loaded = auto.from_pretrained(source.path, **kwargs)
    except OSError as exc:
        raise ModelError(f"could not load a model from {source.path}: {str(exc).splitlines()[0]}") from None
    if getattr(loaded, "hf_quantizer", None) is not None:
        # GGUF weights are dequantised on load; drop the quantizer so the model trains and saves as usual
        loaded.hf_quantizer = None
        if hasattr(loaded.config, "quantization_config"):
            del loaded.config.quantization_config
    if source.is_gguf and getattr(loaded, "is_quantized", False):
        loaded.is_quantized = False  # the GGUF weights were dequantised into ordinary float tensors
    if getattr(loaded.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        loaded.config.pad_token_id = tokenizer.pad_token_id
    return loaded


def load_model_and_tokenizer(
    name: str | ModelSource | None,
    task: str,
    *,
    tokenizer_name: str | None = None,
    tokenizer=None,
    num_labels: int | None = None,
    label_names: list[str] | None = None,
):
    """Load a model for ``task`` and its tokenizer; built-in names resolve to pip-shipped files.

    Args:
        name: Model name or resolved source (None: the built-in default).
        task: ``classification``, ``qa``, ``causal-lm`` or ``seq2seq``.
        tokenizer_name: A tokenizer folder or name to use instead of the model's.
        tokenizer: An already loaded tokenizer to use instead of loading it again.
        num_labels: Number of classes (classification).
        label_names: Class names (classification).

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ModelError: the path is not a model, the tokenizer is missing, or loading failed.
    """
    source = resolve_model(name)
    if tokenizer is None:
        tokenizer = load_tokenizer(source, tokenizer_name)
    model = load_model(source, task, tokenizer, num_labels=num_labels, label_names=label_names)
    return model, tokenizer
