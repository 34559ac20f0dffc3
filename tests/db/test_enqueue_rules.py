"""What the database refuses at enqueue time, in the user's own transaction (revision 0002):
a job inserted as anything but pending, and requests added to a job that is no longer pending."""

from __future__ import annotations

import threading

import psycopg
import pytest

from tests.support import chat_body, count, enqueue, scalar, simple_requests, wait_for


def _add_request(db_url: str, job_id: int, custom_id: str = "late") -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO orchestrator.requests (job_id, custom_id, provider, body) "
            "VALUES (%s, %s, 'openai', %s::jsonb)",
            (job_id, custom_id, psycopg.types.json.Jsonb(chat_body(1))),
        )


def test_a_job_inserted_as_running_is_refused_with_the_reason(db_url: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as refused, psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO orchestrator.jobs (name, status) VALUES ('x', 'running')")
    assert "a job is enqueued as pending, not running" in str(refused.value)
    assert "leave jobs.status out of the INSERT" in (refused.value.diag.message_hint or "")
    assert count(db_url, "jobs") == 0


def test_requests_added_to_a_planned_job_are_refused_and_nothing_is_stored(db_url: str) -> None:
    job_id = enqueue(db_url, simple_requests(3))
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE orchestrator.jobs SET status = 'running' WHERE id = %s", (job_id,))
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        _add_request(db_url, job_id)
    assert f"job {job_id} is running already" in str(refused.value)
    assert "enqueue the new requests as a new job" in (refused.value.diag.message_hint or "")
    assert count(db_url, "requests") == 3


def test_requests_into_a_pending_job_are_accepted_even_by_a_later_statement(db_url: str) -> None:
    job_id = enqueue(db_url, simple_requests(3))  # committed, still pending
    _add_request(db_url, job_id)
    assert count(db_url, "requests", "job_id = %s", job_id) == 4


def test_an_insert_racing_the_planner_waits_for_it_then_is_refused(db_url: str) -> None:
    job_id = enqueue(db_url, simple_requests(3))
    # Given a planner that holds the job (as queries.lock_pending_job does) and marks it running
    planner = psycopg.connect(db_url)
    planner.execute("SELECT 1 FROM orchestrator.jobs WHERE id = %s FOR NO KEY UPDATE", (job_id,))
    planner.execute("UPDATE orchestrator.jobs SET status = 'running' WHERE id = %s", (job_id,))
    outcome: list[BaseException | None] = []

    def insert() -> None:
        try:
            _add_request(db_url, job_id)
            outcome.append(None)
        except psycopg.Error as exc:
            outcome.append(exc)

    # When a request is inserted meanwhile, it waits for the planner's transaction (its backend
    # is seen waiting on a lock: an event, not a guess at how long it takes to get there)
    racer = threading.Thread(target=insert)
    racer.start()
    blocked = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO orchestrator.requests%%'"
    )
    assert wait_for(lambda: scalar(db_url, blocked) == 1, timeout=30, interval=0.02)
    assert racer.is_alive() and outcome == []
    # and once the planner commits, it is refused: it would never have been sent
    planner.commit()
    planner.close()
    racer.join(timeout=30)
    assert isinstance(outcome[0], psycopg.errors.CheckViolation)
    assert scalar(db_url, "SELECT count(*) FROM orchestrator.requests") == 3
