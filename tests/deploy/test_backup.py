"""README "Back up", word for word: ``pg_dump`` of the schema while a daemon could be at work,
``pg_restore`` into a new empty database, and the restored database is one the orchestrator runs
on (at its revision, with every job, result and cost)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orchestrator.db.session import with_database
from tests.support import assert_results_match_provider, enqueue_generated, harness, query, scalar


@pytest.fixture
def restored_name(pg_server: str) -> Iterator[str]:
    name = f"orch_r_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_dump_of_the_schema_restores_into_an_empty_database_with_every_row(
    db_url: str, pg_server: str, restored_name: str, tmp_path: Path
) -> None:
    job_id = enqueue_generated(db_url, 12)
    with harness(db_url) as h:
        assert h.run_job(job_id) == "completed"
        assert assert_results_match_provider(db_url, h.emulator) == 12
    dump = tmp_path / "orchestrator-2026-11-30.dump"
    for tool in ("pg_dump", "pg_restore", "createdb"):
        assert shutil.which(tool), f"{tool} is needed (Debian: postgresql-client)"
    subprocess.run(
        ["pg_dump", "--format=custom", "--schema=orchestrator", f"--file={dump}", db_url],
        check=True,
    )
    server = psycopg.conninfo.conninfo_to_dict(pg_server)
    subprocess.run(
        [
            "createdb",
            f"--host={server.get('host', '127.0.0.1')}",
            f"--port={server.get('port', 5432)}",
            f"--username={server.get('user', 'postgres')}",
            restored_name,
        ],
        check=True,
    )
    restored = with_database(pg_server, restored_name)
    subprocess.run(
        ["pg_restore", f"--dbname={restored}", "--no-owner", "--exit-on-error", str(dump)],
        check=True,
    )
    # the same rows, and a schema the orchestrator accepts as its own
    for table in ("jobs", "requests", "results", "batches", "events", "create_keys"):
        sql = f"SELECT count(*) FROM orchestrator.{table}"
        assert scalar(restored, sql) == scalar(db_url, sql) > 0, table
    summary = (
        "SELECT job_id, status, succeeded_count, total_tokens, cost FROM orchestrator.job_summary"
    )
    assert query(restored, summary) == query(db_url, summary)
    # and each row holds what it held: every result, and the costs it was reported at
    for sql in (
        "SELECT job_id, custom_id, batch_id, attempt, succeeded, status_code, response, error, "
        "total_tokens FROM orchestrator.results ORDER BY job_id, custom_id",
        "SELECT batch_id, model, results, total_tokens, cost FROM orchestrator.batch_model_costs "
        "ORDER BY 1, 2",
    ):
        assert query(restored, sql) == query(db_url, sql)
    version = "SELECT version_num FROM orchestrator.alembic_version"
    assert scalar(restored, version) == scalar(db_url, version)
