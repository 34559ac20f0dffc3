"""The daemon process: worker identity, timers, NOTIFY wake-ups, a bounded pool, graceful shutdown.

``Daemon.tick()`` is one pass (tests call it directly, with a manual clock): cancel what was
cancelled, plan pending jobs, claim runnable batches up to the free workers, hand them to the pool.
``Daemon.serve()`` runs ticks from APScheduler timers and from ``LISTEN orchestrator`` until a
signal: the first SIGTERM/SIGINT stops claiming, lets running steps finish within the grace period,
releases the leases still held and exits 0; a second one exits at once.
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
from collections.abc import Callable
from types import FrameType
from typing import Any

import sqlalchemy as sa
import structlog
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler

from orchestrator import __version__, runner, sweep
from orchestrator.asgi import ServerThread
from orchestrator.clock import wall_now
from orchestrator.db import ledger, queries
from orchestrator.db.notify import listen
from orchestrator.db.session import unit_of_work
from orchestrator.deps import Deps
from orchestrator.errors import ConfigError, StartupRefused
from orchestrator.observability import health_app

log = structlog.get_logger(__name__)

CHANNEL = "orchestrator"


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
        self.last_tick_at: dt.datetime | None = None
        self.last_tick_error: str | None = None

    # -- one pass ------------------------------------------------------------------------

    def tick(self, *, wait: bool = False) -> int:
        """Start what is due; with ``wait``, also wait for it to finish. Returns how much started."""
        if self._stop.is_set():
            return 0
        now = self.deps.clock.now()
        started: list[cf.Future[Any]] = []
        with unit_of_work(self.deps.sessions) as s:
            ledger.wake_cancelled_jobs(s, now)
            pending = bool(queries.pending_job_ids(s, 1))
        if pending and self._begin_planning():
            started.append(self._submit(self._plan_pending, executor=self._planner))
        free = self._free()
        if free > 0:
            with unit_of_work(self.deps.sessions) as s:
                claimed = ledger.claim_batches(
                    s,
                    owner=self.deps.worker_id,
                    now=now,
                    ttl=self.settings.lease_seconds,
                    limit=free,
                )
            for b in claimed:
                with self._lock:
                    self._inflight[b.id] = b.token
                started.append(self._submit(self._run, b))
        self.last_tick_at = self.deps.clock.now()
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
                    job_ids = queries.pending_job_ids(s, self.settings.max_plan_jobs_per_tick)
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
        self.metrics.in_flight.inc()
        try:
            runner.run_batch(self.deps, b)
        finally:
            self.metrics.in_flight.dec()
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

    def in_flight(self) -> dict[int, int]:
        with self._lock:
            return dict(self._inflight)

    # -- health ----------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = self.deps.clock.now()
        body: dict[str, Any] = {
            "worker_id": str(self.deps.worker_id),
            "version": __version__,
            "in_flight": len(self.in_flight()),
        }
        try:
            with unit_of_work(self.deps.sessions) as s:
                states = queries.target_states(s)
                stuck = queries.stuck_batches(
                    s, now=now, stuck_after=self.settings.stuck_after_seconds, limit=20
                )
            body["targets"] = [
                {
                    "target": t.target,
                    "paused": t.paused,
                    "reason": t.reason,
                    "blocked_until": t.blocked_until.isoformat() if t.blocked_until else None,
                }
                for t in states
                if t.paused or (t.blocked_until and t.blocked_until > now)
            ]
        except sa.exc.SQLAlchemyError as exc:
            body.update(status="unhealthy", error=f"database: {type(exc).__name__}")
            return False, body
        stale = self.last_tick_at is None or (now - self.last_tick_at).total_seconds() > max(
            30.0, 10 * self.settings.tick_seconds
        )
        if stale or self.last_tick_error:
            body.update(status="unhealthy", error=self.last_tick_error or "not ticking")
            return False, body
        # Stuck batches need a person, not a restart: reported, with 200.
        body["stuck_batches"] = [_stuck(b, now) for b in stuck]
        body["status"] = "degraded" if body["targets"] or stuck else "ok"
        return True, body

    def refresh_metrics(self) -> None:
        with unit_of_work(self.deps.sessions) as s:
            batches = queries.open_batches_by_state(s)
            jobs = queries.jobs_by_status(s)
            targets = queries.target_states(s)
            stuck = queries.stuck_batches(
                s, now=self.deps.clock.now(), stuck_after=self.settings.stuck_after_seconds
            )
        self.metrics.stuck_batches.clear()  # a target no longer stuck reads 0, not its old value
        for target in self.deps.settings.targets:
            self.metrics.stuck_batches.labels(target).set(
                sum(1 for b in stuck if b.target == target)
            )
        self.metrics.open_batches.clear()
        for state, n in batches:
            self.metrics.open_batches.labels(state).set(n)
        for status, n in jobs:
            self.metrics.jobs.labels(status).set(n)
        now = self.deps.clock.now()
        for t in targets:
            blocked = t.paused or bool(t.blocked_until and t.blocked_until > now)
            self.metrics.target_blocked.labels(t.target, str(t.paused).lower()).set(int(blocked))

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
            seconds=15,
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
        if self._scheduler is not None and not self._stop.is_set():
            with contextlib.suppress(JobLookupError, SchedulerNotRunningError):  # stopping
                self._scheduler.modify_job("tick", next_run_time=wall_now())

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
