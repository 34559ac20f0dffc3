"""initial schema: jobs, requests, batches, batch_items, results, events, workers, prices

Revision ID: 0001
Revises:
Create Date: 2026-11-26 00:55:09.173701

This revision is closed: views (and any other change) added from now on go in their own
revision, never into this one, so that a database already at 0001 receives them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Wake the daemons when a job is enqueued or a cancel is requested (delivered at commit).
# Views for reporting tools (psql, Metabase, Grafana).
EXTRA_UPGRADE = [
    """
    CREATE FUNCTION orchestrator.notify_work() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('orchestrator', TG_TABLE_NAME);
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER jobs_notify
    AFTER INSERT OR UPDATE OF cancel_requested_at ON orchestrator.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION orchestrator.notify_work()
    """,
    """
    CREATE VIEW orchestrator.job_summary AS
    SELECT j.id AS job_id, j.name, j.status, j.target, j.endpoint,
           j.request_count, j.succeeded_count, j.failed_count,
           GREATEST(COALESCE(j.request_count, 0) - j.succeeded_count - j.failed_count, 0)
               AS unfinished_count,
           j.batch_count, j.prompt_tokens, j.completion_tokens, j.total_tokens, j.cost,
           j.error, j.created_at, j.started_at, j.finished_at,
           j.finished_at - j.created_at AS duration
    FROM orchestrator.jobs j
    """,
    """
    CREATE VIEW orchestrator.request_results AS
    SELECT q.job_id, q.custom_id, q.seq,
           CASE WHEN r.succeeded THEN 'succeeded'
                WHEN r.custom_id IS NOT NULL THEN 'failed'
                WHEN j.status = 'cancelled' THEN 'cancelled'
                WHEN j.status IN ('completed', 'failed') THEN 'not_run'
                ELSE 'pending' END AS status,
           r.status_code,
           r.response #>> '{choices,0,message,content}' AS content,
           r.error ->> 'message' AS error_message,
           r.response, r.error, r.model, r.prompt_tokens, r.completion_tokens,
           r.total_tokens, r.attempt, r.batch_id, r.created_at AS finished_at
    FROM orchestrator.requests q
    JOIN orchestrator.jobs j ON j.id = q.job_id
    LEFT JOIN orchestrator.results r ON r.job_id = q.job_id AND r.custom_id = q.custom_id
    """,
    """
    CREATE VIEW orchestrator.cost_by_day_model AS
    SELECT date_trunc('day', r.created_at) AS day, r.model,
           count(*) AS results, count(*) FILTER (WHERE r.succeeded) AS succeeded,
           sum(r.prompt_tokens) AS prompt_tokens, sum(r.completion_tokens) AS completion_tokens,
           sum(r.total_tokens) AS total_tokens,
           sum(((r.prompt_tokens - r.cached_tokens) * p.input_per_mtok
                + r.cached_tokens * COALESCE(p.cached_input_per_mtok, p.input_per_mtok)
                + r.completion_tokens * p.output_per_mtok) / 1000000) AS estimated_cost
    FROM orchestrator.results r
    LEFT JOIN LATERAL (
        SELECT * FROM orchestrator.prices p
        WHERE p.model = r.model AND p.valid_from <= r.created_at
        ORDER BY p.valid_from DESC LIMIT 1
    ) p ON true
    GROUP BY 1, 2
    """,
    """
    CREATE VIEW orchestrator.batch_cost_by_day AS
    SELECT date_trunc('day', b.finished_at) AS day, b.target,
           count(*) AS batches, sum(b.request_count) AS requests,
           sum(b.total_tokens) AS total_tokens, sum(b.cost) AS cost
    FROM orchestrator.batches b
    WHERE b.state = 'done'
    GROUP BY 1, 2
    """,
]

EXTRA_DOWNGRADE = [
    "DROP VIEW IF EXISTS orchestrator.batch_cost_by_day",
    "DROP VIEW IF EXISTS orchestrator.cost_by_day_model",
    "DROP VIEW IF EXISTS orchestrator.request_results",
    "DROP VIEW IF EXISTS orchestrator.job_summary",
    "DROP TRIGGER IF EXISTS jobs_notify ON orchestrator.jobs",
    "DROP FUNCTION IF EXISTS orchestrator.notify_work()",
]


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("batch_id", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column(
            "detail",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        schema="orchestrator",
    )
    op.create_index(
        op.f("ix_events_job_id_id"), "events", ["job_id", "id"], unique=False, schema="orchestrator"
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("target", sa.Text(), server_default="fastrouter", nullable=False),
        sa.Column("endpoint", sa.Text(), server_default="/v1/chat/completions", nullable=False),
        sa.Column("completion_window", sa.Text(), server_default="24h", nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("request_count", sa.Integer(), nullable=True),
        sa.Column("batch_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("succeeded_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost", sa.Numeric(precision=20, scale=8), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.CheckConstraint("max_attempts >= 1", name=op.f("ck_jobs_max_attempts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        schema="orchestrator",
    )
    op.create_index(
        op.f("ix_jobs_status_priority_id"),
        "jobs",
        ["status", "priority", "id"],
        unique=False,
        schema="orchestrator",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "prices",
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("input_per_mtok", sa.Numeric(precision=20, scale=8), nullable=False),
        sa.Column("output_per_mtok", sa.Numeric(precision=20, scale=8), nullable=False),
        sa.Column("cached_input_per_mtok", sa.Numeric(precision=20, scale=8), nullable=True),
        sa.PrimaryKeyConstraint("model", "valid_from", name=op.f("pk_prices")),
        schema="orchestrator",
    )
    op.create_table(
        "results",
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("custom_id", sa.Text(), nullable=False),
        sa.Column("batch_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="1", nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("completion_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("total_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cached_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reasoning_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("job_id", "custom_id", name=op.f("pk_results")),
        schema="orchestrator",
    )
    op.create_table(
        "target_state",
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("target", name=op.f("pk_target_state")),
        schema="orchestrator",
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
        schema="orchestrator",
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("round", sa.Integer(), server_default="1", nullable=False),
        sa.Column("state", sa.Text(), server_default="planned", nullable=False),
        sa.Column("remote_status", sa.Text(), nullable=True),
        sa.Column("remote_batch_id", sa.Text(), nullable=True),
        sa.Column("input_file_id", sa.Text(), nullable=True),
        sa.Column("output_file_id", sa.Text(), nullable=True),
        sa.Column("error_file_id", sa.Text(), nullable=True),
        sa.Column("request_count", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("request_counts", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("succeeded_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("retried_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("usage", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("cost", sa.Numeric(precision=20, scale=8), nullable=True),
        sa.Column("cost_source", sa.Text(), nullable=True),
        sa.Column("remote", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("poll_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("unchanged_polls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("step_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lease_owner", sa.UUID(), nullable=True),
        sa.Column("lease_token", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("idempotency_key", sa.UUID(), nullable=True),
        sa.Column("create_attempted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("ambiguous_creates", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cancel_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("remote_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("in_progress_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finalizing_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("remote_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('planned', 'uploaded', 'creating', 'submitted', 'ingesting', 'done', 'failed', 'cancelled', 'superseded')",
            name=op.f("ck_batches_state"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["orchestrator.jobs.id"],
            name=op.f("fk_batches_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.UniqueConstraint("remote_batch_id", name=op.f("uq_batches_remote_batch_id")),
        schema="orchestrator",
    )
    op.create_index(
        op.f("ix_batches_job_id"), "batches", ["job_id"], unique=False, schema="orchestrator"
    )
    op.create_index(
        "ix_batches_runnable",
        "batches",
        ["next_run_at"],
        unique=False,
        schema="orchestrator",
        postgresql_where=sa.text("state NOT IN ('done', 'failed', 'cancelled', 'superseded')"),
    )
    op.create_table(
        "requests",
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("custom_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("method", sa.Text(), server_default="POST", nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.CheckConstraint("method = 'POST'", name=op.f("ck_requests_method")),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["orchestrator.jobs.id"],
            name=op.f("fk_requests_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "custom_id", name=op.f("pk_requests")),
        sa.UniqueConstraint("job_id", "seq", name=op.f("uq_requests_job_id_seq")),
        schema="orchestrator",
    )
    op.create_table(
        "batch_items",
        sa.Column("batch_id", sa.BigInteger(), nullable=False),
        sa.Column("custom_id", sa.Text(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="1", nullable=False),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["orchestrator.batches.id"],
            name=op.f("fk_batch_items_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id", "custom_id"],
            ["orchestrator.requests.job_id", "orchestrator.requests.custom_id"],
            name=op.f("fk_batch_items_job_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "custom_id", name=op.f("pk_batch_items")),
        schema="orchestrator",
    )
    for statement in EXTRA_UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in EXTRA_DOWNGRADE:
        op.execute(statement)
    op.drop_table("batch_items", schema="orchestrator")
    op.drop_table("requests", schema="orchestrator")
    op.drop_index(
        "ix_batches_runnable",
        table_name="batches",
        schema="orchestrator",
        postgresql_where=sa.text("state NOT IN ('done', 'failed', 'cancelled', 'superseded')"),
    )
    op.drop_index(op.f("ix_batches_job_id"), table_name="batches", schema="orchestrator")
    op.drop_table("batches", schema="orchestrator")
    op.drop_table("workers", schema="orchestrator")
    op.drop_table("target_state", schema="orchestrator")
    op.drop_table("results", schema="orchestrator")
    op.drop_table("prices", schema="orchestrator")
    op.drop_index(
        op.f("ix_jobs_status_priority_id"),
        table_name="jobs",
        schema="orchestrator",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_table("jobs", schema="orchestrator")
    op.drop_index(op.f("ix_events_job_id_id"), table_name="events", schema="orchestrator")
    op.drop_table("events", schema="orchestrator")
