from __future__ import annotations

import datetime as dt
import random

import pytest

from orchestrator.domain.backoff import PollSchedule, RetrySchedule

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("unchanged", "expected"),
    [
        (0, 15.0),
        (1, 22.5),
        (2, 33.75),
        (5, 15 * 1.5**5),
        (9, 576.650390625),
        (10, 600.0),
        (50, 600.0),
    ],
)
def test_poll_delay_grows_by_the_factor_up_to_the_cap(unchanged: int, expected: float) -> None:
    assert PollSchedule().base_delay(unchanged) == pytest.approx(expected)


def test_poll_jitter_stays_within_ten_percent() -> None:
    schedule, rng = PollSchedule(), random.Random(3)
    delays = [
        (schedule.next_poll(now=T0, unchanged_polls=4, rng=rng) - T0).total_seconds()
        for _ in range(500)
    ]
    base = schedule.base_delay(4)
    assert min(delays) >= base * 0.9 and max(delays) <= base * 1.1
    assert max(delays) - min(delays) > base * 0.1  # it does spread


def test_poll_never_steps_over_expiry() -> None:
    expires = T0 + dt.timedelta(seconds=100)
    at = PollSchedule().next_poll(
        now=T0, unchanged_polls=20, rng=random.Random(1), expires_at=expires
    )
    assert expires < at <= expires + dt.timedelta(seconds=15)


def test_poll_after_expiry_is_ordinary() -> None:
    expires = T0 - dt.timedelta(seconds=1)
    at = PollSchedule(jitter=0).next_poll(
        now=T0, unchanged_polls=0, rng=random.Random(1), expires_at=expires
    )
    assert at == T0 + dt.timedelta(seconds=15)


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 2), (2, 4), (3, 8), (8, 256), (9, 300), (40, 300)]
)
def test_retry_backoff_is_capped_exponential_with_jitter(attempt: int, ceiling: float) -> None:
    rng = random.Random(attempt)
    delays = [RetrySchedule(base=2, maximum=300).delay(attempt, rng) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len({round(d, 6) for d in delays}) > 100
