"""Session-first query functions. None of them commits: the caller frames the transaction.

The claim and the fence are the two statements everything else rests on (DESIGN.md section 4):

* :func:`claim_batches` leases runnable batches with ``FOR NO KEY UPDATE SKIP LOCKED``; an expired
  lease is simply claimable again, so no reaper is needed;
* :func:`fence` is the first statement of every write a step makes: it matches the batch only while
  the step's lease token is current, and locks the row until the transaction ends.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.orm import Session

from orchestrator.db.models import Batch, Event, Job, Price, TargetState, Worker
from orchestrator.domain import cost
from orchestrator.domain.states import BATCH_TERMINAL, BatchState, JobStatus, sources_of
from orchestrator.errors import IllegalTransition, LeaseLost

OPEN_STATES = tuple(s.value for s in BatchState if s not in BATCH_TERMINAL)


@dataclasses.dataclass(frozen=True)
class Claimed:
    """A leased batch and what its steps need to know about its job."""

    id: int
    job_id: int
    token: int
    state: str
    target: str
    endpoint: str
    round: int
    remote_batch_id: str | None
    input_file_id: str | None
    idempotency_key: uuid.UUID | None
    step_failures: int
    unchanged_polls: int
    remote_status: str | None
    expires_at: dt.datetime | None
    cancel_sent_at: dt.datetime | None
    create_attempted_at: dt.datetime | None
    request_count: int
    job_completion_window: str
    job_max_attempts: int
    job_cancel_requested: bool


_CLAIMED = """
    b.id, b.job_id, b.lease_token AS token, b.state, b.target, b.endpoint, b.round,
    b.remote_batch_id, b.input_file_id, b.idempotency_key, b.step_failures, b.unchanged_polls,
    b.remote_status, b.expires_at, b.cancel_sent_at, b.create_attempted_at, b.request_count,
    j.completion_window AS job_completion_window, j.max_attempts AS job_max_attempts,
    (j.cancel_requested_at IS NOT NULL) AS job_cancel_requested
"""

_CLAIM = sa.text(
    f"""
    WITH c AS (
        SELECT b.id FROM orchestrator.batches b
        WHERE b.state IN ({", ".join(repr(s) for s in OPEN_STATES)})
          AND b.next_run_at <= :now
          AND (b.lease_expires_at IS NULL OR b.lease_expires_at < :now)
          AND NOT EXISTS (
              SELECT 1 FROM orchestrator.target_state t
              WHERE t.target = b.target AND t.blocked_until > :now)
        ORDER BY b.priority DESC, b.next_run_at, b.id
        LIMIT :n
        FOR NO KEY UPDATE OF b SKIP LOCKED
    )
    UPDATE orchestrator.batches b
       SET lease_owner = :me, lease_token = b.lease_token + 1,
           lease_expires_at = :now + make_interval(secs => :ttl)
      FROM c, orchestrator.jobs j
     WHERE b.id = c.id AND j.id = b.job_id
    RETURNING {_CLAIMED}
    """
)


def claim_batches(
    session: Session, *, owner: uuid.UUID, now: dt.datetime, ttl: float, limit: int
) -> list[Claimed]:
    if limit <= 0:
        return []
    rows = session.execute(_CLAIM, {"me": owner, "now": now, "ttl": ttl, "n": limit}).mappings()
    return [Claimed(**row) for row in rows]


def refresh(session: Session, batch_id: int, token: int) -> Claimed:
    """The batch as it is now, if ``token`` still holds its lease (else LeaseLost)."""
    row = (
        session.execute(
            sa.text(
                f"SELECT {_CLAIMED} FROM orchestrator.batches b "
                "JOIN orchestrator.jobs j ON j.id = b.job_id "
                "WHERE b.id = :id AND b.lease_token = :token AND b.lease_owner IS NOT NULL"
            ),
            {"id": batch_id, "token": token},
        )
        .mappings()
        .first()
    )
    if row is None:
        raise LeaseLost(f"batch {batch_id}: lease token {token} is no longer current")
    return Claimed(**row)


def fence(session: Session, batch_id: int, token: int, **values: Any) -> None:
    """Write ``values`` to the batch if ``token`` still holds its lease, else raise LeaseLost.

    A new ``state`` is written only from a state the transition table allows it from
    (``domain.states.BATCH_TRANSITIONS``), checked in the same statement; any other move raises
    IllegalTransition and writes nothing. The row stays locked until the transaction ends, so the
    lease cannot change hands under the rest of the transaction.
    """
    conditions = [Batch.id == batch_id, Batch.lease_token == token]
    new_state = values.get("state")
    if new_state is not None:
        conditions.append(Batch.state.in_(sorted(sources_of(BatchState(new_state)))))
    stmt = (
        sa.update(Batch)
        .where(*conditions)
        .values(updated_at=sa.func.now(), **values)
        .returning(Batch.id)
    )
    if session.execute(stmt).scalar_one_or_none() is not None:
        return
    current = session.execute(
        sa.select(Batch.state).where(Batch.id == batch_id, Batch.lease_token == token)
    ).scalar_one_or_none()
    if current is None:
        raise LeaseLost(f"batch {batch_id}: lease token {token} is no longer current")
    raise IllegalTransition(f"batch {batch_id}: {current} -> {new_state} is not an allowed move")


def release(session: Session, batch_id: int, token: int, **values: Any) -> None:
    """Fenced write that also gives the lease back."""
    fence(session, batch_id, token, lease_owner=None, lease_expires_at=None, **values)


def renew_leases(
    session: Session,
    *,
    owner: uuid.UUID,
    tokens: Mapping[int, int],
    now: dt.datetime,
    ttl: float,
) -> set[int]:
    """Extend the leases this worker still holds; returns the ids renewed.

    Rows locked by one of our own transactions (an ingest in progress) are skipped: while locked
    nobody can claim them, and the transaction's fence checks the token anyway.
    """
    if not tokens:
        return set()
    ids = list(tokens)
    rows = session.execute(
        sa.text(
            """
            UPDATE orchestrator.batches b
               SET lease_expires_at = :now + make_interval(secs => :ttl)
              FROM (SELECT id FROM orchestrator.batches
                     WHERE id = ANY(:ids) AND lease_owner = :me
                     FOR NO KEY UPDATE SKIP LOCKED) l
             WHERE b.id = l.id
            RETURNING b.id, b.lease_token
            """
        ),
        {"ids": ids, "me": owner, "now": now, "ttl": ttl},
    ).all()
    return {row.id for row in rows if tokens.get(row.id) == row.lease_token}


def release_leases(session: Session, *, owner: uuid.UUID, tokens: Mapping[int, int]) -> int:
    """Give back leases at shutdown, only where our token is still the current one."""
    released = 0
    for batch_id, token in tokens.items():
        result = session.execute(
            sa.update(Batch)
            .where(Batch.id == batch_id, Batch.lease_token == token, Batch.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
        )
        released += result.rowcount or 0  # type: ignore[attr-defined]
    return released


# -- jobs --------------------------------------------------------------------------------


def pending_job_ids(session: Session, limit: int) -> list[int]:
    rows = session.execute(
        sa.select(Job.id)
        .where(Job.status == JobStatus.PENDING)
        .order_by(Job.priority.desc(), Job.id)
        .limit(limit)
    )
    return list(rows.scalars())


def lock_pending_job(session: Session, job_id: int) -> Job | None:
    """The job, locked, if it is still pending and nobody else is planning it."""
    return session.scalars(
        sa.select(Job)
        .where(Job.id == job_id, Job.status == JobStatus.PENDING)
        .with_for_update(skip_locked=True)
    ).first()


def lock_job(session: Session, job_id: int) -> Job:
    """Lock the job row: serialises the transactions that may finish the job."""
    return session.scalars(sa.select(Job).where(Job.id == job_id).with_for_update()).one()


def open_batch_count(session: Session, job_id: int) -> int:
    return session.execute(
        sa.select(sa.func.count())
        .select_from(Batch)
        .where(Batch.job_id == job_id, Batch.state.in_(OPEN_STATES))
    ).scalar_one()


def wake_cancelled_jobs(session: Session, now: dt.datetime) -> int:
    """Make the open batches of jobs with a cancel request runnable now (they may be sleeping
    through a long poll backoff). Batches whose cancel was already sent keep their schedule."""
    result = session.execute(
        sa.text(
            """
            UPDATE orchestrator.batches b SET next_run_at = :now
              FROM (SELECT b2.id FROM orchestrator.batches b2
                      JOIN orchestrator.jobs j ON j.id = b2.job_id
                     WHERE j.status = 'running' AND j.cancel_requested_at IS NOT NULL
                       AND b2.state IN ('planned', 'uploaded', 'creating', 'submitted')
                       AND b2.next_run_at > :now AND b2.cancel_sent_at IS NULL
                       FOR NO KEY UPDATE OF b2 SKIP LOCKED) w
             WHERE b.id = w.id
            """
        ),
        {"now": now},
    )
    return result.rowcount or 0  # type: ignore[attr-defined]


# -- events ------------------------------------------------------------------------------


def record_event(
    session: Session,
    kind: str,
    *,
    job_id: int | None = None,
    batch_id: int | None = None,
    **detail: Any,
) -> None:
    session.execute(
        sa.insert(Event).values(kind=kind, job_id=job_id, batch_id=batch_id, detail=detail)
    )


# -- prices ------------------------------------------------------------------------------


def prices_in_force(
    session: Session, models: Iterable[str], at: dt.datetime
) -> dict[str, cost.Price]:
    """Each model's price row in force at ``at``: the latest ``valid_from`` not after it (the
    rule of the ``cost_by_day_model`` view). A price valid only from a later date is not used."""
    rows = session.execute(
        sa.select(Price)
        .where(Price.model.in_(list(models)), Price.valid_from <= at)
        .order_by(Price.model, Price.valid_from.desc())
        .ext(distinct_on(Price.model))
    ).scalars()
    return {
        p.model: cost.Price(p.input_per_mtok, p.output_per_mtok, p.cached_input_per_mtok)
        for p in rows
    }


# -- targets -----------------------------------------------------------------------------


def block_target(
    session: Session, target: str, *, until: dt.datetime, reason: str, paused: bool
) -> None:
    """Nobody calls ``target`` before ``until``. A later deadline always wins."""
    stmt = sa.dialects.postgresql.insert(TargetState).values(
        target=target, blocked_until=until, paused=paused, reason=reason
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[TargetState.target],
        set_={
            "blocked_until": sa.func.greatest(
                TargetState.blocked_until, stmt.excluded.blocked_until
            ),
            "paused": stmt.excluded.paused,
            "reason": stmt.excluded.reason,
            "updated_at": sa.func.now(),
        },
    )
    session.execute(stmt)


def clear_pause(session: Session, target: str) -> bool:
    """A call to the target worked: lift an auth/account pause. True if one was lifted."""
    result = session.execute(
        sa.update(TargetState)
        .where(TargetState.target == target, TargetState.paused.is_(True))
        .values(paused=False, reason=None, updated_at=sa.func.now())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def target_state(session: Session, target: str) -> TargetState | None:
    return session.get(TargetState, target)


def target_states(session: Session) -> Sequence[TargetState]:
    return session.scalars(sa.select(TargetState).order_by(TargetState.target)).all()


# -- workers -----------------------------------------------------------------------------


def register_worker(
    session: Session,
    *,
    worker_id: uuid.UUID,
    hostname: str,
    pid: int,
    version: str,
    now: dt.datetime,
) -> None:
    session.execute(
        sa.insert(Worker).values(
            id=worker_id,
            hostname=hostname,
            pid=pid,
            version=version,
            started_at=now,
            heartbeat_at=now,
        )
    )


def heartbeat_worker(session: Session, worker_id: uuid.UUID, now: dt.datetime) -> None:
    session.execute(sa.update(Worker).where(Worker.id == worker_id).values(heartbeat_at=now))


def stop_worker(session: Session, worker_id: uuid.UUID, now: dt.datetime) -> None:
    session.execute(
        sa.update(Worker).where(Worker.id == worker_id).values(stopped_at=now, heartbeat_at=now)
    )
