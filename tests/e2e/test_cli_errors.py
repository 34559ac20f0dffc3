"""Every mistake a person can make at the command line is one line on stderr, never a traceback:
``orchestrator: <what is wrong>; <what to do>``, exit code 2 for usage and configuration errors and
1 for failures at run time. Each case is ``python -m orchestrator ...`` in a subprocess, as typed;
the cases run concurrently (a process each), so the table costs a few seconds, not its sum.

Then the two behaviours of the CLI that go with them: ``status`` lists only live daemons, and
``cancel`` on a finished job says that nothing was done.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.db.schema import HEAD
from tests.support import (
    child_env,
    downgrade_to,
    free_port,
    fresh_databases,
    query,
    scalar,
    stamp_revision,
)

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "pw-5e6f7a8b9c"  # of the database that is down: it must not be printed
# A daemon that passed its checks would run until stopped: a case still running after this long
# is a daemon that started where it should have refused (and fails the test).
RUN_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    code: int
    says: str  # on stderr when code != 0, else on stdout
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    stdin: bytes | None = None
    reader_gone: bool = False  # stdout is a pipe closed at once (``status | head -1``)


@dataclasses.dataclass
class Outcome:
    code: int | None
    out: str
    err: str


def _run(case: Case) -> Outcome:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "ORCHESTRATOR_HTTP_ADDR": "off",
        "ORCHESTRATOR_LOG_FORMAT": "json",
        **case.env,
    }
    env = child_env(env)
    command = [sys.executable, "-m", "orchestrator", *case.argv]
    if case.reader_gone:
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader went away before the first line
        err = proc.stderr.read().decode()
        return Outcome(proc.wait(timeout=RUN_TIMEOUT), "", err)
    try:
        done = subprocess.run(
            command,
            env=env,
            input=case.stdin,
            stdin=None if case.stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=RUN_TIMEOUT,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired as exc:  # killed by subprocess.run
        return Outcome(None, (exc.stdout or b"").decode(), (exc.stderr or b"").decode())
    return Outcome(done.returncode, done.stdout.decode(), done.stderr.decode())


def _problems(case: Case, got: Outcome) -> list[str]:
    found = []
    if got.code != case.code:
        found.append(f"exit code {got.code}, expected {case.code}")
    if "Traceback" in got.err:
        found.append("a traceback")
    lines = got.err.splitlines()
    if case.code != 0 and len(lines) != 1:
        found.append(f"{len(lines)} lines on stderr, expected 1")
    if case.code == 0 and lines:
        found.append(f"{len(lines)} lines on stderr, expected none")
    if case.code != 0 and lines and not lines[0].startswith("orchestrator: "):
        found.append("stderr does not start with 'orchestrator: '")
    if case.says not in (got.err if case.code else got.out):
        found.append(f"does not say {case.says!r}")
    if PASSWORD in got.err + got.out:
        found.append("prints the database password")
    return [f"{case.name}: {p}\n    stderr: {got.err.strip()[:600]}" for p in found]


@pytest.fixture
def old_db_url(pg_server: str, template_db: str) -> Iterator[str]:
    """A database at revision 0005 (downgraded by alembic, through a ``postgres://`` URL)."""
    with fresh_databases(pg_server, template_db) as fresh:
        url = fresh()
        downgrade_to(url.replace("postgresql://", "postgres://", 1), "0005")
        yield url


@pytest.fixture
def newer_db_url(pg_server: str, template_db: str) -> Iterator[str]:
    """A database a newer orchestrator migrated: at a revision this code does not know."""
    with fresh_databases(pg_server, template_db) as fresh:
        url = fresh()
        stamp_revision(url, "0099")
        yield url


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_every_mistake_is_one_line_with_its_exit_code_and_no_traceback(
    db_url: str,
    empty_db_url: str,
    old_db_url: str,
    newer_db_url: str,
    busy_port: int,
    tmp_path: Path,
) -> None:
    migrated = db_url
    down = f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/batches"
    toml = _toml_files(tmp_path)
    on = {"ORCHESTRATOR_DATABASE_URL": migrated}
    requests = b"".join(
        json.dumps({"custom_id": f"r{i}", "body": {"model": "m", "input": "hi"}}).encode() + b"\n"
        for i in range(3)
    )
    cases = [
        # usage: argparse's own errors, on one line, exit 2
        Case("unknown command", ("bogus",), 2, "invalid choice: 'bogus'"),
        Case("job id beyond bigint", ("status", "99999999999999999999"), 2,
             "'99999999999999999999' is not a valid job id (a whole number from 1 to "
             "9223372036854775807); see orchestrator status --help"),
        Case("negative job id", ("cancel", "-1"), 2, "'-1' is not a valid job id"),
        # configuration: the file and the key, or the variable, exit 2
        Case("a string for an int", ("status",), 2,
             f"{toml['four']}: [daemon] workers must be a whole number, not the string 'four'",
             env={"ORCHESTRATOR_CONFIG": str(toml["four"])}),
        Case("a number as a string", ("status",), 2,
             "workers must be a whole number, not the string '50000'; write workers = 50000",
             env={"ORCHESTRATOR_CONFIG": str(toml["quoted"])}),
        Case("a bool for a number", ("run",), 2,
             f"{toml['bool']}: [targets.fastrouter] timeout_seconds must be a number, not true",
             env={"ORCHESTRATOR_CONFIG": str(toml["bool"])}),
        Case("a bad variable", ("status",), 2,
             "ORCHESTRATOR_WORKERS must be a whole number, not 'four'",
             env={"ORCHESTRATOR_WORKERS": "four"}),
        Case("a bad log level", ("status",), 2,
             "ORCHESTRATOR_LOG_LEVEL must be one of debug, info, warning, error, critical, "
             "not 'loud'", env={"ORCHESTRATOR_LOG_LEVEL": "loud"}),
        # enqueue: the file and the target, checked before the database is touched
        Case("no such file", ("enqueue", "nope.jsonl"), 2,
             "nope.jsonl: no such file; give the path of a JSONL file, or - to read", env=on),
        Case("a directory", ("enqueue", str(tmp_path)), 2, "is a directory", env=on),
        Case("unknown target", ("enqueue", "-", "--target", "nope"), 2,
             "unknown target 'nope' (configured: fastrouter, openai)", env=on, stdin=b""),
        # the database: down, never migrated, older, newer (exit 1, one line)
        Case("database down", ("status",), 1,
             f"cannot use the database at 127.0.0.1:{down.rsplit(':', 1)[1].split('/')[0]}"
             "/batches: Connection refused; check that PostgreSQL is running there",
             env={"ORCHESTRATOR_DATABASE_URL": down}),
        Case("status unmigrated", ("status",), 1,
             "has no orchestrator schema (it was never migrated); run orchestrator migrate",
             env={"ORCHESTRATOR_DATABASE_URL": empty_db_url}),
        Case("run unmigrated", ("run",), 1,
             "has no orchestrator schema (it was never migrated); run orchestrator migrate",
             env={"ORCHESTRATOR_DATABASE_URL": empty_db_url}),
        Case("run older schema", ("run",), 1,
             f"is at schema revision 0005, older than the {HEAD} this orchestrator needs; run "
             "orchestrator migrate", env={"ORCHESTRATOR_DATABASE_URL": old_db_url}),
        Case("run newer schema", ("run",), 1,
             f"is at schema revision 0099, which this orchestrator (0.1.0, schema {HEAD}) does not "
             "know: a newer version migrated it; upgrade the orchestrator package",
             env={"ORCHESTRATOR_DATABASE_URL": newer_db_url}),
        # a busy metrics port: refused before the worker row is registered
        Case("metrics port taken", ("run",), 1,
             f"cannot serve /healthz and /metrics on 127.0.0.1:{busy_port}: Address already in "
             "use; stop what holds that port",
             env={**on, "ORCHESTRATOR_HTTP_ADDR": f"127.0.0.1:{busy_port}"}),
        # what does not exist
        Case("no such job", ("cancel", "987654321"), 2,
             "no job 987654321; list the jobs with orchestrator status", env=on),
        # what works: postgres:// URLs, stdin, a reader that goes away
        Case("enqueue - with postgres://", ("enqueue", "-", "--name", "from stdin"), 0, "\n",
             env={"ORCHESTRATOR_DATABASE_URL": migrated.replace("postgresql:", "postgres:", 1)},
             stdin=requests),
        Case("status | head -1", ("status",), 0, "", env=on, reader_gone=True),
    ]  # fmt: skip
    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(_run, cases))
    problems = [p for case, got in zip(cases, outcomes, strict=True) for p in _problems(case, got)]
    assert not problems, "\n".join(problems)
    # the job read from stdin is there, named, with its three requests
    job_id = int(outcomes[-2].out)
    assert query(
        migrated,
        "SELECT j.name, count(r.*) FROM orchestrator.jobs j JOIN orchestrator.requests r "
        "ON r.job_id = j.id WHERE j.id = %s GROUP BY j.name",
        job_id,
    ) == [("from stdin", 3)]
    # the daemon that found its port taken left no worker row behind
    assert scalar(migrated, "SELECT count(*) FROM orchestrator.workers") == 0


def _job(db_url: str, status: str) -> int:
    """A job, moved to ``status`` as the daemon would have."""
    job_id = scalar(db_url, "INSERT INTO orchestrator.jobs (name) VALUES ('j') RETURNING id")
    query(
        db_url,
        "UPDATE orchestrator.jobs SET status = %s WHERE id = %s RETURNING id",
        status,
        job_id,
    )
    return int(job_id)


def _toml_files(tmp_path: Path) -> dict[str, Path]:
    texts = {
        "four": '[daemon]\nworkers = "four"\n',
        "quoted": '[daemon]\nworkers = "50000"\n',
        "bool": "[targets.fastrouter]\ntimeout_seconds = true\n",
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = tmp_path / f"{name}.toml"
        paths[name].write_text(text)
    return paths


# -- status and cancel ----------------------------------------------------------------------


def test_status_lists_only_the_daemons_seen_within_the_lease_time(
    cli: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a daemon that heartbeats, one killed an hour ago (no goodbye) and one that stopped
    query(
        cli,
        "INSERT INTO orchestrator.workers (id, hostname, pid, version, started_at, heartbeat_at, "
        "stopped_at) VALUES "
        "(gen_random_uuid(), 'alive-host', 1, 'x', now(), now() - interval '10 seconds', NULL), "
        "(gen_random_uuid(), 'killed-host', 2, 'x', now() - interval '2 hours', "
        " now() - interval '1 hour', NULL), "
        "(gen_random_uuid(), 'stopped-host', 3, 'x', now(), now(), now()) RETURNING id",
    )
    # When a person asks for the status (the lease is 300 s by default)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert main(["status", "--json"]) == 0
    daemons = json.loads(capsys.readouterr().out)["daemons"]
    # Then only the live one is listed
    assert "daemons running: 1 (seen in the last 5m 0s)" in out
    assert "alive-host" in out and "killed-host" not in out and "stopped-host" not in out
    assert [d["hostname"] for d in daemons] == ["alive-host"]


def test_cancel_records_a_cancel_for_an_open_job_and_nothing_for_a_finished_one(
    cli: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pending = _job(cli, "pending")
    failed = _job(cli, "failed")
    assert main(["cancel", str(pending)]) == 0
    assert main(["cancel", str(failed)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"job {pending}: cancel requested (status now pending)",
        f"job {failed} is already failed; nothing to cancel",
    ]
    requested = dict(
        query(cli, "SELECT id, cancel_requested_at IS NOT NULL FROM orchestrator.jobs")
    )
    assert requested == {pending: True, failed: False}


def test_a_batch_that_does_not_exist_is_named_with_exit_code_2(
    cli: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # (in this process: the table runs the same kind of mistake, a job, as a subprocess)
    assert main(["reingest", "987654321"]) == 2
    assert main(["resolve", "987654321", "--recreate"]) == 2
    assert capsys.readouterr().err.splitlines() == 2 * [
        "orchestrator: no batch 987654321; list a job's batches with orchestrator status JOB"
    ]
