"""Data-parallel runs (2 processes, gloo) make the same pruning decisions as one process."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from aptune.distributed import calibration_share
from aptune.errors import ConfigError

LOOP = textwrap.dedent(
    """
    import os, sys
    import torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[2])
    from tiny import tiny_bert
    import aptune
    from aptune.controller import DISTILL_MODULE_NAME
    from aptune.distributed import all_reduce_gradients_, close_process_group, exclude_from_ddp_

    out = sys.argv[1]
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = tiny_bert()
    config = aptune.AptConfig(target_density=0.5, num_events=3, distill=True)
    controller = aptune.prepare_(model, config, total_steps=40)
    exclude_from_ddp_(model, DISTILL_MODULE_NAME + ".")
    wrapper = model
    if world > 1:
        wrapper = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    data = torch.Generator().manual_seed(1)
    model.train()
    for step in range(40):
        ids = torch.randint(3, 120, (16, 12), generator=data)  # the global batch
        shard = slice(rank * 16 // world, (rank + 1) * 16 // world)
        part = ids[shard]
        inputs = {"input_ids": part, "attention_mask": torch.ones_like(part), "labels": part[:, 1] % 3}
        if controller.distilling:
            teacher = controller.teacher_forward(inputs)
            outputs = wrapper(**inputs, output_hidden_states=True)
            loss, _ = controller.distillation_loss(outputs, teacher, outputs.loss, inputs)
        else:
            loss = wrapper(**inputs).loss
        loss.backward()
        if controller.transform is not None:
            all_reduce_gradients_(controller.transform.parameters())
        optimizer.step()
        loss = outputs = teacher = None  # drop the graph before shapes change
        controller.step(optimizer, wrapper=wrapper if world > 1 else None)
        optimizer.zero_grad()
    model.eval()
    probe = torch.randint(3, 120, (4, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(input_ids=probe, attention_mask=torch.ones_like(probe)).logits
    torch.save(
        {"logits": logits, "checksums": [e["keep_checksum"] for e in controller.events],
         "density": controller.density()},
        os.path.join(out, f"final-{rank}.pt"),
    )
    close_process_group()
    """
)


# AptTrainer on a decoder: pruning before and during tuning, the chunked loss, distillation from
# the unpruned model; the global batch is 8 whatever the number of processes, and several processes
# also checkpoint their activations (torchrun with gradient checkpointing, as users combine them)
TRAINER_LOOP = textwrap.dedent(
    """
    import os, sys
    import torch
    sys.path.insert(0, sys.argv[2])
    from transformers import TrainingArguments
    from test_llama import VOCAB, _causal_lm_dataset, tiny_llama
    import aptune
    from aptune.distributed import close_process_group
    from aptune.runner import _checkpointing_argument

    out = sys.argv[1]
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    model = tiny_llama()
    config = aptune.AptConfig(
        target_density=0.5, pretune_density=0.75, num_events=2, initial_rank=2, distill=True,
        distill_teacher="initial", lm_loss_chunk=5, calibration_samples=16, damage_curves=0,
    )
    args = TrainingArguments(
        os.path.join(out, "run"), max_steps=12, per_device_train_batch_size=8 // world,
        learning_rate=5e-3, logging_steps=2, report_to=[], save_strategy="no", use_cpu=True,
        disable_tqdm=True, **_checkpointing_argument(TrainingArguments, world > 1),
    )
    trainer = aptune.AptTrainer(model=model, args=args, apt_config=config, train_dataset=_causal_lm_dataset())
    trainer.train()
    controller = trainer.apt_controller
    model.eval()
    probe = torch.randint(3, VOCAB, (4, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(input_ids=probe, attention_mask=torch.ones_like(probe)).logits
    torch.save(
        {"logits": logits, "checksums": [e["keep_checksum"] for e in controller.events],
         "density": controller.density(),
         "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]},
        os.path.join(out, f"final-{rank}.pt"),
    )
    close_process_group()
    """
)


# the calibration pass alone: the same 8 micro-batches of 2, dealt out to the processes in turn
CALIBRATION_LOOP = textwrap.dedent(
    """
    import os, sys
    import torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[2])
    from test_llama import _causal_lm_dataset, tiny_llama
    import aptune
    from aptune.distributed import close_process_group

    out = sys.argv[1]
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if world > 1:
        dist.init_process_group("gloo")
    model = tiny_llama()
    config = aptune.AptConfig(target_density=0.5, pretune_density=0.75, damage_curves=0)
    controller = aptune.prepare_(model, config, total_steps=40)
    data = _causal_lm_dataset(16)
    batches = [{k: torch.tensor(data[i : i + 2][k]) for k in data.column_names} for i in range(0, 16, 2)]
    scores = controller.calibrate_and_prune_(batches[rank::world])["scores"]  # the pass's summed salience
    torch.save({k: torch.tensor(v) for k, v in scores.items()}, os.path.join(out, f"final-{rank}.pt"))
    close_process_group()
    """
)


def _launch(tmp_path: Path, name: str, processes: int, loop: str = LOOP) -> list[dict]:
    script = tmp_path / f"{name}.py"
    script.write_text(loop)
    out = tmp_path / name
    out.mkdir()
    tests_dir = str(Path(__file__).parent)
    if processes == 1:
        command = [sys.executable, str(script), str(out), tests_dir]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_port",
            "29533",
            str(script),
            str(out),
            tests_dir,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(out / f"final-{r}.pt", weights_only=True) for r in range(processes)]


@pytest.mark.integration
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    (single,) = _launch(tmp_path, "one", 1)
    rank0, rank1 = _launch(tmp_path, "two", 2)
    assert rank0["checksums"] == rank1["checksums"]  # both ranks removed the same blocks at every event
    assert rank0["checksums"] == single["checksums"]  # ... and the same as one process
    assert len(single["checksums"]) == 3 and single["density"] <= 0.5 + 1e-6
    torch.testing.assert_close(rank0["logits"], rank1["logits"], rtol=0, atol=0)
    torch.testing.assert_close(rank0["logits"], single["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.integration
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_calibration_scores_of_two_processes_equal_one_process(tmp_path):
    """Each micro-batch is scored on its own, whichever process runs it, and the scores are summed."""
    (single,) = _launch(tmp_path, "one", 1, CALIBRATION_LOOP)
    rank0, rank1 = _launch(tmp_path, "two", 2, CALIBRATION_LOOP)
    for kind in ("heads", "neurons", "hidden"):
        assert float(single[kind].abs().sum()) > 0, kind  # scored, not an empty comparison
        torch.testing.assert_close(rank0[kind], rank1[kind], rtol=0, atol=0)
        torch.testing.assert_close(rank0[kind], single[kind], rtol=1e-5, atol=1e-9)


@pytest.mark.integration
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_trainer_on_two_processes_matches_one_process(tmp_path):
    """The calibration pass, the running salience, the chunked loss and its distillation under DDP
    (with gradient checkpointing) compute what one process computes on the same global batches."""
    (single,) = _launch(tmp_path, "one", 1, TRAINER_LOOP)
    rank0, rank1 = _launch(tmp_path, "two", 2, TRAINER_LOOP)
    # calibration and both events during tuning; the same blocks as one process at each
    assert len(single["checksums"]) == 3 and single["density"] <= 0.5 + 1e-6
    assert rank0["checksums"] == rank1["checksums"] == single["checksums"]
    # the logged losses include the steps after distillation, on the chunked cross-entropy alone
    assert len(single["losses"]) == 6
    torch.testing.assert_close(rank0["losses"], single["losses"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(rank0["logits"], rank1["logits"], rtol=0, atol=0)
    torch.testing.assert_close(rank0["logits"], single["logits"], rtol=1e-4, atol=1e-4)


def test_close_process_group_leaves_no_group_behind(tmp_path):
    """The CLI's shutdown destroys an active group and is a no-op when there is none."""
    import torch.distributed as dist

    from aptune.distributed import close_process_group

    close_process_group()  # nothing active: nothing to do
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert dist.is_initialized()
    close_process_group()
    assert not dist.is_initialized()


@pytest.mark.parametrize(("total", "world"), [(128, 2), (129, 2), (7, 3), (3, 3)])
def test_calibration_shares_sum_to_the_total_and_differ_by_at_most_one(total, world):
    shares = [calibration_share(total, world, rank) for rank in range(world)]
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1 and min(shares) >= 1


def test_fewer_calibration_examples_than_processes_is_refused():
    with pytest.raises(ConfigError, match="calibration_samples=2 is fewer than the 4 processes"):
        calibration_share(2, 4, 0)
