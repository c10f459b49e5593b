"""`aptune.blocks.BlockBook`: counts and costs against the model's weight shapes, before and after surgery."""

import pytest
import torch

import aptune
from aptune.blocks import BlockBook
from test_llama import tiny_llama
from test_surgery import _random_keep
from tiny import tiny_bert


def _prunable_weights(model, layout) -> int:
    # Independent count: the elements of every prunable projection weight, read from the model.
    total = 0
    for site in layout.attention:
        total += sum(model.get_submodule(p).weight.numel() for p in (site.q, site.k, site.v, site.o))
    for site in layout.ffn:
        paths = [site.up, site.down] + ([site.gate] if site.gate else [])
        total += sum(model.get_submodule(p).weight.numel() for p in paths)
    return total


@pytest.mark.parametrize("factory", [tiny_bert, tiny_llama])
def test_param_count_equals_the_weights_before_and_after_surgery(factory):
    model = factory()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.5, distill=False))
    book = controller.blocks
    assert book.param_count() == _prunable_weights(model, controller.layout) == book.initial_params
    controller.set_hard_masks(_random_keep(controller, seed=2, hidden_keep=20))
    controller.prune_to_masks_()
    assert book.param_count() == _prunable_weights(model, controller.layout)
    assert book.density() == pytest.approx(_prunable_weights(model, controller.layout) / book.initial_params)
    for i, site in enumerate(controller.layout.attention):
        assert model.get_submodule(site.q).weight.shape == (book.unit_counts()[i] * site.unit_width, 20)
    assert book.structure() == controller.structure() != book.original


def test_ids_follow_the_kept_positions_and_alive_layers():
    model = tiny_bert()
    book = BlockBook(aptune.prepare_(model, aptune.AptConfig(distill=False)).layout, [4, 4], [64, 64])
    book.keep_("heads", 0, torch.tensor([1, 3]))
    book.keep_("heads", 0, torch.tensor([1]))  # positions among the blocks present: original id 3
    book.keep_("neurons", 1, torch.tensor([], dtype=torch.long))
    book.keep_("hidden", None, torch.arange(0, 32, 2))
    assert book.units[0].tolist() == [3] and book.units[1].tolist() == [0, 1, 2, 3]
    assert book.structure() == {"units": [1, 4], "neurons": [64, 0], "hidden": 16}
    assert book.alive_layers() == [True, False]
    assert book.layer_summary()["heads_per_layer"] == [1, 4]


def test_state_dict_round_trip():
    layout = aptune.prepare_(tiny_bert(), aptune.AptConfig(distill=False)).layout
    book = BlockBook(layout, [4, 4], [64, 64])
    book.keep_("neurons", 0, torch.tensor([5, 9]))
    restored = BlockBook(layout, [4, 4], [64, 64])
    restored.load_state_dict(book.state_dict())
    assert restored.structure() == book.structure()
    assert restored.neurons[0].tolist() == [5, 9] and restored.initial_params == book.initial_params


def _strip_layer_one_scores(book: BlockBook) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Layer 1's neurons score far below everything else, so a free selection removes them first.
    heads = torch.ones(sum(book.unit_counts())) * 100.0
    layer0 = torch.linspace(10.0, 20.0, book.neuron_counts()[0])
    layer1 = torch.linspace(0.01, 0.1, book.neuron_counts()[1])
    return heads, torch.cat([layer0, layer1]), torch.ones(book.hidden_size) * 1e6


@pytest.mark.parametrize(
    ("share", "per_layer", "floor"), [(0.0, 0, 0), (0.5, 0, 32), (0.25, 0, 16), (0.25, 40, 40), (0.6, 10, 39)]
)
def test_min_neurons_share_is_a_floor_of_every_layers_initial_ffn_width(share, per_layer, floor):
    controller = aptune.prepare_(tiny_llama(), aptune.AptConfig(distill=False))
    book = controller.blocks  # FFN width 64 in both layers
    config = aptune.AptConfig(
        target_density=0.6, min_neurons_share=share, min_neurons_per_layer=per_layer, prune_hidden=False
    )
    assert book.neuron_floor(config) == floor
    keep = book.select(_strip_layer_one_scores(book), 0.6, config)
    kept = [int(n.sum()) for n in book.split(keep)[1]]
    assert min(kept) >= floor
    assert kept[1] == floor  # the floor binds: without it, layer 1 loses more (checked at share 0)
    assert keep.params <= 0.6 * book.initial_params + 1e-6


def test_min_neurons_share_out_of_range_is_refused():
    with pytest.raises(aptune.ConfigError, match=r"min_neurons_share=1\.5 is invalid: must lie in \[0, 1\]"):
        aptune.AptConfig(min_neurons_share=1.5)
