"""Promises of ``ledger`` writes held from the outside (the rows, the events, the log lines, what
a command prints), one write at a time on real PostgreSQL: a job's priority as enqueued, a
daemon's heartbeat, the warning a learned limit logs, a reingest while the job still runs, the
share of the estimate the next round carries."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import structlog
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.cli import main
from orchestrator.db import ledger, queries
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from orchestrator.domain.states import JobStatus
from tests.support import query

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _job(conn: psycopg.Connection, custom_ids: list[str], *, status: str = "running") -> int:
    job_id = int(
        conn.execute(
            "INSERT INTO orchestrator.jobs (name, target) VALUES ('t', 'openai') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
    )
    for cid in custom_ids:
        conn.execute(
            "INSERT INTO orchestrator.requests (job_id, custom_id, provider, body) "
            "VALUES (%s, %s, 'openai', '{\"model\": \"gpt-4o\"}')",
            (job_id, cid),
        )
    # as the daemon moves it on (a job is enqueued pending)
    conn.execute("UPDATE orchestrator.jobs SET status = %s WHERE id = %s", (status, job_id))
    return job_id


def _batch(
    conn: psycopg.Connection, job_id: int, custom_ids: list[str], *, state: str, **columns: object
) -> int:
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    batch_id = int(
        conn.execute(
            "INSERT INTO orchestrator.batches (job_id, target, endpoint, request_count, bytes, "
            f"next_run_at, state{', ' if columns else ''}{names}) "
            f"VALUES (%s, 'openai', '/v1/chat/completions', %s, 0, now(), %s"
            f"{', ' if columns else ''}{marks}) RETURNING id",
            (job_id, len(custom_ids), state, *columns.values()),
        ).fetchone()[0]  # type: ignore[index]
    )
    conn.execute(
        "INSERT INTO orchestrator.batch_items (batch_id, custom_id, job_id, seq) "
        "SELECT %s, custom_id, job_id, seq FROM orchestrator.requests "
        "WHERE job_id = %s AND custom_id = ANY(%s)",
        (batch_id, job_id, custom_ids),
    )
    return batch_id


# -- enqueue ----------------------------------------------------------------------------------


def test_enqueue_keeps_the_priority_it_was_given(
    db_url: str, cli: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "requests.jsonl"
    source.write_text(json.dumps({"custom_id": "q1", "body": {"model": "m"}}) + "\n")
    assert main(["enqueue", str(source), "--name", "urgent", "--priority", "7"]) == 0
    job_id = int(capsys.readouterr().out.strip())
    # the priority that orders the claim of the job's batches is the one asked for
    assert query(
        db_url,
        "SELECT name, target, endpoint, max_attempts, priority FROM orchestrator.jobs "
        "WHERE id = %s",
        job_id,
    ) == [("urgent", "fastrouter", "/v1/chat/completions", 3, 7)]


# -- workers ----------------------------------------------------------------------------------


def test_heartbeat_worker_brings_that_daemons_heartbeat_to_now_and_no_other(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    alive, silent = uuid.uuid4(), uuid.uuid4()
    with unit_of_work(sessions) as s:
        for worker in (alive, silent):
            ledger.register_worker(s, worker_id=worker, hostname="h", pid=1, version="v")
    # Given two daemons last heard from an hour ago (on the database's clock)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE orchestrator.workers SET heartbeat_at = now() - interval '1 hour', "
            "started_at = now() - interval '2 hours'"
        )
    # When one of them heartbeats
    with unit_of_work(sessions) as s:
        ledger.heartbeat_worker(s, alive)
    # Then it is seen as live now (what status and retention judge a daemon by), the other not
    rows = query(
        db_url,
        "SELECT id, heartbeat_at > now() - interval '1 minute', "
        "heartbeat_at < now() - interval '59 minutes', stopped_at FROM orchestrator.workers "
        "ORDER BY heartbeat_at DESC",
    )
    assert rows == [(alive, True, False, None), (silent, False, True, None)]


# -- capacity ---------------------------------------------------------------------------------


def test_learn_limit_logs_the_learned_limit_as_a_warning_with_its_event(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    with structlog.testing.capture_logs() as logs, unit_of_work(sessions) as s:
        ledger.learn_limit(
            s, target="openai", model="gpt-4o", tokens=90_000, message="Limit: 90,000",
            created_at=T0, now=T0,
        )  # fmt: skip
    detail = {"target": "openai", "model": "gpt-4o", "limit_tokens": 90_000, "previous": None,
              "stated": 90_000}  # fmt: skip
    # a warning: the provider refuses batches until an operator raises the limit or it is learned
    assert logs == [{"event": "capacity_learned", "log_level": "warning", **detail}]
    assert query(db_url, "SELECT kind, job_id, batch_id, detail FROM orchestrator.events") == [
        ("capacity_learned", None, None, detail)
    ]


# -- the next round ---------------------------------------------------------------------------


def test_resubmit_gives_the_next_round_its_share_of_the_estimate_rounded_up(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    with psycopg.connect(db_url) as conn:
        job_id = _job(conn, ["a", "b", "c"])
        batch_id = _batch(
            conn, job_id, ["a", "b", "c"], state="done", estimated_tokens=100, model="gpt-4o"
        )
        conn.execute(
            "INSERT INTO orchestrator.results (job_id, custom_id, batch_id, attempt, succeeded) "
            "VALUES (%s, 'a', %s, 1, true)",
            (job_id, batch_id),
        )
    # When the two requests without a result are sent again
    with unit_of_work(sessions) as s:
        new_id, requests = ledger.resubmit(s, batch_id, T0) or (0, 0)
    # Then the new batch holds 2/3 of the 100 tokens the batch was estimated at: 67, never less
    # (admission counts it against the provider's enqueued-token limit)
    assert requests == 2
    assert query(
        db_url,
        "SELECT round, state, request_count, estimated_tokens, model FROM orchestrator.batches "
        "WHERE id = %s",
        new_id,
    ) == [(2, "planned", 2, 67, "gpt-4o")]
    assert query(
        db_url,
        "SELECT custom_id, attempt FROM orchestrator.batch_items WHERE batch_id = %s ORDER BY seq",
        new_id,
    ) == [("b", 2), ("c", 2)]


# -- reingest ---------------------------------------------------------------------------------


def test_reingest_of_a_failed_batch_while_another_batch_runs_keeps_the_job_running(
    db_url: str, cli: str, capsys: pytest.CaptureFixture[str]
) -> None:
    error = "poll failed: the batch is gone"
    with psycopg.connect(db_url) as conn:
        job_id = _job(conn, ["a", "b", "c"])
        conn.execute("UPDATE orchestrator.jobs SET error = %s WHERE id = %s", (error, job_id))
        # Given a job whose first batch failed while its second still runs
        failed = _batch(
            conn, job_id, ["a", "b"], state="failed", remote_batch_id="batch_r1",
            last_error=error, finished_at=T0,
        )  # fmt: skip
        running = _batch(conn, job_id, ["c"], state="submitted", remote_batch_id="batch_r2")
        conn.execute(
            "INSERT INTO orchestrator.results (job_id, custom_id, batch_id, attempt, succeeded) "
            "SELECT job_id, custom_id, batch_id, 1, false FROM orchestrator.batch_items "
            "WHERE batch_id = %s",
            (failed,),
        )
        conn.execute(
            "UPDATE orchestrator.jobs SET failed_count = 2 WHERE id = %s",
            (job_id,),
        )
    # When an operator asks for the failed batch's results again
    assert main(["reingest", str(failed)]) == 0
    assert capsys.readouterr().out == (
        f"batch {failed}: reopened; a running daemon polls batch_r1 and ingests what the "
        "provider produced\n"
    )
    # Then the job is still running (not finished, its batch's error gone), its failures removed
    assert query(
        db_url,
        "SELECT status, finished_at, error, failed_count FROM orchestrator.jobs WHERE id = %s",
        job_id,
    ) == [("running", None, None, 0)]
    # and the batch is open again: not finished, polled as soon as a daemon claims it
    assert query(
        db_url,
        "SELECT id, state, finished_at, last_error, lease_owner FROM orchestrator.batches "
        "ORDER BY id",
    ) == [(failed, "submitted", None, None, None), (running, "submitted", None, None, None)]
    assert query(db_url, "SELECT count(*) FROM orchestrator.results") == [(0,)]
    assert query(db_url, "SELECT kind, job_id, batch_id, detail FROM orchestrator.events") == [
        (
            "batch_reingest_requested",
            job_id,
            failed,
            {"remote_batch_id": "batch_r1", "failure_results_removed": 2},
        )
    ]


# -- shutdown ---------------------------------------------------------------------------------


def test_release_leases_gives_back_only_our_leases_whose_token_is_still_current(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    ours, theirs = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        job_id = _job(conn, ["a", "b", "c", "d"])
        held = {
            cid: _batch(
                conn,
                job_id,
                [cid],
                state="submitted",
                lease_owner=owner,
                lease_token=7,
                lease_expires_at=T0 + dt.timedelta(hours=1),
            )
            for cid, owner in (("a", ours), ("b", ours), ("c", ours), ("d", theirs))
        }
    # Given a daemon shutting down with three leases it believes it holds, one of which another
    # daemon took over since (a new token), and a fourth daemon's lease of the same token number
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE orchestrator.batches SET lease_token = 8 WHERE id = %s", (held["c"],))
    tokens = {held["a"]: 7, held["b"]: 7, held["c"]: 7, held["d"]: 7}
    # When it gives its leases back
    with unit_of_work(sessions) as s:
        released = ledger.release_leases(s, owner=ours, tokens=tokens)
    # Then exactly its two current leases are free (another daemon may claim them at once), and
    # it says so; the lease it lost and the other daemon's lease are untouched
    assert released == 2
    rows = query(
        db_url,
        "SELECT id, lease_owner, lease_token, lease_expires_at IS NULL "
        "FROM orchestrator.batches ORDER BY id",
    )
    assert rows == [
        (held["a"], None, 7, True),
        (held["b"], None, 7, True),
        (held["c"], ours, 8, False),
        (held["d"], theirs, 7, False),
    ]


def test_a_stopped_daemon_leaves_the_list_of_live_daemons_at_once(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    stopping, running = uuid.uuid4(), uuid.uuid4()
    with unit_of_work(sessions) as s:
        for worker in (stopping, running):
            ledger.register_worker(s, worker_id=worker, hostname="h", pid=1, version="v")
    # When one daemon stops (its goodbye at shutdown), a second after both heartbeated
    with unit_of_work(sessions) as s:
        ledger.stop_worker(s, stopping)
    # Then status lists only the other one, although the stopped one was seen just now
    with unit_of_work(sessions) as s:
        assert [w.id for w in queries.live_workers(s, within_seconds=3600)] == [running]
    rows = query(
        db_url,
        "SELECT stopped_at IS NOT NULL, heartbeat_at >= now() - interval '1 minute' "
        "FROM orchestrator.workers WHERE id = %s",
        stopping,
    )
    assert rows == [(True, True)]


# -- targets and orphans ----------------------------------------------------------------------


def test_lifting_a_pause_records_when_and_says_so_once(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    with unit_of_work(sessions) as s:
        ledger.block_target(s, "openai", until=T0, reason="invalid key", paused=True)
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE orchestrator.target_state SET updated_at = now() - interval '1 day'")
    # When a call works again, twice
    with unit_of_work(sessions) as s:
        assert ledger.clear_pause(s, "openai") is True
    with unit_of_work(sessions) as s:
        assert ledger.clear_pause(s, "openai") is False
    # Then the target is not paused, with no reason, changed just now (what an operator reading
    # target_state sees), and one target_resumed event says so
    rows = query(
        db_url,
        "SELECT paused, reason, updated_at > now() - interval '1 minute' "
        "FROM orchestrator.target_state WHERE target = 'openai'",
    )
    assert rows == [(False, None, True)]
    kinds = query(db_url, "SELECT kind FROM orchestrator.events WHERE kind = 'target_resumed'")
    assert kinds == [("target_resumed",)]


def test_an_orphan_cancelled_twice_is_counted_once_and_keeps_when_it_was_first_cancelled(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    with psycopg.connect(db_url) as conn:
        job_id = _job(conn, ["a"])
        batch_id = _batch(conn, job_id, ["a"], state="submitted")
    where = {"remote_batch_id": "batch_orphan", "target": "openai", "batch_id": batch_id}
    with unit_of_work(sessions) as s:
        assert ledger.orphan_found(s, **where, job_id=job_id, status="in_progress") is True
    # When its cancel goes through, and a second daemon's sweep cancels it again a day later
    with unit_of_work(sessions) as s:
        assert ledger.orphan_cancelled(s, **where, job_id=job_id) is True
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE orchestrator.orphan_batches SET cancelled_at = %s", (T0,))
    with unit_of_work(sessions) as s:
        assert ledger.orphan_cancelled(s, **where, job_id=job_id) is False
    # Then the batch counts one orphan cancelled, the record keeps the first cancel's time, and
    # one event says so
    assert query(db_url, "SELECT orphans_cancelled FROM orchestrator.batches") == [(1,)]
    assert query(db_url, "SELECT cancelled_at FROM orchestrator.orphan_batches") == [(T0,)]
    kinds = query(
        db_url, "SELECT kind FROM orchestrator.events WHERE kind LIKE 'batch_orphan%%' ORDER BY id"
    )
    assert kinds == [("batch_orphan_found",), ("batch_orphan_cancelled",)]


# -- jobs that end before any batch -----------------------------------------------------------


def test_a_job_ended_while_pending_says_how_with_its_event_and_log_line(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    with psycopg.connect(db_url) as conn:
        bad = _job(conn, ["a"], status="pending")
        unwanted = _job(conn, ["b"], status="pending")
    # When one job fails validation and the other is cancelled before any batch
    with structlog.testing.capture_logs() as logs, unit_of_work(sessions) as s:
        ledger.end_pending_job(
            s, bad, JobStatus.FAILED, T0, error="request 'a': no model", stage="planning"
        )
        ledger.end_pending_job(s, unwanted, JobStatus.CANCELLED, T0, stage="pending")
    # Then each job's row and event say how it ended, where, for which target and why
    assert query(
        db_url, "SELECT id, status, error, finished_at FROM orchestrator.jobs ORDER BY id"
    ) == [(bad, "failed", "request 'a': no model", T0), (unwanted, "cancelled", None, T0)]
    failed = {"stage": "planning", "target": "openai", "error": "request 'a': no model"}
    cancelled = {"stage": "pending", "target": "openai"}
    assert query(db_url, "SELECT kind, job_id, detail FROM orchestrator.events ORDER BY id") == [
        ("job_failed", bad, failed),
        ("job_cancelled", unwanted, cancelled),
    ]
    # and the failure is logged as an error, the cancel as info
    assert logs == [
        {"event": "job_failed", "log_level": "error", "job_id": bad, **failed},
        {"event": "job_cancelled", "log_level": "info", "job_id": unwanted, **cancelled},
    ]
