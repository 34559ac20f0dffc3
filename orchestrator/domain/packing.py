"""Packing a job's requests into chunks (one chunk = one JSONL file = one remote batch).

Requests are taken in their enqueue order (``seq``) and cut greedily into contiguous runs that stay
within the target's request-count and byte budgets, and within the model's enqueued-token budget
when one is known (a chunk larger than it could never be in flight). Contiguous runs keep the plan
tiny to store: a chunk is ``(first_seq, last_seq)``, whatever its size. (The planner keeps one
packer per model, so a chunk is a contiguous run of one model's requests.)
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
    tokens: int = 0  # estimated prompt tokens (domain/capacity.py)
    model: str | None = None  # the model of its requests, when the packer was given one


class Packer:
    """Feed ``(seq, line_bytes, tokens)`` in ``seq`` order; get chunks back as they fill up.

    ``max_tokens`` (None: no bound) bounds a chunk's estimated tokens; a request above it alone
    makes a chunk of its own (the provider decides whether it fits)."""

    def __init__(
        self,
        *,
        max_requests: int,
        max_bytes: int,
        max_tokens: int | None = None,
        model: str | None = None,
    ) -> None:
        if max_requests < 1 or max_bytes < 1 or (max_tokens is not None and max_tokens < 1):
            raise ValueError("limits must be positive")
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.max_tokens = max_tokens
        self.model = model
        self._first: int | None = None
        self._last = 0
        self._count = 0
        self._bytes = 0
        self._tokens = 0

    def add(self, seq: int, size: int, tokens: int = 0) -> Chunk | None:
        """Add one request; returns the chunk it closed, if adding it closed one."""
        if size > self.max_bytes:
            raise ValueError(
                f"a single request of {size} bytes exceeds the {self.max_bytes} budget"
            )
        closed = None
        if self._count and (
            self._count + 1 > self.max_requests
            or self._bytes + size > self.max_bytes
            or (self.max_tokens is not None and self._tokens + tokens > self.max_tokens)
        ):
            closed = self.finish()
        if self._first is None:
            self._first = seq
        self._last = seq
        self._count += 1
        self._bytes += size
        self._tokens += tokens
        return closed

    def finish(self) -> Chunk | None:
        """Close the chunk being filled, if any."""
        if self._first is None:
            return None
        chunk = Chunk(self._first, self._last, self._count, self._bytes, self._tokens, self.model)
        self._first, self._count, self._bytes, self._tokens = None, 0, 0, 0
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
