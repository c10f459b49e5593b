"""Measured damage curves (`aptune.damage`, ``AptConfig.damage_curves``)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

import aptune
from aptune.config import AptConfig
from aptune.damage import curve_counts, damage_curve_scores, hidden_curve_counts, hull_slopes
from aptune.errors import ConfigError
from aptune.scores import Salience, summed_salience
from aptune.select import select_keep_set
from aptune.surgery import prune_neurons_
from test_llama import _causal_lm_dataset, tiny_llama


# ---------------------------------------------------------------------------------------------- hull
def _brute_hull_slope(points: list[tuple[int, float]], x: float) -> float:
    """Slope at ``x`` of the lower convex envelope, from its definition: the envelope at x is the
    smallest value of any chord between two points on either side of x."""

    def envelope(at: float) -> float:
        best = float("inf")
        for xa, ya in points:
            for xb, yb in points:
                if xa <= at <= xb and xb > xa:
                    best = min(best, ya + (yb - ya) * (at - xa) / (xb - xa))
        return best

    eps = 1e-3
    return (envelope(x + eps) - envelope(x - eps)) / (2 * eps)


def test_hull_slopes_of_convex_data_are_the_finite_differences() -> None:
    assert hull_slopes([1, 2, 4], [1.0, 3.0, 9.0]) == pytest.approx([1.0, 2.0, 3.0])


def test_hull_slopes_of_concave_data_are_one_chord() -> None:
    # a steep first step and a flat rest: the envelope is the chord from 0 to the end
    assert hull_slopes([1, 2, 3], [3.0, 3.5, 4.0]) == pytest.approx([4 / 3] * 3)


@pytest.mark.parametrize("seed", range(20))
def test_hull_slopes_match_the_envelope_by_definition(seed: int) -> None:
    rng = random.Random(seed)
    counts = sorted(rng.sample(range(1, 30), 5))
    damages = sorted(rng.uniform(0, 5) for _ in counts)
    slopes = hull_slopes(counts, damages)
    points = [(0, 0.0), *zip(counts, damages, strict=True)]
    for (x0, _), (x1, _), slope in zip(points, points[1:], slopes, strict=False):
        assert slope == pytest.approx(_brute_hull_slope(points, (x0 + x1) / 2), abs=1e-6)
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(slopes))


def test_hull_slopes_need_increasing_counts() -> None:
    with pytest.raises(ValueError, match="counts must increase"):
        hull_slopes([2, 2], [1.0, 2.0])
    # positions need not be integers (the salience mass removed): a concave curve gives one chord
    assert hull_slopes([0.5, 1.5], [1.0, 2.0]) == pytest.approx([4 / 3, 4 / 3])


def test_curve_counts() -> None:
    assert curve_counts(1536, 4) == [384, 768, 1152, 1536]
    assert curve_counts(3, 4) == [1, 2, 3]  # small sites are measured at every count
    assert curve_counts(10, 1) == [10]


# ---------------------------------------------------------------------------------------------- scores
def _synthetic(salience_a: torch.Tensor, salience_b: torch.Tensor, cost_a, cost_b):
    """Two FFN sites whose damage grows with the number of blocks removed as ``cost(k)``."""
    calls = []

    def loss_of(keep):
        calls.append(keep)
        if keep is None:
            return 1.0
        a, b = keep.neurons[: len(salience_a)], keep.neurons[len(salience_a) :]
        return 1.0 + cost_a(int((~a).sum())) + cost_b(int((~b).sum()))

    salience = Salience([], [salience_a, salience_b], None)
    return salience, loss_of, calls


def test_curve_scores_favour_the_site_whose_damage_grows_faster() -> None:
    # site A has lower salience everywhere, so the salience ranking would empty it first; but its
    # damage grows quadratically while B's grows linearly: the curves must protect A (equal
    # salience inside each site, so the loss per block is the loss per unit of salience times it)
    salience_a = torch.full((8,), 0.1)
    salience_b = torch.full((8,), 1.0)
    salience, loss_of, calls = _synthetic(salience_a, salience_b, lambda k: 0.1 * k * k, lambda k: 0.5 * k)
    scores, curves = damage_curve_scores(salience, [], [8, 8], 4, loss_of, points=4)
    assert len(calls) == 1 + 4 + 4  # the intact model, then 4 points per site
    assert curves["neurons"][0] == pytest.approx([0.4, 1.6, 3.6, 6.4])
    assert curves["neurons"][1] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    ones, empty = torch.ones(16), torch.zeros(0)
    options = {"prune_hidden": False, "num_hidden": 4}
    # budget: 4 hidden dims x 8 neurons of cost 1 each
    keep_salience = select_keep_set(empty, torch.cat(salience.neurons), None, empty, ones, 32, **options)
    keep_curves = select_keep_set(empty, torch.cat(scores.neurons), None, empty, ones, 32, **options)
    assert int(keep_salience.neurons[:8].sum()) == 0  # salience: A goes entirely
    # curves: marginal damage per block of A (0.2, 0.6, 1.0, 1.4 per pair of blocks removed) against
    # B's flat 0.5: the best 8 removals take 2 from A and 6 from B
    assert int(keep_curves.neurons[:8].sum()) == 6 and int(keep_curves.neurons[8:].sum()) == 2


def test_curve_scores_keep_the_salience_order_within_a_site() -> None:
    salience_a = torch.tensor([0.5, 0.1, 0.4, 0.2, 0.3, 0.6])
    salience, loss_of, _ = _synthetic(salience_a, torch.ones(2), lambda k: 1.0 * k, lambda k: 0.0)
    scores, _ = damage_curve_scores(salience, [], [6, 2], 4, loss_of, points=2)
    assert torch.equal(torch.argsort(scores.neurons[0]), torch.argsort(salience_a))
    assert scores.hidden is None


def test_a_kept_unit_is_never_removed_by_its_sites_curve() -> None:
    # an attention site of 3 units whose least salient one is kept (a copying head): removing it
    # would cost 10, the others 0.2 each. Its curve must measure the other two only, and score
    # them as a site made of those two alone would be scored.
    heads = torch.tensor([0.1, 0.5, 0.6])
    removed_seen = []

    def loss_of(keep, kept_first: bool = True):
        if keep is None:
            return 1.0
        gone = (~keep.heads[:3]).tolist() if kept_first else [False, *(~keep.heads[:2]).tolist()]
        removed_seen.append(gone)
        return 1.0 + 10.0 * gone[0] + 0.2 * (gone[1] + gone[2])

    salience = Salience([heads], [], None)
    scores, curves = damage_curve_scores(
        salience, [3], [], 4, loss_of, points=4, kept_units=[torch.tensor([True, False, False])]
    )
    assert not any(gone[0] for gone in removed_seen)
    assert curves["heads"][0] == pytest.approx([0.2, 0.4])
    reference, _ = damage_curve_scores(
        Salience([heads[1:]], [], None), [2], [], 4, lambda keep: loss_of(keep, kept_first=False), points=4
    )
    assert torch.allclose(scores.heads[0][1:], reference.heads[0])
    assert float(scores.heads[0][0]) == pytest.approx(float(reference.heads[0].max()))
    # without the kept units the curve prices the copying head into the others' scores
    unaware, _ = damage_curve_scores(salience, [3], [], 4, loss_of, points=4)
    assert bool((unaware.heads[0][1:] > 2 * reference.heads[0]).all())


def test_hidden_curve_counts_halve_from_the_reach() -> None:
    assert hidden_curve_counts(576, 0.3, 4) == [22, 43, 86, 173]
    assert hidden_curve_counts(8, 0.5, 4) == [1, 2, 4]  # no repeats, at least one
    assert hidden_curve_counts(8, 0.0, 4) == [] and hidden_curve_counts(8, 0.5, 0) == []


def _hidden_synthetic(hidden_salience: torch.Tensor, hidden_cost, neuron_cost):
    """One FFN site of 8 neurons and a hidden site; damage grows with the count removed of each."""

    def loss_of(keep):
        if keep is None:
            return 2.0
        return 2.0 + neuron_cost(int((~keep.neurons).sum())) + hidden_cost(int((~keep.hidden).sum()))

    return Salience([], [torch.ones(8)], hidden_salience), loss_of


def test_the_hidden_curve_puts_hidden_dims_on_the_loss_scale() -> None:
    # hidden damage 0.05 k^2 for the k lowest removed: removing 1, 2, 4 costs 0.05, 0.2, 0.8
    hidden_salience = torch.tensor([3.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    salience, loss_of = _hidden_synthetic(hidden_salience, lambda k: 0.05 * k * k, lambda k: 0.5 * k)
    scores, curves = damage_curve_scores(salience, [], [8], 8, loss_of, points=2, hidden_counts=[1, 2, 4])
    assert curves["hidden_counts"] == [1, 2, 4]
    assert curves["hidden"] == pytest.approx([0.05, 0.2, 0.8])
    # independent reading: by salience mass the lowest 1, 2, 4 dims carry 1, 3, 10; the curve
    # (0,0) (1,0.05) (3,0.2) (10,0.8) is convex, so each stretch's slope is its finite difference
    slopes = [0.05 / 1, (0.2 - 0.05) / 2, (0.8 - 0.2) / 7]
    expected = torch.empty(8)
    order = torch.argsort(hidden_salience)
    stretch = [0, 1, 2, 2, 2, 2, 2, 2]  # the dims beyond the last count keep the last slope
    for position, dim in enumerate(order.tolist()):
        expected[dim] = slopes[stretch[position]] * hidden_salience[dim]
    assert scores.hidden == pytest.approx(expected, rel=1e-4)
    assert torch.equal(torch.argsort(scores.hidden), torch.argsort(hidden_salience))
    assert scores.neurons[0] is not salience.neurons[0]  # the neurons were scored as before


def test_without_hidden_counts_the_hidden_scores_stay_and_nothing_is_measured() -> None:
    hidden_salience = torch.arange(1.0, 9.0)
    salience, loss_of = _hidden_synthetic(hidden_salience, lambda k: 100.0 * k, lambda k: 0.5 * k)
    scores, curves = damage_curve_scores(salience, [], [8], 8, loss_of, points=2)
    assert scores.hidden is hidden_salience and "hidden" not in curves


def test_cheap_hidden_dims_leave_and_dear_ones_stay_by_the_curves() -> None:
    # the same salience; only the measured damage of removing hidden dims differs
    hidden_salience = torch.arange(1.0, 9.0)
    ones = torch.ones(8)
    options = {"prune_hidden": True, "num_hidden": 8}

    def kept_hidden(hidden_cost) -> int:
        salience, loss_of = _hidden_synthetic(hidden_salience, hidden_cost, lambda k: 0.5 * k)
        scores, _ = damage_curve_scores(salience, [], [8], 8, loss_of, points=2, hidden_counts=[1, 2, 4])
        # neurons cost 8 parameters each (one per hidden dim); a hidden dim 8 (one per neuron)
        keep = select_keep_set(
            torch.zeros(0), scores.neurons[0], scores.hidden, torch.zeros(0), ones, 48, **options
        )
        return int(keep.hidden.sum())

    assert kept_hidden(lambda k: 0.001 * k) < 8
    assert kept_hidden(lambda k: 50.0 * k) == 8


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"damage_curves": -1}, "damage_curves=-1 is invalid: must be >= 0"),
        ({"damage_batches": 0}, "damage_batches=0 is invalid: must be >= 1"),
        ({"damage_curves": 4, "selection_scale": "site"}, "cannot be combined with selection_scale='site'"),
    ],
)
def test_bad_damage_fields_are_one_clear_error(fields: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        AptConfig(**fields)


def test_cli_has_the_damage_options() -> None:
    from aptune.cli.options import dataclass_options

    assert {"damage_curves", "damage_batches", "hidden_damage_curve"} <= {
        opt.name for opt in dataclass_options(AptConfig)
    }


# ---------------------------------------------------------------------------------------------- controller
def _batches():
    data = _causal_lm_dataset(8)
    return [{k: torch.tensor(data[i : i + 2][k]) for k in data.column_names} for i in range(0, 8, 2)]


def test_pretune_with_damage_curves_measures_what_a_physically_pruned_model_loses() -> None:
    batches = _batches()
    config = AptConfig(target_density=0.4, damage_curves=2, damage_batches=2, distill=False)
    assert config.damage_batches < len(batches)  # the curves use only the first batches
    controller = aptune.prepare_(tiny_llama(), config, total_steps=40)
    hidden_before = controller.blocks.hidden_size
    record = controller.calibrate_and_prune_(batches)
    assert controller.blocks.hidden_size == hidden_before  # hidden dims wait for the tuning
    assert controller.density() <= 0.7 + 1e-9
    (curves,) = record["damage_curves"]
    assert [len(c) for c in curves["heads"]] == [2, 2]  # 2 KV groups per layer: every count
    assert [len(c) for c in curves["neurons"]] == [2, 2]  # 32 and 64 of 64 neurons

    # reference: a fresh model, its first FFN site's 32 lowest-salience neurons removed physically
    reference = aptune.prepare_(tiny_llama(), config, total_steps=40)
    salience, _ = summed_salience(
        reference.model, batches, reference.state.collector, reference._reduced_salience
    )
    order = torch.argsort(salience.neurons[0].cpu(), stable=True)

    @torch.no_grad()
    def loss(model) -> float:
        model.eval()
        return sum(float(model(**b).loss) for b in batches[:2]) / 2

    intact = loss(reference.model)
    prune_neurons_(reference.model, reference.layout, 0, torch.sort(order[32:]).values)
    assert loss(reference.model) - intact == pytest.approx(curves["neurons"][0][0], rel=1e-4, abs=1e-6)
    prune_neurons_(reference.model, reference.layout, 0, torch.zeros(0, dtype=torch.long))  # the whole FFN
    assert loss(reference.model) - intact == pytest.approx(curves["neurons"][0][1], rel=1e-4, abs=1e-6)
    assert curves["neurons"][0][1] != 0


def test_damage_curves_default_per_family() -> None:
    assert AptConfig().damage_curve_points(True) == 4
    assert AptConfig().damage_curve_points(False) == 0
    assert AptConfig(damage_curves=0).damage_curve_points(True) == 0
    assert AptConfig(damage_curves=8).damage_curve_points(False) == 8
    assert AptConfig(selection_scale="site").damage_curve_points(True) == 0  # the user's own scale


def test_a_damage_proportional_to_the_salience_removed_gives_back_the_salience() -> None:
    # when the measured loss is exactly 2 x the salience removed, each block's score is 2 x its salience
    salience_a = torch.tensor([0.5, 0.1, 0.4, 0.2, 0.3, 0.6])

    def loss_of(keep):
        if keep is None:
            return 0.0
        return 2.0 * float(salience_a[~keep.neurons[:6]].sum())

    salience = Salience([], [salience_a, torch.ones(2)], None)
    scores, _ = damage_curve_scores(salience, [], [6, 2], 4, loss_of, points=3)
    assert torch.allclose(scores.neurons[0], 2.0 * salience_a, rtol=1e-4)
