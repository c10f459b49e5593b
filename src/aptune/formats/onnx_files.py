"""The files of an ONNX graph: the ``.onnx`` file and, for graphs over 2 GB, one weight file beside it.

A protobuf file holds at most 2 GB, so the TorchScript exporter writes the weights of a larger model
as external data: one file per tensor, named after the tensor, in the graph's folder. `write_graph`
runs the exporter in a temporary folder and moves the result into place as at most two files,
``model.onnx`` and ``model.onnx.data`` (every external tensor in one file, at the offsets the graph
records, as ONNX Runtime, optimum and onnxruntime-genai expect), so that an export never scatters
tensor-named files into the user's folder. The weights are copied file to file, never loaded, so a
model of any size exports in the memory the model itself takes.

The graph's declared output shapes can be fixed on the way (``static_output_dims``): the tracer
leaves symbolic a dimension that a slice makes constant (the last-position logits).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from aptune.atomic import atomic_path
from aptune.errors import ExportError

__all__ = ["data_file_name", "gather_external_data", "write_graph"]

#: Bytes copied per read while gathering the external data.
_COPY_CHUNK = 1 << 24


def data_file_name(graph_name: str) -> str:
    """The name of the weight file beside a graph called ``graph_name`` (``model.onnx.data``)."""
    return f"{graph_name}.data"


def _onnx():
    try:
        import onnx
    except ImportError as error:
        raise ExportError(
            "rewriting the ONNX graph's files needs the onnx package; pip install 'aptune[onnx]'"
        ) from error
    return onnx


def gather_external_data(
    graph_path: Path, data_name: str, static_output_dims: dict[str, dict[int, int]] | None = None
) -> bool:
    """Rewrite the graph at ``graph_path`` in place: every external tensor in one file, fixed dims set.

    Args:
        graph_path: An ``.onnx`` file; its external data (if any) sits in its folder.
        data_name: Name of the single weight file to write in that folder (an existing file of that
            name is replaced). The per-tensor files are removed once copied.
        static_output_dims: Output name -> {dimension index: size} to write into the output's
            declared shape.

    Returns:
        Whether the graph has external data (and ``data_name`` was written).
    """
    onnx = _onnx()
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    graph = onnx.load(str(graph_path), load_external_data=False)  # the weights stay on disk
    for output in graph.graph.output:
        for index, size in (static_output_dims or {}).get(output.name, {}).items():
            dim = output.type.tensor_type.shape.dim[index]
            dim.Clear()
            dim.dim_value = size
    folder = graph_path.parent
    tensors = [t for t in _all_tensors(graph) if uses_external_data(t)]
    copied: set[str] = set()
    if tensors:
        with open(folder / data_name, "wb") as data:
            for tensor in tensors:
                info = ExternalDataInfo(tensor)
                if info.location == data_name:
                    raise ExportError(
                        f"the exporter already wrote a file named {data_name}; export elsewhere"
                    )
                offset = data.tell()
                with open(folder / info.location, "rb") as source:
                    source.seek(info.offset or 0)
                    length = _copy(source, data, info.length)
                _point_to(tensor, data_name, offset, length)
                copied.add(info.location)
    onnx.save(graph, str(graph_path))
    for name in copied:
        (folder / name).unlink()
    return bool(tensors)


def _point_to(tensor, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` (a TensorProto with external data) read ``length`` bytes at ``offset`` of
    ``location``; its data stays on disk (onnx's own setter wants the bytes in memory)."""
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _all_tensors(model) -> list:
    """Every initializer and tensor attribute of ``model`` (a ModelProto), subgraphs included."""
    tensors, graphs = [], [model.graph]
    while graphs:
        graph = graphs.pop()
        tensors.extend(graph.initializer)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    tensors.append(attribute.t)
                tensors.extend(attribute.tensors)
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    return tensors


def _copy(source, target, length: int | None) -> int:
    """Copy ``length`` bytes (None: to the end) from ``source`` to ``target``; return the count."""
    copied = 0
    while length is None or copied < length:
        chunk = source.read(_COPY_CHUNK if length is None else min(_COPY_CHUNK, length - copied))
        if not chunk:
            break
        target.write(chunk)
        copied += len(chunk)
    if length is not None and copied != length:
        raise ExportError(
            f"an external data file of the exported graph ended after {copied} of {length} bytes"
        )
    return copied


def write_graph(
    out_path: Path, export: Callable[[str], None], static_output_dims: dict[str, dict[int, int]] | None = None
) -> Path:
    """Run ``export(file_name)`` in a temporary folder and move its graph to ``out_path``.

    Args:
        out_path: The ``.onnx`` file to write. Its weight file ``<name>.data`` (`data_file_name`) is
            written beside it when the graph has external data, and removed when it has none (a stale
            one from an earlier, larger export would otherwise stay).
        export: Writes the graph to the file name it is given (``torch.onnx.export``).
        static_output_dims: See `gather_external_data`.

    Returns:
        ``out_path``.
    """
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data_name = data_file_name(out_path.name)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    try:
        graph_path = scratch / out_path.name
        export(str(graph_path))
        external = False
        if static_output_dims or _has_other_files(scratch, graph_path):
            external = gather_external_data(graph_path, data_name, static_output_dims)
        if external:
            with atomic_path(out_path.parent / data_name) as tmp_name:
                os.replace(scratch / data_name, tmp_name)
        else:
            with contextlib.suppress(FileNotFoundError):
                (out_path.parent / data_name).unlink()
        with atomic_path(out_path) as tmp_name:
            os.replace(graph_path, tmp_name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out_path


def _has_other_files(folder: Path, graph_path: Path) -> bool:
    """Whether the exporter wrote anything besides the graph (external data) into ``folder``."""
    return any(path != graph_path for path in folder.iterdir())
