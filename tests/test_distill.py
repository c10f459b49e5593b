"""Self-distillation: losses against hand computations; the teacher outlives the student's surgery."""

import copy

import torch
import torch.nn.functional as F

import aptune
from aptune.distill import (
    LayerDistillLoss,
    PredictionDistillLoss,
    nearest_alive_candidates,
    sample_teacher_layers,
)
from test_surgery import _random_keep, _randomise_adapters
from tiny import batch, tiny_bert


def test_prediction_loss_is_scaled_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    tau = 0.5
    loss = PredictionDistillLoss(temperature=tau, scale=10.0)(student, teacher)
    expected = F.kl_div(F.log_softmax(student / tau, -1), F.softmax(teacher / tau, -1), reduction="batchmean")
    torch.testing.assert_close(loss, expected * tau**2 * 10.0)
    same = PredictionDistillLoss()(teacher, teacher)
    assert abs(float(same)) < 1e-6


def test_prediction_loss_masks_positions():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    valid = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    loss = PredictionDistillLoss(temperature=1.0)(student, teacher, valid)
    per = (F.softmax(teacher, -1) * (F.log_softmax(teacher, -1) - F.log_softmax(student, -1))).sum(-1)
    torch.testing.assert_close(loss, per[valid].mean())


def test_layer_mapping_and_sampling():
    assert nearest_alive_candidates(2, [True, True, True, True]) == [2]
    assert nearest_alive_candidates(2, [True, False, False, True]) == [0, 3]
    assert nearest_alive_candidates(0, [False, True]) == [1]
    assert nearest_alive_candidates(1, [True, False], mode="same") == []
    generator = torch.Generator().manual_seed(0)
    layers = sample_teacher_layers(12, 4, generator)
    assert [layer // 3 for layer in layers] == [0, 1, 2, 3]
    assert sample_teacher_layers(2, 4, generator) == [0, 1]


def test_layer_loss_picks_the_better_neighbour():
    identity = torch.nn.Identity()
    teacher = [torch.zeros(1, 2, 3), torch.ones(1, 2, 3), torch.zeros(1, 2, 3)]
    student = [torch.ones(1, 2, 3), torch.full((1, 2, 3), 9.0), torch.zeros(1, 2, 3)]
    loss = LayerDistillLoss()(student, teacher, [1], [True, False, True], identity)
    assert float(loss) == 0.0  # layer 1 is dead; layer 0 (all ones) matches teacher layer 1 exactly


def test_teacher_keeps_its_structure_after_student_surgery():
    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4, distill=True), total_steps=100)
    _randomise_adapters(controller)
    inputs = batch()
    inputs.pop("labels")
    reference = copy.deepcopy(model)
    controller.snapshot_teacher()
    # the student keeps training and shrinks
    with torch.no_grad():
        for adapter in controller.adapters.values():
            adapter.lora_B.add_(1.0)
    controller.set_hard_masks(_random_keep(controller, seed=4))
    controller.prune_to_masks_()
    teacher_out = controller.teacher_forward(inputs)
    reference.eval()
    reference._aptune_controller.state.enabled = False
    with torch.no_grad():
        expected = reference(**inputs, output_hidden_states=True)
    torch.testing.assert_close(teacher_out.logits, expected.logits, rtol=1e-5, atol=1e-6)
    assert teacher_out.hidden_states[-1].shape[-1] == model.config.hidden_size
    assert controller.teacher.extra_bytes(model) > 0
    # the student now runs at its pruned size, and the transform maps it to the teacher width
    student = model(**inputs, output_hidden_states=True)
    assert student.hidden_states[-1].shape[-1] == controller.layout.hidden_size
    assert controller.transform(student.hidden_states[-1]).shape[-1] == model.config.hidden_size


def test_distillation_loss_mixes_with_mu():
    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4, distill=True), total_steps=100)
    controller.snapshot_teacher()
    inputs = batch()
    model.train()
    teacher_out = controller.teacher_forward(inputs)
    out = model(**inputs, output_hidden_states=True)
    controller.step_count = controller.schedule.end  # mu == 1: pure distillation
    loss, parts = controller.distillation_loss(out, teacher_out, out.loss, inputs)
    assert parts.mu == 1.0
    torch.testing.assert_close(loss, torch.tensor(0.1 * parts.pred + 0.9 * parts.layer), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert controller.transform.lora_A.grad is not None


def _hand_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-position KL(p_t || p_s) at temperature tau, times tau**2, written out by hand."""
    p_t = torch.softmax(teacher / tau, dim=-1)
    return (p_t * (torch.log(p_t) - torch.log_softmax(student / tau, dim=-1))).sum(-1) * tau**2


def test_kl_factor_applies_to_per_example_predictions_only():
    from types import SimpleNamespace

    model = tiny_bert()
    config = aptune.AptConfig(target_density=0.4, distill=True, kl_scale=10.0, token_kl_scale=1.0)
    controller = aptune.prepare_(model, config, total_steps=100)
    controller.step_count = controller.schedule.end
    tau = config.temperature
    gen = torch.Generator().manual_seed(3)
    task_loss = torch.tensor(0.0)

    # classification: (batch, classes), factor 10
    s, t = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    _, parts = controller.distillation_loss(
        SimpleNamespace(logits=s), SimpleNamespace(logits=t), task_loss, {"attention_mask": torch.ones(4, 6)}
    )
    assert abs(parts.pred - 10.0 * _hand_kl(s, t, tau).mean().item()) < 1e-5

    # token level: (batch, T, vocab), padded positions excluded, no factor
    s, t = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    _, parts = controller.distillation_loss(
        SimpleNamespace(logits=s), SimpleNamespace(logits=t), task_loss, {"attention_mask": mask}
    )
    per_position = _hand_kl(s, t, tau)
    expected = per_position[mask.bool()].mean().item()
    assert abs(parts.pred - expected) < 1e-5


def test_self_distiller_mixes_with_the_mu_and_alive_layers_it_is_given():
    from types import SimpleNamespace

    from aptune.distill import DistillTransform, SelfDistiller

    config = aptune.AptConfig(distill=True, kl_scale=10.0, alpha_pred=0.25, alpha_layer=0.75)
    transform = DistillTransform(3, rank=2)  # identity at start: Tr(h) == h
    distiller = SelfDistiller(config, transform, torch.Generator().manual_seed(0), encoder_decoder=False)
    gen = torch.Generator().manual_seed(5)
    s_logits, t_logits = torch.randn(4, 2, generator=gen), torch.randn(4, 2, generator=gen)
    zeros, ones = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    # embeddings, then one state per layer; every teacher layer is sampled (3 layers, 4 blocks asked).
    # Layer 0 matches (0); student layer 1 is dead, so teacher layer 1 (ones) takes the better of
    # student layers 0 (zeros, MSE 1) and 2 (ones, MSE 0); layer 2 is off by one everywhere (1).
    student = SimpleNamespace(logits=s_logits, hidden_states=[zeros, zeros, 9 * ones, ones])
    teacher = SimpleNamespace(logits=t_logits, hidden_states=[zeros, zeros, ones, zeros])
    task = torch.tensor(2.0)
    loss, parts = distiller.loss(student, teacher, task, mu=0.4, alive={None: [True, False, True]})
    pred = 10.0 * _hand_kl(s_logits, t_logits, config.temperature).mean()
    torch.testing.assert_close(torch.tensor(parts.pred), pred)
    assert parts.layer == 1.0 and parts.mu == 0.4 and distiller.last_parts is parts
    torch.testing.assert_close(loss, 0.4 * (0.25 * pred + 0.75 * 1.0) + 0.6 * task)
    # told that layer 1 is alive, the distiller matches it directly: MSE(9, 1) = 64 more
    _, parts = distiller.loss(student, teacher, task, mu=0.4, alive={None: [True, True, True]})
    assert parts.layer == 65.0
