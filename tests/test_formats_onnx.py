"""ONNX export of pruned encoders: ONNX Runtime's logits equal PyTorch's, with padding, any shape."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

import aptune
from aptune.errors import ExportError
from aptune.formats.onnx import export_onnx
from test_export import _pruned
from test_llama import tiny_llama
from tiny import batch, tiny_bert, tiny_roberta


@pytest.mark.parametrize(("factory", "drop_site"), [(tiny_bert, 1), (tiny_roberta, 0)])
def test_onnx_runtime_matches_pytorch_on_a_free_layout_plan(tmp_path, factory, drop_site):
    model, controller = _pruned(factory, drop_site)
    heads = controller.layer_summary()["heads_per_layer"]
    assert 0 in heads and len(set(heads)) == 2  # heads differ per layer, one layer has none
    model.eval()
    aptune.export(model, controller, tmp_path / "model")
    path = export_onnx(tmp_path / "model", tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for size, length in ((4, 10), (2, 23)):  # shapes other than the traced one: dynamic axes
        inputs = batch(size=size, length=length, num_labels=model.config.num_labels, seed=size)
        inputs.pop("labels")
        assert int(inputs["attention_mask"].sum()) < inputs["attention_mask"].numel()  # a padded row
        inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        inputs["token_type_ids"][:, length // 2 :] = int("token_type_ids" in names)
        feed = {name: inputs[name].numpy() for name in names}
        with torch.no_grad():
            expected = model(**{k: v for k, v in inputs.items() if k in names}).logits.numpy()
        (got,) = session.run(["logits"], feed)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary file left


def test_onnx_refuses_decoders(tmp_path):
    with pytest.raises(ExportError, match="ONNX export supports bert, roberta"):
        export_onnx(tiny_llama(), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_export_command_writes_onnx_and_rejects_bad_options(tmp_path, capsys):
    from aptune.cli import main

    model, controller = _pruned(tiny_bert, 1)
    model.eval()
    aptune.export(model, controller, tmp_path / "run" / "model")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx"), "--format", "onnx"])
    assert exit_info.value.code == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    inputs = batch(num_labels=model.config.num_labels)
    inputs.pop("labels")
    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    with torch.no_grad():
        expected = model(**inputs).logits.numpy()
    (got,) = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    for options, message in (
        (["--format", "tflite"], "--format 'tflite' is not one of hf, gguf, onnx"),
        (["--format", "onnx", "--dtype", "float16"], "not available for ONNX"),
        (["--format", "gguf"], "GGUF export supports llama, mistral, qwen2"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "x"), *options])
        assert exit_info.value.code == 2
        stderr = capsys.readouterr().err
        assert message in stderr and len(stderr.strip().splitlines()) == 1
