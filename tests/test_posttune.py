"""The post-distillation phase: best dev checkpoint restored, 0.1x the peak rate after a re-warm-up,
structure frozen; resumable; absent by default."""

import json

import datasets
import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

import aptune
from aptune.trainer import POSTTUNE_DIR, resolve_checkpoint
from tiny import tiny_bert

MAIN_STEPS, POST_STEPS, PEAK_LR = 60, 20, 5e-3
# the selection metric of every evaluation in call order: main run at steps 10..60, the final model
# before the phase, the phase's evaluations at its steps 10 and 20, the model after the phase
SCORES = [0.1, 0.95, 0.6, 0.9, 0.5, 0.4, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3]


def _dataset(n=64, length=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (n, length), generator=generator)
    return datasets.Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * length] * n, "labels": (ids[:, 1] % 3).tolist()}
    )


def _args(folder, **overrides):
    options = {
        "max_steps": MAIN_STEPS,
        "per_device_train_batch_size": 8,
        "learning_rate": PEAK_LR,
        "logging_steps": 10,
        "eval_strategy": "steps",
        "eval_steps": 10,
        "metric_for_best_model": "score",
        "greater_is_better": True,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        "dataloader_pin_memory": False,
    }
    return TrainingArguments(str(folder), **{**options, **overrides})


class Scripted:
    """compute_metrics that reports the next scripted score, whatever the predictions."""

    def __init__(self):
        self.calls = 0

    def __call__(self, eval_pred):
        score = SCORES[min(self.calls, len(SCORES) - 1)]
        self.calls += 1
        return {"score": score}


class Watch(TrainerCallback):
    """Trainable tensors at every main-run evaluation, and what the phase starts from and does."""

    def __init__(self):
        self.trainer = None
        self.at_eval = {}
        self.post_start = None
        self.post_structure = None
        self.post_lrs = []
        self.optimizers = set()

    def _trainable(self):
        return {n: p.detach().clone() for n, p in self.trainer.model.named_parameters() if p.requires_grad}

    def on_evaluate(self, args, state, control, **kwargs):
        if not self.trainer.apt_controller.posttuning:
            self.at_eval[state.global_step] = self._trainable()

    def on_train_begin(self, args, state, control, **kwargs):
        controller = self.trainer.apt_controller
        if controller.posttuning:
            self.post_start = self._trainable()
            self.post_structure = (
                controller.structure(),
                controller.ranks(),
                controller.transform.rank,
                len(controller.events),
                controller.step_count,
            )

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.optimizers.add(id(self.trainer.optimizer))
        if self.trainer.apt_controller.posttuning:
            self.post_lrs.append(self.trainer.optimizer.param_groups[0]["lr"])


def _trainer(folder, config, **args):
    watch = Watch()
    trainer = aptune.AptTrainer(
        model=tiny_bert(),
        args=_args(folder, **args),
        apt_config=config,
        train_dataset=_dataset(),
        eval_dataset=_dataset(16, seed=1),
        compute_metrics=Scripted(),
        callbacks=[watch],
    )
    watch.trainer = trainer
    return trainer, watch


CONFIG = aptune.AptConfig(
    target_density=0.5,
    num_events=3,
    distill=True,
    distill_rank_growth=True,
    posttune_steps=POST_STEPS,
    posttune_warmup=0.25,
)


def test_posttune_restores_the_best_checkpoint_and_tunes_at_a_tenth_of_the_rate(tmp_path):
    trainer, watch = _trainer(tmp_path / "run", CONFIG)
    trainer.train()
    controller = trainer.apt_controller
    assert controller.schedule.end == 24  # the structure is final from step 24 on
    # step 20 scored best (0.95) but came before the last event; step 40 is the best after it
    record = controller.posttune_record
    assert record["restored_step"] == 40 and record["restored_value"] == 0.9
    assert record["final_value"] == 0.4 and record["after_value"] == 0.3
    assert record["metric"] == "eval_score" and record["steps"] == POST_STEPS
    for name, tensor in watch.post_start.items():
        torch.testing.assert_close(tensor, watch.at_eval[40][name], rtol=0, atol=0)
    assert any(not torch.equal(watch.post_start[n], watch.at_eval[60][n]) for n in watch.post_start)
    # a fresh optimizer; the rate warms up again (5 steps) to 0.1 x the peak, then decays linearly
    assert len(watch.optimizers) == 2
    peak, warmup = 0.1 * PEAK_LR, 5
    expected = [
        peak * (i / warmup if i < warmup else (POST_STEPS - i) / (POST_STEPS - warmup))
        for i in range(POST_STEPS)
    ]
    assert record["learning_rate"] == peak and record["warmup_steps"] == warmup
    torch.testing.assert_close(
        torch.tensor(watch.post_lrs, dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64),
        rtol=1e-9,
        atol=1e-15,
    )
    # the structure is frozen: no pruning, no rank growth (adapters or transform), no controller steps
    structure, ranks, transform_rank, events, steps = watch.post_structure
    assert controller.structure() == structure and controller.ranks() == ranks
    assert controller.transform.rank == transform_rank > CONFIG.initial_rank  # grew during the main run
    assert len(controller.events) == events and controller.step_count == steps == MAIN_STEPS
    assert [e["transform_rank"] for e in controller.events] == sorted(
        e["transform_rank"] for e in controller.events
    )
    assert controller.teacher is None and not controller.state.collector.active
    assert trainer.posttune_output.global_step == POST_STEPS
    assert not any("distill_layer" in h for h in trainer.state.log_history)


def test_posttune_resumes_from_a_checkpoint_of_the_phase(tmp_path):
    full, _ = _trainer(tmp_path / "full", CONFIG, save_strategy="steps", save_steps=10)
    full.train()
    checkpoint = tmp_path / "full" / POSTTUNE_DIR / "checkpoint-10"
    assert checkpoint.is_dir()
    resumed, watch = _trainer(tmp_path / "full", CONFIG, save_strategy="steps", save_steps=10)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resolve_checkpoint("last", tmp_path / "full") == str(
        tmp_path / "full" / POSTTUNE_DIR / "checkpoint-20"
    )
    controller = resumed.apt_controller
    assert controller.posttuning and controller.structure() == full.apt_controller.structure()
    assert controller.posttune_record["restored_step"] == 40
    assert len(watch.post_lrs) == POST_STEPS - 10
    inputs = {k: torch.tensor(v) for k, v in _dataset(4, seed=3)[:4].items() if k != "labels"}
    full.model.eval()
    resumed.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(resumed.model(**inputs).logits, full.model(**inputs).logits)


def test_no_posttune_by_default(tmp_path):
    config = aptune.AptConfig(target_density=0.5, num_events=3)
    assert config.posttune_steps == 0 and not config.distill_rank_growth
    trainer, watch = _trainer(tmp_path / "run", config)
    trainer.train()
    assert trainer.posttune_steps() == 0 and trainer.posttune_output is None
    assert watch.post_start is None and len(watch.optimizers) == 1
    assert trainer.apt_controller.posttune_record == {} and not trainer.apt_controller.posttuning
    assert trainer.state.global_step == MAIN_STEPS
    assert not (tmp_path / "run" / POSTTUNE_DIR).exists()


def test_posttune_length_and_bad_values():
    from aptune.errors import ConfigError

    assert aptune.AptConfig(posttune_steps=0.25).posttune_length(200) == 50
    assert aptune.AptConfig(posttune_steps=30).posttune_length(200) == 30
    for bad in (
        {"posttune_steps": -1},
        {"posttune_steps": 1.5},
        {"posttune_lr_scale": 0.0},
        {"posttune_warmup": 1.0},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            aptune.AptConfig(**bad)


def test_resume_last_prefers_a_checkpoint_of_the_phase(tmp_path):
    from aptune.checkpoint import STATE_JSON, STATE_TENSORS

    for folder in (tmp_path / "checkpoint-60", tmp_path / POSTTUNE_DIR / "checkpoint-10"):
        folder.mkdir(parents=True)
        for name in (STATE_JSON, STATE_TENSORS, "trainer_state.json"):
            (folder / name).write_text("{}")
    assert resolve_checkpoint("last", tmp_path) == str(tmp_path / POSTTUNE_DIR / "checkpoint-10")
    assert resolve_checkpoint(str(tmp_path / "checkpoint-60"), tmp_path) == str(tmp_path / "checkpoint-60")


@pytest.mark.integration
def test_cli_posttune_steps_are_recorded_in_the_report(tmp_path, capsys):
    from transformers import BertTokenizerFast

    from aptune.cli import main

    words = ["good", "great", "bad", "awful", "movie", "film", "the", "was", "very"]
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n"
    )
    BertTokenizerFast(vocab=str(model_dir / "vocab.txt")).save_pretrained(model_dir)
    tiny_bert(num_labels=2).save_pretrained(model_dir)
    texts = ["the movie was very good,pos", "great film,pos", "the movie was awful,neg", "bad film,neg"]
    for name, n in (("train", 48), ("dev", 16)):
        (tmp_path / f"{name}.csv").write_text(
            "text,label\n" + "\n".join(texts[i % 4] for i in range(n)) + "\n"
        )
    out = tmp_path / "run"
    main_args = ["train", "--model", str(model_dir), "--train-file", str(tmp_path / "train.csv")]
    main_args += ["--eval-file", str(tmp_path / "dev.csv"), "--output-dir", str(out), "--max-steps", "30"]
    main_args += ["--batch-size", "8", "--num-events", "3", "--target-density", "0.5", "--max-length", "16"]
    main_args += ["--evaluations", "3", "--learning-rate", "0.002", "--posttune-steps", "10"]
    main_args += ["--distill", "--distill-rank-growth"]
    try:
        main(main_args)
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err[-2000:]
    report = json.loads((out / "report.json").read_text())
    record = report["posttune"]
    assert record["steps"] == 10 and record["metric"] == "eval_accuracy"
    assert record["learning_rate"] == pytest.approx(0.0002)
    assert record["restored_step"] in (20, 30) and record["after_value"] is not None
    assert max(row["step"] for row in report["steps"]) == 40  # the phase's steps follow the main run's
    assert "posttune" in report["phase_times"]
    assert all("transform_rank" in event for event in report["events"])


def test_best_checkpoint_is_kept_only_once_the_structure_is_final_and_survives_a_save(tmp_path):
    from aptune.checkpoint import load_controller_state, save_controller_state

    config = aptune.AptConfig(target_density=0.5, num_events=3, posttune_steps=5)
    controller = aptune.prepare_(tiny_bert(), config, total_steps=MAIN_STEPS)
    adapter = next(iter(controller.adapters.values()))
    controller.step_count = controller.schedule.end - 1
    assert not controller.remember_best_("eval_loss", 0.1, greater_is_better=False)  # an event is still due
    controller.step_count = controller.schedule.end
    with torch.no_grad():
        adapter.lora_B.fill_(0.5)
    assert controller.remember_best_("eval_loss", 0.3, greater_is_better=False)
    assert not controller.remember_best_("eval_loss", 0.4, greater_is_better=False)  # worse
    save_controller_state(controller, tmp_path / "checkpoint")
    with torch.no_grad():
        adapter.lora_B.fill_(-1.0)
    restored = aptune.prepare_(tiny_bert(), config, total_steps=MAIN_STEPS)
    load_controller_state(restored, tmp_path / "checkpoint")
    assert restored.best["step"] == controller.schedule.end and restored.best["value"] == 0.3
    for controller_ in (controller, restored):
        info = controller_.restore_best_()
        assert info == {"step": controller.schedule.end, "metric": "eval_loss", "value": 0.3}
        path = next(iter(controller_.adapters))
        assert torch.all(controller_.adapters[path].lora_B == 0.5)
    restored.start_posttune_()
    assert restored.posttuning and restored.best is None
    assert restored.step(None) is None and restored.step_count == controller.schedule.end
