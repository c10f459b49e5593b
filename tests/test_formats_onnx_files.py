"""The files of an exported ONNX graph: external weights gathered into one file, fixed output dims,
atomic replacement (aptune.formats.onnx_files)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

from aptune.errors import ExportError
from aptune.formats.onnx import export_onnx
from aptune.formats.onnx_files import gather_external_data, write_graph
from test_llama import tiny_llama


@pytest.fixture(scope="module")
def inline_graph(tmp_path_factory):
    """A tiny causal LM's full-forward graph with its weights inside the .onnx file, and its vocab."""
    model = tiny_llama()
    path = export_onnx(model, tmp_path_factory.mktemp("inline") / "model.onnx")
    return path, model.config.vocab_size


def _save_per_tensor(inline_path, file_name: str) -> None:
    """Save the graph as the TorchScript exporter saves one over 2 GB: a file per tensor beside it."""
    onnx.save(
        onnx.load(str(inline_path)),
        file_name,
        save_as_external_data=True,
        all_tensors_to_one_file=False,
        size_threshold=0,
    )


def _logits(path) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.array([[5, 9, 17, 3, 11]], dtype=np.int64)
    return session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]


def test_per_tensor_files_are_gathered_into_one_weight_file(tmp_path, inline_graph):
    inline_path, vocab = inline_graph
    _save_per_tensor(inline_path, str(tmp_path / "model.onnx"))
    assert len(list(tmp_path.iterdir())) > 5  # one file per tensor

    assert gather_external_data(tmp_path / "model.onnx", "model.onnx.data", {"logits": {1: 1}})

    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    locations = {
        entry.value for t in graph.graph.initializer for entry in t.external_data if entry.key == "location"
    }
    assert locations == {"model.onnx.data"}
    dims = graph.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == ["batch", 1, vocab]
    # every tensor is read back from its new offset: the graph computes what the inline one does
    np.testing.assert_array_equal(_logits(tmp_path / "model.onnx"), _logits(inline_path))


def test_a_graph_without_external_data_only_gets_its_dims_fixed(tmp_path, inline_graph):
    inline_path, _ = inline_graph
    (tmp_path / "model.onnx").write_bytes(inline_path.read_bytes())
    assert not gather_external_data(tmp_path / "model.onnx", "model.onnx.data", {"logits": {1: 1}})
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    graph = onnx.load(str(tmp_path / "model.onnx"))
    assert graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 1


def test_write_graph_moves_a_graph_and_its_weights_into_place(tmp_path, inline_graph):
    inline_path, _ = inline_graph
    out = tmp_path / "out" / "model.onnx"
    write_graph(out, lambda name: _save_per_tensor(inline_path, name))
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    np.testing.assert_array_equal(_logits(out), _logits(inline_path))

    # a later graph small enough to be inline replaces both: no stale weight file stays beside it
    def inline_export(name: str) -> None:
        with open(name, "wb") as handle:
            handle.write(inline_path.read_bytes())

    write_graph(out, inline_export)
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]
    np.testing.assert_array_equal(_logits(out), _logits(inline_path))


def test_a_failed_export_leaves_the_earlier_graph_and_no_scratch_folder(tmp_path, inline_graph):
    inline_path, _ = inline_graph
    out = tmp_path / "model.onnx"
    write_graph(out, lambda name: _save_per_tensor(inline_path, name))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing(name: str) -> None:
        _save_per_tensor(inline_path, name)
        raise RuntimeError("exporter failed")

    with pytest.raises(RuntimeError, match="exporter failed"):
        write_graph(out, failing)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_truncated_weight_file_is_an_export_error(tmp_path, inline_graph):
    inline_path, _ = inline_graph
    _save_per_tensor(inline_path, str(tmp_path / "model.onnx"))
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    location = next(e.value for e in graph.graph.initializer[0].external_data if e.key == "location")
    (tmp_path / location).write_bytes((tmp_path / location).read_bytes()[:-4])
    with pytest.raises(ExportError, match="ended after"):
        gather_external_data(tmp_path / "model.onnx", "model.onnx.data")


def test_export_command_names_the_weight_file_of_a_large_graph(tmp_path, monkeypatch, capsys):
    import aptune.formats
    from aptune.cli import main

    large = [True, False]

    def fake_export(run_dir, out, fmt, dtype, **options):  # a graph over 2 GB as its two files, then one
        out.write_bytes(b"graph")
        if large.pop(0):
            (out.parent / "model.onnx.data").write_bytes(b"weights")

    monkeypatch.setattr(aptune.formats, "export_format", fake_export)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path), "--out", str(tmp_path / "model.onnx"), "--format", "onnx"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"aptune: wrote {tmp_path / 'model.onnx'} (weights in model.onnx.data beside it)"
    )
    (tmp_path / "model.onnx.data").unlink()  # as write_graph does for an inline graph
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path), "--out", str(tmp_path / "model.onnx"), "--format", "onnx"])
    assert capsys.readouterr().out.strip() == f"aptune: wrote {tmp_path / 'model.onnx'}"
