"""Reads: what the steps, the daemon and the commands need to know. None of them writes (writes
are :mod:`orchestrator.db.ledger`'s), and none commits: the caller frames the transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.orm import Session

from orchestrator.db.models import Batch, Job, Price, Result, TargetState, Worker
from orchestrator.db.session import raw_connection
from orchestrator.domain import cost
from orchestrator.domain.states import BATCH_TERMINAL, JOB_TERMINAL, BatchState, JobStatus
from orchestrator.errors import LeaseLost

OPEN_STATES = tuple(s.value for s in BatchState if s not in BATCH_TERMINAL)
FETCH_ROWS = 2000


@dataclasses.dataclass(frozen=True)
class Claimed:
    """A leased batch and what its steps need to know about its job."""

    COLUMNS: ClassVar[str] = """
        b.id, b.job_id, b.lease_token AS token, b.state, b.target, b.endpoint, b.round,
        b.remote_batch_id, b.input_file_id, b.idempotency_key, b.step_failures,
        b.failing_since, b.unchanged_polls, b.remote_status, b.expires_at, b.cancel_sent_at,
        b.cancel_attempts, b.cancel_retry_at,
        b.create_attempted_at, b.request_count,
        j.completion_window AS job_completion_window, j.max_attempts AS job_max_attempts,
        (j.cancel_requested_at IS NOT NULL) AS job_cancel_requested
    """

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
    failing_since: dt.datetime | None
    unchanged_polls: int
    remote_status: str | None
    expires_at: dt.datetime | None
    cancel_sent_at: dt.datetime | None
    cancel_attempts: int
    cancel_retry_at: dt.datetime | None
    create_attempted_at: dt.datetime | None
    request_count: int
    job_completion_window: str
    job_max_attempts: int
    job_cancel_requested: bool


def refresh(session: Session, batch_id: int, token: int) -> Claimed:
    """The batch as it is now, if ``token`` still holds its lease (else LeaseLost)."""
    row = (
        session.execute(
            sa.text(
                f"SELECT {Claimed.COLUMNS} FROM orchestrator.batches b "
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


# -- jobs ----------------------------------------------------------------------------------


def pending_job_ids(session: Session, limit: int) -> list[int]:
    rows = session.execute(
        sa.select(Job.id)
        .where(Job.status == JobStatus.PENDING)
        .order_by(Job.priority.desc(), Job.id)
        .limit(limit)
    )
    return list(rows.scalars())


def lock_pending_job(session: Session, job_id: int) -> Job | None:
    """The job, locked (FOR NO KEY UPDATE: the lock order), if it is still pending and nobody
    else is planning it."""
    return session.scalars(
        sa.select(Job)
        .where(Job.id == job_id, Job.status == JobStatus.PENDING)
        .with_for_update(skip_locked=True, key_share=True)
    ).first()


def job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def jobs(session: Session, job_ids: Iterable[int] | None = None, *, limit: int = 20) -> list[Job]:
    """The given jobs in id order, or the ``limit`` newest."""
    if job_ids is not None:
        query = sa.select(Job).where(Job.id.in_(list(job_ids))).order_by(Job.id)
    else:
        query = sa.select(Job).order_by(Job.id.desc()).limit(limit)
    return list(session.scalars(query).all())


def open_job_count(session: Session, job_ids: Iterable[int]) -> int:
    return session.execute(
        sa.select(sa.func.count())
        .select_from(Job)
        .where(Job.id.in_(list(job_ids)), Job.status.not_in([t.value for t in JOB_TERMINAL]))
    ).scalar_one()


def job_ids(session: Session) -> list[int]:
    return list(session.scalars(sa.select(Job.id).order_by(Job.id)).all())


def jobs_by_status(session: Session) -> list[tuple[str, int]]:
    rows = session.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status)).all()
    return [(status, n) for status, n in rows]


def job_batches(session: Session, job_id: int) -> list[Batch]:
    return list(
        session.scalars(sa.select(Batch).where(Batch.job_id == job_id).order_by(Batch.id)).all()
    )


def results(session: Session, job_id: int, *, failed_only: bool = False) -> Iterator[Result]:
    query = sa.select(Result).where(Result.job_id == job_id).order_by(Result.custom_id)
    if failed_only:
        query = query.where(Result.succeeded.is_(False))
    yield from session.scalars(query.execution_options(yield_per=1000))


# -- batches ---------------------------------------------------------------------------------


def batch(session: Session, batch_id: int) -> Batch:
    return session.get_one(Batch, batch_id)


def open_batches_by_state(session: Session) -> list[tuple[str, int]]:
    rows = session.execute(
        sa.select(Batch.state, sa.func.count())
        .where(Batch.state.not_in([x.value for x in BATCH_TERMINAL]))
        .group_by(Batch.state)
    ).all()
    return [(state, n) for state, n in rows]


def job_requests(session: Session, job_id: int) -> Any:
    """The job's requests (custom_id, provider, method, url, body as text, seq) in enqueue order,
    through a server-side cursor."""
    return session.execute(
        sa.text(
            "SELECT custom_id, provider, method, url, body::text AS body, seq "
            "FROM orchestrator.requests WHERE job_id = :job ORDER BY seq"
        ),
        {"job": job_id},
    ).yield_per(FETCH_ROWS)


def batch_requests(session: Session, batch_id: int) -> Any:
    """The requests of a batch, as :func:`job_requests`, in the batch's order."""
    return session.execute(
        sa.text(
            "SELECT r.custom_id, r.provider, r.method, r.url, r.body::text AS body, r.seq "
            "FROM orchestrator.batch_items bi JOIN orchestrator.requests r "
            "  ON r.job_id = bi.job_id AND r.custom_id = bi.custom_id "
            "WHERE bi.batch_id = :b ORDER BY bi.seq"
        ),
        {"b": batch_id},
    ).yield_per(FETCH_ROWS)


def batch_members(session: Session, batch_id: int) -> dict[str, int]:
    """custom_id → attempt for every request in the batch (plain psycopg: 50,000 rows)."""
    cursor = raw_connection(session).execute(
        "SELECT custom_id, attempt FROM orchestrator.batch_items WHERE batch_id = %s", (batch_id,)
    )
    return dict(cursor.fetchall())


def results_exist(session: Session, batch_id: int) -> bool:
    """Whether any request of the batch has a result already (a re-ingest)."""
    return bool(
        session.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM orchestrator.batch_items bi "
                "JOIN orchestrator.results r ON r.job_id = bi.job_id AND r.custom_id = bi.custom_id "
                "WHERE bi.batch_id = :b)"
            ),
            {"b": batch_id},
        ).scalar_one()
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


# -- targets and workers ---------------------------------------------------------------------


def target_state(session: Session, target: str) -> TargetState | None:
    return session.get(TargetState, target)


def target_states(session: Session) -> Sequence[TargetState]:
    return session.scalars(sa.select(TargetState).order_by(TargetState.target)).all()


def running_workers(session: Session) -> Sequence[Worker]:
    return session.scalars(sa.select(Worker).where(Worker.stopped_at.is_(None))).all()


class OrphanOwner(NamedTuple):
    """The batch that sent a create key, as the orphan sweep needs to judge a remote batch."""

    key: uuid.UUID
    batch_id: int
    job_id: int
    state: str
    idempotency_key: uuid.UUID | None
    remote_batch_id: str | None


def create_key_owners(session: Session, keys: list[uuid.UUID]) -> dict[uuid.UUID, OrphanOwner]:
    """For each of ``keys`` that we sent, the batch that sent it."""
    if not keys:
        return {}
    rows = session.execute(
        sa.text(
            "SELECT k.key, b.id AS batch_id, b.job_id, b.state, b.idempotency_key, "
            "b.remote_batch_id FROM orchestrator.create_keys k "
            "JOIN orchestrator.batches b ON b.id = k.batch_id WHERE k.key = ANY(:keys)"
        ),
        {"keys": keys},
    ).all()
    return {row.key: OrphanOwner(*row) for row in rows}


def adopted_remote_ids(session: Session, remote_ids: list[str]) -> set[str]:
    """Which of ``remote_ids`` a batch of ours has adopted."""
    if not remote_ids:
        return set()
    return set(
        session.execute(
            sa.text(
                "SELECT remote_batch_id FROM orchestrator.batches WHERE remote_batch_id = ANY(:ids)"
            ),
            {"ids": remote_ids},
        ).scalars()
    )


class StuckBatch(NamedTuple):
    id: int
    job_id: int
    target: str
    state: str
    remote_status: str | None
    failing_since: dt.datetime | None
    expires_at: dt.datetime | None
    last_error: str | None


def stuck_batches(
    session: Session, *, now: dt.datetime, stuck_after: float, limit: int = 100
) -> list[StuckBatch]:
    """Open batches whose steps have been failing for ``stuck_after`` seconds or more, or that the
    provider still reports running past their ``expires_at`` (by ``stuck_after`` too)."""
    rows = session.execute(
        sa.text(
            f"""
            SELECT id, job_id, target, state, remote_status, failing_since, expires_at, last_error
              FROM orchestrator.batches
             WHERE state IN ({", ".join(repr(s) for s in OPEN_STATES)})
               AND (failing_since <= :since
                    OR (state = 'submitted' AND expires_at <= :since
                        AND remote_status IN ('validating', 'in_progress', 'finalizing',
                                              'cancelling')))
             ORDER BY LEAST(failing_since, expires_at), id
             LIMIT :n
            """
        ),
        {"since": now - dt.timedelta(seconds=stuck_after), "n": limit},
    ).all()
    return [StuckBatch(*row) for row in rows]
