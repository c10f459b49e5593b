"""Heads that copy from the context: their measured score, and the selection that keeps them."""

from __future__ import annotations

import pytest
import torch

import aptune
from aptune.config import DECODER_COPY_HEADS, AptConfig
from aptune.copy_heads import induction_from_attentions, repeated_random_tokens, unit_induction_scores
from aptune.errors import ConfigError
from test_llama import VOCAB, tiny_llama
from tiny import tiny_bert


def _attention_reading(length: int, offset: int, shift: int) -> torch.Tensor:
    # [1, 1, L, L]: every query reads the key `shift` positions before it (position 0 when none)
    size = offset + 2 * length
    attention = torch.zeros(1, 1, size, size)
    for q in range(size):
        attention[0, 0, q, max(q - shift, 0)] = 1.0
    return attention


def test_an_induction_head_scores_one_and_other_patterns_zero() -> None:
    length, offset = 6, 1
    induction = _attention_reading(length, offset, length - 1)  # the token after the earlier copy
    previous = _attention_reading(length, offset, 1)
    same_token = _attention_reading(length, offset, length)  # the earlier occurrence itself
    scores = induction_from_attentions(torch.cat([induction, previous, same_token], dim=1), length, offset)
    assert scores.tolist() == [1.0, 0.0, 0.0]


def test_repeated_random_tokens_repeat_after_the_bos() -> None:
    ids = repeated_random_tokens(5000, 7, 3, seed=0, bos=1)
    assert ids.shape == (3, 15)
    assert (ids[:, 0] == 1).all()
    assert torch.equal(ids[:, 1:8], ids[:, 8:])
    assert (ids[:, 1:] >= 500).all()  # above the special and byte tokens


def test_unit_scores_are_the_best_query_head_of_each_kv_group() -> None:
    # the reference: the same attention maps read from the model directly, grouped by hand
    model = tiny_llama()
    scores = unit_induction_scores(model, [2, 2], [0, 1], length=8, count=2)
    ids = repeated_random_tokens(VOCAB, 8, 2, 0, model.config.bos_token_id)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions
    model.set_attn_implementation("sdpa")
    for layer in range(2):
        per_head = induction_from_attentions(attentions[layer], 8, 1)  # 6 query heads
        expected = torch.stack([per_head[:3].max(), per_head[3:].max()])
        assert torch.allclose(scores[layer], expected)
    assert model.config._attn_implementation == "sdpa"  # restored
    assert not model.training  # tiny_llama is in eval mode and stays so


def _prepared(threshold: float | None, density: float = 0.5):
    model = tiny_llama()
    model.train()
    aptune.prepare_(model, AptConfig(target_density=density, keep_copy_heads=threshold, damage_curves=0))
    return model, model._aptune_controller


def _with_induction_scores(monkeypatch, scores: list[torch.Tensor], config: AptConfig):
    """The controller of a tiny LLaMA prepared with ``config``, whose units measure ``scores``."""
    monkeypatch.setattr("aptune.controller.unit_induction_scores", lambda *a, **k: scores)
    model = tiny_llama()
    model.train()
    aptune.prepare_(model, config)
    return model._aptune_controller


def _batches(count: int = 2) -> list[dict]:
    ids = torch.randint(3, VOCAB, (count * 2, 16), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": ids[i : i + 2], "labels": ids[i : i + 2].clone()} for i in range(0, count * 2, 2)]


def test_units_above_the_threshold_survive_the_pruning(monkeypatch) -> None:
    # the units the plain selection removes, made to score as copy heads
    _, plain = _prepared(0.0, density=0.3)
    plain.calibrate_and_prune_(_batches())
    removed = [
        (layer, u) for layer in range(2) for u in range(2) if u not in plain.blocks.units[layer].tolist()
    ]
    assert removed, "the plain selection must remove a unit for this test to mean anything"
    fake = [torch.tensor([0.9 if (layer, u) in removed else 0.1 for u in range(2)]) for layer in range(2)]
    monkeypatch.setattr("aptune.controller.unit_induction_scores", lambda *a, **k: fake)
    _, controller = _prepared(0.5, density=0.3)
    record = controller.calibrate_and_prune_(_batches())
    for layer, unit in removed:
        assert unit in controller.blocks.units[layer].tolist()
    assert sorted((e["layer"], e["unit"]) for e in record["copy_heads"]) == sorted(removed)
    assert controller.param_count() <= 0.3 * controller.blocks.initial_params + 1e-6  # still in budget
    assert controller.protect_copy_heads() == []  # measured once


def test_protection_survives_a_resume(monkeypatch) -> None:
    fake = [torch.tensor([0.9, 0.0]), torch.tensor([0.0, 0.9])]
    monkeypatch.setattr("aptune.controller.unit_induction_scores", lambda *a, **k: fake)
    _, controller = _prepared(0.5, density=0.3)
    controller.calibrate_and_prune_(_batches())
    state = controller.state_dict()
    monkeypatch.setattr(
        "aptune.controller.unit_induction_scores", lambda *a, **k: pytest.fail("measured again")
    )
    _, resumed = _prepared(0.5, density=0.3)
    resumed.load_state_dict(state)
    assert [p.tolist() for p in resumed.blocks.protected] == [[0], [1]]
    assert resumed.protect_copy_heads() == []


def test_zero_turns_the_protection_off(monkeypatch) -> None:
    monkeypatch.setattr("aptune.controller.unit_induction_scores", lambda *a, **k: pytest.fail("measured"))
    _, controller = _prepared(0.0)
    record = controller.calibrate_and_prune_(_batches())
    assert "copy_heads" not in record
    assert controller.blocks.protected is None


def test_decoders_protect_from_0_3_by_default(monkeypatch) -> None:
    fake = [torch.tensor([0.31, 0.29]), torch.tensor([0.1, 0.3])]
    monkeypatch.setattr("aptune.controller.unit_induction_scores", lambda *a, **k: fake)
    _, controller = _prepared(None)
    record = controller.calibrate_and_prune_(_batches())
    assert sorted((e["layer"], e["unit"]) for e in record["copy_heads"]) == [(0, 0), (1, 1)]
    assert AptConfig().copy_heads_threshold(is_decoder=True) == DECODER_COPY_HEADS == 0.3


def test_encoders_measure_nothing_by_default(monkeypatch) -> None:
    monkeypatch.setattr("aptune.controller.unit_induction_scores", lambda *a, **k: pytest.fail("measured"))
    model = tiny_bert()
    aptune.prepare_(model, AptConfig(target_density=0.5, damage_curves=0))
    assert model._aptune_controller.protect_copy_heads() == []
    assert AptConfig().copy_heads_threshold(is_decoder=False) is None
    assert AptConfig(keep_copy_heads=0.0).copy_heads_threshold(is_decoder=False) is None


def test_an_old_config_keeps_its_meaning() -> None:
    # format 1 wrote None for "no protected unit"; format 2 reads None as the family default
    old = {**AptConfig().to_dict(), "format_version": 1, "keep_copy_heads": None}
    assert AptConfig.from_dict(old).copy_heads_threshold(is_decoder=True) is None
    explicit = {**old, "keep_copy_heads": 0.5}
    assert AptConfig.from_dict(explicit).copy_heads_threshold(is_decoder=True) == 0.5
    now = AptConfig().to_dict()
    assert AptConfig.from_dict(now).copy_heads_threshold(is_decoder=True) == 0.3


@pytest.mark.parametrize("threshold", [-0.2, 1.5, float("nan"), "high"])
def test_bad_threshold_is_one_clear_error(threshold: object) -> None:
    with pytest.raises(ConfigError, match="keep_copy_heads"):
        AptConfig(keep_copy_heads=threshold)


def test_copy_heads_on_an_encoder_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"keep_copy_heads=0\.3 protects the heads that copy"):
        aptune.prepare_(tiny_bert(), AptConfig(target_density=0.5, keep_copy_heads=0.3))


def test_protected_units_stay_through_the_pruning_during_tuning(monkeypatch) -> None:
    # protected at the pruning before tuning; a later, lower-density selection on scores that
    # rank them last still keeps them, under their original ids after the surgery
    fake = [torch.tensor([0.0, 0.9]), torch.tensor([0.9, 0.0])]
    config = AptConfig(target_density=0.3, pretune_density=0.8, keep_copy_heads=0.5, damage_curves=0)
    controller = _with_induction_scores(monkeypatch, fake, config)
    controller.calibrate_and_prune_(_batches())
    heads, neurons, hidden = controller._score_vectors()
    protected = controller.blocks.protected_mask()
    assert protected is not None and int(protected.sum()) == 2
    low = torch.where(protected, torch.zeros_like(heads), torch.ones_like(heads))  # protected last
    monkeypatch.setattr(
        controller, "_score_vectors", lambda: (low, torch.ones_like(neurons), torch.ones_like(hidden))
    )
    keep = controller.select(0.3)
    assert bool(keep.heads[protected.to(keep.heads.device)].all())
    assert not bool(keep.heads[~protected.to(keep.heads.device)].all())  # the others did compete


def test_a_prepared_model_is_measured_as_the_plain_one() -> None:
    # the adapters and masks aptune adds change nothing before any pruning or tuning
    plain = unit_induction_scores(tiny_llama(), [2, 2], [0, 1])
    model, controller = _prepared(0.005)
    protected = controller.protect_copy_heads()
    assert [round(float(s), 4) for s in torch.cat(plain)] == [e["score"] for e in protected]
    assert model.training  # its mode came back


def test_the_uniform_layout_keeps_copy_heads_and_stays_uniform(monkeypatch) -> None:
    # a stock-config export needs the same unit count in every layer, protected units or not
    def pruned(threshold: float):
        model = tiny_llama()
        model.train()
        config = AptConfig(target_density=0.5, keep_copy_heads=threshold, damage_curves=0, layout="uniform")
        aptune.prepare_(model, config)
        controller = model._aptune_controller
        controller.calibrate_and_prune_(_batches())
        return controller

    plain = pruned(0.0)
    counts = [len(ids) for ids in plain.blocks.units]
    assert len(set(counts)) == 1 and counts[0] < 2, "the plain selection must remove a unit per layer"
    dropped = next(u for u in range(2) if u not in plain.blocks.units[0].tolist())
    fake = [torch.tensor([0.9 if u == dropped else 0.0 for u in range(2)]), torch.tensor([0.0, 0.0])]
    monkeypatch.setattr("aptune.controller.unit_induction_scores", lambda *a, **k: fake)
    protected = pruned(0.5)
    assert dropped in protected.blocks.units[0].tolist()
    assert len({len(ids) for ids in protected.blocks.units}) == 1  # still uniform


def test_damage_curves_remove_only_the_units_a_selection_may_remove(monkeypatch) -> None:
    # layer 0's unit 0 is protected: its site's curve removes unit 1 alone, never unit 0, so
    # the loss of a copying head the selection keeps does not price the unit it may remove
    fake = [torch.tensor([0.9, 0.0]), torch.tensor([0.0, 0.0])]
    config = AptConfig(target_density=0.5, keep_copy_heads=0.5, damage_curves=4, damage_batches=2)
    controller = _with_induction_scores(monkeypatch, fake, config)
    removed_units: list[list[int]] = []
    original = controller.set_hard_masks

    def record_masks(keep) -> None:  # every keep-set the curves measure goes through here
        removed_units.append(torch.nonzero(~keep.heads.cpu()).flatten().tolist())
        original(keep)

    monkeypatch.setattr(controller, "set_hard_masks", record_masks)
    record = controller.calibrate_and_prune_(_batches())
    (curves,) = record["damage_curves"]
    assert [len(points) for points in curves["heads"]] == [1, 2]  # 1 removable unit, then 2
    measured = removed_units[: 1 + 2 + 4 + 4]  # the curves' keep-sets come before the pruning's
    assert any(measured) and not any(0 in units for units in measured)  # flat unit 0 = layer 0's unit 0
    assert 0 in controller.blocks.units[0].tolist()
