"""Tests of `aptune.select`: the parameter count and the budgeted, density-sorted keep-set."""

from __future__ import annotations

import pytest
import torch

from aptune.errors import ConfigError
from aptune.select import KeepSet, parameter_count, select_keep_set


def _random_case(seed: int, heads: int = 6, neurons: int = 10, hidden: int = 5) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "head_scores": torch.rand(heads, generator=gen, dtype=torch.float64) * 10,
        "neuron_scores": torch.rand(neurons, generator=gen, dtype=torch.float64),
        "hidden_scores": torch.rand(hidden, generator=gen, dtype=torch.float64) * 5,
        # Mixed widths: MHA heads of d_h=4 (16), GQA groups (2*2+2)*4 = 24; plain and gated neurons.
        "head_costs": torch.tensor([16.0, 24.0] * (heads // 2) + [16.0] * (heads % 2), dtype=torch.float64),
        "neuron_costs": torch.tensor(
            [2.0, 3.0] * (neurons // 2) + [2.0] * (neurons % 2), dtype=torch.float64
        ),
    }


def _brute_force(case: dict, budget: float, min_hidden: int = 1) -> tuple[set, set, set]:
    """Expected keep-set from a plain Python loop over every prefix of the density order."""
    hs, ns, ds = (case[k].tolist() for k in ("head_scores", "neuron_scores", "hidden_scores"))
    hc, nc = case["head_costs"].tolist(), case["neuron_costs"].tolist()
    num_d = len(ds)
    all_width = sum(hc) + sum(nc)
    blocks = []  # (sort key, kind, index, width)
    for i, (score, cost) in enumerate(zip(hs, hc, strict=True)):
        blocks.append(((-score / (num_d * cost), 0, i), "h", i, cost))
    for i, (score, cost) in enumerate(zip(ns, nc, strict=True)):
        blocks.append(((-score / (num_d * cost), 1, i), "n", i, cost))
    hidden_order = sorted(range(num_d), key=lambda i: (-ds[i], i))
    mandatory = set(hidden_order[:min_hidden])
    for i, score in enumerate(ds):
        key = (float("-inf"), 2, i) if i in mandatory else (-score / all_width, 2, i)
        blocks.append((key, "d", i, 0.0))
    blocks.sort(key=lambda block: block[0])

    best = len(mandatory)
    for length in range(len(blocks) + 1):
        prefix = blocks[:length]
        dims = sum(1 for b in prefix if b[1] == "d")
        cost = dims * sum(b[3] for b in prefix)
        if cost <= budget and length > best:
            best = length
    chosen = blocks[:best]
    return (
        {b[2] for b in chosen if b[1] == "h"},
        {b[2] for b in chosen if b[1] == "n"},
        {b[2] for b in chosen if b[1] == "d"},
    )


def _as_sets(keep: KeepSet) -> tuple[set, set, set]:
    return tuple(
        set(torch.nonzero(mask).flatten().tolist()) for mask in (keep.heads, keep.neurons, keep.hidden)
    )


def _full_count(case: dict) -> float:
    return parameter_count(case["head_costs"], case["neuron_costs"], case["hidden_scores"].numel())


# ---------------------------------------------------------------------------------------------- count
def test_parameter_count_hand_computed() -> None:
    # Layer 1: 2 MHA heads, d_h = 8 -> a = 32 each; 4 plain neurons -> c = 2 each.
    # Layer 2: 1 GQA group with 3 query heads, d_h = 8 -> a = (2*3+2)*8 = 64; 2 gated neurons -> 3 each.
    heads = torch.tensor([32.0, 32.0, 64.0])
    neurons = torch.tensor([2.0, 2.0, 2.0, 2.0, 3.0, 3.0])
    # D = 16: 16 * (128 + 14) = 2272
    assert parameter_count(heads, neurons, 16) == 2272.0
    assert parameter_count(heads[:0], neurons[:0], 16) == 0.0
    assert parameter_count(heads, neurons, 0) == 0.0


def test_parameter_count_matches_bert_layer() -> None:
    # One BERT-base layer without biases/norms: 4 * 768^2 attention + 2 * 768 * 3072 FFN.
    count = parameter_count(torch.full((12,), 4.0 * 64), torch.full((3072,), 2.0), 768)
    assert count == 4 * 768 * 768 + 2 * 768 * 3072


def test_parameter_count_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        parameter_count(torch.ones(2, 2), torch.ones(3), 4)
    with pytest.raises(ValueError):
        parameter_count(torch.ones(2), torch.ones(3), -1)


# ---------------------------------------------------------------------------------------------- selection
def test_hand_computed_selection() -> None:
    # D = 2; head densities 5/8, 1/8; neuron densities 3/4, 0.1/4, 2/4; hidden 1/14 each (one mandatory).
    # Order: d0 (mandatory), n0, h0, n2, h1, d1, n1 with prefix costs 0, 2, 6, 8, 12, 24, 28.
    args = (
        torch.tensor([5.0, 1.0]),
        torch.tensor([3.0, 0.1, 2.0]),
        torch.tensor([1.0, 1.0]),
        torch.tensor([4.0, 4.0]),
        torch.tensor([2.0, 2.0, 2.0]),
    )
    keep = select_keep_set(*args, budget=12.0)
    assert keep.heads.tolist() == [True, True]
    assert keep.neurons.tolist() == [True, False, True]
    assert keep.hidden.tolist() == [True, False]
    assert keep.params == 12.0
    keep = select_keep_set(*args, budget=11.9)
    assert keep.heads.tolist() == [True, False]
    assert keep.params == 8.0
    keep = select_keep_set(*args, budget=1000.0)
    assert keep.heads.all() and keep.neurons.all() and keep.hidden.all()
    assert keep.params == 28.0


@pytest.mark.parametrize("seed", range(20))
def test_matches_brute_force(seed: int) -> None:
    case = _random_case(seed)
    full = _full_count(case)
    for fraction in (0.0, 0.05, 0.2, 0.4, 0.7, 1.0):
        budget = fraction * full
        keep = select_keep_set(**case, budget=budget)
        assert _as_sets(keep) == _brute_force(case, budget)


@pytest.mark.parametrize("seed", range(10))
def test_respects_budget_and_reports_params(seed: int) -> None:
    case = _random_case(seed, heads=12, neurons=40, hidden=16)
    full = _full_count(case)
    for fraction in (0.1, 0.3, 0.5, 0.9):
        keep = select_keep_set(**case, budget=fraction * full)
        expected = parameter_count(
            case["head_costs"][keep.heads], case["neuron_costs"][keep.neurons], int(keep.hidden.sum())
        )
        assert keep.params == expected
        assert keep.params <= fraction * full
        assert keep.heads.dtype == keep.neurons.dtype == keep.hidden.dtype == torch.bool


def test_larger_budget_gives_superset() -> None:
    case = _random_case(3, heads=12, neurons=40, hidden=16)
    full = _full_count(case)
    previous = None
    for step in range(21):
        keep = select_keep_set(**case, budget=full * step / 20)
        if previous is not None:
            for old, new in zip(_as_sets(previous), _as_sets(keep), strict=True):
                assert old <= new
            assert keep.params >= previous.params
        previous = keep
    assert previous is not None and previous.params == full


def test_mandatory_minimums_per_group() -> None:
    case = _random_case(5, heads=6, neurons=12, hidden=8)
    head_groups = torch.tensor([0, 0, 1, 1, 2, 2])
    neuron_groups = torch.arange(12) // 4
    keep = select_keep_set(
        **case,
        budget=0.0,
        head_groups=head_groups,
        neuron_groups=neuron_groups,
        min_heads_per_group=1,
        min_neurons_per_group=2,
        min_hidden=3,
    )
    # The budget is 0, so exactly the mandatory blocks survive.
    for group in range(3):
        members = torch.nonzero(head_groups == group).flatten()
        kept = members[keep.heads[members]]
        assert kept.numel() == 1
        assert case["head_scores"][kept].item() == case["head_scores"][members].max().item()
        members = torch.nonzero(neuron_groups == group).flatten()
        kept = members[keep.neurons[members]]
        assert kept.numel() == 2
        assert set(kept.tolist()) == set(
            members[case["neuron_scores"][members].argsort(descending=True)[:2]].tolist()
        )
    assert int(keep.hidden.sum()) == 3
    top_hidden = set(case["hidden_scores"].argsort(descending=True)[:3].tolist())
    assert set(torch.nonzero(keep.hidden).flatten().tolist()) == top_hidden
    assert keep.params > 0.0  # over budget: the mandatory set is kept anyway


def test_mandatory_blocks_kept_under_any_budget() -> None:
    case = _random_case(7, heads=6, neurons=12, hidden=8)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    full = _full_count(case)
    for fraction in (0.0, 0.1, 0.5):
        keep = select_keep_set(**case, budget=fraction * full, head_groups=groups, min_heads_per_group=2)
        assert int(keep.heads[:3].sum()) >= 2 and int(keep.heads[3:].sum()) >= 2


def test_group_smaller_than_minimum_keeps_all_its_members() -> None:
    case = _random_case(8, heads=4, neurons=6, hidden=4)
    keep = select_keep_set(
        **case, budget=0.0, head_groups=torch.tensor([0, 1, 1, 1]), min_heads_per_group=2, min_hidden=1
    )
    assert keep.heads.tolist()[0] is True
    assert int(keep.heads[1:].sum()) == 2


def test_prune_hidden_false_keeps_every_hidden_dim() -> None:
    case = _random_case(9, heads=6, neurons=12, hidden=8)
    full = _full_count(case)
    keep = select_keep_set(**case, budget=0.3 * full, prune_hidden=False)
    assert keep.hidden.all()
    assert keep.params <= 0.3 * full
    without = dict(case, hidden_scores=None)
    other = select_keep_set(**without, budget=0.3 * full, prune_hidden=False, num_hidden=8)
    assert torch.equal(other.heads, keep.heads) and torch.equal(other.neurons, keep.neurons)
    assert other.hidden.all() and other.params == keep.params


def test_ties_break_deterministically() -> None:
    ones = torch.ones(4)
    keep = select_keep_set(ones, ones, ones, ones, ones, budget=4 * 3.0, min_hidden=4)
    # All densities tie; heads come before neurons, lower index first: 4 * (1 + 1 + 1) = 12.
    assert keep.heads.tolist() == [True, True, True, False]
    assert keep.neurons.tolist() == [False] * 4
    again = select_keep_set(ones, ones, ones, ones, ones, budget=12.0, min_hidden=4)
    assert torch.equal(again.heads, keep.heads)


def test_zero_scores_are_pruned_first() -> None:
    keep = select_keep_set(
        torch.tensor([0.0, 1.0]),
        torch.tensor([1.0, 0.0]),
        torch.tensor([1.0, 1.0]),
        torch.tensor([2.0, 2.0]),
        torch.tensor([2.0, 2.0]),
        budget=2 * 4.0,
    )
    assert keep.heads.tolist() == [False, True]
    assert keep.neurons.tolist() == [True, False]


def test_empty_block_types_are_fine() -> None:
    empty = torch.zeros(0)
    keep = select_keep_set(empty, torch.ones(3), torch.ones(2), empty, torch.full((3,), 2.0), budget=8.0)
    assert keep.heads.numel() == 0
    assert keep.params <= 8.0


def test_inputs_on_other_dtypes_and_returned_on_input_device() -> None:
    case = {k: v.float() for k, v in _random_case(11).items()}
    keep = select_keep_set(**case, budget=0.5 * _full_count(case))
    assert keep.heads.device == case["head_scores"].device


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"budget": -1.0}, ConfigError),
        ({"budget": float("nan")}, ConfigError),
        ({"min_hidden": -1}, ConfigError),
        ({"head_scores": torch.tensor([1.0, -1.0, 0, 0, 0, 0])}, ValueError),
        ({"neuron_scores": torch.full((10,), float("nan"))}, ValueError),
        ({"head_costs": torch.zeros(6)}, ValueError),
        ({"neuron_costs": torch.ones(3)}, ValueError),
        ({"hidden_scores": None}, ValueError),
        ({"hidden_scores": None, "prune_hidden": False}, ValueError),
        ({"hidden_scores": None, "prune_hidden": False, "num_hidden": 0}, ValueError),
        ({"num_hidden": 4}, ValueError),
        ({"head_groups": torch.zeros(2, dtype=torch.long), "min_heads_per_group": 1}, ValueError),
    ],
)
def test_bad_input_raises(change: dict, error: type[Exception]) -> None:
    args = {**_random_case(0), "budget": 100.0, **change}
    with pytest.raises(error):
        select_keep_set(**args)


# ---------------------------------------------------------------------------------------------- uniform
def _uniform_case(seed: int, layers: int = 3, units: int = 3, neurons: int = 4, hidden: int = 5) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "head_scores": torch.rand(layers * units, generator=gen, dtype=torch.float64) * 10,
        "neuron_scores": torch.rand(layers * neurons, generator=gen, dtype=torch.float64),
        "hidden_scores": torch.rand(hidden, generator=gen, dtype=torch.float64) * 5,
        "head_costs": torch.full((layers * units,), 24.0, dtype=torch.float64),  # GQA groups, g=2, d_h=4
        "neuron_costs": torch.full((layers * neurons,), 3.0, dtype=torch.float64),  # gated FFN
        "head_groups": torch.arange(layers * units) // units,
        "neuron_groups": torch.arange(layers * neurons) // neurons,
    }


def _uniform_brute_force(case: dict, budget: float, min_hidden: int = 1) -> tuple[set, set, set]:
    """Plain-Python reference of the documented rule.

    Candidates are every (heads per layer k, neurons per layer m, hidden dims d) with each layer's top-k
    units, top-m neurons and the top-d hidden dims; the order of the greedy over slices is reproduced
    by ranking slices (sum of the j-th best scores over the layers, divided by their width) and the
    keep-set is the longest prefix of that ranking that fits, like `_brute_force`.
    """

    def per_layer_ranking(scores, groups):
        layers = {}
        for index, (score, group) in enumerate(zip(scores.tolist(), groups.tolist(), strict=True)):
            layers.setdefault(group, []).append((-score, index))
        return [[index for _, index in sorted(members)] for _, members in sorted(layers.items())]

    head_rank = per_layer_ranking(case["head_scores"], case["head_groups"])
    neuron_rank = per_layer_ranking(case["neuron_scores"], case["neuron_groups"])
    slice_case = {
        "head_scores": torch.tensor(
            [sum(case["head_scores"][r[j]].item() for r in head_rank) for j in range(len(head_rank[0]))]
        ),
        "neuron_scores": torch.tensor(
            [sum(case["neuron_scores"][r[j]].item() for r in neuron_rank) for j in range(len(neuron_rank[0]))]
        ),
        "hidden_scores": case["hidden_scores"],
        "head_costs": torch.tensor(
            [sum(case["head_costs"][r[j]].item() for r in head_rank) for j in range(len(head_rank[0]))]
        ),
        "neuron_costs": torch.tensor(
            [sum(case["neuron_costs"][r[j]].item() for r in neuron_rank) for j in range(len(neuron_rank[0]))]
        ),
    }
    head_slices, neuron_slices, hidden = _brute_force(slice_case, budget, min_hidden)
    heads = {r[j] for j in head_slices for r in head_rank}
    neurons = {r[j] for j in neuron_slices for r in neuron_rank}
    return heads, neurons, hidden


@pytest.mark.parametrize("seed", range(15))
def test_uniform_matches_brute_force(seed: int) -> None:
    case = _uniform_case(seed)
    full = _full_count(case)
    for fraction in (0.0, 0.05, 0.2, 0.4, 0.7, 1.0):
        keep = select_keep_set(**case, budget=fraction * full, layout="uniform")
        assert _as_sets(keep) == _uniform_brute_force(case, fraction * full)


@pytest.mark.parametrize("seed", range(10))
def test_uniform_keeps_the_same_top_k_in_every_layer(seed: int) -> None:
    case = _uniform_case(seed, layers=4, units=4, neurons=8, hidden=12)
    full = _full_count(case)
    for fraction in (0.1, 0.3, 0.5, 0.8):
        keep = select_keep_set(**case, budget=fraction * full, layout="uniform")
        assert keep.params <= fraction * full
        assert keep.params == parameter_count(
            case["head_costs"][keep.heads], case["neuron_costs"][keep.neurons], int(keep.hidden.sum())
        )
        for mask, scores, size in (
            (keep.heads, case["head_scores"], 4),
            (keep.neurons, case["neuron_scores"], 8),
        ):
            per_layer = mask.view(4, size)  # (layers, blocks per layer)
            counts = per_layer.sum(1)
            assert bool((counts == counts[0]).all()), counts
            k = int(counts[0])
            for layer in range(4):
                best = set(scores.view(4, size)[layer].argsort(descending=True)[:k].tolist())
                assert set(torch.nonzero(per_layer[layer]).flatten().tolist()) == best


def test_uniform_equals_free_with_one_layer() -> None:
    case = _uniform_case(3, layers=1, units=6, neurons=10, hidden=6)
    full = _full_count(case)
    for fraction in (0.1, 0.4, 0.9):
        free = select_keep_set(**case, budget=fraction * full)
        uniform = select_keep_set(**case, budget=fraction * full, layout="uniform")
        assert _as_sets(free) == _as_sets(uniform)


def test_uniform_minimums_and_bad_layout() -> None:
    case = _uniform_case(4)
    keep = select_keep_set(
        **case, budget=0.0, layout="uniform", min_heads_per_group=2, min_neurons_per_group=1
    )
    assert keep.heads.view(3, 3).sum(1).tolist() == [2, 2, 2]
    assert keep.neurons.view(3, 4).sum(1).tolist() == [1, 1, 1]
    with pytest.raises(ConfigError, match="layout"):
        select_keep_set(**case, budget=1.0, layout="ragged")
    with pytest.raises(ValueError):
        select_keep_set(**dict(case, head_costs=torch.zeros(9)), budget=1.0, layout="uniform")


def test_config_layout_field() -> None:
    from aptune import AptConfig

    assert AptConfig().layout == "free"
    assert AptConfig.from_json(AptConfig(layout="uniform").to_json()).layout == "uniform"
    with pytest.raises(ConfigError, match="layout"):
        AptConfig(layout="ragged")


# ------------------------------------------------------------------ hidden-dimension cost
def test_hidden_unit_cost_charges_hidden_dims_a_fixed_price():
    # 2 hidden dims; units of width 4, neurons of width 2. Current width total: 8 + 6 = 14.
    heads, neurons = torch.tensor([8.0, 8.0]), torch.tensor([3.0, 3.0, 3.0])
    hidden = torch.tensor([100.0, 20.0])
    h_cost, n_cost = torch.tensor([4.0, 4.0]), torch.tensor([2.0, 2.0, 2.0])
    kwargs = dict(min_hidden=1)
    current = select_keep_set(heads, neurons, hidden, h_cost, n_cost, 20.0, **kwargs)
    # densities: units 8 / (2 * 4) = 1, neurons 3 / 4 = 0.75, hidden 20 / 14 = 1.43 > 1: kept first
    assert current.hidden.tolist() == [True, True]
    # charged as in a twice larger initial model (28 per dim): 20 / 28 = 0.71 < 0.75, ranked last
    initial = select_keep_set(heads, neurons, hidden, h_cost, n_cost, 20.0, hidden_unit_cost=28.0, **kwargs)
    assert initial.hidden.tolist() == [True, False]
    assert initial.params <= 20.0 and current.params <= 20.0
    with pytest.raises(ValueError, match="hidden_unit_cost"):
        select_keep_set(heads, neurons, hidden, h_cost, n_cost, 20.0, hidden_unit_cost=0.0)


def test_initial_hidden_cost_on_a_pruned_tiny_model_keeps_fewer_hidden_dims():
    import aptune
    from tiny import tiny_bert

    kept = {}
    for mode in ("current", "initial"):
        model = tiny_bert()
        config = aptune.AptConfig(distill=False, hidden_cost=mode)
        controller = aptune.prepare_(model, config)
        book = controller.blocks
        initial_width = sum(float(c.sum()) for c in book.costs())
        assert book.initial_hidden_cost == pytest.approx(initial_width)
        # the model after a first event: half of every site's units and neurons removed
        for i, ids in enumerate(book.units):
            book.keep_("heads", i, torch.arange(ids.numel() // 2))
        for i, ids in enumerate(book.neurons):
            book.keep_("neurons", i, torch.arange(ids.numel() // 2))
        assert sum(float(c.sum()) for c in book.costs()) == pytest.approx(initial_width / 2)
        g = torch.Generator().manual_seed(0)
        head_count, neuron_count = sum(book.unit_counts()), sum(book.neuron_counts())
        scores = (
            torch.rand(head_count, generator=g) * 1000,
            torch.rand(neuron_count, generator=g) * 10,
            torch.rand(book.hidden_size, generator=g) * 400,
        )
        keep = book.select(scores, 0.3, config)
        assert keep.params <= 0.3 * book.initial_params + 1e-6
        kept[mode] = int(keep.hidden.sum())
        state = book.state_dict()
        assert state["initial_hidden_cost"] == pytest.approx(initial_width)
    assert kept["initial"] < kept["current"]


def test_required_heads_are_kept_first_and_paid_from_the_budget() -> None:
    # four units of width 4 (cost 4 x 2 hidden dims each), no neurons; budget for two units
    scores = torch.tensor([4.0, 3.0, 2.0, 1.0])
    costs = torch.full((4,), 4.0)
    args = (scores, torch.zeros(0), None, costs, torch.zeros(0), 16.0)
    plain = select_keep_set(*args, prune_hidden=False, num_hidden=2)
    assert plain.heads.tolist() == [True, True, False, False]
    required = torch.tensor([False, False, False, True])
    keep = select_keep_set(*args, prune_hidden=False, num_hidden=2, required_heads=required)
    assert keep.heads.tolist() == [True, False, False, True]  # the best other unit fills the rest
    assert keep.params <= 16.0
    with pytest.raises(ValueError, match="required_heads has 3 entries"):
        select_keep_set(*args, prune_hidden=False, num_hidden=2, required_heads=required[:3])


def test_the_uniform_layout_keeps_required_heads_and_stays_uniform() -> None:
    # two layers of three units of width 4 (cost 4 x 2 hidden dims each); budget for one per layer
    scores = torch.tensor([3.0, 2.0, 1.0, 3.0, 2.0, 1.0])
    costs = torch.full((6,), 4.0)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    args = (scores, torch.zeros(0), None, costs, torch.zeros(0), 16.0)
    options = {"prune_hidden": False, "num_hidden": 2, "layout": "uniform", "head_groups": groups}
    plain = select_keep_set(*args, **options)
    assert plain.heads.tolist() == [True, False, False, True, False, False]
    # the least salient unit of layer 0 required: it leads its layer, each layer still keeps one
    required = torch.tensor([False, False, True, False, False, False])
    keep = select_keep_set(*args, **options, required_heads=required)
    assert keep.heads.tolist() == [False, False, True, True, False, False]
    assert keep.params <= 16.0
    # two required in layer 0: every layer keeps two, its required ones and then its best
    required = torch.tensor([False, True, True, False, False, False])
    keep = select_keep_set(*args, **options, required_heads=required)
    assert keep.heads.tolist() == [False, True, True, True, True, False]
    with pytest.raises(ValueError, match="required_heads has 3 entries"):
        select_keep_set(*args, **options, required_heads=required[:3])


# ---------------------------------------------------------------------------------------------- runs
def _run_reference(case: dict, groups: list[int], multiple: int, budget: float) -> tuple[set, set, set]:
    """Plain-Python reference of ``neuron_multiple``: each group's neurons, best first (ties to the lower
    index), cut into runs; every run is one block of `_brute_force`; its kept runs are unrolled."""
    scores, costs = case["neuron_scores"].tolist(), case["neuron_costs"].tolist()
    runs = []
    for group in sorted(set(groups)):
        members = sorted((i for i, g in enumerate(groups) if g == group), key=lambda i: (-scores[i], i))
        runs += [members[start : start + multiple] for start in range(0, len(members), multiple)]
    run_case = {
        **case,
        "neuron_scores": torch.tensor([sum(scores[i] for i in run) for run in runs], dtype=torch.float64),
        "neuron_costs": torch.tensor([sum(costs[i] for i in run) for run in runs], dtype=torch.float64),
    }
    heads, kept_runs, hidden = _brute_force(run_case, budget)
    return heads, {i for r in kept_runs for i in runs[r]}, hidden


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("multiple", [2, 3, 4])
def test_neuron_runs_match_the_reference(seed: int, multiple: int) -> None:
    case = _random_case(seed, neurons=14)
    groups = [0] * 6 + [1] * 5 + [2] * 3  # group sizes that are and are not multiples
    full = _full_count(case)
    for fraction in (0.0, 0.1, 0.3, 0.5, 0.8, 1.0):
        keep = select_keep_set(
            **case, budget=fraction * full, neuron_groups=torch.tensor(groups), neuron_multiple=multiple
        )
        assert _as_sets(keep) == _run_reference(case, groups, multiple, fraction * full)
        assert keep.params <= fraction * full  # no floors are set, so the budget always holds
        assert keep.params == parameter_count(
            case["head_costs"][keep.heads], case["neuron_costs"][keep.neurons], int(keep.hidden.sum())
        )


@pytest.mark.parametrize("layout", ["free", "uniform"])
def test_every_layer_keeps_a_multiple_of_its_best_neurons(layout: str) -> None:
    case = _uniform_case(3, layers=4, units=3, neurons=10, hidden=8)
    full = _full_count(case)
    for fraction in (0.05, 0.2, 0.4, 0.6, 0.9):
        keep = select_keep_set(**case, budget=fraction * full, layout=layout, neuron_multiple=4)
        assert keep.params <= fraction * full
        per_layer = keep.neurons.view(4, 10)  # (layers, neurons per layer)
        counts = per_layer.sum(1).tolist()
        assert all(count % 4 == 0 or count == 10 for count in counts), counts
        if layout == "uniform":
            assert len(set(counts)) == 1, counts
        for layer, count in enumerate(counts):
            best = set(case["neuron_scores"].view(4, 10)[layer].argsort(descending=True)[:count].tolist())
            assert set(torch.nonzero(per_layer[layer]).flatten().tolist()) == best


def test_neuron_multiple_rounds_the_floor_up_and_refuses_bad_values() -> None:
    case = _uniform_case(0, layers=3, units=3, neurons=10, hidden=5)
    keep = select_keep_set(**case, budget=0.0, min_neurons_per_group=5, neuron_multiple=4)
    assert keep.neurons.view(3, 10).sum(1).tolist() == [8, 8, 8]  # 5 rounded up to two runs of 4
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ConfigError, match="neuron_multiple"):
            select_keep_set(**case, budget=100.0, neuron_multiple=bad)


def test_config_neuron_multiple_reaches_the_selection_of_a_tiny_decoder() -> None:
    import aptune
    from test_llama import tiny_llama

    with pytest.raises(ConfigError, match="neuron_multiple"):
        aptune.AptConfig(neuron_multiple=0)
    model = tiny_llama()
    config = aptune.AptConfig(distill=False, neuron_multiple=8)
    controller = aptune.prepare_(model, config)
    book = controller.blocks
    g = torch.Generator().manual_seed(0)
    scores = (
        torch.rand(sum(book.unit_counts()), generator=g) * 100,
        torch.rand(sum(book.neuron_counts()), generator=g),
        torch.rand(book.hidden_size, generator=g),
    )
    keep = book.select(scores, 0.5, config)
    widths = [int(part.sum()) for part in keep.neurons.cpu().split(book.neuron_counts())]
    assert all(width % 8 == 0 for width in widths) and sum(widths) < sum(book.neuron_counts()), widths
