"""uniform_heads="measured": the uniform layout keeps the units per layer whose pruned model
measures lowest."""

import pytest
import torch

import aptune
from aptune.config import AptConfig, upgrade_config_dict
from aptune.errors import ConfigError
from test_llama import _causal_lm_dataset, tiny_llama
from tiny import tiny_bert

# density 0.45 of the tiny LLaMA: the salience keeps one of two KV groups per layer, a floor of two
# keeps both with a narrower FFN, and the two structures measure differently
_SETTINGS = dict(
    target_density=0.45,
    pretune_density=0.45,
    layout="uniform",
    damage_curves=0,
    adapter_targets=("q", "v", "up"),
)


def _batches():
    data = _causal_lm_dataset(8)
    return [{k: torch.tensor(data[i : i + 2][k]) for k in data.column_names} for i in range(0, 8, 2)]


def _pruned(**overrides):
    model = tiny_llama()
    controller = aptune.prepare_(model, aptune.AptConfig(**{**_SETTINGS, **overrides}), total_steps=40)
    record = controller.calibrate_and_prune_(_batches())
    model.eval()
    with torch.no_grad():  # the physically pruned model on the batches the choice is measured on
        loss = sum(float(controller.batch_loss(b)) for b in _batches()[:2]) / 2
    return record, loss


def test_the_choice_is_the_floor_whose_pruned_model_measures_lowest():
    reference = {floor: _pruned(uniform_heads="salience", min_heads_per_layer=floor) for floor in (0, 1, 2)}
    structures = {tuple(r["heads_per_layer"]) for r, _ in reference.values()}
    assert len(structures) == 2  # the candidates differ, so the choice means something
    best = min(reference, key=lambda f: (reference[f][1], f))
    record, loss = _pruned(uniform_heads="measured")
    assert record["uniform_heads"]["floor"] == best
    assert record["heads_per_layer"] == reference[best][0]["heads_per_layer"]
    assert record["ffn_per_layer"] == reference[best][0]["ffn_per_layer"]
    # masked in the measurement, physically pruned in the reference: the same loss
    assert record["uniform_heads"]["losses"][str(best)] == pytest.approx(reference[best][1], abs=1e-5)
    assert loss == pytest.approx(reference[best][1], abs=1e-6)
    # and it is not the salience's own choice here
    assert record["heads_per_layer"] != _pruned(uniform_heads="salience")[0]["heads_per_layer"]


def test_the_chosen_units_stay_through_the_events_during_tuning():
    model = tiny_llama()
    config = aptune.AptConfig(
        **{**_SETTINGS, "pretune_density": 0.7, "num_events": 2, "uniform_heads": "measured"}
    )
    controller = aptune.prepare_(model, config, total_steps=20)
    record = controller.calibrate_and_prune_(_batches())
    chosen = record["heads_per_layer"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for step in range(20):
        batch = _batches()[step % 4]
        model(**batch).loss.backward()
        optimizer.step()
        controller.step(optimizer)
        optimizer.zero_grad()
    assert controller.density() <= 0.45 + 1e-6  # the events pruned down to the target
    assert controller.events[-1]["heads_per_layer"] == chosen


def test_measured_needs_the_uniform_layout():
    with pytest.raises(ConfigError, match="uniform_heads"):
        aptune.AptConfig(uniform_heads="measured")


def test_measured_needs_a_pruning_before_tuning():
    config = aptune.AptConfig(target_density=0.5, layout="uniform", uniform_heads="measured")
    with pytest.raises(ConfigError, match=r"uniform_heads='measured'.*pretune_prune=true"):
        aptune.prepare_(tiny_bert(), config, total_steps=10)  # encoders prune during tuning only


def test_a_floor_above_every_layer_leaves_one_candidate():
    record, _ = _pruned(uniform_heads="measured", min_heads_per_layer=1 << 20)
    assert record["uniform_heads"]["floor"] == 2 and list(record["uniform_heads"]["losses"]) == ["2"]
    assert record["heads_per_layer"] == [6, 6]


@pytest.mark.parametrize(
    ("settings", "is_decoder", "choice"),
    [
        ({"layout": "uniform"}, True, "measured"),
        ({"layout": "uniform"}, False, "salience"),
        ({"layout": "free"}, True, "salience"),
        ({"layout": "uniform", "pretune_prune": False}, True, "salience"),
        ({"layout": "uniform", "target_density": 1.0}, True, "salience"),
        ({"layout": "uniform", "uniform_heads": "salience"}, True, "salience"),
        ({"layout": "uniform", "uniform_heads": "measured"}, False, "measured"),
    ],
)
def test_the_family_default_measures_only_a_decoders_uniform_layout(settings, is_decoder, choice):
    config = AptConfig(**{"target_density": 0.5, **settings})
    assert config.uniform_heads is settings.get("uniform_heads")
    assert config.uniform_heads_choice(is_decoder) == choice


def test_a_decoder_in_the_uniform_layout_measures_by_default():
    record, _ = _pruned()
    assert AptConfig(**_SETTINGS).uniform_heads is None
    assert record["uniform_heads"] == _pruned(uniform_heads="measured")[0]["uniform_heads"]
    assert "uniform_heads" not in _pruned(uniform_heads="salience")[0]


def test_an_encoder_in_the_uniform_layout_does_not_measure(monkeypatch):
    from aptune.controller import AptController

    monkeypatch.setattr(AptController, "_measured_uniform_keep", lambda *a, **k: pytest.fail("measured"))
    model = tiny_bert()
    config = AptConfig(target_density=0.5, layout="uniform", pretune_prune=True, damage_curves=0)
    controller = aptune.prepare_(model, config, total_steps=40)
    data = {"input_ids": torch.randint(5, 90, (2, 8)), "labels": torch.tensor([0, 1])}
    record = controller.calibrate_and_prune_([data])
    assert "uniform_heads" not in record


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_uniform_config_keeps_the_salience_choice(version):
    written = {**AptConfig(layout="uniform").to_dict(), "format_version": version}
    del written["uniform_heads"]  # written before the option existed
    assert AptConfig.from_dict(written).uniform_heads_choice(is_decoder=True) == "salience"
    written["uniform_heads"] = "salience"  # or with the option's former default
    assert AptConfig.from_dict(written).uniform_heads_choice(is_decoder=True) == "salience"
    # in the free layout the field is not read: the old dict reads as today's default
    free = {**written, "layout": "free"}
    assert upgrade_config_dict(free)["uniform_heads"] is None
    assert AptConfig.from_dict(free).uniform_heads is None
    # today's format keeps None as the family default
    assert AptConfig.from_dict(AptConfig(layout="uniform").to_dict()).uniform_heads_choice(True) == "measured"


def test_resuming_an_older_free_layout_run_needs_no_option(tmp_path):
    """Format 2 wrote uniform_heads "salience" in every config; the free layout never read it."""
    import json

    from aptune.runner import APT_CONFIG_FILE, RUN_ARGS_FILE, RunArguments, _check_options

    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    written = {**AptConfig().to_dict(), "format_version": 2, "uniform_heads": "salience"}
    (out / APT_CONFIG_FILE).write_text(json.dumps(written))
    (out / RUN_ARGS_FILE).write_text("{}")
    args = RunArguments(output_dir=str(out), resume_from_checkpoint=str(out / "checkpoints" / "checkpoint-5"))
    assert _check_options(args, AptConfig(), out) is not None
    # a uniform run of format 2 resumes with the salience's choice it ran with, and names it
    (out / APT_CONFIG_FILE).write_text(json.dumps({**written, "layout": "uniform"}))
    assert _check_options(args, AptConfig(layout="uniform", uniform_heads="salience"), out) is not None
    with pytest.raises(ConfigError, match=r"differs in: uniform_heads\); .*--uniform-heads salience"):
        _check_options(args, AptConfig(layout="uniform"), out)
