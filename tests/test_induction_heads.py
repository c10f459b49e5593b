"""The induction-head probe (benchmarks/induction_heads.py): its block rewrite and its group matching."""

from __future__ import annotations

import importlib.util
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
