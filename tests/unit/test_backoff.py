from __future__ import annotations

import datetime as dt
import random

import pytest

from orchestrator.domain.backoff import PollSchedule, RetrySchedule, eta, polls_within

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def SECONDS(n: float) -> dt.timedelta:
    return dt.timedelta(seconds=n)


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


# -- early polls, the predicted end, and what a batch costs a day ------------------------------


@pytest.mark.parametrize(
    ("polls", "expected"),
    [(0, 1.0), (1, 1.25), (2, 1.5625), (3, 1.953125), (6, 3.814697265625), (12, 14.551915228366852),
     (13, 15.0), (30, 15.0)],
)  # fmt: skip
def test_a_young_batch_is_polled_early_then_as_before(polls: int, expected: float) -> None:
    # the n-th poll after the create comes at most 1 × 1.25^n s after the one before, and never
    # later than the backoff would (15 s for a status that just changed)
    assert PollSchedule().base_delay(0, polls) == pytest.approx(expected)
    # an old batch whose status has not changed for a while waits as before
    assert PollSchedule().base_delay(9, 30) == pytest.approx(576.650390625)


def test_the_end_the_providers_pace_predicts_is_when_it_is_polled_next() -> None:
    # 1,000 more requests done (1,000 to 2,000 of 10,000) in the 50 s since the last poll, on
    # the daemon's clock: 8,000 left at 20 a second, 400 s more
    before = {"total": 10_000, "completed": 990, "failed": 10}
    counts = {"total": 10_000, "completed": 1_900, "failed": 100}
    done_at = eta(
        status="in_progress", counts=counts, before=before, since=T0, now=T0 + SECONDS(50)
    )
    assert done_at == T0 + SECONDS(450)
    schedule = PollSchedule()
    # the backoff says 600 s; the prediction says 400 s: 400 s
    assert schedule.delay(unchanged_polls=20, polls=20, age=130, done_in=400) == 400
    # a prediction sooner than a tenth of the batch's age waits that tenth (13 s at 130 s)
    assert schedule.delay(unchanged_polls=20, polls=20, age=130, done_in=3) == 13
    # and never sooner than the first delay
    assert schedule.delay(unchanged_polls=20, polls=20, age=2, done_in=0.1) == 1.0
    # no pace, no prediction: nothing done since the last poll, everything done, not running,
    # or no earlier poll to measure from
    for status, c, since in [
        ("in_progress", before, T0),
        ("in_progress", {"total": 10_000, "completed": 9_000, "failed": 1_000}, T0),
        ("finalizing", counts, T0),
        ("in_progress", None, T0),
        ("in_progress", counts, None),
    ]:
        assert eta(status=status, counts=c, before=before, since=since, now=T0 + SECONDS(5)) is None


def test_a_predicted_end_is_polled_just_after_it_never_before() -> None:
    # the last requests may still run at the very moment the pace predicts: a poll then would see
    # it unfinished and wait a tenth of its age more; so it comes half to one ``first`` after
    schedule = PollSchedule()
    created, now = T0, T0 + SECONDS(3_000)
    waits = {
        (
            schedule.next_poll(
                now=now, unchanged_polls=20, rng=random.Random(seed), polls=20,
                created_at=created, done_at=now + SECONDS(400),
            ) - now
        ).total_seconds()
        for seed in range(200)
    }  # fmt: skip
    assert min(waits) >= 400.5 and max(waits) <= 401.0
    assert max(waits) - min(waits) > 0.4  # spread, for batches created together


def test_no_poll_comes_just_before_a_predicted_end_to_wait_a_tenth_of_the_age_after_it() -> None:
    # A batch 100 s old whose status just changed: the backoff says 15 s (±10%). Its end is
    # predicted 20 s away: a poll at 15 s would see it all but done, and could look again only
    # 11.5 s later (a tenth of its age then), 6.5 s after the end. It waits for the end instead.
    schedule = PollSchedule()

    def wait(done_in: float, seed: int) -> float:
        at = schedule.next_poll(
            now=T0 + SECONDS(100), unchanged_polls=0, rng=random.Random(seed), polls=30,
            created_at=T0, done_at=T0 + SECONDS(100 + done_in),
        )  # fmt: skip
        return (at - T0).total_seconds() - 100

    assert all(20.5 <= wait(20, seed) <= 21 for seed in range(100))
    # an end far enough beyond the backoff's poll leaves that poll as it was
    assert all(13.5 <= wait(40, seed) <= 16.5 for seed in range(100))


def test_a_batch_is_polled_at_most_233_times_in_its_first_day() -> None:
    # README "Guarantees": the worst case the schedule allows (every status change at the worst
    # moment, every poll predicting an end as near as allowed, the jitter always shortening)
    assert polls_within(PollSchedule(), 86_400) == 233
    # against 188 for the schedule without early polls and predictions
    assert polls_within(PollSchedule(first=1e9, age_share=1e9), 86_400) == 188
    # a schedule that let a prediction bring polls nearer than a tenth of the age would cost more
    assert polls_within(PollSchedule(age_share=0.0), 86_400) > 1_000
