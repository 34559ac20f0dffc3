"""The command line, as a user types it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import structlog

from orchestrator.cli import main
from tests.support import assert_results_match_provider, harness, query, scalar


def test_enqueue_a_jsonl_file_run_it_and_print_the_results(
    db_url: str, cli: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "requests.jsonl"
    source.write_text(
        "".join(
            json.dumps(
                {
                    "custom_id": f"q{i}",
                    "provider": "openai",
                    "body": {
                        "model": "openai/gpt-4.1-nano",
                        "messages": [{"role": "user", "content": f"question {i}"}],
                    },
                }
            )
            + "\n"
            for i in range(7)
        )
    )
    assert main(["enqueue", str(source), "--name", "from a file"]) == 0
    job_id = int(capsys.readouterr().out.strip())
    assert (
        scalar(db_url, "SELECT name FROM orchestrator.jobs WHERE id = %s", job_id) == "from a file"
    )
    with harness(db_url) as h:
        assert h.run_job(job_id) == "completed"
        assert assert_results_match_provider(db_url, h.emulator) == 7
    assert main(["results", str(job_id)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["custom_id"] for r in lines] == [f"q{i}" for i in range(7)]
    assert all(r["status"] == "succeeded" and r["answer"] for r in lines)
    # each printed answer is the provider's answer to that very request
    answers = query(
        db_url,
        "SELECT custom_id, response #>> '{choices,0,message,content}' FROM orchestrator.results",
    )
    assert {r["custom_id"]: r["answer"] for r in lines} == dict(answers)
    assert main(["status", str(job_id)]) == 0
    assert "completed" in capsys.readouterr().out


def test_enqueue_refuses_a_bad_file_naming_the_line(
    db_url: str, cli: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"custom_id": "a", "body": {}}\n{"custom_id": "a", "body": {}}\n')
    assert main(["enqueue", str(source)]) == 1
    assert "bad.jsonl:2: custom_id 'a' appears twice" in capsys.readouterr().err
    assert query(db_url, "SELECT id FROM orchestrator.jobs") == []


def test_cancel_and_unknown_jobs(
    db_url: str, cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cancel", "999"]) == 2
    assert "no job 999" in capsys.readouterr().err
    job_id = scalar(db_url, "INSERT INTO orchestrator.jobs (name) VALUES ('x') RETURNING id")
    assert main(["cancel", str(job_id)]) == 0
    assert scalar(db_url, "SELECT cancel_requested_at IS NOT NULL FROM orchestrator.jobs") is True


def test_a_missing_database_url_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        assert main(["migrate"]) == 2
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    assert "no database configured: set ORCHESTRATOR_DATABASE_URL" in capsys.readouterr().err


def test_status_prints_names_and_errors_with_their_control_characters_escaped(
    db_url: str, cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a job whose name and error hold an ANSI escape and a line break that forge a line
    forged = "\x1b[32mok\nforged: job 99 completed\r"
    job_id = scalar(db_url, "INSERT INTO orchestrator.jobs (name) VALUES (%s) RETURNING id", forged)
    query(
        db_url,
        "UPDATE orchestrator.jobs SET status = 'failed', error = %s WHERE id = %s RETURNING id",
        "provider said:\x1b]0;pwned\x07\nforged: all good",
        job_id,
    )
    # When a person reads the status, of all jobs and of that one
    assert main(["status"]) == 0
    assert main(["status", str(job_id)]) == 0
    out = capsys.readouterr().out
    # Then no control character reaches the terminal and no line was forged
    assert not any(c in out for c in "\x1b\r\x07")
    assert not any(line.startswith("forged") for line in out.splitlines())
    assert "\\x1b[32mok\\nforged: job 99 completed\\r" in out
    assert "error: provider said:\\x1b]0;pwned\\x07\\nforged: all good" in out
