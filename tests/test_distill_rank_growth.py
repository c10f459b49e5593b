"""The distillation transform's rank grows with the adapters', by the same factor, output unchanged."""

import math

import torch

import aptune
from aptune.ranks import growth_factor
from tiny import tiny_bert


def _prepared(grow: bool, **extra):
    model = tiny_bert()
    config = aptune.AptConfig(target_density=0.5, distill=True, distill_rank_growth=grow, **extra)
    controller = aptune.prepare_(model, config, total_steps=100)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a trained transform and trained adapters: B no longer zero
        controller.transform.lora_B.copy_(torch.randn(controller.transform.lora_B.shape, generator=generator))
        for i, (path, adapter) in enumerate(controller.adapters.items()):
            adapter.lora_B.normal_(generator=generator)
            controller.scores.adapter_importance[path] = float(i)
    return model, controller


def _factor(controller, budget):
    widths = {p: a.lora_A.shape[1] + a.lora_B.shape[0] for p, a in controller.adapters.items()}
    return growth_factor(
        controller.ranks(),
        widths,
        controller.scores.adapter_importance,
        budget,
        max_rank=controller.config.max_rank,
    )


def test_transform_grows_by_the_adapters_factor_and_keeps_its_output():
    _, controller = _prepared(True)
    transform = controller.transform
    x = torch.randn(3, 5, transform.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = transform(x)
    budget = 2 * controller.adapter_parameter_count()
    factor = _factor(controller, budget)
    old = transform.rank
    grown = controller.grow_ranks_(budget)
    assert grown  # the adapters grew ...
    assert transform.rank == math.floor(old * factor) > old  # ... and Tr by the same factor
    assert {new / old_r for old_r, new in grown.values()} <= {math.floor(old * factor) / old}
    with torch.no_grad():
        after = transform(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)  # same function, new summation order
    assert transform.lora_A.requires_grad and transform.lora_B.requires_grad


def test_transform_keeps_its_rank_when_the_option_is_off():
    _, controller = _prepared(False)
    old = controller.transform.rank
    assert controller.grow_ranks_(2 * controller.adapter_parameter_count())
    assert controller.transform.rank == old


def test_transform_grows_only_while_below_twice_the_rank_cap():
    _, controller = _prepared(True, max_rank=12)  # the authors' rule: Tr stays below 2 * 12 = 24
    assert controller.grow_transform_(3.0) is None  # 8 * 3 = 24 is not below the cap
    assert controller.transform.rank == 8
    assert controller.grow_transform_(2.9) == (8, 23)
    assert controller.grow_transform_(1.0) is None


def test_transform_rank_survives_a_state_round_trip():
    model, controller = _prepared(True)
    controller.grow_ranks_(2 * controller.adapter_parameter_count())
    state = controller.state_dict()
    fresh = tiny_bert()
    restored = aptune.prepare_(fresh, controller.config, total_steps=100)
    restored.load_state_dict(state)
    assert restored.transform.rank == controller.transform.rank > controller.config.initial_rank
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 4, controller.transform.in_features)
    with torch.no_grad():
        torch.testing.assert_close(restored.transform(x), controller.transform(x))
