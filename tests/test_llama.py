"""LLaMA family (LLaMA, Qwen2, Mistral) with grouped-query attention: masks, surgery, salience, export."""

import json
import os
import subprocess
import sys
import textwrap

import datasets
import pytest
import torch
from safetensors import safe_open
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    TrainingArguments,
)

import aptune
from aptune.masks import MaskedRMSNorm
from test_surgery import _random_keep, _randomise_adapters

VOCAB = 96


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """2 layers, hidden 48, 6 query heads over 2 KV groups (head dim 8), FFN 64, tied embeddings."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_qwen2(seed: int = 0) -> Qwen2ForCausalLM:
    """2 layers, hidden 32, 4 query heads over 2 KV groups, q/k/v biases, untied LM head."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return Qwen2ForCausalLM(config).eval()


def tiny_mistral(seed: int = 0) -> MistralForCausalLM:
    """2 layers, hidden 32, 4 query heads over 1 KV group (multi-query), untied LM head."""
    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        sliding_window=None,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return MistralForCausalLM(config).eval()


def _inputs(size: int = 3, length: int = 9, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0  # a left-padded row, as in batched generation
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _pruned(factory, drop_site=0, seed=3):
    """A prepared model with random adapters and hard random masks (site ``drop_site`` loses all units)."""
    model = factory()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4, distill=False))
    _randomise_adapters(controller)
    controller.set_hard_masks(_random_keep(controller, seed=seed, drop_all_heads_of_site=drop_site))
    return model, controller


def _greedy_without_cache(model, input_ids, attention_mask, steps):
    """Reference greedy decoding: the full sequence is re-run at every step (no KV cache)."""
    ids, mask = input_ids, attention_mask
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids


def _generate(model, inputs, steps=5):
    return model.generate(
        **inputs,
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )


def test_layout_units_are_kv_groups():
    model = tiny_llama()
    controller = aptune.prepare_(model, aptune.AptConfig(distill=False))
    layout = controller.layout
    assert layout.hidden_mask_style == "pre_norm" and layout.is_decoder and controller.use_kurtosis
    site = layout.attention[0]
    assert (site.group_size, site.head_dim, site.unit_width, site.kv_width) == (3, 8, 24, 8)
    assert controller.structure()["units"] == [2, 2]
    assert set(controller.adapters) == {
        f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")
    }
    assert all(isinstance(model.get_submodule(p), MaskedRMSNorm) for p in layout.norms)
    # a unit costs (2 * 3 + 2) * 8 parameters per hidden dimension; a gated neuron 3
    assert controller.param_count() == 48 * (2 * 2 * 64 + 2 * 64 * 3)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2, tiny_mistral])
def test_masked_equals_pruned(factory):
    model, controller = _pruned(factory)
    inputs = _inputs()
    with torch.no_grad():
        masked = model(**inputs).logits
    removed = controller.prune_to_masks_()
    assert removed["heads"] > 0 and removed["neurons"] > 0 and removed["hidden"] > 0
    with torch.no_grad():
        pruned = model(**inputs).logits
    torch.testing.assert_close(pruned, masked, rtol=1e-5, atol=1e-5)
    hidden = controller.layout.hidden_size
    assert hidden < model.config.hidden_size
    units = controller.structure()["units"]
    assert units[0] == 0 and controller.alive_layers()[0] is False
    for i, site in enumerate(controller.layout.attention):
        assert model.get_submodule(site.q).weight.shape == (units[i] * site.unit_width, hidden)
        assert model.get_submodule(site.k).weight.shape == (units[i] * site.head_dim, hidden)
        assert model.get_submodule(site.o).weight.shape == (hidden, units[i] * site.unit_width)
    assert model.lm_head.weight.shape == (VOCAB, hidden)
    assert model.model.norm.weight.shape == (hidden,)
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight


def test_sequence_classifier_masked_pruned_and_exported(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(**{**tiny_llama().config.to_dict(), "num_labels": 3, "tie_word_embeddings": False})
    model = LlamaForSequenceClassification(config).eval()
    model, controller = _pruned(lambda: model)
    assert controller.layout.extra_readers == ["score"] and controller.layout.trainable_heads == ["score"]
    inputs = _inputs()
    with torch.no_grad():
        masked = model(**inputs).logits
    controller.prune_to_masks_()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, masked, rtol=1e-5, atol=1e-5)
    small = aptune.export(model, controller, tmp_path / "out")
    assert type(small).__name__ == "AptLlamaForSequenceClassification"
    with torch.no_grad():
        torch.testing.assert_close(small(**inputs).logits, masked, rtol=1e-4, atol=1e-4)


def test_masked_rms_norm_is_the_norm_of_the_kept_width():
    model = tiny_llama()
    norm = model.model.norm
    state = aptune.masks.MaskState(heads=[], neurons=[])
    masked = MaskedRMSNorm.from_norm(norm, state, 0)
    assert masked.weight is norm.weight and dict(masked.named_parameters()).keys() == {"weight"}
    keep = torch.rand(48, generator=torch.Generator().manual_seed(0)) > 0.4
    state.hidden = keep.float()
    x = torch.randn(2, 5, 48) * keep  # pruned dimensions of the residual stream are zero
    narrow = type(norm)(int(keep.sum()), eps=norm.variance_epsilon)
    with torch.no_grad():
        narrow.weight.copy_(norm.weight[keep])
    torch.testing.assert_close(masked(x)[..., keep], narrow(x[..., keep]), rtol=1e-6, atol=1e-6)
    assert masked(x)[..., ~keep].abs().max() == 0
    state.hidden = None
    torch.testing.assert_close(masked(x), norm(x), rtol=0, atol=0)
    assert type(masked.to_norm()) is type(norm) and masked.to_norm().weight is norm.weight


def test_generate_after_pruning_uses_a_consistent_cache():
    # layer 0 lost every unit: its cache layer still has to record the tokens
    model, controller = _pruned(tiny_llama)
    controller.prune_to_masks_()
    inputs = _inputs()
    generated = _generate(model, inputs)
    reference = _greedy_without_cache(model, inputs["input_ids"], inputs["attention_mask"], 5)
    assert torch.equal(generated, reference)


def test_export_round_trip_generate_and_load_without_aptune(tmp_path):
    model, controller = _pruned(tiny_llama)
    controller.prune_to_masks_()
    inputs = _inputs()
    with torch.no_grad():
        expected = model(**inputs).logits
    expected_tokens = _generate(model, inputs)
    out = tmp_path / "out"
    small = aptune.export(model, controller, out)
    with torch.no_grad():
        torch.testing.assert_close(small(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(_generate(small, inputs), expected_tokens)
    again = aptune.load(out)
    assert again.lm_head.weight is again.model.embed_tokens.weight  # still tied after loading
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert "lm_head.weight" not in set(handle.keys())  # a tied weight is stored once
    plan = json.loads((out / "config.json").read_text())["aptune_plan"]
    assert plan["zero_attention"] == {"model.layers.0.self_attn": "zero_hidden"}
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in tiny_llama().parameters())

    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.modules["aptune"] = None  # aptune must not be importable
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        with torch.no_grad():
            logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                                pad_token_id=0, eos_token_id=None)
        torch.save({{"logits": logits, "tokens": tokens}}, {str(tmp_path / "result.pt")!r})
        print(type(model).__name__, model.lm_head.weight is model.model.embed_tokens.weight)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "AptLlamaForCausalLM True" in result.stdout
    got = torch.load(tmp_path / "result.pt", weights_only=True)
    torch.testing.assert_close(got["logits"], expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(got["tokens"], expected_tokens)


def _excess_kurtosis(values: torch.Tensor) -> float:
    values = values.double().flatten()
    centred = values - values.mean()
    return float(centred.pow(4).mean() / centred.pow(2).mean().pow(2) - 3.0)


def test_kurtosis_bonus_per_kv_group_matches_brute_force():
    model = tiny_llama()
    controller = aptune.prepare_(model, aptune.AptConfig(distill=False))
    _randomise_adapters(controller)
    site = controller.layout.attention[1]
    o_proj = model.get_submodule(site.o)
    with torch.no_grad():
        o_proj.weight[5, site.unit_width + 3] = 4.0  # an outlier in the second KV group
    captured = []
    handle = o_proj.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    controller.state.collector.active = True
    inputs = _inputs()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    handle.remove()
    heads, _, _ = controller.current_salience()
    channel = controller.state.collector.channel_salience(("head", 1))
    bonus = heads[1] - channel.reshape(-1, site.unit_width).sum(1)
    mean_input = captured[0].reshape(-1, captured[0].shape[-1]).mean(0)  # over every token
    products = o_proj.weight.detach() * mean_input[None, :]  # o_proj is not adapted: W is merged W
    expected = []
    for unit in range(2):
        columns = products[:, unit * site.unit_width : (unit + 1) * site.unit_width]
        expected.append(max(_excess_kurtosis(columns), 0.0) ** 0.5)
    torch.testing.assert_close(bonus, torch.tensor(expected), rtol=1e-4, atol=1e-4)
    assert bonus[1] > 1.0  # the outlier group gets a real bonus


def _causal_lm_dataset(n=48, length=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=generator)
    ids[:, 1::2] = (ids[:, 0::2] + 1) % VOCAB  # learnable: every odd token follows its predecessor
    return datasets.Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * length] * n, "labels": ids.tolist()}
    )


def test_calibration_pass_scores_and_prunes_to_target():
    model = tiny_llama()
    config = aptune.AptConfig(target_density=0.5, pretune_density=0.5, distill=False)
    controller = aptune.prepare_(model, config)
    data = _causal_lm_dataset(16)
    batches = [{k: torch.tensor(data[i : i + 4][k]) for k in data.column_names} for i in range(0, 16, 4)]
    record = controller.calibrate_and_prune_(batches)
    scores = record["scores"]
    assert record["kind"] == "pretune" and record["calibration_batches"] == 4
    assert min(scores["heads"]) >= 0 and sum(scores["heads"]) > 0
    assert sum(scores["neurons"]) > 0 and sum(scores["hidden"]) > 0
    assert 0.4 < controller.density() <= 0.5 + 1e-9
    assert all(p.grad is None for p in model.parameters())  # no optimizer step, gradients cleared
    with torch.no_grad():
        assert torch.isfinite(model(**_inputs()).logits).all()


def test_trainer_prunes_distils_and_exports_a_causal_lm(tmp_path):
    model = tiny_llama()
    # distillation needs pruning during tuning: half of it is left to the events
    config = aptune.AptConfig(
        target_density=0.5, pretune_density=0.75, num_events=2, initial_rank=2, distill=True
    )
    args = TrainingArguments(
        str(tmp_path / "run"),
        max_steps=40,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        logging_steps=10,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = aptune.AptTrainer(model=model, args=args, apt_config=config, train_dataset=_causal_lm_dataset())
    trainer.train()
    controller = trainer.apt_controller
    assert controller.density() <= 0.5 + 1e-6
    assert sum(
        e["removed"]["heads"] + e["removed"]["neurons"] + e["removed"]["hidden"] for e in controller.events
    )
    logged = [h for h in trainer.state.log_history if "distill_layer" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["distill_layer"])) for h in logged)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    inputs = _inputs()
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    small = trainer.export(tmp_path / "model")
    with torch.no_grad():
        torch.testing.assert_close(small(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(_generate(small, inputs, 3), _generate(model, inputs, 3))
