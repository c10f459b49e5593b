"""A run killed with SIGKILL inside a pruning window resumes to the same masks and logits."""

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import aptune
from aptune.checkpoint import load_controller_state, save_controller_state

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import datasets, torch
    sys.path.insert(0, sys.argv[4])
    from tiny import tiny_bert
    from transformers import TrainerCallback, TrainingArguments
    import aptune

    out, mode, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 120, (64, 12), generator=generator)
    data = datasets.Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * 12] * 64, "labels": (ids[:, 1] % 3).tolist()}
    )
    args = TrainingArguments(
        out, max_steps=60, per_device_train_batch_size=8, learning_rate=5e-3, save_strategy="steps",
        save_steps=5, report_to=[], use_cpu=True, disable_tqdm=True, seed=0, logging_steps=100,
        dataloader_pin_memory=False,
    )

    class Kill(TrainerCallback):
        first_step = None

        def on_step_begin(self, args, state, control, **kwargs):
            if Kill.first_step is None:
                Kill.first_step = state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    config = aptune.AptConfig(target_density=0.5, num_events=3, distill=True)
    trainer = aptune.AptTrainer(
        model=tiny_bert(), args=args, apt_config=config, train_dataset=data,
        callbacks=[Kill()],
    )
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    model, controller = trainer.model.eval(), trainer.apt_controller
    with torch.no_grad():
        logits = model(input_ids=ids[:8], attention_mask=torch.ones_like(ids[:8])).logits
    torch.save(
        {"logits": logits, "hidden": controller.blocks.hidden, "units": controller.blocks.units,
         "neurons": controller.blocks.neurons, "ranks": controller.ranks(), "events": len(controller.events),
         "first_step": Kill.first_step},
        os.path.join(out, "final.pt"),
    )
    """
)


def _run(folder: Path, mode: str, kill_at: int) -> subprocess.CompletedProcess:
    script = folder.parent / "train_script.py"
    script.write_text(SCRIPT)
    tests_dir = str(Path(__file__).parent)
    return subprocess.run(
        [sys.executable, str(script), str(folder), mode, str(kill_at), tests_dir],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.integration
def test_sigkill_mid_window_then_resume_matches_uninterrupted_run(tmp_path):
    straight = _run(tmp_path / "straight", "fresh", 0)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _run(tmp_path / "killed", "fresh", 16)
    assert killed.returncode == -9  # SIGKILL: no chance to clean up
    checkpoints = sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-10", "checkpoint-15", "checkpoint-5"]
    resumed = _run(tmp_path / "killed", "resume", 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    assert torch.equal(a["hidden"], b["hidden"])
    assert all(torch.equal(x, y) for x, y in zip(a["units"], b["units"], strict=True))
    assert all(torch.equal(x, y) for x, y in zip(a["neurons"], b["neurons"], strict=True))
    assert a["ranks"] == b["ranks"] and a["events"] == b["events"] == 3
    assert a["first_step"] == 0 and b["first_step"] == 15  # the resumed run really started at step 15
    torch.testing.assert_close(b["logits"], a["logits"], rtol=1e-5, atol=1e-5)


def test_resume_from_a_different_config_is_refused(tmp_path):
    from tiny import tiny_bert

    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.5), total_steps=100)
    save_controller_state(controller, tmp_path)
    other = aptune.prepare_(tiny_bert(), aptune.AptConfig(target_density=0.3), total_steps=100)
    with pytest.raises(aptune.ConfigError, match=r"different AptConfig.*target_density"):
        load_controller_state(other, tmp_path)
    with pytest.raises(aptune.ConfigError, match="no aptune controller state"):
        load_controller_state(other, tmp_path / "missing")


def test_a_state_written_before_an_option_existed_resumes_as_its_default(tmp_path):
    import json

    from tiny import tiny_bert

    config = aptune.AptConfig(target_density=0.5)
    save_controller_state(aptune.prepare_(tiny_bert(), config, total_steps=100), tmp_path)
    meta_path = tmp_path / "aptune_state.json"
    meta = json.loads(meta_path.read_text())
    del meta["state"]["config"]["min_neurons_share"]  # as written by a version without the option
    meta_path.write_text(json.dumps(meta))
    load_controller_state(aptune.prepare_(tiny_bert(), config, total_steps=100), tmp_path)
    other = aptune.AptConfig(target_density=0.5, min_neurons_share=0.5)
    with pytest.raises(aptune.ConfigError, match=r"different AptConfig \(differs in: min_neurons_share\)"):
        load_controller_state(aptune.prepare_(tiny_bert(), other, total_steps=100), tmp_path)


def test_a_decoder_state_of_config_format_1_resumes_without_copy_heads(tmp_path):
    """Format 1 wrote None for "no protected unit"; the default protects since format 2."""
    import json

    from test_llama import tiny_llama

    def prepared(config):
        return aptune.prepare_(tiny_llama(), config, total_steps=100)

    off = aptune.AptConfig(target_density=0.5, keep_copy_heads=0.0)
    save_controller_state(prepared(off), tmp_path)
    meta_path = tmp_path / "aptune_state.json"
    meta = json.loads(meta_path.read_text())
    meta["state"]["config"].update(format_version=1, keep_copy_heads=None)
    meta_path.write_text(json.dumps(meta))
    load_controller_state(prepared(off), tmp_path)
    with pytest.raises(
        aptune.ConfigError,
        match=r"differs in: keep_copy_heads\); resume with the same config \(keep_copy_heads=0\.0\)",
    ):
        load_controller_state(prepared(aptune.AptConfig(target_density=0.5)), tmp_path)


def test_interrupted_checkpoint_folders_are_skipped(tmp_path):
    from aptune.checkpoint import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path) is None
    for step, complete in ((5, True), (10, True), (15, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        if complete:
            (folder / "aptune_state.json").write_text("{}")
            (folder / "aptune_state.safetensors").write_bytes(b"")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"


def _train_step(model, controller, optimizer, seed):
    from tiny import batch

    inputs = batch(seed=seed)
    if controller.distilling:
        teacher = controller.teacher_forward(inputs)
        out = model(**inputs, output_hidden_states=True)
        loss, _ = controller.distillation_loss(out, teacher, out.loss, inputs)
    else:
        loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    controller.step(optimizer)
    optimizer.zero_grad()


def test_state_saved_inside_a_window_resumes_in_process(tmp_path):
    """Saved mid-window (soft masks, a teacher, grown ranks), reloaded on a fresh model: same run."""
    from tiny import batch, tiny_bert

    config = aptune.AptConfig(target_density=0.5, num_events=3, distill=True)

    def fresh():
        model = tiny_bert().train()
        controller = aptune.prepare_(model, config, total_steps=60)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
        return model, controller, optimizer

    model, controller, optimizer = fresh()
    schedule = controller.schedule
    stop = next(s for s in range(schedule.events[0] + 1, 61) if schedule.mask_move(s) == "soft")
    for step in range(1, stop + 1):
        _train_step(model, controller, optimizer, seed=step)
    assert controller.distilling and controller.events and any(m is not None for m in controller.state.heads)
    save_controller_state(controller, tmp_path)
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    model2, controller2, optimizer2 = fresh()
    load_controller_state(controller2, tmp_path)
    model2.load_state_dict(weights)
    optimizer2 = torch.optim.AdamW([p for p in model2.parameters() if p.requires_grad], lr=5e-3)
    optimizer2.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # no shared state tensors
    assert controller2.structure() == controller.structure() and controller2.ranks() == controller.ranks()
    assert controller2.step_count == stop and len(controller2.events) == len(controller.events)
    for a, b in zip(controller.state.heads, controller2.state.heads, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert controller2.scores.adapter_importance == controller.scores.adapter_importance
    assert sorted(controller2.teacher.tensors) == sorted(controller.teacher.tensors)
    for step in range(stop + 1, 61):
        _train_step(model, controller, optimizer, seed=step)
        _train_step(model2, controller2, optimizer2, seed=step)
    assert controller2.structure() == controller.structure() and controller2.ranks() == controller.ranks()
    inputs = batch(seed=99)
    inputs.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(model2.eval()(**inputs).logits, model.eval()(**inputs).logits)


def _recorded_run(folder: Path, stop_at: int | None = None, resume: str | None = None):
    """A tiny APT run with a report recorder and a checkpoint every 4 steps (optionally stopped early)."""
    import datasets
    from transformers import TrainerCallback, TrainingArguments

    from aptune.report import RunRecorder
    from tiny import tiny_bert

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_at is not None and state.global_step == stop_at:
                control.should_training_stop = True

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 120, (48, 12), generator=generator)
    rows = {"input_ids": ids.tolist(), "attention_mask": [[1] * 12] * 48, "labels": (ids[:, 1] % 3).tolist()}
    data = datasets.Dataset.from_dict(rows)
    args = TrainingArguments(
        str(folder), max_steps=24, per_device_train_batch_size=8, learning_rate=5e-3, save_strategy="steps",
        save_steps=4, eval_strategy="steps", eval_steps=6, report_to=[], use_cpu=True, disable_tqdm=True,
        seed=0, logging_steps=100, dataloader_pin_memory=False,
    )  # fmt: skip
    recorder = RunRecorder({"run": "tiny"}, {"name": "tiny"})
    trainer = aptune.AptTrainer(
        model=tiny_bert(),
        args=args,
        apt_config=aptune.AptConfig(target_density=0.5, num_events=3, distill=False),
        train_dataset=data,
        eval_dataset=data.select(range(16)),
        recorder=recorder,
        callbacks=[StopAt()],
    )
    trainer.train(resume_from_checkpoint=resume)
    return recorder.to_dict()


def test_the_report_of_a_resumed_run_covers_the_whole_run(tmp_path):
    straight = _recorded_run(tmp_path / "straight")
    stopped = _recorded_run(tmp_path / "cut", stop_at=10)
    assert [row["step"] for row in stopped["steps"]] == list(range(1, 11))
    resumed = _recorded_run(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-8"))
    # the steps after the checkpoint come once, from the resumed process (steps 9 and 10 are redone)
    assert [row["step"] for row in resumed["steps"]] == [row["step"] for row in straight["steps"]]
    assert [row["step"] for row in resumed["steps"]] == list(range(1, 25))
    assert [e["step"] for e in resumed["events"]] == [e["step"] for e in straight["events"]]
    assert [e["removed"] for e in resumed["events"]] == [e["removed"] for e in straight["events"]]
    assert [e["step"] for e in resumed["evals"]] == [e["step"] for e in straight["evals"]] == [6, 12, 18, 24]
    assert len(resumed["salience_history"]) == len(straight["salience_history"])
    assert resumed["resumed"] == [{"from_step": 8}] and "resumed" not in straight
    # the phase clocks continue from the saved totals instead of starting again at zero
    saved = aptune.checkpoint.load_run_record(tmp_path / "cut" / "checkpoint-8")
    for phase, seconds in saved["phase_times"].items():
        assert resumed["phase_times"][phase] >= seconds
    assert resumed["summary"]["final_step"] == straight["summary"]["final_step"] == 24


def test_resuming_a_run_folder_of_config_format_1_names_the_option_to_pass(tmp_path):
    """A run started before copy-head protection became the default resumes only with it off."""
    import json

    from aptune.runner import APT_CONFIG_FILE, RUN_ARGS_FILE, RunArguments, _check_options

    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    written = {**aptune.AptConfig().to_dict(), "format_version": 1, "keep_copy_heads": None}
    (out / APT_CONFIG_FILE).write_text(json.dumps(written))
    (out / RUN_ARGS_FILE).write_text("{}")
    args = RunArguments(output_dir=str(out), resume_from_checkpoint=str(out / "checkpoints" / "checkpoint-5"))
    assert _check_options(args, aptune.AptConfig(keep_copy_heads=0.0), out) is not None
    with pytest.raises(aptune.ConfigError, match=r"differs in: keep_copy_heads\); .*--keep-copy-heads 0\.0"):
        _check_options(args, aptune.AptConfig(), out)
