"""patience and orphans: how long a batch has been failing; every create key ever sent; remote
batches that carry our key but were never adopted

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 07:10:00

* ``batches.failing_since``: when the batch's current run of failed steps began (cleared with
  ``step_failures`` on the next success). Transient errors are retried only within a patience
  measured from it, and a batch failing for longer than ``stuck_after_seconds`` is shown as stuck.
* ``create_keys``: each idempotency key, recorded in the transaction that commits the intent to
  create, before ``POST /batches`` is sent. A remote batch whose metadata carries one of these
  keys is ours, even after the batch row's own key was replaced.
* ``orphan_batches``: remote batches of ours that no batch adopted (a create the provider carried
  out after the client had given up and created again), found by the orphan sweep and cancelled;
  ``batches.orphans_cancelled`` counts them per batch, ``target_state.orphans_swept_at`` lets one
  daemon sweep a target at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "orchestrator"


def upgrade() -> None:
    op.add_column("batches", sa.Column("failing_since", sa.DateTime(timezone=True)), schema=S)
    op.add_column(
        "batches",
        sa.Column("orphans_cancelled", sa.Integer(), server_default="0", nullable=False),
        schema=S,
    )
    op.add_column(
        "target_state", sa.Column("orphans_swept_at", sa.DateTime(timezone=True)), schema=S
    )
    op.create_table(
        "create_keys",
        sa.Column("key", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "batch_id",
            sa.BigInteger(),
            sa.ForeignKey(f"{S}.batches.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "sent_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema=S,
    )
    op.create_table(
        "orphan_batches",
        sa.Column("remote_batch_id", sa.Text(), primary_key=True),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column(
            "batch_id",
            sa.BigInteger(),
            sa.ForeignKey(f"{S}.batches.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("remote_status", sa.Text()),
        sa.Column(
            "found_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("cancelled_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text()),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("orphan_batches", schema=S)
    op.drop_table("create_keys", schema=S)
    op.drop_column("target_state", "orphans_swept_at", schema=S)
    op.drop_column("batches", "orphans_cancelled", schema=S)
    op.drop_column("batches", "failing_since", schema=S)
