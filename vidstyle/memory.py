"""How the process's allocator treats the large buffers of every frame.

Each frame allocates and frees the same large buffers (a batch's activations,
decoded frames, the temporal stage's planes). glibc serves those above its
mmap threshold with fresh mappings and returns them to the kernel when freed,
so every frame pays for zeroing its pages again: on a 2-core CPU at 640x360,
16,000 page faults and 45 ms of system time a frame with a compact network.
Kept in the heap instead, freed memory is reused by the next frame: the
pipeline runs 1.8 to 2.4 times as fast, at a quarter to a third more peak
memory (docs/performance.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger("vidstyle")

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# Free memory at the heap's top beyond this goes back to the kernel: a little more than the
# largest working set the pipeline keeps between frames, so a frame's buffers stay mapped.
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and keep freed memory for the next frame (glibc only;
    elsewhere nothing changes). Process-wide and idempotent; whether it took effect. A person's own
    settings of glibc's (MALLOC_MMAP_THRESHOLD_ and the like) win: then nothing changes either."""
    if any(name.startswith("MALLOC_") for name in os.environ) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): its own allocator decides
        return False
    # No mappings of their own for large blocks (a thread's arena still maps what its heap cannot hold).
    applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("allocator: large blocks from the heap: %s", applied)
    return applied
