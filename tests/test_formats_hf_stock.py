"""Uniform-layout exports are stock folders: plain ``from_pretrained`` loads them, logits match."""

from __future__ import annotations

import json
import logging
import os

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    LlamaForCausalLM,
    TrainingArguments,
)

import aptune
from test_llama import _causal_lm_dataset, _inputs, tiny_llama
from test_trainer import _dataset
from tiny import tiny_bert


def _train(model, config, dataset, tmp_path, steps=16):
    args = TrainingArguments(
        str(tmp_path / "run"),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = aptune.AptTrainer(model=model, args=args, apt_config=config, train_dataset=dataset)
    trainer.train()
    return trainer


def _assert_stock_folder(folder) -> dict:
    files = set(os.listdir(folder))
    assert "modeling_aptune.py" not in files
    config = json.loads((folder / "config.json").read_text())
    assert "auto_map" not in config
    return config


def test_uniform_llama_exports_a_stock_folder(tmp_path):
    model = tiny_llama()
    config = aptune.AptConfig(target_density=0.5, num_events=2, initial_rank=2, layout="uniform")
    trainer = _train(model, config, _causal_lm_dataset(), tmp_path)
    summary = trainer.apt_controller.layer_summary()
    assert len(set(summary["heads_per_layer"])) == 1 and len(set(summary["ffn_per_layer"])) == 1
    assert summary["ffn_per_layer"][0] < 64 or summary["hidden_size"] < 48  # something was pruned
    inputs = _inputs()
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    trainer.export(tmp_path / "model")
    stock = _assert_stock_folder(tmp_path / "model")
    assert stock["num_attention_heads"] == summary["heads_per_layer"][0]
    assert stock["num_attention_heads"] // stock["num_key_value_heads"] == 3  # the GQA group size is kept
    assert stock["intermediate_size"] == summary["ffn_per_layer"][0]
    assert stock["hidden_size"] == summary["hidden_size"] and stock["head_dim"] == 8
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert type(loaded) is LlamaForCausalLM
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
    again = aptune.load(tmp_path / "model")  # aptune's own loader reads stock folders too
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, expected, rtol=1e-4, atol=1e-4)


def test_uniform_bert_with_all_heads_exports_a_stock_folder(tmp_path):
    model = tiny_bert()
    config = aptune.AptConfig(
        target_density=0.6, num_events=2, layout="uniform", prune_hidden=False, min_heads_per_layer=4
    )
    trainer = _train(model, config, _dataset(), tmp_path)
    summary = trainer.apt_controller.layer_summary()
    assert summary["heads_per_layer"] == [4, 4] and len(set(summary["ffn_per_layer"])) == 1
    assert summary["ffn_per_layer"][0] < 64
    inputs = {k: torch.tensor(v) for k, v in _dataset(4, seed=3)[:4].items() if k != "labels"}
    inputs["attention_mask"][0, -4:] = 0
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    trainer.export(tmp_path / "model")
    stock = _assert_stock_folder(tmp_path / "model")
    assert stock["intermediate_size"] == summary["ffn_per_layer"][0]
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    assert type(loaded) is BertForSequenceClassification
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=1e-4, atol=1e-4)


def test_uniform_bert_plan_a_stock_config_cannot_express_falls_back(tmp_path, caplog):
    from aptune.select import KeepSet

    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig(layout="uniform", prune_hidden=False))
    # one head of size 8 per layer with hidden size 32: a stock BertConfig would derive head size 32
    heads = torch.tensor([True, False, False, False] * 2)
    neurons, hidden = torch.arange(128) % 64 < 40, torch.ones(32, dtype=torch.bool)
    controller.set_hard_masks(KeepSet(heads, neurons, hidden, 0.0))
    controller.prune_to_masks_()
    inputs = {k: torch.tensor(v) for k, v in _dataset(4, seed=3)[:4].items() if k != "labels"}
    with torch.no_grad():
        expected = model(**inputs).logits
    with caplog.at_level(logging.WARNING, logger="aptune"):
        small = aptune.export(model, controller, tmp_path / "model")
    assert any("hidden_size / num_attention_heads" in r.getMessage() for r in caplog.records)
    assert "modeling_aptune.py" in os.listdir(tmp_path / "model")
    with torch.no_grad():
        torch.testing.assert_close(small(**inputs).logits, expected, rtol=1e-4, atol=1e-4)


def test_uniform_llama_with_a_hidden_size_llama_config_rejects_falls_back(tmp_path, caplog):
    from aptune.select import KeepSet

    model = tiny_llama()
    controller = aptune.prepare_(model, aptune.AptConfig(layout="uniform"))
    hidden = torch.arange(48) < 40  # 40 is not a multiple of the 3 query heads kept per layer
    controller.set_hard_masks(
        KeepSet(torch.tensor([True, False] * 2), torch.arange(128) % 64 < 32, hidden, 0.0)
    )
    controller.prune_to_masks_()
    with caplog.at_level(logging.WARNING, logger="aptune"):
        aptune.export(model, controller, tmp_path / "model")
    assert any("LlamaConfig rejects" in r.getMessage() for r in caplog.records)
    assert "modeling_aptune.py" in os.listdir(tmp_path / "model")
