"""Keeping a long tiled prediction's memory flat: large buffers handed back to the system when freed.

glibc's allocator serves a buffer over its *mmap threshold* with its own mapping, returned to the system on
``free``; smaller ones come from heaps (one per thread that allocates) that keep freed memory for reuse. The
threshold is dynamic: freeing a mapped buffer raises it to that buffer's size, so after the first tile every
activation (a few MB each) and every window read comes from the heaps. Three threads (network, read-ahead,
write-behind) allocating and freeing such buffers left the heaps fragmented: on a 4096² scene with 512-px tiles the
resident memory between tiles grew from 630 MB to over 1,000 MB. A fixed threshold keeps every buffer over it
mapped (and unmapped when freed): the same run stayed at ~840 MB between tiles, at the cost of zero-filling each
tile's activations afresh (a few percent of a tile's time).

Smaller buffers freed by the three threads stay in their heaps after a scene's last tile; :func:`release_free_memory`
hands the whole free pages among them back before the work that follows (the COG copies, the overlay).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["MMAP_THRESHOLD", "release_free_memory", "return_large_buffers"]

MMAP_THRESHOLD = 1 << 20
"""Buffers of at least this many bytes get their own mapping, handed back to the system when freed."""

_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
_done: list[bool] = []


def return_large_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for the rest of the process (once; later calls do nothing).

    Returns:
        Whether the allocator took the setting (``False`` off Linux/glibc, e.g. macOS or musl: nothing changes).
    """
    if _done:
        return _done[0]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
        except (OSError, AttributeError):
            ok = False
    _done.append(ok)
    return ok


def release_free_memory() -> bool:
    """Hand the free memory of every glibc heap back to the system (``malloc_trim(0)``), e.g. after a scene's tiles.

    Returns:
        Whether anything was released (``False`` off Linux/glibc: nothing to do).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
