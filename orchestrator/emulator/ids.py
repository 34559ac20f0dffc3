"""Deterministic identifiers and hashes.

Nothing here reads the wall clock, uuid4 or an unseeded RNG: an id is a hash of the seed, a kind
and either a counter or the thing it names, so equal calls give equal ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import Counter

_MASK64 = (1 << 64) - 1


def digest(*parts: object) -> bytes:
    """A stable 32-byte hash of the parts (their ``str()`` joined by a separator)."""
    joined = "\x1f".join(str(part) for part in parts)
    return hashlib.sha256(joined.encode("utf-8")).digest()


def hex_id(*parts: object, length: int = 24) -> str:
    return digest(*parts).hex()[:length]


def id_key(custom_id: object) -> int:
    """A 64-bit key for a custom_id, kept per input line so per-batch choices need no re-read."""
    raw = custom_id.encode("utf-8") if isinstance(custom_id, str) else b"\x00"
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


def mix64(value: int) -> int:
    """SplitMix64's finaliser: a cheap, well-spread 64-bit hash for per-line choices."""
    value &= _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def unit_float(*parts: object) -> float:
    """A stable number in [0, 1) derived from the parts."""
    return int.from_bytes(digest(*parts)[:8], "big") / 2.0**64


@dataclasses.dataclass(frozen=True)
class IdPrefixes:
    """How a mode's ids start: its batches' and its batches' result files' (derived ids)."""

    batch: str
    result_file: str = "file-"


class IdGenerator:
    """Counter-based ids: the n-th id of a kind is always the same for a given seed."""

    def __init__(self, seed: int, instance: str = "") -> None:
        self._seed = seed
        self._instance = instance
        self._counters: Counter[str] = Counter()
        self._lock = threading.Lock()

    def next(self, kind: str, prefix: str) -> str:
        with self._lock:
            self._counters[kind] += 1
            number = self._counters[kind]
        if self._instance:
            return prefix + hex_id(self._seed, self._instance, kind, number)
        return prefix + hex_id(self._seed, kind, number)

    def derived(self, prefix: str, *parts: object) -> str:
        """An id fixed by what it names (e.g. a batch's output file), not by call order."""
        return prefix + hex_id(self._seed, *parts)
