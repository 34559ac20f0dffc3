"""The API key never leaks: not into any line any process writes, not into any row of the database.

This runs the shipped command line (``python -m orchestrator run``, ``status``, ``results``) in
subprocesses, configured as a user configures it (the key in the environment, debug logging), so
that what is checked is the real logging set-up of the CLI. Real processes cannot share a manual
clock, so this runs in real time: the emulator serves over HTTP from this process on a scaled clock
(a batch finishes in about a second), and every wait is bounded and on our own daemon, never a sleep
waiting for the provider.

The provider is made to hand the key back in every way it can: error messages that quote the
``Authorization`` header (as proxies do) on the upload, the create and the poll; polls answered
with a "gzip" body that is plain text quoting the key, which httpx fails to decode with that body
in hand (an API error since the client maps ``httpx.DecodingError``); and a revoked key, so the
401 path (pause, probe, resume) runs too. A step also crashes, twice: the database refuses the
poll's write (a trigger raising, as a bug or a broken schema would), and the runner's outer guard
logs the traceback and writes ``internal error: ...`` (SQLAlchemy's message, with the statement's
parameters: the provider's batch object) on the batch. Then every line of every process's output
and every row of every table is searched for any 8 characters of the key's distinctive part.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import structlog

from orchestrator.cli import main
from orchestrator.clock import ScaledClock
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer
from orchestrator.emulator.faults import Garbage
from orchestrator.observability import REDACTED, configure_logging
from tests.support import (
    API_KEY,
    DaemonProcess,
    assert_results_match_provider,
    child_env,
    enqueue,
    failures,
    harness,
    query,
    scalar,
    simple_requests,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DISTINCT = API_KEY.removeprefix("sk-test-")
WINDOWS = [DISTINCT[i : i + 8] for i in range(len(DISTINCT) - 7)]


def leaks(text: str) -> list[str]:
    return [w for w in WINDOWS if w in text]


@contextmanager
def served() -> Iterator[EmulatorServer]:
    config = EmulatorConfig(mode="fastrouter", api_key=API_KEY, seed=5)
    with Emulator(config, ScaledClock(20.0)) as emulator, EmulatorServer(emulator) as server:
        yield server


def cli(env: dict[str, str], *args: str) -> str:
    """An ``orchestrator`` command as a user runs it; its stdout and stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=child_env(env),
        capture_output=True,
        timeout=60,  # about 1 s each here
        check=False,
    )
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    return output


def table_dump(db_url: str) -> dict[str, list[str]]:
    """Every row of every table and view of the orchestrator schema, as text."""
    with psycopg.connect(db_url) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'orchestrator' ORDER BY 1"
            ).fetchall()
        ]
        return {
            name: [r[0] for r in conn.execute(f'SELECT t::text FROM orchestrator."{name}" t')]
            for name in names
        }


def refuse_two_poll_writes(db_url: str) -> None:
    """The next two writes of a poll's outcome (they bump ``poll_count``) fail in the database."""
    with psycopg.connect(db_url) as conn:
        conn.execute("CREATE SEQUENCE public.refused_polls")
        conn.execute(
            """
            CREATE FUNCTION public.refuse_poll() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.poll_count > OLD.poll_count AND nextval('public.refused_polls') <= 2 THEN
                RAISE EXCEPTION 'refused for the test: this poll''s write';
              END IF;
              RETURN NEW;
            END $$
            """
        )
        conn.execute(
            "CREATE TRIGGER refuse_poll BEFORE UPDATE ON orchestrator.batches "
            "FOR EACH ROW EXECUTE FUNCTION public.refuse_poll()"
        )


def job_status(db_url: str, job_id: int) -> str:
    return str(scalar(db_url, "SELECT status FROM orchestrator.jobs WHERE id = %s", job_id))


def test_the_key_never_reaches_a_log_line_a_command_output_or_a_row(
    db_url: str, tmp_path: Path
) -> None:
    outputs: dict[str, str] = {}
    with served() as server:
        emulator, faults = server.emulator, server.emulator.faults
        emulator.revoke_key()  # every call gets 401 until restored (faults wait until then)
        for route in ("upload_file", "create_batch"):
            faults.add(route, status=500, echo_auth=True, times=2)
        quoting_polls = faults.add("get_batch", status=500, echo_auth=True, times=None)
        job_id = enqueue(db_url, simple_requests(20))
        daemon = DaemonProcess(db_url, server.base_url, tmp_path)
        daemon.env["ORCHESTRATOR_LOG_LEVEL"] = "debug"
        daemon.start()
        try:
            # 1. The key is revoked: the target pauses, and `status` says so.
            paused = "SELECT count(*) FROM orchestrator.target_state WHERE paused"
            assert wait_for(lambda: scalar(db_url, paused) == 1, timeout=60), daemon.logs()[-3000:]
            outputs["status while paused"] = cli(daemon.env, "status")
            assert "PAUSED" in outputs["status while paused"]
            emulator.restore_key()
            # 2. Uploads and creates fail quoting the key, then polls do: watch one in `status`.
            polled = (
                "SELECT count(*) FROM orchestrator.batches "
                "WHERE state = 'submitted' AND last_error LIKE '%%received Authorization%%'"
            )
            assert wait_for(lambda: scalar(db_url, polled) > 0, timeout=60), daemon.logs()[-3000:]
            outputs["status of the job while polls fail"] = cli(daemon.env, "status", str(job_id))
            # 3. Two polls get a body httpx cannot decode (the key in it), then the database
            # refuses the next two poll writes (two crashes), then all is well.
            refuse_two_poll_writes(db_url)
            faults.clear()
            garbage = faults.add("get_batch", Garbage(gzip=True), times=2)
            assert wait_for(lambda: job_status(db_url, job_id) == "completed", timeout=120), (
                daemon.logs()[-3000:]
            )
        finally:
            daemon.stop()
        assert quoting_polls.fired > 0 and garbage.fired == 2 and faults.rules() == []
        # every request answered, with the very answer the provider wrote for it
        assert assert_results_match_provider(db_url, emulator) == 20
    outputs["status"] = cli(daemon.env, "status")
    outputs["status of the job"] = cli(daemon.env, "status", str(job_id))
    outputs["results"] = cli(daemon.env, "results", str(job_id))
    assert outputs["results"].count('"status":"succeeded"') == 20
    printed = [json.loads(line) for line in outputs["results"].splitlines() if line[:1] == "{"]
    answers = query(
        db_url,
        "SELECT custom_id, response #>> '{choices,0,message,content}' FROM orchestrator.results",
    )
    assert {r["custom_id"]: r["answer"] for r in printed} == dict(answers)
    logs = daemon.logs()
    outputs["daemon log"] = logs

    # Not one line of any output holds a piece of the key.
    for name, text in outputs.items():
        for number, line in enumerate(text.splitlines(), 1):
            assert leaks(line) == [], f"{name}, line {number}: {line}"
    # Nor does one row of any table.
    dump = table_dump(db_url)
    assert {"jobs", "batches", "events", "results", "target_state"} <= set(dump)
    for table, rows in dump.items():
        for row in rows:
            assert leaks(row) == [], f"orchestrator.{table}: {row}"

    # And the key was there to leak: the redaction marker stands where it was quoted.
    # (Every line the daemon wrote went through the logging pipeline: nothing printed around it.)
    lines = [json.loads(line) for line in logs.splitlines()]
    events = [line["event"] for line in lines]
    for event in ("target_paused", "target_resumed", "step_crashed", "job_completed"):
        assert event in events, event
    failed = [line for line in lines if line["event"] == "step_failed"]
    assert {line["step"] for line in failed if REDACTED in line["error"]} >= {
        "upload",
        "create",
        "poll",
    }
    undecodable = [line for line in failed if "could not be decoded" in line["error"]]
    assert len(undecodable) == 2 and {line["kind"] for line in undecodable} == {"transient"}
    assert any(REDACTED in row for row in dump["events"])  # batch_create_ambiguous, its error
    # The crash's traceback was logged (twice), without the frames' local variables.
    crashes = [line for line in lines if line["event"] == "step_crashed"]
    assert len(crashes) == 2 and all(crash["step"] == "poll" for crash in crashes)
    for crash in crashes:
        frames = [frame for exc in crash["exception"] for frame in exc["frames"]]
        assert frames and not any("locals" in frame for frame in frames), frames


@contextmanager
def logs_without_a_redactor() -> Iterator[io.StringIO]:
    """The daemon's log lines, as the CLI renders them (JSON) but with no secret to redact: what
    it logs must be clean at the source, not only after the redactor."""
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(level="debug", fmt="json", secrets=(), stream=out)
    try:
        yield out
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()


def run_cli(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> str:
    """An ``orchestrator`` command, in this process; its stdout and stderr."""
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", db_url)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        assert main(list(args)) == 0
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_a_key_the_provider_echoes_in_failed_lines_or_a_failed_batch_is_stored_and_shown_nowhere(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = EmulatorConfig(api_key=API_KEY, fail_custom_ids={"req-00003"})
    with logs_without_a_redactor() as log, harness(db_url, emulator_config=config) as h:
        faults = h.emulator.faults
        # Given a provider that quotes the key in the error message of every line that fails, in
        # a job's first batch and in its resubmission (a 400 that is final at once, and 500s:
        # sent again once, then final)
        echoing_lines = faults.add_batch_fault(echo_auth=True, line_500=0.5, times=2)
        lines_job = enqueue(db_url, simple_requests(20), name="lines", max_attempts=2)
        assert h.run_job(lines_job) == "completed"
        assert echoing_lines.fired == 2
        # and in the errors of a batch it fails as a whole
        faults.add_batch_fault(echo_auth=True, fail_with="invalid_request")
        failed_job = enqueue(db_url, simple_requests(5, prefix="f-"), name="failed")
        assert h.run_job(failed_job) == "failed"
        # (the requests the provider answered 500 again when they were sent again: final)
        last = scalar(
            db_url,
            "SELECT remote_batch_id FROM orchestrator.batches WHERE job_id = %s "
            "ORDER BY round DESC LIMIT 1",
            lines_job,
        )
        again_500 = {
            line["custom_id"]
            for line in h.emulator.produced(last)
            if (line.get("response") or {}).get("status_code") == 500
        }
        answered = assert_results_match_provider(db_url, h.emulator)
    logged = log.getvalue()
    outputs = {
        "status": run_cli(db_url, monkeypatch, capsys, "status"),
        **{
            f"{command} {job}": run_cli(db_url, monkeypatch, capsys, command, str(job))
            for command in ("status", "results")
            for job in (lines_job, failed_job)
        },
        "daemon log": logged,
    }

    # The key was quoted, and the redaction marker stands where it was: in the final failures
    # (the 400 and the 500s that failed twice), the errors kept for a resubmission, the failed
    # batch's remote object, its job's error, and every result of the failed job.
    marked = f"(received Authorization: Bearer {REDACTED})"
    pattern = f"%{marked}%"
    final = (
        "SELECT count(*) FROM orchestrator.results WHERE job_id = %s AND error->>'message' LIKE %s"
    )
    assert scalar(db_url, final + " AND status_code = 400", lines_job, pattern) == 1
    assert scalar(db_url, final + " AND status_code = 500", lines_job, pattern) > 0
    assert scalar(db_url, final, failed_job, pattern) == 5
    # each failure is the provider's, with the marker where the key was; the rest its answers
    server_error = "The server had an error while processing your request. Sorry about that!"
    listed = "Emulated failure: custom_id 'req-00003' is in fail_custom_ids."
    assert again_500 and failures(db_url, "job_id = %s", lines_job) == {
        ("req-00003", 400, None, f"{listed} {marked}"),
        *((custom_id, 500, None, f"{server_error} {marked}") for custom_id in again_500),
    }
    assert answered == 20 - 1 - len(again_500)
    job_error = scalar(db_url, "SELECT error FROM orchestrator.jobs WHERE id = %s", failed_job)
    assert job_error.endswith(
        f": invalid_request: The batch failed: invalid_request (injected fault). {marked}"
    )
    assert failures(db_url, "job_id = %s", failed_job) == {
        (f"f-{i:05d}", None, "invalid_request", job_error) for i in range(5)
    }
    kept = "SELECT count(*) FROM orchestrator.batch_items WHERE error->>'message' LIKE %s"
    assert scalar(db_url, kept, pattern) > 0
    assert marked in scalar(db_url, "SELECT error FROM orchestrator.jobs WHERE id = %s", failed_job)
    remote = scalar(db_url, "SELECT remote FROM orchestrator.batches WHERE job_id = %s", failed_job)
    assert remote["errors"]["data"][0]["message"].endswith(marked)
    assert marked in outputs[f"status {failed_job}"]
    assert marked in outputs[f"results {lines_job}"]
    events = [json.loads(line)["event"] for line in logged.splitlines()]
    assert "batch_failed" in events and "job_completed" in events

    # And not one row of any table, line of any output or log line holds any piece of it.
    for table, rows in table_dump(db_url).items():
        for row in rows:
            assert leaks(row) == [], f"orchestrator.{table}: {row}"
    for name, text in outputs.items():
        for number, line in enumerate(text.splitlines(), 1):
            assert leaks(line) == [], f"{name}, line {number}: {line}"
