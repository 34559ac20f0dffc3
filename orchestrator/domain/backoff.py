"""Backoff schedules: how long to wait before polling again, and before retrying a failed call."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random


@dataclasses.dataclass(frozen=True)
class PollSchedule:
    """Poll often while a batch's status moves, less and less while it does not.

    The delay starts at ``initial``, grows by ``factor`` with every poll that saw no change, stops
    growing at ``maximum``, and is spread by ``±jitter`` so that many batches created together do
    not poll together. It never steps over the batch's ``expires_at``: the poll right after expiry
    is what collects the partial results.
    """

    initial: float = 15.0
    factor: float = 1.5
    maximum: float = 600.0
    jitter: float = 0.1

    def base_delay(self, unchanged_polls: int) -> float:
        delay = self.initial * self.factor ** max(0, unchanged_polls)
        return float(min(delay, self.maximum))

    def next_poll(
        self,
        *,
        now: dt.datetime,
        unchanged_polls: int,
        rng: random.Random,
        expires_at: dt.datetime | None = None,
    ) -> dt.datetime:
        delay = self.base_delay(unchanged_polls)
        delay *= 1 + rng.uniform(-self.jitter, self.jitter)
        at = now + dt.timedelta(seconds=delay)
        if expires_at is not None and now < expires_at < at:
            # Wake up just after expiry, when the provider should report it.
            at = expires_at + dt.timedelta(seconds=min(self.initial, 60.0))
        return at


@dataclasses.dataclass(frozen=True)
class RetrySchedule:
    """Capped exponential backoff with full jitter, for 5xx, timeouts and dropped connections."""

    base: float = 2.0
    maximum: float = 300.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (1 = the first retry)."""
        ceiling = min(self.maximum, self.base * (1 << min(max(attempt - 1, 0), 30)))
        # Never less than half the ceiling, so retries do not bunch up near zero.
        return ceiling / 2 + rng.uniform(0, ceiling / 2)
