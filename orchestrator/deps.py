"""What the steps need, built once by the CLI (or by a test) and passed down explicitly."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import tempfile
import threading
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.api.client import BatchApiClient, make_http_client
from orchestrator.api.errors import ApiKeyMissing, CallCapReached, TargetBlocked
from orchestrator.clock import Clock, SystemClock
from orchestrator.config import Settings, TargetConfig
from orchestrator.db import ledger, queries
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from orchestrator.domain.backoff import PollSchedule, RetrySchedule
from orchestrator.domain.decide import Policy
from orchestrator.observability import Metrics
from orchestrator.prefetch import Prefetch


class TargetGate:
    """Asks the database, before every call, whether anyone has been told to wait for this target,
    and takes one of its calls of the minute where it has a ``max_calls_per_minute``.

    A 429 seen by one worker of one daemon is written to ``target_state``; every other worker of
    every daemon reads it here and does not call before the deadline. When a call works while the
    target is marked paused (bad key), the pause is lifted for everyone.

    The call cap is counted in the database, in the same short transaction as that read (one
    round trip more, and only for a capped target, whose calls are few by definition; an uncapped
    target costs what it did). Minutes are those of the daemon's clock (``hh:mm:00`` to
    ``hh:mm:59``). When the minute's calls are used up, nothing is sent: the target is blocked
    until the next minute like after a 429, so no daemon claims its batches meanwhile, and
    :class:`CallCapReached` tells the caller to come back then. Counting before sending is
    conservative: a call that then fails (a timeout, a refused connection) was counted all the
    same, as the provider may have counted it too.

    A target with no key sends nothing: every call is refused here with :class:`ApiKeyMissing`
    (the runner pauses the target with that reason, which names the variable to set).
    """

    def __init__(
        self,
        target: TargetConfig,
        sessions: sessionmaker[Session],
        clock: Clock,
        *,
        key_env: str | None = None,
    ) -> None:
        self.target = target.name
        self._cap = target.max_calls_per_minute
        self._sessions = sessions
        self._clock = clock
        self._local = threading.local()
        self._no_key = (
            None if target.api_key and target.api_key.reveal() else no_key(target, key_env)
        )

    def before_request(self) -> None:
        if self._no_key is not None:
            raise ApiKeyMissing(self._no_key)
        now = self._clock.now()
        refusal: TargetBlocked | None = None
        with unit_of_work(self._sessions) as session:
            row = queries.target_state(session, self.target)
            self._local.paused = bool(row and row.paused)
            if row and row.blocked_until and row.blocked_until > now:
                wait = (row.blocked_until - now).total_seconds()
                refusal = TargetBlocked(
                    429,
                    f"target {self.target!r} asked us to wait {wait:.0f}s more",
                    retry_after=wait,
                )
            elif self._cap is not None:
                refusal = self._take_permit(session, now, self._cap)
        # raised once the transaction has committed: a block it wrote holds for everyone
        if refusal is not None:
            raise refusal

    def _take_permit(self, session: Session, now: dt.datetime, cap: int) -> CallCapReached | None:
        """One of this minute's calls, or the refusal to raise (the target then blocked until
        the next minute)."""
        minute = now.replace(second=0, microsecond=0)
        if ledger.take_call_permit(session, self.target, minute=minute, cap=cap) is not None:
            return None
        next_minute = minute + dt.timedelta(minutes=1)
        ledger.call_cap_reached(session, self.target, until=next_minute, cap=cap)
        return CallCapReached(
            429,
            f"target {self.target!r}: max_calls_per_minute = {cap} reached in this minute",
            retry_after=(next_minute - now).total_seconds(),
        )

    def after_success(self) -> None:
        if not getattr(self._local, "paused", False):
            return
        self._local.paused = False
        with unit_of_work(self._sessions) as session:
            ledger.clear_pause(session, self.target)


def no_key(target: TargetConfig, key_env: str | None) -> str:
    """Why a target with no key sends nothing, and what to do: its pause reason."""
    if key_env:
        return f"no key set (set {key_env})"
    return f"no key set (name its variable with api_key_env in [targets.{target.name}])"


class ApiClients:
    """One client (and one connection pool) per target, made on first use; every call they make
    is counted on ``metrics``."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        clock: Clock,
        *,
        transport: httpx.BaseTransport | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._clock = clock
        self._transport = transport
        self._metrics = metrics
        self._clients: dict[str, BatchApiClient] = {}
        self._http: list[httpx.Client] = []
        self._lock = threading.Lock()

    def __call__(self, target: str) -> BatchApiClient:
        with self._lock:
            client = self._clients.get(target)
            if client is None:
                client = self._make(self._settings.target(target))
                self._clients[target] = client
            return client

    def _make(self, target: TargetConfig) -> BatchApiClient:
        http = make_http_client(target, transport=self._transport)
        self._http.append(http)
        gate = TargetGate(
            target, self._sessions, self._clock, key_env=self._settings.key_env.get(target.name)
        )
        return BatchApiClient(
            http,
            target=target.name,
            before_request=gate.before_request,
            after_success=gate.after_success,
            metrics=self._metrics,
        )

    def close(self) -> None:
        with self._lock:
            for http in self._http:
                http.close()
            self._http.clear()
            self._clients.clear()


@dataclasses.dataclass(frozen=True)
class Deps:
    settings: Settings
    sessions: sessionmaker[Session]
    clock: Clock
    clients: ApiClients
    worker_id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)
    rng: random.Random = dataclasses.field(default_factory=random.Random)
    engine: sa.Engine | None = None
    # The metrics of this process, served on /metrics by the daemon: make_deps gives the API
    # clients and the ledger's committed events the same object.
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    # What planning reads ahead for the upload of the batches it writes (orchestrator/prefetch.py)
    prefetch: Prefetch = dataclasses.field(default_factory=Prefetch)

    def close(self) -> None:
        self.prefetch.close()
        self.clients.close()
        if self.engine is not None:
            self.engine.dispose()

    @property
    def poll_schedule(self) -> PollSchedule:
        d = self.settings.daemon
        return PollSchedule(
            d.poll_initial_seconds,
            d.poll_factor,
            d.poll_max_seconds,
            d.poll_jitter,
            first=d.poll_first_seconds,
            first_factor=d.poll_first_factor,
        )

    @property
    def policy(self) -> Policy:
        d = self.settings.daemon
        return Policy(
            retry=RetrySchedule(d.retry_base_seconds, d.retry_max_seconds),
            pause_seconds=d.auth_probe_seconds,
            patience_seconds=d.patience_seconds,
        )

    def tmp_dir(self) -> Path:
        return Path(self.settings.daemon.tmp_dir or tempfile.gettempdir())


def make_deps(
    settings: Settings,
    *,
    clock: Clock | None = None,
    transport: httpx.BaseTransport | None = None,
    seed: int | None = None,
) -> Deps:
    """Engine, sessions and API clients for ``settings`` (the CLI, the demo and tests use this),
    and the metrics they all count on."""
    engine = make_engine(settings.require_database_url(), pool_size=settings.daemon.workers + 3)
    metrics = Metrics()
    sessions = make_sessionmaker(engine)
    # each transition's event, once committed, counts on the metrics too (jobs finished)
    sessions.configure(info={ledger.ON_EVENT: metrics.observe_event})
    the_clock = clock or SystemClock()
    return Deps(
        settings=settings,
        sessions=sessions,
        clock=the_clock,
        clients=ApiClients(settings, sessions, the_clock, transport=transport, metrics=metrics),
        rng=random.Random(seed),
        engine=engine,
        metrics=metrics,
    )
