"""Planning meets a database error: a passing one leaves the job pending, a bug fails the job."""

from __future__ import annotations

import psycopg

from orchestrator import runner
from tests.support import count, enqueue, harness, scalar, simple_requests

FAIL_ONCE = """
CREATE TABLE orchestrator.fault_fired (n int);
CREATE FUNCTION orchestrator.fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM orchestrator.fault_fired) THEN
        RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '{code}';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_once BEFORE INSERT ON orchestrator.batches
    FOR EACH ROW EXECUTE FUNCTION orchestrator.fail_once();
"""


def _install(db_url: str, code: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(FAIL_ONCE.replace("{code}", code).encode())


def _disarm(db_url: str) -> None:
    """The fault fires until this row exists."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO orchestrator.fault_fired VALUES (1)")


def test_a_passing_database_error_while_planning_leaves_the_job_pending(db_url: str) -> None:
    with harness(db_url) as h:
        job_id = enqueue(db_url, simple_requests(5))
        # Given the database refuses the planning transaction once (a serialization failure)
        _install(db_url, "40001")
        # When the daemon plans the job
        assert runner.plan_one(h.deps, job_id) is None
        # Then the job is still pending, with nothing written and no error on it
        assert h.job_status(job_id) == "pending"
        assert scalar(db_url, "SELECT error FROM orchestrator.jobs") is None
        assert count(db_url, "batches") == 0
        # and once the database is well again, the next tick plans it and it completes
        _disarm(db_url)
        assert h.run_job(job_id) == "completed"


def test_a_bug_while_planning_fails_the_job_with_the_error_on_its_row(db_url: str) -> None:
    with harness(db_url) as h:
        job_id = enqueue(db_url, simple_requests(5))
        _install(db_url, "P0001")  # a plain RAISE: not a passing condition
        assert runner.plan_one(h.deps, job_id) is None
        assert h.job_status(job_id) == "failed"
        error = scalar(db_url, "SELECT error FROM orchestrator.jobs")
        assert error.startswith("internal error while planning: ") and "serialize" in error
