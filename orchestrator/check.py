"""``orchestrator check``: could the daemon run here, as configured? One line per check.

::

    ok    database          127.0.0.1:5432/batches answers (PostgreSQL 15.18)
    ok    schema            at revision 0006, the one this orchestrator needs
    ok    target fastrouter key accepted by https://api.fastrouter.ai/v1 (GET /batches/{id}: ...)
    skip  target openai     not configured (set OPENAI_API_KEY to use it)
    FAIL  metrics port      127.0.0.1:9464 is taken (Address already in use); stop what holds ...

``ok`` passed, ``FAIL`` failed (the line says what to do), ``skip`` was not checked (a built-in
target nobody configured and no open job uses, the schema of a database that does not answer).
A target with no key fails when it is in use: the file declares it, or jobs in the database,
pending or running, are for it. The key is checked with one cheap authenticated call
(``BatchApiClient.check_key``); neither a key nor the database password is ever printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
from collections.abc import Generator, Iterator
from typing import TextIO

import psycopg

from orchestrator.config import Settings
from orchestrator.db import schema
from orchestrator.errors import OrchestratorError

OK, FAIL, SKIP = "ok", "FAIL", "skip"
# The check's own calls are not the daemon's: shorter timeouts than a target's defaults.
TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: str  # OK, FAIL or SKIP
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<17} {self.detail}"


def run_checks(settings: Settings, out: TextIO) -> bool:
    """Print one line per check as it completes; True if none failed."""
    failed = False
    # A 404 for the probe is the expected answer: not a warning on stderr.
    client_log = logging.getLogger("orchestrator.api.client")
    level = client_log.level
    client_log.setLevel(logging.ERROR)
    try:
        for outcome in checks(settings):
            print(outcome.line(), file=out, flush=True)
            failed = failed or outcome.status == FAIL
    finally:
        client_log.setLevel(level)
    return not failed


def checks(settings: Settings) -> Iterator[Outcome]:
    in_use = yield from _database(settings.database_url)
    for name in sorted(settings.targets):
        yield _target(settings, name, (in_use or {}).get(name, 0))
    yield _metrics_port(settings.daemon.http_addr)


def _database(url: str | None) -> Generator[Outcome, None, dict[str, int] | None]:
    """The database and schema lines; returns the open jobs by target (None: not known)."""
    if not url:
        yield Outcome(
            FAIL,
            "database",
            "no database configured; set ORCHESTRATOR_DATABASE_URL "
            "(for example postgresql://user@127.0.0.1:5432/batches)",
        )
        yield Outcome(SKIP, "schema", "not checked: no database")
        return None
    try:
        conn = schema.connect(url, timeout=int(CONNECT_TIMEOUT_SECONDS))
    except OrchestratorError as exc:
        yield Outcome(FAIL, "database", str(exc))
        yield Outcome(SKIP, "schema", "not checked: the database does not answer")
        return None
    with conn:
        version = conn.info.server_version
        yield Outcome(
            OK,
            "database",
            f"{schema.location(url)} answers (PostgreSQL {version // 10000}.{version % 10000})",
        )
        try:
            revision = schema.read_revision(conn)
        except psycopg.Error as exc:
            yield Outcome(FAIL, "schema", f"cannot be read: {schema.reason(exc)}")
            return None
        trouble = schema.problem(revision)
        in_use = schema.open_jobs_by_target(conn) if trouble is None else None
    if trouble is not None:
        yield Outcome(FAIL, "schema", str(trouble))
    elif revision == schema.UNREADABLE:
        yield Outcome(SKIP, "schema", "this database user may not read its revision")
    else:
        yield Outcome(OK, "schema", f"at revision {revision}, the one this orchestrator needs")
    return in_use


def _target(settings: Settings, name: str, open_jobs: int) -> Outcome:
    """The target's key: accepted, refused, or missing. A missing key fails a target in use (the
    file declares it, or ``open_jobs`` of the database's jobs, pending or running, are for it);
    a built-in target nobody configured and no job uses is skipped."""
    # imported here: httpx and the client are not needed by the checks above
    from orchestrator.api.client import BatchApiClient, make_http_client
    from orchestrator.api.errors import (
        ApiAuthError,
        ApiError,
        ApiPaymentRequired,
        ApiRateLimited,
        ApiTransportError,
    )

    target = settings.targets[name]
    label = f"target {name}"
    var = settings.key_env.get(name)
    if target.api_key is None or not target.api_key.reveal():
        fix = f"set {var}" if var else f"name its variable with api_key_env in [targets.{name}]"
        if name in settings.declared_targets:
            return Outcome(FAIL, label, f"configured but has no key; {fix}")
        if open_jobs:
            jobs = "1 open job uses" if open_jobs == 1 else f"{open_jobs} open jobs use"
            return Outcome(FAIL, label, f"{jobs} it but it has no key; {fix}")
        return Outcome(SKIP, label, f"not configured (set {var} to use it)")
    where = target.base_url
    http = make_http_client(
        dataclasses.replace(
            target,
            timeout_seconds=min(target.timeout_seconds, TIMEOUT_SECONDS),
            connect_timeout_seconds=min(target.connect_timeout_seconds, CONNECT_TIMEOUT_SECONDS),
        )
    )
    with contextlib.closing(http):
        try:
            how = BatchApiClient(http, target=name).check_key(can_list=target.can_list)
        except ApiAuthError as exc:
            return Outcome(
                FAIL,
                label,
                f"{where} refused the key in {var or 'its variable'} (HTTP {exc.status_code}); "
                "set a valid key",
            )
        except ApiPaymentRequired:
            return Outcome(
                FAIL, label, f"{where} accepted the key but the account cannot pay (HTTP 402); "
                "add credits",
            )  # fmt: skip
        except ApiRateLimited:
            return Outcome(OK, label, f"key accepted by {where} (rate-limited right now: 429)")
        except ApiTransportError as exc:
            return Outcome(
                FAIL, label, f"{where} does not answer ({exc}); check its base_url and the network"
            )
        except ApiError as exc:
            return Outcome(FAIL, label, f"{where} answered {exc}; check its base_url")
    return Outcome(OK, label, f"key accepted by {where} ({how})")


def _metrics_port(addr: str | None) -> Outcome:
    """Whether the daemon could bind /healthz and /metrics where it is told to (as it does:
    IPv4, SO_REUSEADDR)."""
    if not addr:
        return Outcome(OK, "metrics port", "off (ORCHESTRATOR_HTTP_ADDR)")
    host, _, port = addr.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host or "127.0.0.1", int(port)))
    except OSError as exc:
        return Outcome(
            FAIL,
            "metrics port",
            f"{addr} is not free ({exc.strerror or exc}); stop what holds it (a daemon already "
            "running here?) or set ORCHESTRATOR_HTTP_ADDR to another host:port, or to off",
        )
    finally:
        sock.close()
    return Outcome(OK, "metrics port", f"{addr} is free")
