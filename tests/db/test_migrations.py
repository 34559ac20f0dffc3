"""The schema: created by alembic, safe to apply twice and from two processes at once, and the
models match it."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from orchestrator.db.base import SCHEMA, Base
from orchestrator.db.migrate import downgrade, upgrade
from orchestrator.db.session import make_engine
from tests.support import child_env, count, enqueue, harness, query, scalar, simple_requests

TABLES = {
    "jobs",
    "requests",
    "batches",
    "batch_items",
    "results",
    "events",
    "workers",
    "target_state",
    "prices",
    "create_keys",
    "orphan_batches",
    "batch_model_costs",
    "capacity",
    "alembic_version",
}
VIEWS = {"job_summary", "request_results", "cost_by_day", "batches_by_state"}


def _tables(url: str) -> set[str]:
    rows = scalar(
        url,
        "SELECT array_agg(table_name::text) FROM information_schema.tables "
        "WHERE table_schema = 'orchestrator' AND table_type = 'BASE TABLE'",
    )
    return set(rows or [])


def test_migrate_creates_the_schema_and_is_idempotent(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    upgrade(empty_db_url)
    assert _tables(empty_db_url) == TABLES
    views = scalar(
        empty_db_url,
        "SELECT array_agg(table_name::text) FROM information_schema.views"
        " WHERE table_schema = 'orchestrator'",
    )
    assert set(views) == VIEWS


def test_two_processes_migrating_at_once_both_succeed(empty_db_url: str) -> None:
    env = child_env({"ORCHESTRATOR_DATABASE_URL": empty_db_url, "PATH": "/usr/bin:/bin"})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert _tables(empty_db_url) == TABLES
    assert scalar(empty_db_url, "SELECT count(*) FROM orchestrator.alembic_version") == 1


def test_models_match_the_migrated_schema(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": True,
                "version_table_schema": SCHEMA,
                "include_name": lambda name, type_, parent: (
                    name == SCHEMA if type_ == "schema" else True
                ),
            },
        )
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_downgrade_then_upgrade_round_trips(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) == {"alembic_version"}
    upgrade(empty_db_url)
    assert _tables(empty_db_url) == TABLES


def test_enqueue_notifies_the_daemons(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as listener:
        listener.execute(sa.text("LISTEN orchestrator"))
        listener.commit()
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO orchestrator.jobs (name) VALUES ('x')"))
        raw = listener.connection.dbapi_connection
        assert raw is not None
        notes = list(raw.notifies(timeout=5, stop_after=1))  # type: ignore[attr-defined]
    engine.dispose()
    assert [n.channel for n in notes] == ["orchestrator"]


def test_a_batchs_items_go_with_it_whatever_deletes_it(db_url: str) -> None:
    """Items have no foreign key to their batch (migration 0009: its check per row was half the
    cost of writing them); a trigger deletes them with it, here through a user's job delete."""
    keep, drop = enqueue(db_url, simple_requests(3)), enqueue(db_url, simple_requests(2))
    with harness(db_url) as h:
        h.daemon.tick(wait=True)  # plans both jobs
    assert count(db_url, "batch_items") == 5
    with psycopg.connect(db_url) as conn:
        conn.execute("DELETE FROM orchestrator.jobs WHERE id = %s", (drop,))
    assert count(db_url, "batches", "job_id = %s", drop) == 0
    assert count(db_url, "batch_items", "job_id = %s", drop) == 0
    assert count(db_url, "batch_items", "job_id = %s", keep) == 3
    assert query(
        db_url, "SELECT job_id, custom_id FROM orchestrator.batch_items ORDER BY custom_id"
    ) == [(keep, f"req-{i:05d}") for i in range(3)]
