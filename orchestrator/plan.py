"""Planning: a pending job becomes validated, packed batches, in one transaction.

The requests are read once, in enqueue order, through a server-side cursor: each is checked
(``domain/requests.py``) and its JSONL line measured, and the packer cuts contiguous runs of them
into chunks. If any request is sure to fail, the job fails at once, naming the requests and what is
wrong with them, and nothing is planned or sent. Otherwise one ``batches`` row per chunk and one
narrow ``batch_items`` row per request are written, and the job moves to ``running``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.orm import Session

from orchestrator.config import TargetConfig
from orchestrator.db import repo
from orchestrator.db.models import Batch, Job
from orchestrator.domain import requests as rq
from orchestrator.domain.packing import Chunk, Packer
from orchestrator.domain.states import BatchState, JobStatus

log = structlog.get_logger(__name__)

FETCH_ROWS = 2000
MAX_LISTED_PROBLEMS = 5


@dataclasses.dataclass
class Validation:
    chunks: list[Chunk] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    invalid: int = 0
    total: int = 0
    bytes: int = 0

    def message(self) -> str:
        listed = "; ".join(self.problems)
        more = self.invalid - len(self.problems)
        tail = f"; and {more} more" if more > 0 else ""
        noun = "request is" if self.invalid == 1 else "requests are"
        return f"{self.invalid} of {self.total} {noun} invalid, nothing was sent: {listed}{tail}"


def rules_for(job: Job, target: TargetConfig) -> rq.Rules:
    return rq.Rules(
        endpoint=job.endpoint,
        supported_endpoints=target.endpoints,
        requires_provider=target.requires_provider,
        max_custom_id_length=target.max_custom_id_length,
        max_line_bytes=target.file_byte_budget,
    )


def request_rows(session: Session, sql: str, params: dict[str, Any]) -> Any:
    """Stream request rows (custom_id, provider, method, url, body as text, seq) in seq order."""
    return session.execute(sa.text(sql), params).yield_per(FETCH_ROWS)


def validate_and_pack(session: Session, job: Job, target: TargetConfig) -> Validation:
    rules = rules_for(job, target)
    result = Validation()
    endpoint_problem = rq.endpoint_problem(rules)
    if endpoint_problem:
        result.problems.append(endpoint_problem)
        result.invalid = 1
        return result
    packer = Packer(max_requests=target.max_requests_per_file, max_bytes=target.file_byte_budget)
    rows = request_rows(
        session,
        "SELECT custom_id, provider, method, url, body::text AS body, seq "
        "FROM orchestrator.requests WHERE job_id = :job ORDER BY seq",
        {"job": job.id},
    )
    for r in rows:
        row = rq.RequestRow(r.custom_id, r.provider, r.method, r.url, r.body)
        line = rq.build_line(row, endpoint=job.endpoint, include_provider=target.requires_provider)
        result.total += 1
        problem = rq.request_problem(row, orjson.loads(r.body), len(line), rules)
        if problem:
            result.invalid += 1
            if len(result.problems) < MAX_LISTED_PROBLEMS:
                result.problems.append(f"request {r.custom_id!r}: {problem}")
            continue
        result.bytes += len(line)
        if not result.invalid:
            closed = packer.add(r.seq, len(line))
            if closed:
                result.chunks.append(closed)
    last = packer.finish()
    if last:
        result.chunks.append(last)
    return result


def plan_job(session: Session, job: Job, target: TargetConfig | None, now: dt.datetime) -> str:
    """Validate and plan a locked pending job. Returns the job's new status."""
    if job.cancel_requested_at is not None:
        _finish(session, job, JobStatus.CANCELLED, now, None)
        repo.record_event(session, "job_cancelled", job_id=job.id, stage="pending")
        return JobStatus.CANCELLED
    if target is None:
        return fail_job(session, job, now, f"unknown target {job.target!r}: it is not configured")
    validation = validate_and_pack(session, job, target)
    if validation.invalid:
        return fail_job(session, job, now, validation.message())
    if validation.total == 0:
        return fail_job(
            session,
            job,
            now,
            "the job has no requests; insert them in the same transaction as the job",
        )
    for chunk in validation.chunks:
        create_batch(session, job, chunk, now=now)
    session.execute(
        sa.update(Job)
        .where(Job.id == job.id)
        .values(
            status=JobStatus.RUNNING,
            started_at=now,
            request_count=validation.total,
            batch_count=len(validation.chunks),
            updated_at=sa.func.now(),
        )
    )
    repo.record_event(
        session,
        "job_planned",
        job_id=job.id,
        requests=validation.total,
        batches=len(validation.chunks),
        bytes=validation.bytes,
    )
    log.info(
        "job_planned",
        job_id=job.id,
        requests=validation.total,
        batches=len(validation.chunks),
        bytes=validation.bytes,
    )
    return JobStatus.RUNNING


def create_batch(session: Session, job: Job, chunk: Chunk, *, now: dt.datetime) -> int:
    batch_id = session.execute(
        sa.insert(Batch)
        .values(
            job_id=job.id,
            target=job.target,
            endpoint=job.endpoint,
            priority=job.priority,
            round=1,
            state=BatchState.PLANNED,
            request_count=chunk.count,
            bytes=chunk.bytes,
            next_run_at=now,
        )
        .returning(Batch.id)
    ).scalar_one()
    session.execute(
        sa.text(
            "INSERT INTO orchestrator.batch_items (batch_id, custom_id, job_id, seq, attempt) "
            "SELECT :batch, custom_id, job_id, seq, 1 FROM orchestrator.requests "
            "WHERE job_id = :job AND seq BETWEEN :first AND :last"
        ),
        {"batch": batch_id, "job": job.id, "first": chunk.first_seq, "last": chunk.last_seq},
    )
    repo.record_event(
        session,
        "batch_planned",
        job_id=job.id,
        batch_id=batch_id,
        requests=chunk.count,
        bytes=chunk.bytes,
    )
    return batch_id


def fail_job(session: Session, job: Job, now: dt.datetime, message: str) -> str:
    _finish(session, job, JobStatus.FAILED, now, message)
    repo.record_event(session, "job_failed", job_id=job.id, stage="validation", error=message)
    log.error("job_failed", job_id=job.id, stage="validation", error=message)
    return JobStatus.FAILED


def _finish(
    session: Session, job: Job, status: JobStatus, now: dt.datetime, error: str | None
) -> None:
    session.execute(
        sa.update(Job)
        .where(Job.id == job.id)
        .values(status=status, error=error, finished_at=now, updated_at=sa.func.now())
    )
