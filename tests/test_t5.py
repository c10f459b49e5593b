"""T5 (gated and non-gated): three attention kinds, per-layer position bias, shared hidden mask, export."""

import json
import os
import subprocess
import sys
import textwrap

import datasets
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration, TrainingArguments

import aptune
from aptune.masks import MaskedRMSNorm
from test_surgery import _random_keep, _randomise_adapters

VOCAB = 80


def tiny_t5(feed_forward_proj: str = "gated-gelu", seed: int = 0) -> T5ForConditionalGeneration:
    """2 + 2 layers, d_model 32, 4 heads of 8, FFN 48."""
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        feed_forward_proj=feed_forward_proj,
        dropout_rate=0.0,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval()


def _inputs(size: int = 3, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (size, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -2:] = 0
    decoder_input_ids = torch.randint(2, VOCAB, (size, 5), generator=generator)
    decoder_input_ids[:, 0] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids}


def _pruned(factory=tiny_t5, drop_site=0, seed=3):
    model = factory()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4, distill=False))
    _randomise_adapters(controller)
    controller.set_hard_masks(_random_keep(controller, seed=seed, drop_all_heads_of_site=drop_site))
    return model, controller


def _generate(model, inputs, steps=4):
    return model.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        eos_token_id=None,
    )


def _greedy_without_cache(model, inputs, steps):
    decoder_ids = torch.zeros(inputs["input_ids"].shape[0], 1, dtype=torch.long)
    for _ in range(steps):
        with torch.no_grad():
            logits = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                decoder_input_ids=decoder_ids,
                use_cache=False,
            ).logits[:, -1]
        decoder_ids = torch.cat([decoder_ids, logits.argmax(-1, keepdim=True)], dim=1)
    return decoder_ids


@pytest.mark.parametrize("ffn", ["gated-gelu", "relu"])
def test_layout_and_patch_keep_stock_outputs(ffn):
    model = tiny_t5(ffn)
    inputs = _inputs()
    with torch.no_grad():
        stock = model(**inputs).logits
    controller = aptune.prepare_(model, aptune.AptConfig(distill=False))
    layout = controller.layout
    assert [s.stack for s in layout.attention] == [
        "encoder",
        "encoder",
        "decoder",
        "cross",
        "decoder",
        "cross",
    ]
    assert [s.min_units for s in layout.attention] == [0, 0, 0, 0, 0, 1]
    assert all(isinstance(model.get_submodule(p), MaskedRMSNorm) for p in layout.norms)
    assert not controller.use_kurtosis
    ffn_role = "wi_0" if ffn.startswith("gated") else "wi"
    assert sum(path.endswith(ffn_role) for path in controller.adapters) == 4
    assert sum(path.endswith((".q", ".v")) for path in controller.adapters) == 12
    # every self-attention owns a copy of its stack's position table: outputs are unchanged
    assert model.decoder.block[1].layer[0].SelfAttention.has_relative_attention_bias
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, stock, rtol=0, atol=0)


@pytest.mark.parametrize("ffn", ["gated-gelu", "relu"])
def test_masked_equals_pruned(ffn):
    model, controller = _pruned(lambda: tiny_t5(ffn))
    inputs = _inputs()
    with torch.no_grad():
        masked = model(**inputs).logits
    removed = controller.prune_to_masks_()
    assert removed["heads"] > 0 and removed["neurons"] > 0 and removed["hidden"] > 0
    with torch.no_grad():
        pruned = model(**inputs).logits
    torch.testing.assert_close(pruned, masked, rtol=1e-5, atol=1e-5)
    units = controller.structure()["units"]
    hidden = controller.layout.hidden_size
    assert units[0] == 0 and len(set(units[2:])) > 1  # decoder layers keep different head counts
    for i, site in enumerate(controller.layout.attention):
        module = model.get_submodule(site.module)
        assert module.n_heads == units[i]
        assert model.get_submodule(site.q).weight.shape == (units[i] * 8, hidden)
        if site.head_columns:
            assert module.relative_attention_bias.weight.shape == (8, units[i])
    assert model.shared.weight.shape == (VOCAB, hidden)
    assert model.lm_head.weight is model.shared.weight is model.encoder.embed_tokens.weight
    assert model.model_dim == 32  # the decoder output keeps its original d_model ** -0.5 scale
    assert controller.alive_layers("encoder") == [False, True]
    assert controller.alive_layers("decoder") == [True, True]


def test_last_cross_attention_keeps_one_head():
    model = tiny_t5()
    controller = aptune.prepare_(model, aptune.AptConfig(distill=False))
    scores = [torch.ones(4) for _ in controller.layout.attention]
    scores[3] = torch.zeros(4)
    scores[5] = torch.tensor([0.0, 0.0, 3e-3, 1e-3])  # with layer 0's, the least salient heads of the model
    controller.scores.heads = scores
    controller.scores.neurons = [torch.ones(48) for _ in controller.layout.ffn]
    controller.scores.hidden = torch.ones(32)
    keep = controller.select(0.05)
    per_site = torch.split(keep.heads, [4] * 6)
    assert per_site[5].tolist() == [False, False, True, False]
    assert per_site[3].sum() == 0  # other cross-attention layers may still lose every head


def test_generate_live_and_exported_without_aptune(tmp_path):
    model, controller = _pruned()
    controller.prune_to_masks_()
    inputs = _inputs()
    with torch.no_grad():
        expected = model(**inputs).logits
    tokens = _generate(model, inputs)
    assert torch.equal(tokens, _greedy_without_cache(model, inputs, 4))
    out = tmp_path / "out"
    small = aptune.export(model, controller, out)
    with torch.no_grad():
        torch.testing.assert_close(small(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(_generate(small, inputs), tokens)
    again = aptune.load(out)
    assert again.lm_head.weight is again.shared.weight and again.model_dim == 32
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
    plan = json.loads((out / "config.json").read_text())["aptune_plan"]
    assert plan["patches"] == ["t5_own_position_bias"]
    assert plan["zero_attention"] == {"encoder.block.0.layer.0.SelfAttention": "zero_hidden_bias"}

    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.modules["aptune"] = None  # aptune must not be importable
        from transformers import AutoModelForSeq2SeqLM
        model = AutoModelForSeq2SeqLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        with torch.no_grad():
            logits = model(**inputs).logits
        tokens = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                max_new_tokens=4, min_new_tokens=4, do_sample=False, eos_token_id=None)
        torch.save({{"logits": logits, "tokens": tokens}}, {str(tmp_path / "result.pt")!r})
        print(type(model).__name__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "AptT5ForConditionalGeneration" in result.stdout
    got = torch.load(tmp_path / "result.pt", weights_only=True)
    torch.testing.assert_close(got["logits"], expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(got["tokens"], tokens)


def _seq2seq_dataset(n=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    source = torch.randint(2, VOCAB, (n, 8), generator=generator)
    # target: the reversed first five source tokens, then eos
    target = torch.cat([source[:, :5].flip(1), torch.ones(n, 1, dtype=torch.long)], dim=1)
    return datasets.Dataset.from_dict(
        {"input_ids": source.tolist(), "attention_mask": [[1] * 8] * n, "labels": target.tolist()}
    )


def test_calibration_pass_on_t5_scores_every_block_kind():
    model = tiny_t5()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.5, distill=False))
    data = _seq2seq_dataset(8)
    batches = [{k: torch.tensor(data[i : i + 4][k]) for k in data.column_names} for i in (0, 4)]
    record = controller.calibrate_and_prune_(batches)
    # the record holds the scores of the kept blocks, site after site
    units = controller.structure()["units"]
    per_site = torch.split(torch.tensor(record["scores"]["heads"]), units)
    assert {site.stack for site, n in zip(controller.layout.attention, units, strict=True) if n} == {
        "encoder",
        "decoder",
        "cross",
    }
    assert all(scores.sum() > 0 for scores in per_site if scores.numel())  # every kind got gradients
    assert sum(record["scores"]["neurons"]) > 0 and sum(record["scores"]["hidden"]) > 0
    assert controller.density() <= 0.5 + 1e-9
    with torch.no_grad():
        assert torch.isfinite(model(**_inputs()).logits).all()


def test_trainer_distils_encoder_and_decoder_states_and_exports(tmp_path):
    model = tiny_t5("relu")
    config = aptune.AptConfig(target_density=0.5, num_events=2, initial_rank=2, distill=True)
    args = TrainingArguments(
        str(tmp_path / "run"),
        max_steps=30,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        logging_steps=5,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = aptune.AptTrainer(model=model, args=args, apt_config=config, train_dataset=_seq2seq_dataset())
    trainer.train()
    controller = trainer.apt_controller
    assert controller.density() <= 0.5 + 1e-6
    logged = [h for h in trainer.state.log_history if "distill_layer" in h]
    assert logged and all(h["distill_layer"] > 0 for h in logged)
    inputs = _inputs()
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    small = trainer.export(tmp_path / "model")
    with torch.no_grad():
        torch.testing.assert_close(small(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(_generate(small, inputs, 3), _generate(model, inputs, 3))
