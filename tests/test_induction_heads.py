"""The induction-head probe (benchmarks/induction_heads.py): its block rewrite and its group matching."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

_SPEC = importlib.util.spec_from_file_location(
    "induction_heads", Path(__file__).resolve().parents[1] / "benchmarks" / "induction_heads.py"
)
induction_heads = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(induction_heads)


def test_repeat_second_half_copies_every_fourth_block_at_a_quarter() -> None:
    blocks = torch.arange(8 * 6).view(8, 6)
    out = induction_heads.repeat_second_half(blocks, 0.25)
    for row in range(8):
        expected = torch.cat([blocks[row, :3], blocks[row, :3]]) if row in (3, 7) else blocks[row]
        assert torch.equal(out[row], expected)


def test_kept_groups_are_found_in_a_pruned_and_tuned_key_projection() -> None:
    torch.manual_seed(0)
    head_dim, hidden = 4, 12
    base = {f"model.layers.{i}.self_attn.k_proj.weight": torch.randn(3 * head_dim, hidden) for i in range(3)}
    keep = [[0, 2], [], [1]]
    pruned = {}
    for i, groups in enumerate(keep):
        rows = [
            base[f"model.layers.{i}.self_attn.k_proj.weight"][g * head_dim : (g + 1) * head_dim]
            for g in groups
        ]
        block = torch.cat(rows) if rows else torch.zeros(0, hidden)
        pruned[f"model.layers.{i}.self_attn.k_proj.weight"] = block + 0.05 * torch.randn_like(block)
    found, weakest = induction_heads.kept_groups(base, pruned, 3, head_dim)
    assert found == keep
    assert 0.9 < weakest <= 1.0


def test_the_probe_finds_the_groups_a_pruned_export_kept(tmp_path) -> None:
    # reference: the controller's own record of the original ids of the units it kept
    import aptune
    from test_llama import tiny_llama

    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    model = tiny_llama()
    model.train()
    aptune.prepare_(model, aptune.AptConfig(target_density=0.4, damage_curves=0))
    controller = model._aptune_controller
    ids = torch.randint(3, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    controller.calibrate_and_prune_([{"input_ids": ids[i : i + 2], "labels": ids[i : i + 2]} for i in (0, 2)])
    kept = [units.tolist() for units in controller.blocks.units]
    assert kept != [[0, 1], [0, 1]], "the pruning must remove a group for this test to mean anything"
    aptune.export(model, controller, tmp_path / "small")
    out = tmp_path / "probe.json"
    assert (
        induction_heads.main([str(tmp_path / "base"), f"small={tmp_path / 'small'}", "--out", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    assert result["kept"]["small"] == kept
    assert len(result["group_scores"]) == 2 and len(result["group_scores"][0]) == 2
