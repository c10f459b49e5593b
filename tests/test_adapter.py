import pytest
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


def _largest_step_over_lr(layer, optimizer, x, target, lr, steps):
    """Largest per-entry change of the new rank's ``A`` rows and ``B`` columns in one step, over lr."""
    largest = 0.0
    for _ in range(steps):
        before = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
        optimizer.zero_grad()
        nn.functional.mse_loss(layer(x), target).backward()
        optimizer.step()
        change_a = (layer.lora_A.detach() - before[0])[3:].abs().max()
        change_b = (layer.lora_B.detach() - before[1])[:, 3:].abs().max()
        largest = max(largest, float(torch.maximum(change_a, change_b)) / lr)
    return largest


def _grown_after_training(second_moment):
    """An adapter trained 200 AdamW steps, then grown from rank 3 to 6; its optimizer and data."""
    layer = _adapter()
    optimizer = torch.optim.AdamW([layer.lora_A, layer.lora_B], lr=1e-3, weight_decay=0.0)
    x, target = torch.randn(32, 12), torch.randn(32, 7)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.mse_loss(layer(x), target).backward()
        optimizer.step()
    grow_adapter_(layer, 6, optimizer, second_moment=second_moment)
    return layer, optimizer, x, target


def test_grown_ranks_with_mean_second_moment_take_steps_no_larger_than_a_fresh_optimizer():
    # Adam normalises a step by the root of its second moment; a fresh optimizer's steps stay near
    # lr. With their tensor's mean second moment, new entries do not get several times that.
    layer, optimizer, x, target = _grown_after_training("mean")
    second = optimizer.state[layer.lora_B]["exp_avg_sq"]
    torch.testing.assert_close(second[:, 3:], second[:, :3].mean(dim=1, keepdim=True).expand(7, 3))
    assert torch.all(optimizer.state[layer.lora_B]["exp_avg"][:, 3:] == 0)
    assert _largest_step_over_lr(layer, optimizer, x, target, 1e-3, steps=20) <= 1.2


def test_grown_ranks_with_zero_second_moment_take_oversized_steps():
    # The default: zero moments under the tensor's long-running step count (bias correction near 1)
    # let the new entries' steps grow past 2x the rate within 20 steps.
    layer, optimizer, x, target = _grown_after_training("zeros")
    assert torch.all(optimizer.state[layer.lora_B]["exp_avg_sq"][:, 3:] == 0)
    assert _largest_step_over_lr(layer, optimizer, x, target, 1e-3, steps=20) > 2.0


def test_grow_refuses_an_unknown_second_moment():
    with pytest.raises(ValueError, match="second_moment"):
        grow_adapter_(_adapter(), 6, second_moment="fresh")
