"""uniform_heads="measured": the uniform layout keeps the units per layer whose pruned model
measures lowest."""

import pytest
import torch

import aptune
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
    reference = {floor: _pruned(min_heads_per_layer=floor) for floor in (0, 1, 2)}
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
    assert record["heads_per_layer"] != _pruned()[0]["heads_per_layer"]


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
