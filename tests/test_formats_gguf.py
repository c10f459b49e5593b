"""GGUF export: llama.cpp (llama-cpp-python) runs the pruned model like transformers does.

The tiny LLaMA has grouped-query attention (6 query heads over 2 KV groups) and a real byte-level
BPE tokenizer trained here. Free-layout plans become llama.cpp's ``deci`` architecture, uniform ones
its ``llama`` architecture. Tolerance of the f32 logits: 1e-3 absolute (llama.cpp accumulates in a
different order; the logits are of order 1); f16 weights: 5e-2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import aptune
from aptune.errors import ExportError
from aptune.formats.gguf import export_gguf
from aptune.select import KeepSet
from test_surgery import _randomise_adapters

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the test extra")
gguf = pytest.importorskip("gguf")

_PROMPTS = ["the cat sat on", "paris is the capital of", "short stories about 12 dogs"]


def _tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    """3 layers, hidden 48, 6 query heads over 2 KV groups (head dim 8), FFN 64, tied embeddings."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the init: peaked logits, so greedy tokens are well defined
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    return model


def _pruned_export(tmp_path, tokenizer, units_per_layer, neurons_per_layer, layout, with_tokenizer=True):
    model = _tiny_llama(len(tokenizer))
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.5, layout=layout))
    _randomise_adapters(controller)
    generator = torch.Generator().manual_seed(5)
    heads = [torch.arange(2) < count for count in units_per_layer]
    neurons = [torch.randperm(64, generator=generator) < count for count in neurons_per_layer]
    # 42 hidden dims: a multiple of 3 query heads, which transformers' LlamaConfig needs for a stock folder
    hidden = torch.randperm(48, generator=generator) < (42 if layout == "uniform" else 40)
    controller.set_hard_masks(KeepSet(torch.cat(heads), torch.cat(neurons), hidden, 0.0))
    controller.prune_to_masks_()
    aptune.export(model, controller, tmp_path / "model", tokenizer=tokenizer if with_tokenizer else None)
    return aptune.load(tmp_path / "model")


def _llama(path):
    """llama.cpp with an f32 KV cache (its default f16 cache alone moves logits by about 1e-3)."""
    f32 = llama_cpp.GGML_TYPE_F32
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1, type_k=f32, type_v=f32
    )


def _llama_cpp_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _llama_cpp_greedy(llm, ids: list[int], steps: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def _reader_field(reader, key):
    field = reader.fields[key]
    return [field.parts[i].tolist()[0] for i in field.data]


@pytest.mark.parametrize(
    ("units", "neurons", "layout", "arch"),
    [
        ([0, 1, 2], [40, 0, 21], "free", "deci"),  # layer 0 without attention, layer 1 without FFN
        ([2, 1, 0], [17, 64, 30], "free", "deci"),
        ([1, 1, 1], [24, 24, 24], "uniform", "llama"),
    ],
)
def test_llama_cpp_matches_transformers(tmp_path, bpe_tokenizer, units, neurons, layout, arch):
    exported = _pruned_export(tmp_path, bpe_tokenizer, units, neurons, layout)
    assert (tmp_path / "model" / "modeling_aptune.py").exists() == (layout == "free")
    path = export_gguf(tmp_path / "model", tmp_path / "model.gguf", dtype="f32")
    reader = gguf.GGUFReader(str(path))
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == arch
    if arch == "deci":
        heads = _reader_field(reader, "deci.attention.head_count")
        assert heads[1:] == [3 * u for u in units[1:]]  # query heads; layer 0 may hold a zero group
        assert _reader_field(reader, "deci.attention.head_count_kv")[1:] == units[1:]
    assert "tokenizer.chat_template" in reader.fields
    llm = _llama(path)
    for prompt in _PROMPTS:
        ids = bpe_tokenizer(prompt)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False) == ids
        with torch.no_grad():
            expected = exported(input_ids=torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(_llama_cpp_logits(llm, ids), expected, atol=1e-3, rtol=0)
        with torch.no_grad():
            generated = exported.generate(
                torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
            )[0, len(ids) :].tolist()
        assert _llama_cpp_greedy(llm, ids, 8) == generated
    llm.close()


def test_f16_weights_stay_close(tmp_path, bpe_tokenizer):
    exported = _pruned_export(tmp_path, bpe_tokenizer, [0, 1, 2], [40, 0, 21], "free")
    path = export_gguf(tmp_path / "model", tmp_path / "model-f16.gguf", dtype="f16")
    llm = _llama(path)
    ids = bpe_tokenizer(_PROMPTS[0])["input_ids"]
    with torch.no_grad():
        expected = exported(input_ids=torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(_llama_cpp_logits(llm, ids), expected, atol=5e-2, rtol=0)
    llm.close()


def test_gguf_refuses_what_it_cannot_write(tmp_path, bpe_tokenizer):
    from tiny import tiny_bert

    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig())
    aptune.export(model, controller, tmp_path / "bert")
    with pytest.raises(ExportError, match="GGUF export supports llama, mistral, qwen2"):
        export_gguf(tmp_path / "bert", tmp_path / "bert.gguf")
    _pruned_export(tmp_path, bpe_tokenizer, [1, 1, 1], [8, 8, 8], "free", with_tokenizer=False)
    with pytest.raises(ExportError, match=r"no tokenizer\.json"):
        export_gguf(tmp_path / "model", tmp_path / "model.gguf")
    with pytest.raises(ExportError, match="dtype"):
        export_gguf(tmp_path / "model", tmp_path / "model.gguf", dtype="q4")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


def test_the_export_says_when_ffn_widths_slow_llama_cpp_down(tmp_path, bpe_tokenizer, caplog):
    _pruned_export(tmp_path / "odd", bpe_tokenizer, [1, 1, 1], [41, 21, 16], "free")
    with caplog.at_level("WARNING", logger="aptune"):
        export_gguf(tmp_path / "odd" / "model", tmp_path / "odd.gguf")
    warnings = [r.getMessage() for r in caplog.records if "--neuron-multiple 8" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 3 layers" in warnings[0] and "(21, 41)" in warnings[0], warnings
    caplog.clear()
    _pruned_export(tmp_path / "even", bpe_tokenizer, [1, 1, 1], [40, 0, 16], "free")
    with caplog.at_level("WARNING", logger="aptune"):
        export_gguf(tmp_path / "even" / "model", tmp_path / "even.gguf")
    assert not [r for r in caplog.records if "--neuron-multiple" in r.getMessage()]
