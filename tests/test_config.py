import pytest

from aptune import AptConfig, ConfigError


def test_defaults_validate_and_round_trip(tmp_path):
    config = AptConfig(target_density=0.4, adapter_targets=["q", "v"])
    assert config.adapter_targets == ("q", "v")
    again = AptConfig.from_json(config.to_json())
    assert again == config
    path = tmp_path / "apt.json"
    config.to_json(path)
    assert AptConfig.from_json(path) == config
    assert '"format_version": 3' in config.to_json()


def test_adapter_targets_are_a_set_of_roles_in_one_order():
    """The same roles in any order, or repeated, ask for the same run (adapters attach in this order)."""
    from aptune.config import ADAPTER_ROLES

    shuffled = AptConfig(adapter_targets=("down", "q", "gate", "up", "v", "q"))
    assert shuffled.adapter_targets == ("q", "v", "up", "gate", "down")
    assert shuffled == AptConfig(adapter_targets=["q", "v", "up", "gate", "down"])
    assert AptConfig(adapter_targets=tuple(reversed(ADAPTER_ROLES))).adapter_targets == ADAPTER_ROLES
    assert AptConfig().adapter_targets is None  # the family default stays the family's


def test_absolute_and_fraction_points_survive_json():
    config = AptConfig(prune_start=20, prune_end=0.5)
    again = AptConfig.from_json(config.to_json())
    assert isinstance(again.prune_start, int) and again.prune_start == 20
    assert isinstance(again.prune_end, float)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target_density": 0.0}, "target_density"),
        ({"target_density": 1.5}, "target_density"),
        ({"target_density": float("nan")}, "target_density"),
        ({"initial_rank": 0}, "initial_rank"),
        ({"max_rank": 4, "initial_rank": 8}, "max_rank"),
        ({"budget_growth": 0.5}, "budget_growth"),
        ({"rank_allocation": "random"}, "rank_allocation"),
        ({"salience_beta": 1.0}, "salience_beta"),
        ({"num_events": 0}, "num_events"),
        ({"prune_start": 1.5}, "prune_start"),
        ({"prune_start": 0.5, "prune_end": 0.4}, "prune_end"),
        ({"mask_step": 0.0}, "mask_step"),
        ({"temperature": 0}, "temperature"),
        ({"layer_mapping": "cofi"}, "layer_mapping"),
        ({"adapter_targets": ("q", "query")}, "adapter_targets"),
        ({"distill": "yes"}, "distill"),
        ({"prune_start": True}, "prune_start"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"AptConfig\.{field}="):
        AptConfig(**kwargs)


def test_from_dict_rejects_unknown_fields_and_versions():
    with pytest.raises(ConfigError, match="unknown field"):
        AptConfig.from_dict({"target_density": 0.4, "density": 0.3})
    with pytest.raises(ConfigError, match="format_version"):
        AptConfig.from_dict({"format_version": 99})
    with pytest.raises(ConfigError, match="does not exist"):
        AptConfig.from_json("/nonexistent/apt.json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        AptConfig.from_json("{not json")
