"""Alembic environment: the URL comes from Settings, the metadata from ``orchestrator.db``.

Safe to run from several processes at once: a PostgreSQL advisory lock serialises them, and the
second finds the schema already at head.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from orchestrator.config import Settings
from orchestrator.db import models  # noqa: F401  (registers the tables)
from orchestrator.db.base import SCHEMA, Base
from orchestrator.db.session import sqlalchemy_url

MIGRATION_LOCK = 0x6F7263686D6967  # "orchmig"


def _url() -> str:
    url = context.config.attributes.get("url") or context.config.get_main_option("sqlalchemy.url")
    return str(url or Settings.from_env().require_database_url())


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    return name == SCHEMA if type_ == "schema" else True


def _run(connection: sa.Connection) -> None:
    connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
    try:
        connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        connection.commit()
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            version_table_schema=SCHEMA,
            include_schemas=True,
            include_name=_include_name,
            compare_server_default=False,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
        connection.commit()


def run_migrations_offline() -> None:
    context.configure(
        url=sqlalchemy_url(_url()),
        target_metadata=Base.metadata,
        literal_binds=True,
        version_table_schema=SCHEMA,
        include_schemas=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = sa.create_engine(sqlalchemy_url(_url()), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
