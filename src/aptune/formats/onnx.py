"""ONNX export of pruned models for ONNX Runtime: encoders (BERT, RoBERTa) and decoders (LLaMA,
Mistral, Qwen2).

Both layouts export: the graph is traced from the loaded model, so per-layer head counts, KV groups,
FFN widths and layers without attention are baked into the tensor shapes. Batch and sequence length
are dynamic axes. The inputs are ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` for
encoders with more than one token type); the outputs are the model's prediction fields (``logits``,
or ``start_logits`` and ``end_logits`` for question answering).

A decoder's graph is by default one full forward without a KV cache: ``logits`` for every position
of a causal LM (scoring, perplexity), or per sequence for a sequence classifier. Padding may sit on
either side.

With ``kv_cache=True`` a causal LM is written as a graph for token-by-token generation, named as
ONNX Runtime's generation tools and optimum name it:

* inputs ``input_ids`` ``(batch, sequence)``, ``attention_mask`` ``(batch, past_sequence +
  sequence)``, ``position_ids`` ``(batch, sequence)`` and, per layer ``i``,
  ``past_key_values.{i}.key`` / ``.value`` ``(batch, kv_heads_i, past_sequence, head_dim)``;
* outputs ``logits`` ``(batch, sequence, vocab)`` and ``present.{i}.key`` / ``.value``
  ``(batch, kv_heads_i, past_sequence + sequence, head_dim)``.

With ``last_logits_only=True`` the ``logits`` output is ``(batch, 1, vocab)``: the LM head runs on
each row's last position only, which is all a generation loop reads, so a prompt costs one LM-head
product per row instead of one per token (on SmolLM2-135M the LM head is a fifth of a token's
multiply-adds). Rows must then be left-padded, so that the last position is a real token.

``kv_heads_i`` is the layer's own number of kept KV groups (a static dimension of the graph, readable
from the session's input metadata). A layer without attention keeps a placeholder of one zero
channel, ``(batch, 1, past_sequence, 1)``, so that every layer's cache has the same length. The
first call takes pasts of length 0. Position ids count the real tokens of each row (``cumsum(mask) -
1``), so left-padded batches generate as in transformers. The cache keeps every token (a Mistral
sliding window is applied by the mask, not by trimming the cache). With ``pad_cache=True`` every
layer's cache tensors get one shape instead, zero-padded (`aptune.formats.onnx_genai` needs that).
`aptune.formats.onnx_generate` drives either graph.

A model whose weights pass protobuf's 2 GB limit (float32 LLaMA-family models from about 0.5 B
parameters) is written as ``model.onnx`` plus its weights in ``model.onnx.data``
(`aptune.formats.onnx_files`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from aptune.errors import ExportError
from aptune.formats.hf_cache import cache_keyword, returned_cache
from aptune.formats.onnx_files import write_graph

__all__ = [
    "ONNX_DECODER_FAMILIES",
    "ONNX_FAMILIES",
    "cache_input_names",
    "cache_output_names",
    "cache_shapes",
    "export_onnx",
    "model_or_load",
    "padded_cache_shape",
]

#: ``model_type`` values of the decoders that export to ONNX (traced without a KV cache).
ONNX_DECODER_FAMILIES = ("llama", "mistral", "qwen2")
#: ``model_type`` values that export to ONNX.
ONNX_FAMILIES = ("bert", "roberta", *ONNX_DECODER_FAMILIES)
_OPSET = 17
_PREDICTION_FIELDS = ("logits", "start_logits", "end_logits")


class _Predictions(nn.Module):
    """Wraps a model so that it takes positional tensors and returns its prediction fields as a tuple."""

    def __init__(
        self, model: nn.Module, input_names: list[str], output_names: list[str], **options: object
    ) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_names = output_names
        self.options = options  # fixed keyword arguments of every call (decoders: use_cache=False)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = dict(zip(self.input_names, tensors, strict=True))
        outputs = self.model(**inputs, **self.options, return_dict=True)
        return tuple(outputs[name] for name in self.output_names)


class _CausalLmWithCache(nn.Module):
    """Wraps a causal LM so that it takes its KV cache as flat tensors and returns the grown cache flat.

    Every layer gets a plain growing cache layer (no sliding-window trimming), so the graph's cache
    length is always ``past_sequence + sequence`` and a sliding window acts through the mask alone.
    With ``padded_shape`` ``(kv_heads, head_dim)`` every layer's cache tensors have that shape in the
    graph: a layer reads its own heads and channels of the past and returns its present padded with
    zeros. With ``last_logits_only`` the logits are those of the last position only.
    """

    def __init__(
        self,
        model: nn.Module,
        layer_shapes: list[tuple[int, int]],
        padded_shape: tuple[int, int] | None,
        last_logits_only: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.layer_shapes = layer_shapes
        self.padded_shape = padded_shape
        self.logits_options = {"logits_to_keep": 1} if last_logits_only else {}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        pairs = list(zip(past[0::2], past[1::2], strict=True))
        if self.padded_shape is not None:  # (batch, kv_heads, past, head_dim) -> this layer's heads
            pairs = [
                (key[:, :heads, :, :dim], value[:, :heads, :, :dim])
                for (key, value), (heads, dim) in zip(pairs, self.layer_shapes, strict=True)
            ]
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            return_dict=True,
            **self.logits_options,
            **{cache_keyword(self.model): DynamicCache(ddp_cache_data=pairs)},
        )
        present = [
            tensor for layer in returned_cache(outputs).layers for tensor in (layer.keys, layer.values)
        ]
        if self.padded_shape is not None:
            heads, dim = self.padded_shape
            # (batch, kv_heads_i, total, head_dim_i) -> (batch, heads, total, dim), zeros appended
            present = [
                nn.functional.pad(tensor, (0, dim - tensor.shape[3], 0, 0, 0, heads - tensor.shape[1]))
                for tensor in present
            ]
        return (outputs.logits, *present)


def cache_input_names(num_layers: int) -> list[str]:
    """Names of the past-cache inputs of a KV-cache graph, key before value, layer by layer."""
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def cache_output_names(num_layers: int) -> list[str]:
    """Names of the grown-cache outputs of a KV-cache graph, in the order of `cache_input_names`."""
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def cache_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """``(kv_heads, head_dim)`` of every layer's KV cache, read from a short forward of a causal LM.

    A layer without attention reports its placeholder, ``(1, 1)``.
    """
    with torch.no_grad():
        outputs = model(input_ids=torch.full((1, 2), 5, dtype=torch.long), use_cache=True, return_dict=True)
    # keys: (batch, kv_heads, tokens, head_dim)
    return [(layer.keys.shape[1], layer.keys.shape[3]) for layer in returned_cache(outputs).layers]


def _write_graph(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    out_path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
    static_output_dims: dict[str, dict[int, int]] | None = None,
) -> Path:
    """Trace ``module`` on ``example`` with the TorchScript exporter and write the graph's files
    (`aptune.formats.onnx_files.write_graph`: atomically, weights over 2 GB in one file beside it).

    ``static_output_dims`` names output dimensions whose size is fixed although the tracer left them
    symbolic (``{"logits": {1: 1}}``); they are written into the graph's output metadata.
    """

    def export(file_name: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(
                module,
                example,
                file_name,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
            )

    return write_graph(out_path, export, static_output_dims)


def padded_cache_shape(shapes: list[tuple[int, int]]) -> tuple[int, int]:
    """The one ``(kv_heads, head_dim)`` that holds every layer's cache of `cache_shapes`."""
    return max(heads for heads, _ in shapes), max(dim for _, dim in shapes)


def _export_with_cache(
    model: nn.Module, out_path: Path, opset: int, pad_cache: bool, last_logits_only: bool
) -> Path:
    causal_lm = model.config.model_type in ONNX_DECODER_FAMILIES and type(model).__name__.endswith(
        "ForCausalLM"
    )
    if not causal_lm:
        raise ExportError(
            f"a KV-cache graph is written for causal LMs, not {type(model).__name__}; "
            "export it without --kv-cache"
        )
    shapes = cache_shapes(model)
    padded_shape = padded_cache_shape(shapes) if pad_cache else None
    past_names, present_names = cache_input_names(len(shapes)), cache_output_names(len(shapes))
    # batch 2 with 5 cached and 3 new tokens, the second row left-padded by 2 (a padded row makes the
    # trace build the explicit mask every batch needs); ids >= 3 avoid the padding ids
    past_length, new_length = 5, 3
    input_ids = torch.full((2, new_length), 5, dtype=torch.long)
    attention_mask = torch.ones(2, past_length + new_length, dtype=torch.long)
    attention_mask[1, :2] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past_length:]
    generator = torch.Generator().manual_seed(0)
    past = [
        torch.randn(2, heads, past_length, head_dim, generator=generator)
        for heads, head_dim in ([padded_shape] * len(shapes) if padded_shape else shapes)
        for _ in ("key", "value")
    ]
    input_names = ["input_ids", "attention_mask", "position_ids", *past_names]
    output_names = ["logits", *present_names]
    dynamic_axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch"} if last_logits_only else {0: "batch", 1: "sequence"},
        **{name: {0: "batch", 2: "past_sequence"} for name in past_names},
        **{name: {0: "batch", 2: "total_sequence"} for name in present_names},
    }
    return _write_graph(
        _CausalLmWithCache(model, shapes, padded_shape, last_logits_only),
        (input_ids, attention_mask, position_ids, *past),
        out_path,
        input_names,
        output_names,
        dynamic_axes,
        opset,
        static_output_dims={"logits": {1: 1}} if last_logits_only else None,
    )


def model_or_load(model_or_folder: nn.Module | str | Path) -> nn.Module:
    """The model itself, or the model of a folder written by `aptune.export` (loaded with `aptune.load`)."""
    if isinstance(model_or_folder, nn.Module):
        return model_or_folder
    from aptune.export import load

    return load(model_or_folder)


def export_onnx(
    model_or_folder: nn.Module | str | Path,
    out_path: str | Path,
    *,
    opset: int = _OPSET,
    kv_cache: bool = False,
    pad_cache: bool = False,
    last_logits_only: bool = False,
) -> Path:
    """Write an ONNX file of a (pruned) BERT, RoBERTa, LLaMA, Mistral or Qwen2 model, in float32.

    Args:
        model_or_folder: A loaded model, or a folder written by `aptune.export` (free or uniform).
        out_path: The ``.onnx`` file to write (replaced atomically). A graph over 2 GB keeps its
            weights in one file beside it, ``<name>.data`` (`aptune.formats.onnx_files`).
        opset: ONNX opset version.
        kv_cache: Write a causal LM as a generation graph with past / present KV-cache tensors
            (see the module docstring) instead of one full forward.
        pad_cache: With ``kv_cache``: give every layer's cache tensors one shape, the most KV heads
            and the head size of any layer, zero-padded (for engines that allocate one cache shape
            for all layers, such as onnxruntime-genai). Costs cache memory, not attention compute.
        last_logits_only: With ``kv_cache``: return the logits of each row's last position only,
            ``(batch, 1, vocab)``, for faster prompts in a generation loop (rows left-padded).
            onnxruntime-genai reads every position's logits, so its folders keep them.

    Returns:
        The path written.

    Raises:
        ExportError: the model is of another family, has no prediction output, or ``kv_cache`` is
            asked for a model that is not a causal LM.
    """
    for name, value in (("pad_cache", pad_cache), ("last_logits_only", last_logits_only)):
        if value and not kv_cache:
            raise ValueError(f"{name} applies to a KV-cache graph; pass kv_cache=True as well")
    model = model_or_load(model_or_folder)
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ONNX_FAMILIES:
        raise ExportError(
            f"ONNX export supports {', '.join(ONNX_FAMILIES)} models, not {model_type!r}; "
            "export this model with --format hf"
        )
    model = model.float().eval()
    decoder = model_type in ONNX_DECODER_FAMILIES
    out_path = Path(out_path)
    if kv_cache:
        return _export_with_cache(model, out_path, opset, pad_cache, last_logits_only)
    options = {"use_cache": False} if decoder else {}
    input_names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 1) > 1:
        input_names.append("token_type_ids")
    # batch 2, length 8 with a padded row (left-padded for decoders, as batched generation pads);
    # ids >= 3 avoid the padding ids
    example_ids = torch.full((2, 8), 5, dtype=torch.long)
    example = {
        "input_ids": example_ids,
        "attention_mask": torch.ones_like(example_ids),
        "token_type_ids": torch.zeros_like(example_ids),
    }
    padding = slice(0, 3) if decoder else slice(-3, None)
    example["attention_mask"][1, padding] = 0
    with torch.no_grad():
        probe = model(**{name: example[name] for name in input_names}, **options, return_dict=True)
    output_names = [name for name in _PREDICTION_FIELDS if getattr(probe, name, None) is not None]
    if not output_names:
        raise ExportError(f"{type(model).__name__} returns none of {_PREDICTION_FIELDS}; nothing to export")
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    for name in output_names:
        per_token = name != "logits" or probe[name].dim() == 3  # QA and token-classification outputs
        dynamic_axes[name] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    return _write_graph(
        _Predictions(model, input_names, output_names, **options),
        tuple(example[name] for name in input_names),
        out_path,
        input_names,
        output_names,
        dynamic_axes,
        opset,
    )
