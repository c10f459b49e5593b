"""AptTrainer and the custom-loop API end to end on a tiny model."""

import math

import datasets
import pytest
import torch
from transformers import TrainingArguments

import aptune
from aptune.errors import ConfigError
from tiny import tiny_bert


def _dataset(n=64, length=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (n, length), generator=generator)
    labels = ids[:, 1] % 3
    return datasets.Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * length] * n, "labels": labels.tolist()}
    )


def _args(tmp_path, steps=60, **overrides):
    options = {
        "max_steps": steps,
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-3,
        "logging_steps": 10,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
    }
    return TrainingArguments(str(tmp_path / "run"), **{**options, **overrides})


def test_trainer_prunes_to_target_and_exports(tmp_path):
    model = tiny_bert()
    config = aptune.AptConfig(target_density=0.5, num_events=3, distill=True)
    trainer = aptune.AptTrainer(
        model=model,
        args=_args(tmp_path),
        apt_config=config,
        train_dataset=_dataset(),
        eval_dataset=_dataset(16, seed=1),
    )
    controller = trainer.apt_controller
    optimizer_ids = None
    trainer.train()
    schedule = controller.schedule
    assert [e["step"] for e in controller.events] == list(schedule.events)
    assert controller.density() <= 0.5 + 1e-6
    assert controller.density() > 0.3
    assert controller.teacher is None  # distillation ended at distill_end
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert all("density" in h and "params" in h for h in logged)
    assert any("distill_layer" in h for h in logged)
    # the optimizer kept the same Parameter objects through surgery and growth
    optimizer_ids = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in model.parameters() if p.requires_grad} <= optimizer_ids
    inputs = {k: torch.tensor(v) for k, v in _dataset(4, seed=3)[:4].items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    small = trainer.export(tmp_path / "model")
    with torch.no_grad():
        torch.testing.assert_close(small(**inputs).logits, expected, rtol=1e-4, atol=1e-4)


def test_trainer_pretune_prune_mode(tmp_path):
    model = tiny_bert()
    config = aptune.AptConfig(target_density=0.5, num_events=3, pretune_prune=True, calibration_samples=16)
    trainer = aptune.AptTrainer(
        model=model, args=_args(tmp_path, steps=30), apt_config=config, train_dataset=_dataset()
    )
    trainer.train()
    controller = trainer.apt_controller
    assert controller.events[0]["kind"] == "pretune"
    assert controller.events[0]["density"] <= 0.5 + 1e-6
    scores = controller.events[0]["scores"]
    assert sum(scores["heads"]) > 0 and sum(scores["neurons"]) > 0  # gradients reached the hooks
    assert all(e["removed"] == {"heads": 0, "neurons": 0, "hidden": 0} for e in controller.events[1:])
    assert controller.adapter_parameter_count() > controller.initial_adapter_params  # ranks still grew


def test_custom_loop_requires_run_length():
    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig())
    with pytest.raises(ConfigError, match="total_steps"):
        controller.step()
    with pytest.raises(aptune.ModelError, match="already prepared"):
        aptune.prepare_(model, aptune.AptConfig())


def test_too_short_run_is_explained():
    model = tiny_bert()
    with pytest.raises(ConfigError, match="num_events"):
        aptune.prepare_(model, aptune.AptConfig(num_events=10), total_steps=12)


def test_unsupported_model_lists_supported_types():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(aptune.UnsupportedModelError, match="supported model types: bert"):
        aptune.prepare_(model, aptune.AptConfig())


def test_gradient_accumulation_gives_the_controller_one_step_per_optimizer_step(tmp_path):
    model = tiny_bert()
    config = aptune.AptConfig(target_density=0.5, num_events=3)
    trainer = aptune.AptTrainer(
        model=model,
        args=_args(tmp_path, steps=20, gradient_accumulation_steps=2, per_device_train_batch_size=4),
        apt_config=config,
        train_dataset=_dataset(),
    )
    controller = trainer.apt_controller
    forwards, seen_at = [], []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    step = controller.step

    def counted_step(*args, **kwargs):
        seen_at.append(trainer.state.global_step)
        return step(*args, **kwargs)

    controller.step = counted_step
    trainer.train()
    assert len(forwards) == 2 * 20  # two micro-batches per optimizer step
    assert len(seen_at) == 20 and controller.step_count == 20
    assert [e["step"] for e in controller.events] == list(controller.schedule.events)
    assert controller.density() <= 0.5 + 1e-6


def test_bf16_training_on_cpu(tmp_path):
    model = tiny_bert()
    trainer = aptune.AptTrainer(
        model=model,
        args=_args(tmp_path, steps=12, bf16=True),
        apt_config=aptune.AptConfig(target_density=0.5, num_events=2),
        train_dataset=_dataset(),
    )
    head_dtypes = []  # a Linear under bf16 autocast computes in bfloat16
    model.classifier.register_forward_hook(lambda module, args, output: head_dtypes.append(output.dtype))
    trainer.train()
    assert head_dtypes and set(head_dtypes) == {torch.bfloat16}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert len(trainer.apt_controller.events) == 2 and trainer.apt_controller.density() <= 0.5 + 1e-6
    inputs = {k: torch.tensor(v) for k, v in _dataset(4, seed=3)[:4].items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits  # the trained model's forward still runs under bf16 autocast
    small = trainer.export(tmp_path / "model")
    assert {p.dtype for p in small.parameters()} == {torch.float32}  # float32 master weights
    with torch.no_grad():
        torch.testing.assert_close(small(**inputs).logits, expected.float(), rtol=2e-2, atol=2e-2)
