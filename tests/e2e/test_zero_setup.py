"""Zero setup: ``orchestrator run`` with no database configured runs on an embedded PostgreSQL in
the user's data home, which ``enqueue`` reaches too; a configured URL is always what is used. And
``orchestrator demo --keep`` leaves its database up and prints how to connect, so that the README's
queries can be tried on the demo's data.

The subprocesses run this checkout (``-m orchestrator`` with ``cwd`` and ``PYTHONPATH`` = the
repository) with a reduced environment: no database URL, ``HOME`` and ``XDG_DATA_HOME`` in the test's
own directory. They wait for our own processes (the embedded server's first start runs ``initdb``:
about 1.6 s here), bounded at ten times what they take on this machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orchestrator import zero_setup
from orchestrator.config import Settings
from orchestrator.embedded import EmbeddedPostgresFailed
from orchestrator.emulator import EmulatorConfig
from orchestrator.emulator.lines import failure_of
from orchestrator.errors import ConfigError
from tests.support import child_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
URL_IN_QUOTES = re.compile(r"'(postgresql://[^']+)'")
KEPT = re.compile(r"stays up until you press Ctrl-C")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return child_env(
        {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path / "home"),
            "PYTHONPATH": str(ROOT),
            "ORCHESTRATOR_LOG_FORMAT": "json",
            "ORCHESTRATOR_HTTP_ADDR": "off",
            **extra,
        }
    )


def _orchestrator(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args]


def _wait_for_line(log: Path, pattern: re.Pattern[str], proc: subprocess.Popen[bytes]) -> str:
    """The first line of ``log`` matching ``pattern``, once it is there (or the process ended)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        for line in text.splitlines():
            if pattern.search(line):
                return line
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before {pattern.pattern}:\n{text}")
        time.sleep(0.05)
    raise AssertionError(f"no line like {pattern.pattern} in 60 s:\n{log.read_text()}")


def _stop_server(data: Path) -> None:
    """If a test failed with the embedded server up, stop it (immediate shutdown)."""
    pid_file = data / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)


def test_a_configured_database_url_is_always_used_and_no_embedded_server_is_made(
    tmp_path: Path,
) -> None:
    # Given a URL in the settings, and a data home where an embedded server would go
    environ = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    url = "postgresql://someone@db.example:5432/batches"
    settings = Settings(database_url=url, targets={})
    # When run, enqueue (create) or status (no create) resolve their database
    for create in (True, False):
        # Then it is that URL, and nothing was made in the data home
        assert zero_setup.resolve_database_url(settings, environ, create=create) == url
        assert zero_setup.with_database(settings, environ, create=create).database_url == url
    assert not (tmp_path / "xdg").exists()
    assert not (tmp_path / "home").exists()


def test_the_embedded_data_directory_is_in_the_users_data_home(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    xdg = str(tmp_path / "xdg")
    assert zero_setup.data_dir({"XDG_DATA_HOME": xdg, "HOME": home}) == Path(
        xdg, "batch-orchestrator", "pgdata"
    )
    # unset, or relative (the XDG rule: ignored), it is ~/.local/share
    for environ in ({"HOME": home}, {"XDG_DATA_HOME": "relative/dir", "HOME": home}):
        assert zero_setup.data_dir(environ) == Path(
            home, ".local", "share", "batch-orchestrator", "pgdata"
        )


def test_an_embedded_server_that_cannot_start_is_one_clear_error(tmp_path: Path) -> None:
    # Given a data home that is a file, not a directory
    (tmp_path / "xdg").write_text("not a directory")
    environ = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    # Then run says, in one line, which server did not start and why (main prints it, exit 1)
    with pytest.raises(EmbeddedPostgresFailed) as failed:
        zero_setup.resolve_database_url(
            Settings(database_url=None, targets={}), environ, create=True
        )
    message = str(failed.value)
    assert message.startswith(f"the embedded PostgreSQL in {tmp_path / 'xdg'}/batch-orchestrator/")
    assert "NotADirectoryError" in message
    assert "\n" not in message


def test_a_command_that_only_reads_says_what_to_do_and_makes_no_database(tmp_path: Path) -> None:
    environ = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    with pytest.raises(ConfigError, match=r"orchestrator run` makes one there, or set ORCH"):
        zero_setup.resolve_database_url(Settings(database_url=None, targets={}), environ)
    assert not (tmp_path / "xdg").exists()


@pytest.fixture
def data_home() -> Iterator[Path]:
    """A data home outside pytest's own temporary directories: the embedded server runs as another
    user (``pgserver``) when we are root, and pytest makes ``/tmp/pytest-of-root`` private again
    whenever a session starts (another pytest run on this machine could do so mid-test)."""
    path = Path(tempfile.mkdtemp(prefix="orchestrator-zs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclasses.dataclass
class Demo:
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def kept_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``orchestrator demo --keep`` in a subprocess, started by the first test that asks for it
    and stopped with Ctrl-C (SIGINT) at the end of the module, once it is kept. The run test asks
    for it too, so that the demo (mostly waiting: initdb, the emulator's clock) runs meanwhile."""
    work = tmp_path_factory.mktemp("demo")
    log = work / "demo.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            _orchestrator("demo", "--jobs", "1", "--requests", "5", "--keep"),
            cwd=ROOT,
            env=_env(work),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    demo = Demo(process, log)
    try:
        yield demo
    finally:
        if process.poll() is None:
            with contextlib.suppress(AssertionError):  # interrupted mid-start: it cleans up too
                _wait_for_line(log, KEPT, process)
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # Had it to be killed, its server and temporary directory would be left behind
        found = URL_IN_QUOTES.search(log.read_text())
        if found:
            data = Path(found.group(1).split("host=", 1)[1])
            _stop_server(data)
            shutil.rmtree(data.parent, ignore_errors=True)


def test_run_without_a_url_uses_the_embedded_database_which_enqueue_reaches(
    tmp_path: Path, data_home: Path, kept_demo: Demo
) -> None:
    xdg = data_home
    data = xdg / "batch-orchestrator" / "pgdata"
    env = _env(tmp_path, XDG_DATA_HOME=str(xdg))
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        run = subprocess.Popen(
            _orchestrator("run"), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        # Given `orchestrator run` with no database configured
        # Then it announces the embedded database: the directory, how to connect with psql, the
        # URL without a password
        line = _wait_for_line(log, re.compile(r"embedded PostgreSQL in "), run)
        assert f"embedded PostgreSQL in {data} " in line
        assert "migrated" in line
        found = URL_IN_QUOTES.search(line)
        assert found, line
        url = found.group(1)
        assert re.search(r"connect with: \S*psql '", line), line
        assert url.startswith("postgresql://postgres@/"), url  # no password, not even an empty one
        # When enqueue runs with no database configured either, while the daemon runs
        requests = tmp_path / "requests.jsonl"
        requests.write_text(
            '{"custom_id": "a", "provider": "openai", "body": {"model": "openai/gpt-4.1-nano", '
            '"messages": [{"role": "user", "content": "hi"}]}}\n'
        )
        enqueued = subprocess.run(
            _orchestrator("enqueue", str(requests), "--name", "zero setup"),
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        # Then it reached the daemon's database (the daemon registered in it)
        assert enqueued.returncode == 0, enqueued.stderr.decode()
        assert enqueued.stdout.decode().strip() == "1"
        assert f"using the embedded PostgreSQL in {data} " in enqueued.stderr.decode()
        _wait_for_line(log, re.compile(r'"daemon_started"'), run)
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT j.name, j.status, w.pid FROM orchestrator.jobs j, orchestrator.workers w"
            ).fetchone()
        assert row is not None
        assert row[0] == "zero setup"
        assert row[2] == run.pid
        # When the daemon is stopped
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 0
        # Then the server it started stops with it (no other process uses it) and the data stays
        assert not (data / "postmaster.pid").exists()
        assert (data / "PG_VERSION").is_file()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        _stop_server(data)


def _readme_queries() -> list[str]:
    """The README's example queries on its results: the block after "## Read the results", and the
    ones it shows running after ``orchestrator demo --keep`` (``=> SELECT ...``)."""
    section = README.read_text().split("## Read the results", 1)[1]
    block = section.split("```sql", 1)[1].split("```", 1)[0]
    shown = section.split("What they show after `orchestrator demo --keep`", 1)[1]
    shown = shown.split("```", 2)[1]
    code = "\n".join(ln for ln in block.splitlines() if not ln.lstrip().startswith("--"))
    statements = [s.strip() for s in code.split(";")]
    for part in shown.split("=> ")[1:]:
        statements.append(part.split(";", 1)[0].strip())
    return [s for s in statements if s]


def test_demo_keep_leaves_its_database_up_and_prints_a_url_the_readme_queries_work_on(
    kept_demo: Demo,
) -> None:
    queries = _readme_queries()
    assert len(queries) >= 8, queries  # the four examples and the four shown with their output
    demo, log = kept_demo.process, kept_demo.log
    # Given the demo, kept
    _wait_for_line(log, KEPT, demo)
    # Then it prints a psql command with the database's URL (no password)
    line = _wait_for_line(log, re.compile(r"^\s+\S*psql 'postgresql://"), demo)
    found = URL_IN_QUOTES.search(line)
    assert found, line
    url = found.group(1)
    assert url.startswith("postgresql://postgres@/"), url
    data = Path(url.split("host=", 1)[1])
    # and the export line for the orchestrator's own commands, with the same URL
    assert f"export ORCHESTRATOR_DATABASE_URL='{url}'" in log.read_text()
    # When the README's queries run on that URL
    with psycopg.connect(url) as conn:
        for sql in queries:
            rows = conn.execute(sql).fetchall()  # type: ignore[arg-type]
            # Then each answers with the demo's data
            assert rows, sql
        assert conn.execute(
            "SELECT status, request_count FROM orchestrator.job_summary"
        ).fetchall() == [("completed", 5)]
        # and its results say what the demo's provider answers (seed 7, 5 % of lines failing,
        # 120-character answers): each request its answer, or the refusal that picked it
        provider = EmulatorConfig(seed=7, line_failure_rate=0.05)
        rows = conn.execute(
            "SELECT custom_id, status, status_code, answer, error_message "
            "FROM orchestrator.request_results ORDER BY seq"
        ).fetchall()
        assert len(rows) == 5
        for custom_id, status, code, answer, error in rows:
            failure = failure_of(provider, custom_id, {"model": "any"})
            if failure is None:
                assert (status, code, len(answer), error) == ("succeeded", 200, 120, None)
            else:
                assert (status, code, answer, error) == ("failed", 400, None, failure.message)
    # When the user presses Ctrl-C
    demo.send_signal(signal.SIGINT)
    # Then the demo ends and its temporary database goes with it
    assert demo.wait(timeout=30) == 0, log.read_text()
    assert not data.exists()
