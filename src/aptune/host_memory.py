"""Host (CPU) memory housekeeping for runs whose tensor shapes change while training.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a request below its *mmap
threshold* from the heap and keeps freed heap blocks for reuse; by default that threshold is
*dynamic*: every time a large, separately mapped block is freed, the threshold rises to its size
(up to 32 MiB). In a run with fixed shapes (plain LoRA) this works well: every step asks for the
same sizes, which the heap hands back. Pruning changes the sizes of the FFN and attention
activations at every event; blocks of the old sizes stay in the heap, fragmented, and the process
resident memory keeps growing after pruning although the model got smaller (measured on MiniLM-L6,
batch 16 x 128: about +250 MiB over plain LoRA).

`pin_mmap_threshold` fixes the threshold (4 MiB by default): activation-sized tensors (several MiB
each) are then mapped separately and go back to the operating system as soon as they are freed,
while the many small tensors still come from the heap, so the step time stays as it was (a 128 KiB
threshold would return even more memory but costs about 50 % step time in page faults).
`prepare_` calls it once for models on the CPU; set ``APTUNE_PIN_MMAP_THRESHOLD=0`` to leave the
allocator alone, or a number of bytes to choose another threshold. An explicit
``MALLOC_MMAP_THRESHOLD_`` in the environment always wins (glibc reads it at start-up).

Everything here is a no-op off Linux/glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys

__all__ = ["DEFAULT_MMAP_THRESHOLD", "pin_mmap_threshold", "release_freed_memory"]

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


def release_freed_memory() -> None:
    """Hand heap memory freed by surgery back to the operating system (glibc ``malloc_trim``).

    Surgery frees the old, larger weight tensors; glibc keeps freed heap pages mapped, so the
    process would otherwise keep the memory of the unpruned model on top of the pruned one.
    """
    gc.collect()
    libc = _glibc()
    if libc is not None:
        with contextlib.suppress(OSError):
            libc.malloc_trim(0)
