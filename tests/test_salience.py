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


# ---------------------------------------------------------------------------------------- hidden dims
def _reader_reference(model, paths, inputs, hidden_mask=None):
    """Sum over the q/k/v/up/gate linears of (sum |x|) * (sum |dL/dx|) per channel, by autograd.

    Each linear gets its input plus a zero probe tensor; the probe's gradient is the one flowing
    into that linear only (the residual path and the other readers excluded), and neither the
    forward nor any other gradient changes.
    """
    leaves = []

    def hook(module, args):
        probe = torch.zeros_like(args[0], requires_grad=True)
        leaves.append((args[0].detach(), probe))
        return (args[0] + probe, *args[1:])

    handles = [model.get_submodule(p).register_forward_pre_hook(hook) for p in paths]
    try:
        model(**inputs).loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    total = 0
    for act, leaf in leaves:
        if hidden_mask is not None:  # the activation before the mask
            act = torch.where(hidden_mask > 0, act / hidden_mask.clamp_min(1e-30), torch.zeros_like(act))
        total = total + act.abs().sum((0, 1)) * leaf.grad.abs().sum((0, 1))
    model.zero_grad()
    return total


def _randomise(controller):
    with torch.no_grad():
        for adapter in controller.adapters.values():
            adapter.lora_B.normal_(0, 0.1)


def test_block_input_hidden_salience_is_the_default_for_encoders_and_equals_autograd():
    from aptune.masks import block_input_paths

    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig(distill=False))
    assert controller.state.hidden_salience == "block_inputs"
    _randomise(controller)
    model.train()
    paths = block_input_paths(controller.layout)
    assert len(paths) == 4 * len(controller.layout.ffn)  # q, k, v, up per layer
    # a soft hidden mask: the score must use the activation before it
    mask = torch.ones(controller.layout.hidden_size)
    mask[::5] = 0.5
    mask[1] = 0.0
    controller.state.hidden = mask
    inputs = batch(seed=3)
    controller.state.collector.active = True
    model(**inputs).loss.backward()
    got = controller.current_salience().hidden
    controller.state.collector.active = False
    controller.state.collector.reset()
    model.zero_grad()
    expected = _reader_reference(model, paths, inputs, mask)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert got[1] == 0 and bool((got > 0).sum() >= mask.numel() - 1)


def test_residual_hidden_salience_stays_selectable_and_differs():
    scores = {}
    for mode in ("residual", "block_inputs"):
        model = tiny_bert()
        controller = aptune.prepare_(model, aptune.AptConfig(distill=False, hidden_salience=mode))
        _randomise(controller)
        model.train()
        controller.state.collector.active = True
        model(**batch(seed=3)).loss.backward()
        scores[mode] = controller.current_salience().hidden
        keys = {k[1] for k in controller.state.collector.stats if k[0] == "hidden"}
        assert (keys == {"in"}) == (mode == "block_inputs")
    assert not torch.allclose(scores["residual"], scores["block_inputs"], rtol=0.05)


def _tiny_llama():
    from test_llama import tiny_llama

    return tiny_llama()


def _llama_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 96, (3, 9), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def test_norm_weighted_hidden_salience_equals_brute_force_on_llama():
    import copy

    from aptune.masks import block_input_paths

    model = _tiny_llama()
    plain = copy.deepcopy(model)
    controller = aptune.prepare_(model, aptune.AptConfig(distill=False, hidden_salience="norm_weighted"))
    assert controller.state.hidden_salience == "norm_weighted"
    model.train()
    inputs = _llama_batch()
    controller.state.collector.active = True
    model(**inputs).loss.backward()
    got = controller.current_salience().hidden
    controller.state.collector.active = False
    controller.state.collector.reset()
    model.zero_grad()

    # magnitude by hand from the plain model: |w_c| * RMS over tokens of x_c / rms(x), summed over norms
    magnitude = 0
    captured = []
    handles = [
        plain.get_submodule(p).register_forward_hook(lambda m, a, o: captured.append((m, a[0])))
        for p in controller.layout.norms
    ]
    with torch.no_grad():
        plain(**inputs)
    for handle in handles:
        handle.remove()
    assert len(captured) == len(controller.layout.norms) == 5
    for norm, x in captured:
        x = x.reshape(-1, x.shape[-1]).double()
        normalised = x / (x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()
        magnitude = magnitude + norm.weight.double().abs() * normalised.pow(2).mean(0).sqrt()
    gradient_total = _reader_reference(model, block_input_paths(controller.layout), inputs).sum()
    expected = magnitude / magnitude.sum() * gradient_total
    assert torch.allclose(got.double(), expected, rtol=1e-4)
    # no kurtosis bonus on hidden dims in this mode although kurtosis is on for decoders
    assert controller.use_kurtosis


def test_norm_weighted_hidden_dims_are_not_pruned_one_shot():
    model = _tiny_llama()
    config = aptune.AptConfig(
        target_density=0.6,
        pretune_density=0.6,
        distill=False,
        hidden_salience="norm_weighted",
        damage_curves=0,  # the salience ranking (curves keep hidden dims one-shot anyway: test_damage)
    )
    controller = aptune.prepare_(model, config)
    batches = [_llama_batch(seed) for seed in range(3)]
    controller.calibrate_and_prune_(batches)
    assert controller.blocks.hidden_size == 48
    assert controller.density() <= 0.6 + 1e-9
    # the running selection, from salience collected during tuning, may drop hidden dims later
    controller.state.collector.active = True
    model(**_llama_batch(5)).loss.backward()
    controller.scores.fold(controller.current_salience())
    assert controller.scores.hidden is not None
    assert not bool(controller.select(0.3).hidden.all())


def test_norm_weighted_on_a_post_norm_model_is_named():
    import pytest

    from aptune.errors import ConfigError

    with pytest.raises(ConfigError, match="norm_weighted"):
        aptune.prepare_(tiny_bert(), aptune.AptConfig(hidden_salience="norm_weighted"))
