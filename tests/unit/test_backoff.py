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


# -- the exact waits, by hand (no jitter) -------------------------------------------------------


def _wait(schedule: PollSchedule, now: dt.datetime, **kwargs: object) -> float:
    at = schedule.next_poll(now=now, rng=random.Random(1), **kwargs)  # type: ignore[arg-type]
    return (at - now).total_seconds()


@pytest.mark.parametrize(
    ("schedule", "unchanged", "polls", "expected"),
    [
        # a new batch: 1, 1.25, 1.5625… s after the create, capped by the backoff (15 s)
        (PollSchedule(jitter=0), 0, 0, 1.0),
        (PollSchedule(jitter=0), 1, 1, 1.25),
        (PollSchedule(jitter=0), 2, 2, 1.5625),
        (PollSchedule(jitter=0), 0, 12, 14.551915228366852),
        (PollSchedule(jitter=0), 0, 13, 15.0),
        # seen finalizing 3 polls ago (polls counted from that change): early again, not 50.6 s
        (PollSchedule(jitter=0), 3, 3, 1.953125),
        # no count of polls: the backoff alone
        (PollSchedule(jitter=0), 3, None, 50.625),
        # once the early polls come as seldom as the backoff's (16 s = 1 × 2^4), the backoff
        # alone decides: a status unchanged for 2 polls waits 16 × 1.5^2
        (PollSchedule(initial=16, first=1, first_factor=2, jitter=0), 2, 4, 36.0),
        (PollSchedule(initial=16, first=1, first_factor=2, jitter=0), 2, 3, 8.0),
    ],
)
def test_next_poll_waits_the_early_delay_or_the_backoff_whichever_is_sooner(
    schedule: PollSchedule, unchanged: int, polls: int | None, expected: float
) -> None:
    # (a datetime holds whole microseconds)
    assert _wait(schedule, T0, unchanged_polls=unchanged, polls=polls) == pytest.approx(
        expected, abs=1e-6
    )
    assert schedule.base_delay(unchanged, polls) == expected
    assert schedule.delay(unchanged_polls=unchanged, polls=polls, age=0, done_in=None) == expected


@pytest.mark.parametrize(
    ("done_in", "created", "expected"),
    [
        # A batch 100 s old whose status just changed: the backoff says 15 s, and a poll then could
        # look again only a tenth of its age later (11.5 s): an end predicted in (15, 26.5) s is
        # waited for (polled half to one ``first`` after it), one outside that window is not.
        (10, True, (10.5, 11)),  # an end before the backoff's poll: polled just after it
        (15, True, (15, 15)),  # the backoff's poll lands on the end: not before it, it stays
        (20, True, (20.5, 21)),
        (25, True, (25.5, 26)),
        (26.4, True, (26.9, 27.4)),
        (26.5, True, (15, 15)),  # the poll after the backoff's can come at the end: no loss
        (40, True, (15, 15)),
        # no creation time known: the batch counts as new (age 0; 15 + a tenth of 15 = 16.5)
        (16.4, False, (16.9, 17.4)),
        (16.55, False, (15, 15)),
    ],
)
def test_next_poll_waits_for_a_predicted_end_only_when_the_backoff_would_poll_just_before_it(
    done_in: float, created: bool, expected: tuple[float, float]
) -> None:
    now = T0 + SECONDS(100)
    for seed in range(20):
        at = PollSchedule(jitter=0).next_poll(
            now=now, unchanged_polls=0, rng=random.Random(seed), polls=30,
            created_at=T0 if created else None, done_at=now + SECONDS(done_in),
        )  # fmt: skip
        low, high = expected
        assert low <= (at - now).total_seconds() <= high


@pytest.mark.parametrize(
    ("schedule", "age", "expected"),
    [
        (PollSchedule(), 130, 13.0),  # a tenth of the batch's age
        (PollSchedule(), 5, 1.0),  # never sooner than ``first``
        (PollSchedule(), -30, 1.0),
        # a sub-second ``first``: a new batch, or one created "in the future" by another
        # daemon's clock (a negative age counts as 0), waits ``first``
        (PollSchedule(first=0.05), 0, 0.05),
        (PollSchedule(first=0.05), -30, 0.05),
        (PollSchedule(first=0.05), 2, 0.2),
    ],
)
def test_a_predicted_end_brings_the_poll_no_nearer_than_first_and_a_tenth_of_the_age(
    schedule: PollSchedule, age: float, expected: float
) -> None:
    assert schedule.delay(unchanged_polls=20, polls=20, age=age, done_in=0) == expected


@pytest.mark.parametrize(
    ("schedule", "expires_in", "expected"),
    [
        # the backoff says 50.625 s (15 × 1.5^3)
        (PollSchedule(jitter=0), None, 50.625),
        (PollSchedule(jitter=0), 100, 50.625),  # expiry beyond the poll: nothing changes
        (PollSchedule(jitter=0), 50.625, 50.625),  # the poll at the very moment: not over it
        (PollSchedule(jitter=0), 10, 25.0),  # expiry before it: 15 s after expiry instead
        (PollSchedule(jitter=0), 0, 50.625),  # expiring now, or expired: an ordinary poll
        (PollSchedule(jitter=0), -1, 50.625),
        # at most a minute after expiry, however slow the backoff
        (PollSchedule(initial=120, jitter=0), 10, 70.0),
    ],
)
def test_next_poll_never_steps_over_expiry_and_comes_soon_after_it(
    schedule: PollSchedule, expires_in: float | None, expected: float
) -> None:
    expires = None if expires_in is None else T0 + SECONDS(expires_in)
    assert _wait(schedule, T0, unchanged_polls=3, expires_at=expires) == expected


@pytest.mark.parametrize(
    ("counts", "before", "took", "done_in"),
    [
        # 10 of 100 in 10 s, from nothing seen before (the earlier poll saw no counts): 90 s more
        ({"total": 100, "completed": 10}, None, 10, 90),
        ({"total": 100, "completed": 10}, {}, 10, 90),
        # a single request done since: 5 of 10 left at one per 10 s
        ({"total": 10, "completed": 5}, {"total": 10, "completed": 4}, 10, 50),
        # a pace measured over one second
        ({"total": 100, "completed": 50}, {"total": 100, "completed": 0}, 1, 1),
        # failed requests are done too
        ({"total": 100, "completed": 10, "failed": 30}, {"total": 100, "completed": 20}, 20, 60),
        # a count that is not a whole number (null, text, a boolean) counts as 0
        ({"total": 100, "completed": 10, "failed": None}, None, 10, 90),
        ({"total": 100, "completed": 10, "failed": "5"}, None, 10, 90),
        ({"total": 100, "completed": 10, "failed": True}, None, 10, 90),
    ],
)
def test_eta_is_when_the_pace_between_two_polls_runs_the_rest(
    counts: dict[str, object], before: dict[str, object] | None, took: float, done_in: float
) -> None:
    now = T0 + SECONDS(took)
    assert eta(status="in_progress", counts=counts, before=before, since=T0, now=now) == (
        now + SECONDS(done_in)
    )


def test_eta_needs_time_between_the_two_polls() -> None:
    counts, before = {"total": 100, "completed": 50}, {"total": 100, "completed": 0}
    assert eta(status="in_progress", counts=counts, before=before, since=T0, now=T0) is None


def test_polls_within_counts_a_poll_a_second_in_the_first_ten_seconds() -> None:
    # the worst case: the first poll 0.9 s after the create (1 s less the jitter), then every poll
    # predicting an end as near as allowed (1 s while a tenth of the age is less): 0.9, 1.9… 9.9
    assert polls_within(PollSchedule(), 10) == 10
    assert polls_within(PollSchedule(), 9.85) == 9


def test_polls_within_counts_early_polls_again_only_from_the_second_change() -> None:
    # A toy schedule, by hand: a backoff of 4 s doubling up to 8 s, early polls 1 s, 2 s (4 s is
    # no sooner than the backoff), no prediction, no jitter. Each change comes when the backoff
    # has reached 8 s, that is after one unchanged poll.
    toy = PollSchedule(
        initial=4, factor=2, maximum=8, jitter=0, first=1, first_factor=2, age_share=1e9
    )
    # validating → in_progress after the 1st poll: the early polls go on where they were (the
    # 2nd poll 2 s after the 1st), then the backoff: polls at 1, 3, 11, 19 s
    assert [polls_within(toy, s, changes=1) for s in (0.9, 1, 2.9, 3, 10.9, 11, 19)] == [
        0, 1, 1, 2, 2, 3, 4,
    ]  # fmt: skip
    # → finalizing after the 2nd: early polls again from that change: 1, 3, then 4, 6, 14 s
    assert [polls_within(toy, s, changes=2) for s in (3, 4, 5.9, 6, 13.9, 14)] == [
        2, 3, 3, 4, 4, 5,
    ]  # fmt: skip


def test_retry_delays_spread_over_the_whole_upper_half_of_the_ceiling() -> None:
    rng = random.Random(7)
    delays = [RetrySchedule(base=2, maximum=300).delay(4, rng) for _ in range(500)]
    # ceiling 16 s: between 8 and 16 s, reaching both ends
    assert 8 <= min(delays) < 8.5 and 15.5 < max(delays) <= 16
