"""``ledger.take_call_permit`` and ``ledger.call_cap_reached``: the per-minute call count that
every daemon shares (``max_calls_per_minute``), with values worked out by hand."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest
import structlog
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.clock import UTC
from orchestrator.db import ledger, queries
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from tests.support import query

T = "fastrouter"
MINUTE = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NEXT = MINUTE + dt.timedelta(minutes=1)


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url, pool_size=10)
    yield make_sessionmaker(engine)
    engine.dispose()


def permit(sessions: sessionmaker[Session], minute: dt.datetime, cap: int = 3) -> int | None:
    with unit_of_work(sessions) as s:
        return ledger.take_call_permit(s, T, minute=minute, cap=cap)


def counter(db_url: str) -> tuple[dt.datetime, int]:
    ((minute, calls),) = query(
        db_url, "SELECT calls_minute, calls_in_minute FROM orchestrator.target_state"
    )
    return minute, calls


def test_a_cap_of_three_grants_three_calls_a_minute_then_starts_again(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    # Given no row for the target yet: the first call makes it
    assert [permit(sessions, MINUTE) for _ in range(4)] == [1, 2, 3, None]
    assert counter(db_url) == (MINUTE, 3)  # the refused call counted nothing
    # When the next minute comes, the count starts again at 1
    assert [permit(sessions, NEXT) for _ in range(4)] == [1, 2, 3, None]
    assert counter(db_url) == (NEXT, 3)
    # A minute skipped entirely changes nothing: still 3 in the one after
    later = NEXT + dt.timedelta(minutes=5)
    assert [permit(sessions, later) for _ in range(4)] == [1, 2, 3, None]


def test_a_clock_behind_counts_toward_the_later_minute_and_cannot_reset_it(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    # Given a daemon took 2 calls of 12:01
    assert [permit(sessions, NEXT) for _ in range(2)] == [1, 2]
    # When a daemon whose clock still says 12:00 asks, its call is the 3rd of 12:01, and then
    # there is none left for either clock
    assert permit(sessions, MINUTE) == 3
    assert permit(sessions, MINUTE) is None
    assert permit(sessions, NEXT) is None
    assert counter(db_url) == (NEXT, 3)


def test_a_cap_of_zero_grants_nothing(db_url: str, sessions: sessionmaker[Session]) -> None:
    assert permit(sessions, MINUTE, cap=0) is None
    assert query(db_url, "SELECT count(*) FROM orchestrator.target_state") == [(0,)]


def test_concurrent_callers_share_the_cap_exactly(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    # Eight threads (as eight workers of several daemons would) ask for 5 permits each, 40 in
    # all, of a cap of 12: exactly 12 are granted, numbered 1 to 12.
    granted: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def ask() -> None:
        start.wait()
        for _ in range(5):
            got = permit(sessions, MINUTE, cap=12)
            if got is not None:
                with lock:
                    granted.append(got)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(granted) == list(range(1, 13))


def test_the_cap_blocks_the_target_until_the_next_minute_once_and_keeps_a_pause(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    # Given the target's calls of 12:00 are used up
    with structlog.testing.capture_logs() as logs:
        with unit_of_work(sessions) as s:
            first = ledger.call_cap_reached(s, T, until=NEXT, cap=3)
        # When another caller meets the cap in the same minute
        with unit_of_work(sessions) as s:
            again = ledger.call_cap_reached(s, T, until=NEXT, cap=3)
    # Then the target is blocked until 12:01, and the block was recorded once
    assert (first, again) == (True, False)
    assert query(db_url, "SELECT blocked_until, paused, reason FROM orchestrator.target_state") == [
        (NEXT, False, "call cap: max_calls_per_minute = 3 reached")
    ]
    assert [e["event"] for e in logs] == ["target_call_cap_reached"]
    assert query(db_url, "SELECT kind, detail FROM orchestrator.events") == [
        (
            "target_call_cap_reached",
            {"target": T, "max_calls_per_minute": 3, "until": NEXT.isoformat()},
        )
    ]
    # A paused target (bad key) met by the cap in a later minute stays paused, for its reason
    with unit_of_work(sessions) as s:
        ledger.block_target(s, T, until=MINUTE, reason="key refused", paused=True)
        assert ledger.call_cap_reached(s, T, until=NEXT + dt.timedelta(minutes=1), cap=3)
    assert query(db_url, "SELECT paused, reason FROM orchestrator.target_state") == [
        (True, "key refused")
    ]


def test_the_rate_limited_gauge_counts_a_429_and_not_our_own_cap(
    sessions: sessionmaker[Session],
) -> None:
    def limited() -> bool:
        with unit_of_work(sessions) as s:
            return queries.gauges(s, now=MINUTE, stuck_after=3600).rate_limited[T]

    # Given the target blocked until 12:01 by its call cap: not rate limited by the provider
    with unit_of_work(sessions) as s:
        ledger.call_cap_reached(s, T, until=NEXT, cap=3)
    assert limited() is False
    # When the provider answers 429 meanwhile: rate limited
    with unit_of_work(sessions) as s:
        ledger.block_target(s, T, until=NEXT, reason="rate limited: slow down", paused=False)
    assert limited() is True
