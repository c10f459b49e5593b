"""Host (CPU) memory housekeeping for runs whose tensor shapes change while training.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a request below its *mmap
threshold* from the heap and keeps freed heap blocks for reuse; by default that threshold is
*dynamic*: every time a large, separately mapped block is freed, the threshold rises to its size
(up to 32 MiB). In a run with fixed shapes (plain LoRA) this works well: every step asks for the
same sizes, which the heap hands back. Pruning changes the sizes of the FFN and attention
activations at every event; blocks of the old sizes stay in the heap, fragmented, and the process
resident memory keeps growing after pruning although the model got smaller (MiniLM-L6, batch
16 x 128, 50 steps: peak RSS 1729 MB for APT vs 1493 MB for plain LoRA, from
``aptune bench --methods lora,apt --densities '' --ablations '' --seeds 0 --max-train-samples 800``).

`pin_mmap_threshold` fixes the threshold (4 MiB by default): activation-sized tensors (several MiB
each) are then mapped separately and go back to the operating system as soon as they are freed,
while the many small tensors still come from the heap. Mapping fresh pages for every large tensor
has a price: with the dense MiniLM-L6 shapes, peft LoRA's step is about 17 % slower pinned
(`benchmarks/allocator_ab.py`), while APT's step after pruning, with smaller tensors, is unchanged.
So the controller pins the threshold, on the CPU, at the first pruning event that removes something
while more pruning is to follow (steps before it run exactly as without aptune). A run pruned to
its target in one go (decoders' default: everything before tuning) changes its activation sizes
once, and the events after it only grow adapter ranks, so it keeps the C library's dynamic
threshold. Set ``APTUNE_PIN_MMAP_THRESHOLD=0`` to leave the allocator alone, or a number of bytes
to choose another threshold. A lower one trades time for memory: on SmolLM2-135M (batch 4 x 256),
512 KiB from the start of the process takes peft LoRA's peak RSS from 3545 to 2484 MB and its step
from 4.3 to 7.1 s (``benchmarks/allocator_ab.py --model smollm2 --threshold 524288``). An explicit
``MALLOC_MMAP_THRESHOLD_`` in the environment always wins (glibc reads it at start-up).

`own_file_backed_tensors_` is the second half: transformers loads safetensors weights as views of
a memory-mapped file, and the file's pages count as resident memory once touched. After pruning, the
removed weights are gone from the model but the mapping stays alive as long as any tensor (the
embeddings, a layer that lost nothing) still points into it, so the process kept the whole dense
checkpoint resident next to the pruned copies (SmolLM2-135M: about 540 MB). Giving the remaining
file-backed tensors their own memory lets the mapping go.

Everything here is a no-op off Linux (and the allocator calls off glibc).
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import gc
import os
import sys
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "DEFAULT_MMAP_THRESHOLD",
    "file_backed_ranges",
    "own_file_backed_tensors_",
    "pin_mmap_threshold",
    "pinned_mmap_threshold",
    "release_freed_memory",
]

#: Threshold `pin_mmap_threshold` uses unless ``APTUNE_PIN_MMAP_THRESHOLD`` says otherwise (bytes).
DEFAULT_MMAP_THRESHOLD = 4 * 1024 * 1024

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
_pinned: int | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - musl and others lack it: probe before use
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def pin_mmap_threshold(nbytes: int | None = None) -> int | None:
    """Fix glibc's mmap threshold for this process (see the module docstring); idempotent.

    Args:
        nbytes: Threshold in bytes. Default: ``APTUNE_PIN_MMAP_THRESHOLD`` from the environment,
            else `DEFAULT_MMAP_THRESHOLD`; 0 leaves the allocator alone.

    Returns:
        The threshold now in force, or None when nothing was changed (not glibc, switched off,
        or ``MALLOC_MMAP_THRESHOLD_`` set by the user).
    """
    global _pinned
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None
    if nbytes is None:
        raw = os.environ.get("APTUNE_PIN_MMAP_THRESHOLD", "").strip()
        try:
            nbytes = int(raw) if raw else DEFAULT_MMAP_THRESHOLD
        except ValueError:
            raise ValueError(
                f"APTUNE_PIN_MMAP_THRESHOLD={raw!r} is not a number of bytes; use e.g. 4194304, or 0 to "
                "leave the memory allocator alone"
            ) from None
    if nbytes <= 0:
        return None
    if _pinned == nbytes:
        return _pinned
    libc = _glibc()
    if libc is None or libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)) != 1:
        return None
    _pinned = int(nbytes)
    return _pinned


def file_backed_ranges(maps: str | Path = "/proc/self/maps") -> list[tuple[int, int]]:
    """Address ranges ``[start, end)`` of this process that map a regular file (Linux; else ``[]``).

    Args:
        maps: The ``/proc/<pid>/maps`` file to read (a parameter for tests).
    """
    try:
        text = Path(maps).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    ranges = []
    for line in text.splitlines():
        # "start-end perms offset dev inode [path]"; inode 0 = anonymous memory, heap or stack
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[4] == "0" or not fields[5].startswith("/"):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        ranges.append((start, end))
    return sorted(ranges)


def own_file_backed_tensors_(module: nn.Module) -> int:
    """Give every CPU parameter and buffer of ``module`` that points into a mapped file its own copy.

    The tensors keep their identity (``.data`` is replaced, as surgery does), so optimizers, ties and
    hooks are unaffected. Returns the number of bytes copied (0 off Linux or when nothing was mapped).
    """
    ranges = file_backed_ranges()
    if not ranges:
        return 0
    starts = [start for start, _ in ranges]

    def mapped(tensor: torch.Tensor) -> bool:
        if tensor.device.type != "cpu" or tensor.numel() == 0:
            return False
        address = tensor.data_ptr()
        i = bisect.bisect_right(starts, address) - 1
        return i >= 0 and address < ranges[i][1]

    copied = 0
    seen: set[int] = set()
    tensors = [*module.parameters(), *module.buffers()]
    with torch.no_grad():
        for tensor in tensors:
            if id(tensor) in seen or not mapped(tensor):
                continue
            seen.add(id(tensor))
            tensor.data = tensor.data.clone()
            copied += tensor.numel() * tensor.element_size()
    return copied


def pinned_mmap_threshold() -> int | None:
    """The threshold `pin_mmap_threshold` set in this process, or None if it set none."""
    return _pinned


def release_freed_memory(module: nn.Module | None = None) -> None:
    """Hand memory freed by surgery back to the operating system.

    Surgery frees the old, larger weight tensors. With ``module``, its tensors that still point into
    a memory-mapped checkpoint get their own copies first (see `own_file_backed_tensors_`), so that
    the mapping of the dense checkpoint can be released; then glibc returns free heap pages
    (``malloc_trim``), which it would otherwise keep.
    """
    if module is not None:
        own_file_backed_tensors_(module)
    gc.collect()
    libc = _glibc()
    if libc is not None:
        with contextlib.suppress(OSError):
            libc.malloc_trim(0)
