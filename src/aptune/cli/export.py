"""``aptune export``: write a run's exported model to another folder or a serving format."""

from __future__ import annotations

from pathlib import Path

import click

from aptune.cli.errors import user_errors

__all__ = ["export_command"]


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Where to write the model folder (hf, onnx-genai) or file (gguf, onnx).",
)
@click.option(
    "--format",
    "fmt",
    default="hf",
    show_default=True,
    help=(
        "hf | gguf (llama, mistral, qwen2: llama.cpp, Ollama) | onnx (bert, roberta, llama, mistral, "
        "qwen2: ONNX Runtime; decoders as one forward, or with --kv-cache for generation) | onnx-genai "
        "(llama, mistral, qwen2 causal LMs: a folder for onnxruntime-genai)."
    ),
)
@click.option(
    "--dtype",
    default="float32",
    show_default=True,
    help="float32 | bfloat16 | float16 (gguf: float32 | float16; onnx, onnx-genai: float32).",
)
@click.option(
    "--kv-cache",
    is_flag=True,
    help=(
        "onnx, causal LMs: write a generation graph with past_key_values.* inputs and present.* "
        "outputs instead of one full forward."
    ),
)
@click.option(
    "--last-logits-only",
    is_flag=True,
    help=(
        "With --kv-cache: the graph returns each row's last-position logits only, (batch, 1, vocab), "
        "so prompts skip the LM head at every other position (generation loops with left padding)."
    ),
)
def export_command(
    run_dir: Path, out: Path, fmt: str, dtype: str, kv_cache: bool, last_logits_only: bool
) -> None:
    """Write the run's exported model to another folder or serving format (optionally in another dtype).

    RUN_DIR is a run folder written by `aptune train` (or an exported model folder).
    """
    from aptune.formats import export_format
    from aptune.formats.onnx_files import data_file_name

    with user_errors():
        export_format(run_dir, out, fmt, dtype, kv_cache=kv_cache, last_logits_only=last_logits_only)
    weights = out.parent / data_file_name(out.name)
    beside = f" (weights in {weights.name} beside it)" if fmt == "onnx" and weights.is_file() else ""
    click.echo(f"aptune: wrote {out}{beside}")
