"""Masked model == physically pruned model; optimizer state and shapes follow the surgery."""

import pytest
import torch

import aptune
from aptune.select import KeepSet
from tiny import batch, tiny_bert, tiny_roberta


def _randomise_adapters(controller, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in controller.adapters.values():
            adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=generator) * 0.1)


def _random_keep(controller, seed, drop_all_heads_of_site=None, hidden_keep=None):
    generator = torch.Generator().manual_seed(seed)
    structure = controller.structure()
    heads = []
    for i, units in enumerate(structure["units"]):
        keep = torch.rand(units, generator=generator) > 0.4
        keep[int(torch.randint(units, (1,), generator=generator))] = True
        if i == drop_all_heads_of_site:
            keep[:] = False
        heads.append(keep)
    neurons = [torch.rand(n, generator=generator) > 0.5 for n in structure["neurons"]]
    hidden = torch.rand(structure["hidden"], generator=generator) > 0.3
    if hidden_keep is not None:
        hidden = torch.zeros(structure["hidden"], dtype=torch.bool)
        hidden[:hidden_keep] = True
    return KeepSet(heads=torch.cat(heads), neurons=torch.cat(neurons), hidden=hidden, params=0.0)


@pytest.mark.parametrize("factory", [tiny_bert, tiny_roberta])
@pytest.mark.parametrize("drop_site", [None, 1])
def test_masked_equals_pruned(factory, drop_site):
    model = factory()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4, distill=False))
    _randomise_adapters(controller)
    inputs = batch(num_labels=model.config.num_labels)
    inputs.pop("labels")
    controller.set_hard_masks(_random_keep(controller, seed=3, drop_all_heads_of_site=drop_site))
    with torch.no_grad():
        masked = model(**inputs).logits
    removed = controller.prune_to_masks_()
    assert removed["heads"] > 0 and removed["neurons"] > 0 and removed["hidden"] > 0
    with torch.no_grad():
        pruned = model(**inputs).logits
    torch.testing.assert_close(pruned, masked, rtol=1e-5, atol=1e-5)
    # the model really is smaller and its attention modules report the new head counts
    hidden = controller.layout.hidden_size
    assert hidden < model.config.hidden_size
    for i, site in enumerate(controller.layout.attention):
        module = model.get_submodule(site.module)
        units = controller.structure()["units"][i]
        assert module.num_attention_heads == units
        assert model.get_submodule(site.q).weight.shape == (units * site.head_dim, hidden)
        assert model.get_submodule(site.o).weight.shape == (hidden, units * site.head_dim)
    if drop_site is not None:
        assert controller.structure()["units"][drop_site] == 0
        assert controller.alive_layers()[drop_site] is False


def test_surgery_slices_optimizer_state_and_training_continues():
    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4, distill=False))
    _randomise_adapters(controller)
    trainable = [p for p in model.parameters() if p.requires_grad]
    ids_before = [id(p) for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    inputs = batch()
    model.train()
    model(**inputs).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    controller.set_hard_masks(_random_keep(controller, seed=5))
    controller.prune_to_masks_(optimizer)
    assert [id(p) for p in model.parameters() if p.requires_grad] == ids_before
    for param in trainable:
        state = optimizer.state[param]
        assert state["exp_avg"].shape == param.shape
        assert state["exp_avg_sq"].shape == param.shape
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


def test_rank_growth_in_model_keeps_logits():
    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4, distill=False, max_rank=32))
    _randomise_adapters(controller)
    inputs = batch()
    inputs.pop("labels")
    with torch.no_grad():
        before = model(**inputs).logits
    for i, path in enumerate(controller.adapters):
        controller.adapter_importance[path] = float(i)
    budget = 3 * controller.adapter_parameter_count()
    grown = controller.grow_ranks_(budget)
    assert grown, "some adapters should grow"
    # the top half by importance grew; total adapter size is close to the budget from below
    top = sorted(controller.adapters, key=lambda p: controller.adapter_importance[p], reverse=True)
    assert set(grown) <= set(top[: len(top) // 2])
    assert controller.adapter_parameter_count() <= budget
    with torch.no_grad():
        after = model(**inputs).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_uniform_and_static_rank_allocation():
    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig(distill=False, rank_allocation="uniform"))
    start = controller.adapter_parameter_count()
    controller.grow_ranks_(2 * start)
    assert set(controller.ranks().values()) == {16}
    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig(distill=False, rank_allocation="static"))
    assert controller.grow_ranks_(10 * controller.adapter_parameter_count()) == {}
