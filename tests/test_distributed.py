"""Data-parallel runs (2 processes, gloo) make the same pruning decisions as one process."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

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


def _launch(tmp_path: Path, name: str, processes: int) -> list[dict]:
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
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
