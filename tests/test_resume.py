"""A run killed with SIGKILL inside a pruning window resumes to the same masks and logits."""

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
        {"logits": logits, "hidden": controller.ids.hidden, "units": controller.ids.units,
         "neurons": controller.ids.neurons, "ranks": controller.ranks(), "events": len(controller.events),
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
