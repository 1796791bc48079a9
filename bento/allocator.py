"""Keep large allocations on glibc's heap in a scoring worker.

A bulk call handles a few MB at a time (the Redis reply, the histories joined, numpy arrays of every entry
of the call's entities). glibc serves each allocation above its mmap threshold (128 KB, rising to the
largest size freed) with fresh pages from the kernel, and every first touch of a page is a fault: joining
4.5 MB of histories took ~3-4 ms that way against ~0.4 ms on the heap (measured on the project's VM).
Raising the thresholds keeps the freed memory for the next call. The cost is memory kept after a peak
(bounded by the largest call: a few tens of MB per worker at MAX_BATCH).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 512 << 20


def keep_large_allocations_on_heap() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False (and nothing changed) elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD,
                                                                               TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator as it is
        ok = False
    if not ok:
        log.info("mallopt unavailable: large allocations stay with the allocator's defaults")
    return ok
