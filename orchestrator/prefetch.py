"""Reads started early, for a step that will want them soon: what an upload reads before its first
byte goes out (every request's size and envelope), read while planning still writes the batch.

Planning a job knows its chunks once it has checked the requests, before it has written the batch
items and committed; the daemon that plans a job claims its batches at once. So the upload's first
read (0.07 s for 50,000 requests, and it must finish before the file's size is known) runs beside
the rest of planning, on a connection of its own, instead of after it. Only what never changes is
read this way (requests, once enqueued), and the upload checks every page against it as usual.

Bounded: at most :data:`MAX_ENTRIES` reads are kept, none longer than :data:`MAX_AGE_SECONDS`
(a batch that another daemon uploads leaves its read here until then); a read that failed is
simply not there, and the step reads for itself.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

MAX_ENTRIES = 2
MAX_AGE_SECONDS = 60.0
# How long a step waits for a read already under way (it would take as long to read again).
WAIT_SECONDS = 30.0


class Prefetch:
    def __init__(self) -> None:
        self._executor = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._lock = threading.Lock()
        self._entries: dict[Hashable, tuple[float, cf.Future[Any]]] = {}
        self.hits = 0

    def start(self, key: Hashable, read: Callable[[], Any]) -> None:
        """Start ``read`` for ``key`` (a read already there for it is replaced)."""
        now = time.monotonic()
        with self._lock:
            for old in [k for k, (at, _) in self._entries.items() if now - at > MAX_AGE_SECONDS]:
                self._drop(old)
            while len(self._entries) >= MAX_ENTRIES:
                self._drop(next(iter(self._entries)))
            self._entries[key] = (now, self._executor.submit(read))

    def take(self, key: Hashable) -> Any | None:
        """What the read for ``key`` returned (waiting for it if it is under way), once; None if
        there is none, or it failed."""
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None:
            return None
        try:
            result = entry[1].result(timeout=WAIT_SECONDS)
        except Exception as exc:  # noqa: BLE001 (the step reads for itself: a database blip, say)
            log.info("prefetch_missed", error=f"{type(exc).__name__}: {exc}"[:300])
            return None
        with self._lock:
            self.hits += 1
        return result

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _drop(self, key: Hashable) -> None:
        _, future = self._entries.pop(key)
        future.cancel()

    def close(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._drop(key)
        # a read under way finishes on its own (stopping does not wait for a database it waits on)
        self._executor.shutdown(wait=False, cancel_futures=True)
