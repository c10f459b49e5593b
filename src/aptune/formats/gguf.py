"""GGUF export of pruned LLaMA-family decoders (LLaMA, Mistral, Qwen2) for llama.cpp and Ollama.

A model whose layers all keep the same heads, KV heads and FFN width (``layout="uniform"``) is
written as llama.cpp's ``llama`` architecture. Any other plan is written as its ``deci``
architecture (made for NVIDIA's Nemotron-NAS models), which builds every layer from per-layer arrays
``deci.attention.head_count``, ``deci.attention.head_count_kv`` and ``deci.feed_forward_length``:
0 heads means no attention in that layer. The head dimension is the same in every layer, as in
every aptune plan. Two corners of llama.cpp's ``deci`` graph are written around, exactly:

* llama.cpp reads the head size from layer 0, so a layer 0 without attention is written as one
  KV group whose output projection is zero (its contribution is exactly 0, as in the pruned model);
* a layer with ``feed_forward_length = 0`` skips the whole rest of the layer in llama.cpp
  (attention output included), so a layer without FFN neurons is written with one neuron whose
  weights are zero (plus the down-projection bias, if the model has one).

Q and K rows are permuted per head from HF's rotate-half order to the interleaved pairs that
llama.cpp's ``llama``/``deci`` RoPE rotates. Q/K/V biases (Qwen2) are optional tensors of both
architectures; a layer that lost its attention lost those biases with its heads, and the pruned
model's attention then returns zeros (its output-projection bias unused), which is what ``deci``
computes for 0 heads, so every aptune plan of these families is expressible.

The byte-level BPE tokenizer (vocabulary, merges, special tokens, BOS/EOS flags) and the chat
template are carried over with the ``gguf`` package's vocabulary helpers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aptune.atomic import atomic_path
from aptune.errors import ExportError

logger = logging.getLogger("aptune")

#: llama.cpp processes prompts markedly slower on FFN widths that are not a multiple of this
#: (benchmarks/results/llama_cpp_ffn_width.md); the export says so.
LLAMA_CPP_FFN_MULTIPLE = 8

__all__ = ["GGUF_DTYPES", "GGUF_FAMILIES", "export_gguf"]

#: ``model_type`` values that export to GGUF.
GGUF_FAMILIES = ("llama", "mistral", "qwen2")
#: Weight dtypes of the GGUF file (norms and biases always stay float32).
GGUF_DTYPES = ("f32", "f16")

# The original regexes of tokenizer.json pre-tokenizers that llama.cpp implements, by its name for them.
_SPLIT_PRETOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


@dataclass
class _Layer:
    """Sizes of one decoder layer as written to the file (after the two corner cases)."""

    heads: int
    kv_heads: int
    ffn: int


def _pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer of a byte-level BPE ``tokenizer.json``."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and parts[0].get("individual_digits")
        and parts[1].get("use_regex", True)
    ):
        return "smollm"
    if kinds[:1] == ["Split"] and kinds[-1] == "ByteLevel":
        pattern = parts[0].get("pattern", {}).get("Regex")
        if pattern in _SPLIT_PRETOKENIZERS:
            return _SPLIT_PRETOKENIZERS[pattern]
    raise ExportError(
        f"the tokenizer's pre-tokenizer {json.dumps(pre)[:200]} is not one llama.cpp implements under a "
        "known name (gpt-2, smollm, llama-bpe, qwen2); GGUF export needs one of those"
    )


def _add_tokenizer(writer, folder: Path, vocab_size: int) -> None:
    import gguf

    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ExportError(
            f"{folder} has no tokenizer.json; export the model with its (fast, byte-level BPE) tokenizer "
            "so that the GGUF file can carry it"
        )
    tokenizer_json = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    try:
        vocab = gguf.BpeVocab(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise ExportError(f"GGUF export needs a byte-level BPE tokenizer.json ({exc})") from None
    tokens, types = [], []
    for text, _score, token_type in vocab.all_tokens():
        tokens.append(text.encode("utf-8") if isinstance(text, str) else text)
        types.append(int(token_type))
    if len(tokens) > vocab_size:
        raise ExportError(f"the tokenizer has {len(tokens)} tokens but the embedding only {vocab_size} rows")
    for added in tokenizer_json.get("added_tokens") or []:  # special tokens are control tokens
        if 0 <= added["id"] < len(types):
            kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
            types[added["id"]] = int(kind)
    for index in range(len(tokens), vocab_size):  # embedding rows without a token
        tokens.append(f"[PAD{index}]".encode())
        types.append(int(gguf.TokenType.UNUSED))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)


def _permute_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head reordered from rotate-half halves to interleaved pairs (weights or biases)."""
    if heads == 0:
        return weight
    head_dim = weight.shape[0] // heads
    # (heads * head_dim, ...) -> (heads, 2, head_dim / 2, ...) -> swap the half and pair axes -> back
    return weight.reshape(heads, 2, head_dim // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _rope_keys(config) -> dict:
    parameters = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    if kind not in ("default", "linear"):
        raise ExportError(
            f"RoPE scaling {kind!r} is not supported by the GGUF export (default or linear only)"
        )
    factor = float(parameters.get("factor", 1.0)) if kind == "linear" else 1.0
    return {"theta": float(theta), "linear_factor": factor}


def _layer_sizes(layers: nn.ModuleList, head_dim: int) -> list[_Layer]:
    sizes = []
    for layer in layers:
        attention, mlp = layer.self_attn, layer.mlp
        sizes.append(
            _Layer(
                heads=attention.q_proj.weight.shape[0] // head_dim,
                kv_heads=attention.k_proj.weight.shape[0] // head_dim,
                ffn=mlp.up_proj.weight.shape[0],
            )
        )
    return sizes


def _layer_tensors(layer: nn.Module, size: _Layer, head_dim: int, hidden: int, index: int) -> dict:
    """GGUF tensors of one layer; ``size`` is updated for the corner cases (see the module doc)."""
    attention, mlp = layer.self_attn, layer.mlp
    prefix = f"blk.{index}."
    out = {}

    def bias(linear: nn.Linear) -> torch.Tensor | None:
        return linear.bias if getattr(linear, "bias", None) is not None else None

    if size.heads > 0:
        out[prefix + "attn_norm.weight"] = layer.input_layernorm.weight
        out[prefix + "attn_q.weight"] = _permute_rope(attention.q_proj.weight, size.heads)
        out[prefix + "attn_k.weight"] = _permute_rope(attention.k_proj.weight, size.kv_heads)
        out[prefix + "attn_v.weight"] = attention.v_proj.weight
        out[prefix + "attn_output.weight"] = attention.o_proj.weight
        for name, linear, heads in (
            ("attn_q", attention.q_proj, size.heads),
            ("attn_k", attention.k_proj, size.kv_heads),
            ("attn_v", attention.v_proj, 0),
            ("attn_output", attention.o_proj, 0),
        ):
            if bias(linear) is not None:
                out[prefix + name + ".bias"] = _permute_rope(bias(linear), heads)
    elif index == 0:  # llama.cpp reads the head size from layer 0: one KV group that adds exactly 0
        size.heads, size.kv_heads = 1, 1
        out[prefix + "attn_norm.weight"] = layer.input_layernorm.weight
        for name, shape in (("attn_q", (head_dim, hidden)), ("attn_k", (head_dim, hidden))):
            out[prefix + name + ".weight"] = torch.zeros(shape)
        out[prefix + "attn_v.weight"] = torch.zeros(head_dim, hidden)
        out[prefix + "attn_output.weight"] = torch.zeros(hidden, head_dim)
    out[prefix + "ffn_norm.weight"] = layer.post_attention_layernorm.weight
    if size.ffn > 0:
        out[prefix + "ffn_gate.weight"] = mlp.gate_proj.weight
        out[prefix + "ffn_up.weight"] = mlp.up_proj.weight
        out[prefix + "ffn_down.weight"] = mlp.down_proj.weight
        for name, linear in (
            ("ffn_gate", mlp.gate_proj),
            ("ffn_up", mlp.up_proj),
            ("ffn_down", mlp.down_proj),
        ):
            if bias(linear) is not None:
                out[prefix + name + ".bias"] = bias(linear)
    else:  # a zero-width FFN would skip the layer's attention in llama.cpp: one neuron of zeros instead
        size.ffn = 1
        out[prefix + "ffn_gate.weight"] = torch.zeros(1, hidden)
        out[prefix + "ffn_up.weight"] = torch.zeros(1, hidden)
        out[prefix + "ffn_down.weight"] = torch.zeros(hidden, 1)
        if bias(mlp.down_proj) is not None:
            out[prefix + "ffn_down.bias"] = bias(mlp.down_proj)
    return out


def _load_decoder(folder: Path) -> nn.Module:
    from aptune.export import load

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{folder} is not an exported model folder (no config.json)")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type not in GGUF_FAMILIES:
        raise ExportError(
            f"GGUF export supports {', '.join(GGUF_FAMILIES)} models, not {model_type!r}; "
            "export encoders with --format onnx"
        )
    model = load(folder, dtype=torch.float32)
    if not type(model).__name__.endswith("ForCausalLM"):
        raise ExportError(f"GGUF export needs a causal LM, not {type(model).__name__}")
    return model


def export_gguf(model_folder: str | Path, out_path: str | Path, *, dtype: str = "f16") -> Path:
    """Write a GGUF file of an exported LLaMA / Mistral / Qwen2 causal LM (free or uniform layout).

    Args:
        model_folder: A folder written by `aptune.export` (with its tokenizer).
        out_path: The ``.gguf`` file to write (replaced atomically).
        dtype: ``"f32"`` or ``"f16"`` for the weight matrices; norms and biases stay float32.

    Returns:
        The path written.

    Raises:
        ExportError: unsupported model, tokenizer, RoPE scaling or dtype, or a plan llama.cpp's
            graph cannot express.
    """
    import gguf

    if dtype not in GGUF_DTYPES:
        raise ExportError(f"GGUF dtype {dtype!r} is not one of {', '.join(GGUF_DTYPES)}")
    folder = Path(model_folder)
    model = _load_decoder(folder)
    config = model.config
    decoder = model.model
    layers = decoder.layers
    head_dim = layers[0].self_attn.head_dim
    hidden = decoder.embed_tokens.weight.shape[1]
    vocab_size = decoder.embed_tokens.weight.shape[0]
    sizes = _layer_sizes(layers, head_dim)
    uniform = (
        len({(s.heads, s.kv_heads, s.ffn) for s in sizes}) == 1 and sizes[0].heads > 0 and sizes[0].ffn > 0
    )
    arch = "llama" if uniform else "deci"
    rope = _rope_keys(config)
    odd_widths = sorted({s.ffn for s in sizes if s.ffn % LLAMA_CPP_FFN_MULTIPLE})
    if odd_widths:
        logger.warning(
            "%d of %d layers have an FFN width that is not a multiple of %d (%s); llama.cpp processes "
            "prompts slower on such widths; prune with --neuron-multiple %d to avoid it",
            sum(s.ffn % LLAMA_CPP_FFN_MULTIPLE != 0 for s in sizes),
            len(sizes),
            LLAMA_CPP_FFN_MULTIPLE,
            ", ".join(map(str, odd_widths[:5])) + (", ..." if len(odd_widths) > 5 else ""),
            LLAMA_CPP_FFN_MULTIPLE,
        )

    tensors: dict[str, torch.Tensor] = {"token_embd.weight": decoder.embed_tokens.weight}
    for index, (layer, size) in enumerate(zip(layers, sizes, strict=True)):
        tensors.update(_layer_tensors(layer, size, head_dim, hidden, index))
    tensors["output_norm.weight"] = decoder.norm.weight
    if not getattr(config, "tie_word_embeddings", False):
        tensors["output.weight"] = model.lm_head.weight

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp_name:
        writer = gguf.GGUFWriter(tmp_name, arch)
        writer.add_name(folder.resolve().name)
        writer.add_block_count(len(layers))
        writer.add_context_length(int(config.max_position_embeddings))
        writer.add_embedding_length(hidden)
        per_layer = arch == "deci"
        writer.add_feed_forward_length([s.ffn for s in sizes] if per_layer else sizes[0].ffn)
        writer.add_head_count([s.heads for s in sizes] if per_layer else sizes[0].heads)
        writer.add_head_count_kv([s.kv_heads for s in sizes] if per_layer else sizes[0].kv_heads)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(rope["theta"])
        if rope["linear_factor"] != 1.0:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(rope["linear_factor"])
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(vocab_size)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        _add_tokenizer(writer, folder, vocab_size)
        for name, tensor in tensors.items():
            array = tensor.detach().float().cpu().numpy()
            if dtype == "f16" and array.ndim == 2:
                array = array.astype(np.float16)
            writer.add_tensor(name, np.ascontiguousarray(array))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out_path
