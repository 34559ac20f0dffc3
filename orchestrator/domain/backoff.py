"""Backoff schedules: how long to wait before polling again, and before retrying a failed call."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class PollSchedule:
    """Poll early while a batch is young, often while its status moves, less and less while it
    does not, and at the moment the provider's own progress says it will be done.

    * The delay starts at ``initial``, grows by ``factor`` with every poll that saw no change, and
      stops growing at ``maximum``.
    * A young batch is polled sooner: the n-th poll after the create comes at most ``first`` ×
      ``first_factor``^n after the one before (1, 1.25, 1.56… s), so a small batch that the
      provider finishes in seconds is seen done in seconds, not after ``initial``. So is a batch
      just seen ``finalizing`` (its requests have all run; the provider is writing the files), its
      polls counted from that change (``polls=unchanged_polls``): it is done soon, as a rule.
    * While the provider reports progress (``in_progress``, with some requests done), the next
      poll comes no later than when that pace says the batch will be done (:func:`eta`), but
      never sooner than ``first`` and a tenth of the batch's age: a pace that keeps slowing down
      cannot make polls frequent. Nor does the backoff bring a poll just before a predicted end
      (nearer it than that least delay): the poll waits for the end instead.
    * ``±jitter`` spreads batches created together (a predicted end is polled between half
      ``first`` and ``first`` after it instead: never before it, when the last requests may still
      be running). The delay never steps over the batch's ``expires_at``: the poll right
      after expiry is what collects the partial results.

    What this costs a batch per day is bounded: :func:`polls_within` counts the most polls the
    schedule allows (README "Guarantees")."""

    initial: float = 15.0
    factor: float = 1.5
    maximum: float = 600.0
    jitter: float = 0.1
    first: float = 1.0
    first_factor: float = 1.25
    # the shortest wait for a predicted end, as a share of the batch's age
    age_share: float = 0.1

    def base_delay(self, unchanged_polls: int, polls: int | None = None) -> float:
        delay = min(self.initial * self.factor ** min(max(0, unchanged_polls), 64), self.maximum)
        if polls is not None:
            early = self.first * self.first_factor ** min(max(0, polls), 64)
            if early < self.initial:  # young: until its polls come as seldom as the backoff's
                delay = min(delay, early)
        return float(delay)

    def shortest(self, age: float) -> float:
        """The least delay a predicted end may bring the next poll to, for a batch ``age`` s old."""
        return max(self.first, self.age_share * max(0.0, age))

    def delay(
        self, *, unchanged_polls: int, polls: int | None, age: float, done_in: float | None
    ) -> float:
        """The wait before the next poll, without jitter (``done_in``: seconds until the end
        the provider's progress predicts, if it predicts one)."""
        delay = self.base_delay(unchanged_polls, polls)
        if done_in is not None:
            delay = min(delay, self.predicted(done_in, age))
        return delay

    def predicted(self, done_in: float, age: float) -> float:
        """The wait until a predicted end ``done_in`` s away, for a batch ``age`` s old."""
        return max(done_in, self.shortest(age))

    def next_poll(
        self,
        *,
        now: dt.datetime,
        unchanged_polls: int,
        rng: random.Random,
        expires_at: dt.datetime | None = None,
        polls: int | None = None,
        created_at: dt.datetime | None = None,
        done_at: dt.datetime | None = None,
    ) -> dt.datetime:
        age = (now - created_at).total_seconds() if created_at is not None else 0.0
        delay = self.base_delay(unchanged_polls, polls)
        delay *= 1 + rng.uniform(-self.jitter, self.jitter)
        if done_at is not None:
            # the predicted end, a little after it (at most ``first``): no jitter, which would
            # spread a 10-minute prediction by a minute
            done_in = (done_at - now).total_seconds()
            predicted = self.predicted(done_in, age) + rng.uniform(self.first / 2, self.first)
            if delay < done_in < delay + self.shortest(age + delay):
                # a poll at the backoff would find the end nearer than it may then wait for,
                # and see it done only a tenth of its age later: wait for the end instead
                delay = predicted
            delay = min(delay, predicted)
        at = now + dt.timedelta(seconds=delay)
        if expires_at is not None and now < expires_at < at:
            # Wake up just after expiry, when the provider should report it.
            at = expires_at + dt.timedelta(seconds=min(self.initial, 60.0))
        return at


def eta(
    *,
    status: str | None,
    counts: Mapping[str, Any] | None,
    before: Mapping[str, Any] | None,
    since: dt.datetime | None,
    now: dt.datetime,
) -> dt.datetime | None:
    """When a batch ``in_progress`` will have run all its requests, at the pace between the poll
    at ``since`` (which saw ``before``) and this one at ``now`` (which sees ``counts``): both on
    the daemon's clock, so the provider's clock, right or wrong, plays no part. None when there is
    no pace to go by (no earlier poll, nothing done since, or all done)."""
    if status != "in_progress" or not counts or since is None:
        return None
    total, done = _count(counts, "total"), _done(counts)
    gained, took = done - (_done(before) if before else 0), (now - since).total_seconds()
    if total <= 0 or done >= total or gained <= 0 or took <= 0:
        return None
    return now + dt.timedelta(seconds=took * (total - done) / gained)


def _done(counts: Mapping[str, Any]) -> int:
    return _count(counts, "completed") + _count(counts, "failed")


def _count(counts: Mapping[str, Any], key: str) -> int:
    value = counts.get(key)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def polls_within(schedule: PollSchedule, seconds: float, *, changes: int = 3) -> int:
    """The most polls ``schedule`` makes of one batch in its first ``seconds``, when its status
    changes ``changes`` times (validating → in_progress → finalizing → completed: 3), each at the
    worst moment (when the backoff has reached its maximum, so that it starts again from
    ``initial``), the early polls come as early as allowed, every poll predicts an end as near as
    allowed, and the jitter always shortens the wait. From the second change on (the batch
    may be ``finalizing``), the early polls are counted from the last change."""
    shrink = 1 - schedule.jitter
    t, polls, unchanged, left = 0.0, 0, 0, changes
    while True:
        early = unchanged if changes - left >= 2 else polls
        delay = min(schedule.base_delay(unchanged, early) * shrink, schedule.shortest(t))
        t += delay
        if t > seconds:
            return polls
        polls += 1
        unchanged += 1
        if left and schedule.base_delay(unchanged) >= schedule.maximum:
            unchanged, left = 0, left - 1


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
