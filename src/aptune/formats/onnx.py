"""ONNX export of pruned models for ONNX Runtime: encoders (BERT, RoBERTa) and decoders (LLaMA,
Mistral, Qwen2).

Both layouts export: the graph is traced from the loaded model, so per-layer head counts, KV groups,
FFN widths and layers without attention are baked into the tensor shapes. Batch and sequence length
are dynamic axes. The inputs are ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` for
encoders with more than one token type); the outputs are the model's prediction fields (``logits``,
or ``start_logits`` and ``end_logits`` for question answering).

A decoder's graph is one full forward without a KV cache: ``logits`` for every position of a causal
LM (scoring, perplexity, one generation step), or per sequence for a sequence classifier. Padding may
sit on either side. Token-by-token generation re-runs the whole prefix, so serve generation through
GGUF (llama.cpp, Ollama) or a stock folder (vLLM) instead.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from aptune.atomic import atomic_path
from aptune.errors import ExportError

__all__ = ["ONNX_DECODER_FAMILIES", "ONNX_FAMILIES", "export_onnx"]

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


def _load_model(model_or_folder: nn.Module | str | Path) -> nn.Module:
    if isinstance(model_or_folder, nn.Module):
        return model_or_folder
    from aptune.export import load

    return load(model_or_folder)


def export_onnx(
    model_or_folder: nn.Module | str | Path, out_path: str | Path, *, opset: int = _OPSET
) -> Path:
    """Write an ONNX file of a (pruned) BERT, RoBERTa, LLaMA, Mistral or Qwen2 model, in float32.

    Args:
        model_or_folder: A loaded model, or a folder written by `aptune.export` (free or uniform).
        out_path: The ``.onnx`` file to write (replaced atomically).
        opset: ONNX opset version.

    Returns:
        The path written.

    Raises:
        ExportError: the model is of another family, or has no prediction output.
    """
    model = _load_model(model_or_folder)
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ONNX_FAMILIES:
        raise ExportError(
            f"ONNX export supports {', '.join(ONNX_FAMILIES)} models, not {model_type!r}; "
            "export this model with --format hf"
        )
    model = model.float().eval()
    decoder = model_type in ONNX_DECODER_FAMILIES
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
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp_name, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            _Predictions(model, input_names, output_names, **options),
            tuple(example[name] for name in input_names),
            tmp_name,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
        )
    return out_path
