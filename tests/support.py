"""Test support: settings for tests, an in-process daemon on a manual clock, SQL helpers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg

from orchestrator.clock import ManualClock, SystemClock
from orchestrator.config import FAST_DAEMON, DaemonSettings, Secret, Settings, make_target
from orchestrator.daemon import Daemon
from orchestrator.deps import Deps, make_deps
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer, mock_transport

API_KEY = "sk-test-4f1d2c3b5a6e7d8c9b0a"

# The in-process daemon's pace, on a manual clock shared with the emulator: FAST_DAEMON (the one
# definition of a fast daemon) with the schedules in virtual seconds the tests step through.
FAST = dataclasses.replace(
    FAST_DAEMON,
    lease_seconds=60,
    poll_initial_seconds=5,
    poll_max_seconds=30,
    retry_base_seconds=1,
    retry_max_seconds=20,
    auth_probe_seconds=30,
    shutdown_grace_seconds=5,
)


def make_settings(
    db_url: str,
    base_url: str,
    *,
    preset: str = "fastrouter",
    target: str = "fastrouter",
    api_key: str = API_KEY,
    daemon: DaemonSettings = FAST,
    **target_overrides: Any,
) -> Settings:
    return Settings(
        database_url=db_url,
        targets={
            target: make_target(
                target, preset, base_url=base_url, api_key=Secret(api_key), **target_overrides
            )
        },
        daemon=daemon,
    )


def settings_for(db_url: str, **overrides: Any) -> Callable[[str], Settings]:
    """What ``harness(settings=...)`` takes: the test settings with ``overrides`` (``preset``,
    ``target``, ``daemon`` or any target field), for the emulator's base URL."""
    return lambda base_url: make_settings(db_url, base_url, **overrides)


def chat_body(n: int | str, *, model: str = "openai/gpt-4.1-nano") -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"Say hello to #{n}"}],
        "max_tokens": 50,
    }


def enqueue(
    db_url: str,
    requests: Iterable[dict[str, Any]],
    *,
    name: str = "test",
    target: str = "fastrouter",
    endpoint: str = "/v1/chat/completions",
    max_attempts: int = 3,
    completion_window: str = "24h",
) -> int:
    """Insert a job and its requests in one transaction, with plain SQL as a user would."""
    with psycopg.connect(db_url) as conn:
        job_id = conn.execute(
            "INSERT INTO orchestrator.jobs (name, target, endpoint, max_attempts, "
            "completion_window) VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (name, target, endpoint, max_attempts, completion_window),
        ).fetchone()[0]  # type: ignore[index]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO orchestrator.requests (job_id, custom_id, provider, method, url, body)"
                " VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
                [
                    (
                        job_id,
                        r["custom_id"],
                        r.get("provider", "openai"),
                        r.get("method", "POST"),
                        r.get("url"),
                        r["body"] if isinstance(r["body"], str) else json.dumps(r["body"]),
                    )
                    for r in requests
                ],
            )
    return int(job_id)


def enqueue_generated(db_url: str, n: int, *, target: str = "fastrouter") -> int:
    """A job of ``n`` requests generated inside PostgreSQL (a user's INSERT … SELECT)."""
    with psycopg.connect(db_url) as conn:
        job_id = conn.execute(
            "INSERT INTO orchestrator.jobs (name, target) VALUES ('big', %s) RETURNING id",
            (target,),
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            """
            INSERT INTO orchestrator.requests (job_id, custom_id, provider, body)
            SELECT %s, 'r' || lpad(n::text, 6, '0'), 'openai',
                   jsonb_build_object('model', 'openai/gpt-4.1-nano', 'messages',
                       jsonb_build_array(jsonb_build_object('role', 'user', 'content', 'hi ' || n)))
            FROM generate_series(1, %s) AS n
            """,
            (job_id, n),
        )
    return int(job_id)


def simple_requests(n: int, prefix: str = "req-") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}{i:05d}", "body": chat_body(i)} for i in range(n)]


def query(db_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql, params).fetchall()


def scalar(db_url: str, sql: str, *params: Any) -> Any:
    rows = query(db_url, sql, *params)
    return rows[0][0] if rows else None


@dataclasses.dataclass
class Harness:
    """A daemon in this process, sharing one manual clock with the emulator."""

    clock: ManualClock
    emulator: Emulator
    deps: Deps
    daemon: Daemon
    db_url: str

    def step(self, seconds: float = 5.0) -> None:
        self.daemon.tick(wait=True)
        crashed = crashed_steps(self.deps)
        # A step that crashed is a bug (the runner logs step_crashed and retries it): no test
        # here expects one, so say so at once rather than after hundreds of retries.
        assert not crashed, f"a step crashed (a bug; see its step_crashed log line): {crashed}"
        self.clock.advance(seconds)

    def run_until(
        self, done: Callable[[], bool], *, seconds: float = 5.0, max_steps: int = 500
    ) -> int:
        for n in range(max_steps):
            if done():
                return n
            self.step(seconds)
        raise AssertionError(f"not done after {max_steps} steps of {seconds}s")

    def job_status(self, job_id: int) -> str:
        return str(
            scalar(self.db_url, "SELECT status FROM orchestrator.jobs WHERE id = %s", job_id)
        )

    def run_job(self, job_id: int, *, seconds: float = 5.0, max_steps: int = 500) -> str:
        self.run_until(
            lambda: self.job_status(job_id) in ("completed", "failed", "cancelled"),
            seconds=seconds,
            max_steps=max_steps,
        )
        return self.job_status(job_id)


def crashed_steps(deps: Deps) -> dict[str, float]:
    """How many steps of each kind crashed in this daemon (an exception the runner did not
    expect: ``step_crashed``), from its own metrics."""
    crashed: dict[str, float] = {}
    for metric in deps.metrics.step_duration.collect():
        for sample in metric.samples:
            if (
                sample.name.endswith("_count")
                and sample.labels.get("outcome") == "crashed"
                and sample.value
            ):
                crashed[sample.labels["step"]] = sample.value
    return crashed


@contextmanager
def harness(
    db_url: str,
    *,
    emulator_config: EmulatorConfig | None = None,
    http: bool = True,
    settings: Callable[[str], Settings] | None = None,
    seed: int = 1,
    behind: float = 0.0,
) -> Iterator[Harness]:
    """Emulator (over real HTTP by default, else in-process) + daemon, one manual clock.

    The clock starts at the real time, so that what a CLI command writes (with the system
    clock) lines up with what the daemon under test sees; or ``behind`` seconds earlier, so that
    a CLI command run after the test advanced the clock by less than that sees it as past."""
    clock = ManualClock(SystemClock().now() - dt.timedelta(seconds=behind))
    config = emulator_config or EmulatorConfig(api_key=API_KEY)
    with Emulator(config, clock) as emulator, ExitStack() as stack:
        if http:
            server = stack.enter_context(EmulatorServer(emulator))
            base_url, transport = server.base_url, None
        else:
            base_url = "http://emulator" + config.path_prefix
            transport = mock_transport(emulator)
        resolved = settings(base_url) if settings else make_settings(db_url, base_url)
        deps = make_deps(resolved, clock=clock, transport=transport, seed=seed)
        daemon = Daemon(deps)
        try:
            yield Harness(clock, emulator, deps, daemon, db_url)
        finally:
            daemon.close()
            deps.close()


@contextmanager
def openai_harness(
    db_url: str,
    *,
    behind: float = 0.0,
    emulator_config: EmulatorConfig | None = None,
    **overrides: Any,
) -> Iterator[Harness]:
    """:func:`harness` with the emulator in OpenAI's mode and the built-in ``openai`` target, which
    can list and cancel batches (``overrides``: ``daemon`` or any target field)."""
    config = emulator_config or EmulatorConfig(mode="openai", api_key=API_KEY)
    settings = settings_for(db_url, preset="openai", target="openai", **overrides)
    with harness(db_url, emulator_config=config, settings=settings, behind=behind) as h:
        yield h


def count(db_url: str, table: str, where: str = "true", *params: Any) -> int:
    return int(scalar(db_url, f"SELECT count(*) FROM orchestrator.{table} WHERE {where}", *params))


def assert_events_name_their_worker(db_url: str, worker_id: object, *kinds: str) -> None:
    """Every event of these kinds names the daemon that did the work (``detail->>'worker'``:
    which daemon uploaded, created, saw a status; what an operator of several daemons reads)."""
    rows = query(
        db_url,
        "SELECT kind, detail->>'worker' FROM orchestrator.events WHERE kind = ANY(%s)",
        list(kinds),
    )
    assert {kind for kind, _ in rows} == set(kinds), rows
    assert {worker for _, worker in rows} == {str(worker_id)}, rows


def events(db_url: str, job_id: int) -> list[str]:
    return [
        r[0]
        for r in query(
            db_url, "SELECT kind FROM orchestrator.events WHERE job_id = %s ORDER BY id", job_id
        )
    ]


class DaemonProcess:
    """``orchestrator run`` in a subprocess, configured by a TOML file and the environment."""

    def __init__(
        self,
        db_url: str,
        base_url: str,
        workdir: Path,
        *,
        preset: str = "fastrouter",
        api_key: str = API_KEY,
        name: str = "daemon",
        target: dict[str, Any] | None = None,
        **daemon: Any,
    ) -> None:
        # FAST_DAEMON as it is (real time against an emulator at x20), with short leases so
        # that a killed daemon's batches are taken over within seconds
        fast = {k: v for k, v in dataclasses.asdict(FAST_DAEMON).items() if v is not None}
        settings = {**fast, "lease_seconds": 3.0, "http_addr": "", **daemon}
        target_settings = {
            "preset": preset,
            "base_url": base_url,
            "api_key_env": "TEST_KEY",
            "timeout_seconds": 1.0,
            "connect_timeout_seconds": 1.0,
            # the emulator answers or fails at once: a lost create cannot land seconds later
            "create_settle_seconds": 1.0,
            **(target or {}),
        }
        self.config = workdir / f"{name}.toml"
        self.config.write_text(
            "[daemon]\n" + _toml(settings) + f"\n[targets.{preset}]\n" + _toml(target_settings)
        )
        self.log = workdir / f"{name}.log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "ORCHESTRATOR_DATABASE_URL": db_url,
            "ORCHESTRATOR_CONFIG": str(self.config),
            "ORCHESTRATOR_LOG_FORMAT": "json",
            "ORCHESTRATOR_HTTP_ADDR": str(settings["http_addr"]) or "off",
            "TEST_KEY": api_key,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> DaemonProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "run"],
                env=child_env(self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def http_url(self, timeout: float = 30.0) -> str:
        """Where the daemon serves /healthz and /metrics, from its own ``http_started`` line.
        Start it with ``http_addr="127.0.0.1:0"``: the port is the one it bound, so no other
        test (nor another checkout's tests on this machine) can take it first."""
        found: list[str] = []

        def started() -> bool:
            for line in self.logs().splitlines():
                if '"http_started"' in line:
                    found.append(json.loads(line)["url"])
                    return True
            return not self.alive()

        wait_for(started, timeout=timeout, interval=0.02)
        assert found, f"the daemon never served http:\n{self.logs()[-3000:]}"
        return found[0]


def child_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a process a test starts, with the mutant under test when a mutation tool runs
    the test (mutmut's ``MUTANT_UNDER_TEST``, ``make mutation-db``): the daemon or command the test
    starts then runs the mutant too, as the test's own process does."""
    mutant = os.environ.get("MUTANT_UNDER_TEST")
    return {**env, "MUTANT_UNDER_TEST": mutant} if mutant else env


def _toml(values: dict[str, Any]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, dict):
            pairs = ", ".join(f"{json.dumps(k)} = {v}" for k, v in value.items())
            lines.append(f"{key} = {{ {pairs} }}")
        elif isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    return "\n".join(lines) + "\n"


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1) -> bool:
    """Wait (in real time) for a condition on our own daemons, not on a provider."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def expire_leases(db_url: str) -> None:
    """Every lease runs out now, on the database's clock (which is the one leases are judged by),
    as if the daemons holding them had stalled past their lease."""
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE orchestrator.batches SET lease_expires_at = now() - interval '1 second' "
            "WHERE lease_expires_at IS NOT NULL"
        )


def all_terminal(db_url: str) -> bool:
    return count(db_url, "jobs", "status NOT IN ('completed', 'failed', 'cancelled')") == 0


def _line_succeeded(line: Any) -> bool:
    response = line.get("response") if isinstance(line, dict) else None
    return (
        isinstance(response, dict) and response.get("status_code") == 200 and not line.get("error")
    )


def assert_results_match_provider(
    db_url: str, emulator: Emulator, *, job_id: int | None = None, dropped_ok: bool = False
) -> int:
    """Every result says what the provider produced for its request, not merely that a row exists.

    For each result, the lines its batch's remote output and error files hold for its
    ``custom_id`` (read from the emulator's storage, not through the daemon): a success line means a
    success result with that very body; failure lines only, a failure with one of their statuses;
    no line, a failure. And no success is ever lost: a request with a success line in any remote
    batch of ours has a success result. ``job_id``: that job's batches and results only (for a
    test whose earlier jobs ran against another emulator). ``dropped_ok``: the README's stated
    bound for a download that drops whole lines cleanly (a proxy), which the daemon cannot tell
    from the provider's own drops: such a request with no attempt left ends ``missing_result``
    although the provider answered it. Returns the number of successes checked."""
    of_job = "true" if job_id is None else f"job_id = {int(job_id)}"
    remote_of = dict(
        query(
            db_url,
            "SELECT id, remote_batch_id FROM orchestrator.batches "
            f"WHERE remote_batch_id IS NOT NULL AND {of_job}",
        )
    )
    produced: dict[str, dict[str, list[Any]]] = {}
    ever_succeeded: set[tuple[int, str]] = set()
    for batch_id, remote in remote_of.items():
        job_id = scalar(db_url, "SELECT job_id FROM orchestrator.batches WHERE id = %s", batch_id)
        by_id: dict[str, list[Any]] = {}
        for line in emulator.produced(remote):
            by_id.setdefault(line["custom_id"], []).append(line)
            if _line_succeeded(line):
                ever_succeeded.add((job_id, line["custom_id"]))
        produced[remote] = by_id
    rows = query(
        db_url,
        "SELECT job_id, custom_id, batch_id, succeeded, status_code, response, "
        f"error->>'code' FROM orchestrator.results WHERE {of_job}",
    )
    succeeded = 0
    dropped = set()
    for job_id, custom_id, batch_id, ok, status, response, code in rows:
        remote = remote_of.get(batch_id)
        if remote is None:
            assert not ok, (custom_id, "a success from a batch never sent")
            continue
        lines = produced[remote].get(custom_id, [])
        wins = [line for line in lines if _line_succeeded(line)]
        if wins and dropped_ok and not ok and code == "missing_result":
            dropped.add((job_id, custom_id))
        elif wins:
            assert ok, (job_id, custom_id, "the provider's success was recorded as a failure")
            assert response == wins[0]["response"]["body"], (job_id, custom_id)
            assert status == 200
            succeeded += 1
        else:
            assert not ok, (job_id, custom_id, "a success the provider never produced")
            if lines and status is not None:
                statuses = {(line.get("response") or {}).get("status_code") for line in lines}
                assert status in statuses, (job_id, custom_id, status, statuses)
    have = {(r[0], r[1]) for r in rows if r[3]}
    lost = ever_succeeded - have - dropped
    assert not lost, f"{len(lost)} successes the provider produced are not in results: {lost}"
    return succeeded


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def downgrade_to(db_url: str, revision: str) -> None:
    """Take a migrated database back to ``revision`` (alembic's own downgrade)."""
    from orchestrator.db.migrate import downgrade

    downgrade(db_url, revision)


def stamp_revision(db_url: str, revision: str) -> None:
    """Record ``revision`` as the schema's, as a newer orchestrator's migration would have."""
    with psycopg.connect(db_url) as conn:
        conn.execute("DELETE FROM orchestrator.alembic_version")
        conn.execute("INSERT INTO orchestrator.alembic_version VALUES (%s)", (revision,))


@contextmanager
def fresh_databases(pg_server: str, template: str) -> Iterator[Callable[[], str]]:
    """A maker of fresh migrated databases (copies of ``template``), dropped on exit: for a test
    that needs more than the one ``db_url`` gives."""
    import uuid

    from orchestrator.db.session import with_database

    made: list[str] = []

    def make() -> str:
        name = f"orch_t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        made.append(name)
        return with_database(pg_server, name)

    try:
        yield make
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            for name in made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def recorded_session(db_url: str) -> Iterator[tuple[Any, list[tuple[str, Any]]]]:
    """A session on ``db_url`` in one transaction, and the statements it runs (text and
    parameters, for EXPLAIN), kept as they run."""
    import sqlalchemy as sa

    from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work

    engine = make_engine(db_url)
    statements: list[tuple[str, Any]] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def keep(conn: object, cursor: object, statement: str, params: Any, *_: object) -> None:
        statements.append((statement, params))

    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            yield session, statements
    finally:
        engine.dispose()


def plan_of(db_url: str, statement: str, params: Any) -> str:
    """EXPLAIN of a statement kept by :func:`recorded_session`."""
    with psycopg.connect(db_url) as conn:
        return "\n".join(r[0] for r in conn.execute(f"EXPLAIN {statement}", params).fetchall())


def failures(db_url: str, where: str = "true", *params: Any) -> set[tuple[Any, ...]]:
    """(custom_id, status_code, error code, error message) of every failed result that ``where``
    selects: what a test holds failures against, not only how many there are."""
    return set(
        query(
            db_url,
            "SELECT custom_id, status_code, error->>'code', error->>'message' "
            f"FROM orchestrator.results WHERE NOT succeeded AND ({where})",
            *params,
        )
    )


def listed_failure(custom_id: str) -> tuple[str, int, None, str]:
    """The failure the emulator answers for a request in its ``fail_custom_ids``, as
    :func:`failures` gives it."""
    message = f"Emulated failure: custom_id {custom_id!r} is in fail_custom_ids."
    return (custom_id, 400, None, message)
