"""Retention: what the orchestrator deletes, when, and how (``orchestrator cleanup`` and the
daemon's timer).

**What goes, and when.**

* ``events`` older than ``events_retention_days`` (90): every event, whatever its job, even one
  of a job still open. The events are an audit trail: nothing the daemon decides reads them (the
  state of a job lives in its ``jobs``, ``batches`` and ``results`` rows), so a job open for more
  than 90 days loses only the oldest lines of its history, and the table stays bounded by age,
  not by the age of the oldest open job (one forgotten job would otherwise keep everything).
* ``workers`` rows not heard from for ``workers_retention_days`` (7): daemons that stopped (their
  stop is their last heartbeat) or died. A live daemon heartbeats every third of a lease.
* Finished jobs (``completed``, ``failed``, ``cancelled``) whose ``finished_at`` is older than
  ``cleanup --jobs-older-than DAYS``, with their results, requests, batches, batch items and
  events: only when a person asks for it on the command line. The timer never deletes a job, a
  request, a batch or a result; never an open job (nor one with a batch still open), whoever asks.
* The provider's copies of a batch's files (input, output, error), after the batch's results are
  committed, where the target can delete files and ``delete_files_after_ingest`` is on
  (:func:`delete_provider_files`).

**How.** Each DELETE removes at most ``cleanup_batch_size`` rows (5,000) and commits on its own, so
a sweep of millions of rows is thousands of short transactions: the daemon's writes never wait
behind a long one, and nothing is rolled back wholesale if the sweep stops half-way (it goes on
from where it was at the next run). Old events are found by ``ix_events_at`` (migration 0006),
oldest first. A big job is deleted a chunk at a time (results, batch items, requests, events),
then its few remaining rows (batches, the job) in one last short transaction. The cutoffs come
from the database's clock (``now()``), read once per sweep, like every time that judges rows
written by several machines.

**Several daemons.** Each runs the timer; no lock elects one. The rows of each statement are
chosen ``FOR UPDATE SKIP LOCKED``, so two daemons sweeping at the same moment share the old rows
out and never wait for each other, and a delete is idempotent (a row gone is gone). An advisory
lock would save nothing but the second daemon's few index probes, and would need a session held
across many transactions.

**Logs, not events.** A sweep logs one ``retention_swept`` line (its counts); it records no event
(an event about deleting events would itself be history to delete). Deleting provider files is
recorded, as ``provider_files_deleted`` on the batch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import time
from collections.abc import Callable

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.api.errors import ApiError, ApiNotFound
from orchestrator.clock import wall_now
from orchestrator.config import DaemonSettings, Settings
from orchestrator.db import ledger, queries
from orchestrator.db.queries import Claimed
from orchestrator.db.session import TRANSIENT_DB_ERRORS, unit_of_work
from orchestrator.deps import Deps

log = structlog.get_logger(__name__)

# The tables a sweep deletes from, in the order the report lists them.
TABLES = ("events", "workers", "jobs", "batches", "batch_items", "requests", "results")
JOB_PAGE = 100  # finished jobs looked up at a time


@dataclasses.dataclass(frozen=True)
class Policy:
    """What to delete: ages in days (None or 0: keep), and the most rows one statement deletes."""

    events_days: float | None = None
    workers_days: float | None = None
    jobs_days: float | None = None
    batch_size: int = 5000

    @classmethod
    def of(cls, daemon: DaemonSettings) -> Policy:
        """The daemon timer's policy: events and workers by the settings, never a job."""
        return cls(
            events_days=daemon.events_retention_days,
            workers_days=daemon.workers_retention_days,
            batch_size=daemon.cleanup_batch_size,
        )

    @property
    def deletes_anything(self) -> bool:
        return any(_on(d) for d in (self.events_days, self.workers_days, self.jobs_days))


@dataclasses.dataclass
class Tally:
    """One table's share of a sweep."""

    rows: int = 0
    statements: int = 0  # DELETE statements that removed rows, each in its own transaction
    largest: int = 0  # the most rows one of them removed (never above the batch size)

    def add(self, deleted: int) -> None:
        if deleted:
            self.rows += deleted
            self.statements += 1
            self.largest = max(self.largest, deleted)


@dataclasses.dataclass
class Report:
    policy: Policy
    dry_run: bool
    tables: dict[str, Tally] = dataclasses.field(
        default_factory=lambda: {table: Tally() for table in TABLES}
    )
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        return {table: tally.rows for table, tally in self.tables.items()}

    @property
    def statements(self) -> int:
        return sum(t.statements for t in self.tables.values())


def _on(days: float | None) -> bool:
    return days is not None and days > 0


def _cutoff(now: dt.datetime, days: float | None) -> dt.datetime | None:
    return now - dt.timedelta(days=days) if days is not None and days > 0 else None


def sweep(
    sessions: sessionmaker[Session],
    policy: Policy,
    *,
    dry_run: bool = False,
    stopping: Callable[[], bool] = lambda: False,
) -> Report:
    """Delete (or, with ``dry_run``, count) what ``policy`` says is past its age. ``stopping`` is
    asked between statements: a daemon told to stop does not wait for a long sweep to end (what
    is left goes at the next run)."""
    if policy.batch_size < 1:
        raise ValueError("the batch size must be at least 1")
    started = time.monotonic()
    report = Report(policy, dry_run)
    with unit_of_work(sessions) as s:
        now = queries.database_now(s)
    events_before = _cutoff(now, policy.events_days)
    workers_before = _cutoff(now, policy.workers_days)
    jobs_before = _cutoff(now, policy.jobs_days)
    if dry_run:
        _count(sessions, report, events_before, workers_before, jobs_before)
    else:
        size = policy.batch_size
        if events_before is not None:
            delete = functools.partial(ledger.delete_old_events, before=events_before, limit=size)
            _drain(sessions, delete, report.tables["events"], size, stopping)
        if workers_before is not None:
            delete = functools.partial(ledger.delete_old_workers, before=workers_before, limit=size)
            _drain(sessions, delete, report.tables["workers"], size, stopping)
        if jobs_before is not None:
            _delete_jobs(sessions, report, before=jobs_before, size=size, stopping=stopping)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _drain(
    sessions: sessionmaker[Session],
    delete: Callable[[Session], int],
    tally: Tally,
    size: int,
    stopping: Callable[[], bool],
) -> None:
    """Run ``delete`` (one bounded statement), one transaction each, until it comes back short."""
    while not stopping():
        with unit_of_work(sessions) as s:
            deleted = delete(s)
        tally.add(deleted)
        if deleted < size:
            return


def _delete_jobs(
    sessions: sessionmaker[Session],
    report: Report,
    *,
    before: dt.datetime,
    size: int,
    stopping: Callable[[], bool],
) -> None:
    after = 0
    while not stopping():
        with unit_of_work(sessions) as s:
            job_ids = queries.finished_jobs_before(s, before=before, after_id=after, limit=JOB_PAGE)
        if not job_ids:
            return
        for job_id in job_ids:
            for table in ledger.JOB_CHUNK_TABLES:
                delete = functools.partial(
                    ledger.delete_job_chunk, table=table, job_id=job_id, before=before, limit=size
                )
                _drain(sessions, delete, report.tables[table], size, stopping)
            if stopping():
                return  # the job's last rows go at the next run
            with unit_of_work(sessions) as s:
                batches, jobs = ledger.delete_finished_job(s, job_id, before=before)
            report.tables["batches"].add(batches)
            report.tables["jobs"].add(jobs)
        after = job_ids[-1]


def _count(
    sessions: sessionmaker[Session],
    report: Report,
    events_before: dt.datetime | None,
    workers_before: dt.datetime | None,
    jobs_before: dt.datetime | None,
) -> None:
    tables = report.tables
    with unit_of_work(sessions) as s:
        if events_before is not None:
            tables["events"].rows = queries.old_event_count(s, before=events_before)
        if workers_before is not None:
            tables["workers"].rows = queries.old_worker_count(s, before=workers_before)
        if jobs_before is None:
            return
        after = 0
        while job_ids := queries.finished_jobs_before(
            s, before=jobs_before, after_id=after, limit=1000
        ):
            counts = queries.job_row_counts(s, job_ids, events_before=events_before)
            for table, n in counts.items():
                tables[table].rows += n
            after = job_ids[-1]


# -- the daemon's timer ----------------------------------------------------------------------


def sweep_for_daemon(deps: Deps, *, stopping: Callable[[], bool] = lambda: False) -> Report:
    """What the daemon's ``retention`` timer runs: old events and workers (never a job), and one
    log line."""
    report = sweep(deps.sessions, Policy.of(deps.settings.daemon), stopping=stopping)
    log.info(
        "retention_swept",
        **{table: n for table, n in report.counts().items() if n},
        statements=report.statements,
        seconds=report.seconds,
    )
    return report


def schedule(scheduler: BackgroundScheduler, run: Callable[[], None], settings: Settings) -> None:
    """Add the retention timer (every ``cleanup_seconds``, the first run a minute after start-up
    at most, so that a daemon restarted often still sweeps), and say once which targets ignore
    ``delete_files_after_ingest``."""
    for target in settings.targets.values():
        if target.delete_files_after_ingest and not target.can_delete_files:
            log.info(
                "provider_file_deletion_ignored",
                target=target.name,
                reason="delete_files_after_ingest is set but the target cannot delete files",
            )
    daemon = settings.daemon
    if daemon.cleanup_seconds <= 0 or not Policy.of(daemon).deletes_anything:
        return
    scheduler.add_job(
        run,
        "interval",
        id="retention",
        seconds=daemon.cleanup_seconds,
        max_instances=1,
        coalesce=True,
        next_run_time=wall_now() + dt.timedelta(seconds=min(60.0, daemon.cleanup_seconds)),
    )


# -- provider files ----------------------------------------------------------------------------


def delete_provider_files(deps: Deps, b: Claimed, result_files: list[str]) -> list[str]:
    """Delete the batch's input file and its result files at the provider, once its results are
    committed (the caller's ingest transaction has ended: never call this before), where the
    target can and ``delete_files_after_ingest`` is on. Records ``provider_files_deleted``.

    A failure is a warning, never the batch's or the job's: the results are safe in the database
    and the provider deletes its files on its own after a while (30 days at OpenAI). A file
    already gone (404) is counted as such. Returns the ids deleted."""
    target = deps.settings.target(b.target)
    if not (target.can_delete_files and target.delete_files_after_ingest):
        return []
    client = deps.clients(b.target)
    deleted: list[str] = []
    gone: list[str] = []
    failed: dict[str, str] = {}
    for file_id in dict.fromkeys(f for f in (b.input_file_id, *result_files) if f):
        try:
            client.delete_file(file_id)
            deleted.append(file_id)
        except ApiNotFound:
            gone.append(file_id)
        except ApiError as exc:
            failed[file_id] = exc.message
        except TRANSIENT_DB_ERRORS as exc:  # the target's gate reads the database first
            failed[file_id] = f"database: {type(exc).__name__}"
    if failed:
        log.warning(
            "provider_files_delete_failed",
            job_id=b.job_id,
            batch_id=b.id,
            target=b.target,
            errors=failed,
            hint="the results are safe; the provider deletes its files on its own later",
        )
    if deleted or gone:
        try:
            with unit_of_work(deps.sessions) as s:
                ledger.provider_files_deleted(
                    s,
                    job_id=b.job_id,
                    batch_id=b.id,
                    target=b.target,
                    file_ids=deleted,
                    already_gone=gone,
                )
        except TRANSIENT_DB_ERRORS as exc:  # the files are gone all the same; say so in the log
            log.warning(
                "provider_files_deleted_unrecorded",
                job_id=b.job_id,
                batch_id=b.id,
                file_ids=deleted,
                error=type(exc).__name__,
            )
    return deleted
