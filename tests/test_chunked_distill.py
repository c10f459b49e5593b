"""Distillation of a causal LM in blocks of tokens equals the distillation on the full logits."""

import pytest
import torch
import torch.nn.functional as F

import aptune
from aptune.distill import PredictionDistillLoss
from aptune.losses import IGNORE_INDEX, chunked_causal_lm_distill
from test_distill_initial_teacher import _train
from test_llama import _causal_lm_dataset, _inputs, tiny_llama
from test_surgery import _randomise_adapters


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_the_block_sums_equal_the_full_cross_entropy_and_kl(chunk):
    torch.manual_seed(0)
    batch, seq, width = 3, 6, 8
    head = torch.nn.Linear(width, 11)
    teacher_head = torch.nn.Linear(width + 2, 11)
    student_hidden = torch.randn(batch, seq, width, requires_grad=True)
    teacher_hidden = torch.randn(batch, seq, width + 2)
    labels = torch.randint(0, 11, (batch, seq))
    labels[0, :2] = IGNORE_INDEX
    valid = torch.ones(batch, seq, dtype=torch.bool)
    valid[0, :2] = False
    ce, kl = chunked_causal_lm_distill(
        student_hidden, teacher_hidden, head, teacher_head, labels, valid, chunk, temperature=0.5
    )
    (ce + kl).backward()
    chunked_grad = student_hidden.grad.clone()
    student_hidden.grad = None

    logits = head(student_hidden)  # the reference: full logits, the library's own losses
    ref_ce = F.cross_entropy(
        logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    with torch.no_grad():
        teacher_logits = teacher_head(teacher_hidden)
    ref_kl = PredictionDistillLoss(temperature=0.5)(logits, teacher_logits, valid)
    (ref_ce + ref_kl).backward()
    torch.testing.assert_close(ce, ref_ce)
    torch.testing.assert_close(kl, ref_kl)
    torch.testing.assert_close(chunked_grad, student_hidden.grad)
    assert float(kl.detach()) > 0  # the two heads disagree: the comparison is not trivially zero


def _pruned_controller(config):
    model = tiny_llama()
    controller = aptune.prepare_(model, config, total_steps=40)
    data = _causal_lm_dataset(16)
    batches = [{k: torch.tensor(data[i : i + 4][k]) for k in data.column_names} for i in range(0, 16, 4)]
    controller.calibrate_and_prune_(batches)
    _randomise_adapters(controller)  # the student now differs from its teacher
    # halfway up the distillation weight, so both the task and the distillation terms count
    schedule = controller.schedule
    controller.step_count = (schedule.start + schedule.end) // 2
    assert 0 < schedule.mu(controller.step_count + 1) < 1
    return model, controller


@pytest.mark.parametrize("alpha_layer", [0.0, 0.9])
def test_the_controller_loss_in_blocks_equals_the_loss_on_full_logits(alpha_layer):
    config = aptune.AptConfig(
        target_density=0.5,
        num_events=2,
        distill=True,
        distill_teacher="initial",
        alpha_pred=1.0,
        alpha_layer=alpha_layer,
        lm_loss_chunk=4,
    )
    model, controller = _pruned_controller(config)
    model.train()
    inputs = _inputs(size=3, length=9)
    inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, IGNORE_INDEX)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(compute):
        # the layer term samples teacher layers from the controller's generator: same draws for both
        controller.distiller.generator.manual_seed(0)
        loss, parts = compute()
        grads = torch.autograd.grad(loss, trainable, allow_unused=True)
        return loss.detach(), parts, grads

    def full():
        teacher_outputs = controller.teacher_forward(inputs)
        outputs = model(**inputs, output_hidden_states=True)
        return controller.distillation_loss(outputs, teacher_outputs, outputs.loss, inputs)

    ref_loss, ref_parts, ref_grads = loss_and_grads(full)
    loss, parts, grads = loss_and_grads(lambda: controller.chunked_distillation_loss(model, inputs))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert parts.pred == pytest.approx(ref_parts.pred, rel=1e-5) and parts.pred > 0
    assert parts.layer == pytest.approx(ref_parts.layer, rel=1e-5, abs=1e-7)
    assert (parts.layer > 0) == (alpha_layer > 0)
    for got, want in zip(grads, ref_grads, strict=True):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_a_trainer_run_distils_in_blocks(tmp_path, monkeypatch):
    config = aptune.AptConfig(
        target_density=0.5,
        num_events=2,
        initial_rank=2,
        distill=True,
        distill_teacher="initial",
        alpha_pred=1.0,
        alpha_layer=0.0,
        lm_loss_chunk=8,
    )
    calls = []
    original = aptune.AptController.chunked_distillation_loss

    def counted(self, *args, **kwargs):
        calls.append(self.step_count)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(aptune.AptController, "chunked_distillation_loss", counted)
    trainer = _train(tiny_llama(), config, tmp_path, steps=10)
    assert calls == list(range(len(calls))) and len(calls) == 7  # every step until distill_end (0.7)
    logged = [h for h in trainer.state.log_history if "distill_pred" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["distill_pred"])) for h in logged)


def test_without_chunks_the_full_logits_path_runs(tmp_path, monkeypatch):
    config = aptune.AptConfig(
        target_density=0.5, num_events=2, initial_rank=2, distill=True, distill_teacher="initial"
    )
    assert config.lm_loss_chunk is None  # the default: full logits
    monkeypatch.setattr(
        aptune.AptController, "chunked_distillation_loss", lambda *a, **k: pytest.fail("chunked path used")
    )
    _train(tiny_llama(), config, tmp_path, steps=12)
