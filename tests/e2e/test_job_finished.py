"""``NOTIFY orchestrator_job_finished``: a client that LISTENs hears every job end, once, with
the job's id and final status, however it ended."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import psycopg

from tests.support import all_terminal, enqueue, harness, scalar, simple_requests, wait_for

CHANNEL = "orchestrator_job_finished"
END = "end of the test"
README = Path(__file__).resolve().parents[2] / "README.md"


def listen(db_url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute(f"LISTEN {CHANNEL}")
    return conn


def heard(listener: psycopg.Connection[Any], db_url: str) -> list[dict[str, Any]]:
    """Every job-finished payload sent so far, in order. A marker is sent last on the channel:
    notifications arrive in commit order, so all that was sent before it arrives before it (no
    waiting for something that might still come)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, END))
    payloads = []
    for note in listener.notifies(timeout=30):
        assert note.channel == CHANNEL
        if note.payload == END:
            return payloads
        payloads.append(json.loads(note.payload))
    raise AssertionError(f"the marker never arrived; heard {payloads}")


def _cancel(db_url: str, job_id: int) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE orchestrator.jobs SET cancel_requested_at = now() WHERE id = %s", (job_id,)
        )


def test_a_listener_hears_each_job_end_once_with_its_id_and_status(db_url: str) -> None:
    with listen(db_url) as listener, harness(db_url) as h:
        # Given a job that runs through, one that fails validation, one cancelled while pending
        done = enqueue(db_url, simple_requests(3), name="runs through")
        invalid = enqueue(
            db_url, [{"custom_id": "no-model", "body": {"messages": []}}], name="invalid"
        )
        cancelled_pending = enqueue(db_url, simple_requests(2), name="cancelled while pending")
        _cancel(db_url, cancelled_pending)
        # and one cancelled once its batch is at the provider
        running = enqueue(db_url, simple_requests(2), name="cancelled while running")

        # When the daemon runs them (cancelling the last one once its batch is submitted)
        h.run_until(
            lambda: (
                scalar(db_url, "SELECT state FROM orchestrator.batches WHERE job_id = %s", running)
                == "submitted"
            ),
            seconds=1,
        )
        _cancel(db_url, running)
        h.run_until(lambda: all_terminal(db_url))
        # and goes on after every job has ended
        for _ in range(3):
            h.step()

        # Then the listener heard each job end exactly once, with its id and status
        payloads = heard(listener, db_url)
    assert sorted(payloads, key=lambda p: p["job_id"]) == [
        {"job_id": done, "status": "completed"},
        {"job_id": invalid, "status": "failed"},
        {"job_id": cancelled_pending, "status": "cancelled"},
        {"job_id": running, "status": "cancelled"},
    ]
    # and each as the job stands in the table
    for p in payloads:
        status = scalar(db_url, "SELECT status FROM orchestrator.jobs WHERE id = %s", p["job_id"])
        assert p["status"] == status


def readme_wait_for_job() -> Any:
    """The README's Python example, as written there."""
    section = README.read_text().split("### When a job finishes", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["wait_for_job"]


def test_the_readme_python_example_waits_for_a_job_and_returns_its_status(db_url: str) -> None:
    wait_for_job = readme_wait_for_job()
    with harness(db_url) as h:
        # Given a client waiting for a pending job with the README's example
        job_id = enqueue(db_url, simple_requests(3))
        answer: list[str] = []
        waiter = threading.Thread(
            target=lambda: answer.append(wait_for_job(db_url, job_id)), daemon=True
        )
        waiter.start()
        # (bounded wait for our own client to be listening, past its look at the table)
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle' AND query LIKE 'SELECT status FROM orchestrator.jobs%%'"
        )
        assert wait_for(lambda: scalar(db_url, waiting) == 1, timeout=30)
        # When the daemon runs the job
        status = h.run_job(job_id)
        waiter.join(timeout=30)
    # Then the client was woken with the job's final status
    assert status == "completed"
    assert not waiter.is_alive() and answer == ["completed"]
    # and a client that comes after the end gets it too, from the table
    assert wait_for_job(db_url, job_id) == "completed"
