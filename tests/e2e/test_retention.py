"""Retention: ``orchestrator cleanup`` and the daemon's timer delete old events and workers rows in
statements of bounded size, finished jobs only when asked, never an open job; the provider's files
go after a committed ingest where the target can delete them.

How many rows each DELETE removed, and in which transaction, is measured by the database itself:
a statement-level trigger that the test adds (``REFERENCING OLD TABLE``) logs every DELETE
statement on a table with its row count, its transaction id and the time, whatever the code under
test reports about itself.
"""

from __future__ import annotations

import dataclasses
import io
import math
import threading
from typing import Any

import psycopg
import pytest
import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from orchestrator import retention
from orchestrator.api.errors import ApiNotFound
from orchestrator.cli import main
from orchestrator.config import Settings
from orchestrator.db.session import make_engine, make_sessionmaker
from orchestrator.emulator import EmulatorConfig
from orchestrator.emulator.lines import completion_text
from tests.support import (
    API_KEY,
    FAST,
    assert_results_match_provider,
    chat_body,
    count,
    enqueue,
    events,
    failures,
    harness,
    listed_failure,
    query,
    scalar,
    settings_for,
    simple_requests,
)

pytestmark = pytest.mark.e2e

OLD_EVENTS = 20_000
BATCH = 500


def _log_statements(db_url: str, *tables: str) -> None:
    """Log every DELETE statement on ``tables`` (rows, transaction, time), and every UPDATE
    statement on batches (the daemon at work), into public.statement_log."""
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "CREATE TABLE public.statement_log (tbl text, op text, rows bigint, tx bigint, "
            "at timestamptz)"
        )
        conn.execute(
            """
            CREATE FUNCTION public.log_delete() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO public.statement_log
                SELECT TG_TABLE_NAME, 'delete', count(*), txid_current(), clock_timestamp()
                  FROM gone;
                RETURN NULL;
            END $$
            """
        )
        conn.execute(
            """
            CREATE FUNCTION public.log_update() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO public.statement_log
                VALUES (TG_TABLE_NAME, 'update', 0, txid_current(), clock_timestamp());
                RETURN NULL;
            END $$
            """
        )
        for table in tables:
            conn.execute(
                f"CREATE TRIGGER log_delete AFTER DELETE ON orchestrator.{table} "
                "REFERENCING OLD TABLE AS gone FOR EACH STATEMENT "
                "EXECUTE FUNCTION public.log_delete()"
            )
        conn.execute(
            "CREATE TRIGGER log_update AFTER UPDATE ON orchestrator.batches "
            "FOR EACH STATEMENT EXECUTE FUNCTION public.log_update()"
        )


def _deletes(db_url: str, table: str) -> list[tuple[int, int]]:
    """(rows, transaction) of each DELETE statement on ``table`` that removed rows."""
    return [
        (int(rows), int(tx))
        for rows, tx in query(
            db_url,
            "SELECT rows, tx FROM public.statement_log WHERE tbl = %s AND op = 'delete' "
            "AND rows > 0 ORDER BY at",
            table,
        )
    ]


def _printed(out: str) -> dict[str, int]:
    """The rows column of what ``cleanup`` printed, by table."""
    found = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) >= 3 and cells[0] in retention.TABLES:
            found[cells[0]] = int(cells[1].replace(",", ""))
    return found


def _insert_history(db_url: str) -> None:
    """20,000 events from 100 days ago, 5 from an hour ago; a worker stopped 20 days ago, one
    silent for 10 (dead), one alive."""
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO orchestrator.events (at, kind) "
            "SELECT now() - interval '100 days' - n * interval '1 second', 'test_old' "
            "FROM generate_series(1, %s) AS n",
            (OLD_EVENTS,),
        )
        conn.execute(
            "INSERT INTO orchestrator.events (at, kind) "
            "SELECT now() - interval '1 hour', 'test_recent' FROM generate_series(1, 5)"
        )
        conn.execute(
            """
            INSERT INTO orchestrator.workers (id, hostname, pid, version, started_at,
                                              heartbeat_at, stopped_at)
            VALUES (gen_random_uuid(), 'stopped', 1, '0', now() - interval '30 days',
                    now() - interval '20 days', now() - interval '20 days'),
                   (gen_random_uuid(), 'dead', 2, '0', now() - interval '30 days',
                    now() - interval '10 days', NULL),
                   (gen_random_uuid(), 'alive', 3, '0', now() - interval '30 days', now(), NULL)
            """
        )


def test_cleanup_deletes_old_events_in_batches_of_bounded_size_while_a_daemon_runs(
    db_url: str, cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given 20,000 old events, recent ones, old and live workers rows, a log of the statements
    _insert_history(db_url)
    _log_statements(db_url, "events", "workers", "results", "requests", "jobs")
    with harness(db_url) as h:
        # and a daemon at work on a job (held in finalizing until the cleanup is over)
        h.emulator.faults.add_batch_fault(stuck_finalizing=math.inf)
        job_id = enqueue(db_url, simple_requests(20))
        h.run_until(lambda: count(db_url, "batches", "remote_status = 'finalizing'") == 1)
        capsys.readouterr()
        stop = threading.Event()

        def run_daemon() -> None:
            while not stop.is_set():
                h.step(30.0)  # every step polls (poll_max_seconds is 30)

        daemon = threading.Thread(target=run_daemon, name="daemon-steps")
        daemon.start()
        try:
            # When cleanup runs, at most 500 rows per statement
            code = main(["cleanup", "--batch-size", str(BATCH)])
            job_open_after_cleanup = h.job_status(job_id) == "running"
        finally:
            stop.set()
            daemon.join()
        h.emulator.release_stuck()
        status = h.run_job(job_id)
        answered = assert_results_match_provider(db_url, h.emulator)

    assert code == 0
    assert _printed(capsys.readouterr().out) == {"events": OLD_EVENTS, "workers": 2}
    # Then every old event is gone, in statements of at most 500 rows, each its own transaction
    assert count(db_url, "events", "kind = 'test_old'") == 0
    deletes = _deletes(db_url, "events")
    assert sum(rows for rows, _ in deletes) == OLD_EVENTS
    assert max(rows for rows, _ in deletes) <= BATCH
    assert len(deletes) >= math.ceil(OLD_EVENTS / BATCH)
    assert len({tx for _, tx in deletes}) == len(deletes)
    # and the daemon wrote while they ran: it was never held up for the whole sweep
    first, last = query(
        db_url,
        "SELECT min(at), max(at) FROM public.statement_log WHERE tbl = 'events' AND rows > 0",
    )[0]
    daemon_writes = scalar(
        db_url,
        "SELECT count(*) FROM public.statement_log WHERE tbl = 'batches' AND at > %s AND at < %s",
        first,
        last,
    )
    assert daemon_writes > 0
    assert job_open_after_cleanup
    # The recent events, the live worker and the job with everything it has are intact
    assert count(db_url, "events", "kind = 'test_recent'") == 5
    assert {"job_planned", "batch_ingested", "job_completed"} <= set(events(db_url, job_id))
    assert [r[0] for r in query(db_url, "SELECT hostname FROM orchestrator.workers")] == ["alive"]
    assert status == "completed"
    assert count(db_url, "results", "job_id = %s", job_id) == 20
    assert answered == 20  # each the provider's answer to its request, cleanup or not
    assert count(db_url, "requests", "job_id = %s", job_id) == 20
    assert count(db_url, "jobs") == 1
    assert _deletes(db_url, "results") == _deletes(db_url, "requests") == []
    assert _deletes(db_url, "jobs") == []


def _run_jobs(db_url: str, sizes: list[int]) -> list[int]:
    """Jobs run to completion through the emulator (in-process), with all their rows."""
    with harness(db_url, http=False) as h:
        job_ids = [
            enqueue(db_url, simple_requests(n, prefix=f"j{i}-"), name=f"job {i}")
            for i, n in enumerate(sizes)
        ]
        h.run_until(lambda: count(db_url, "jobs", "status = 'completed'") == len(job_ids))
        assert assert_results_match_provider(db_url, h.emulator) == sum(sizes)
    return job_ids


def _rows_of(db_url: str, *job_ids: int) -> dict[int, dict[str, int]]:
    """Each job's rows, per table."""
    rows = query(
        db_url,
        """
        SELECT j.id,
          (SELECT count(*) FROM orchestrator.results WHERE job_id = j.id),
          (SELECT count(*) FROM orchestrator.requests WHERE job_id = j.id),
          (SELECT count(*) FROM orchestrator.batches WHERE job_id = j.id),
          (SELECT count(*) FROM orchestrator.batch_items WHERE job_id = j.id),
          (SELECT count(*) FROM orchestrator.events WHERE job_id = j.id),
          (SELECT count(*) FROM orchestrator.jobs WHERE id = j.id)
        FROM unnest(%s::bigint[]) AS j(id)
        """,
        list(job_ids),
    )
    tables = ("results", "requests", "batches", "batch_items", "events", "jobs")
    return {row[0]: dict(zip(tables, row[1:], strict=True)) for row in rows}


def test_jobs_older_than_deletes_only_finished_old_jobs_in_chunks_and_dry_run_deletes_nothing(
    db_url: str, cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given four jobs run to completion: "old" finished 200 days ago, "recent" 10 days ago,
    # "open batch" 200 days ago but with a batch still open, and "pending" enqueued 200 days ago
    # and never run
    old, recent, open_batch = _run_jobs(db_url, [25, 5, 5])
    pending = enqueue(db_url, simple_requests(3), name="pending")
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE orchestrator.jobs SET finished_at = now() - interval '200 days' "
            "WHERE id = ANY(%s)",
            ([old, open_batch],),
        )
        conn.execute(
            "UPDATE orchestrator.jobs SET finished_at = now() - interval '10 days' WHERE id = %s",
            (recent,),
        )
        conn.execute(
            "UPDATE orchestrator.jobs SET created_at = now() - interval '200 days' WHERE id = %s",
            (pending,),
        )
        conn.execute(
            "UPDATE orchestrator.batches SET state = 'submitted' WHERE job_id = %s", (open_batch,)
        )
    _log_statements(db_url, "results", "requests", "batch_items", "events", "jobs")
    before = _rows_of(db_url, old, recent, open_batch, pending)
    kept = (
        "SELECT job_id, custom_id, batch_id, succeeded, response, error FROM orchestrator.results "
        "WHERE job_id <> %s ORDER BY 1, 2"
    )
    kept_before = query(db_url, kept, old)
    assert len(kept_before) == 10
    assert (count(db_url, "batch_model_costs"), count(db_url, "create_keys")) == (3, 3)
    assert before[old]["results"] == 25 and before[old]["events"] > 0

    # When cleanup runs without --jobs-older-than, then with --dry-run
    capsys.readouterr()
    assert main(["cleanup"]) == 0
    assert _printed(capsys.readouterr().out) == {"events": 0, "workers": 0}
    assert main(["cleanup", "--jobs-older-than", "100", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    # Then nothing of any job is touched, and the dry run says what it would delete
    assert _rows_of(db_url, *before) == before
    assert dry.startswith("would delete (dry run: nothing deleted)")
    expected = {**before[old], "events": before[old]["events"], "workers": 0}
    assert _printed(dry) == expected

    # When it runs with --jobs-older-than 100, 10 rows per statement
    assert main(["cleanup", "--jobs-older-than", "100", "--batch-size", "10"]) == 0
    out = capsys.readouterr().out
    # Then the old finished job is gone with every row of it (and its batches' children)
    after = _rows_of(db_url, *before)
    assert after[old] == dict.fromkeys(before[old], 0)
    assert (count(db_url, "batch_model_costs"), count(db_url, "create_keys")) == (2, 2)
    assert _printed(out) == expected
    # in chunks of at most 10 rows, each its own transaction
    results = _deletes(db_url, "results")
    assert sum(r for r, _ in results) == 25 and max(r for r, _ in results) <= 10
    assert len(results) >= 3 and len({tx for _, tx in results}) == len(results)
    requests = _deletes(db_url, "requests")
    assert sum(r for r, _ in requests) == 25 and max(r for r, _ in requests) <= 10
    assert max(r for r, _ in _deletes(db_url, "batch_items")) <= 10
    # and the recent job, the job with an open batch and the pending job are intact
    assert {job: after[job] for job in (recent, open_batch, pending)} == {
        job: before[job] for job in (recent, open_batch, pending)
    }
    assert query(db_url, kept, old) == kept_before  # their results hold what they held


def test_the_daemon_timer_sweeps_events_and_workers_and_never_a_jobs_results(
    db_url: str,
) -> None:
    # Given a job that finished 200 days ago, with everything about it 200 days old, and the
    # 20,000 old events and old workers rows (on FastRouter, which cannot delete files: asking
    # it to is ignored)
    daemon = dataclasses.replace(FAST, cleanup_batch_size=4000)
    settings = settings_for(db_url, daemon=daemon, delete_files_after_ingest=True)
    capture = structlog.testing.capture_logs()
    with capture as lines, harness(db_url, http=False, settings=settings) as h:
        job_id = enqueue(db_url, simple_requests(6))
        assert h.run_job(job_id) == "completed"
        assert "provider_files_deleted" not in events(db_url, job_id)
        assert all(_exists(h, f, "fastrouter") for f in _file_ids(db_url, job_id))
        with psycopg.connect(db_url) as conn:
            conn.execute("UPDATE orchestrator.events SET at = now() - interval '200 days'")
            conn.execute(
                "UPDATE orchestrator.jobs SET created_at = now() - interval '201 days', "
                "finished_at = now() - interval '200 days'"
            )
            conn.execute("UPDATE orchestrator.results SET created_at = now() - interval '200 days'")
        _insert_history(db_url)
        old = count(db_url, "events", "kind <> 'test_recent'")
        # (a sweep asked to stop deletes nothing more: a daemon's shutdown does not wait for it)
        policy = retention.Policy.of(daemon)
        halted = retention.sweep(h.deps.sessions, policy, stopping=lambda: True)
        assert halted.statements == 0 and count(db_url, "events") == old + 5
        # When the retention timer fires (the function it calls)
        report = h.daemon.sweep_retention()
        answered = assert_results_match_provider(db_url, h.emulator)

    # Then old events and workers rows are gone, 4,000 rows at most per statement
    assert count(db_url, "events", "kind <> 'test_recent'") == 0
    assert count(db_url, "events") == 5
    assert [r[0] for r in query(db_url, "SELECT hostname FROM orchestrator.workers")] == ["alive"]
    assert report.tables["events"].largest <= 4000 and report.tables["events"].statements >= 5
    # and the job, its requests, batches and results are all there
    assert count(db_url, "results", "job_id = %s", job_id) == 6
    assert answered == 6  # each still the provider's answer to its request
    assert count(db_url, "requests", "job_id = %s", job_id) == 6
    assert count(db_url, "batches", "job_id = %s", job_id) == 1
    assert count(db_url, "jobs") == 1
    assert {k: v for k, v in report.counts().items() if v} == {"events": old, "workers": 2}
    swept = [line for line in lines if line["event"] == "retention_swept"]
    assert len(swept) == 1 and swept[0]["workers"] == 2 and swept[0]["log_level"] == "info"


def test_the_timer_runs_every_cleanup_seconds_and_says_once_what_it_ignores() -> None:
    unused = "postgresql://nobody@127.0.0.1:9/none"  # nothing here connects
    base = settings_for(unused, delete_files_after_ingest=True)("http://emulator/v1")
    scheduler = BackgroundScheduler(timezone="UTC")
    with structlog.testing.capture_logs() as lines:
        retention.schedule(scheduler, lambda: None, base)
    job = scheduler.get_job("retention")
    assert job is not None and job.trigger.interval.total_seconds() == 3600
    ignored = [line for line in lines if line["event"] == "provider_file_deletion_ignored"]
    assert [line["target"] for line in ignored] == ["fastrouter"]
    # retention off, or the timer off: no timer
    for daemon in (
        dataclasses.replace(FAST, events_retention_days=0, workers_retention_days=None),
        dataclasses.replace(FAST, cleanup_seconds=0),
    ):
        off = BackgroundScheduler(timezone="UTC")
        retention.schedule(off, lambda: None, dataclasses.replace(base, daemon=daemon))
        assert off.get_job("retention") is None
    # a timer of one second is a timer (0 is the only "off")
    often = BackgroundScheduler(timezone="UTC")
    fast = dataclasses.replace(FAST, cleanup_seconds=1)
    retention.schedule(often, lambda: None, dataclasses.replace(base, daemon=fast))
    job = often.get_job("retention")
    assert job is not None and job.trigger.interval.total_seconds() == 1


def test_a_sweep_one_row_per_statement_deletes_every_old_row(db_url: str) -> None:
    # Given three events 40 days old and one of today
    query(
        db_url,
        "INSERT INTO orchestrator.events (kind, at) SELECT 'old', "
        "now() - interval '40 days' FROM generate_series(1, 3) "
        "UNION ALL SELECT 'new', now() RETURNING id",
    )
    engine = make_engine(db_url)
    try:
        # When a sweep that deletes at most one row per statement runs (the smallest batch size
        # the settings allow)
        policy = retention.Policy(events_days=30, batch_size=1)
        report = retention.sweep(make_sessionmaker(engine), policy)
    finally:
        engine.dispose()
    # Then the three old ones are gone, one statement each, and today's stays
    assert report.counts()["events"] == 3
    assert report.tables["events"].statements >= 3
    assert query(db_url, "SELECT kind FROM orchestrator.events") == [("new",)]


def _openai(db_url: str, **target: Any) -> Any:
    return settings_for(db_url, preset="openai", target="openai", **target)


def _file_ids(db_url: str, job_id: int) -> list[str]:
    row = query(
        db_url,
        "SELECT input_file_id, output_file_id, error_file_id FROM orchestrator.batches "
        "WHERE job_id = %s",
        job_id,
    )[0]
    return [f for f in row if f]


def _exists(h: Any, file_id: str, target: str = "openai") -> bool:
    try:
        h.deps.clients(target).download_file(file_id, io.BytesIO())
    except ApiNotFound:
        return False
    return True


@pytest.mark.parametrize("delete", [True, False])
def test_provider_files_are_deleted_after_a_committed_ingest_when_asked(
    db_url: str, delete: bool
) -> None:
    # Given an OpenAI target (it can delete files) with delete_files_after_ingest on or off
    config = EmulatorConfig(mode="openai", api_key=API_KEY, fail_custom_ids={"req-00002"})
    with harness(
        db_url,
        http=False,
        emulator_config=config,
        settings=_openai(db_url, delete_files_after_ingest=delete),
    ) as h:
        job_id = enqueue(db_url, simple_requests(5), target="openai")
        # When a job runs through (in a dozen steps; a file missing at ingest would retry)
        assert h.run_job(job_id, max_steps=40) == "completed"
        files = _file_ids(db_url, job_id)
        assert len(files) == 3  # input, output, error
        # Then its input, output and error files are gone at the provider (404), and an event
        # says so, if it was asked to; else they are all still there
        assert [_exists(h, f) for f in files] == [not delete] * 3
        if not delete:
            assert assert_results_match_provider(db_url, h.emulator) == 4
    assert count(db_url, "results", "job_id = %s", job_id) == 5
    # (files deleted or not) each success holds the answer the emulator writes for its request,
    # and the one it refuses its refusal
    answers = query(
        db_url,
        "SELECT custom_id, response #>> '{choices,0,message,content}' FROM orchestrator.results "
        "WHERE succeeded ORDER BY custom_id",
    )
    assert answers == [
        (f"req-{i:05d}", completion_text(config, f"req-{i:05d}", chat_body(i)))
        for i in (0, 1, 3, 4)
    ]
    assert failures(db_url) == {listed_failure("req-00002")}
    recorded = query(
        db_url,
        "SELECT detail->'file_ids' FROM orchestrator.events "
        "WHERE kind = 'provider_files_deleted' AND job_id = %s",
        job_id,
    )
    assert recorded == ([(files,)] if delete else [])
    kinds = events(db_url, job_id)
    if delete:  # after the results were committed, never before
        assert kinds.index("provider_files_deleted") > kinds.index("batch_ingested")


def test_a_failed_file_deletion_is_a_warning_and_the_job_completes(db_url: str) -> None:
    config = EmulatorConfig(mode="openai", api_key=API_KEY)
    with (
        structlog.testing.capture_logs() as lines,
        harness(
            db_url,
            http=False,
            emulator_config=config,
            settings=_openai(db_url, delete_files_after_ingest=True),
        ) as h,
    ):
        # Given a provider that answers 500 to every DELETE /files/{id}
        h.emulator.faults.add("delete_file", status=500, times=None)
        job_id = enqueue(db_url, simple_requests(4), target="openai")
        # When the job runs through
        status = h.run_job(job_id)
        files = _file_ids(db_url, job_id)
        still_there = [_exists(h, f) for f in files]
        answered = assert_results_match_provider(db_url, h.emulator)
    # Then it completed with all its results, the files are still there, and a warning says why
    assert status == "completed"
    assert count(db_url, "results", "job_id = %s", job_id) == 4
    assert answered == 4
    assert still_there == [True] * len(files)
    assert "provider_files_deleted" not in events(db_url, job_id)
    failed = [line for line in lines if line["event"] == "provider_files_delete_failed"]
    assert len(failed) == 1 and failed[0]["log_level"] == "warning"
    assert sorted(failed[0]["errors"]) == sorted(files)
    # naming the job, the batch and the target whose files stay (what an operator looks up)
    batch_id = scalar(db_url, "SELECT id FROM orchestrator.batches WHERE job_id = %s", job_id)
    named = {k: failed[0][k] for k in ("job_id", "batch_id", "target")}
    assert named == {"job_id": job_id, "batch_id": batch_id, "target": "openai"}


def test_cleanup_settings_come_from_the_daemon_table(tmp_path: Any) -> None:
    path = tmp_path / "orchestrator.toml"
    path.write_text(
        "[daemon]\nevents_retention_days = 30\nworkers_retention_days = 0\n"
        "cleanup_seconds = 600\ncleanup_batch_size = 1000\n"
        "[targets.openai]\ndelete_files_after_ingest = true\n"
    )
    settings = Settings.from_env({"ORCHESTRATOR_CONFIG": str(path)})
    policy = retention.Policy.of(settings.daemon)
    assert policy == retention.Policy(events_days=30, workers_days=0, batch_size=1000)
    assert policy.jobs_days is None  # the timer never deletes a job
    assert settings.daemon.cleanup_seconds == 600
    assert settings.target("openai").delete_files_after_ingest
    assert not settings.target("fastrouter").delete_files_after_ingest
    defaults = retention.Policy.of(Settings.from_env({}).daemon)
    assert defaults == retention.Policy(events_days=90, workers_days=7, batch_size=5000)
