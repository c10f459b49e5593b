"""`aptune.scores`: the moving averages, their alignment with the blocks present, and their state."""

from types import SimpleNamespace

import torch

from aptune.scores import Salience, ScoreTracker


def _tracker(beta=0.5):
    return ScoreTracker(num_attention=2, num_ffn=1, beta=beta, use_kurtosis=False)


def test_fold_is_an_ema_per_block():
    tracker = _tracker(beta=0.25)
    first = Salience([torch.tensor([1.0, 2.0]), None], [torch.tensor([4.0, 0.0, 8.0])], torch.ones(3))
    second = Salience([torch.tensor([3.0, 6.0]), torch.tensor([5.0])], [None], torch.zeros(3))
    tracker.fold(first)
    tracker.fold(second)
    torch.testing.assert_close(
        tracker.heads[0], 0.25 * torch.tensor([1.0, 2.0]) + 0.75 * torch.tensor([3.0, 6.0])
    )
    torch.testing.assert_close(tracker.heads[1], torch.tensor([5.0]))  # first score: taken as is
    torch.testing.assert_close(tracker.neurons[0], torch.tensor([4.0, 0.0, 8.0]))  # no new score: kept
    torch.testing.assert_close(tracker.hidden, torch.full((3,), 0.25))
    assert tracker.updates == 2


def test_a_score_of_another_shape_replaces_the_old_one():
    tracker = _tracker()
    tracker.fold(Salience([torch.ones(4), None], [None], None))
    tracker.fold(Salience([torch.full((2,), 3.0), None], [None], None))
    torch.testing.assert_close(tracker.heads[0], torch.full((2,), 3.0))


def test_keep_drops_removed_blocks_and_vectors_fill_unscored_sites_with_zeros():
    tracker = _tracker()
    tracker.fold(Salience([torch.tensor([1.0, 2.0, 3.0]), None], [None], torch.tensor([7.0, 8.0, 9.0])))
    tracker.keep_("heads", 0, torch.tensor([0, 2]))
    tracker.keep_("hidden", None, torch.tensor([1]))
    tracker.keep_("neurons", 0, torch.tensor([0]))  # no score yet: nothing to slice
    heads, neurons, hidden = tracker.vectors(units=[2, 4], neurons=[5], hidden_size=1)
    assert heads.tolist() == [1.0, 3.0, 0.0, 0.0, 0.0, 0.0]
    assert neurons.tolist() == [0.0] * 5
    assert hidden.tolist() == [8.0]


def test_calibration_sums_replace_the_scores():
    a = Salience([torch.ones(2), None], [torch.ones(3)], None)
    b = Salience([torch.full((2,), 2.0), torch.ones(1)], [None], torch.ones(3))
    tracker = _tracker()
    tracker.fold(Salience([torch.full((2,), 9.0), None], [None], None))
    tracker.replace(a + b)
    assert tracker.heads[0].tolist() == [3.0, 3.0] and tracker.heads[1].tolist() == [1.0]
    assert tracker.neurons[0].tolist() == [1.0] * 3 and tracker.hidden.tolist() == [1.0] * 3
    assert tracker.updates == 0


def test_adapter_importance_is_the_rank_mean_of_row_sums_of_a_times_grad():
    tracker = _tracker(beta=0.5)
    lora_a = torch.tensor([[1.0, -2.0], [3.0, 1.0]])
    lora_a.grad = torch.tensor([[1.0, 1.0], [-1.0, 2.0]])  # row sums of A * grad: -1 and -1
    frozen = SimpleNamespace(lora_A=torch.zeros(2, 2))  # no gradient: skipped
    tracker.update_adapter_importance({"q": SimpleNamespace(lora_A=lora_a), "v": frozen})
    assert tracker.adapter_importance == {"q": 1.0}
    lora_a.grad = torch.tensor([[3.0, 0.0], [0.0, 0.0]])  # |3| and |0|: mean 1.5
    tracker.update_adapter_importance({"q": SimpleNamespace(lora_A=lora_a)})
    assert tracker.adapter_importance == {"q": 0.5 * 1.0 + 0.5 * 1.5}


def test_state_dict_round_trip():
    tracker = _tracker()
    tracker.fold(Salience([torch.ones(2), None], [torch.arange(3.0)], torch.ones(4)))
    tracker.adapter_importance["q"] = 0.5
    restored = _tracker()
    restored.load_state_dict(tracker.state_dict())
    assert restored.heads[1] is None and torch.equal(restored.heads[0], tracker.heads[0])
    assert torch.equal(restored.neurons[0], tracker.neurons[0]) and torch.equal(
        restored.hidden, tracker.hidden
    )
    assert restored.updates == 1 and restored.adapter_importance == {"q": 0.5}
