"""Reads whose answers someone relies on: the jobs ``orchestrator demo`` waits for and then
prints (the jobs it names, none other; how many of them are still open), and the gauge of the
oldest pending job (0 when none is pending, as ``/metrics`` documents it)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy.orm import Session

from orchestrator.db import queries
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from tests.support import enqueue, simple_requests

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@contextmanager
def _session(db_url: str) -> Iterator[Session]:
    engine = make_engine(db_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            yield s
    finally:
        engine.dispose()


def _jobs(db_url: str, *statuses: str) -> list[int]:
    """A job per status, in that order (the status set with SQL, as the daemon leaves it)."""
    ids = []
    for n, status in enumerate(statuses):
        job_id = enqueue(db_url, simple_requests(1), name=f"{status}-{n}")
        with psycopg.connect(db_url) as conn:
            conn.execute("UPDATE orchestrator.jobs SET status = %s WHERE id = %s", (status, job_id))
        ids.append(job_id)
    return ids


def test_jobs_named_are_those_jobs_in_id_order(db_url: str) -> None:
    ids = _jobs(db_url, "completed", "running", "failed", "pending")
    with _session(db_url) as s:
        named = [(j.id, j.name, j.status) for j in queries.jobs(s, [ids[3], ids[1]])]
    assert named == [(ids[1], "running-1", "running"), (ids[3], "pending-3", "pending")]


def test_open_job_count_counts_the_named_jobs_not_yet_finished(db_url: str) -> None:
    ids = _jobs(db_url, "completed", "running", "failed", "pending", "cancelled", "running")
    with _session(db_url) as s:
        # the jobs not named are not counted, nor those that ended
        assert queries.open_job_count(s, ids[:5]) == 2
        assert queries.open_job_count(s, [ids[0], ids[2], ids[4]]) == 0


def test_gauges_oldest_pending_job_age_is_zero_with_no_job_pending(db_url: str) -> None:
    _jobs(db_url, "running", "completed", "failed", "cancelled")
    with _session(db_url) as s:
        gauges = queries.gauges(s, now=NOW, stuck_after=3600)
    assert gauges.oldest_pending_job_age == 0.0
    assert gauges.jobs == {"running": 1}


def test_gauges_oldest_pending_job_age_is_that_of_the_oldest_pending_job(db_url: str) -> None:
    older, _, _ = _jobs(db_url, "pending", "pending", "running")
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE orchestrator.jobs SET created_at = now() - interval '1 hour' WHERE id = %s",
            (older,),
        )
    with _session(db_url) as s:
        gauges = queries.gauges(s, now=NOW, stuck_after=3600)
    assert 3600 <= gauges.oldest_pending_job_age < 3600 + 60
    assert gauges.jobs == {"pending": 2, "running": 1}


def test_gauges_count_as_stuck_only_batches_failing_or_past_their_expiry_for_the_threshold(
    db_url: str,
) -> None:
    [job_id] = _jobs(db_url, "running")
    hour, minutes = dt.timedelta(hours=2), dt.timedelta(minutes=10)
    # Given open batches of one target: failing for 2 hours, failing for 10 minutes, still
    # running at the provider 2 hours past their expiry (and 10 minutes past), and one the
    # provider has finished 2 hours past its expiry (nothing stuck about it: it is read next)
    shapes = [
        ("submitted", NOW - hour, None, None),
        ("uploaded", NOW - minutes, None, None),
        ("submitted", None, NOW - hour, "in_progress"),
        ("submitted", None, NOW - hour, "finalizing"),
        ("submitted", None, NOW - minutes, "in_progress"),
        ("submitted", None, NOW - hour, "completed"),
    ]
    with psycopg.connect(db_url) as conn:
        for state, failing_since, expires_at, remote_status in shapes:
            conn.execute(
                "INSERT INTO orchestrator.batches (job_id, target, endpoint, request_count, "
                "bytes, next_run_at, state, failing_since, expires_at, remote_status, "
                "remote_batch_id) VALUES (%s, 'fastrouter', '/v1/chat/completions', 1, 0, "
                "now(), %s, %s, %s, %s, CASE WHEN %s = 'submitted' THEN "
                "'batch_' || gen_random_uuid() END)",
                (job_id, state, failing_since, expires_at, remote_status, state),
            )
    # When the gauges are read with a threshold of an hour
    with _session(db_url) as s:
        gauges = queries.gauges(s, now=NOW, stuck_after=3600)
    # Then the batch failing for 2 hours and the two running 2 hours past their expiry are stuck
    assert gauges.stuck == {"fastrouter": 3}
    assert gauges.open_batches == {"submitted": 5, "uploaded": 1}
