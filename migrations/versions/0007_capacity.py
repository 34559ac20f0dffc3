"""capacity: what each batch holds for the provider's limits, what the daemon has learned of them,
and the per-minute count of API calls per target

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 13:40:00

* ``batches.model`` (the one model of its requests: a batch is planned per model, as OpenAI
  requires) and ``batches.estimated_tokens`` (its prompt tokens by the planner's estimate, which
  admission adds up per target and model against the enqueued-token budget).
* ``batches.waiting_since`` and ``batches.waiting_reason``: a batch that admission holds back
  (``waiting_for_capacity: …``), shown by ``orchestrator status``, the job view and a metric.
* ``capacity``: per target and model, the enqueued-token limit learned from a provider's
  ``token_limit_exceeded`` message; it survives restarts and is shared by every daemon.
* ``target_state.calls_minute`` and ``calls_in_minute``: the API calls made to a target in the
  current minute, by every daemon, for its ``max_calls_per_minute``.
* ``ix_batches_capacity``: the batches admission reads (uploaded, creating, submitted) by target
  and model, whatever the history beside them.
* ``job_summary`` gains ``waiting_for_capacity`` (how many of the job's batches wait) and
  ``waiting_reason`` (why, for one of them).

Open batches planned before this revision get their model and estimate from their requests.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "orchestrator"

JOB_SUMMARY = """
    CREATE OR REPLACE VIEW orchestrator.job_summary AS
    SELECT j.id AS job_id, j.name, j.status, j.target, j.endpoint, j.priority,
           j.request_count, j.succeeded_count, j.failed_count,
           GREATEST(COALESCE(j.request_count, 0) - j.succeeded_count - j.failed_count, 0)
               AS unfinished_count,
           CASE WHEN j.status = 'completed' THEN 1.0
                WHEN COALESCE(j.request_count, 0) = 0 THEN 0.0
                ELSE round(LEAST(1.0, (j.succeeded_count + j.failed_count)::numeric
                                      / j.request_count), 4) END AS progress,
           j.batch_count, b.prompt_tokens, b.completion_tokens, b.total_tokens,
           b.cached_tokens, b.reasoning_tokens,
           j.cost, round(j.cost, 2) AS cost_usd, j.cost_source,
           j.error, j.metadata, j.created_at, j.started_at, j.finished_at,
           COALESCE(j.finished_at, now()) - j.created_at AS age,
           COALESCE(j.finished_at, now()) - j.started_at AS duration,
           b.waiting_for_capacity, b.waiting_reason
    FROM orchestrator.jobs j
    LEFT JOIN LATERAL (
        SELECT COALESCE(sum(x.prompt_tokens), 0) AS prompt_tokens,
               COALESCE(sum(x.completion_tokens), 0) AS completion_tokens,
               COALESCE(sum(x.total_tokens), 0) AS total_tokens,
               COALESCE(sum(x.cached_tokens), 0) AS cached_tokens,
               COALESCE(sum(x.reasoning_tokens), 0) AS reasoning_tokens,
               count(*) FILTER (WHERE x.waiting_since IS NOT NULL
                                  AND x.state = 'uploaded') AS waiting_for_capacity,
               min(x.waiting_reason) FILTER (WHERE x.waiting_since IS NOT NULL
                                              AND x.state = 'uploaded') AS waiting_reason
          FROM orchestrator.batches x WHERE x.job_id = j.id
    ) b ON true
"""

# The model and the estimate of the batches already open (the planner's rule: a request's
# prompt tokens are its body's length in bytes over 4, rounded up).
BACKFILL = """
    UPDATE orchestrator.batches b
       SET model = e.model, estimated_tokens = e.tokens
      FROM (SELECT bi.batch_id, min(COALESCE(r.body ->> 'model', '')) AS model,
                   sum(ceil(octet_length(r.body::text) / 4.0))::bigint AS tokens
              FROM orchestrator.batch_items bi
              JOIN orchestrator.batches ob ON ob.id = bi.batch_id
              JOIN orchestrator.requests r ON r.job_id = bi.job_id AND r.custom_id = bi.custom_id
             WHERE ob.state NOT IN ('done', 'failed', 'cancelled', 'superseded')
             GROUP BY bi.batch_id) e
     WHERE b.id = e.batch_id
"""


def upgrade() -> None:
    op.add_column("batches", sa.Column("model", sa.Text(), nullable=True), schema=S)
    op.add_column(
        "batches",
        sa.Column("estimated_tokens", sa.BigInteger(), server_default="0", nullable=False),
        schema=S,
    )
    op.add_column(
        "batches", sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True), schema=S
    )
    op.add_column("batches", sa.Column("waiting_reason", sa.Text(), nullable=True), schema=S)
    op.create_index(
        "ix_batches_capacity",
        "batches",
        ["target", "model"],
        schema=S,
        postgresql_where="state IN ('uploaded', 'creating', 'submitted')",
    )
    op.create_table(
        "capacity",
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("learned_tokens", sa.BigInteger(), nullable=False),
        sa.Column("learned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.CheckConstraint("learned_tokens >= 1", name=op.f("ck_capacity_learned_tokens")),
        sa.PrimaryKeyConstraint("target", "model", name=op.f("pk_capacity")),
        schema=S,
    )
    op.add_column("target_state", sa.Column("calls_minute", sa.DateTime(timezone=True)), schema=S)
    op.add_column(
        "target_state",
        sa.Column("calls_in_minute", sa.Integer(), server_default="0", nullable=False),
        schema=S,
    )
    op.execute(BACKFILL)
    op.execute(JOB_SUMMARY)


def downgrade() -> None:
    op.execute("DROP VIEW orchestrator.job_summary")
    op.execute(_job_summary_0005())
    op.drop_column("target_state", "calls_in_minute", schema=S)
    op.drop_column("target_state", "calls_minute", schema=S)
    op.drop_table("capacity", schema=S)
    op.drop_index("ix_batches_capacity", table_name="batches", schema=S)
    for column in ("waiting_reason", "waiting_since", "estimated_tokens", "model"):
        op.drop_column("batches", column, schema=S)


def _job_summary_0005() -> str:
    path = Path(__file__).with_name("0005_money.py")
    spec = importlib.util.spec_from_file_location("_orchestrator_0005", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    views: list[str] = module.VIEWS
    return next(sql for sql in views if "VIEW orchestrator.job_summary" in sql)
