"""Zero setup: with no database configured, the embedded PostgreSQL in the user's data home.

``orchestrator run`` with no database URL (neither ``ORCHESTRATOR_DATABASE_URL`` nor
``DATABASE_URL`` nor ``database_url`` in the config file) starts the embedded server in
``$XDG_DATA_HOME/batch-orchestrator/pgdata`` (``~/.local/share/batch-orchestrator/pgdata``),
creating it the first time, migrates it (there is no separate ``migrate`` step on this path), says
so in one line on stderr, and runs on it. ``enqueue``, ``status``, ``results``, ``cancel``,
``resolve`` and ``reingest`` find the same database the same way: pgserver shares one server per
data directory between processes (see :mod:`orchestrator.embedded`), so they join the server
``run`` started, or start it for as long as they run. A URL, when one is given, is always what is
used.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

from orchestrator.config import Settings
from orchestrator.embedded import EmbeddedPostgres, psql_command
from orchestrator.errors import ConfigError

APP = "batch-orchestrator"


def data_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_DATA_HOME/batch-orchestrator/pgdata``; ``~/.local/share/...`` when it is unset or not
    an absolute path (the XDG rule)."""
    xdg = environ.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        base = Path(xdg)
    else:
        home = environ.get("HOME")
        base = (Path(home) if home else Path.home()) / ".local" / "share"
    return base / APP / "pgdata"


def resolve_database_url(
    settings: Settings, environ: Mapping[str, str], *, create: bool = False, daemon: bool = False
) -> str:
    """The database URL a command uses: the configured one if there is one; else the embedded
    server's, started (or joined) and migrated. With ``create``, the data directory is made on
    first use (``run``, ``enqueue``); without, a command that only reads says what to do instead
    of creating an empty database. The daemon (``daemon``) announces it with how to connect; the
    other commands, in a few words."""
    if settings.database_url:
        return settings.database_url
    directory = data_dir(environ)
    if not create and not (directory / "PG_VERSION").is_file():
        raise ConfigError(
            f"no database configured, and no embedded database in {directory} yet: "
            "`orchestrator run` makes one there, or set ORCHESTRATOR_DATABASE_URL"
        )
    server = EmbeddedPostgres(directory).start()  # pgserver lets go of it when this process exits
    alembic = logging.getLogger("alembic")
    level = alembic.level
    alembic.setLevel(logging.WARNING)  # the one line below says it was migrated
    try:
        # imported here: alembic costs a quarter of a second that a URL user need not pay (and
        # logs its plugins at info as it is imported)
        from orchestrator.db import migrate

        migrate.upgrade(server.url)
    finally:
        alembic.setLevel(level)
    if daemon:
        line = (
            f"no database configured: using the embedded PostgreSQL in {directory} (kept across "
            f"runs, migrated); connect with: {psql_command()} '{server.url}' (set "
            "ORCHESTRATOR_DATABASE_URL to use a server of your own)"
        )
    else:
        line = f"using the embedded PostgreSQL in {directory} (no database configured)"
    print(f"orchestrator: {line}", file=sys.stderr, flush=True)
    return server.url


def with_database(
    settings: Settings, environ: Mapping[str, str], *, create: bool = False
) -> Settings:
    """``settings`` with the URL :func:`resolve_database_url` gives."""
    return dataclasses.replace(
        settings, database_url=resolve_database_url(settings, environ, create=create)
    )
