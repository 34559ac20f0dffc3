"""The tables of schema ``orchestrator``. Tables only: writes live in ``ledger.py``, reads in
``queries.py``, rules in ``domain/``.

Requests are immutable once enqueued: the per-attempt state of a request lives in narrow
``batch_items`` rows and its outcome in ``results``, so neither planning nor ingest ever rewrites the
wide request rows (a request body is often kilobytes; rewriting it would halve ingest speed).
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from orchestrator.db.base import SCHEMA, Base
from orchestrator.domain.states import BatchState, JobStatus

NOW = sa.text("now()")


def _in(column: str, values: type[JobStatus] | type[BatchState]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.CheckConstraint(_in("status", JobStatus), name="status"),
        sa.CheckConstraint("max_attempts >= 1", name="max_attempts"),
        sa.Index(None, "status", "priority", "id", postgresql_where=sa.text("status = 'pending'")),
        # the gauges: open jobs by status and age, whatever the history beside them
        sa.Index(
            "ix_jobs_open",
            "status",
            "created_at",
            postgresql_where=sa.text("status IN ('pending', 'running')"),
        ),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    name: Mapped[str | None]
    target: Mapped[str] = mapped_column(server_default="fastrouter")
    endpoint: Mapped[str] = mapped_column(server_default="/v1/chat/completions")
    completion_window: Mapped[str] = mapped_column(server_default="24h")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", server_default=sa.text("'{}'::jsonb"))
    priority: Mapped[int] = mapped_column(server_default="0")
    max_attempts: Mapped[int] = mapped_column(server_default="3")
    status: Mapped[str] = mapped_column(server_default=JobStatus.PENDING.value)
    cancel_requested_at: Mapped[dt.datetime | None]
    error: Mapped[str | None]
    request_count: Mapped[int | None]
    batch_count: Mapped[int] = mapped_column(server_default="0")
    succeeded_count: Mapped[int] = mapped_column(server_default="0")
    failed_count: Mapped[int] = mapped_column(server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    total_tokens: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    # The sum of the costs the batches report (or our prices give); NULL while none is known.
    cost: Mapped[Decimal | None]
    cost_source: Mapped[str | None]  # provider, prices, none; mixed when its batches differ
    max_cost: Mapped[Decimal | None]  # a budget: over it, the job fails before any upload
    estimated_prompt_tokens: Mapped[int | None] = mapped_column(sa.BigInteger)
    estimated_max_output_tokens: Mapped[int | None] = mapped_column(sa.BigInteger)
    estimated_max_cost: Mapped[Decimal | None] = mapped_column(sa.Numeric(24, 12))
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class Request(Base):
    __tablename__ = "requests"
    __table_args__ = (
        sa.UniqueConstraint("job_id", "seq"),
        sa.CheckConstraint("method = 'POST'", name="method"),
    )

    job_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.jobs.id", ondelete="CASCADE"), primary_key=True
    )
    custom_id: Mapped[str] = mapped_column(primary_key=True)
    # Enqueue order; packing cuts contiguous runs of it into chunks.
    seq: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(always=False))
    provider: Mapped[str | None]
    method: Mapped[str] = mapped_column(server_default="POST")
    url: Mapped[str | None]
    body: Mapped[dict[str, Any]]


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (
        sa.CheckConstraint(_in("state", BatchState), name="state"),
        sa.Index(
            "ix_batches_runnable",
            "next_run_at",
            postgresql_where=sa.text("state NOT IN ('done', 'failed', 'cancelled', 'superseded')"),
        ),
        sa.Index(None, "job_id"),
        # the day views: done batches by when they finished
        sa.Index(
            "ix_batches_finished_at_done", "finished_at", postgresql_where=sa.text("state = 'done'")
        ),
        # admission: the batches waiting to be created and those in flight, by target and model
        sa.Index(
            "ix_batches_capacity",
            "target",
            "model",
            postgresql_where=sa.text("state IN ('uploaded', 'creating', 'submitted')"),
        ),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    job_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.jobs.id", ondelete="CASCADE")
    )
    target: Mapped[str]
    endpoint: Mapped[str]
    priority: Mapped[int] = mapped_column(server_default="0")
    round: Mapped[int] = mapped_column(
        server_default="1"
    )  # 1 = first submission, 2 = resubmission…
    state: Mapped[str] = mapped_column(server_default=BatchState.PLANNED.value)
    remote_status: Mapped[str | None]
    remote_batch_id: Mapped[str | None] = mapped_column(unique=True)
    input_file_id: Mapped[str | None]
    output_file_id: Mapped[str | None]
    error_file_id: Mapped[str | None]
    request_count: Mapped[int]
    bytes: Mapped[int] = mapped_column(sa.BigInteger)
    request_counts: Mapped[dict[str, Any] | None]
    succeeded_count: Mapped[int] = mapped_column(server_default="0")
    failed_count: Mapped[int] = mapped_column(server_default="0")
    retried_count: Mapped[int] = mapped_column(server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    total_tokens: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    cached_tokens: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    usage: Mapped[dict[str, Any] | None]
    cost: Mapped[Decimal | None]
    cost_source: Mapped[str | None]
    remote: Mapped[dict[str, Any] | None]  # the last batch object the provider returned
    # The one model of its requests (None: planned before revision 0007 with none stated), and
    # their prompt tokens by the planner's estimate (domain/capacity.py): what admission counts.
    model: Mapped[str | None]
    estimated_tokens: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    # Held back by admission since then, and why (``waiting_for_capacity: …``); None otherwise.
    waiting_since: Mapped[dt.datetime | None]
    waiting_reason: Mapped[str | None]
    next_run_at: Mapped[dt.datetime]
    poll_count: Mapped[int] = mapped_column(server_default="0")
    unchanged_polls: Mapped[int] = mapped_column(server_default="0")
    # the daemon's clock at the last poll, when request_counts were seen (migration 0008)
    polled_at: Mapped[dt.datetime | None]
    step_failures: Mapped[int] = mapped_column(server_default="0")
    failing_since: Mapped[dt.datetime | None]  # when the current run of failed steps began
    lease_owner: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    lease_token: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    lease_expires_at: Mapped[dt.datetime | None]
    idempotency_key: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    create_attempted_at: Mapped[dt.datetime | None]
    # When its requests were first sent (the first create of their first round; carried on to
    # later rounds and split parts): requests the provider never runs are sent again until the
    # daemon's patience_seconds have passed since then.
    first_sent_at: Mapped[dt.datetime | None]
    create_attempts: Mapped[int] = mapped_column(server_default="0")
    ambiguous_creates: Mapped[int] = mapped_column(server_default="0")
    cancel_sent_at: Mapped[dt.datetime | None]
    cancel_attempts: Mapped[int] = mapped_column(server_default="0")  # failed cancels so far
    cancel_retry_at: Mapped[dt.datetime | None]  # when a failed cancel is tried again
    orphans_cancelled: Mapped[int] = mapped_column(server_default="0")  # see OrphanBatch
    remote_created_at: Mapped[dt.datetime | None]
    expires_at: Mapped[dt.datetime | None]
    in_progress_at: Mapped[dt.datetime | None]
    finalizing_at: Mapped[dt.datetime | None]
    remote_finished_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None]
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    finished_at: Mapped[dt.datetime | None]


class BatchItem(Base):
    """Which requests a batch holds, and at which attempt of each."""

    __tablename__ = "batch_items"
    # No foreign keys: items are written from the requests themselves, in the transaction that
    # writes their batch (migration 0008, 0009: a key's check per row was half the cost of
    # writing them). A trigger deletes a batch's items with it.

    batch_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    custom_id: Mapped[str] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.BigInteger)
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    attempt: Mapped[int] = mapped_column(server_default="1")
    # The retryable error this attempt ended with, if it is to be sent again.
    error: Mapped[dict[str, Any] | None]
    # Whether the provider ran it in this batch: False for a line saying it never did
    # (batch_expired), which uses no attempt; None until the batch is ingested.
    ran: Mapped[bool | None]


class Result(Base):
    """One row per request, written once its outcome is final.

    No foreign keys here on purpose: ingest writes only members of the batch it ingests (it checks
    them against ``batch_items``), and the COPY into this table is the hot path.
    """

    __tablename__ = "results"
    # a batch's results (its costs per model at ingest, a reingest's clean-up)
    __table_args__ = (sa.Index(None, "batch_id"),)

    job_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    custom_id: Mapped[str] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(sa.BigInteger)
    attempt: Mapped[int] = mapped_column(server_default="1")
    succeeded: Mapped[bool]
    status_code: Mapped[int | None]
    response: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    model: Mapped[str | None]
    prompt_tokens: Mapped[int] = mapped_column(server_default="0")
    completion_tokens: Mapped[int] = mapped_column(server_default="0")
    total_tokens: Mapped[int] = mapped_column(server_default="0")
    cached_tokens: Mapped[int] = mapped_column(server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class Event(Base):
    """Append-only audit trail, written in the transaction of the transition it records."""

    __tablename__ = "events"
    __table_args__ = (sa.Index(None, "job_id", "id"), sa.Index("ix_events_at", "at"))

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    # when it was written (not when its transaction began: migration 0008)
    at: Mapped[dt.datetime] = mapped_column(server_default=sa.text("clock_timestamp()"))
    job_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    batch_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    kind: Mapped[str]
    detail: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'::jsonb"))


class Worker(Base):
    """One row per daemon process (advisory, for dashboards and ``orchestrator status``)."""

    __tablename__ = "workers"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    hostname: Mapped[str]
    pid: Mapped[int]
    version: Mapped[str]
    started_at: Mapped[dt.datetime]
    heartbeat_at: Mapped[dt.datetime]
    stopped_at: Mapped[dt.datetime | None]


class TargetState(Base):
    """Shared by every daemon: a target nobody may call before ``blocked_until`` (429), or that
    is paused because its key or account does not work (401/402/403)."""

    __tablename__ = "target_state"

    target: Mapped[str] = mapped_column(primary_key=True)
    blocked_until: Mapped[dt.datetime | None]
    paused: Mapped[bool] = mapped_column(server_default=sa.false())
    reason: Mapped[str | None]
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    orphans_swept_at: Mapped[dt.datetime | None]  # the last orphan sweep of this target
    # API calls made to the target in the minute that began at calls_minute, by every daemon
    # (its max_calls_per_minute)
    calls_minute: Mapped[dt.datetime | None]
    calls_in_minute: Mapped[int] = mapped_column(server_default="0")


class Capacity(Base):
    """Per target and model: the enqueued-token limit the provider stated in a
    ``token_limit_exceeded`` error (the lowest one seen, lowered further when a batch admitted
    under it still failed). Admission keeps the model's batches in flight within it."""

    __tablename__ = "capacity"
    __table_args__ = (sa.CheckConstraint("learned_tokens >= 1", name="learned_tokens"),)

    target: Mapped[str] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(primary_key=True)
    learned_tokens: Mapped[int] = mapped_column(sa.BigInteger)
    learned_at: Mapped[dt.datetime]
    message: Mapped[str | None]  # the provider's words


class CreateKey(Base):
    """Every idempotency key sent with ``POST /batches``, recorded with the intent (before the
    call): a remote batch whose metadata carries one is ours."""

    __tablename__ = "create_keys"

    key: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    batch_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.batches.id", ondelete="CASCADE"), index=True
    )
    sent_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)


class OrphanBatch(Base):
    """A remote batch carrying one of our keys that no batch adopted (a create the provider
    carried out after we had given up on it and created again): cancelled by the orphan sweep."""

    __tablename__ = "orphan_batches"

    remote_batch_id: Mapped[str] = mapped_column(primary_key=True)
    target: Mapped[str]
    batch_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.batches.id", ondelete="CASCADE"), index=True
    )
    remote_status: Mapped[str | None]
    found_at: Mapped[dt.datetime] = mapped_column(server_default=NOW)
    cancelled_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None]


class Price(Base):
    """USD per million tokens, by target (``'*'``: any) and model, versioned by ``valid_from``;
    ``batch_discount`` is the fraction taken off (0.5 for list prices at OpenAI's batch rate, 0
    for a row that holds batch prices). ``orchestrator.price_in_force()`` picks the row in force
    and ``orchestrator.token_cost()`` does the arithmetic (migration 0005): one rule for the
    daemon and the views."""

    __tablename__ = "prices"
    __table_args__ = (
        sa.UniqueConstraint("target", "model", "valid_from"),
        sa.CheckConstraint("batch_discount >= 0 AND batch_discount < 1", name="batch_discount"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(always=False), primary_key=True)
    target: Mapped[str] = mapped_column(server_default="*")
    model: Mapped[str]
    valid_from: Mapped[dt.datetime]
    input_per_mtok: Mapped[Decimal]
    output_per_mtok: Mapped[Decimal]
    cached_input_per_mtok: Mapped[Decimal | None]
    batch_discount: Mapped[Decimal] = mapped_column(sa.Numeric(6, 5), server_default="0")


class BatchModelCost(Base):
    """Per batch and model: its results, their tokens, the price row in force when the batch
    finished, and the cost at that price (kept where the provider reports a cost too)."""

    __tablename__ = "batch_model_costs"

    batch_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.batches.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(primary_key=True)
    price_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.prices.id")
    )
    results: Mapped[int]
    prompt_tokens: Mapped[int] = mapped_column(sa.BigInteger)
    completion_tokens: Mapped[int] = mapped_column(sa.BigInteger)
    cached_tokens: Mapped[int] = mapped_column(sa.BigInteger)
    reasoning_tokens: Mapped[int] = mapped_column(sa.BigInteger)
    total_tokens: Mapped[int] = mapped_column(sa.BigInteger)
    cost: Mapped[Decimal | None] = mapped_column(sa.Numeric(24, 12))


__all__ = [
    "Batch",
    "BatchItem",
    "BatchModelCost",
    "Capacity",
    "CreateKey",
    "Event",
    "Job",
    "OrphanBatch",
    "Price",
    "Request",
    "Result",
    "TargetState",
    "Worker",
]
