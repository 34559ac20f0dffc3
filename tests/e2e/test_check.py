"""``orchestrator check``: one line per check (database, schema, each target's key, the metrics
port), exit 1 if any fails; the keys are checked against the emulator with one authenticated call
each, and never printed."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import structlog

from orchestrator.cli import main
from orchestrator.clock import ManualClock, SystemClock
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer
from tests.support import API_KEY, enqueue, free_port, simple_requests, stamp_revision

WRONG_KEY = "sk-wrong-0a1b2c3d4e5f60718293"
PASSWORD = "pw-7d6c5b4a39"
# check(**environment) -> (exit code, lines on stdout, stderr)
Check = Callable[..., tuple[int, list[str], str]]


@pytest.fixture
def emulators() -> Iterator[tuple[str, str]]:
    """The base URLs of a FastRouter emulator and an OpenAI one, both expecting API_KEY."""
    clock = ManualClock(SystemClock().now())
    with (
        Emulator(EmulatorConfig(api_key=API_KEY), clock) as fastrouter,
        Emulator(EmulatorConfig(api_key=API_KEY, mode="openai"), clock) as openai,
        EmulatorServer(fastrouter) as fr,
        EmulatorServer(openai) as oa,
    ):
        yield fr.base_url, oa.base_url


@pytest.fixture
def check(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Check]:
    def run(**env: str) -> tuple[int, list[str], str]:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code = main(["check"])
        out, err = capsys.readouterr()
        return code, out.splitlines(), err

    yield run
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def test_check_passes_on_a_migrated_database_with_keys_the_targets_accept(
    db_url: str, emulators: tuple[str, str], check: Check
) -> None:
    fastrouter, openai = emulators
    port = free_port()
    code, lines, err = check(
        ORCHESTRATOR_DATABASE_URL=db_url,
        FASTROUTER_BASE_URL=fastrouter,
        FASTROUTER_API_KEY=API_KEY,
        OPENAI_BASE_URL=openai,
        OPENAI_API_KEY=API_KEY,
        ORCHESTRATOR_HTTP_ADDR=f"127.0.0.1:{port}",
    )
    database = db_url.rsplit("/", 1)[1]
    assert [line.split(" (PostgreSQL")[0] for line in lines] == [
        f"ok    database          127.0.0.1:5432/{database} answers",
        "ok    schema            at revision 0010, the one this orchestrator needs",
        f"ok    target fastrouter key accepted by {fastrouter} (GET /batches/{{id}}: 404, as "
        "expected for an unknown id)",
        f"ok    target openai     key accepted by {openai} (GET /batches?limit=1)",
        f"ok    metrics port      127.0.0.1:{port} is free",
    ]
    assert code == 0
    assert API_KEY not in "\n".join(lines) + err
    assert err == ""  # the expected 404 is not a warning


def test_check_fails_with_one_line_for_each_broken_condition(
    emulators: tuple[str, str], check: Check, tmp_path: Path
) -> None:
    fastrouter, openai = emulators
    down = free_port()
    config = tmp_path / "orchestrator.toml"
    config.write_text(f'[targets.extra]\nbase_url = "{openai}"\n')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, lines, err = check(
            ORCHESTRATOR_DATABASE_URL=f"postgresql://app:{PASSWORD}@127.0.0.1:{down}/batches",
            ORCHESTRATOR_CONFIG=str(config),
            FASTROUTER_BASE_URL=fastrouter,
            FASTROUTER_API_KEY=WRONG_KEY,
            ORCHESTRATOR_HTTP_ADDR=f"127.0.0.1:{port}",
        )
    assert lines == [
        f"FAIL  database          cannot use the database at 127.0.0.1:{down}/batches: "
        "Connection refused; check that PostgreSQL is running there and that "
        "ORCHESTRATOR_DATABASE_URL is right",
        "skip  schema            not checked: the database does not answer",
        "FAIL  target extra      configured but has no key; name its variable with api_key_env "
        "in [targets.extra]",
        f"FAIL  target fastrouter {fastrouter} refused the key in FASTROUTER_API_KEY (HTTP 401); "
        "set a valid key",
        "skip  target openai     not configured (set OPENAI_API_KEY to use it)",
        f"FAIL  metrics port      127.0.0.1:{port} is not free (Address already in use); stop "
        "what holds it (a daemon already running here?) or set ORCHESTRATOR_HTTP_ADDR to "
        "another host:port, or to off",
    ]
    assert code == 1
    shown = "\n".join(lines) + err
    assert WRONG_KEY not in shown and WRONG_KEY[-4:] not in shown and PASSWORD not in shown


def test_check_fails_on_a_schema_not_at_the_codes_revision(empty_db_url: str, check: Check) -> None:
    # The check reads the revision alone: a database holding only alembic's version table,
    # stamped in turn with each revision, stands for a database at that revision.
    says = {
        None: "has no orchestrator schema (it was never migrated); run orchestrator migrate",
        "0005": "is at schema revision 0005, older than the 0010 this orchestrator needs; run "
        "orchestrator migrate",
        "0099": "is at schema revision 0099, which this orchestrator (0.1.0, schema 0010) does "
        "not know: a newer version migrated it; upgrade the orchestrator package (pip install "
        "--upgrade batch-orchestrator)",
    }
    for revision, said in says.items():
        if revision is not None:
            with psycopg.connect(empty_db_url) as conn:
                conn.execute(
                    "CREATE SCHEMA IF NOT EXISTS orchestrator; CREATE TABLE IF NOT EXISTS "
                    "orchestrator.alembic_version (version_num varchar(32) PRIMARY KEY)"
                )
            stamp_revision(empty_db_url, revision)
        code, lines, _ = check(ORCHESTRATOR_DATABASE_URL=empty_db_url, ORCHESTRATOR_HTTP_ADDR="off")
        database = empty_db_url.rsplit("/", 1)[1]
        assert lines[0].startswith(f"ok    database          127.0.0.1:5432/{database} answers")
        assert lines[1] == f"FAIL  schema            the database {said}", revision
        assert code == 1


def test_check_fails_a_target_in_use_with_no_key_naming_the_variable_to_set(
    db_url: str, emulators: tuple[str, str], check: Check, tmp_path: Path
) -> None:
    fastrouter, _ = emulators
    # Given a file that declares groq (its key in GROQ_API_KEY, not set), and two open jobs for
    # the built-in openai target, which has no key either
    config = tmp_path / "orchestrator.toml"
    config.write_text(
        '[targets.groq]\nbase_url = "https://api.groq.com/openai/v1"\napi_key_env = "GROQ_API_KEY"\n'
    )
    jobs = [enqueue(db_url, simple_requests(1), target="openai") for _ in range(2)]
    env = {
        "ORCHESTRATOR_DATABASE_URL": db_url,
        "ORCHESTRATOR_CONFIG": str(config),
        "FASTROUTER_BASE_URL": fastrouter,
        "FASTROUTER_API_KEY": API_KEY,
        "ORCHESTRATOR_HTTP_ADDR": "off",
    }
    code, lines, _ = check(**env)
    # Then each fails, in one line saying which variable to set
    assert lines[2:] == [
        f"ok    target fastrouter key accepted by {fastrouter} (GET /batches/{{id}}: 404, as "
        "expected for an unknown id)",
        "FAIL  target groq       configured but has no key; set GROQ_API_KEY",
        "FAIL  target openai     2 open jobs use it but it has no key; set OPENAI_API_KEY",
        "ok    metrics port      off (ORCHESTRATOR_HTTP_ADDR)",
    ]
    assert code == 1
    # When one job runs and the other is finished, the target is still in use
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE orchestrator.jobs SET status = 'running' WHERE id = %s", (jobs[0],))
        conn.execute("UPDATE orchestrator.jobs SET status = 'completed' WHERE id = %s", (jobs[1],))
    _, lines, _ = check(**env)
    assert (
        lines[4]
        == "FAIL  target openai     1 open job uses it but it has no key; set OPENAI_API_KEY"
    )
    # and once no open job uses it, a built-in target with no key is only "not configured"
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE orchestrator.jobs SET status = 'completed' WHERE id = %s", (jobs[0],))
    code, lines, _ = check(**env)
    assert lines[4] == "skip  target openai     not configured (set OPENAI_API_KEY to use it)"
    assert code == 1  # groq still fails
