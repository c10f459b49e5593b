"""Hidden dimensions priced against heads and neurons by measured loss (`aptune.hidden_exchange`)."""

from __future__ import annotations

import copy

import pytest
import torch

import aptune
from aptune.config import AptConfig
from aptune.errors import ConfigError
from aptune.hidden_exchange import exchange_thresholds, hidden_exchange_ranking, hidden_exchange_scores
from aptune.scores import Salience
from aptune.surgery import prune_hidden_
from test_llama import _causal_lm_dataset, tiny_llama

STEPS = 40


# ---------------------------------------------------------------------------------------------- pure
def test_thresholds_interpolate_between_the_hull_slopes() -> None:
    # slopes 1, 2, 3 per stretch (convex), thresholds 10, 20, 30 at the stretches' middles
    params, damages, thresholds = [1, 2, 4], [1.0, 3.0, 9.0], [10.0, 20.0, 30.0]
    query = torch.tensor([0.0, 0.5, 1.0, 1.5, 3.0, 6.0])
    expected = torch.tensor([0.0, 5.0, 10.0, 15.0, 30.0, 60.0])  # proportional beyond the last slope
    assert exchange_thresholds(query, params, damages, thresholds) == pytest.approx(expected)


def test_a_flat_stretch_of_the_hull_adds_no_knot() -> None:
    # concave data: one chord of slope 4/3 over both stretches; the higher threshold prices it
    prices = exchange_thresholds(torch.tensor([4 / 3, 2 / 3]), [1, 3], [3.0, 4.0], [1.0, 2.0])
    assert prices == pytest.approx(torch.tensor([2.0, 1.0]))


def test_blocks_that_cost_nothing_price_any_damaging_hidden_dim_above_them() -> None:
    prices = exchange_thresholds(torch.tensor([0.0, 0.1]), [1, 2], [0.0, -0.01], [1.0, 3.0])
    assert prices.tolist() == [0.0, 6.0]


def test_in_a_world_of_known_marginal_losses_every_hidden_dim_sits_where_blocks_cost_as_much() -> None:
    # 1000 one-parameter blocks of score per parameter d_k = k / 1000; removing one costs alpha * d_k,
    # so the blocks' marginal loss per parameter at threshold t is alpha * t. A hidden dim of w_i
    # loss and p parameters costs w_i / p per parameter: it belongs at threshold w_i / (p * alpha).
    alpha, per_hidden, charge = 3.0, 50.0, 80.0
    density = torch.arange(1, 1001, dtype=torch.float64) / 1000

    def blocks_curve(amounts: list[int]) -> tuple[list[float], list[float], list[float]]:
        damages = [alpha * float(density[:a].sum()) for a in amounts]
        middles = [(a + b) / 2 for a, b in zip([0, *amounts[:-1]], amounts, strict=True)]
        thresholds = [float(density[round(m) - 1]) for m in middles]
        return [float(a) for a in amounts], damages, thresholds

    weights = torch.tensor([0.9, 0.1, 0.4, 2.0, 0.2, 1.2, 0.6, 3.0], dtype=torch.float64)
    hidden_counts = [1, 2, 4]
    order = torch.argsort(weights)
    hidden_damages = [float(weights[order[:c]].sum()) for c in hidden_counts]
    # the block curve at the hidden curve's parameter amounts (as the controller measures it)
    params, damages, thresholds = blocks_curve([c * int(per_hidden) for c in hidden_counts] + [400])
    scores = hidden_exchange_scores(
        weights.float(), hidden_counts, hidden_damages, per_hidden, charge, params, damages, thresholds
    )
    expected = weights / (per_hidden * alpha) * charge
    # the curve reading and the middle thresholds are exact here up to the blocks' granularity
    assert scores.double() == pytest.approx(expected, rel=0.03)
    assert torch.equal(torch.argsort(scores), torch.argsort(weights.float()))


def test_the_dims_of_one_stretch_keep_their_salience_order_and_ratio() -> None:
    salience = torch.tensor([4.0, 1.0, 3.0, 2.0])
    scores = hidden_exchange_scores(
        salience, [2, 4], [0.3, 2.0], 10.0, 10.0, [5.0, 10.0], [1.0, 2.0], [0.5, 1.0]
    )
    assert torch.equal(torch.argsort(scores), torch.argsort(salience))
    # dims 1 and 3 share the first stretch: same slope, prices proportional to salience (below the
    # first knot the map is linear through 0)
    assert float(scores[3] / scores[1]) == pytest.approx(2.0, rel=1e-4)


def test_the_measured_ranking_prices_hidden_dims_by_their_loss_against_real_blocks() -> None:
    # tiny LLaMA's blocks with random salience; removing a head or neuron costs alpha x its salience
    # (so alpha x its score per parameter per parameter), a hidden dim its weight w_i. A hidden dim
    # then belongs where blocks cost w_i / per_hidden per parameter, i.e. at score per parameter
    # w_i / (per_hidden x alpha), and the selection charges it per_hidden: its score is w_i / alpha.
    from aptune.arch import build_layout
    from aptune.blocks import BlockBook

    model = tiny_llama()
    layout = build_layout(model)
    units = [model.get_submodule(s.q).weight.shape[0] // s.unit_width for s in layout.attention]
    neurons = [model.get_submodule(s.up).weight.shape[0] for s in layout.ffn]
    blocks = BlockBook(layout, units, neurons)
    generator = torch.Generator().manual_seed(0)
    salience = Salience(
        [torch.rand(n, generator=generator) for n in units],
        [torch.rand(n, generator=generator) for n in neurons],
        torch.rand(blocks.hidden_size, generator=generator),
    )
    # losses on the blocks' scale: the hidden dims' marginal losses fall inside the block curve's
    weights = torch.rand(blocks.hidden_size, generator=generator) * 2
    salience = Salience(salience.heads, salience.neurons, weights)  # the order is the true one
    alpha = 2.0
    flat_heads, flat_neurons = torch.cat(salience.heads), torch.cat(salience.neurons)

    def loss_of(keep) -> float:
        if keep is None:
            return 1.0
        blocks_lost = float(flat_heads[~keep.heads].sum() + flat_neurons[~keep.neurons].sum())
        return 1.0 + alpha * blocks_lost + float(weights[~keep.hidden].sum())

    config = AptConfig(target_density=0.4, min_heads_per_layer=0, min_neurons_per_layer=0)
    counts = [3, 7, 14, 29]
    ranking, curves = hidden_exchange_ranking(salience, blocks, config, counts, loss_of)
    assert ranking.heads is salience.heads and ranking.neurons is salience.neurons
    assert curves["hidden_counts"] == counts and len(curves["hidden"]) == 4
    assert curves["hidden"][0] == pytest.approx(float(torch.sort(weights).values[:3].sum()), rel=1e-6)
    # below the last point the prices follow w / alpha up to the granularity of a tiny model's
    # blocks (a head is 1/8 of an attention site): the midpoint thresholds are coarse
    low = torch.argsort(weights)[:29]
    ratio = ranking.hidden[low] / (weights[low] / alpha)
    assert float(ratio.median()) == pytest.approx(1.0, abs=0.1)
    assert float(ratio.min()) >= 0.8 and float(ratio.max()) <= 1.2
    assert torch.equal(torch.argsort(ranking.hidden), torch.argsort(weights))


# ---------------------------------------------------------------------------------------------- controller
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
        "prune_hidden": True,
        "hidden_salience": "norm_weighted",
        "hidden_damage_curve": True,
        **fields,
    }
    return AptConfig(**values)


def _run(config: AptConfig, spy=None):
    batches = _batches()
    model = tiny_llama().train()
    controller = aptune.prepare_(model, config, total_steps=STEPS)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    controller.calibrate_and_prune_(batches)
    if spy is not None:
        spy(controller)
    for step in range(1, STEPS + 1):
        model(**batches[step % len(batches)]).loss.backward()
        optimizer.step()
        controller.step(optimizer)
        optimizer.zero_grad()
    return controller, batches


def test_each_event_measures_both_curves_on_the_tuned_model() -> None:
    seen: list[tuple[torch.nn.Module, object, torch.Tensor]] = []

    def spy(controller) -> None:
        measure = controller._hidden_exchange_scores

        def wrapped(salience, kept_batches):
            seen.append(
                (copy.deepcopy(controller.model), copy.deepcopy(controller.layout), salience.hidden.clone())
            )
            return measure(salience, kept_batches)

        controller._hidden_exchange_scores = wrapped

    controller, batches = _run(_config(), spy)
    events = [e for e in controller.events if e.get("kind") != "pretune" and e["params"] < e["params_before"]]
    assert events and len(seen) == len(events)  # once per event that prunes
    (curves,) = events[0]["damage_curves"]
    assert curves["hidden_counts"] == [14, 29]  # 0.6 x 48, then half of it
    assert len(curves["blocks"]) == len(curves["block_thresholds"]) == 2
    assert curves["block_params"][0] < curves["block_params"][1]
    assert curves["block_thresholds"][0] <= curves["block_thresholds"][1]

    # the hidden curve's first point, re-measured on the copy with those dims physically removed
    copied, layout, salience = seen[0]
    keep = torch.sort(torch.argsort(salience.cpu(), stable=True)[14:]).values

    @torch.no_grad()
    def loss() -> float:
        copied.eval()
        return sum(float(copied(**b).loss) for b in batches[:2]) / 2

    intact = loss()
    prune_hidden_(copied, layout, keep)
    assert curves["hidden"][0] > 0
    assert loss() - intact == pytest.approx(curves["hidden"][0], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(("scale", "leave"), [(0.0, True), (1e6, False)])
def test_hidden_dims_leave_exactly_when_their_measured_loss_is_low(scale: float, leave: bool) -> None:
    # the same run, with the hidden curve's measured damage scaled: free hidden dims go first,
    # ruinous ones stay, while the heads and neurons are ranked as before
    def spy(controller) -> None:
        measure = controller._hard_mask_losses

        def scaled(batches):
            context = measure(batches)

            class Scaled:
                def __enter__(self):
                    loss_of = context.__enter__()

                    def hidden_scaled(keep):
                        value = loss_of(keep)
                        if keep is not None and not bool(keep.hidden.all()) and bool(keep.neurons.all()):
                            base = loss_of(None)
                            return base + scale * (value - base)
                        return value

                    return hidden_scaled

                def __exit__(self, *exc):
                    return context.__exit__(*exc)

            return Scaled()

        controller._hard_mask_losses = scaled

    controller, _ = _run(_config(), spy)
    assert (controller.blocks.hidden_size < 48) is leave
    assert controller.density() <= 0.4 + 0.05


def test_without_the_option_the_hidden_dims_keep_their_salience() -> None:
    calls = []

    def spy(controller) -> None:
        controller._hidden_exchange_scores = lambda *a: calls.append(a)

    controller, _ = _run(_config(hidden_damage_curve=False), spy)
    assert not calls and not controller.tuning_damage.active


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"prune_hidden": False}, "set prune_hidden=true"),
        ({"distill": True}, "set distill=false"),
        ({"selection_scale": "layer"}, "use selection_scale='global'"),
        ({"pretune_prune": False, "pretune_density": None}, "measures its curves on batches"),
    ],
)
def test_settings_it_cannot_work_with_are_one_clear_error(fields: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        _config(**fields)


def test_a_decoder_pruned_to_the_target_before_tuning_is_told_to_leave_room() -> None:
    with pytest.raises(ConfigError, match="set pretune_density above target_density"):
        aptune.prepare_(tiny_llama(), _config(pretune_density=None), total_steps=STEPS)


def test_the_measurement_restores_masks_and_training_mode() -> None:
    model = tiny_llama().train()
    controller = aptune.prepare_(model, _config(), total_steps=STEPS)
    batches = _batches()
    controller.calibrate_and_prune_(batches)
    hidden = torch.rand(controller.blocks.hidden_size)
    running = Salience(list(controller.scores.heads), list(controller.scores.neurons), hidden)
    controller.set_hard_masks(controller.select(0.5))  # masks in place, as inside a pruning window
    before = copy.deepcopy(controller.state.state_dict())
    assert before["heads"] or before["neurons"]
    controller._hidden_exchange_scores(running, batches[:2])
    after = controller.state.state_dict()
    assert model.training
    for kind in ("heads", "neurons"):
        assert before[kind].keys() == after[kind].keys()
        assert all(torch.equal(before[kind][k], after[kind][k]) for k in before[kind])
    assert (before["hidden"] is None) == (after["hidden"] is None)
    if before["hidden"] is not None:
        assert torch.equal(before["hidden"], after["hidden"])
