"""The schema revision this code runs on, and how a command learns, before it does anything, that
the database is down, was never migrated, or is at another revision.

alembic is not imported here (a quarter of a second at every start of the daemon): the revisions
are constants, which ``tests/unit/test_schema.py`` keeps equal to ``migrations/versions`` (a new
migration without a new constant here fails that test). Nor is SQLAlchemy: a command that cannot
use the database says so before paying for it.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import psycopg

from orchestrator import __version__
from orchestrator.errors import ConfigError, DatabaseUnavailable, SchemaNotReady

# Every revision of migrations/versions, oldest first; the last is the one this code needs.
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010")
HEAD = "0010"
# What read_revision returns when this role may not read the version table (it cannot tell).
UNREADABLE = "unreadable"
PACKAGE = "batch-orchestrator"


def libpq_dsn(url: str) -> str:
    """``url`` as libpq takes it (``postgres://`` and ``postgresql+psycopg://`` alike)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0].lower() not in ("postgresql", "postgres"):
        raise ConfigError(
            "ORCHESTRATOR_DATABASE_URL must be a PostgreSQL URL; write it as "
            "postgresql://user:password@host:5432/database"
        )
    return "postgresql://" + rest


def location(url: str) -> str:
    """``host:port/database`` of a URL, for messages: never its user or password."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 5432
    except ValueError:
        return "(an unreadable URL)"
    query = urllib.parse.parse_qs(parts.query)
    host = parts.hostname or query.get("host", ["localhost"])[0]
    database = parts.path.lstrip("/") or query.get("dbname", [""])[0]
    return f"{host}:{port}/{database}" if database else f"{host}:{port}"


def unavailable(url: str | None, exc: BaseException) -> DatabaseUnavailable:
    """The one line for a database that refused or dropped us: where, why, what to do."""
    at = f" at {location(url)}" if url else ""
    return DatabaseUnavailable(
        f"cannot use the database{at}: {reason(exc)}; check that PostgreSQL is running there "
        "and that ORCHESTRATOR_DATABASE_URL is right"
    )


def reason(exc: BaseException) -> str:
    """What libpq said, on one line: ``Connection refused``, ``database "x" does not exist``."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    said = first.rpartition(" failed: ")[2] if " failed: " in first else first
    said = re.sub(r"^(FATAL|ERROR):\s*", "", said.strip())
    return re.sub(r"\s+", " ", said) or type(exc).__name__


def connect(url: str, *, timeout: int = 10) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(
            libpq_dsn(url),
            connect_timeout=timeout,
            application_name="batch-orchestrator",
            autocommit=True,
        )
    except psycopg.OperationalError as exc:
        raise unavailable(url, exc) from None


def read_revision(conn: psycopg.Connection[Any]) -> str | None:
    """The schema's revision; None if it was never migrated, UNREADABLE if this role may not
    read the version table."""
    found = conn.execute(
        "SELECT t IS NOT NULL, coalesce(has_table_privilege(t, 'SELECT'), false) "
        "FROM (SELECT to_regclass('orchestrator.alembic_version') AS t) AS v"
    ).fetchone()
    if found is None or not found[0]:
        return None
    if not found[1]:
        return UNREADABLE
    rows = conn.execute("SELECT version_num FROM orchestrator.alembic_version").fetchall()
    return ",".join(sorted(str(r[0]) for r in rows)) or None


def open_jobs_by_target(conn: psycopg.Connection[Any]) -> dict[str, int] | None:
    """How many jobs are pending or running, by target (``orchestrator check``: a target in use
    must have a key); None if this role may not read them."""
    try:
        rows = conn.execute(
            "SELECT target, count(*) FROM orchestrator.jobs "
            "WHERE status IN ('pending', 'running') GROUP BY target"
        ).fetchall()
    except psycopg.Error:
        return None
    return {str(target): int(n) for target, n in rows}


def problem(revision: str | None, where: str = "") -> SchemaNotReady | None:
    """What is wrong with a schema at ``revision`` for this code, as the error to raise."""
    at = f"the database at {where}" if where else "the database"
    if revision in (HEAD, UNREADABLE):
        return None
    if revision is None:
        return SchemaNotReady(
            f"{at} has no orchestrator schema (it was never migrated); run orchestrator migrate"
        )
    if revision in REVISIONS:
        return SchemaNotReady(
            f"{at} is at schema revision {revision}, older than the {HEAD} this orchestrator "
            f"needs; run orchestrator migrate"
        )
    return SchemaNotReady(
        f"{at} is at schema revision {revision}, which this orchestrator ({__version__}, schema "
        f"{HEAD}) does not know: a newer version migrated it; upgrade the orchestrator package "
        f"(pip install --upgrade {PACKAGE})"
    )


def require_current(conn: psycopg.Connection[Any], where: str = "") -> None:
    """Raise SchemaNotReady unless the schema is at HEAD."""
    trouble = problem(read_revision(conn), where)
    if trouble is not None:
        raise trouble


def preflight(url: str) -> None:
    """Before a command uses the database: it answers, and its schema is this code's."""
    with connect(url) as conn:
        require_current(conn, location(url))
