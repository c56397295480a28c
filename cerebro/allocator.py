"""Keep a training worker's freed memory for its next minibatch instead of returning it.

glibc's ``malloc`` hands large blocks back to the kernel as soon as they are freed: blocks
over its mmap threshold (128 KiB at first) are unmapped, and a free block at the top of the
heap over its trim threshold is trimmed. A CPU training step allocates and frees the same
activations, gradients and minibatch every step, so each step then pays a page fault for
every 4 KiB it touches anew; on a virtual machine that is a quarter of a small CNN's step
time. Raising both thresholds makes ``malloc`` reuse the memory, as PyTorch's CUDA caching
allocator and allocators such as jemalloc do. The price is that a worker keeps the memory of
its largest step (up to the trim threshold) until it exits.

``CEREBRO_KEEP_FREED_MB`` sets the trim threshold (default 1024 per worker); ``0`` leaves
glibc's defaults. Other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import platform

from cerebro._env import megabytes

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold over HEAP_MAX_SIZE / 2: 32 MiB on 64-bit machines.
_MMAP_THRESHOLD_MAX = 32 * 2**20 if ctypes.sizeof(ctypes.c_void_p) == 8 else 512 * 2**10


def keep_freed_bytes() -> int:
    """The trim threshold in bytes from ``CEREBRO_KEEP_FREED_MB`` (default 1024; 0 = off)."""
    return megabytes("CEREBRO_KEEP_FREED_MB", 1024)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds in this process; ``True`` if they were set."""
    keep = keep_freed_bytes()
    if keep == 0 or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    keep = min(keep, 2**31 - 1)  # mallopt takes an int
    # Setting either threshold also stops glibc from adjusting them itself.
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, min(keep, _MMAP_THRESHOLD_MAX))
    trim_ok = mallopt(_M_TRIM_THRESHOLD, keep)
    return bool(mmap_ok and trim_ok)
