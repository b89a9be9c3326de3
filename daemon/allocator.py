"""The C allocator's settings for a process that allocates and frees decoded frames all day.

glibc only: other C libraries lack these calls, and the functions then do nothing.
"""

from __future__ import annotations

import ctypes
import os

# Blocks this large and larger are mapped on their own and go back to the kernel when freed. glibc's default
# starts at 128 KiB and rises to the largest block freed so far, so after the first 720p or 1080p frames every
# later frame comes from the heap, which keeps its high-water mark: 4 cameras at 1080p held 820-940 MiB of RSS
# against 490-500 MiB with this setting (docs/performance-record.md). A 640x480 frame (900 KiB) stays in the
# heap.
MMAP_THRESHOLD = 1 << 20
# What glibc keeps free at the top of a heap before giving it back: its default, which raising the mmap
# threshold raised too (to twice the largest block freed) before the daemon fixed it
TRIM_THRESHOLD = 128 << 10
MMAP_THRESHOLD_VARIABLE = "MALLOC_MMAP_THRESHOLD_"  # glibc's own; where set, the operator's choice holds
TRIM_THRESHOLD_VARIABLE = "MALLOC_TRIM_THRESHOLD_"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers, from malloc.h

_libc = ctypes.CDLL(None)
_mallopt = getattr(_libc, "mallopt", None)
_malloc_trim = getattr(_libc, "malloc_trim", None)


def tune_for_frames() -> None:
    """Fix the mmap and trim thresholds, as if the process had started with `MALLOC_MMAP_THRESHOLD_` set, then
    give back what the heaps hold free (loading the demo model leaves 87 MiB of it). A threshold the
    environment sets is kept."""
    if _mallopt is not None:
        if MMAP_THRESHOLD_VARIABLE not in os.environ:
            _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        if TRIM_THRESHOLD_VARIABLE not in os.environ:
            _mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return_freed_memory()


def return_freed_memory() -> None:
    """Give the kernel back what the heaps hold free (glibc keeps what a thread freed in its own heap)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
