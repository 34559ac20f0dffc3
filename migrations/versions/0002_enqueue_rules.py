"""enqueue rules: jobs are inserted as pending; requests only go into a pending job

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 06:10:00

Without these, two mistakes were silent: requests inserted into a job that was already planned
were never sent (the planner had read the job's requests once), and a job inserted with
``status = 'running'`` was never planned and could not be cancelled. Both are now refused by the
database, in the user's own transaction, with a message that says why.

Requests are checked once per statement (a COPY of 50,000 rows costs one query). The check first
takes the job rows ``FOR SHARE``: a planner holding a job (``FOR NO KEY UPDATE``) makes the insert
wait until it commits and then see ``running``, so no request can slip in while a job is being
planned; and a planner skips (``SKIP LOCKED``) a job whose requests are still being inserted.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = [
    """
    CREATE FUNCTION orchestrator.jobs_start_pending() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.status <> 'pending' THEN
            RAISE EXCEPTION 'a job is enqueued as pending, not %', NEW.status
                USING ERRCODE = 'check_violation',
                      HINT = 'leave jobs.status out of the INSERT; the daemon moves the job on';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER jobs_start_pending BEFORE INSERT ON orchestrator.jobs
    FOR EACH ROW EXECUTE FUNCTION orchestrator.jobs_start_pending()
    """,
    """
    CREATE FUNCTION orchestrator.requests_into_pending_jobs() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        late record;
    BEGIN
        PERFORM 1 FROM orchestrator.jobs
         WHERE id IN (SELECT DISTINCT job_id FROM new_requests)
           FOR SHARE;
        SELECT j.id, j.status INTO late FROM orchestrator.jobs j
         WHERE j.id IN (SELECT DISTINCT job_id FROM new_requests) AND j.status <> 'pending'
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'job % is % already: requests can only be added to a pending job',
                    late.id, late.status
                USING ERRCODE = 'check_violation',
                      HINT = 'insert a job and all its requests in one transaction, '
                             'or enqueue the new requests as a new job';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER requests_into_pending_jobs AFTER INSERT ON orchestrator.requests
    REFERENCING NEW TABLE AS new_requests
    FOR EACH STATEMENT EXECUTE FUNCTION orchestrator.requests_into_pending_jobs()
    """,
]

DOWNGRADE = [
    "DROP TRIGGER IF EXISTS requests_into_pending_jobs ON orchestrator.requests",
    "DROP FUNCTION IF EXISTS orchestrator.requests_into_pending_jobs()",
    "DROP TRIGGER IF EXISTS jobs_start_pending ON orchestrator.jobs",
    "DROP FUNCTION IF EXISTS orchestrator.jobs_start_pending()",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
