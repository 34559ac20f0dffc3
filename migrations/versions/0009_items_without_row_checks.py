"""batch items without a per-row foreign key check against batches

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 16:40:00

``batch_items`` loses its foreign key to ``batches``. Planning writes a batch's items with one
``INSERT … SELECT`` right after inserting the batch, in the same transaction, and so does every
other writer of items (a resubmit, a split); the check (one index probe and row lock per item) was
half the cost of writing them: 0.13 of 0.26 s for 50,000 requests. What the key did besides, an
item going with its batch, a statement-level trigger does instead: deleting batches (directly, or
through their job) deletes their items in one statement, whatever deleted them.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "orchestrator"


def upgrade() -> None:
    op.drop_constraint("fk_batch_items_batch_id_batches", "batch_items", schema=S)
    op.execute(
        f"""
        CREATE FUNCTION {S}.batch_items_go_with_batches() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM {S}.batch_items bi USING gone_batches g WHERE bi.batch_id = g.id;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER batch_items_go_with_batches AFTER DELETE ON {S}.batches
        REFERENCING OLD TABLE AS gone_batches
        FOR EACH STATEMENT EXECUTE FUNCTION {S}.batch_items_go_with_batches()
        """
    )


def downgrade() -> None:
    op.execute(f"DROP TRIGGER batch_items_go_with_batches ON {S}.batches")
    op.execute(f"DROP FUNCTION {S}.batch_items_go_with_batches()")
    op.execute(
        f"DELETE FROM {S}.batch_items bi "
        f"WHERE NOT EXISTS (SELECT 1 FROM {S}.batches b WHERE b.id = bi.batch_id)"
    )
    op.create_foreign_key(
        "fk_batch_items_batch_id_batches",
        "batch_items",
        "batches",
        ["batch_id"],
        ["id"],
        source_schema=S,
        referent_schema=S,
        ondelete="CASCADE",
    )
