"""Folders for onnxruntime-genai: generation by ONNX Runtime's own library against PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime_genai as og
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

import aptune
from aptune.errors import ExportError
from aptune.formats.onnx_genai import GENAI_CONFIG_FILE, export_onnx_genai
from aptune.select import KeepSet
from test_llama import _greedy_without_cache, tiny_llama, tiny_mistral, tiny_qwen2
from test_llama import _pruned as _masked_decoder
from test_surgery import _randomise_adapters


def _genai_greedy(folder, input_ids: torch.Tensor, steps: int) -> np.ndarray:
    """Greedy tokens from onnxruntime-genai (prompt included) for a batch of unpadded prompts."""
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(
        do_sample=False, max_length=input_ids.shape[1] + steps, batch_size=input_ids.shape[0]
    )
    generator = og.Generator(model, params)
    generator.append_tokens(input_ids.numpy().astype(np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return np.stack([np.asarray(generator.get_sequence(row)) for row in range(input_ids.shape[0])])


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2, tiny_mistral])
def test_onnxruntime_genai_generates_like_pytorch_on_a_free_layout_plan(tmp_path, factory):
    model, controller = _masked_decoder(factory, drop_site=0)
    controller.prune_to_masks_()
    aptune.export(model, controller, tmp_path / "model")
    model = aptune.load(tmp_path / "model")
    head_dim = (
        getattr(model.config, "head_dim", None)
        or model.config.hidden_size // model.config.num_attention_heads
    )
    kept = [layer.self_attn.k_proj.out_features // head_dim for layer in model.model.layers]
    assert kept[0] == 0 and kept[1] > 0  # layers keep different numbers of KV heads
    folder = export_onnx_genai(tmp_path / "model", tmp_path / "genai")
    config = json.loads((folder / GENAI_CONFIG_FILE).read_text())
    assert config["model"]["decoder"]["num_key_value_heads"] == max(kept)
    assert config["model"]["decoder"]["head_size"] == head_dim
    # two prompts of one length: onnxruntime-genai 0.18 builds an all-ones mask from appended tokens,
    # so padded batches are its own business
    input_ids = torch.randint(3, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(11))
    attention_mask = torch.ones_like(input_ids)
    expected = _greedy_without_cache(model, input_ids, attention_mask, steps=9).numpy()
    # the reference has no EOS: give genai one that the reference never produces, so both run 9 steps
    config["model"]["eos_token_id"] = min(
        set(range(3, model.config.vocab_size)) - set(expected.flatten().tolist())
    )
    (folder / GENAI_CONFIG_FILE).write_text(json.dumps(config))
    got = _genai_greedy(folder, input_ids, steps=9)
    np.testing.assert_array_equal(got, expected)


def test_onnxruntime_genai_reads_each_layers_own_heads_of_a_padded_cache(tmp_path):
    """Three layers keeping 0, 1 (the middle one) and 2 of 3 KV groups: two layers are padded."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=3, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4, distill=False))
    _randomise_adapters(controller)
    structure = controller.structure()
    assert structure["units"] == [3, 3, 3]
    heads = torch.tensor([False, False, False, False, True, False, True, False, True])
    neurons = torch.rand(sum(structure["neurons"]), generator=torch.Generator().manual_seed(1)) > 0.5
    hidden = torch.ones(structure["hidden"], dtype=torch.bool)
    controller.set_hard_masks(KeepSet(heads=heads, neurons=neurons, hidden=hidden, params=0.0))
    controller.prune_to_masks_()
    aptune.export(model, controller, tmp_path / "model")
    model = aptune.load(tmp_path / "model")
    assert [layer.self_attn.k_proj.out_features // 8 for layer in model.model.layers] == [0, 1, 2]
    folder = export_onnx_genai(tmp_path / "model", tmp_path / "genai")
    input_ids = torch.randint(3, 96, (2, 6), generator=torch.Generator().manual_seed(5))
    expected = _greedy_without_cache(model, input_ids, torch.ones_like(input_ids), steps=8).numpy()
    genai_config = json.loads((folder / GENAI_CONFIG_FILE).read_text())
    assert genai_config["model"]["decoder"]["num_key_value_heads"] == 2
    genai_config["model"]["eos_token_id"] = min(set(range(3, 96)) - set(expected.flatten().tolist()))
    (folder / GENAI_CONFIG_FILE).write_text(json.dumps(genai_config))
    np.testing.assert_array_equal(_genai_greedy(folder, input_ids, steps=8), expected)


def test_onnx_genai_folder_carries_the_tokenizer_and_refuses_other_models(tmp_path):
    model, controller = _masked_decoder(tiny_llama, drop_site=1)
    controller.prune_to_masks_()
    aptune.export(model, controller, tmp_path / "model")
    (tmp_path / "model" / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    folder = export_onnx_genai(tmp_path / "model", tmp_path / "genai")
    assert sorted(p.name for p in folder.iterdir()) == [
        GENAI_CONFIG_FILE,
        "model.onnx",
        "tokenizer_config.json",
    ]
    config = json.loads((folder / GENAI_CONFIG_FILE).read_text())["model"]
    assert (config["type"], config["eos_token_id"], config["pad_token_id"]) == ("llama", 2, 0)
    classifier = LlamaForSequenceClassification(
        LlamaConfig(**{**tiny_llama().config.to_dict(), "num_labels": 2})
    )
    with pytest.raises(ExportError, match="for causal LMs"):
        export_onnx_genai(classifier, tmp_path / "genai")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["genai", "model"]  # the old folder kept, no temp


def test_export_command_writes_an_onnx_genai_folder(tmp_path):
    from aptune.cli import main

    model, controller = _masked_decoder(tiny_qwen2, drop_site=0)
    controller.prune_to_masks_()
    aptune.export(model, controller, tmp_path / "run" / "model")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "genai"), "--format", "onnx-genai"])
    assert exit_info.value.code == 0
    assert og.Model(str(tmp_path / "genai")) is not None
