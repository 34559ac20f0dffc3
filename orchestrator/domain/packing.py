"""Packing a job's requests into chunks (one chunk = one JSONL file = one remote batch).

Requests are taken in their enqueue order (``seq``) and cut greedily into contiguous runs that stay
within the target's request-count and byte budgets. Contiguous runs keep the plan tiny to store: a
chunk is ``(first_seq, last_seq)``, whatever its size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    first_seq: int
    last_seq: int
    count: int
    bytes: int


class Packer:
    """Feed ``(seq, line_bytes)`` in ``seq`` order; get chunks back as they fill up."""

    def __init__(self, *, max_requests: int, max_bytes: int) -> None:
        if max_requests < 1 or max_bytes < 1:
            raise ValueError("limits must be positive")
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._first: int | None = None
        self._last = 0
        self._count = 0
        self._bytes = 0

    def add(self, seq: int, size: int) -> Chunk | None:
        """Add one request; returns the chunk it closed, if adding it closed one."""
        if size > self.max_bytes:
            raise ValueError(
                f"a single request of {size} bytes exceeds the {self.max_bytes} budget"
            )
        closed = None
        if self._count and (
            self._count + 1 > self.max_requests or self._bytes + size > self.max_bytes
        ):
            closed = self.finish()
        if self._first is None:
            self._first = seq
        self._last = seq
        self._count += 1
        self._bytes += size
        return closed

    def finish(self) -> Chunk | None:
        """Close the chunk being filled, if any."""
        if self._first is None:
            return None
        chunk = Chunk(self._first, self._last, self._count, self._bytes)
        self._first, self._count, self._bytes = None, 0, 0
        return chunk


def pack(items: Iterable[tuple[int, int]], *, max_requests: int, max_bytes: int) -> Iterator[Chunk]:
    packer = Packer(max_requests=max_requests, max_bytes=max_bytes)
    for seq, size in items:
        chunk = packer.add(seq, size)
        if chunk:
            yield chunk
    last = packer.finish()
    if last:
        yield last


def pages(items: Iterable[tuple[int, int]], *, max_bytes: int, max_count: int) -> Iterator[Chunk]:
    """Contiguous runs of ``(seq, size)`` to read at once: each holds at most ``max_bytes`` and
    ``max_count`` items and at least one item, so an item larger than ``max_bytes`` comes alone."""
    if max_bytes < 1 or max_count < 1:
        raise ValueError("limits must be positive")
    first = last = count = size = 0
    for seq, n in items:
        if count and (size + n > max_bytes or count == max_count):
            yield Chunk(first, last, count, size)
            count = size = 0
        if not count:
            first = seq
        last = seq
        count += 1
        size += n
    if count:
        yield Chunk(first, last, count, size)
