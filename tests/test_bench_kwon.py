"""Kwon et al.'s post-training pruning (the LoRA+Prune baseline) on tiny BERT models."""

import torch

from aptune.arch import build_layout
from aptune.bench.kwon import (
    MaskHooks,
    block_costs,
    collect_mask_gradients,
    fold_scales_,
    kwon_prune,
    quadratic_loss,
    rearrange_masks,
    search_masks,
    tune_masks,
)
from tiny import batch, tiny_bert


def _batches(count=3, size=4, length=12):
    return [batch(size=size, length=length, seed=seed) for seed in range(1, count + 1)]


def test_search_respects_the_budget_and_keeps_the_higher_fisher_blocks():
    generator = torch.Generator().manual_seed(0)
    heads = [torch.rand(4, generator=generator) for _ in range(2)]
    neurons = [torch.rand(16, generator=generator) for _ in range(2)]
    head_cost, neuron_cost = 40, 3
    total = head_cost * 8 + neuron_cost * 32
    for density in (0.2, 0.5, 0.8):
        budget = density * total
        keep_h, keep_n = search_masks(heads, neurons, head_cost, neuron_cost, budget)
        kept_h, kept_n = torch.cat(keep_h), torch.cat(keep_n)
        assert head_cost * int(kept_h.sum()) + neuron_cost * int(kept_n.sum()) <= budget
        # within a kind, every kept block is at least as important as every pruned one
        for kept, scores in ((kept_h, torch.cat(heads)), (kept_n, torch.cat(neurons))):
            if kept.any() and (~kept).any():
                assert scores[kept].min() >= scores[~kept].max()
    # a head far more important than its cost wins the budget over neurons
    heads = [torch.tensor([100.0, 0.0, 0.0, 0.0]), torch.zeros(4)]
    keep_h, _ = search_masks(heads, neurons, head_cost, neuron_cost, 45)
    assert torch.cat(keep_h).tolist() == [True] + [False] * 7
    # and the split is the one of largest kept importance among all splits
    heads = [torch.tensor([1.0, 0.1, 0.1, 0.1])]
    neurons = [torch.tensor([0.6, 0.6, 0.6, 0.6])]
    keep_h, keep_n = search_masks(heads, neurons, 4, 1, 4)
    assert int(keep_h[0].sum()) == 0 and int(keep_n[0].sum()) == 4  # 2.4 > 1.0


def test_rearrangement_uses_the_layer_fisher_and_never_raises_its_loss():
    # blocks 0 and 1 always move together: pruning both costs much more than their diagonals say
    grads = torch.zeros(50, 4)
    grads[:, 0] = grads[:, 1] = torch.linspace(-1, 1, 50)
    grads[:, 2] = torch.linspace(-1.2, 1.2, 50).roll(7)
    grads[:, 3] = torch.linspace(-1.3, 1.3, 50).roll(19)
    search = torch.tensor([False, False, True, True])  # the diagonal search drops the two smallest
    fisher = grads.double().T @ grads.double() / 50
    (keep,), (losses,) = rearrange_masks([search], [grads])
    assert int(keep.sum()) == 2
    assert losses["rearranged"] < losses["search"] == quadratic_loss(fisher, search)
    assert quadratic_loss(fisher, keep) == losses["rearranged"]
    assert bool(keep[0]) != bool(keep[1])  # one of the coupled pair stays


def test_mask_gradients_are_per_example():
    model = tiny_bert(num_labels=3)
    layout = build_layout(model)
    one = batch(size=4, seed=1)
    with MaskHooks(model, layout) as hooks:
        heads, neurons = collect_mask_gradients(model, hooks, [one])
        assert heads[0].shape == (4, 4) and neurons[1].shape == (4, 64)
        # the reference: autograd on each example alone
        single = {k: v[2:3] for k, v in one.items()}
        mask = torch.ones(4, requires_grad=True)
        hooks.heads[0] = mask
        hooks.collect = False
        model(**single).loss.backward()
    torch.testing.assert_close(heads[0][2], mask.grad, rtol=1e-4, atol=1e-6)


def _sublayer_error(model, dense, layout, batches, path):
    """Squared error of one sub-layer's output (pruned model vs dense model) over the valid tokens."""
    outputs = {}

    def keep(name):
        def hook(module, args, output):
            outputs[name] = output.detach()

        return hook

    total = 0.0
    for b in batches:
        h1 = model.get_submodule(path).register_forward_hook(keep("pruned"))
        h2 = dense.get_submodule(path).register_forward_hook(keep("dense"))
        with torch.no_grad():
            model(**b)
            dense(**b)
        h1.remove()
        h2.remove()
        rows = b["attention_mask"].reshape(-1).bool()
        diff = (outputs["pruned"] - outputs["dense"]).reshape(-1, outputs["dense"].shape[-1])[rows]
        total += float((diff.double() ** 2).sum())
    return total


def test_least_squares_tuning_lowers_the_reconstruction_error():
    dense = tiny_bert(num_labels=3)
    layout = build_layout(dense)
    batches = _batches()
    keep_h = [torch.tensor([True, False, True, False]), torch.tensor([False, True, True, False])]
    keep_n = [torch.arange(64) % 3 == 0, torch.arange(64) % 2 == 0]
    errors = {}
    for tuned in (False, True):
        model = tiny_bert(num_labels=3)
        with MaskHooks(model, layout) as hooks:
            if tuned:
                records = tune_masks(model, hooks, keep_h, keep_n, batches)
            else:
                records = None
                hooks.heads = [k.float() for k in keep_h]
                hooks.neurons = [k.float() for k in keep_n]
            heads, neurons = list(hooks.heads), list(hooks.neurons)
        fold_scales_(model, layout, heads, neurons)
        errors[tuned] = [
            _sublayer_error(model, dense, layout, batches, p)
            for p in (layout.attention[0].o, layout.ffn[0].down, layout.attention[1].o, layout.ffn[1].down)
        ]
        if tuned:
            assert all(r.after <= r.before for r in records)
            # the first sub-layer sees the dense inputs: the measured error is the solver's own
            assert abs(errors[True][0] - records[0].after) <= 1e-4 * records[0].before
    assert errors[True][0] < errors[False][0]
    assert sum(errors[True]) < sum(errors[False])


def test_kwon_prune_keeps_the_budget_and_the_pruned_model_matches_the_masked_one():
    model = tiny_bert(num_labels=3)
    layout = build_layout(model)
    batches = _batches()
    result = kwon_prune(model, layout, batches, density=0.5)
    head_cost, neuron_cost = block_costs(model, layout)
    assert result.total_params == head_cost * 8 + neuron_cost * 128
    assert result.kept_params <= result.budget == 0.5 * result.total_params
    assert result.kept_params > 0.4 * result.total_params  # the budget is used, not wasted
    # pruned blocks are zeroed in the weights: removing them physically changes nothing
    from aptune.surgery import prune_neurons_, prune_units_

    probe = batch(size=3, seed=9)
    with torch.no_grad():
        before = model(**probe).logits
        for i, keep in enumerate(result.keep_heads):
            prune_units_(model, layout, i, torch.nonzero(keep).squeeze(1))
        for i, keep in enumerate(result.keep_neurons):
            prune_neurons_(model, layout, i, torch.nonzero(keep).squeeze(1))
        after = model(**probe).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert result.to_dict()["heads_per_layer"] == [int(k.sum()) for k in result.keep_heads]


def test_torch_pruning_taylor_path_prunes_to_the_budget_and_the_model_runs():
    from aptune.bench.tp_pruning import taylor_keep_sets, taylor_scores
    from aptune.surgery import prune_neurons_, prune_units_

    model = tiny_bert(num_labels=3)
    layout = build_layout(model)
    batches = _batches()
    heads, neurons = taylor_scores(model, layout, batches)
    assert [h.shape for h in heads] == [(4,), (4,)] and [n.shape for n in neurons] == [(64,), (64,)]
    assert all(p.grad is None for p in model.parameters())  # the calibration leaves no gradient
    # the Taylor score of a neuron is |w * grad| over its up row (+bias) and down column, mean-normalised
    model.zero_grad()
    for b in batches:
        model(**b).loss.backward()
    up, down = model.bert.encoder.layer[1].intermediate.dense, model.bert.encoder.layer[1].output.dense
    raw = (up.weight * up.weight.grad).abs().sum(1) + (up.bias * up.bias.grad).abs()
    raw = raw + (down.weight * down.weight.grad).abs().sum(0)
    assert torch.corrcoef(torch.stack([raw.detach() / raw.mean(), neurons[1]]))[0, 1] > 0.99
    model.zero_grad(set_to_none=True)

    keep_h, keep_n, record = taylor_keep_sets(model, layout, batches, density=0.5)
    head_cost, neuron_cost = block_costs(model, layout)
    kept = head_cost * int(torch.cat(keep_h).sum()) + neuron_cost * int(torch.cat(keep_n).sum())
    assert kept == record["kept_params"] <= record["budget"] == 0.5 * record["total_params"]
    assert kept > 0.45 * record["total_params"]
    for i, keep in enumerate(keep_h):
        prune_units_(model, layout, i, torch.nonzero(keep).squeeze(1))
    for i, keep in enumerate(keep_n):
        prune_neurons_(model, layout, i, torch.nonzero(keep).squeeze(1))
    out = model(**batch(size=2, seed=5))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
    assert model.bert.encoder.layer[0].intermediate.dense.weight.shape[0] == int(keep_n[0].sum())
