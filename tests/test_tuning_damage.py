"""Damage curves at the pruning events during tuning (``AptConfig.tuning_damage_curves``)."""

from __future__ import annotations

import copy

import pytest
import torch

import aptune
from aptune.checkpoint import load_controller_state, save_controller_state
from aptune.config import AptConfig
from aptune.damage import curve_counts
from aptune.errors import ConfigError
from aptune.scores import Salience
from aptune.surgery import prune_hidden_, prune_neurons_
from aptune.tuning_damage import TuningDamageRanking
from test_llama import _causal_lm_dataset, tiny_llama
from tiny import tiny_bert

STEPS = 40


def _batches() -> list[dict]:
    data = _causal_lm_dataset(8)
    return [{k: torch.tensor(data[i : i + 2][k]) for k in data.column_names} for i in range(0, 8, 2)]


def _config(**fields) -> AptConfig:
    values = {
        "target_density": 0.4,
        "pretune_density": 0.7,
        "damage_curves": 2,
        "damage_batches": 2,
        "distill": False,
        "prune_hidden": False,
        "tuning_damage_curves": True,
        **fields,
    }
    return AptConfig(**values)


def _fresh(config: AptConfig):
    model = tiny_llama().train()
    controller = aptune.prepare_(model, config, total_steps=STEPS)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    return model, controller, optimizer


def _step(model, controller, optimizer, batches: list[dict], step: int) -> None:
    model(**batches[step % len(batches)]).loss.backward()
    optimizer.step()
    controller.step(optimizer)
    optimizer.zero_grad()


def test_every_event_during_tuning_ranks_by_curves_measured_on_the_tuned_model(monkeypatch) -> None:
    batches = _batches()
    model, controller, optimizer = _fresh(_config())
    controller.calibrate_and_prune_(batches)
    hidden = controller.blocks.hidden_size
    # what each measurement saw: the model as it then was, and the running salience that orders the sites
    seen: list[tuple[torch.nn.Module, torch.Tensor | None]] = []
    measure = controller._damage_curve_scores

    def spy(salience, kept_batches):
        seen.append((copy.deepcopy(controller.model), list(salience.neurons)))
        return measure(salience, kept_batches)

    monkeypatch.setattr(controller, "_damage_curve_scores", spy)
    for step in range(1, STEPS + 1):
        _step(model, controller, optimizer, batches, step)
    pruning = [
        e for e in controller.events if e.get("kind") != "pretune" and e["params"] < e["params_before"]
    ]
    assert pruning, "the schedule should prune during tuning"
    assert all("damage_curves" in e for e in pruning)
    assert len(seen) == len(pruning)  # once per event, not once per window step
    assert controller.blocks.hidden_size == hidden  # hidden dims stay at those events
    assert controller.density() <= 0.4 + 0.05

    # the first event's curve of a scored FFN site, re-measured on the copy with the neurons removed
    copied, neurons = seen[0]
    site = next(i for i, scores in enumerate(neurons) if scores is not None)
    (curves,) = pruning[0]["damage_curves"]
    order = torch.argsort(neurons[site].cpu(), stable=True)
    first = curve_counts(neurons[site].numel(), 2)[0]

    @torch.no_grad()
    def loss() -> float:
        copied.eval()
        return sum(float(copied(**b).loss) for b in batches[:2]) / 2

    intact = loss()
    prune_neurons_(copied, controller.layout, site, torch.sort(order[first:]).values)
    assert curves["neurons"][site][0] != 0
    assert loss() - intact == pytest.approx(curves["neurons"][site][0], rel=1e-4, abs=1e-6)


def test_without_the_option_tuning_measures_no_curves(monkeypatch) -> None:
    batches = _batches()
    model, controller, optimizer = _fresh(_config(tuning_damage_curves=False))
    controller.calibrate_and_prune_(batches)
    calls = []
    monkeypatch.setattr(controller, "_damage_curve_scores", lambda *a: calls.append(a))
    for step in range(1, STEPS + 1):
        _step(model, controller, optimizer, batches, step)
    assert not calls and controller.density() < 0.7
    assert not any("damage_curves" in e for e in controller.events if e.get("kind") != "pretune")


def test_a_state_saved_inside_a_window_resumes_to_the_same_structure(tmp_path) -> None:
    batches = _batches()
    config = _config()
    model, controller, optimizer = _fresh(config)
    controller.calibrate_and_prune_(batches)
    schedule = controller.schedule
    # the first window step of a pruning event: its curves are measured, the event has not happened
    stop = next(
        s
        for s in range(1, STEPS + 1)
        if schedule.window_index(s) is not None and schedule.density_target(s) < 0.69
    )
    for step in range(1, stop + 1):
        _step(model, controller, optimizer, batches, step)
    assert controller.tuning_damage.window is not None
    save_controller_state(controller, tmp_path)
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    model2, controller2, _ = _fresh(config)
    load_controller_state(controller2, tmp_path)
    model2.load_state_dict(weights)
    optimizer2 = torch.optim.AdamW([p for p in model2.parameters() if p.requires_grad], lr=5e-3)
    optimizer2.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert len(controller2.tuning_damage.batches) == 2
    for a, b in zip(controller.tuning_damage.batches, controller2.tuning_damage.batches, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    index, ranking, curves = controller.tuning_damage.window
    index2, ranking2, curves2 = controller2.tuning_damage.window
    assert index2 == index and curves2 == curves
    for a, b in zip(ranking.neurons, ranking2.neurons, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for step in range(stop + 1, STEPS + 1):
        _step(model, controller, optimizer, batches, step)
        _step(model2, controller2, optimizer2, batches, step)
    assert controller2.structure() == controller.structure()


def _hidden_config(**fields) -> AptConfig:
    return _config(prune_hidden=True, hidden_salience="norm_weighted", hidden_damage_curve=True, **fields)


def test_with_the_hidden_curve_every_event_measures_it_on_the_tuned_model(monkeypatch) -> None:
    batches = _batches()
    model, controller, optimizer = _fresh(_hidden_config())
    controller.calibrate_and_prune_(batches)
    hidden = controller.blocks.hidden_size
    assert hidden == 48  # never one-shot
    seen: list[tuple[torch.nn.Module, object, torch.Tensor]] = []
    measure = controller._damage_curve_scores

    def spy(salience, kept_batches, **options):
        assert options == {"with_hidden": True}
        seen.append(
            (copy.deepcopy(controller.model), copy.deepcopy(controller.layout), salience.hidden.clone())
        )
        return measure(salience, kept_batches, **options)

    monkeypatch.setattr(controller, "_damage_curve_scores", spy)
    for step in range(1, STEPS + 1):
        _step(model, controller, optimizer, batches, step)
    pruning = [
        e for e in controller.events if e.get("kind") != "pretune" and e["params"] < e["params_before"]
    ]
    assert pruning and len(seen) == len(pruning)
    (curves,) = pruning[0]["damage_curves"]
    assert curves["hidden_counts"] == [14, 29]  # 0.6 x 48, then half of it (2 points)

    # the first point, re-measured on the copy with those hidden dims physically removed
    copied, layout, hidden_salience = seen[0]
    first = curves["hidden_counts"][0]
    keep = torch.sort(torch.argsort(hidden_salience.cpu(), stable=True)[first:]).values

    @torch.no_grad()
    def loss() -> float:
        copied.eval()
        return sum(float(copied(**b).loss) for b in batches[:2]) / 2

    intact = loss()
    prune_hidden_(copied, layout, keep)
    assert curves["hidden"][0] > 0
    assert loss() - intact == pytest.approx(curves["hidden"][0], rel=1e-4, abs=1e-6)


def test_hidden_dims_leave_when_their_curve_says_they_are_cheap(monkeypatch) -> None:
    def run(option: bool) -> int:
        batches = _batches()
        config = _hidden_config() if option else _config(prune_hidden=True, hidden_salience="norm_weighted")
        model, controller, optimizer = _fresh(config)
        controller.calibrate_and_prune_(batches)
        measure = controller._damage_curve_scores

        def free_hidden(salience, kept_batches, **options):
            ranking, curves = measure(salience, kept_batches, **options)
            # hidden dims whose removal costs nothing: only the option lets them compete at all
            return Salience(ranking.heads, ranking.neurons, torch.zeros_like(ranking.hidden)), curves

        monkeypatch.setattr(controller, "_damage_curve_scores", free_hidden)
        for step in range(1, STEPS + 1):
            _step(model, controller, optimizer, batches, step)
        return controller.blocks.hidden_size

    assert run(option=True) < 48
    assert run(option=False) == 48


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"distill": True}, "set distill=false"),
        ({"damage_curves": 0}, "needs damage curves"),
        ({"pretune_prune": False}, "needs damage curves"),
        ({"hidden_damage_curve": True}, "set prune_hidden=true"),
    ],
)
def test_settings_it_cannot_work_with_are_one_clear_error(fields: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        _config(**fields)


def test_a_model_without_curves_before_tuning_is_told_what_to_set() -> None:
    # an encoder prunes before tuning only when asked, and has no damage curves by default
    with pytest.raises(ConfigError, match="set damage_curves"):
        aptune.prepare_(tiny_bert(), AptConfig(target_density=0.5, distill=False, tuning_damage_curves=True))


def test_a_decoder_pruned_to_the_target_before_tuning_is_told_to_leave_room() -> None:
    # the decoder default prunes everything before tuning: no event would use the curves
    with pytest.raises(ConfigError, match="set pretune_density above target_density"):
        aptune.prepare_(tiny_llama(), _config(pretune_density=None), total_steps=STEPS)


def test_the_window_ranking_is_measured_once_per_event_and_ends_with_it() -> None:
    ranking = TuningDamageRanking()
    assert not ranking.active
    ranking.keep([{"input_ids": torch.ones(2, 3, dtype=torch.long)}])
    assert ranking.active and ranking.batches[0]["input_ids"].device.type == "cpu"
    calls: list[int] = []

    def measure(running, batches):
        calls.append(len(batches))
        scaled = Salience([h * 2 for h in running.heads], running.neurons, running.hidden)
        return scaled, {"event": len(calls)}

    running = Salience([torch.tensor([1.0, 3.0])], [torch.tensor([2.0])], None)
    first = ranking.ranking(0, running, measure)
    again = ranking.ranking(0, running, measure)
    assert calls == [1] and first is again
    assert torch.equal(first.heads[0], torch.tensor([2.0, 6.0]))
    assert ranking.close(1) is None and ranking.window is None  # another event's close ends it too
    ranking.ranking(1, running, measure)
    assert calls == [1, 1]
    saved = ranking.state_dict()
    restored = TuningDamageRanking()
    restored.load_state_dict(saved, attention_sites=1, ffn_sites=1)
    assert torch.equal(restored.batches[0]["input_ids"], ranking.batches[0]["input_ids"])
    assert restored.window[0] == 1 and torch.equal(restored.window[1].heads[0], torch.tensor([2.0, 6.0]))
    assert restored.close(1) == {"event": 2} and restored.window is None
    empty = TuningDamageRanking()
    empty.load_state_dict(None, attention_sites=1, ffn_sites=1)
    assert not empty.active and empty.window is None
