"""Salience against brute-force activation x gradient sums computed with independent hooks."""

import math

import torch

import aptune
from aptune.salience import block_kurtosis, excess_kurtosis
from tiny import batch, tiny_bert


def test_collected_salience_equals_brute_force():
    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig(distill=False))
    with torch.no_grad():
        for adapter in controller.adapters.values():
            adapter.lora_B.normal_(0, 0.1)
    model.train()
    site = controller.layout.attention[1]
    ffn = controller.layout.ffn[0]
    captured = {}

    def keep(name):
        def hook(module, args):
            args[0].retain_grad()
            captured[name] = args[0]

        return hook

    # registered after aptune's hooks: they see the tensor aptune passes on (no mask set, so the
    # same activation), and read its gradient by retain_grad, independently of aptune's tensor hooks
    h1 = model.get_submodule(site.o).register_forward_pre_hook(keep("o"))
    h2 = model.get_submodule(ffn.down).register_forward_pre_hook(keep("down"))
    controller.state.collector.active = True
    total = {}
    for seed in (1, 2):  # two micro-batches accumulate
        model(**batch(seed=seed)).loss.backward()
        for name, x in captured.items():
            act, grad = x.detach().abs().sum((0, 1)), x.grad.abs().sum((0, 1))
            a, g = total.get(name, (0, 0))
            total[name] = (a + act, g + grad)
    h1.remove()
    h2.remove()
    heads, neurons, _ = controller.current_salience()
    act, grad = total["o"]
    expected_heads = (act * grad).reshape(-1, site.head_dim).sum(1)  # (heads, d_h) -> per head
    torch.testing.assert_close(heads[1], expected_heads, rtol=1e-5, atol=1e-8)
    act, grad = total["down"]
    torch.testing.assert_close(neurons[0], act * grad, rtol=1e-5, atol=1e-8)
    assert all(h is not None and torch.all(h > 0) for h in heads)


def test_ema_folds_steps():
    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig(distill=False, salience_beta=0.5))
    model.train()
    controller.state.collector.active = True
    model(**batch(seed=1)).loss.backward()
    first = controller.current_salience()[1][0].clone()
    controller.scores.fold(controller.current_salience())
    controller.state.collector.reset()
    model.zero_grad()
    model(**batch(seed=2)).loss.backward()
    second = controller.current_salience()[1][0].clone()
    controller.scores.fold(controller.current_salience())
    torch.testing.assert_close(controller.scores.neurons[0], 0.5 * first + 0.5 * second)


def _kurtosis_reference(values):
    n = len(values)
    mean = sum(values) / n
    m2 = sum((v - mean) ** 2 for v in values) / n
    m4 = sum((v - mean) ** 4 for v in values) / n
    return m4 / m2**2 - 3.0 if m2 > 0 else 0.0


def test_kurtosis_matches_reference_per_head():
    torch.manual_seed(0)
    weight = torch.randn(6, 8)  # d_model 6, 2 heads of width 4
    weight[2, 5] = 25.0  # an outlier in head 1
    mean_input = torch.randn(8)
    unit_bonus, hidden_bonus = block_kurtosis(weight, mean_input, unit_width=4)
    products = (weight * mean_input).tolist()
    for head in range(2):
        values = [products[r][c] for r in range(6) for c in range(head * 4, head * 4 + 4)]
        expected = math.sqrt(max(_kurtosis_reference(values), 0.0))
        assert abs(float(unit_bonus[head]) - expected) < 1e-4
    for row in range(6):
        expected = math.sqrt(max(_kurtosis_reference(products[row]), 0.0))
        assert abs(float(hidden_bonus[row]) - expected) < 1e-4
    assert unit_bonus[1] > unit_bonus[0]
    assert float(excess_kurtosis(torch.ones(5))) == 0.0
