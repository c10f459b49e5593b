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
