"""The claim and the compare-and-set on real PostgreSQL: leases on the database's clock, SKIP
LOCKED, takeover of expired leases, the transition table."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import uuid

import pytest
import sqlalchemy as sa

from orchestrator.db import ledger, queries
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from orchestrator.domain.states import BatchState
from orchestrator.errors import IllegalTransition, LeaseLost
from tests.support import enqueue, expire_leases, simple_requests

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def sessions(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url, pool_size=10)
    yield make_sessionmaker(engine)
    engine.dispose()


def _batches(db_url: str, n: int, sessions) -> None:  # type: ignore[no-untyped-def]
    job = enqueue(db_url, simple_requests(1))
    with unit_of_work(sessions) as s:
        for _ in range(n):
            s.execute(
                sa.text(
                    "INSERT INTO orchestrator.batches (job_id, target, endpoint, request_count, bytes,"
                    " next_run_at) VALUES (:j, 'fastrouter', '/v1/chat/completions', 1, 1, :t)"
                ),
                {"j": job, "t": T0},
            )


def test_concurrent_claims_never_share_a_batch(db_url: str, sessions) -> None:  # type: ignore[no-untyped-def]
    _batches(db_url, 40, sessions)
    claimed: list[list[int]] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        with unit_of_work(sessions) as s:
            got = ledger.claim_batches(s, owner=uuid.uuid4(), now=T0, ttl=60, limit=5)
        claimed.append([b.id for b in got])

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for chunk in claimed for i in chunk]
    assert len(ids) == 40 and len(set(ids)) == 40


def test_a_leased_batch_is_not_claimed_until_its_lease_expires(db_url: str, sessions) -> None:  # type: ignore[no-untyped-def]
    _batches(db_url, 1, sessions)
    a, b = uuid.uuid4(), uuid.uuid4()
    with unit_of_work(sessions) as s:
        (first,) = ledger.claim_batches(s, owner=a, now=T0, ttl=60, limit=10)
    # a daemon whose own clock is days ahead still sees the lease as live: expiry is the
    # database's business, not the claimer's
    far_ahead = T0 + dt.timedelta(days=3)
    with unit_of_work(sessions) as s:
        assert ledger.claim_batches(s, owner=b, now=far_ahead, ttl=60, limit=10) == []
    expire_leases(db_url)  # the lease's 60 s pass, on the database's clock
    with unit_of_work(sessions) as s:
        (second,) = ledger.claim_batches(s, owner=b, now=T0, ttl=60, limit=10)
    assert second.id == first.id and second.token == first.token + 1
    # the old holder's writes are fenced off
    with pytest.raises(LeaseLost), unit_of_work(sessions) as s:
        ledger.touch(s, first, ["planned"], last_error="late write")
    with unit_of_work(sessions) as s:
        ledger.touch(s, second, ["planned"], last_error="owner write")


def test_heartbeat_renews_only_current_leases(db_url: str, sessions) -> None:  # type: ignore[no-untyped-def]
    _batches(db_url, 2, sessions)
    me = uuid.uuid4()
    with unit_of_work(sessions) as s:
        one, two = ledger.claim_batches(s, owner=me, now=T0, ttl=60, limit=2)
    expire_leases(db_url)
    with unit_of_work(sessions) as s:
        renewed = ledger.renew_leases(
            s, owner=me, tokens={one.id: one.token, two.id: two.token + 7}, ttl=60
        )
    assert renewed == {one.id}
    with unit_of_work(sessions) as s:
        others = ledger.claim_batches(s, owner=uuid.uuid4(), now=T0, ttl=60, limit=5)
    # both are this owner's rows, so both are live again (nobody else could claim them in
    # between); only the lease whose token the caller named is reported as still its own
    assert [b.id for b in others] == []


def test_a_blocked_target_is_not_claimed(db_url: str, sessions) -> None:  # type: ignore[no-untyped-def]
    _batches(db_url, 1, sessions)
    with unit_of_work(sessions) as s:
        ledger.block_target(
            s, "fastrouter", until=T0 + dt.timedelta(seconds=30), reason="429", paused=False
        )
    with unit_of_work(sessions) as s:
        assert (
            ledger.claim_batches(
                s, owner=uuid.uuid4(), now=T0 + dt.timedelta(seconds=29), ttl=60, limit=5
            )
            == []
        )
    with unit_of_work(sessions) as s:
        assert (
            len(
                ledger.claim_batches(
                    s, owner=uuid.uuid4(), now=T0 + dt.timedelta(seconds=31), ttl=60, limit=5
                )
            )
            == 1
        )


def test_a_later_block_is_never_shortened(db_url: str, sessions) -> None:  # type: ignore[no-untyped-def]
    with unit_of_work(sessions) as s:
        ledger.block_target(s, "t", until=T0 + dt.timedelta(seconds=60), reason="a", paused=False)
        ledger.block_target(s, "t", until=T0 + dt.timedelta(seconds=10), reason="b", paused=False)
        state = queries.target_state(s, "t")
        assert state is not None and state.blocked_until == T0 + dt.timedelta(seconds=60)


def test_a_claim_skips_a_batch_locked_by_another_transaction_instead_of_waiting(
    db_url: str,
    sessions,  # type: ignore[no-untyped-def]
) -> None:
    _batches(db_url, 3, sessions)
    # Given a transaction that holds a batch row locked (an ingest in progress, say)
    holder = sessions()
    try:
        locked = holder.execute(
            sa.text("SELECT id FROM orchestrator.batches ORDER BY id LIMIT 1 FOR NO KEY UPDATE")
        ).scalar_one()
        # When another daemon claims, unwilling to wait for any lock
        with unit_of_work(sessions) as s:
            s.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
            got = ledger.claim_batches(s, owner=uuid.uuid4(), now=T0, ttl=60, limit=10)
    finally:
        holder.rollback()
        holder.close()
    # Then it gets the other two at once, and the locked one stays for later
    assert sorted(b.id for b in got) == [locked + 1, locked + 2]


def test_a_state_write_the_table_does_not_allow_is_refused(db_url: str, sessions) -> None:  # type: ignore[no-untyped-def]
    _batches(db_url, 1, sessions)
    with unit_of_work(sessions) as s:
        (b,) = ledger.claim_batches(s, owner=uuid.uuid4(), now=T0, ttl=60, limit=1)
    # a planned batch cannot jump to submitted or done (no intent, no ingest), even by its owner
    for illegal in (BatchState.SUBMITTED, BatchState.DONE, BatchState.INGESTING):
        with (
            pytest.raises(IllegalTransition, match=f"planned -> {illegal}"),
            unit_of_work(sessions) as s,
        ):
            ledger.move(s, b, illegal, last_error="must not stick")
    with unit_of_work(sessions) as s:
        row = s.execute(sa.text("SELECT state, last_error FROM orchestrator.batches")).one()
    assert tuple(row) == ("planned", None)
    # the allowed move goes through; a stale token is still LeaseLost, whatever the move
    with unit_of_work(sessions) as s:
        ledger.move(s, b, BatchState.UPLOADED)
    with pytest.raises(LeaseLost), unit_of_work(sessions) as s:
        ledger.move(s, dataclasses.replace(b, token=b.token - 1), BatchState.DONE)


@dataclasses.dataclass(frozen=True)
class _Lease:
    id: int
    token: int
    job_id: int


def test_done_to_submitted_is_refused_and_the_row_is_unchanged(db_url: str, sessions) -> None:  # type: ignore[no-untyped-def]
    _batches(db_url, 1, sessions)
    with unit_of_work(sessions) as s:
        s.execute(sa.text("UPDATE orchestrator.batches SET state = 'done', lease_token = 7"))
        before = s.execute(sa.text("SELECT b::text FROM orchestrator.batches b")).scalar_one()
        job_id = s.execute(sa.text("SELECT job_id FROM orchestrator.batches")).scalar_one()
    done = _Lease(1, 7, job_id)
    with pytest.raises(IllegalTransition, match="done -> submitted"), unit_of_work(sessions) as s:
        ledger.move(s, done, BatchState.SUBMITTED, remote_batch_id="batch_x")
    with pytest.raises(IllegalTransition), unit_of_work(sessions) as s:
        ledger.reschedule(s, done, next_run_at=T0)  # no write at all to a closed batch
    with unit_of_work(sessions) as s:
        after = s.execute(sa.text("SELECT b::text FROM orchestrator.batches b")).scalar_one()
    assert after == before
