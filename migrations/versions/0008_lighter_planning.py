"""lighter planning: batch items without a per-row foreign key check against requests, and events
stamped when they are written

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 14:20:00

* ``batch_items`` loses its foreign key to ``requests`` (and ``ix_batch_items_request``, the
  index that served it). Planning writes one item per request with ``INSERT … SELECT`` from
  ``requests`` itself, so the check (an index probe per row) proved nothing, and it was half the
  cost of planning a 50,000-request job (0.30 s of 0.64 s for the items). Nothing is left to
  dangle: an item goes with its batch (its other foreign key, kept), a batch with its job, and
  the requests with the job; requests are never deleted on their own (``cleanup`` deletes a
  job's items before its requests). Deleting a request no longer reads ``batch_items``.
* ``batches.polled_at``: when the daemon last polled the batch, by its own clock, beside the
  ``request_counts`` it saw then: the provider's pace between two polls, on one clock, says when
  the batch will be done (``domain/backoff.py``), whatever the provider's clock says.
* ``events.at`` defaults to ``clock_timestamp()``, the moment the row is written, not
  ``now()``, the start of its transaction: a job's phases read from its events (planning takes
  one transaction, of a second for 50,000 requests) are where they happened.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "orchestrator"


def upgrade() -> None:
    op.drop_constraint("fk_batch_items_job_id_requests", "batch_items", schema=S)
    op.drop_index("ix_batch_items_request", table_name="batch_items", schema=S)
    op.alter_column("events", "at", server_default=sa.text("clock_timestamp()"), schema=S)
    op.add_column(
        "batches", sa.Column("polled_at", sa.DateTime(timezone=True), nullable=True), schema=S
    )


def downgrade() -> None:
    op.drop_column("batches", "polled_at", schema=S)
    op.alter_column("events", "at", server_default=sa.text("now()"), schema=S)
    op.create_index("ix_batch_items_request", "batch_items", ["custom_id", "job_id"], schema=S)
    op.create_foreign_key(
        "fk_batch_items_job_id_requests",
        "batch_items",
        "requests",
        ["job_id", "custom_id"],
        ["job_id", "custom_id"],
        source_schema=S,
        referent_schema=S,
        ondelete="CASCADE",
    )
