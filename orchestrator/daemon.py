"""The daemon process: worker identity, timers, NOTIFY wake-ups, a bounded pool, graceful shutdown.

``Daemon.tick()`` is one pass (tests call it directly, with a manual clock): cancel what was
cancelled, plan pending jobs, claim runnable batches up to the free workers, hand them to the pool.
``Daemon.serve()`` runs ticks from APScheduler timers and from ``LISTEN orchestrator`` until a
signal: the first SIGTERM/SIGINT stops claiming, lets running steps finish within the grace period,
releases the leases still held and exits 0; a second one exits at once.

``/healthz`` and the gauges of ``/metrics`` read the database through an engine of their own (a
connection per check, short connect and statement timeouts, TCP keepalives) on threads of their
own, and wait PROBE_SECONDS at most whatever the database does: neither hangs nor waits behind
the workers when the database is away, hung or slow, and both recover as soon as it is back.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler

from orchestrator import __version__, retention, runner, sweep
from orchestrator.api.client import tls_context
from orchestrator.asgi import ServerThread
from orchestrator.clock import wall_now
from orchestrator.db import ledger, queries
from orchestrator.db.notify import listen
from orchestrator.db.session import Session, make_probe_engine, make_sessionmaker, unit_of_work
from orchestrator.deps import Deps
from orchestrator.domain import capacity_report
from orchestrator.errors import ConfigError, StartupRefused
from orchestrator.observability import FRESH_SECONDS, Scrubber, health_app

log = structlog.get_logger(__name__)

CHANNEL = "orchestrator"
# /healthz and the gauges give the database this long to answer (connect, then each statement).
PROBE_SECONDS = 2.0
# Checks still waiting on a database that hangs, past which a check fails without trying.
MAX_PROBES = 8
# The gauges are also refreshed by a timer, for a daemon nobody scrapes (logs of a failure).
METRICS_SECONDS = 15.0
T = TypeVar("T")


class DatabaseUnreachable(Exception):
    """The health check or the gauges could not read the database; the message says why (no
    password: the URL is never part of it)."""


class Daemon:
    def __init__(self, deps: Deps, *, listen_url: str | None = None) -> None:
        self.deps = deps
        self.settings = deps.settings.daemon
        self.metrics = deps.metrics
        self._listen_url = listen_url
        self._pool = cf.ThreadPoolExecutor(self.settings.workers, thread_name_prefix="worker")
        # Planning has a lane of its own: it never takes a worker from batch steps, and batch
        # steps never keep pending jobs waiting (each job is one short transaction).
        self._planner = cf.ThreadPoolExecutor(1, thread_name_prefix="planner")
        self._inflight: dict[int, int] = {}  # batch id → lease token
        self._planning = False
        self._futures: set[cf.Future[Any]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._signals = 0
        self._scheduler: BackgroundScheduler | None = None
        self.started_at = deps.clock.now()
        self.last_tick_at: dt.datetime | None = None
        self.last_tick_error: str | None = None
        # /healthz and the gauges: their own connections and threads (a bounded wait)
        probe_url = deps.engine.url if deps.engine is not None else deps.settings.database_url
        self._probe_engine = make_probe_engine(probe_url or "", timeout=PROBE_SECONDS)
        self._probe_sessions = make_sessionmaker(self._probe_engine)
        self._probes_waiting = 0
        self._scrub = Scrubber(deps.settings.secrets())
        self._refresh_lock = threading.Lock()
        self._refreshed_at: float | None = None  # time.monotonic() of the last good refresh
        self._unknown_seen: set[str] = set()  # targets of pending jobs not configured here
        self.metrics_fresh_seconds = FRESH_SECONDS
        self.metrics.for_targets(deps.settings.targets)
        self.metrics.before_scrape(self.refresh_if_stale)

    # -- one pass ------------------------------------------------------------------------

    def tick(self, *, wait: bool = False) -> int:
        """Start what is due; with ``wait``, also wait for it to finish. Returns how much started."""
        if self._stop.is_set():
            return 0
        now = self.deps.clock.now()
        started: list[cf.Future[Any]] = []
        with unit_of_work(self.deps.sessions) as s:
            ledger.wake_cancelled_jobs(s, now)
            pending = bool(queries.pending_job_ids(s, 1, targets=self.deps.settings.served))
        if pending and self._begin_planning():
            started.append(self._submit(self._plan_pending, executor=self._planner))
        free = self._free()
        due = None
        if free > 0:
            with unit_of_work(self.deps.sessions) as s:
                claimed = ledger.claim_batches(
                    s,
                    owner=self.deps.worker_id,
                    now=now,
                    ttl=self.settings.lease_seconds,
                    limit=free,
                    targets=self.deps.settings.served,
                )
                if len(claimed) < free:
                    # Room to spare: tick again when the next batch falls due (a poll due in
                    # 1 s), not only at the next timer (tick_seconds). Same transaction.
                    due = queries.next_due(s, after=now)
            for b in claimed:
                if b.taken_over:
                    self.metrics.lease_takeovers.inc()
                with self._lock:
                    self._inflight[b.id] = b.token
                started.append(self._submit(self._run, b))
        if due is not None:
            self._tick_in((due - self.deps.clock.now()).total_seconds())
        self.last_tick_at = self.deps.clock.now()
        self.metrics.last_tick.set(self.last_tick_at.timestamp())
        if wait:
            cf.wait(started)
        return len(started)

    def _free(self) -> int:
        with self._lock:
            return self.settings.workers - len(self._inflight)

    def _begin_planning(self) -> bool:
        with self._lock:
            if self._planning:
                return False
            self._planning = True
            return True

    def _submit(
        self, fn: Callable[..., None], *args: Any, executor: cf.Executor | None = None
    ) -> cf.Future[Any]:
        ctx = structlog.contextvars.get_contextvars()

        def call() -> None:
            with structlog.contextvars.bound_contextvars(**ctx):
                try:
                    fn(*args)
                except Exception:  # nothing a worker raises vanishes unlogged
                    log.exception("step_crashed", task=getattr(fn, "__name__", "?"))
                    raise

        future = (executor or self._pool).submit(call)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: cf.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _plan_pending(self) -> None:
        """Plan pending jobs, oldest of the highest priority first, until none is left (or the
        daemon stops); each job is one short transaction. A job planned into batches wakes the
        tick at once, so its batches are claimed without waiting for the next timer."""
        try:
            while not self._stop.is_set():
                with unit_of_work(self.deps.sessions) as s:
                    job_ids = queries.pending_job_ids(
                        s, self.settings.max_plan_jobs_per_tick, targets=self.deps.settings.served
                    )
                planned = 0
                for job_id in job_ids:
                    if self._stop.is_set():
                        break
                    status = runner.plan_one(self.deps, job_id)
                    if status:
                        planned += 1
                        self.metrics.jobs_planned.labels(status).inc()
                if planned:
                    self.wake()
                if not planned:  # nothing left, or only jobs another daemon is planning
                    break
        finally:
            with self._lock:
                self._planning = False

    def _run(self, b: queries.Claimed) -> None:
        self.metrics.steps_in_flight.inc()
        try:
            runner.run_batch(self.deps, b)
        finally:
            self.metrics.steps_in_flight.dec()
            with self._lock:
                self._inflight.pop(b.id, None)
            self.wake()  # a worker is free: claim again now, not at the next timer

    def heartbeat(self) -> None:
        """Renew the leases of the batches being worked on (long downloads, big ingests)."""
        with self._lock:
            tokens = dict(self._inflight)
        with unit_of_work(self.deps.sessions) as s:
            ledger.renew_leases(
                s, owner=self.deps.worker_id, tokens=tokens, ttl=self.settings.lease_seconds
            )
            ledger.heartbeat_worker(s, self.deps.worker_id)

    def sweep_orphans(self, *, force: bool = False) -> list[sweep.SweepReport]:
        """Cancel remote batches of ours that no batch adopted (see ``orchestrator/sweep.py``)."""
        return sweep.sweep_orphans(self.deps, force=force)

    def sweep_retention(self) -> retention.Report:
        """Delete old events and workers rows (the ``retention`` timer; see retention.py)."""
        return retention.sweep_for_daemon(self.deps, stopping=self._stop.is_set)

    def in_flight(self) -> dict[int, int]:
        with self._lock:
            return dict(self._inflight)

    # -- health and the gauges -------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, what ``/healthz`` answers). Unhealthy (503) when the database cannot be
        read, or when no tick has succeeded for ``max(30 s, 10 ticks)``; paused targets and
        stuck batches need a person, not a restart: they are reported, with 200."""
        now = self.deps.clock.now()
        since = self.last_tick_at or self.started_at
        age = max((now - since).total_seconds(), 0.0)
        body: dict[str, Any] = {
            "status": "ok",
            "worker_id": str(self.deps.worker_id),
            "version": __version__,
            "in_flight": len(self.in_flight()),
            "last_tick_age_seconds": round(age, 3) if self.last_tick_at else None,
            "last_tick_error": self._scrub(self.last_tick_error or "") or None,
        }
        stuck_after = self.settings.stuck_after_seconds
        try:
            states, stuck = self._read(
                lambda s: (
                    queries.target_states(s),
                    queries.stuck_batches(s, now=now, stuck_after=stuck_after, limit=20),
                )
            )
        except DatabaseUnreachable as exc:
            body.update(status="unhealthy", error=f"database unreachable: {exc}")
            return False, body
        blocked = [t for t in states if t.paused or (t.blocked_until and t.blocked_until > now)]
        body["targets"] = [
            {
                "target": t.target,
                "paused": t.paused,
                "reason": t.reason,
                "blocked_until": t.blocked_until.isoformat() if t.blocked_until else None,
            }
            for t in blocked
        ]
        body["paused_targets"] = [t.target for t in blocked if t.paused]
        body["stuck_batches"] = [_stuck(b, now) for b in stuck]
        late = max(30.0, 10 * self.settings.tick_seconds)
        if age > late:
            what = "the last successful tick" if self.last_tick_at else "no successful tick since"
            body.update(
                status="unhealthy",
                error=f"tick late: {what} {age:.0f} s ago (more than {late:.0f} s)",
            )
            return False, body
        # a target held back by its own call cap is listed, but it is how it was configured to
        # run: nothing degraded
        if stuck or any(not queries.held_by_call_cap(t) for t in blocked):
            body["status"] = "degraded"
        return True, body

    def refresh_metrics(self) -> None:
        """Read the gauges from the database (the timer's call): on failure, the last values stay,
        ``orchestrator_database_up`` reads 0 and the error is raised (the timer logs it)."""
        with self._refresh_lock:
            self._refresh()

    def refresh_if_stale(self) -> None:
        """Before a scrape: refresh the gauges, unless that was done less than
        ``metrics_fresh_seconds`` ago (several scrapers, one query) and this daemon has changed
        nothing since (its own changes show at once, other daemons' within that time). A scrape
        never fails on the database: it shows the last values, and database_up 0."""
        with self._refresh_lock:
            last = self._refreshed_at
            if (
                last is not None
                and time.monotonic() - last < self.metrics_fresh_seconds
                and self.metrics.changed_at < last
            ):
                return
            try:
                self._refresh()
            except DatabaseUnreachable as exc:
                log.warning("metrics_refresh_failed", error=str(exc))

    def _refresh(self) -> None:
        started = time.monotonic()  # what was committed before this is in what it reads
        now = self.deps.clock.now()
        stuck_after = self.settings.stuck_after_seconds
        try:
            values = self._read(lambda s: queries.gauges(s, now=now, stuck_after=stuck_after))
        except DatabaseUnreachable:
            self.metrics.database_up.set(0)
            raise
        self.metrics.show(values, open_states=queries.OPEN_STATES)
        self._not_served(values.pending)
        self.metrics.show_capacity(
            capacity_report.report(self.deps.settings.targets, values.capacity, values.learned)
        )
        self.metrics.database_up.set(1)
        self._refreshed_at = started

    def _not_served(self, pending: Mapping[str, int]) -> None:
        """Pending jobs for a target this daemon does not serve (``Settings.served``: its
        configuration does not know it, or it is a built-in target without a key here): they
        wait for a daemon that serves it (the pick leaves them). Shown by target on a gauge, and
        said once per target when it appears among them (not at every refresh)."""
        settings = self.deps.settings
        unknown = {t: n for t, n in pending.items() if t not in settings.served}
        self.metrics.show_not_served(unknown)
        for target in sorted(unknown.keys() - self._unknown_seen):
            log.warning(
                "jobs_for_target_not_served",
                target=target,
                count=unknown[target],
                served=sorted(settings.served),
                hint=settings.not_served_hint(target),
            )
        self._unknown_seen = set(unknown)

    def _read(self, read: Callable[[Session], T]) -> T:
        """``read`` in a short transaction of the probe engine, on a thread of its own, given
        PROBE_SECONDS to answer whatever the database does (down, hung, slow); else
        DatabaseUnreachable. A check left waiting on a hung database ends when the database
        answers or the connection dies (keepalives); MAX_PROBES of them at most."""
        future: cf.Future[T] = cf.Future()

        def run() -> None:
            try:
                with unit_of_work(self._probe_sessions) as s:
                    value = read(s)
            except Exception as exc:  # noqa: BLE001 (handed to the caller, who says what it was)
                future.set_exception(exc)
            else:
                future.set_result(value)
            finally:
                with self._lock:
                    self._probes_waiting -= 1

        with self._lock:
            if self._probes_waiting >= MAX_PROBES:
                raise DatabaseUnreachable(
                    f"no answer: {self._probes_waiting} earlier checks are still waiting"
                )
            self._probes_waiting += 1
        threading.Thread(target=run, name="db-check", daemon=True).start()
        try:
            return future.result(timeout=PROBE_SECONDS)
        except cf.TimeoutError:
            raise DatabaseUnreachable(f"no answer within {PROBE_SECONDS:.0f} s") from None
        except sa.exc.SQLAlchemyError as exc:
            raise DatabaseUnreachable(self._describe(exc)) from None

    def _describe(self, exc: sa.exc.SQLAlchemyError) -> str:
        """The driver's first line (``connection … failed: Connection refused``), without the
        statement and parameters SQLAlchemy adds, scrubbed of any secret all the same."""
        cause = getattr(exc, "orig", None) or exc
        lines = str(cause).strip().splitlines() or [""]
        return self._scrub(f"{type(cause).__name__}: {lines[0]}"[:300])

    # -- the process -----------------------------------------------------------------------

    def serve(self, *, install_signals: bool = True) -> int:
        """Run until stopped. Returns the process exit code.

        The /metrics address is bound before the worker row is registered: a daemon that cannot
        bind it refuses to start (StartupRefused), and leaves no trace in ``workers``. (``run``
        checked the schema's revision before it built the daemon.)"""
        http = self._start_http()
        try:
            self._register()
        except BaseException:
            if http is not None:
                http.stop()
            raise
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        tls_context()  # read the CA bundle now, not in the first batch's upload
        listener = threading.Thread(target=self._listen, name="listen", daemon=True)
        listener.start()
        self._scheduler = self._start_timers()
        log.info(
            "daemon_started",
            worker_id=str(self.deps.worker_id),
            workers=self.settings.workers,
            version=__version__,
            pid=os.getpid(),
        )
        self._stop.wait()
        code = self._shutdown()
        if http is not None:
            http.stop()
        return code

    def request_stop(self) -> None:
        self._stop.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("daemon_killed", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info(
            "daemon_stopping",
            signal=signal.Signals(signum).name,
            grace_seconds=self.settings.shutdown_grace_seconds,
        )
        self._stop.set()

    def _register(self) -> None:
        with unit_of_work(self.deps.sessions) as s:
            ledger.register_worker(
                s,
                worker_id=self.deps.worker_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                version=__version__,
            )

    def _start_timers(self) -> BackgroundScheduler:
        scheduler = BackgroundScheduler(timezone="UTC")
        scheduler.add_job(
            self._safe(self.tick),
            "interval",
            id="tick",
            seconds=self.settings.tick_seconds,
            max_instances=1,
            coalesce=True,
            next_run_time=wall_now(),
        )
        scheduler.add_job(
            self._safe(self.heartbeat),
            "interval",
            id="heartbeat",
            seconds=max(self.settings.lease_seconds / 3, 0.5),
            max_instances=1,
            coalesce=True,
        )
        scheduler.add_job(
            self._safe(self.refresh_metrics),
            "interval",
            id="metrics",
            seconds=METRICS_SECONDS,
            max_instances=1,
            coalesce=True,
        )
        scheduler.add_job(
            self._safe(self.sweep_orphans),
            "interval",
            id="orphans",
            seconds=self.settings.orphan_sweep_seconds,
            max_instances=1,
            coalesce=True,
        )
        # At start-up, whatever the last sweep: a daemon that was down may have left one behind.
        scheduler.add_job(self._safe(lambda: self.sweep_orphans(force=True)), id="orphans-at-start")
        retention.schedule(scheduler, self._safe(self.sweep_retention), self.deps.settings)
        scheduler.start()
        return scheduler

    def _safe(self, fn: Callable[[], Any]) -> Callable[[], None]:
        def call() -> None:
            if self._stop.is_set():
                return
            try:
                fn()
                if fn == self.tick:
                    self.last_tick_error = None
            except Exception as exc:  # a timer must survive a database blip
                log.exception("timer_failed", timer=getattr(fn, "__name__", "?"))
                if fn == self.tick:
                    self.last_tick_error = f"{type(exc).__name__}: {exc}"[:300]

        return call

    def wake(self) -> None:
        """Tick now (a job was enqueued or cancelled)."""
        self._tick_in(0.0)

    def _tick_in(self, seconds: float) -> None:
        """Tick in ``seconds`` (at once if not positive), if that is sooner than the timer's next
        tick; a later time changes nothing."""
        if self._scheduler is None or self._stop.is_set():
            return
        at = wall_now() + dt.timedelta(seconds=max(0.0, seconds))
        with contextlib.suppress(JobLookupError, SchedulerNotRunningError):  # stopping
            job = self._scheduler.get_job("tick")
            if job is not None and job.next_run_time is not None and job.next_run_time <= at:
                return
            self._scheduler.modify_job("tick", next_run_time=at)

    def _listen(self) -> None:
        """LISTEN for enqueues; reconnect on failure. Polling (tick_seconds) covers any gap."""
        if self._listen_url:
            listen(self._listen_url, CHANNEL, on_notify=self.wake, stop=self._stop)

    def _start_http(self) -> ServerThread | None:
        """/healthz and /metrics, or StartupRefused: a daemon that cannot be watched does not
        run on unwatched (a supervisor restarting it sees it fail, with the address)."""
        addr = self.settings.http_addr
        if not addr:
            return None
        host, _, port = addr.rpartition(":")
        try:
            server = ServerThread(
                health_app(self.health, self.metrics), host=host or "127.0.0.1", port=int(port)
            )
            server.start()
        except ValueError:
            raise ConfigError(
                f"ORCHESTRATOR_HTTP_ADDR must be host:port or off, not {addr!r}"
            ) from None
        except (OSError, RuntimeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StartupRefused(
                f"cannot serve /healthz and /metrics on {addr}: {why}; stop what holds that "
                "port (another daemon?) or set ORCHESTRATOR_HTTP_ADDR to another host:port, or "
                "to off"
            ) from None
        log.info("http_started", url=server.url)
        return server

    def _shutdown(self) -> int:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
        with self._lock:
            pending = set(self._futures)
        done, not_done = cf.wait(pending, timeout=self.settings.shutdown_grace_seconds)
        leftover = self.in_flight()
        if leftover:
            with unit_of_work(self.deps.sessions) as s:
                released = ledger.release_leases(s, owner=self.deps.worker_id, tokens=leftover)
            log.warning("leases_released", batches=sorted(leftover), released=released)
        with unit_of_work(self.deps.sessions) as s:
            ledger.stop_worker(s, self.deps.worker_id)
        log.info("daemon_stopped", finished=len(done), abandoned=len(not_done))
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._planner.shutdown(wait=False, cancel_futures=True)
        self._close_probe()
        self.deps.clients.close()
        if not_done:
            # Steps still running past the grace period: their leases are released (or will
            # expire), their fenced writes will fail. Do not wait for them.
            _flush_and_exit(0)
        return 0

    def close(self) -> None:
        """For tests: stop the pool without the signal machinery."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._planner.shutdown(wait=True, cancel_futures=True)
        self._close_probe()

    def _close_probe(self) -> None:
        self.metrics.before_scrape(None)
        self._probe_engine.dispose()


def _stuck(b: queries.StuckBatch, now: dt.datetime) -> dict[str, Any]:
    since = b.failing_since or b.expires_at
    return {
        "batch_id": b.id,
        "job_id": b.job_id,
        "target": b.target,
        "state": b.state,
        "remote_status": b.remote_status,
        "since": since.isoformat() if since else None,
        "for_seconds": round((now - since).total_seconds()) if since else None,
        "last_error": b.last_error,
    }


def _flush_and_exit(code: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(code)
