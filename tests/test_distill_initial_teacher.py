"""distill_teacher="initial": one teacher, the model before any pruning, even when tuning prunes nothing."""

import copy
import dataclasses

import pytest
import torch
from transformers import TrainingArguments

import aptune
from aptune.distill import DISTILL_MODULE_NAME
from aptune.errors import ConfigError
from test_llama import _causal_lm_dataset, _inputs, tiny_llama
from tiny import tiny_bert

# the decoder default prunes everything before tuning, so no pruning window opens during tuning
_CONFIG = aptune.AptConfig(
    target_density=0.5, num_events=2, initial_rank=2, distill=True, distill_teacher="initial"
)


def _train(model, config, tmp_path, steps=12, **training_args):
    # AptTrainer on the toy causal-LM data; ``training_args`` add to or override the arguments below
    args = TrainingArguments(
        str(tmp_path / "run"),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        logging_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        **training_args,
    )
    trainer = aptune.AptTrainer(model=model, args=args, apt_config=config, train_dataset=_causal_lm_dataset())
    trainer.train()
    return trainer


def test_the_teacher_is_the_unpruned_model_and_outlives_the_pruning():
    torch.manual_seed(0)
    model = tiny_llama()
    reference = copy.deepcopy(model).eval()  # the pretrained model, never prepared
    controller = aptune.prepare_(model, _CONFIG, total_steps=40)
    data = _causal_lm_dataset(16)
    batches = [{k: torch.tensor(data[i : i + 4][k]) for k in data.column_names} for i in range(0, 16, 4)]
    controller.calibrate_and_prune_(batches)
    assert controller.density() <= 0.5 + 1e-6  # the student was pruned before tuning
    inputs = _inputs()
    with torch.no_grad():
        expected = reference(**inputs).logits
        taught = controller.teacher_forward(inputs).logits
        student = model.eval()(**inputs).logits
    # the adapters start at zero output, so the teacher computes what the pretrained model does
    torch.testing.assert_close(taught, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(student, expected, atol=1e-3)
    # the teacher still holds the frozen tensors that the student's pruning replaced
    frozen = {
        n: p
        for n, p in model.named_parameters()
        if not p.requires_grad and not n.startswith(DISTILL_MODULE_NAME)
    }
    replaced = [n for n, p in frozen.items() if controller.teacher.tensors[n].data_ptr() != p.data_ptr()]
    assert replaced and all(controller.teacher.tensors[n].numel() > frozen[n].numel() for n in replaced)


def test_a_trainer_run_distils_from_it_until_distill_end(tmp_path):
    trainer = _train(tiny_llama(), dataclasses.replace(_CONFIG, distill_end=0.5), tmp_path)
    controller = trainer.apt_controller
    assert controller.density() <= 0.5 + 1e-6
    assert controller.teacher is None  # released at distill_end
    logged = [h for h in trainer.state.log_history if "distill_pred" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["distill_pred"])) for h in logged)
    assert any(h["mu"] > 0 for h in logged)
    assert max(h["step"] for h in logged) <= 6


def test_events_teacher_still_needs_pruning_left_for_tuning():
    with pytest.raises(ConfigError, match="distill_teacher='initial'"):
        aptune.prepare_(tiny_llama(), dataclasses.replace(_CONFIG, distill_teacher="events"), total_steps=40)


def test_an_encoder_gets_its_teacher_before_the_first_pruning_event():
    model = tiny_bert()
    # a classifier's head starts untrained, so only the hidden states are matched
    config = dataclasses.replace(_CONFIG, target_density=0.4, alpha_pred=0.0)
    controller = aptune.prepare_(model, config, total_steps=40)
    assert controller.teacher is not None
    names = dict(model.named_parameters())
    # frozen tensors are shared with the student until surgery replaces them
    frozen = [n for n, p in names.items() if not p.requires_grad and not n.startswith(DISTILL_MODULE_NAME)]
    assert frozen and all(controller.teacher.tensors[n].data_ptr() == names[n].data_ptr() for n in frozen)


def test_predictions_of_an_untrained_task_head_are_refused():
    model = tiny_bert()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ConfigError, match=r"task head \(.*classifier.*\) starts untrained.*alpha_pred=0"):
        aptune.prepare_(model, dataclasses.replace(_CONFIG, target_density=0.4), total_steps=40)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # left as it was


def test_without_distillation_no_teacher_is_taken():
    controller = aptune.prepare_(tiny_llama(), dataclasses.replace(_CONFIG, distill=False), total_steps=40)
    assert controller.teacher is None


def test_an_unknown_teacher_is_refused():
    with pytest.raises(ConfigError, match="distill_teacher"):
        aptune.prepare_(tiny_llama(), dataclasses.replace(_CONFIG, distill_teacher="dense"), total_steps=40)


def test_a_run_resumed_after_distill_end_gets_no_teacher_back():
    finished = aptune.prepare_(tiny_llama(), _CONFIG, total_steps=40)
    finished.distiller.release()  # what the run did at distill_end
    state = finished.state_dict()
    resumed = aptune.prepare_(tiny_llama(), _CONFIG, total_steps=40)
    assert resumed.teacher is not None  # the fresh model's own initial snapshot
    resumed.load_state_dict(state)
    assert resumed.teacher is None
