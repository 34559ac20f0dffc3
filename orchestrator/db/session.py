"""Engines and units of work. Transactions are framed here and by the callers, never in ``ledger``
or ``queries``."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import Session as Session
from sqlalchemy.orm import sessionmaker

from orchestrator.errors import ConfigError

# Errors that say "not now" about the database, not "never" about the work: the server went away
# or refused a connection, or the transaction lost a deadlock or a serialization conflict.
TRANSIENT_DB_ERRORS: tuple[type[Exception], ...] = (sa.exc.OperationalError, sa.exc.InterfaceError)


def sqlalchemy_url(url: str | sa.URL) -> sa.URL:
    """Accept ``postgresql://``, ``postgres://`` (Heroku's and many a PaaS's spelling) and
    ``postgresql+psycopg://`` alike; every user of a URL (engines, LISTEN, alembic) comes here."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError(
            "ORCHESTRATOR_DATABASE_URL is not a database URL; write it as "
            "postgresql://user:password@host:5432/database"
        ) from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigError(
            f"only PostgreSQL is supported, not {parsed.get_backend_name()!r}; write the URL as "
            "postgresql://user:password@host:5432/database"
        )
    return parsed.set(drivername="postgresql+psycopg")


def libpq_url(url: str) -> str:
    """The same URL in the form psycopg and psql understand (no ``+psycopg``)."""
    return sqlalchemy_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def make_engine(url: str, *, pool_size: int = 5, **kwargs: Any) -> sa.Engine:
    return sa.create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"application_name": "batch-orchestrator"},
        **kwargs,
    )


def make_probe_engine(url: str | sa.URL, *, timeout: float) -> sa.Engine:
    """An engine for health checks and gauges: a new connection per check (none is left in a
    pool, holding a place, when the database hangs), which fails instead of waiting when it
    cannot be made within ``timeout`` seconds or a statement runs longer; a connection whose
    peer died (host gone, network cut) fails within about half a minute (TCP keepalives)."""
    return sa.create_engine(
        sqlalchemy_url(url),
        poolclass=sa.pool.NullPool,
        connect_args={
            "application_name": "batch-orchestrator",
            "connect_timeout": max(math.ceil(timeout), 2),  # libpq: whole seconds, at least 2
            "options": f"-c statement_timeout={int(timeout * 1000)}",
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": 30_000,
        },
    )


def make_sessionmaker(engine: sa.Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One short transaction: commits on success, rolls back on any exception."""
    with sessions.begin() as session:
        yield session


def raw_connection(session: Session) -> psycopg.Connection[Any]:
    """The psycopg connection under a session, for COPY."""
    dbapi: Any = session.connection().connection.dbapi_connection
    if not isinstance(dbapi, psycopg.Connection):
        raise TypeError("the orchestrator needs the psycopg 3 driver")
    return dbapi


def with_database(url: str, database: str) -> str:
    """The same server, another database (libpq URL form)."""
    return (
        sqlalchemy_url(url)
        .set(drivername="postgresql", database=database)
        .render_as_string(hide_password=False)
    )
