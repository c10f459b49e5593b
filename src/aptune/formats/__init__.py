"""Export formats for serving engines.

* ``hf``: the HuggingFace folder (stock config for uniform layouts, loader file otherwise), optionally
  in another dtype;
* ``onnx``: BERT / RoBERTa and LLaMA / Mistral / Qwen2 (one forward, or a KV-cache graph for
  generation) for ONNX Runtime (`aptune.formats.onnx`, `aptune.formats.onnx_generate`);
* ``onnx-genai``: LLaMA / Mistral / Qwen2 as a folder for onnxruntime-genai (`aptune.formats.onnx_genai`);
* ``gguf``: LLaMA / Mistral / Qwen2 for llama.cpp and Ollama (`aptune.formats.gguf`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from aptune.errors import ConfigError

__all__ = ["FORMATS", "export_format"]

#: Format names accepted by `export_format`.
FORMATS = ("hf", "gguf", "onnx", "onnx-genai")
_DTYPE_ALIASES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
_HF_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_GGUF_DTYPES = {"float32": "f32", "float16": "f16"}


def _model_folder(run_or_model_dir: str | Path) -> Path:
    path = Path(run_or_model_dir)
    return path / "model" if (path / "model").is_dir() else path


def export_format(
    run_or_model_dir: str | Path,
    out: str | Path,
    fmt: str,
    dtype: str = "float32",
    *,
    kv_cache: bool = False,
    last_logits_only: bool = False,
) -> Path:
    """Write a run's exported model in the format of a serving engine.

    Args:
        run_or_model_dir: A run folder written by ``aptune train`` (its ``model`` subfolder is
            used) or an exported model folder.
        out: Target: a folder for ``hf`` and ``onnx-genai``, a file (``.gguf`` / ``.onnx``) otherwise.
        fmt: ``"hf"``, ``"gguf"``, ``"onnx"`` or ``"onnx-genai"``.
        dtype: ``float32`` | ``float16`` | ``bfloat16`` (``f32`` / ``f16`` / ``bf16`` also accepted);
            GGUF takes float32 or float16, ONNX and onnx-genai float32.
        kv_cache: ONNX of a causal LM: a generation graph with KV-cache inputs and outputs
            (`aptune.formats.onnx`).
        last_logits_only: With ``kv_cache``: the graph returns the last position's logits only
            (faster prompts in a generation loop).

    Returns:
        The path written.

    Raises:
        ConfigError: unknown format, a dtype the format does not take, ``kv_cache`` with a
            format other than ONNX, or ``last_logits_only`` without ``kv_cache``.
        ExportError: the model cannot be written in that format (the message says why).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    dtype = _DTYPE_ALIASES.get(dtype, dtype)
    if kv_cache and fmt != "onnx":
        raise ConfigError(f"--kv-cache applies to --format onnx only, not {fmt!r}; drop the option")
    if last_logits_only and not kv_cache:
        raise ConfigError("--last-logits-only applies to a KV-cache graph; add --kv-cache or drop it")
    source, out = _model_folder(run_or_model_dir), Path(out)
    if fmt == "hf":
        if dtype not in _HF_DTYPES:
            raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(_HF_DTYPES)}")
        from aptune.export import reexport

        reexport(source, out, dtype=_HF_DTYPES[dtype])
    elif fmt == "gguf":
        from aptune.formats.gguf import export_gguf

        if dtype not in _GGUF_DTYPES:
            raise ConfigError(f"--dtype {dtype!r} is not available for GGUF; use float32 or float16")
        export_gguf(source, out, dtype=_GGUF_DTYPES[dtype])
    elif dtype != "float32":
        raise ConfigError(f"--dtype {dtype!r} is not available for ONNX; use float32")
    elif fmt == "onnx":
        from aptune.formats.onnx import export_onnx

        export_onnx(source, out, kv_cache=kv_cache, last_logits_only=last_logits_only)
    else:
        from aptune.formats.onnx_genai import export_onnx_genai

        export_onnx_genai(source, out)
    return out
