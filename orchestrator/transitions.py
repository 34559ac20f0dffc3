"""Database-only transitions that several steps end with: each runs inside the caller's fenced
transaction, so the batch's move and everything it implies for the job commit together."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.orm import Session

from orchestrator.db import repo
from orchestrator.db.models import Batch, Job
from orchestrator.domain import lines as ln
from orchestrator.domain.states import BatchState, JobStatus
from orchestrator.ingest import fail_requests

log = structlog.get_logger(__name__)


def add_to_job(
    session: Session,
    job_id: int,
    *,
    succeeded: int = 0,
    failed: int = 0,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    total_tokens: int = 0,
    cost: Decimal | None = None,
    batches: int = 0,
    error: str | None = None,
) -> None:
    """Add to the job's counters (an UPDATE, so it also locks the job row)."""
    values: dict[str, Any] = {
        "succeeded_count": Job.succeeded_count + succeeded,
        "failed_count": Job.failed_count + failed,
        "prompt_tokens": Job.prompt_tokens + prompt_tokens,
        "completion_tokens": Job.completion_tokens + completion_tokens,
        "total_tokens": Job.total_tokens + total_tokens,
        "batch_count": Job.batch_count + batches,
        "updated_at": sa.func.now(),
    }
    if cost is not None:
        values["cost"] = sa.func.coalesce(Job.cost, 0) + cost
    if error is not None:
        values["error"] = sa.func.coalesce(Job.error, error)
    session.execute(sa.update(Job).where(Job.id == job_id).values(**values))


def recount_job(session: Session, job_id: int) -> None:
    """Counters from the results themselves (after an upsert, where increments could double)."""
    session.execute(
        sa.text(
            """
            UPDATE orchestrator.jobs j SET
                succeeded_count = c.ok, failed_count = c.ko, prompt_tokens = c.pt,
                completion_tokens = c.ct, total_tokens = c.tt, updated_at = now()
              FROM (SELECT count(*) FILTER (WHERE succeeded) AS ok,
                           count(*) FILTER (WHERE NOT succeeded) AS ko,
                           COALESCE(sum(prompt_tokens), 0) AS pt,
                           COALESCE(sum(completion_tokens), 0) AS ct,
                           COALESCE(sum(total_tokens), 0) AS tt
                      FROM orchestrator.results WHERE job_id = :job) c
             WHERE j.id = :job
            """
        ),
        {"job": job_id},
    )


def finish_job_if_done(session: Session, job_id: int, now: dt.datetime) -> str | None:
    """If the job has no open batch left, give it its final status.

    The job row is locked first: of two transactions closing the job's last two batches at once,
    the second waits for the first to commit and then sees both batches closed.
    """
    job = repo.lock_job(session, job_id)
    if job.status != JobStatus.RUNNING or repo.open_batch_count(session, job_id):
        return None
    failed_batches = session.execute(
        sa.select(sa.func.count())
        .select_from(Batch)
        .where(Batch.job_id == job_id, Batch.state == BatchState.FAILED)
    ).scalar_one()
    if job.cancel_requested_at is not None:
        status = JobStatus.CANCELLED
    elif failed_batches:
        status = JobStatus.FAILED
    else:
        status = JobStatus.COMPLETED
    session.execute(
        sa.update(Job)
        .where(Job.id == job_id)
        .values(status=status, finished_at=now, updated_at=sa.func.now())
    )
    repo.record_event(
        session,
        f"job_{status}",
        job_id=job_id,
        succeeded=job.succeeded_count,
        failed=job.failed_count,
        total_tokens=job.total_tokens,
        cost=None if job.cost is None else str(job.cost),
    )
    level = log.error if status == JobStatus.FAILED else log.info
    level(
        f"job_{status}",
        job_id=job_id,
        succeeded=job.succeeded_count,
        failed=job.failed_count,
        total_tokens=job.total_tokens,
        cost=None if job.cost is None else str(job.cost),
        error=job.error,
    )
    return status


def fail_batch(
    session: Session,
    *,
    batch_id: int,
    job_id: int,
    token: int,
    now: dt.datetime,
    message: str,
    code: str | None = None,
    by_line: dict[int, dict[str, Any]] | None = None,
) -> None:
    """The batch failed as a whole: its requests get final failure results carrying the
    provider's message, the job's ``error`` says why, and the job ends ``failed``."""
    repo.release(
        session, batch_id, token, state=BatchState.FAILED, last_error=message, finished_at=now
    )
    written = fail_requests(
        session, batch_id=batch_id, error=ln.batch_error(message, code), by_line=by_line
    )
    add_to_job(session, job_id, failed=written, error=message)
    repo.record_event(
        session, "batch_failed", job_id=job_id, batch_id=batch_id, error=message, requests=written
    )
    log.error("batch_failed", job_id=job_id, batch_id=batch_id, error=message, requests=written)
    finish_job_if_done(session, job_id, now)


def cancel_batch_locally(
    session: Session, *, batch_id: int, job_id: int, token: int, now: dt.datetime, stage: str
) -> None:
    """A batch of a cancelled job that never reached the provider: nothing to call."""
    repo.release(session, batch_id, token, state=BatchState.CANCELLED, finished_at=now)
    repo.record_event(session, "batch_cancelled", job_id=job_id, batch_id=batch_id, stage=stage)
    log.info("batch_cancelled", job_id=job_id, batch_id=batch_id, stage=stage)
    finish_job_if_done(session, job_id, now)


def _new_batch(
    session: Session, source: Batch, *, round_: int, count: int, now: dt.datetime
) -> int:
    return session.execute(
        sa.insert(Batch)
        .values(
            job_id=source.job_id,
            target=source.target,
            endpoint=source.endpoint,
            priority=source.priority,
            round=round_,
            state=BatchState.PLANNED,
            request_count=count,
            bytes=0,
            next_run_at=now,
        )
        .returning(Batch.id)
    ).scalar_one()


def resubmit(session: Session, batch_id: int, now: dt.datetime) -> tuple[int, int] | None:
    """A new batch (next round) with the requests of ``batch_id`` that have no result yet.

    Returns ``(new_batch_id, requests)``, or None when there is nothing to send again. The new
    batch is a subset of a batch that fitted the target's limits, so it fits too.
    """
    source = session.get_one(Batch, batch_id)
    count = session.execute(
        sa.text(
            "SELECT count(*) FROM orchestrator.batch_items bi WHERE bi.batch_id = :b AND NOT EXISTS"
            " (SELECT 1 FROM orchestrator.results r"
            "   WHERE r.job_id = bi.job_id AND r.custom_id = bi.custom_id)"
        ),
        {"b": batch_id},
    ).scalar_one()
    if not count:
        return None
    new_id = _new_batch(session, source, round_=source.round + 1, count=count, now=now)
    session.execute(
        sa.text(
            "INSERT INTO orchestrator.batch_items (batch_id, custom_id, job_id, seq, attempt) "
            "SELECT :new, bi.custom_id, bi.job_id, bi.seq, bi.attempt + 1 "
            "FROM orchestrator.batch_items bi WHERE bi.batch_id = :b AND NOT EXISTS "
            " (SELECT 1 FROM orchestrator.results r"
            "   WHERE r.job_id = bi.job_id AND r.custom_id = bi.custom_id)"
        ),
        {"new": new_id, "b": batch_id},
    )
    add_to_job(session, source.job_id, batches=1)
    return new_id, count


def split(session: Session, *, batch_id: int, token: int, now: dt.datetime) -> list[int]:
    """Replace a batch the provider found too large by two halves (same attempt numbers)."""
    source = session.get_one(Batch, batch_id)
    seqs = (
        session.execute(
            sa.text("SELECT seq FROM orchestrator.batch_items WHERE batch_id = :b ORDER BY seq"),
            {"b": batch_id},
        )
        .scalars()
        .all()
    )
    middle = seqs[len(seqs) // 2]
    halves = [(seqs[0], middle - 1, len(seqs) // 2), (middle, seqs[-1], len(seqs) - len(seqs) // 2)]
    new_ids = []
    for first, last, count in halves:
        new_id = _new_batch(session, source, round_=source.round, count=count, now=now)
        session.execute(
            sa.text(
                "INSERT INTO orchestrator.batch_items (batch_id, custom_id, job_id, seq, attempt) "
                "SELECT :new, custom_id, job_id, seq, attempt FROM orchestrator.batch_items "
                "WHERE batch_id = :b AND seq BETWEEN :first AND :last"
            ),
            {"new": new_id, "b": batch_id, "first": first, "last": last},
        )
        new_ids.append(new_id)
    repo.release(session, batch_id, token, state=BatchState.SUPERSEDED, finished_at=now)
    add_to_job(session, source.job_id, batches=1)
    repo.record_event(
        session,
        "batch_split",
        job_id=source.job_id,
        batch_id=batch_id,
        into=new_ids,
        requests=len(seqs),
    )
    log.warning("batch_split", job_id=source.job_id, batch_id=batch_id, into=new_ids)
    return new_ids
