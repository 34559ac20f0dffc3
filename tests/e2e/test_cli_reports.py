"""What a person reads: ``orchestrator results`` (JSONL, CSV, the failures, to a file) and
``orchestrator status`` (text and ``--json``), of a job run against the emulator."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import main
from orchestrator.db import queries
from orchestrator.emulator import EmulatorConfig
from tests.support import (
    API_KEY,
    assert_results_match_provider,
    chat_body,
    child_env,
    enqueue,
    enqueue_generated,
    failures,
    harness,
    listed_failure,
    query,
    scalar,
)

# Inserted in this order, which is not the order of their names.
CUSTOM_IDS = ["zulu", "alpha", "mike", "bravo", "yankee", "charlie", "golf"]
FAILING = "mike"
COLUMNS = [
    "custom_id",
    "status",
    "status_code",
    "answer",
    "error",
    "finish_reason",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost",
    "attempt",
    "batch_id",
]
MODEL = "openai/gpt-4.1-nano"
# USD per million tokens, in and out: the price the results are costed at.
PRICE_IN, PRICE_OUT = Decimal("0.1"), Decimal("0.4")


@pytest.fixture
def finished_job(db_url: str) -> int:
    """A completed job of :data:`CUSTOM_IDS`, one of which (:data:`FAILING`) failed for good."""
    config = EmulatorConfig(api_key=API_KEY, fail_custom_ids={FAILING})
    query(
        db_url,
        "INSERT INTO orchestrator.prices (model, valid_from, input_per_mtok, output_per_mtok) "
        "VALUES (%s, '2020-01-01', %s, %s) RETURNING id",
        MODEL,
        PRICE_IN,
        PRICE_OUT,
    )
    with harness(db_url, emulator_config=config) as h:
        job_id = enqueue(
            db_url,
            [{"custom_id": c, "body": chat_body(c)} for c in CUSTOM_IDS],
            name="reports",
            max_attempts=1,
        )
        assert h.run_job(job_id) == "completed"
        # the six answers are the provider's, each under its own custom_id; the seventh its refusal
        assert assert_results_match_provider(db_url, h.emulator) == len(CUSTOM_IDS) - 1
    assert failures(db_url) == {listed_failure(FAILING)}
    return job_id


def plain(value: Decimal) -> str:
    """A decimal in plain notation, without trailing zeros."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def stored(db_url: str, job_id: int) -> dict[str, dict[str, Any]]:
    """The results as stored, by custom_id: what the outputs must say."""
    rows = query(
        db_url,
        "SELECT custom_id, succeeded, status_code, response #>> '{choices,0,message,content}', "
        "error ->> 'message', response #>> '{choices,0,finish_reason}', prompt_tokens, "
        "completion_tokens, cached_tokens, reasoning_tokens, total_tokens, batch_id "
        "FROM orchestrator.results WHERE job_id = %s",
        job_id,
    )
    keys = ["succeeded", "status_code", "answer", "error", "finish_reason", "prompt_tokens"]
    keys += ["completion_tokens", "cached_tokens", "reasoning_tokens", "total_tokens", "batch_id"]
    results = {r[0]: dict(zip(keys, r[1:], strict=True)) for r in rows}
    for r in results.values():
        r["cost"] = (r["prompt_tokens"] * PRICE_IN + r["completion_tokens"] * PRICE_OUT) / 10**6
    return results


def test_results_as_csv_and_jsonl_in_insertion_order_the_failures_and_to_a_file(
    db_url: str, cli: None, finished_job: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = stored(db_url, finished_job)
    assert not results[FAILING]["succeeded"] and results[FAILING]["error"]
    _, status_code, _, message = listed_failure(FAILING)
    assert (results[FAILING]["status_code"], results[FAILING]["error"]) == (status_code, message)
    assert sum(r["succeeded"] for r in results.values()) == len(CUSTOM_IDS) - 1

    # CSV: a header row, then one row per request in the order they were inserted
    code, out, err = run(capsys, "results", str(finished_job), "--format", "csv")
    assert (code, err) == (0, "")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == COLUMNS
    table = [dict(zip(COLUMNS, row, strict=True)) for row in rows[1:]]
    assert [r["custom_id"] for r in table] == CUSTOM_IDS
    for r in table:
        want = results[r["custom_id"]]
        assert r["status"] == ("succeeded" if want["succeeded"] else "failed")
        assert r["answer"] == (want["answer"] or "")
        assert r["error"] == (want["error"] or "")
        assert r["status_code"] == str(want["status_code"])
        assert r["total_tokens"] == str(want["total_tokens"])
        assert r["batch_id"] == str(want["batch_id"])
        assert r["model"] == MODEL  # a failure's too: its request's
        assert r["cost"] == plain(want["cost"])
    assert all(r["answer"] for r in table if r["custom_id"] != FAILING)

    # JSONL (the default): the same rows, typed
    code, out, err = run(capsys, "results", str(finished_job))
    assert (code, err) == (0, "")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["custom_id"] for r in lines] == CUSTOM_IDS
    for r in lines:
        assert list(r) == COLUMNS
        want = results[r["custom_id"]]
        assert r["status"] == ("succeeded" if want["succeeded"] else "failed")
        for key in ("answer", "error", "finish_reason", "status_code", "batch_id"):
            assert r[key] == want[key], key
        for key in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"):
            assert r[key] == want[key] and isinstance(r[key], int), key
        assert r["total_tokens"] == want["total_tokens"] and r["model"] == MODEL
        # the cost: an exact decimal string, at the price in force
        assert isinstance(r["cost"], str) and Decimal(r["cost"]) == want["cost"]
        assert r["cost"] == plain(want["cost"])
    succeeded = [r for r in lines if r["status"] == "succeeded"]
    assert all(r["finish_reason"] and r["total_tokens"] and r["cost"] != "0" for r in succeeded)
    assert next(r for r in lines if r["custom_id"] == FAILING)["answer"] is None

    # --failed: only the request that failed, in both formats
    code, out, _ = run(capsys, "results", str(finished_job), "--failed")
    assert code == 0
    assert [json.loads(line)["custom_id"] for line in out.splitlines()] == [FAILING]
    code, out, _ = run(capsys, "results", str(finished_job), "--failed", "--format", "csv")
    assert code == 0
    assert [row[0] for row in csv.reader(io.StringIO(out))] == ["custom_id", FAILING]

    # --output FILE: the same text, in the file (made anew over what it held), none on stdout
    code, csv_out, _ = run(capsys, "results", str(finished_job), "--format", "csv")
    target = tmp_path / "results.csv"
    target.write_text("an older, longer file\n" * 100)
    code, out, err = run(
        capsys, "results", str(finished_job), "--format", "csv", "--output", str(target)
    )
    assert (code, out, err) == (0, "", "")
    assert target.read_text(encoding="utf-8") == csv_out
    jsonl = tmp_path / "results.jsonl"
    assert run(capsys, "results", str(finished_job), "--output", str(jsonl))[0] == 0
    assert [json.loads(line)["custom_id"] for line in jsonl.read_text().splitlines()] == CUSTOM_IDS

    # A directory that does not exist, or a job that does not: one line, exit 2, no file
    missing = tmp_path / "no such dir" / "out.csv"
    code, out, err = run(capsys, "results", str(finished_job), "--output", str(missing))
    assert code == 2 and out == ""
    assert err.splitlines() == [f"orchestrator: cannot write {missing}: No such file or directory"]
    code, out, err = run(capsys, "results", "999", "--output", str(tmp_path / "none.csv"))
    assert (code, out, err) == (
        2,
        "",
        "orchestrator: no job 999; list the jobs with orchestrator status\n",
    )
    assert not (tmp_path / "none.csv").exists()


def test_results_of_a_job_not_run_yet_and_answers_with_control_characters(
    db_url: str, cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a job not planned yet, and an answer whose text holds an escape and line breaks
    job_id = enqueue(db_url, [{"custom_id": c, "body": chat_body(c)} for c in ("b", "a")])
    answer = "line one\n\x1b[31mred\x1b[0m\tand\r\nmore \x9b2J"
    response = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
    query(
        db_url,
        "INSERT INTO orchestrator.results (job_id, custom_id, batch_id, succeeded, status_code, "
        "response) VALUES (%s, 'a', 0, true, 200, %s::jsonb) RETURNING job_id",
        job_id,
        json.dumps(response),
    )
    # Then JSONL says it exactly, with every control character escaped
    code, out, _ = run(capsys, "results", str(job_id))
    assert code == 0
    assert not any(c in out for c in "\x1b\r\x9b\t")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["custom_id"], r["status"]) for r in lines] == [("b", "pending"), ("a", "succeeded")]
    assert lines[1]["answer"] == answer
    # and CSV keeps its line breaks and tabs (quoted) but shows the escapes escaped
    code, out, _ = run(capsys, "results", str(job_id), "--format", "csv")
    assert not any(c in out for c in "\x1b\x9b")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[1]["answer"] == answer.replace("\x1b", "\\x1b").replace("\x9b", "\\x9b")
    # and --failed lists nothing: nothing has failed or been given up yet
    assert run(capsys, "results", str(job_id), "--failed") == (0, "", "")


@pytest.mark.parametrize("read", ["request_results", "job_requests"])
def test_a_jobs_rows_are_read_through_a_server_side_cursor(db_url: str, read: str) -> None:
    """``results`` (request_results) and planning (job_requests) hold one page at a time, not
    the whole job (planning fetched every row at once before)."""
    from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work

    job_id = enqueue_generated(db_url, 3 * queries.FETCH_ROWS + 5)
    engine = make_engine(db_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            rows = getattr(queries, read)(s, job_id)
            first = next(iter(rows))
            open_cursors = s.execute(queries.sa.text("SELECT count(*) FROM pg_cursors")).scalar()
            seen = 1 + sum(1 for _ in rows)
        assert first.custom_id == "r000001" and seen == 3 * queries.FETCH_ROWS + 5
        assert open_cursors == 1
    finally:
        engine.dispose()


def money_text(cost: Decimal) -> str:
    """Dollars as status shows them: six decimals, or all of them if there are more."""
    six = f"${cost:.6f}"
    return six if Decimal(six[1:]) == cost else f"${cost.normalize():f}"


def _cost(db_url: str, job_id: int) -> Decimal:
    value = scalar(db_url, "SELECT cost FROM orchestrator.jobs WHERE id = %s", job_id)
    assert isinstance(value, Decimal) and value > 0
    return value


def test_status_shows_progress_age_duration_tokens_and_cost_and_says_it_as_json(
    db_url: str, cli: None, finished_job: int, capsys: pytest.CaptureFixture[str]
) -> None:
    pending = enqueue(db_url, [{"custom_id": "x", "body": chat_body("x")}], name="waiting")
    cost = _cost(db_url, finished_job)
    tokens = scalar(
        db_url, "SELECT total_tokens FROM orchestrator.jobs WHERE id = %s", finished_job
    )
    # the job's tokens are its results'; its cost the provider's own figure (FastRouter reports
    # one): the emulator's list price for the model, the very PRICE_IN and PRICE_OUT the results
    # are costed at, with its 50 % batch discount, to the last digit
    results = stored(db_url, finished_job).values()
    assert tokens == sum(r["total_tokens"] for r in results)
    assert scalar(
        db_url, "SELECT cost_source FROM orchestrator.jobs WHERE id = %s", finished_job
    ) == ("provider")
    assert cost == sum(r["cost"] for r in results) / 2

    # The text: a table of jobs, newest first, then open batches, targets and daemons
    code, out, err = run(capsys, "status")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == [
        "job", "name", "status", "progress", "requests", "ok", "failed", "batches", "age",
        "duration", "tokens", "cost", "error",
    ]  # fmt: skip
    # (a job counts its requests when it is planned)
    assert lines[1].split()[:8] == [str(pending), "waiting", "pending", "0%", "0", "0", "0", "0"]
    assert lines[1].split()[-3:] == ["-", "0", "-"]  # no duration, tokens or cost yet
    done = lines[2].split()
    assert done[:8] == [str(finished_job), "reports", "completed", "100%", "7", "6", "1", "1"]
    assert done[-2:] == [f"{tokens:,}", money_text(cost)]
    assert "open batches: none" in out and "daemons running: 0" in out

    # --json: the same, machine-readable; cost an exact decimal string, times ISO 8601
    code, out, err = run(capsys, "status", "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert set(report) == {
        "now", "jobs", "open_batches", "pending_not_served", "targets", "capacity",
        "stuck_batches", "daemons",
    }  # fmt: skip
    assert [j["id"] for j in report["jobs"]] == [pending, finished_job]
    waiting, job = report["jobs"]
    assert job["status"] == "completed" and job["name"] == "reports"
    assert job["progress"] == {"done": 7, "total": 7, "percent": 100.0}
    counts = ("request_count", "succeeded_count", "failed_count", "batch_count")
    assert [job[k] for k in counts] == [7, 6, 1, 1]
    assert job["cost"] == plain(cost) and Decimal(job["cost"]) == cost
    assert job["total_tokens"] == tokens
    assert job["prompt_tokens"] + job["completion_tokens"] == tokens
    now = dt.datetime.fromisoformat(report["now"])
    created = dt.datetime.fromisoformat(job["created_at"])
    started = dt.datetime.fromisoformat(job["started_at"])
    finished = dt.datetime.fromisoformat(job["finished_at"])
    # (the harness's clock started a moment before the job was inserted: no order with created)
    assert created.tzinfo is not None and started < finished
    assert isinstance(job["age_seconds"], float) and job["age_seconds"] >= 0
    assert job["age_seconds"] == pytest.approx(max((now - created).total_seconds(), 0), abs=0.01)
    assert job["duration_seconds"] == pytest.approx((finished - started).total_seconds(), abs=0.01)
    assert waiting["progress"] == {"done": 0, "total": 0, "percent": 0.0}
    assert (waiting["status"], waiting["cost"], waiting["started_at"]) == ("pending", None, None)
    assert waiting["duration_seconds"] is None
    assert (report["open_batches"], report["stuck_batches"], report["daemons"]) == ({}, [], [])
    assert report["pending_not_served"] == {}  # the pending job's target is known
    assert isinstance(report["targets"], list)

    # One job: the same, and its batches
    code, out, err = run(capsys, "status", str(finished_job), "--json")
    assert (code, err) == (0, "")
    one = json.loads(out)
    assert {k: v for k, v in one.items() if k not in ("batches", "age_seconds")} == {
        k: v for k, v in job.items() if k != "age_seconds"
    }
    (batch,) = one["batches"]
    assert batch["state"] == "done" and batch["progress"] == {"done": 7, "total": 7}
    assert [batch[k] for k in counts[:3]] == [7, 6, 1]
    assert batch["cost"] == plain(cost)
    assert batch["remote_batch_id"] and batch["id"] == one["batches"][0]["id"]
    code, out, _ = run(capsys, "status", str(finished_job))
    assert code == 0
    assert f"job {finished_job} (reports): completed, target fastrouter" in out
    assert "progress 100% (7 of 7 requests in its batches), 6 succeeded, 1 failed of 7" in out
    assert f"tokens {tokens:,} (" in out and f"cost {money_text(cost)}\n" in out
    assert run(capsys, "status", "999", "--json") == (
        2,
        "",
        "orchestrator: no job 999; list the jobs with orchestrator status\n",
    )


def test_status_of_a_running_job_counts_what_the_provider_says_is_done(
    db_url: str, cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a running job of 100 requests in three batches: one done, one the provider is
    # running (35 of 40 done, as it counts them), one planned; and a failed batch, not counted
    job_id = enqueue_generated(db_url, 100)
    query(
        db_url, "UPDATE orchestrator.jobs SET status = 'running' WHERE id = %s RETURNING id", job_id
    )
    batches = [
        ("done", 30, {"total": 30, "completed": 29, "failed": 1}),
        ("submitted", 40, {"total": 40, "completed": 33, "failed": 2}),
        ("planned", 30, None),
        ("failed", 30, {"total": 30, "completed": 0, "failed": 30}),
    ]
    for state, n, counts in batches:
        query(
            db_url,
            "INSERT INTO orchestrator.batches (job_id, target, endpoint, request_count, bytes, "
            "next_run_at, state, request_counts) VALUES (%s, 'fastrouter', "
            "'/v1/chat/completions', %s, 0, now(), %s, %s::jsonb) RETURNING id",
            job_id,
            n,
            state,
            json.dumps(counts) if counts else None,
        )
    code, out, _ = run(capsys, "status", "--json")
    assert code == 0
    (job,) = json.loads(out)["jobs"]
    assert job["progress"] == {"done": 65, "total": 100, "percent": 65.0}
    assert json.loads(out)["open_batches"] == {"planned": 1, "submitted": 1}
    code, out, _ = run(capsys, "status")
    assert out.splitlines()[1].split()[3] == "65%"
    assert "open batches: " in out
    code, out, _ = run(capsys, "status", str(job_id), "--json")
    assert [b["progress"] for b in json.loads(out)["batches"]] == [
        {"done": 30, "total": 30},
        {"done": 35, "total": 40},
        {"done": 0, "total": 30},
        {"done": 30, "total": 30},
    ]


def test_status_and_results_piped_into_head_stop_quietly(db_url: str) -> None:
    # Given more jobs, and more results, than a pipe holds
    query(
        db_url,
        "INSERT INTO orchestrator.jobs (name) SELECT 'job ' || n FROM generate_series(1, 2000) n "
        "RETURNING id",
    )
    job_id = enqueue_generated(db_url, 5000)
    env = child_env({"PATH": "/usr/bin:/bin", "ORCHESTRATOR_DATABASE_URL": db_url})
    for command, first in (
        ("status --limit 2000", "job"),
        (f"results {job_id}", '{"custom_id":"r000001"'),
        (f"results {job_id} --format csv", "custom_id,status"),
    ):
        # When a reader takes the first line and goes away
        pipeline = f"set -o pipefail; {sys.executable} -m orchestrator {command} | head -1"
        done = subprocess.run(
            ["bash", "-c", pipeline],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        # Then the command stops without a word: no traceback, exit 0
        assert (done.returncode, done.stderr) == (0, ""), command
        assert done.stdout.startswith(first) and done.stdout.count("\n") == 1, command


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_output(command: str) -> str:
    """What the README shows ``command`` printing (its block after ``$ command``)."""
    text = README.read_text()
    start = text.index(f"```\n$ {command}\n") + len(f"```\n$ {command}\n")
    return text[start : text.index("```", start)]


def test_the_readme_shows_status_and_results_as_they_are_printed(
    db_url: str, cli: None, finished_job: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # The table's header and the lines after it
    shown = readme_output("orchestrator status").splitlines()
    code, out, _ = run(capsys, "status")
    assert code == 0
    assert out.splitlines()[0].split() == shown[0].split()
    cells = [len(re.split(r"\s{2,}", line)) for line in (shown[1], out.splitlines()[1])]
    assert cells[0] == cells[1] == len(shown[0].split()) - 1  # all but an error
    assert "open batches: none" in shown and shown[-1].startswith("daemons running: ")
    # the JSON's fields, at every level
    documented = json.loads(
        readme_output("orchestrator status --json").replace(",\n    ...\n", "\n")
    )
    code, out, _ = run(capsys, "status", "--json")
    printed = json.loads(out)
    assert set(documented) == set(printed)
    assert set(documented["jobs"][0]) == set(printed["jobs"][0])
    assert set(documented["jobs"][0]["progress"]) == set(printed["jobs"][0]["progress"])
    assert documented["daemons"] == printed["daemons"] == []  # the demo's daemon had stopped
    # the CSV's header, and rows as wide
    rows = list(
        csv.reader(io.StringIO(readme_output("orchestrator results 1 --format csv | head -4")))
    )
    code, out, _ = run(capsys, "results", str(finished_job), "--format", "csv")
    assert rows[0] == next(csv.reader(io.StringIO(out))) == COLUMNS
    assert len(rows) == 4 and all(len(row) == len(COLUMNS) for row in rows)
