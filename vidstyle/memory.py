"""How the process's allocator treats the large buffers of every frame.

Each frame allocates and frees the same large buffers (a batch's activations,
decoded frames, the temporal stage's planes). glibc serves those above its
mmap threshold with fresh mappings and returns them to the kernel when freed,
so every frame pays for zeroing its pages again: on a 2-core CPU at 640x360,
16,000 page faults and 45 ms of system time a frame with a compact network.
Kept in the heap instead, freed memory is reused by the next frame: the
pipeline runs 1.4 to 2.3 times as fast, at a third more peak memory at
640x360 and a twentieth to a tenth more on huge frames (docs/performance.md).
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
M_MMAP_THRESHOLD = -3
# Blocks from this size up still get mappings of their own, returned when freed: glibc's largest
# threshold. A 640x360 batch's activations stay below it; a huge frame's tiles do not, and kept in
# the heap they fragmented it (an x4 of 1080p: peak 7.2 GB, against 4.1 with glibc's default).
MMAP_THRESHOLD = 32 << 20
# Free memory at the heap's top beyond this goes back to the kernel: more than a frame's buffers
# below the threshold, so they stay mapped from one frame to the next.
TRIM_THRESHOLD = 256 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Serve allocations up to 32 MB from the heap and keep freed memory for the next frame (glibc only;
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
    applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("allocator: blocks under 32 MB kept in the heap: %s", applied)
    return applied
