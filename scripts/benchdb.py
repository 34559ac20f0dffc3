"""The benchmarks' databases: a server where they may create databases, and the databases they
create there (each dropped at the end). One copy for every ``bench_*.py`` script."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def pg_server(db_url: str | None = None) -> Iterator[tuple[str, str]]:
    """(libpq URL of a server where we may create databases, a description of it): ``db_url``
    (a script's ``--db-url``), else ``BENCH_DATABASE_URL``, else the local server, else an
    embedded PostgreSQL started for the run."""
    from orchestrator.db.session import libpq_url

    if db_url:
        yield libpq_url(db_url), "--db-url"
        return
    explicit = os.environ.get("BENCH_DATABASE_URL")
    if explicit:
        yield libpq_url(explicit), "BENCH_DATABASE_URL"
        return
    try:
        with psycopg.connect(LOCAL_PG, connect_timeout=3):
            pass
    except psycopg.Error:
        from orchestrator.embedded import EmbeddedPostgres

        with EmbeddedPostgres() as pg:
            yield libpq_url(pg.url), "embedded PostgreSQL"
        return
    yield LOCAL_PG, "127.0.0.1:5432"


class Databases:
    """Creates databases on one server (named ``<prefix>_<random>_<suffix>``) and drops every
    one of them at the end."""

    def __init__(self, server: str, prefix: str) -> None:
        self.server = server
        self.prefix = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []
        self.template = ""  # a script that migrates once and copies it sets this

    def url(self, name: str) -> str:
        from orchestrator.db.session import with_database

        return with_database(self.server, name)

    def create(self, suffix: str, template: str | None = None) -> str:
        name = f"{self.prefix}_{suffix.replace('-', '_')}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{clause}')
        self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            with contextlib.suppress(psycopg.Error):
                self.drop(name)

    def version(self) -> str:
        with psycopg.connect(self.server) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def settings(self) -> dict[str, str]:
        """The server settings the plans depend on most."""
        names = ["jit", "jit_above_cost", "jit_optimize_above_cost", "work_mem", "shared_buffers"]
        with psycopg.connect(self.server) as conn:
            rows = conn.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
                (names,),
            ).fetchall()
        return {str(n): str(v) for n, v in sorted(rows, key=lambda r: names.index(r[0]))}
