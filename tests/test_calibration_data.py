"""Calibration data of the pruning before tuning: a dataset of its own, or the training data."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import TrainingArguments

import aptune
from aptune.config import AptConfig
from aptune.errors import ConfigError
from test_llama import _causal_lm_dataset, tiny_llama


def _config(samples: int, micro: int | None) -> AptConfig:
    return AptConfig(
        target_density=0.6,
        pretune_density=0.6,
        initial_rank=2,
        distill=False,
        prune_hidden=False,
        calibration_samples=samples,
        calibration_batch_size=micro,
        # salience alone: the damage curves measure on the first batches, whichever they are
        damage_curves=0,
    )


def _trainer(tmp_path, samples: int, train, calibration=None, micro: int | None = None) -> aptune.AptTrainer:
    torch.manual_seed(0)
    args = TrainingArguments(
        str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return aptune.AptTrainer(
        model=tiny_llama(),
        args=args,
        apt_config=_config(samples, micro),
        train_dataset=train,
        calibration_dataset=calibration,
    )


def _calibration_ids(trainer, monkeypatch) -> list[list[int]]:
    """Run the calibration pass; return the input ids it saw, batch by batch, in order."""
    seen: list[list[int]] = []
    controller = trainer.apt_controller
    original = controller.calibrate_and_prune_

    def spy(batches, optimizer=None):
        batches = list(batches)
        seen.extend(row for batch in batches for row in batch["input_ids"].tolist())
        return original(batches, optimizer)

    monkeypatch.setattr(controller, "calibrate_and_prune_", spy)
    record = trainer.calibrate_and_prune_()
    assert record["kind"] == "pretune"
    return seen


def test_the_calibration_pass_reads_the_calibration_dataset_in_order(tmp_path, monkeypatch) -> None:
    train = _causal_lm_dataset(24, seed=0)
    other = _causal_lm_dataset(20, seed=1)
    # a column the model does not take: the trainer's own loader factory removes it
    other = other.add_column("source", ["other domain"] * len(other))
    trainer = _trainer(tmp_path, samples=10, train=train, calibration=other)
    seen = _calibration_ids(trainer, monkeypatch)
    assert seen == other["input_ids"][:10]


def test_without_a_calibration_dataset_the_pass_reads_training_examples(tmp_path, monkeypatch) -> None:
    train = _causal_lm_dataset(24, seed=0)
    trainer = _trainer(tmp_path, samples=10, train=train)
    seen = _calibration_ids(trainer, monkeypatch)
    assert len(seen) == 10
    assert all(row in train["input_ids"] for row in seen)
    # the training loader shuffles: not simply the first ten rows
    assert seen != train["input_ids"][:10]


def test_calibrating_on_the_whole_training_set_either_way_gives_the_same_scores(tmp_path) -> None:
    # With every example in the pass, one per micro-batch (salience is |activation x gradient| of
    # each micro-batch), the summed salience does not depend on the order the training loader
    # shuffles them into: the calibration-dataset path must match the default.
    train = _causal_lm_dataset(16, seed=0)
    by_default = _trainer(tmp_path, samples=16, train=train, micro=1).calibrate_and_prune_()
    given = _trainer(tmp_path, samples=16, train=train, calibration=train, micro=1).calibrate_and_prune_()
    for kind in ("heads", "neurons"):
        expected = torch.tensor(by_default["scores"][kind])
        torch.testing.assert_close(torch.tensor(given["scores"][kind]), expected, rtol=1e-4, atol=1e-8)
    # and other data gives other scores: the pass really reads the dataset it is given
    other = _trainer(tmp_path, samples=16, train=train, calibration=_causal_lm_dataset(16, seed=3), micro=1)
    assert other.calibrate_and_prune_()["scores"]["neurons"] != by_default["scores"]["neurons"]


def test_an_empty_calibration_dataset_is_one_clear_error(tmp_path) -> None:
    empty = datasets.Dataset.from_dict({"input_ids": [], "attention_mask": [], "labels": []})
    with pytest.raises(ConfigError, match="calibration_dataset is empty"):
        _trainer(tmp_path, samples=4, train=_causal_lm_dataset(8), calibration=empty)
