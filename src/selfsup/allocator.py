"""Keep the memory a training step frees for the next step (Linux with glibc).

A CPU training step allocates and frees the same activation and gradient buffers every
step. glibc's malloc gives large freed blocks back to the operating system (blocks it
mapped on their own, and the top of the heap once more than a threshold is free), so
the next step takes page faults to get them back: 4 million in 80 LeJEPA steps at the
default size, about a fifth of their time (`benchmarks/allocator.py`). Raising glibc's
two thresholds keeps those blocks in the process; the cost is that the process keeps
its peak memory until it exits instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from functools import cache

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2): blocks
# up to this size come from the heap and are reused instead of mapped per allocation.
MMAP_THRESHOLD_BYTES = 32 * 2**20
# mallopt takes an int: never trim the heap's free top back to the system.
TRIM_THRESHOLD_BYTES = 2**31 - 1


@cache
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory in the process (once per process).

    Returns whether it applied: False on systems without glibc (macOS, Windows, musl),
    where the allocator is left as it is."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    applied = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    )
    if not applied:
        logger.warning("glibc refused the malloc thresholds; training runs with its defaults")
    return applied
