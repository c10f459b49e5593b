"""The ``"layer"`` selection scale: scores rescaled per layer before the global budgeted ranking."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import aptune
from aptune.blocks import layer_balanced_scores, site_median_scores
from aptune.config import AptConfig
from aptune.select import select_keep_set
from test_llama import tiny_llama


def _book_and_scores(scale_of_layer_1: float, seed: int = 0):
    """A tiny LLaMA's block book and scores whose second layer is ``scale_of_layer_1`` times smaller."""
    model = tiny_llama()
    controller = aptune.prepare_(model, AptConfig(target_density=0.5, prune_hidden=False, distill=False))
    book = controller.blocks
    generator = torch.Generator().manual_seed(seed)
    head_layers, neuron_layers = book.layer_ids()
    # salience per parameter from the same distribution for units (cost 64) and neurons (cost 3)
    heads = (torch.rand(head_layers.numel(), generator=generator) + 0.5) * 64
    neurons = (torch.rand(neuron_layers.numel(), generator=generator) + 0.5) * 3
    heads = torch.where(head_layers == 1, heads / scale_of_layer_1, heads)
    neurons = torch.where(neuron_layers == 1, neurons / scale_of_layer_1, neurons)
    return controller, book, (heads, neurons, torch.ones(book.hidden_size))


def _per_layer(book, keep) -> tuple[list[int], list[int]]:
    heads, neurons = book.split(keep)
    return [int(h.sum()) for h in heads], [int(n.sum()) for n in neurons]


@pytest.mark.parametrize("mode", ["layer", "site"])
def test_global_ranking_strips_the_low_scale_layer_and_rescaled_ones_do_not(mode: str) -> None:
    controller, book, scores = _book_and_scores(scale_of_layer_1=1000.0)
    config = controller.config
    old = book.select(scores, 0.5, dataclasses.replace(config, selection_scale="global"))
    new = book.select(scores, 0.5, dataclasses.replace(config, selection_scale=mode))
    old_heads, old_neurons = _per_layer(book, old)
    new_heads, new_neurons = _per_layer(book, new)
    assert old_neurons[1] == 0 and old_heads[1] == 0  # the raw ranking removes layer 1 entirely
    # both layers keep a comparable share of their parameters (2 units of cost 64, 64 neurons of 3)
    shares = [(h * 64 + n * 3) / (2 * 64 + 64 * 3) for h, n in zip(new_heads, new_neurons, strict=True)]
    assert all(0.3 < share < 0.7 for share in shares), shares
    for keep in (old, new):
        assert keep.params <= 0.5 * book.initial_params


@pytest.mark.parametrize("mode", ["layer"])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 7.0, 1e4])
def test_rescaled_selection_ignores_a_layer_wide_factor(scale: float, mode: str) -> None:
    # The defining property: multiplying one layer's scores by any constant changes nothing. (Not
    # exactly for "site": the common median that units and neurons are brought to moves with it.)
    controller, book, reference = _book_and_scores(scale_of_layer_1=1.0)
    _, _, scaled = _book_and_scores(scale_of_layer_1=scale)
    config = dataclasses.replace(controller.config, selection_scale=mode)
    a = book.select(reference, 0.5, config)
    b = book.select(scaled, 0.5, config)
    assert torch.equal(a.heads, b.heads) and torch.equal(a.neurons, b.neurons)


def test_layer_scale_equals_the_greedy_knapsack_on_per_layer_means() -> None:
    # Independent reference: divide each layer's scores by its own salience per parameter by hand,
    # then run the plain selection.
    controller, book, (heads, neurons, hidden) = _book_and_scores(scale_of_layer_1=30.0, seed=4)
    head_costs, neuron_costs = book.costs()
    head_layers, neuron_layers = book.layer_ids()
    ref_heads, ref_neurons = heads.clone().double(), neurons.clone().double()
    for layer in (0, 1):
        total = heads[head_layers == layer].sum() + neurons[neuron_layers == layer].sum()
        cost = head_costs[head_layers == layer].sum() + neuron_costs[neuron_layers == layer].sum()
        ref_heads[head_layers == layer] /= total / cost
        ref_neurons[neuron_layers == layer] /= total / cost
    budget = 0.6 * book.initial_params
    expected = select_keep_set(
        ref_heads, ref_neurons, None, head_costs, neuron_costs, budget, prune_hidden=False, num_hidden=48
    )
    config = dataclasses.replace(controller.config, selection_scale="layer")
    got = book.select((heads, neurons, hidden), 0.6, config)
    assert torch.equal(got.heads.cpu(), expected.heads) and torch.equal(got.neurons.cpu(), expected.neurons)


def test_site_median_scores_against_a_hand_computation() -> None:
    scores = torch.tensor([1.0, 2.0, 4.0, 10.0, 30.0, 50.0, 0.0, 0.0])
    out = site_median_scores(scores, [3, 3, 2])
    overall = float(torch.tensor([0.0, 0.0, 1.0, 2.0, 4.0, 10.0, 30.0, 50.0]).quantile(0.5))  # 3.0
    expected = [
        1.0 * overall / 2,
        2.0 * overall / 2,
        4.0 * overall / 2,
        10 * overall / 30,
        overall,
        50 * overall / 30,
    ]
    torch.testing.assert_close(out[:6], torch.tensor(expected))
    assert out[6:].tolist() == [0.0, 0.0]  # a site with median 0 is left as it is


def test_balanced_scores_keep_the_overall_scale_and_leave_equal_layers_alone() -> None:
    costs = torch.ones(4)
    layers = torch.tensor([0, 0, 1, 1])
    same = torch.tensor([1.0, 3.0, 2.0, 2.0])
    _, out = layer_balanced_scores(torch.zeros(0), same, torch.zeros(0), costs, torch.zeros(0), layers)
    torch.testing.assert_close(out, same)  # both layers already have mean 2
    skewed = torch.tensor([1.0, 3.0, 20.0, 20.0])
    _, out = layer_balanced_scores(torch.zeros(0), skewed, torch.zeros(0), costs, torch.zeros(0), layers)
    torch.testing.assert_close(out.sum(), skewed.sum())  # overall salience per parameter unchanged
    assert out[0] < out[2] == out[3] < out[1]  # within-layer order kept; layers on one scale
    zero = torch.tensor([0.0, 0.0, 1.0, 3.0])
    _, out = layer_balanced_scores(torch.zeros(0), zero, torch.zeros(0), costs, torch.zeros(0), layers)
    assert out[:2].tolist() == [0.0, 0.0] and bool(torch.isfinite(out).all())  # unscored layer left as is
