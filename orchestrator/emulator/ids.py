"""Deterministic identifiers and hashes.

Nothing here reads the wall clock, uuid4 or an unseeded RNG: an id is a hash of the seed, a kind
and either a counter or the thing it names, so equal calls give equal ids.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter


def digest(*parts: object) -> bytes:
    """A stable 32-byte hash of the parts (their ``str()`` joined by a separator)."""
    joined = "\x1f".join(str(part) for part in parts)
    return hashlib.sha256(joined.encode("utf-8")).digest()


def hex_id(*parts: object, length: int = 24) -> str:
    return digest(*parts).hex()[:length]


def unit_float(*parts: object) -> float:
    """A stable number in [0, 1) derived from the parts."""
    return int.from_bytes(digest(*parts)[:8], "big") / 2.0**64


class IdGenerator:
    """Counter-based ids: the n-th id of a kind is always the same for a given seed."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._counters: Counter[str] = Counter()
        self._lock = threading.Lock()

    def next(self, kind: str, prefix: str) -> str:
        with self._lock:
            self._counters[kind] += 1
            number = self._counters[kind]
        return prefix + hex_id(self._seed, kind, number)

    def derived(self, prefix: str, *parts: object) -> str:
        """An id fixed by what it names (e.g. a batch's output file), not by call order."""
        return prefix + hex_id(self._seed, *parts)
