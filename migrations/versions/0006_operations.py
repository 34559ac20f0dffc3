"""operations: indexes that keep the daemon's gauges and the retention sweep O(open work)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 10:50:00

* ``ix_jobs_open``: the jobs not yet finished (pending or running), by status and age. The
  metrics count jobs by status and read the oldest pending one from it, at a cost that follows the
  open work, not the years of finished jobs beside it.
* ``ix_events_at``: events by time, so that ``orchestrator cleanup`` and the daemon's retention
  timer find the old ones in small batches without reading the table.
* ``ix_batch_items_request``: the index of the foreign key from ``batch_items`` to ``requests``.
  Without it each deleted request (``cleanup --jobs-older-than``, or any job deleted by hand) read
  every batch item to find its own: 84 ms a request at 500,000 items, 200 requests in 16.8 s;
  with it 5,000 requests go in 0.21 s. Its columns are (custom_id, job_id), not (job_id,
  custom_id): led by job_id, the planner took it for a batch's requests right after planning
  (before any statistics) and joined 20,000 items to 20,000 requests by a filter, for minutes;
  led by custom_id, it serves the foreign key and that join both, by an index condition.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "orchestrator"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_open",
        "jobs",
        ["status", "created_at"],
        schema=S,
        postgresql_where="status IN ('pending', 'running')",
    )
    op.create_index("ix_events_at", "events", ["at"], schema=S)
    op.create_index("ix_batch_items_request", "batch_items", ["custom_id", "job_id"], schema=S)


def downgrade() -> None:
    op.drop_index("ix_batch_items_request", table_name="batch_items", schema=S)
    op.drop_index("ix_events_at", table_name="events", schema=S)
    op.drop_index("ix_jobs_open", table_name="jobs", schema=S)
