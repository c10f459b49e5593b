"""Gradient checkpointing reruns the forward pass; the salience must count each token once."""

import pytest
import torch
from benchmarks.allocator_ab import enable_checkpointing
from transformers import TrainingArguments

import aptune
from aptune.runner import _checkpointing_argument
from test_distill_initial_teacher import _train
from test_llama import VOCAB, _causal_lm_dataset, tiny_llama
from tiny import batch, tiny_bert

_MODES = [None, False, True]  # no checkpointing, then use_reentrant False / True


def _calibration_scores(build, batches, checkpointing):
    model = build()
    if checkpointing is not None:
        enable_checkpointing(model, use_reentrant=checkpointing)
    config = aptune.AptConfig(target_density=0.5, pretune_density=0.75, damage_curves=0)
    controller = aptune.prepare_(model, config, total_steps=40)
    record = controller.calibrate_and_prune_(batches)
    return {k: torch.tensor(v) for k, v in record["scores"].items()}, record["keep_checksum"]


def _llama_batches():
    data = _causal_lm_dataset(8)
    return [{k: torch.tensor(data[i : i + 2][k]) for k in data.column_names} for i in range(0, 8, 2)]


def _bert_batches():
    return [batch(size=2, seed=s) for s in range(4)]


@pytest.mark.parametrize("checkpointing", _MODES[1:], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize(
    ("build", "batches"),
    [(tiny_llama, _llama_batches), (lambda: tiny_bert(dropout=0.0), _bert_batches)],
    ids=["llama", "bert"],
)
def test_calibration_scores_do_not_change_with_checkpointing(build, batches, checkpointing):
    expected, expected_checksum = _calibration_scores(build, batches(), None)
    scores, checksum = _calibration_scores(build, batches(), checkpointing)
    for kind in ("heads", "neurons", "hidden"):
        assert float(expected[kind].abs().sum()) > 0, kind  # scored: not an empty comparison
        torch.testing.assert_close(scores[kind], expected[kind], rtol=1e-5, atol=1e-6)
    assert checksum == expected_checksum


def _trained(checkpointing: bool, tmp_path):
    model = tiny_llama()
    config = aptune.AptConfig(
        target_density=0.5,
        pretune_density=0.75,
        num_events=2,
        initial_rank=2,
        distill=True,
        distill_teacher="initial",
        lm_loss_chunk=5,
        calibration_samples=8,
        damage_curves=0,
    )
    trainer = _train(
        model,
        config,
        tmp_path / f"run-{checkpointing}",
        10,
        **_checkpointing_argument(TrainingArguments, checkpointing),
    )
    model.eval()
    probe = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(input_ids=probe, attention_mask=torch.ones_like(probe)).logits
    return [e["keep_checksum"] for e in trainer.apt_controller.events], logits


def test_a_checkpointed_run_prunes_and_trains_as_one_without(tmp_path):
    """Calibration, both events during tuning, the chunked loss and distillation, with
    ``TrainingArguments(gradient_checkpointing=True)``."""
    expected_checksums, expected = _trained(False, tmp_path)
    checksums, logits = _trained(True, tmp_path)
    assert len(expected_checksums) == 3
    assert checksums == expected_checksums
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
