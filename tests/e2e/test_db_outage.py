"""The database password never reaches the logs, not even while the database is away.

A PostgreSQL server of the test's own (``tests/private_postgres.py``): password authentication over
TCP, so the password is really needed, and it is in the URL the daemon gets. The real daemon
(``python -m orchestrator run``, JSON logs to a file, ``/healthz`` served) works a job against the
emulator; the server is shut down under it until every path that needs it has failed and logged
it (ticks, heartbeats, the LISTEN connection and its reconnects, the metrics refresh, a poll that
was under way when it went, ``/healthz``), most with a traceback; then it is started again and
the job completes. Not one
log line holds the password, as it is or percent-encoded as in the URL, or any 8 characters of its
random part; nor any piece of the API key. (Before the fix: tracebacks rendered their frames'
local variables, psycopg's connection info with the password among them, 22 lines in a 20 s
outage.)

Real processes cannot share a manual clock, so the daemon runs in real time; the emulator's clock
is a manual one that stands still (the batch stays ``validating``) until the test moves it. Every
wait is bounded and on our own daemon or database, never on the provider.
"""

from __future__ import annotations

import dataclasses
import json
import random
import string
import threading
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psycopg
import pytest

from orchestrator.clock import ManualClock, SystemClock
from orchestrator.db.migrate import upgrade
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer
from orchestrator.emulator.faults import FaultContext, Proceed
from orchestrator.emulator.messages import EmuResponse
from tests.private_postgres import PrivatePostgres
from tests.support import (
    API_KEY,
    DaemonProcess,
    assert_results_match_provider,
    count,
    enqueue,
    simple_requests,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEY = API_KEY.removeprefix("sk-test-")


@dataclasses.dataclass(frozen=True)
class Held:
    """A fault that holds the call it fires on until released, then answers it as usual: the
    step that made the call is under way, its database work still ahead of it."""

    kind: ClassVar[str] = "held"
    arrived: threading.Event = dataclasses.field(default_factory=threading.Event)
    release: threading.Event = dataclasses.field(default_factory=threading.Event)

    def apply(self, ctx: FaultContext, proceed: Proceed) -> EmuResponse:
        self.arrived.set()
        self.release.wait(60)
        return proceed()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind}


def windows(secret: str) -> list[str]:
    return [secret[i : i + 8] for i in range(len(secret) - 7)]


def failures(
    lines: list[dict[str, object]], event: str, **fields: object
) -> list[dict[str, object]]:
    return [
        line
        for line in lines
        if line["event"] == event and all(line.get(k) == v for k, v in fields.items())
    ]


def outage_logged(logs: str) -> bool:
    """Every path that needs the database has failed, and said so, at least once (the metrics
    refresh runs every 15 s: this waits for its first run after the daemon started)."""
    whole = logs[: logs.rfind("\n") + 1]  # not a last line the daemon is still writing
    lines = [json.loads(line) for line in whole.splitlines() if line.strip()]
    return (
        len(failures(lines, "timer_failed", timer="tick")) >= 10
        and len(failures(lines, "timer_failed", timer="heartbeat")) >= 2
        and len(failures(lines, "timer_failed", timer="refresh_metrics")) >= 1
        and len(failures(lines, "listen_failed")) >= 2  # cut, then a reconnect refused
        and len(failures(lines, "step_crashed", step="poll")) >= 1
    )


def test_a_database_outage_under_a_running_daemon_logs_no_password(tmp_path: Path) -> None:
    letters = "".join(random.SystemRandom().choice(string.ascii_letters) for _ in range(24))
    password = f"db:{letters}/@%"  # characters a URL must percent-encode
    encoded = urllib.parse.quote(password, safe="")
    with PrivatePostgres(password=password) as pg:
        assert encoded in pg.url
        # The password is really needed: a wrong one is refused
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(pg.url.replace(encoded, "wrong"), connect_timeout=5).close()
        upgrade(pg.url)
        job_id = enqueue(pg.url, simple_requests(10))
        clock = ManualClock(SystemClock().now())
        with (
            Emulator(EmulatorConfig(api_key=API_KEY), clock) as emulator,
            EmulatorServer(emulator) as server,
        ):
            daemon = DaemonProcess(
                pg.url,
                server.base_url,
                tmp_path,
                http_addr="127.0.0.1:0",
                target={"timeout_seconds": 30.0},  # the held poll waits for its answer
            )
            daemon.start()
            try:
                url = daemon.http_url()
                # Given a daemon at work: its batch is created and being polled, one poll under
                # way right now
                submitted = "state = 'submitted' AND poll_count > 0"
                assert wait_for(lambda: count(pg.url, "batches", submitted) == 1, timeout=30), (
                    daemon.logs()[-3000:]
                )
                held = Held()
                emulator.faults.add("get_batch", held, times=1)
                assert held.arrived.wait(30), daemon.logs()[-3000:]
                # When the database goes away under it
                pg.stop()
                held.release.set()
                # Then every path that needs it fails and logs it, and /healthz says so
                assert wait_for(lambda: outage_logged(daemon.logs()), timeout=30), daemon.logs()[
                    -3000:
                ]
                health = httpx.get(f"{url}/healthz", timeout=5)
                assert health.status_code == 503 and "database" in health.json()["error"]
                # When it comes back, the job completes
                pg.start()
                clock.advance(3600)
                assert wait_for(
                    lambda: count(pg.url, "jobs", "id = %s AND status = 'completed'", job_id),
                    timeout=30,
                ), daemon.logs()[-3000:]
            finally:
                daemon.stop()
            # every answer the provider's, for its own request, outage and all
            assert assert_results_match_provider(pg.url, emulator) == 10
        assert count(pg.url, "results", "succeeded") == 10

    logs = daemon.logs()
    lines = [json.loads(line) for line in logs.splitlines()]  # every line went through logging
    # The outage was logged, tracebacks and all: had anything carried the password, it would be
    # here
    crashes = [line for line in lines if "exception" in line]
    assert len(crashes) >= 10 and "OperationalError" in logs
    # rendered without their frames' local variables (psycopg's connection info among them)
    frames = [frame for line in crashes for exc in line["exception"] for frame in exc["frames"]]
    assert frames and not any("locals" in frame for frame in frames)
    # and not one line holds the password, whole, percent-encoded or in part, nor the API key
    # (nor the health answer given meanwhile)
    for number, line in enumerate([*logs.splitlines(), health.text], 1):
        assert password not in line and encoded not in line, f"line {number}: {line}"
        assert [w for w in windows(letters) if w in line] == [], f"line {number}: {line}"
        assert [w for w in windows(KEY) if w in line] == [], f"line {number}: {line}"
