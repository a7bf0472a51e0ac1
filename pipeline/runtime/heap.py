"""Giving freed heap memory back to the operating system while contexts are being replaced.

Recovery frees what replaced contexts and their failed batches held, on several threads;
glibc keeps such memory in its per-thread arenas, fragmented, so RSS crept up with every
replacement though nothing stayed live (issue 17: in-use memory flat, free heap memory
growing). `release_freed()` asks glibc to return free pages (`malloc_trim(0)`, which
releases whole free pages inside the heap as well as at its top), at most once per
`min_interval_s`: a trim walks every arena, about a millisecond here. Without glibc (musl,
macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable

MIN_INTERVAL_S = 1.0


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_malloc_trim = _load_trim()
_lock = threading.Lock()
_last = [float("-inf")]


def release_freed(min_interval_s: float = MIN_INTERVAL_S) -> bool:
    """Return freed heap memory to the OS (glibc only); True when a trim ran now."""
    if _malloc_trim is None:
        return False
    now = time.monotonic()
    with _lock:
        if now - _last[0] < min_interval_s:
            return False
        _last[0] = now
    _malloc_trim(0)
    return True

