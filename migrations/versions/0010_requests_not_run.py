"""requests the provider never ran: not an attempt, bounded by the patience since first sent

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 19:00:00

``batch_items.ran`` says whether the provider ran the request in that batch: false for a line that
says it never did (``batch_expired``), true for any other outcome, null until the batch is
ingested. A resubmit counts an attempt only for a request that ran, so a slow provider's expired
batches no longer use up ``max_attempts`` of requests it never got to.

``batches.first_sent_at`` is when the batch's requests were first sent to the provider (the first
create of their first round; a later round and a split part carry it on): requests that are never
run are sent again until the daemon's ``patience_seconds`` have passed since then. Batches created
before this revision take their own last create as that moment (their earlier rounds' is not
kept): their requests get at most a full patience more.

Both columns are added without a default (no table rewrite).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "orchestrator"


def upgrade() -> None:
    op.add_column("batch_items", sa.Column("ran", sa.Boolean(), nullable=True), schema=S)
    op.add_column(
        "batches", sa.Column("first_sent_at", sa.DateTime(timezone=True), nullable=True), schema=S
    )
    op.execute(
        f"UPDATE {S}.batches SET first_sent_at = create_attempted_at "
        "WHERE create_attempted_at IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_column("batches", "first_sent_at", schema=S)
    op.drop_column("batch_items", "ran", schema=S)
