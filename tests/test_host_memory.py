"""Host-memory housekeeping: the pinned mmap threshold really returns freed activations to the OS."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aptune import host_memory

glibc_only = pytest.mark.skipif(host_memory._glibc() is None, reason="needs Linux with glibc")

# Allocates and frees a 16 MiB tensor twice, then prints the resident memory growth in MiB. With
# glibc's dynamic threshold the first free raises the threshold to 16 MiB, so the second tensor
# comes from the heap and stays resident after its free; with a pinned threshold both are mapped
# separately and returned.
_PROBE = """
import json, sys, torch
from aptune.host_memory import pin_mmap_threshold
from aptune.bench.measure import current_rss_mb
pinned = pin_mmap_threshold()
for _ in range(3):
    torch.ones(64)
base = current_rss_mb()
for _ in range(2):
    block = torch.ones(4 * 1024 * 1024)
    del block
print(json.dumps({"pinned": pinned, "growth_mb": current_rss_mb() - base}))
"""


def _probe(setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    env["APTUNE_PIN_MMAP_THRESHOLD"] = setting
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_pinned_threshold_returns_freed_activations_and_default_keeps_them():
    pinned = _probe("")
    assert pinned["pinned"] == host_memory.DEFAULT_MMAP_THRESHOLD
    assert pinned["growth_mb"] < 4
    unpinned = _probe("0")
    assert unpinned["pinned"] is None
    assert unpinned["growth_mb"] > 12  # the control: glibc's default keeps the second block


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("APTUNE_PIN_MMAP_THRESHOLD", "lots")
    with pytest.raises(ValueError, match="APTUNE_PIN_MMAP_THRESHOLD"):
        host_memory.pin_mmap_threshold()


def test_user_malloc_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert host_memory.pin_mmap_threshold(1 << 20) is None


def test_file_backed_ranges_reads_only_file_mappings(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f0000000000-7f0000100000 r--s 00000000 08:01 1234 /data/model.safetensors\n"
        "55d000000000-55d000021000 rw-p 00000000 00:00 0 [heap]\n"
        "7f0000200000-7f0000300000 rw-p 00000000 00:00 0 \n"
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n",
        encoding="utf-8",
    )
    assert host_memory.file_backed_ranges(maps) == [(0x7F0000000000, 0x7F0000100000)]
    assert host_memory.file_backed_ranges(tmp_path / "missing") == []


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps (Linux)")
def test_loaded_checkpoint_tensors_get_their_own_memory_and_keep_identity(tmp_path):
    import torch
    from transformers import LlamaForCausalLM

    from test_llama import tiny_llama

    tiny_llama().save_pretrained(tmp_path)  # safetensors, loaded back as views of a file mapping
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    ranges = host_memory.file_backed_ranges()

    def in_file(t: torch.Tensor) -> bool:
        return any(start <= t.data_ptr() < end for start, end in ranges)

    params = dict(model.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    mapped = [name for name, p in params.items() if in_file(p)]
    assert mapped, "the control: transformers should map the checkpoint file"
    copied = host_memory.own_file_backed_tensors_(model)
    assert copied == sum(params[n].numel() * params[n].element_size() for n in mapped)
    ranges = host_memory.file_backed_ranges()
    assert not [name for name, p in model.named_parameters() if in_file(p)]
    for name, p in model.named_parameters():
        assert p is params[name]
        torch.testing.assert_close(p, before[name], rtol=0, atol=0)
    assert host_memory.own_file_backed_tensors_(model) == 0
