"""Giving freed memory back to the operating system.

glibc's allocator keeps the memory Python frees for its next allocations: after an upload that
read pages of tens of MB, an idle daemon would go on holding them. ``malloc_trim(0)`` returns
the free pages of every arena. Elsewhere (musl, macOS) there is no such call and this does
nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # pragma: no cover - no C library to look symbols up in
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release() -> bool:
    """Give free heap memory back to the OS; True if the C library could (glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
