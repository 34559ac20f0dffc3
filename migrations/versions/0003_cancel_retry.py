"""cancel retry: a failed remote cancel is tried again on a backoff, not on every tick

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 06:15:00

A cancel that the provider answered with a 5xx used to be sent again on every tick (the batch of a
cancelled job is woken at once), and the poll behind it never ran. ``cancel_attempts`` counts the
failed cancels and ``cancel_retry_at`` says when the next one is due; polling goes on meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "batches",
        sa.Column("cancel_attempts", sa.Integer(), server_default="0", nullable=False),
        schema="orchestrator",
    )
    op.add_column(
        "batches",
        sa.Column("cancel_retry_at", sa.DateTime(timezone=True), nullable=True),
        schema="orchestrator",
    )


def downgrade() -> None:
    op.drop_column("batches", "cancel_retry_at", schema="orchestrator")
    op.drop_column("batches", "cancel_attempts", schema="orchestrator")
