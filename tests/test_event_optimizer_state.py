"""What the optimizer state becomes at a pruning / growth event (``AptConfig.event_optimizer_state``)."""

import pytest
import torch

import aptune
from tiny import batch, tiny_bert


def _train_to_first_growth(state_mode: str):
    """Train a tiny BERT with a real AdamW until the first event that grows an adapter."""
    model = tiny_bert()
    config = aptune.AptConfig(target_density=0.5, distill=False, event_optimizer_state=state_mode)
    controller = aptune.prepare_(model, config, total_steps=40)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    inputs = batch()
    model.train()
    for _ in range(40):
        ranks_before = controller.ranks()
        model(**inputs).loss.backward()
        optimizer.step()
        record = controller.step(optimizer)
        optimizer.zero_grad()
        if record is not None and record.get("grown"):
            return model, controller, optimizer, ranks_before, record
    raise AssertionError("no adapter grew in 40 steps")


@pytest.mark.parametrize("state_mode", ["zeros", "mean"])
def test_grown_entries_second_moment(state_mode):
    _, controller, optimizer, ranks_before, record = _train_to_first_growth(state_mode)
    path = next(iter(record["grown"]))
    old_rank = ranks_before[path]
    lora_B = controller.adapters[path].lora_B
    second = optimizer.state[lora_B]["exp_avg_sq"]  # (out_features, new_rank)
    assert second.shape == lora_B.shape and lora_B.shape[1] > old_rank
    assert torch.all(optimizer.state[lora_B]["exp_avg"][:, old_rank:] == 0)
    new_entries = second[:, old_rank:]
    if state_mode == "zeros":
        assert torch.all(new_entries == 0)
    else:
        expected = second[:, :old_rank].mean(dim=1, keepdim=True).expand_as(new_entries)
        torch.testing.assert_close(new_entries, expected)
        assert torch.all(new_entries > 0)


def test_reset_clears_the_state_at_events_and_training_goes_on():
    model, _, optimizer, _, _ = _train_to_first_growth("reset")
    assert len(optimizer.state) == 0  # as a freshly created optimizer
    inputs = batch()
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()  # the state is rebuilt, step count included
    assert torch.isfinite(loss)
    assert all(int(state["step"]) == 1 for state in optimizer.state.values())


def test_unknown_event_optimizer_state_is_refused():
    with pytest.raises(aptune.ConfigError, match="event_optimizer_state"):
        aptune.AptConfig(event_optimizer_state="fresh")
