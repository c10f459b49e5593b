"""Pruning before tuning to ``pretune_density``, then the cubic schedule to ``target_density``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import TrainingArguments

import aptune
from aptune.adapter import AptLinear
from aptune.cli.options import dataclass_options
from aptune.config import AptConfig
from aptune.errors import ConfigError
from aptune.schedule import build_schedule
from aptune.scores import summed_salience
from test_llama import _causal_lm_dataset, tiny_llama
from tiny import tiny_bert


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("fields", "is_decoder", "expected"),
    [
        ({"target_density": 0.7}, True, 0.7),  # decoders: everything before tuning
        ({"target_density": 0.4}, True, 0.4),
        ({"target_density": 0.7}, False, None),  # encoders start the cubic from 1
        ({"target_density": 0.7, "pretune_prune": True}, False, 0.7),  # the flag alone: to the target
        ({"target_density": 0.7, "pretune_density": 0.85}, True, 0.85),  # the authors' LLaMA script
        ({"target_density": 0.7, "pretune_prune": False}, True, None),
        ({"target_density": 0.7, "pretune_density": 0.9}, False, 0.9),  # setting the density turns it on
        ({"target_density": 0.7, "pretune_density": 0.7}, True, 0.7),  # everything before tuning
        ({"target_density": 1.0}, True, None),  # nothing to prune
    ],
)
def test_pretune_target_per_family(fields: dict, is_decoder: bool, expected: float | None) -> None:
    value = AptConfig(**fields).pretune_target(is_decoder)
    assert value == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"target_density": 0.7, "pretune_density": 0.6}, "pretune_density=0.6 is invalid: must lie in"),
        ({"target_density": 0.7, "pretune_density": 1.2}, "pretune_density=1.2 is invalid: must lie in"),
        ({"pretune_density": 0.9, "pretune_prune": False}, "while pretune_prune is false"),
        ({"pretune_prune": "yes"}, "pretune_prune='yes' is invalid"),
        ({"pretune_rounds": 0}, "pretune_rounds=0 is invalid: must be >= 1"),
        ({"selection_scale": "row"}, "selection_scale='row' is invalid: choose one of global, layer, site"),
    ],
)
def test_bad_pretune_fields_are_one_clear_error(fields: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        AptConfig(**fields)


def test_calibration_plan_defaults_per_family() -> None:
    assert AptConfig().calibration_plan(True, 8) == (128, 2)  # the authors' 128 batches of 2
    assert AptConfig().calibration_plan(False, 8) == (64, 4)  # half the training batch
    assert AptConfig().calibration_plan(False, 1) == (64, 1)
    assert AptConfig(calibration_samples=10, calibration_batch_size=3).calibration_plan(True, 8) == (10, 3)


def test_cli_has_the_pretune_options() -> None:
    names = {opt.name for opt in dataclass_options(AptConfig)}
    assert {
        "pretune_density",
        "pretune_prune",
        "pretune_rounds",
        "selection_scale",
        "calibration_samples",
    } <= names


# ---------------------------------------------------------------------------------------------- schedule
def test_decoder_schedule_runs_the_cubic_from_the_pretune_density() -> None:
    config = AptConfig(
        target_density=0.7,
        pretune_density=0.85,
        prune_start=0.05,
        prune_end=0.4,
        density_warmup=0.05,
        num_events=6,
    )
    schedule = build_schedule(config, 1000, is_decoder=True)
    assert schedule.initial_density == pytest.approx(0.85)
    assert schedule.density_target(0) == pytest.approx(0.85)
    # independent of the implementation: d_T + (d_0 - d_T) * ((end - e) / (end - warmup_end)) ** 3
    end, warm = schedule.end, schedule.warmup_end
    expected = [0.85 if e <= warm else 0.7 + 0.15 * ((end - e) / (end - warm)) ** 3 for e in schedule.events]
    assert list(schedule.densities) == pytest.approx(expected)
    assert schedule.densities[-1] == 0.7
    assert all(b <= a for a, b in zip(schedule.densities, schedule.densities[1:], strict=False))
    # an encoder with the same config still starts from 1
    encoder = build_schedule(dataclasses.replace(config, pretune_density=None), 1000)
    assert encoder.initial_density == 1.0 and encoder.densities[-1] == 0.7
    assert max(encoder.densities) > 0.85


def test_decoder_default_prunes_everything_before_tuning() -> None:
    schedule = build_schedule(AptConfig(target_density=0.6, num_events=4), 1000, is_decoder=True)
    assert schedule.initial_density == pytest.approx(0.6)
    # the events during tuning keep the density (they only grow adapter ranks)
    assert list(schedule.densities) == pytest.approx([0.6] * 4)


# ---------------------------------------------------------------------------------------------- controller
def _largest_block_share(controller) -> float:
    head_costs, neuron_costs = controller.blocks.costs()
    largest = float(torch.cat([head_costs, neuron_costs]).max()) * controller.blocks.hidden_size
    return largest / controller.initial_param_count


def test_calibration_prunes_to_the_pretune_density_within_one_block() -> None:
    model = tiny_llama()
    config = AptConfig(target_density=0.4, pretune_density=0.7, prune_hidden=False, distill=False)
    controller = aptune.prepare_(model, config, total_steps=40)
    data = _causal_lm_dataset(8)
    batches = [{k: torch.tensor(data[i : i + 2][k]) for k in data.column_names} for i in range(0, 8, 2)]
    record = controller.calibrate_and_prune_(batches)
    assert controller.pretune_density == pytest.approx(0.7)
    assert record["target_density"] == pytest.approx(0.7)
    assert 0.7 - _largest_block_share(controller) <= controller.density() <= 0.7 + 1e-9
    # the running salience starts afresh and is collected again: more pruning is to come
    assert controller.scores.heads == [None] * len(controller.scores.heads)
    assert controller._collecting(controller.schedule.start)


@pytest.mark.parametrize(("pretune_density", "pins"), [(0.7, True), (0.4, False)])
def test_the_allocator_is_pinned_only_while_pruning_remains(monkeypatch, pretune_density, pins) -> None:
    """Pruned once to the target, activation sizes change once: the C library's threshold stays."""
    import aptune.controller

    calls: list[None] = []
    monkeypatch.setattr(aptune.controller, "pin_mmap_threshold", lambda: calls.append(None))
    model = tiny_llama()
    config = AptConfig(target_density=0.4, pretune_density=pretune_density, prune_hidden=False, distill=False)
    controller = aptune.prepare_(model, config, total_steps=40)
    data = _causal_lm_dataset(8)
    batches = [{k: torch.tensor(data[i : i + 2][k]) for k in data.column_names} for i in range(0, 8, 2)]
    record = controller.calibrate_and_prune_(batches)
    assert sum(record["removed"].values()) > 0  # the control: the pass removed blocks either way
    assert bool(calls) is pins


def test_pruning_in_rounds_rescores_the_model_the_round_before_pruned() -> None:
    data = _causal_lm_dataset(8)
    batches = [{k: torch.tensor(data[i : i + 2][k]) for k in data.column_names} for i in range(0, 8, 2)]
    config = AptConfig(
        target_density=0.4,
        pretune_density=0.7,
        pretune_rounds=2,
        damage_curves=0,
        prune_hidden=False,
        distill=False,
    )
    controller = aptune.prepare_(tiny_llama(), config, total_steps=40)
    before = controller.param_count()
    record = controller.calibrate_and_prune_(batches)
    assert record["rounds"] == 2 and record["calibration_batches"] == 4
    assert 0.7 - _largest_block_share(controller) <= controller.density() <= 0.7 + 1e-9
    # reference, by the lower-level steps: one round halfway (to 0.85), then the pruned model is
    # scored again on the same batches and cut to 0.7
    halfway = dataclasses.replace(config, pretune_rounds=None, pretune_density=0.85)
    reference = aptune.prepare_(tiny_llama(), halfway, total_steps=40)
    reference.calibrate_and_prune_(batches)
    assert reference.density() > 0.7 + _largest_block_share(reference)  # the halfway point is not the end
    rescored, _ = summed_salience(
        reference.model, batches, reference.state.collector, reference._reduced_salience
    )
    reference.scores.replace(rescored)
    reference.set_hard_masks(reference.select(0.7))
    reference.prune_to_masks_()
    for ours, theirs in zip(controller.blocks.kept_ids(), reference.blocks.kept_ids(), strict=True):
        assert torch.equal(ours, theirs)
    # the record counts what both rounds removed (query heads of 8 x 48 x 2 weights, neurons of 3 x 48)
    removed = record["removed"]
    assert (
        before - controller.param_count()
        == removed["heads"] * 2 * 8 * 48 + removed["neurons"] * 3 * 48 + (removed["heads"] // 3) * 2 * 8 * 48
    )


def test_trainer_pretunes_then_reaches_the_target_at_the_end_of_pruning(tmp_path) -> None:
    model = tiny_llama()
    config = AptConfig(
        target_density=0.4,
        pretune_density=0.7,
        num_events=3,
        initial_rank=2,
        distill=False,
        prune_hidden=False,
        calibration_samples=8,
        prune_start=0.1,
        prune_end=0.6,
        density_warmup=0.0,
    )
    args = TrainingArguments(
        str(tmp_path / "run"),
        max_steps=40,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = aptune.AptTrainer(model=model, args=args, apt_config=config, train_dataset=_causal_lm_dataset())
    trainer.train()
    controller = trainer.apt_controller
    schedule = controller.schedule
    pretune, *events = controller.events
    assert pretune["kind"] == "pretune"
    assert pretune["calibration_batches"] == 4  # 8 examples in micro-batches of 2 (decoder default)
    block = _largest_block_share(controller)
    assert 0.7 - block <= pretune["density"] <= 0.7 + 1e-9
    assert schedule.initial_density == pytest.approx(0.7) and schedule.densities[-1] == 0.4
    # the events of the schedule pruned further with the running salience ...
    assert [e["step"] for e in events] == list(schedule.events)
    assert sum(e["removed"]["heads"] + e["removed"]["neurons"] for e in events) > 0
    assert all(e["density"] <= d + 1e-9 for e, d in zip(events, schedule.densities, strict=True))
    # ... and reached the target at the last one (within one block)
    assert 0.4 - block <= events[-1]["density"] <= 0.4 + 1e-9
    assert controller.density() == events[-1]["density"]


def test_encoder_without_pretune_does_not_calibrate(tmp_path) -> None:
    model = tiny_bert()
    config = AptConfig(target_density=0.5, num_events=2, distill=False)
    controller = aptune.prepare_(model, config, total_steps=40)
    assert controller.pretune_density is None
    assert controller.schedule.initial_density == 1.0


@pytest.mark.parametrize(("targets", "fails"), [(("q", "v"), True), (("q", "v", "up"), False)])
def test_pruning_that_leaves_nothing_to_tune_is_one_clear_error(targets: tuple, fails: bool) -> None:
    from aptune.select import KeepSet

    config = AptConfig(target_density=0.5, adapter_targets=targets, prune_hidden=False, distill=False)
    controller = aptune.prepare_(tiny_llama(), config, total_steps=40)
    units, neurons = sum(controller.blocks.unit_counts()), sum(controller.blocks.neuron_counts())
    hidden = controller.blocks.hidden_size
    controller.set_hard_masks(
        KeepSet(
            heads=torch.zeros(units, dtype=torch.bool),  # every head goes, and with it q and v
            neurons=torch.ones(neurons, dtype=torch.bool),
            hidden=torch.ones(hidden, dtype=torch.bool),
            params=0.0,
        )
    )
    if fails:
        with pytest.raises(ConfigError, match="nothing is left to tune; add adapters on the FFN"):
            controller.prune_to_masks_()
    else:
        assert controller.prune_to_masks_()["heads"] > 0


def test_distillation_without_pruning_during_tuning_is_one_clear_error() -> None:
    config = AptConfig(target_density=0.5, distill=True)  # decoders prune everything before tuning
    with pytest.raises(ConfigError, match="set pretune_density above target_density"):
        aptune.prepare_(tiny_llama(), config, total_steps=40)
    halfway = dataclasses.replace(config, pretune_density=0.75)
    assert aptune.prepare_(tiny_llama(), halfway, total_steps=40).pretune_density == 0.75
    encoder = aptune.prepare_(tiny_bert(), config, total_steps=40)  # encoders prune during tuning
    assert encoder.pretune_density is None


@pytest.mark.parametrize("option", ["distill", "tuning_damage_curves", "hidden_damage_curve"])
def test_an_option_of_the_tuning_window_rejected_leaves_the_model_as_it_was(option: str) -> None:
    # each needs pruning left for tuning; the decoder default prunes everything before tuning
    config = AptConfig(**{"target_density": 0.5, "prune_hidden": True, "distill": False, option: True})
    model = tiny_llama()
    before = {name: (param.requires_grad, param.detach().clone()) for name, param in model.named_parameters()}
    with pytest.raises(
        ConfigError, match=f"AptConfig.{option}=True .*set pretune_density above target_density"
    ):
        aptune.prepare_(model, config, total_steps=40)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for name, (trainable, value) in before.items():
        assert after[name].requires_grad == trainable and torch.equal(after[name], value)
    assert getattr(model, "_aptune_controller", None) is None
    assert not any(isinstance(module, AptLinear) for module in model.modules())
    aptune.prepare_(model, dataclasses.replace(config, pretune_density=0.75), total_steps=40)  # the fix works


@pytest.mark.parametrize("option", ["distill", "tuning_damage_curves", "hidden_damage_curve"])
def test_a_run_that_prunes_nothing_accepts_every_option_of_the_tuning_window(option: str) -> None:
    config = AptConfig(**{"target_density": 1.0, "prune_hidden": True, "distill": False, option: True})
    for model in (tiny_llama(), tiny_bert()):
        assert aptune.prepare_(model, config, total_steps=40).pretune_density is None


@pytest.mark.parametrize(
    ("fields", "noted"),
    [
        ({}, True),  # the decoder default: damage curves keep them, and nothing is left for tuning
        ({"pretune_density": 0.85}, False),  # they leave during tuning
        ({"prune_hidden": False}, False),  # the user did not ask for them
        ({"damage_curves": 0}, False),  # the one-shot selection removes them
    ],
)
def test_pretune_record_says_when_hidden_dimensions_cannot_leave(fields: dict, noted: bool) -> None:
    from aptune.trainer import describe_event

    data = _causal_lm_dataset(8)
    batches = [{k: torch.tensor(data[i : i + 2][k]) for k in data.column_names} for i in range(0, 8, 2)]
    config = AptConfig(target_density=0.7, distill=False, **fields)
    controller = aptune.prepare_(tiny_llama(), config, total_steps=40)
    hidden_before = controller.blocks.hidden_size
    record = controller.calibrate_and_prune_(batches)
    assert ("hidden_note" in record) is noted
    if noted:
        assert controller.blocks.hidden_size == hidden_before  # what the note says is what happened
        assert "set pretune_density above target_density" in describe_event(record)
    else:
        assert "hidden dimensions stay" not in describe_event(record)
