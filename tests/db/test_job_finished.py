"""The job-finished notification is part of the transaction that ends the job: sent when it
commits, never when it rolls back, and once per job end."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
import pytest

from orchestrator.db import ledger
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from orchestrator.domain.states import JobStatus
from tests.support import enqueue, scalar, simple_requests

CHANNEL = "orchestrator_job_finished"
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _end_then_fail(sessions: Any, job_id: int) -> None:
    with unit_of_work(sessions) as s:
        ledger.end_pending_job(s, job_id, JobStatus.FAILED, NOW, error="bad", stage="validation")
        raise RuntimeError("the transaction fails")


def test_a_rolled_back_job_end_notifies_nothing_and_a_committed_one_once(db_url: str) -> None:
    first = enqueue(db_url, simple_requests(1))
    second = enqueue(db_url, simple_requests(1))
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    try:
        with psycopg.connect(db_url, autocommit=True) as listener:
            listener.execute(f"LISTEN {CHANNEL}")
            # the first job's end is rolled back
            with pytest.raises(RuntimeError):
                _end_then_fail(sessions, first)
            # the second's commits; ending it again (it is no longer pending) changes nothing
            for _ in range(2):
                with unit_of_work(sessions) as s:
                    ledger.end_pending_job(s, second, JobStatus.CANCELLED, NOW, stage="pending")
            with psycopg.connect(db_url, autocommit=True) as marker:
                marker.execute(f"NOTIFY {CHANNEL}, 'end'")
            # notifications arrive in commit order: what came before the marker is all there is
            notes: list[Any] = []
            for note in listener.notifies(timeout=30):
                if note.payload == "end":
                    break
                notes.append(json.loads(note.payload))
    finally:
        engine.dispose()
    assert notes == [{"job_id": second, "status": "cancelled"}]
    assert scalar(db_url, "SELECT status FROM orchestrator.jobs WHERE id = %s", first) == "pending"
