"""ONNX export of pruned encoders and decoders: ONNX Runtime's logits equal PyTorch's, padded, any shape."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification, MistralConfig, MistralForCausalLM

import aptune
from aptune.errors import ExportError
from aptune.formats.onnx import cache_input_names, cache_output_names, export_onnx
from aptune.formats.onnx_generate import empty_caches, greedy_generate
from test_export import _pruned
from test_llama import _greedy_without_cache, tiny_llama, tiny_mistral, tiny_qwen2
from test_llama import _pruned as _masked_decoder
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
        (["--format", "hf", "--kv-cache"], "--kv-cache applies to --format onnx only, not 'hf'"),
        (["--format", "onnx", "--kv-cache"], "KV-cache graph is written for causal LMs"),
        (["--format", "onnx", "--last-logits-only"], "--last-logits-only applies to a KV-cache graph"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "x"), *options])
        assert exit_info.value.code == 2
        stderr = capsys.readouterr().err
        assert message in stderr and len(stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------- KV-cache graph
def _prompt(size: int, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids >= 3 with the first row left-padded by a third of its length (pad id 0)."""
    inputs = _decoder_inputs(size, length, vocab, seed=seed, left=True)
    inputs["input_ids"][inputs["attention_mask"] == 0] = 0
    return inputs["input_ids"], inputs["attention_mask"]


def _assert_chunked_logits_match(session, model, input_ids, attention_mask, split: int) -> None:
    """Prompt in two chunks through the cache graph (the second with a non-empty past and several new
    tokens) against one full PyTorch forward without a cache, at every real position."""
    num_layers = len([i for i in session.get_inputs() if i.name.endswith(".key")])
    ids, mask = input_ids.numpy(), attention_mask.numpy()
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    first = session.run(
        None,
        {
            "input_ids": ids[:, :split],
            "attention_mask": mask[:, :split],
            "position_ids": positions[:, :split],
            **empty_caches(session, ids.shape[0]),
        },
    )
    past = dict(zip(cache_input_names(num_layers), first[1:], strict=True))
    second = session.run(
        None,
        {"input_ids": ids[:, split:], "attention_mask": mask, "position_ids": positions[:, split:], **past},
    )
    assert second[1].shape[2] == ids.shape[1]  # the cache grew to the whole sequence
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.numpy()
    got = np.concatenate([first[0], second[0]], axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2, tiny_mistral])
def test_onnx_kv_cache_graph_generates_like_pytorch_on_a_pruned_decoder(tmp_path, factory):
    model, controller = _masked_decoder(factory, drop_site=0)
    controller.prune_to_masks_()
    aptune.export(model, controller, tmp_path / "model")
    path = export_onnx(tmp_path / "model", tmp_path / "model.onnx", kv_cache=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["input_ids", "attention_mask", "position_ids", *cache_input_names(2)]
    assert [o.name for o in session.get_outputs()] == ["logits", *cache_output_names(2)]
    layer0, layer1 = session.get_inputs()[3], session.get_inputs()[5]
    assert (layer0.shape[1], layer0.shape[3]) == (1, 1)  # the placeholder of a layer without attention
    model = aptune.load(tmp_path / "model")  # the graph was traced from the reloaded folder
    head_dim = (
        getattr(model.config, "head_dim", None)
        or model.config.hidden_size // model.config.num_attention_heads
    )
    kept_kv_heads = model.model.layers[1].self_attn.k_proj.out_features // head_dim
    assert kept_kv_heads > 0 and (layer1.shape[1], layer1.shape[3]) == (kept_kv_heads, head_dim)
    input_ids, attention_mask = _prompt(3, 7, model.config.vocab_size, seed=4)
    got = greedy_generate(session, input_ids.numpy(), attention_mask.numpy(), max_new_tokens=10)
    expected = _greedy_without_cache(model, input_ids, attention_mask, steps=10)
    np.testing.assert_array_equal(got, expected.numpy())
    for split in (1, 4):
        _assert_chunked_logits_match(session, model, input_ids, attention_mask, split)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary file left


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2])
def test_last_logits_only_graph_returns_the_last_position_and_generates_the_same_tokens(tmp_path, factory):
    model, controller = _masked_decoder(factory, drop_site=0)
    controller.prune_to_masks_()
    aptune.export(model, controller, tmp_path / "model")
    model = aptune.load(tmp_path / "model")
    sessions = {
        last: onnxruntime.InferenceSession(
            str(
                export_onnx(
                    tmp_path / "model", tmp_path / f"last{last}.onnx", kv_cache=True, last_logits_only=last
                )
            ),
            providers=["CPUExecutionProvider"],
        )
        for last in (False, True)
    }
    input_ids, attention_mask = _prompt(3, 7, model.config.vocab_size, seed=5)
    feed = {
        "input_ids": input_ids.numpy(),
        "attention_mask": attention_mask.numpy(),
        "position_ids": np.clip(attention_mask.numpy().cumsum(-1) - 1, 0, None),
        **empty_caches(sessions[True], 3),
    }
    last_logits, *last_present = sessions[True].run(None, feed)
    all_logits, *all_present = sessions[False].run(None, feed)
    assert last_logits.shape == (3, 1, model.config.vocab_size)
    # the declared shape says what the graph returns: one position (the all-logits graph: any number)
    assert sessions[True].get_outputs()[0].shape == ["batch", 1, model.config.vocab_size]
    assert sessions[False].get_outputs()[0].shape == ["batch", "sequence", model.config.vocab_size]
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    np.testing.assert_allclose(last_logits[:, 0], expected[:, -1].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(last_logits, all_logits[:, -1:], rtol=1e-5, atol=1e-5)
    for last, full in zip(last_present, all_present, strict=True):  # the caches are the same
        np.testing.assert_allclose(last, full, rtol=1e-5, atol=1e-5)
    got = greedy_generate(sessions[True], input_ids.numpy(), attention_mask.numpy(), max_new_tokens=8)
    expected_ids = _greedy_without_cache(model, input_ids, attention_mask, steps=8)
    np.testing.assert_array_equal(got, expected_ids.numpy())


def test_onnx_kv_cache_graph_applies_the_sliding_window_beyond_it(tmp_path):
    torch.manual_seed(0)
    config = MistralConfig(**{**tiny_mistral().config.to_dict(), "sliding_window": 4})
    model = MistralForCausalLM(config).eval()
    session = onnxruntime.InferenceSession(
        str(export_onnx(model, tmp_path / "model.onnx", kv_cache=True)), providers=["CPUExecutionProvider"]
    )
    input_ids, attention_mask = _prompt(2, 9, config.vocab_size, seed=7)
    _assert_chunked_logits_match(session, model, input_ids, attention_mask, split=3)
    got = greedy_generate(session, input_ids.numpy(), attention_mask.numpy(), max_new_tokens=12)
    np.testing.assert_array_equal(got, _greedy_without_cache(model, input_ids, attention_mask, 12).numpy())
    full = MistralForCausalLM(MistralConfig(**{**config.to_dict(), "sliding_window": None})).eval()
    full.load_state_dict(model.state_dict())
    with torch.no_grad():  # the window changes the logits, so the comparisons above see it
        assert not torch.allclose(
            full(input_ids, attention_mask=attention_mask).logits,
            model(input_ids, attention_mask=attention_mask).logits,
            atol=1e-3,
        )


class _RecordingSession:
    """An ONNX Runtime session that records the shapes of what every call is fed."""

    def __init__(self, session) -> None:
        self.session, self.feeds = session, []

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, output_names, feed):
        self.feeds.append({name: value.shape for name, value in feed.items()})
        return self.session.run(output_names, feed)


def test_greedy_generate_feeds_one_token_per_step_and_stops_rows_at_eos(tmp_path):
    model = tiny_llama()
    session = onnxruntime.InferenceSession(
        str(export_onnx(model, tmp_path / "model.onnx", kv_cache=True)), providers=["CPUExecutionProvider"]
    )
    input_ids, attention_mask = _prompt(3, 6, model.config.vocab_size, seed=1)
    recorder = _RecordingSession(session)
    free_run = greedy_generate(recorder, input_ids.numpy(), attention_mask.numpy(), max_new_tokens=5)
    # the prompt once with empty caches, then one token per row against a cache that grows by one
    assert [feed["input_ids"] for feed in recorder.feeds] == [(3, 6)] + [(3, 1)] * 4
    assert [feed["past_key_values.0.key"][2] for feed in recorder.feeds] == [0, 6, 7, 8, 9]
    assert [feed["attention_mask"][1] for feed in recorder.feeds] == [6, 7, 8, 9, 10]
    # an eos that row 1 produces at its second new token: transformers pads that row afterwards
    eos = int(free_run[1, 7])
    with torch.no_grad():
        expected = model.generate(
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=5,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
        )
    got = greedy_generate(
        session, input_ids.numpy(), attention_mask.numpy(), max_new_tokens=5, eos_token_id=eos
    )
    np.testing.assert_array_equal(got, expected.numpy())
    assert got[1, 8:].tolist() == [0] * (got.shape[1] - 8)


def test_kv_cache_export_and_generation_reject_what_they_cannot_run(tmp_path):
    classifier_config = LlamaConfig(**{**tiny_llama().config.to_dict(), "num_labels": 2})
    for model in (LlamaForSequenceClassification(classifier_config), tiny_bert()):
        with pytest.raises(ExportError, match=r"for causal LMs.*without --kv-cache"):
            export_onnx(model, tmp_path / "x.onnx", kv_cache=True)
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ValueError, match="last_logits_only applies to a KV-cache graph"):
        export_onnx(tiny_llama(), tmp_path / "x.onnx", last_logits_only=True)
    plain = export_onnx(tiny_llama(), tmp_path / "plain.onnx")
    ids = np.full((1, 4), 5, dtype=np.int64)
    with pytest.raises(ValueError, match="no past_key_values inputs; export it with --kv-cache"):
        greedy_generate(plain, ids, max_new_tokens=2)
    cached = export_onnx(tiny_llama(), tmp_path / "cached.onnx", kv_cache=True)
    for bad, message in (
        ({"input_ids": ids[0]}, "non-empty \\(batch, length\\) integer array"),
        ({"input_ids": ids.astype(np.float32)}, "integer array"),
        ({"input_ids": ids, "attention_mask": np.ones((1, 3))}, "give one per token"),
        ({"input_ids": ids, "max_new_tokens": 0}, "at least 1"),
    ):
        with pytest.raises(ValueError, match=message):
            greedy_generate(cached, **{"max_new_tokens": 2, **bad})


def test_export_command_writes_a_kv_cache_graph(tmp_path):
    from aptune.cli import main

    model, controller = _masked_decoder(tiny_qwen2, drop_site=1)
    controller.prune_to_masks_()
    aptune.export(model, controller, tmp_path / "run" / "model")
    for out, options in (("m.onnx", []), ("last.onnx", ["--last-logits-only"])):
        with pytest.raises(SystemExit) as exit_info:
            main(
                [
                    "export",
                    str(tmp_path / "run"),
                    "--out",
                    str(tmp_path / out),
                    "--format",
                    "onnx",
                    "--kv-cache",
                    *options,
                ]
            )
        assert exit_info.value.code == 0
    reloaded = aptune.load(tmp_path / "run" / "model")
    session = onnxruntime.InferenceSession(str(tmp_path / "last.onnx"), providers=["CPUExecutionProvider"])
    ids = np.full((2, 5), 7, dtype=np.int64)
    feed = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "position_ids": np.tile(np.arange(5), (2, 1)),
    }
    logits = session.run(["logits"], {**feed, **empty_caches(session, 2)})[0]
    assert logits.shape == (2, 1, reloaded.config.vocab_size)  # the option reached the graph
    input_ids, attention_mask = _prompt(2, 5, reloaded.config.vocab_size, seed=3)
    got = greedy_generate(tmp_path / "m.onnx", input_ids.numpy(), attention_mask.numpy(), max_new_tokens=4)
    np.testing.assert_array_equal(got, _greedy_without_cache(reloaded, input_ids, attention_mask, 4).numpy())
