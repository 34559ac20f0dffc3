"""Time, injected.

Every read of the current time that drives behaviour (leases, ``next_run_at``, backoff, the
emulator's batch lifecycle) goes through a :class:`Clock`, so tests move time forward instead of
sleeping. This module is the only place that calls ``datetime.now()`` or ``time.sleep()``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Protocol

UTC = dt.UTC


class Clock(Protocol):
    """A source of the current time (timezone-aware, UTC) and a way to wait."""

    def now(self) -> dt.datetime: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ManualClock:
    """A clock that only moves when told to: ``advance()`` or ``sleep()`` (which never blocks)."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> dt.datetime:
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)
            return self._now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)


class ScaledClock:
    """Real time multiplied by ``scale``, plus whatever ``advance()`` added.

    The emulator runs on one of these in the demo and in ``orchestrator emulator --time-scale``:
    with ``scale=600`` one real second is ten virtual minutes. ``sleep()`` waits the real time that
    corresponds to the virtual duration.
    """

    def __init__(self, scale: float = 1.0, start: dt.datetime | None = None) -> None:
        if scale <= 0:
            raise ValueError("scale must be positive")
        self.scale = scale
        self._start = start or dt.datetime.now(UTC)
        self._origin = time.monotonic()
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        with self._lock:
            elapsed = (time.monotonic() - self._origin) * self.scale + self._offset
        return self._start + dt.timedelta(seconds=elapsed)

    def advance(self, seconds: float) -> dt.datetime:
        with self._lock:
            self._offset += seconds
        return self.now()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.scale)


def wall_now() -> dt.datetime:
    """Real time, for the timers of APScheduler (which keeps its own clock). Not for behaviour."""
    return dt.datetime.now(UTC)


def unix(moment: dt.datetime) -> int:
    """Whole Unix seconds, as the Batch API reports times."""
    return int(moment.timestamp())


def from_unix(seconds: float | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, UTC)
