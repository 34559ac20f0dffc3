"""money and tokens: prices per target and model with a batch discount, one SQL rule for the price
in force, the cost of each batch per model, reporting views, and a job's deletion taking its
results and events with it

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 08:40:00

* ``prices`` gains ``target`` (``'*'``: any target; a target's own row wins over ``'*'``),
  ``batch_discount`` (a fraction off list prices: 0.5 for OpenAI's batch rate; 0 when the row
  already holds batch prices) and an ``id``.
* ``orchestrator.price_in_force(target, model, at)`` is the one implementation of "the price in
  force": the latest row whose ``valid_from`` is not after ``at``. ``orchestrator.token_cost``
  is the one implementation of the arithmetic. The daemon and the views both call them.
* ``batch_model_costs``: per batch and model, the results, their tokens, the price row used and
  the cost at our prices (kept even where the provider reports a cost, for comparison).
* ``jobs.cost_source`` next to ``batches.cost_source``: ``provider``, ``prices`` or ``none``.
* ``jobs.max_cost`` (optional budget) and the estimate made when the job is planned:
  ``estimated_prompt_tokens``, ``estimated_max_output_tokens``, ``estimated_max_cost``.
* Deleting a job deletes its results and events. Not a foreign key on ``results`` (a per-row
  check on the ingest's COPY, the hot path): one statement-level trigger does it.
* Views: ``job_summary``, ``request_results`` (the flat view: the answer text, tokens of every
  kind, finish reason, model, cost), ``cost_by_day`` (day × target × model, provider and computed
  cost side by side), ``batches_by_state``. They replace ``cost_by_day_model`` (it priced results
  by when they were written, not by when their batch finished) and ``batch_cost_by_day``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "orchestrator"

FUNCTIONS = [
    """
    CREATE FUNCTION orchestrator.price_in_force(p_target text, p_model text, p_at timestamptz)
    RETURNS SETOF orchestrator.prices LANGUAGE sql STABLE AS $$
        SELECT * FROM orchestrator.prices
         WHERE model = p_model AND target IN (p_target, '*') AND valid_from <= p_at
         ORDER BY target = p_target DESC, valid_from DESC
         LIMIT 1
    $$
    """,
    """
    CREATE FUNCTION orchestrator.token_cost(
        p orchestrator.prices, prompt bigint, cached bigint, completion bigint
    ) RETURNS numeric LANGUAGE sql IMMUTABLE AS $$
        SELECT trim_scale(((prompt - cached) * p.input_per_mtok
                           + cached * COALESCE(p.cached_input_per_mtok, p.input_per_mtok)
                           + completion * p.output_per_mtok)
                          * (1 - p.batch_discount) / 1000000)
    $$
    """,
    # The Responses API's answer: its output_text parts, in order. A function, not a subquery in
    # the view: the planner costs a subquery there for every row (so every job's query went over
    # jit_above_cost: 661 of 718 ms for a job of 9,214 requests was JIT compilation).
    """
    CREATE FUNCTION orchestrator.output_text(response jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT string_agg(c ->> 'text', '' ORDER BY o.n, k.m)
          FROM jsonb_array_elements(CASE WHEN jsonb_typeof(response -> 'output') = 'array'
                                         THEN response -> 'output' ELSE '[]' END)
                   WITH ORDINALITY AS o(item, n),
               jsonb_array_elements(CASE WHEN jsonb_typeof(o.item -> 'content') = 'array'
                                         THEN o.item -> 'content' ELSE '[]' END)
                   WITH ORDINALITY AS k(c, m)
         WHERE c ->> 'type' = 'output_text'
    $$
    """,
    """
    CREATE FUNCTION orchestrator.delete_job_rows() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM orchestrator.results r USING gone g WHERE r.job_id = g.id;
        DELETE FROM orchestrator.events e USING gone g WHERE e.job_id = g.id;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER jobs_delete_rows AFTER DELETE ON orchestrator.jobs
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION orchestrator.delete_job_rows()
    """,
]

VIEWS = [
    """
    CREATE VIEW orchestrator.job_summary AS
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
           COALESCE(j.finished_at, now()) - j.started_at AS duration
    FROM orchestrator.jobs j
    LEFT JOIN LATERAL (
        SELECT COALESCE(sum(x.prompt_tokens), 0) AS prompt_tokens,
               COALESCE(sum(x.completion_tokens), 0) AS completion_tokens,
               COALESCE(sum(x.total_tokens), 0) AS total_tokens,
               COALESCE(sum(x.cached_tokens), 0) AS cached_tokens,
               COALESCE(sum(x.reasoning_tokens), 0) AS reasoning_tokens
          FROM orchestrator.batches x WHERE x.job_id = j.id
    ) b ON true
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
           COALESCE(r.response #>> '{choices,0,message,content}',
                    r.response #>> '{choices,0,text}',
                    orchestrator.output_text(r.response)) AS answer,
           CASE WHEN jsonb_typeof(r.response #> '{data,0,embedding}') = 'array'
                THEN jsonb_array_length(r.response #> '{data,0,embedding}') END
               AS embedding_dimensions,
           COALESCE(r.response #>> '{choices,0,finish_reason}', r.response ->> 'status')
               AS finish_reason,
           r.error ->> 'message' AS error_message,
           COALESCE(r.model, r.response ->> 'model', q.body ->> 'model') AS model,
           r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cached_tokens,
           r.reasoning_tokens,
           orchestrator.token_cost(p, r.prompt_tokens, r.cached_tokens, r.completion_tokens)
               AS cost,
           r.attempt, r.batch_id, b.target, b.finished_at AS batch_finished_at,
           r.response, r.error, r.created_at AS finished_at
    FROM orchestrator.requests q
    JOIN orchestrator.jobs j ON j.id = q.job_id
    LEFT JOIN orchestrator.results r ON r.job_id = q.job_id AND r.custom_id = q.custom_id
    LEFT JOIN orchestrator.batches b ON b.id = r.batch_id
    LEFT JOIN orchestrator.batch_model_costs m
           ON m.batch_id = r.batch_id AND m.model = COALESCE(r.model, q.body ->> 'model')
    LEFT JOIN orchestrator.prices p ON p.id = m.price_id
    """,
    """
    CREATE VIEW orchestrator.cost_by_day AS
    SELECT date_trunc('day', b.finished_at) AS day, b.target, m.model,
           count(DISTINCT b.id) AS batches, sum(m.results) AS results,
           sum(m.prompt_tokens) AS prompt_tokens, sum(m.completion_tokens) AS completion_tokens,
           sum(m.cached_tokens) AS cached_tokens, sum(m.reasoning_tokens) AS reasoning_tokens,
           sum(m.total_tokens) AS total_tokens,
           trim_scale(sum(m.cost)) AS computed_cost,
           trim_scale(sum(CASE WHEN b.cost_source = 'provider' THEN
                    CASE WHEN t.tokens > 0 THEN b.cost * m.total_tokens / t.tokens
                         ELSE b.cost / t.models END END)) AS provider_cost,
           round(sum(m.cost), 2) AS computed_cost_usd,
           round(sum(CASE WHEN b.cost_source = 'provider' THEN
                     CASE WHEN t.tokens > 0 THEN b.cost * m.total_tokens / t.tokens
                          ELSE b.cost / t.models END END), 2) AS provider_cost_usd,
           count(*) FILTER (WHERE m.price_id IS NULL AND m.total_tokens > 0) AS unpriced
    FROM orchestrator.batch_model_costs m
    JOIN orchestrator.batches b ON b.id = m.batch_id
    JOIN LATERAL (
        SELECT sum(x.total_tokens) AS tokens, count(*) AS models
          FROM orchestrator.batch_model_costs x WHERE x.batch_id = m.batch_id
    ) t ON true
    GROUP BY 1, 2, 3
    """,
    """
    CREATE VIEW orchestrator.batches_by_state AS
    SELECT b.target, b.state, count(*) AS batches, sum(b.request_count) AS requests,
           min(b.created_at) AS oldest_created_at, max(b.updated_at) AS last_change_at
    FROM orchestrator.batches b
    GROUP BY 1, 2
    """,
]

OLD_VIEWS = ["job_summary", "request_results", "cost_by_day_model", "batch_cost_by_day"]


def upgrade() -> None:
    for view in OLD_VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {S}.{view}")
    op.execute(f"ALTER TABLE {S}.prices DROP CONSTRAINT pk_prices")
    op.add_column(
        "prices",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        schema=S,
    )
    op.add_column(
        "prices", sa.Column("target", sa.Text(), server_default="*", nullable=False), schema=S
    )
    op.add_column(
        "prices",
        sa.Column("batch_discount", sa.Numeric(6, 5), server_default="0", nullable=False),
        schema=S,
    )
    op.create_primary_key("pk_prices", "prices", ["id"], schema=S)
    op.create_unique_constraint(
        "uq_prices_target_model_valid_from", "prices", ["target", "model", "valid_from"], schema=S
    )
    op.create_check_constraint(
        op.f("ck_prices_batch_discount"),
        "prices",
        "batch_discount >= 0 AND batch_discount < 1",
        schema=S,
    )
    op.add_column("jobs", sa.Column("cost_source", sa.Text()), schema=S)
    op.add_column("jobs", sa.Column("max_cost", sa.Numeric(20, 8)), schema=S)
    op.add_column("jobs", sa.Column("estimated_prompt_tokens", sa.BigInteger()), schema=S)
    op.add_column("jobs", sa.Column("estimated_max_output_tokens", sa.BigInteger()), schema=S)
    op.add_column("jobs", sa.Column("estimated_max_cost", sa.Numeric(24, 12)), schema=S)
    op.create_table(
        "batch_model_costs",
        sa.Column(
            "batch_id",
            sa.BigInteger(),
            sa.ForeignKey(f"{S}.batches.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("model", sa.Text(), primary_key=True),
        sa.Column("price_id", sa.BigInteger(), sa.ForeignKey(f"{S}.prices.id")),
        sa.Column("results", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Numeric(24, 12)),
        schema=S,
    )
    # record_model_costs sums a batch's results at every ingest: without this it scanned all of
    # results (1.4 s at 5 million rows; 1 ms with it).
    op.create_index(op.f("ix_results_batch_id"), "results", ["batch_id"], schema=S)
    op.create_index(
        "ix_batches_finished_at_done",
        "batches",
        ["finished_at"],
        schema=S,
        postgresql_where=sa.text("state = 'done'"),
    )
    for sql in FUNCTIONS + VIEWS:
        op.execute(sql)


def downgrade() -> None:
    for view in ("batches_by_state", "cost_by_day", "request_results", "job_summary"):
        op.execute(f"DROP VIEW IF EXISTS {S}.{view}")
    op.execute(f"DROP TRIGGER IF EXISTS jobs_delete_rows ON {S}.jobs")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.delete_job_rows()")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.output_text(jsonb)")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.token_cost({S}.prices, bigint, bigint, bigint)")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.price_in_force(text, text, timestamptz)")
    op.drop_index("ix_batches_finished_at_done", table_name="batches", schema=S)
    op.drop_index(op.f("ix_results_batch_id"), table_name="results", schema=S)
    op.drop_table("batch_model_costs", schema=S)
    for column in (
        "estimated_max_cost", "estimated_max_output_tokens", "estimated_prompt_tokens",
        "max_cost", "cost_source",
    ):  # fmt: skip
        op.drop_column("jobs", column, schema=S)
    op.drop_constraint(op.f("ck_prices_batch_discount"), "prices", schema=S)
    op.drop_constraint("uq_prices_target_model_valid_from", "prices", schema=S)
    op.drop_constraint("pk_prices", "prices", schema=S)
    op.drop_column("prices", "batch_discount", schema=S)
    op.drop_column("prices", "target", schema=S)
    op.drop_column("prices", "id", schema=S)
    op.create_primary_key("pk_prices", "prices", ["model", "valid_from"], schema=S)
    # The views of revision 0001 come back with it (its upgrade SQL is the reference).
    for sql in _initial_views():
        op.execute(sql)


def _initial_views() -> list[str]:
    path = Path(__file__).with_name("0001_initial_schema.py")
    spec = importlib.util.spec_from_file_location("_orchestrator_0001", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [sql for sql in module.EXTRA_UPGRADE if "CREATE VIEW" in sql]
