"""Shared fixtures: a real PostgreSQL for every test that needs one.

The server is, in order: ``TEST_DATABASE_URL`` if set; the local server on 127.0.0.1:5432 (this
machine's, and CI's); else an embedded PostgreSQL started for the session. The schema is migrated
once into a template database; each test gets a fresh copy (``CREATE DATABASE … TEMPLATE``, tens of
milliseconds), so tests never see each other's rows and may run daemons in subprocesses.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import structlog

from orchestrator.db.migrate import upgrade
from orchestrator.db.session import libpq_url, with_database
from orchestrator.embedded import EmbeddedPostgres

LOCAL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own configuration."""
    for var in list(os.environ):
        if var.startswith(("ORCHESTRATOR_", "FASTROUTER_", "OPENAI_")) or var == "DATABASE_URL":
            monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A libpq URL of a server where tests may create databases."""
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        yield libpq_url(explicit)
        return
    if _reachable(LOCAL):
        yield LOCAL
        return
    with EmbeddedPostgres() as pg:
        yield libpq_url(pg.url)


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> Iterator[str]:
    name = f"orch_tmpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(with_database(pg_server, name))
    yield name
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(pg_server: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test (libpq URL)."""
    name = f"orch_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield with_database(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db_url(pg_server: str) -> Iterator[str]:
    """A fresh database without the schema (for migration tests)."""
    name = f"orch_e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def cli(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """For tests that run ``orchestrator.cli.main`` in this process: the database in the
    environment, and the logging it set up undone afterwards. Yields the database URL."""
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", db_url)
    yield db_url
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()
