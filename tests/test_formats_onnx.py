"""ONNX export of pruned encoders and decoders: ONNX Runtime's logits equal PyTorch's, padded, any shape."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification, MistralConfig, MistralForCausalLM

import aptune
from aptune.errors import ExportError
from aptune.formats.onnx import export_onnx
from test_export import _pruned
from test_llama import _pruned as _masked_decoder
from test_llama import tiny_llama, tiny_mistral, tiny_qwen2
from test_t5 import tiny_t5
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


def test_onnx_refuses_other_families(tmp_path):
    with pytest.raises(
        ExportError, match=r"ONNX export supports .* not 't5'; export this model with --format hf"
    ):
        export_onnx(tiny_t5(), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def _decoder_inputs(size: int, length: int, vocab: int, seed: int, left: bool) -> dict[str, torch.Tensor]:
    """Token ids >= 3 (no padding id) with one row padded on the left or on the right."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, : length // 3] = 0 if left else 1
    if not left:
        attention_mask[0, length - length // 3 :] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _assert_session_matches(session, model, shapes) -> None:
    """ONNX Runtime's logits equal the model's at every position that is not padding."""
    vocab = model.config.vocab_size
    for size, length, left in shapes:
        inputs = _decoder_inputs(size, length, vocab, seed=size + length, left=left)
        assert int(inputs["attention_mask"].sum()) < inputs["attention_mask"].numel()  # a padded row
        with torch.no_grad():
            expected = model(**inputs, use_cache=False).logits.numpy()
        (got,) = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})
        assert got.shape == expected.shape
        if expected.ndim == 3:  # per position: padded positions carry no prediction
            real = inputs["attention_mask"].numpy().astype(bool)
            got, expected = got[real], expected[real]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


# shapes other than the traced one (batch 2, length 8): dynamic axes, both padding sides
_DECODER_SHAPES = ((3, 9, True), (1, 5, False), (2, 17, False), (4, 13, True))


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2, tiny_mistral])
def test_onnx_runtime_matches_pytorch_on_a_pruned_decoder(tmp_path, factory):
    model, controller = _masked_decoder(factory, drop_site=0)
    controller.prune_to_masks_()
    heads = controller.layer_summary()["heads_per_layer"]
    assert heads[0] == 0 and heads[1] > 0  # a layer without attention next to one with heads
    aptune.export(model, controller, tmp_path / "model")
    path = export_onnx(tmp_path / "model", tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    _assert_session_matches(session, model.eval(), _DECODER_SHAPES)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary file left


def test_onnx_decoder_keeps_the_sliding_window_beyond_the_traced_length(tmp_path):
    torch.manual_seed(0)
    config = MistralConfig(**{**tiny_mistral().config.to_dict(), "sliding_window": 4})
    model = MistralForCausalLM(config).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # lengths below and well above the window and the traced length
    _assert_session_matches(session, model, ((2, 3, False), (2, 19, True), (1, 24, False)))
    inputs = _decoder_inputs(1, 24, config.vocab_size, seed=5, left=False)
    full = MistralForCausalLM(MistralConfig(**{**config.to_dict(), "sliding_window": None})).eval()
    full.load_state_dict(model.state_dict())
    with torch.no_grad():  # the window changes the logits, so the comparison above sees it
        assert not torch.allclose(full(**inputs).logits, model(**inputs).logits, atol=1e-3)


def test_onnx_decoder_sequence_classifier_scores_the_last_real_token(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(**{**tiny_llama().config.to_dict(), "num_labels": 3, "tie_word_embeddings": False})
    model, controller = _masked_decoder(lambda: LlamaForSequenceClassification(config).eval(), drop_site=1)
    controller.prune_to_masks_()
    aptune.export(model, controller, tmp_path / "model")
    path = export_onnx(aptune.load(tmp_path / "model"), tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    # right padding with pad ids: the classifier reads the last token that is not the padding id
    inputs = _decoder_inputs(3, 11, config.vocab_size, seed=2, left=False)
    inputs["input_ids"][0, 8:] = config.pad_token_id
    with torch.no_grad():
        expected = model.eval()(**inputs).logits.numpy()
    (got,) = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


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
