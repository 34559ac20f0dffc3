"""The schema revision the code runs on is a constant (``run`` must not load alembic to learn it):
these keep it equal to alembic's, and check the URL helpers the start-up check relies on."""

from __future__ import annotations

import psycopg
import pytest
from alembic.script import ScriptDirectory

from orchestrator.db import schema
from orchestrator.db.migrate import alembic_config
from orchestrator.db.session import libpq_url, sqlalchemy_url
from orchestrator.errors import ConfigError


def test_the_revision_constants_are_alembics_chain_and_its_head() -> None:
    # A new migration without a new constant fails here: `run` would then refuse a database
    # migrated by this very code, or accept one it cannot use.
    scripts = ScriptDirectory.from_config(alembic_config("postgresql://unused/x"))
    chain = [rev.revision for rev in scripts.walk_revisions("base", "heads")]
    assert scripts.get_current_head() == schema.HEAD
    assert tuple(reversed(chain)) == schema.REVISIONS
    assert schema.REVISIONS[-1] == schema.HEAD


@pytest.mark.parametrize(
    ("revision", "says"),
    [
        (None, "has no orchestrator schema (it was never migrated); run orchestrator migrate"),
        ("0005", "at schema revision 0005, older than the 0010 this orchestrator needs; run "
                 "orchestrator migrate"),
        ("0099", "at schema revision 0099, which this orchestrator (0.1.0, schema 0010) does "
                 "not know: a newer version migrated it; upgrade the orchestrator package"),
    ],
)  # fmt: skip
def test_a_schema_at_another_revision_is_one_line_saying_what_to_run(
    revision: str | None, says: str
) -> None:
    trouble = schema.problem(revision, "db:5432/batches")
    assert trouble is not None
    assert str(trouble).startswith("the database at db:5432/batches ")
    assert says in str(trouble)
    assert schema.problem(schema.HEAD) is None


@pytest.mark.parametrize(
    "url",
    [
        "postgres://app:pw@db.internal:6543/batches",
        "postgresql://app:pw@db.internal:6543/batches",
        "postgresql+psycopg://app:pw@db.internal:6543/batches",
        "postgres+psycopg://app:pw@db.internal:6543/batches",
    ],
)
def test_every_spelling_of_a_postgresql_url_is_accepted_everywhere(url: str) -> None:
    # engines and alembic (sqlalchemy_url), LISTEN (libpq_url), the start-up check (libpq_dsn)
    assert sqlalchemy_url(url).drivername == "postgresql+psycopg"
    assert libpq_url(url) == "postgresql://app:pw@db.internal:6543/batches"
    assert schema.libpq_dsn(url) == "postgresql://app:pw@db.internal:6543/batches"
    assert psycopg.conninfo.conninfo_to_dict(schema.libpq_dsn(url))["host"] == "db.internal"
    assert schema.location(url) == "db.internal:6543/batches"  # no user, no password


def test_other_databases_are_refused_with_the_form_to_use() -> None:
    for helper in (sqlalchemy_url, schema.libpq_dsn):
        with pytest.raises(ConfigError, match="postgresql://user:password@host:5432/database"):
            helper("mysql://app:pw@db/batches")


def test_libpqs_reason_is_one_line() -> None:
    refused = (
        'connection failed: connection to server at "127.0.0.1", port 5999 failed: '
        "Connection refused\n\tIs the server running on that host and accepting TCP/IP "
        "connections?"
    )
    assert schema.reason(Exception(refused)) == "Connection refused"
    missing = (
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
        'database "nope" does not exist'
    )
    assert schema.reason(Exception(missing)) == 'database "nope" does not exist'
