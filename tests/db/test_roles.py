"""``orchestrator roles``: each role may do its job on a real PostgreSQL, and nothing more.

Roles are cluster-wide, and the tests share a server: the group roles are created by whichever test
runs the script first (the script is idempotent), and each test logs in as users of its own
(``test_<uuid>``, members of a group), dropped at the end. Trust authentication on the test server
lets a role log in without a password. Every test database has CONNECT and TEMPORARY revoked from
PUBLIC first, so what the roles can do comes from the script's grants, not PostgreSQL's defaults.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
import structlog
from psycopg.errors import InsufficientPrivilege, ObjectNotInPrerequisiteState

from orchestrator import roles
from orchestrator.cli import main
from orchestrator.db import ledger
from orchestrator.db.migrate import downgrade, upgrade
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from tests.support import (
    FAST,
    assert_results_match_provider,
    enqueue,
    harness,
    query,
    scalar,
    settings_for,
    simple_requests,
)

pytestmark = pytest.mark.db

README = Path(__file__).resolve().parents[2] / "README.md"

Login = Callable[..., str]


def readme_enqueue_sql() -> str:
    """The README's enqueue example, as a user would paste it into psql."""
    block = README.read_text().split("<!-- enqueue-example -->", 1)[1]
    return re.search(r"```sql\n(.*?)```", block, re.S).group(1)  # type: ignore[union-attr]


def as_user(url: str, user: str) -> str:
    return (
        sa.make_url(url)
        .set(drivername="postgresql", username=user, password=None)
        .render_as_string(hide_password=False)
    )


def _database(url: str) -> str:
    return str(sa.make_url(url).database)


def _drop_login(server: str, name: str) -> None:
    """Drop a test user wherever it owns or was granted something, then the user."""
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        databases = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid"
                " WHERE s.refobjid = %s::regrole",
                (name,),
            )
        ]
    for database in [*databases, _database(server)]:
        with psycopg.connect(server, dbname=database, autocommit=True) as conn:
            # what it created in a schema it does not own (a migration run without SET ROLE) goes
            # to the superuser first: DROP OWNED alone would drop a trigger function that a
            # table of the migrator's depends on
            conn.execute(f'REASSIGN OWNED BY "{name}" TO CURRENT_USER')
            conn.execute(f'DROP OWNED BY "{name}"')
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP ROLE "{name}"')


@pytest.fixture
def logins(pg_server: str) -> Iterator[Login]:
    """``login(*groups, migrations=False)``: a new LOGIN user in those group roles; with
    ``migrations``, its sessions act as ``orchestrator_migrator`` (as the README says a migration
    login should), so that what it creates belongs to the group."""
    made: list[str] = []

    def login(*groups: str, migrations: bool = False) -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'CREATE ROLE "{name}" LOGIN')
            made.append(name)
            for group in groups:
                conn.execute(f'GRANT "{group}" TO "{name}"')
            if migrations:
                conn.execute(f"ALTER ROLE \"{name}\" SET role = 'orchestrator_migrator'")
        return name

    yield login
    for name in made:
        _drop_login(pg_server, name)


def _harden(url: str) -> None:
    """No CONNECT or TEMPORARY for PUBLIC: only the script's grants let the roles in."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{_database(url)}" FROM PUBLIC')


@pytest.fixture
def roles_db(db_url: str) -> str:
    """A migrated database (its objects created by the superuser), then the roles script."""
    _harden(db_url)
    roles.apply(db_url)
    return db_url


def _relations(url: str, kinds: str) -> list[str]:
    return [
        r[0]
        for r in query(
            url,
            "SELECT relname FROM pg_class WHERE relnamespace = 'orchestrator'::regnamespace "
            "AND relkind = ANY(%s) ORDER BY relname",
            list(kinds),
        )
    ]


def _refused(conn: psycopg.Connection[Any], *statements: str) -> None:
    """Each statement is refused: for want of the privilege, or (a view over a join, which no
    role can write through) because the view cannot be written at all."""
    for statement in statements:
        with pytest.raises((InsufficientPrivilege, ObjectNotInPrerequisiteState)):
            conn.execute(statement)


def _cli(monkeypatch: pytest.MonkeyPatch, url: str, *argv: str) -> int:
    """``orchestrator ARGV`` with ``url`` as the database URL (and the logging it set up undone)."""
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", url)
    try:
        return main(list(argv))
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()


def _add_result(url: str, job_id: int, custom_id: str, content: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO orchestrator.results (job_id, custom_id, batch_id, succeeded, "
            "status_code, response) VALUES (%s, %s, 1, true, 200, "
            "jsonb_build_object('choices', jsonb_build_array(jsonb_build_object("
            "'message', jsonb_build_object('content', %s::text)))))",
            (job_id, custom_id, content),
        )


def test_the_reporting_role_reads_every_table_and_view_and_may_not_write_any(
    roles_db: str,
    logins: Login,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a job of the README's, enqueued by someone else, and a reporting user
    with psycopg.connect(roles_db, autocommit=True) as conn:
        job_id = conn.execute(readme_enqueue_sql()).fetchall()[0][0]
    tables, views = _relations(roles_db, "rp"), _relations(roles_db, "vm")
    assert {"jobs", "requests", "results", "batches", "events", "alembic_version"} <= set(tables)
    assert {"job_summary", "request_results", "cost_by_day", "batches_by_state"} <= set(views)
    user = logins("orchestrator_reporting")
    with psycopg.connect(as_user(roles_db, user), autocommit=True) as conn:
        # Then it reads every table and view
        for name in tables + views:
            conn.execute(f"SELECT * FROM orchestrator.{name}").fetchall()
        assert conn.execute(
            "SELECT status, request_count FROM orchestrator.job_summary WHERE job_id = %s",
            (job_id,),
        ).fetchone() == ("pending", None)
        assert conn.execute(
            "SELECT count(*) FROM orchestrator.request_results WHERE job_id = %s", (job_id,)
        ).fetchone() == (3,)
        assert conn.execute(
            "SELECT custom_id, status, answer, error_message FROM orchestrator.request_results "
            "WHERE job_id = %s ORDER BY seq",
            (job_id,),
        ).fetchall() == [(c, "pending", None, None) for c in ("france", "japan", "kenya")]
        # And every write is refused, on every table
        for name in tables:
            column = conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum = 1",
                (f"orchestrator.{name}",),
            ).fetchone()[0]  # type: ignore[index]
            _refused(
                conn,
                f"INSERT INTO orchestrator.{name} DEFAULT VALUES",
                f"UPDATE orchestrator.{name} SET {column} = {column}",
                f"DELETE FROM orchestrator.{name}",
                f"TRUNCATE orchestrator.{name}",
            )
        _refused(
            conn,
            "UPDATE orchestrator.job_summary SET name = 'x'",  # a view that could pass writes on
            "CREATE TABLE orchestrator.mine (id int)",
            "SELECT * FROM orchestrator.jobs FOR UPDATE",
        )
    assert scalar(roles_db, "SELECT count(*) FROM orchestrator.requests") == 3
    # and `orchestrator status` works as that user
    assert _cli(monkeypatch, as_user(roles_db, user), "status") == 0
    assert _cli(monkeypatch, as_user(roles_db, user), "status", str(job_id)) == 0
    assert "capitals" in capsys.readouterr().out


def test_the_enqueue_role_runs_the_readme_sql_reads_the_results_and_may_only_cancel(
    roles_db: str,
    logins: Login,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = as_user(roles_db, logins("orchestrator_enqueue"))
    # When an enqueue user pastes the README's example into psql
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(readme_enqueue_sql()).fetchall()
    job_id = rows[0][0]
    assert sorted(custom_id for _, custom_id in rows) == ["france", "japan", "kenya"]
    # and a result arrives
    _add_result(roles_db, job_id, "france", "Paris")
    with psycopg.connect(url, autocommit=True) as conn:
        # Then it reads its job, its requests, the results and the views
        assert conn.execute(
            "SELECT custom_id, status, answer FROM orchestrator.request_results "
            "WHERE job_id = %s ORDER BY seq",
            (job_id,),
        ).fetchall() == [
            ("france", "succeeded", "Paris"),
            ("japan", "pending", None),
            ("kenya", "pending", None),
        ]
        assert conn.execute(
            "SELECT custom_id FROM orchestrator.results WHERE job_id = %s", (job_id,)
        ).fetchall() == [("france",)]
        assert conn.execute(
            "SELECT status FROM orchestrator.job_summary WHERE job_id = %s", (job_id,)
        ).fetchone() == ("pending",)
        # And it cancels a job, but changes nothing else and deletes nothing
        assert (
            conn.execute(
                "UPDATE orchestrator.jobs SET cancel_requested_at = now() WHERE id = %s", (job_id,)
            ).rowcount
            == 1
        )
        _refused(
            conn,
            "UPDATE orchestrator.jobs SET priority = 5",
            "UPDATE orchestrator.jobs SET status = 'cancelled'",
            "UPDATE orchestrator.requests SET body = '{}'",
            "DELETE FROM orchestrator.jobs",
            "DELETE FROM orchestrator.requests",
            "INSERT INTO orchestrator.results (job_id, custom_id, batch_id, succeeded) "
            "VALUES (1, 'x', 1, true)",
            "SELECT * FROM orchestrator.batches",
            "CREATE TABLE orchestrator.mine (id int)",
        )
    assert scalar(roles_db, "SELECT count(*) FROM orchestrator.jobs") == 1
    # The CLI's results, enqueue and cancel work as that user too
    assert _cli(monkeypatch, url, "results", str(job_id)) == 0
    assert '"custom_id":"france"' in capsys.readouterr().out
    source = tmp_path / "more.jsonl"
    source.write_text('{"custom_id": "a", "provider": "openai", "body": {"model": "m"}}\n')
    assert _cli(monkeypatch, url, "enqueue", str(source)) == 0
    second = scalar(roles_db, "SELECT max(id) FROM orchestrator.jobs")
    assert second != job_id
    assert _cli(monkeypatch, url, "cancel", str(second)) == 0
    assert scalar(
        roles_db,
        "SELECT cancel_requested_at IS NOT NULL FROM orchestrator.jobs WHERE id = %s",
        second,
    )


def test_the_daemon_role_runs_a_job_end_to_end_and_may_not_change_the_schema(
    roles_db: str, logins: Login
) -> None:
    daemon_url = as_user(roles_db, logins("orchestrator_daemon"))
    enqueue_url = as_user(roles_db, logins("orchestrator_enqueue"))
    # Given the daemon listening (as the daemon user) when the enqueue user runs the README's SQL
    with psycopg.connect(daemon_url, autocommit=True) as listener:
        listener.execute("LISTEN orchestrator")
        with psycopg.connect(enqueue_url, autocommit=True) as conn:
            job_id = conn.execute(readme_enqueue_sql()).fetchall()[0][0]
        assert [n.channel for n in listener.notifies(timeout=10, stop_after=1)] == ["orchestrator"]
    # When a daemon connected as the daemon user runs
    with harness(daemon_url) as h:
        assert h.run_job(job_id) == "completed"
        answered = assert_results_match_provider(roles_db, h.emulator)
    # Then every request has its answer, the one the provider wrote for it
    assert answered == 3
    assert query(
        roles_db,
        "SELECT custom_id, succeeded FROM orchestrator.results WHERE job_id = %s "
        "ORDER BY custom_id",
        job_id,
    ) == [("france", True), ("japan", True), ("kenya", True)]
    # and a re-ingest's temporary staging table can be made (TEMPORARY on the database)
    engine = make_engine(daemon_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            ledger.create_result_staging(s)
            ledger.upsert_results_from_staging(s)
    finally:
        engine.dispose()
    # But the schema is not the daemon's to change, nor its version
    with psycopg.connect(daemon_url, autocommit=True) as conn:
        _refused(
            conn,
            "CREATE TABLE orchestrator.mine (id int)",
            "ALTER TABLE orchestrator.jobs ADD COLUMN mine int",
            "CREATE INDEX ON orchestrator.jobs (name)",
            "DROP TABLE orchestrator.events",
            "TRUNCATE orchestrator.events",
            "UPDATE orchestrator.alembic_version SET version_num = version_num",
            "UPDATE orchestrator.job_summary SET name = 'x'",
        )


def test_the_daemon_role_gives_a_batch_up_and_the_operator_reingests_it_as_the_daemon(
    roles_db: str, logins: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon_url = as_user(roles_db, logins("orchestrator_daemon"))
    patient = dataclasses.replace(FAST, patience_seconds=3600.0, stuck_after_seconds=600.0)
    with harness(daemon_url, settings=settings_for(daemon_url, daemon=patient)) as h:
        # Given a batch whose output stays missing past the patience (and whose lines, once
        # readable, hold 500s to be sent again), so that the daemon user gives it up
        h.emulator.faults.add_batch_fault(hide_output=5 * 3600.0, line_500=0.5)
        job_id = enqueue(as_user(roles_db, logins("orchestrator_enqueue")), simple_requests(12))
        assert h.run_job(job_id, seconds=60) == "failed"
        batch_id = scalar(roles_db, "SELECT id FROM orchestrator.batches")
        # When the files show up and the operator runs reingest as the daemon user
        h.clock.advance(5 * 3600)
        assert _cli(monkeypatch, daemon_url, "reingest", str(batch_id)) == 0
        # Then the daemon user collects them and sends the 500s again, to the end
        assert h.run_job(job_id) == "completed"
        answered = assert_results_match_provider(roles_db, h.emulator)
    assert query(roles_db, "SELECT round FROM orchestrator.batches ORDER BY id") == [(1,), (2,)]
    assert query(roles_db, "SELECT succeeded_count, failed_count FROM orchestrator.jobs") == [
        (12, 0)
    ]
    assert answered == 12  # each with the answer the provider wrote for it, in either round


def test_a_migration_login_migrates_an_empty_database_and_the_roles_use_what_it_made(
    empty_db_url: str, logins: Login
) -> None:
    # Given the roles set up on an empty database (the script creates the schema, for the migrator)
    _harden(empty_db_url)
    assert "schema orchestrator has no tables yet" in " ".join(roles.apply(empty_db_url))
    deploy = as_user(empty_db_url, logins("orchestrator_migrator", migrations=True))
    # When the migration login migrates it (down and up again: the DDL of every revision)
    upgrade(deploy)
    downgrade(deploy, "base")
    upgrade(deploy)
    # Then everything in the schema belongs to the migrator
    assert query(
        empty_db_url,
        "SELECT DISTINCT relowner::regrole::text FROM pg_class "
        "WHERE relnamespace = 'orchestrator'::regnamespace",
    ) == [("orchestrator_migrator",)]
    # and, by the default privileges, the reporting role reads it and the daemon writes it
    reporting = as_user(empty_db_url, logins("orchestrator_reporting"))
    daemon = as_user(empty_db_url, logins("orchestrator_daemon"))
    assert scalar(reporting, "SELECT count(*) FROM orchestrator.jobs") == 0
    with psycopg.connect(daemon) as conn:
        conn.execute("INSERT INTO orchestrator.events (kind) VALUES ('test')")
    # and once the script runs again (after the migration), the enqueue role's grants are made
    enqueue = as_user(empty_db_url, logins("orchestrator_enqueue"))
    roles.apply(empty_db_url)
    with psycopg.connect(enqueue, autocommit=True) as conn:
        assert len(conn.execute(readme_enqueue_sql()).fetchall()) == 3


def test_tables_and_views_a_later_migration_creates_are_granted_without_running_the_script(
    roles_db: str, logins: Login
) -> None:
    # When the migrator creates a table and a view, as a later migration would
    deploy = as_user(roles_db, logins("orchestrator_migrator", migrations=True))
    with psycopg.connect(deploy, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orchestrator.later "
            "(id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, note text)"
        )
        conn.execute("CREATE VIEW orchestrator.later_notes AS SELECT note FROM orchestrator.later")
    # Then the daemon writes the table, the reporting role reads both and writes neither
    with psycopg.connect(as_user(roles_db, logins("orchestrator_daemon"))) as conn:
        conn.execute("INSERT INTO orchestrator.later (note) VALUES ('new')")
    with psycopg.connect(as_user(roles_db, logins("orchestrator_reporting")), autocommit=True) as c:
        assert c.execute("SELECT note FROM orchestrator.later").fetchall() == [("new",)]
        assert c.execute("SELECT note FROM orchestrator.later_notes").fetchall() == [("new",)]
        _refused(c, "INSERT INTO orchestrator.later (note) VALUES ('x')")
    # and the enqueue role's grants stay as narrow as they were
    with psycopg.connect(as_user(roles_db, logins("orchestrator_enqueue")), autocommit=True) as c:
        _refused(c, "SELECT * FROM orchestrator.later")


def test_a_schema_an_ordinary_login_migrated_is_handed_to_the_migrator_and_it_can_still_migrate(
    empty_db_url: str, logins: Login
) -> None:
    # Given a deployment whose schema was migrated by an ordinary login (not a superuser)
    app = logins()
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(f'GRANT CREATE ON DATABASE "{_database(empty_db_url)}" TO "{app}"')
    upgrade(as_user(empty_db_url, app))
    # When a superuser runs the script
    notices = roles.apply(empty_db_url)
    # Then the schema and everything in it belong to the migrator, and the login is a member
    assert f"granted orchestrator_migrator to {app} (who owned the schema's objects)" in notices
    assert any(n.startswith("handed ") for n in notices), notices
    owners = query(
        empty_db_url,
        "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'orchestrator' "
        "UNION SELECT relowner::regrole::text FROM pg_class "
        "WHERE relnamespace = 'orchestrator'::regnamespace "
        "UNION SELECT proowner::regrole::text FROM pg_proc "
        "WHERE pronamespace = 'orchestrator'::regnamespace",
    )
    assert owners == [("orchestrator_migrator",)]
    # and it can still run the migrations, down and up
    downgrade(as_user(empty_db_url, app), "0003")
    upgrade(as_user(empty_db_url, app))
    assert scalar(empty_db_url, "SELECT to_regclass('orchestrator.create_keys')::text") == (
        "orchestrator.create_keys"
    )


def _grants(url: str) -> list[tuple[Any, ...]]:
    """Every owner and privilege the script sets, as text."""
    return query(
        url,
        """
        SELECT 'relation', relname, relowner::regrole::text, relacl::text FROM pg_class
         WHERE relnamespace = 'orchestrator'::regnamespace
        UNION ALL
        SELECT 'column', attrelid::regclass::text || '.' || attname, '', attacl::text
          FROM pg_attribute
         WHERE attacl IS NOT NULL
           AND attrelid IN (SELECT oid FROM pg_class
                             WHERE relnamespace = 'orchestrator'::regnamespace)
        UNION ALL
        SELECT 'schema', nspname, nspowner::regrole::text, nspacl::text FROM pg_namespace
         WHERE nspname = 'orchestrator'
        UNION ALL
        SELECT 'database', datname, '', datacl::text FROM pg_database
         WHERE datname = current_database()
        UNION ALL
        SELECT 'default', defaclobjtype::text, defaclrole::regrole::text, defaclacl::text
          FROM pg_default_acl
        ORDER BY 1, 2
        """,
    )


def test_orchestrator_roles_run_again_changes_nothing_and_says_how_to_log_in(
    roles_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _grants(roles_db)
    assert query(
        roles_db,
        "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1",
        list(roles.ROLES),
    ) == [(name, False) for name in sorted(roles.ROLES)]
    assert _cli(monkeypatch, roles_db, "roles") == 0
    out = capsys.readouterr().out
    assert "handed" not in out  # the first run did that
    for name in roles.ROLES:
        assert name in out
    assert "CREATE ROLE metabase LOGIN PASSWORD '...' IN ROLE orchestrator_reporting;" in out
    assert _grants(roles_db) == before


def test_orchestrator_roles_as_a_user_who_may_not_grant_says_so_in_one_line(
    db_url: str,
    logins: Login,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    roles.apply(db_url)  # the roles exist; this user may still not grant them
    owners = _grants(db_url)
    assert _cli(monkeypatch, as_user(db_url, logins()), "roles") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("orchestrator: the database refused (")
    assert "superuser" in captured.err
    assert captured.err.count("\n") == 1
    assert _grants(db_url) == owners
