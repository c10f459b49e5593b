"""A folder that onnxruntime-genai (ONNX Runtime's generation library) loads: ``og.Model(folder)``.

The folder holds ``model.onnx`` (the KV-cache graph of `aptune.formats.onnx` with every layer's cache
padded to one shape), ``genai_config.json`` and the tokenizer files of the exported model.

onnxruntime-genai allocates one cache shape for every layer, from the config's
``num_key_value_heads`` and ``head_size``. A free-layout plan keeps a different number of KV groups
per layer (none in a layer without attention), so the graph pads each layer's cache to the most KV
heads any layer keeps, with zeros a layer never reads. Attention still runs on the kept heads only;
the padding costs cache memory (as much as the layer with the most heads, in every layer). A uniform
plan needs no padding. The cache is fed back each step (``past_present_share_buffer`` false): the
graph concatenates, it has no fused attention operator that writes into a shared buffer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from aptune.atomic import replace_dir_atomic, write_json_atomic
from aptune.formats.onnx import cache_shapes, export_onnx, model_or_load, padded_cache_shape

__all__ = ["GENAI_CONFIG_FILE", "TOKENIZER_FILES", "export_onnx_genai", "genai_config"]

#: The config file onnxruntime-genai reads from a model folder.
GENAI_CONFIG_FILE = "genai_config.json"
#: Tokenizer files copied from the exported model folder when present (onnxruntime-genai reads the
#: first two).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
_GRAPH_FILE = "model.onnx"


def _token_id(config, name: str) -> int | list[int] | None:
    value = getattr(config, name, None)
    return value if isinstance(value, int | list) else None


def genai_config(model: nn.Module, kv_heads: int, head_size: int) -> dict:
    """The ``genai_config.json`` of a KV-cache graph of ``model`` whose caches are ``(kv_heads, head_size)``.

    Args:
        model: The causal LM the graph was traced from.
        kv_heads: KV heads of every layer's (padded) cache.
        head_size: Channels per head of every layer's (padded) cache.
    """
    config = model.config
    eos = _token_id(config, "eos_token_id")
    pad = _token_id(config, "pad_token_id")
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    context = int(getattr(config, "max_position_embeddings", 2048))
    query_per_kv = config.num_attention_heads // config.num_key_value_heads
    return {
        "model": {
            "type": config.model_type,
            "bos_token_id": _token_id(config, "bos_token_id"),
            "eos_token_id": eos,
            "pad_token_id": pad,
            "vocab_size": config.vocab_size,
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": _GRAPH_FILE,
                "head_size": head_size,
                "hidden_size": config.hidden_size,
                "num_attention_heads": kv_heads * query_per_kv,
                "num_key_value_heads": kv_heads,
                "num_hidden_layers": config.num_hidden_layers,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": False,
            "num_beams": 1,
            "num_return_sequences": 1,
            "max_length": context,
            "min_length": 0,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def export_onnx_genai(model_or_folder: nn.Module | str | Path, out_dir: str | Path) -> Path:
    """Write a folder that onnxruntime-genai loads, from a (pruned) LLaMA, Mistral or Qwen2 causal LM.

    Args:
        model_or_folder: A loaded causal LM, or a folder written by `aptune.export` (free or
            uniform layout); a folder's tokenizer files are copied.
        out_dir: The folder to write (replaced atomically).

    Returns:
        The folder written.

    Raises:
        ExportError: the model is not a LLaMA, Mistral or Qwen2 causal LM.
    """
    source = None if isinstance(model_or_folder, nn.Module) else Path(model_or_folder)
    model = model_or_load(model_or_folder).float().eval()
    out_dir = Path(out_dir)

    def fill(folder: Path) -> None:
        export_onnx(model, folder / _GRAPH_FILE, kv_cache=True, pad_cache=True)
        heads, head_size = padded_cache_shape(cache_shapes(model))  # the graph's one cache shape
        write_json_atomic(folder / GENAI_CONFIG_FILE, genai_config(model, heads, head_size), indent=2)
        for name in TOKENIZER_FILES:
            if source is not None and (source / name).is_file():
                shutil.copyfile(source / name, folder / name)

    return replace_dir_atomic(out_dir, fill)
