import torch
from torch import nn

from aptune.adapter import AptLinear, attach_adapter
from aptune.surgery import grow_adapter_


def _adapter(seed=0):
    torch.manual_seed(seed)
    layer = AptLinear(nn.Linear(12, 7), rank=3, scaling=2.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


def test_new_adapter_is_a_no_op_and_freezes_base():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    x = torch.randn(5, 12)
    expected = base(x)
    layer = AptLinear(base, rank=4)
    assert torch.equal(layer(x), expected)
    assert not base.weight.requires_grad and layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_forward_matches_dense_formula():
    layer = _adapter()
    x = torch.randn(2, 5, 12)
    dense = x @ (layer.base_layer.weight + 2.0 * layer.lora_B @ layer.lora_A).T + layer.base_layer.bias
    torch.testing.assert_close(layer(x), dense, rtol=1e-5, atol=1e-5)


def test_merge_unmerge_identity():
    layer = _adapter()
    x = torch.randn(4, 12)
    weight_before = layer.base_layer.weight.clone()
    unmerged = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, weight_before, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.to_linear()(x), unmerged, rtol=1e-5, atol=1e-6)


def test_rank_growth_keeps_output_and_optimizer_state():
    layer = _adapter()
    optimizer = torch.optim.AdamW([layer.lora_A, layer.lora_B], lr=1e-2)
    x = torch.randn(4, 12)
    layer(x).sum().backward()
    optimizer.step()
    before = layer(x).detach()
    params = (layer.lora_A, layer.lora_B)
    old, new = grow_adapter_(layer, 6, optimizer)
    assert (old, new) == (3, 6)
    assert layer.lora_A is params[0] and layer.lora_B is params[1]
    torch.testing.assert_close(layer(x), before, rtol=0, atol=1e-6)
    state_a = optimizer.state[layer.lora_A]
    assert state_a["exp_avg"].shape == (6, 12) and torch.all(state_a["exp_avg"][3:] == 0)
    assert optimizer.state[layer.lora_B]["exp_avg_sq"].shape == (7, 6)
    optimizer.zero_grad()
    layer(x).sum().backward()
    optimizer.step()  # a step after growth runs with the grown state


def test_attach_adapter_replaces_by_path():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    adapter = attach_adapter(model, "2", rank=2, scaling=2.0)
    assert model[2] is adapter and isinstance(adapter, AptLinear)
    assert attach_adapter(model, "2", rank=2, scaling=2.0) is adapter
