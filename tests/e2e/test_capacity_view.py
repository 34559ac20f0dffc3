"""What a person and a dashboard see of capacity: ``orchestrator status`` (its capacity lines and a
job's batches waiting for capacity), ``orchestrator capacity`` (and ``--forget``) and the capacity
gauges of ``/metrics``, every figure computed by hand here.

The batches in flight are a real job's, run by the daemon against the emulator to ``submitted``;
the capacity columns, the batches waiting and the learned limits are then written with plain SQL,
as admission would have left them in a user's database.

The settings: target ``fastrouter`` with a budget of 5,000 tokens for NANO, 10,000 for any other
model (``"*"``), at most 4 batches in flight. Then:

* NANO: two batches in flight of 1,200 and 800 estimated tokens (2,000); learned limit 3,000
  (lower than the configured 5,000: the learned one is in force); two batches waiting (700 and 300
  tokens), since 300 s and 120 s ago.
* GPT4O: no batch in flight, one waiting (400 tokens) since 60 s ago; budget 10,000 from ``"*"``.
* target ``old`` (no longer configured): a learned limit of 9,000 for GPT4O, nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.cli import main
from orchestrator.db import queries
from orchestrator.emulator import EmulatorConfig
from tests.support import (
    API_KEY,
    Harness,
    count,
    enqueue,
    harness,
    plan_of,
    query,
    recorded_session,
    scalar,
    settings_for,
)
from tests.support import simple_requests as requests

NANO = "openai/gpt-4.1-nano"
GPT4O = "openai/gpt-4o"
BUDGETS = {NANO: 5_000, "*": 10_000}
WORDS = (
    f"Enqueued token limit reached for {NANO} in organization org-abc. Limit: 3,000 enqueued "
    "tokens. Please try again once some in_progress batches have been completed."
)
LEARNED_AT = "2026-11-30 12:00:00+00"
TOML = """
[targets.fastrouter]
max_batches_in_flight = 4
[targets.fastrouter.enqueued_token_budgets]
"openai/gpt-4.1-nano" = 5000
"*" = 10000
"""


@pytest.fixture
def cli(cli: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The shared ``cli`` fixture, with this module's settings file."""
    config = tmp_path / "orchestrator.toml"
    config.write_text(TOML)
    monkeypatch.setenv("ORCHESTRATOR_CONFIG", str(config))
    return cli


@pytest.fixture
def h(db_url: str) -> Iterator[Harness]:
    settings = settings_for(
        db_url, enqueued_token_budgets=BUDGETS, max_batches_in_flight=4, max_requests_per_file=2
    )
    config = EmulatorConfig(api_key=API_KEY)
    with harness(db_url, http=False, settings=settings, emulator_config=config) as running:
        running.daemon.metrics_fresh_seconds = 0.0  # every scrape reads the database again
        yield running


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()  # not the daemon's log lines
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def in_flight_job(h: Harness) -> tuple[int, list[int]]:
    """A job of 4 requests in two batches, run to ``submitted``, as 1,200 and 800 tokens of NANO."""
    job_id = enqueue(h.db_url, requests(4), name="busy")
    h.run_until(lambda: count(h.db_url, "batches", "state = 'submitted'") == 2, seconds=1)
    ids = [r[0] for r in query(h.db_url, "SELECT id FROM orchestrator.batches ORDER BY id")]
    for batch_id, tokens in zip(ids, (1200, 800), strict=True):
        query(
            h.db_url,
            "UPDATE orchestrator.batches SET model = %s, estimated_tokens = %s WHERE id = %s "
            "RETURNING id",
            NANO,
            tokens,
            batch_id,
        )
    return job_id, ids


def waiting_batch(db_url: str, job_id: int, model: str, tokens: int, ago: float, why: str) -> int:
    """A batch uploaded and held back by admission since ``ago`` seconds before the database's
    now."""
    return int(
        scalar(
            db_url,
            "INSERT INTO orchestrator.batches (job_id, target, endpoint, request_count, bytes, "
            "next_run_at, state, input_file_id, model, estimated_tokens, waiting_since, "
            "waiting_reason) VALUES (%s, 'fastrouter', '/v1/chat/completions', 1, 100, now(), "
            "'uploaded', 'file-x', %s, %s, now() - make_interval(secs => %s), %s) RETURNING id",
            job_id,
            model,
            tokens,
            ago,
            f"waiting_for_capacity: {why}",
        )
    )


def learned(db_url: str, target: str, model: str, tokens: int, words: str | None) -> None:
    query(
        db_url,
        "INSERT INTO orchestrator.capacity (target, model, learned_tokens, learned_at, message) "
        "VALUES (%s, %s, %s, %s, %s) RETURNING target",
        target,
        model,
        tokens,
        LEARNED_AT,
        words,
    )


def the_scene(h: Harness) -> tuple[int, list[int], list[int]]:
    """The module docstring's scene: the job, its batches in flight, its batches waiting."""
    job_id, flying = in_flight_job(h)
    waiting = [
        waiting_batch(h.db_url, job_id, NANO, 700, 300, "nano over its budget"),
        waiting_batch(h.db_url, job_id, NANO, 300, 120, "another reason"),
        waiting_batch(h.db_url, job_id, GPT4O, 400, 60, "gpt-4o waits too"),
    ]
    learned(h.db_url, "fastrouter", NANO, 3_000, WORDS)
    learned(h.db_url, "old", GPT4O, 9_000, None)
    return job_id, flying, waiting


def stamp(db_url: str, sql: str, *params: Any) -> str:
    """A time from the database as the CLI prints it."""
    value = scalar(db_url, sql, *params)
    assert isinstance(value, dt.datetime)
    return f"{value:%Y-%m-%d %H:%M:%S}"


def five_minutes(text: str) -> str:
    """The age the text gives a batch that began waiting 300 s ago (a second more on a slow run)."""
    found = re.search(r"\b5m [0-9]s\b", text)
    assert found, text
    return found.group()


def one_minute(text: str) -> str:
    found = re.search(r"\b1m [0-9]s\b", text)
    assert found, text
    return found.group()


def test_status_shows_the_budget_in_force_what_is_in_flight_and_what_waits(
    h: Harness, cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id, flying, waiting = the_scene(h)
    learned_at = stamp(
        h.db_url, "SELECT learned_at FROM orchestrator.capacity WHERE model = %s", NANO
    )
    nano_since = stamp(
        h.db_url, "SELECT waiting_since FROM orchestrator.batches WHERE id = %s", waiting[0]
    )
    gpt_since = stamp(
        h.db_url, "SELECT waiting_since FROM orchestrator.batches WHERE id = %s", waiting[2]
    )

    # The text: one line per target (its batches in flight) and per model with a budget or a wait
    code, out, err = run(capsys, "status")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    capacity = [line for line in lines if line.startswith("target ")]
    assert capacity[0] == "target fastrouter: 2 batches in flight of at most 4"
    nano, gpt = capacity[1:3]
    # the learned 3,000 is lower than the configured 5,000: it is the one in force
    assert nano == (
        f"target fastrouter, model {NANO}: budget 3,000 tokens (learned 3,000 at {learned_at}), "
        "2,000 tokens in flight in 2 batches, 2 batches waiting_for_capacity, the oldest for "
        f"{five_minutes(nano)} (since {nano_since[11:]}): nano over its budget"
    )  # (the oldest one's reason)
    assert gpt == (
        f"target fastrouter, model {GPT4O}: budget 10,000 tokens (configured), nothing in "
        f"flight, 1 batch waiting_for_capacity, the oldest for {one_minute(gpt)} (since "
        f"{gpt_since[11:]}): gpt-4o waits too"
    )
    # a learned limit of a target no longer configured is a budget too
    assert capacity[3] == (
        f"target old, model {GPT4O}: budget 9,000 tokens (learned 9,000 at {learned_at}), "
        "nothing in flight, none waiting"
    )
    assert len(capacity) == 4
    # the job's line, under the table: its 3 waiting batches, and the least of their reasons
    (job_line,) = [line for line in lines if line.startswith(f"job {job_id}: ")]
    assert job_line == (
        f"job {job_id}: waiting_for_capacity: 3 batches, the oldest for {five_minutes(job_line)} "
        f"(since {nano_since[11:]}): another reason"
    )
    # the view job_summary says the same
    assert query(
        h.db_url,
        "SELECT waiting_for_capacity, waiting_reason FROM orchestrator.job_summary "
        "WHERE job_id = %s",
        job_id,
    ) == [(3, "waiting_for_capacity: another reason")]

    # --json: the same figures
    code, out, err = run(capsys, "status", "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    (job,) = report["jobs"]
    assert (job["waiting_for_capacity"], job["waiting_reason"]) == (
        3,
        "waiting_for_capacity: another reason",
    )
    fastrouter, old = report["capacity"]
    assert {k: v for k, v in fastrouter.items() if k != "models"} == {
        "target": "fastrouter",
        "batches_in_flight": 2,
        "max_batches_in_flight": 4,
        "configured_default": 10_000,
    }
    nano_json, gpt_json = fastrouter["models"]
    assert nano_json | {"oldest_waiting_since": None, "learned": None} == {
        "model": NANO,
        "budget": {"tokens": 3_000, "source": "learned"},
        "configured_tokens": 5_000,
        "learned": None,
        "in_flight_tokens": 2_000,
        "in_flight_batches": 2,
        "waiting_batches": 2,
        "oldest_waiting_since": None,
        "waiting_reason": "waiting_for_capacity: nano over its budget",
    }
    assert nano_json["learned"]["tokens"] == 3_000 and nano_json["learned"]["message"] == WORDS
    assert dt.datetime.fromisoformat(nano_json["learned"]["at"]) == dt.datetime(
        2026, 11, 30, 12, tzinfo=dt.UTC
    )
    assert gpt_json["budget"] == {"tokens": 10_000, "source": "configured"}
    assert (gpt_json["in_flight_tokens"], gpt_json["waiting_batches"]) == (0, 1)
    assert old["models"][0]["budget"] == {"tokens": 9_000, "source": "learned"}
    assert old["max_batches_in_flight"] is None and old["configured_default"] is None

    # One job: its waiting line, and each batch's model, estimate and wait
    code, out, _ = run(capsys, "status", str(job_id))
    assert code == 0
    assert (
        f"\nwaiting_for_capacity: 3 batches, the oldest for {five_minutes(out)} (since "
        f"{nano_since[11:]}): another reason\n"
    ) in out
    code, out, _ = run(capsys, "status", str(job_id), "--json")
    one = json.loads(out)
    assert one["waiting_for_capacity"] == 3
    assert [(b["id"], b["model"], b["estimated_tokens"]) for b in one["batches"]] == [
        (flying[0], NANO, 1200),
        (flying[1], NANO, 800),
        (waiting[0], NANO, 700),
        (waiting[1], NANO, 300),
        (waiting[2], GPT4O, 400),
    ]
    assert [b["waiting_reason"] is not None for b in one["batches"]] == [False] * 2 + [True] * 3

    # When admission lets them through, nothing waits and the job's line is gone
    query(
        h.db_url,
        "UPDATE orchestrator.batches SET state = 'creating', waiting_since = NULL, "
        "waiting_reason = NULL WHERE state = 'uploaded' RETURNING id",
    )
    code, out, _ = run(capsys, "status")
    assert f"job {job_id}: " not in out and "waiting_for_capacity" not in out
    assert "target fastrouter: 5 batches in flight of at most 4" in out
    assert (
        f"target fastrouter, model {NANO}: budget 3,000 tokens (learned 3,000 at {learned_at}), "
        "3,000 tokens in flight in 4 batches, none waiting"
    ) in out


def test_status_says_nothing_of_capacity_when_there_is_none(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # no budget configured or learned, no max_batches_in_flight, nothing waiting
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", db_url)
    try:
        code, out, _ = run(capsys, "status")
        assert code == 0 and "target " not in out
        code, out, _ = run(capsys, "status", "--json")
        assert json.loads(out)["capacity"] == []
        code, out, _ = run(capsys, "capacity")
        assert out == "no budget configured or learned, and nothing in flight or waiting\n"
        code, out, _ = run(capsys, "capacity", "--json")
        assert json.loads(out)["targets"] == [
            {
                "target": name,
                "batches_in_flight": 0,
                "max_batches_in_flight": None,
                "configured_default": None,
                "models": [],
            }
            for name in ("fastrouter", "openai")
        ]
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_the_capacity_command_lists_budgets_and_forgets_a_learned_limit(
    h: Harness, cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    the_scene(h)
    learned_at = stamp(
        h.db_url, "SELECT learned_at FROM orchestrator.capacity WHERE model = %s", NANO
    )

    code, out, err = run(capsys, "capacity")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert cells(lines[0]) == [
        "target", "model", "budget", "from", "configured", "learned", "learned at", "in flight",
        "batches", "waiting", "waiting since",
    ]  # fmt: skip
    rows = [cells(line) for line in lines[1:5]]
    assert rows[0][:10] == [
        "fastrouter", NANO, "3,000", "learned", "5,000", "3,000", learned_at, "2,000", "2", "2",
    ]  # fmt: skip
    assert rows[1][:10] == [
        "fastrouter", GPT4O, "10,000", "configured", "10,000", "-", "-", "0", "0", "1",
    ]  # fmt: skip
    assert rows[2] == [
        "old",
        GPT4O,
        "9,000",
        "learned",
        "-",
        "9,000",
        learned_at,
        "0",
        "0",
        "0",
        "-",
    ]
    assert rows[3] == ["fastrouter", "*", "10,000", "configured", "10,000", *["-"] * 6]
    assert lines[5:] == [
        "target fastrouter: 2 batches in flight (at most 4)",
        f"target fastrouter, model {NANO}: learned from {WORDS}",
        f"target fastrouter, model {NANO}: 2 batches waiting_for_capacity: nano over its budget",
        f"target fastrouter, model {GPT4O}: 1 batch waiting_for_capacity: gpt-4o waits too",
        f"target old, model {GPT4O}: learned from (no message)",
    ]
    code, out, _ = run(capsys, "capacity", "--target", "old", "--json")
    (old,) = json.loads(out)["targets"]
    assert [(m["model"], m["learned"]["tokens"]) for m in old["models"]] == [(GPT4O, 9_000)]

    # --forget: the learned limit is deleted, with an event, and the configured budget is in force
    code, out, err = run(capsys, "capacity", "--forget", NANO)
    assert code == 0
    # (stderr: the event's log line, as every command that records one writes it)
    assert json.loads(err)["event"] == "capacity_forgotten"
    assert out == (
        f"target fastrouter, model {NANO}: forgot the learned limit of 3,000 tokens (learned "
        f"{learned_at}); the budget in force is now 5,000 tokens (configured)\n"
    )
    assert count(h.db_url, "capacity", "model = %s", NANO) == 0
    (detail,) = query(
        h.db_url, "SELECT detail FROM orchestrator.events WHERE kind = 'capacity_forgotten'"
    )[0]
    assert detail["target"] == "fastrouter" and detail["model"] == NANO
    assert (detail["learned_tokens"], detail["message"]) == (3_000, WORDS)
    code, out, _ = run(capsys, "status")
    assert f"target fastrouter, model {NANO}: budget 5,000 tokens (configured), 2,000 " in out
    # a target no longer configured: its learned limit can be forgotten, and then it has none
    code, out, _ = run(capsys, "capacity", "--forget", GPT4O, "--target", "old", "--json")
    assert code == 0
    assert json.loads(out)["budget"] is None and json.loads(out)["forgotten"]["tokens"] == 9_000

    # Mistakes: one line, exit 2, nothing deleted
    learned(h.db_url, "fastrouter", GPT4O, 7_000, None)
    learned(h.db_url, "old", GPT4O, 8_000, None)
    for args, says in [
        (("--forget", NANO), f"nothing learned for model '{NANO}'; orchestrator capacity lists"),
        (
            ("--forget", NANO, "--target", "fastrouter"),
            f"nothing learned for model '{NANO}' on target fastrouter;",
        ),
        (("--forget", GPT4O), "has a limit learned on targets fastrouter, old; say which with"),
        (("--forget", GPT4O, "--target", "nope"), "unknown target 'nope' (configured: "),
        (("--target", "nope"), "unknown target 'nope' (configured: "),
    ]:
        code, out, err = run(capsys, "capacity", *args)
        assert (code, out) == (2, ""), args
        assert err.startswith("orchestrator: ") and says in err and err.count("\n") == 1, err
    assert count(h.db_url, "capacity") == 2


def scrape(h: Harness) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The daemon's ``/metrics`` text, as Prometheus' parser reads it."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(h.deps.metrics.render().decode())
        for s in family.samples
    }


def capacity_series(h: Harness) -> dict[tuple[str, str, str], float]:
    """(metric, target, model) → value, for the three capacity gauges."""
    names = {
        "orchestrator_batches_waiting_for_capacity": "waiting",
        "orchestrator_capacity_budget_tokens": "budget",
        "orchestrator_capacity_in_flight_tokens": "in_flight",
    }
    return {
        (names[name], dict(labels)["target"], dict(labels)["model"]): value
        for (name, labels), value in scrape(h).items()
        if name in names
    }


def test_the_capacity_gauges_show_the_report_and_read_zero_once_nothing_waits(
    h: Harness, cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before anything: the configured model's series exist, at 0, with its configured budget
    assert capacity_series(h) == {
        ("waiting", "fastrouter", NANO): 0,
        ("in_flight", "fastrouter", NANO): 0,
        ("budget", "fastrouter", NANO): 5_000,
    }
    # The scene, and a batch of target old in flight (900 tokens)
    job_id, _, waiting = the_scene(h)
    old = waiting_batch(h.db_url, job_id, GPT4O, 900, 0, "-")
    query(
        h.db_url,
        "UPDATE orchestrator.batches SET target = 'old', state = 'submitted', "
        "waiting_since = NULL, waiting_reason = NULL WHERE id = %s RETURNING id",
        old,
    )
    assert capacity_series(h) == {
        ("waiting", "fastrouter", NANO): 2,
        ("in_flight", "fastrouter", NANO): 2_000,
        ("budget", "fastrouter", NANO): 3_000,  # learned, lower than the configured 5,000
        ("waiting", "fastrouter", GPT4O): 1,
        ("in_flight", "fastrouter", GPT4O): 0,
        ("budget", "fastrouter", GPT4O): 10_000,  # "*"
        ("waiting", "old", GPT4O): 0,
        ("in_flight", "old", GPT4O): 900,
        ("budget", "old", GPT4O): 9_000,
    }

    # When admission lets NANO's waiting batches through (created: in flight), and GPT4O's waiting
    # batch is cancelled (GPT4O on fastrouter then has nothing in flight, waiting or learned)
    nano_waiting, gpt_waiting = waiting[:2], waiting[2]
    query(
        h.db_url,
        "UPDATE orchestrator.batches SET state = 'creating', waiting_since = NULL, "
        "waiting_reason = NULL WHERE id = ANY(%s) RETURNING id",
        nano_waiting,
    )
    query(
        h.db_url,
        "UPDATE orchestrator.batches SET state = 'cancelled', waiting_since = NULL, "
        "waiting_reason = NULL WHERE id = %s RETURNING id",
        gpt_waiting,
    )
    # Then nothing reads as waiting; GPT4O's series read 0 and its budget series is gone
    assert capacity_series(h) == {
        ("waiting", "fastrouter", NANO): 0,
        ("in_flight", "fastrouter", NANO): 1_200 + 800 + 700 + 300,
        ("budget", "fastrouter", NANO): 3_000,
        ("waiting", "fastrouter", GPT4O): 0,
        ("in_flight", "fastrouter", GPT4O): 0,
        ("waiting", "old", GPT4O): 0,
        ("in_flight", "old", GPT4O): 900,
        ("budget", "old", GPT4O): 9_000,
    }

    # When every batch has finished and the learned limits are forgotten
    query(
        h.db_url,
        "UPDATE orchestrator.batches SET state = 'done' WHERE state <> 'cancelled' RETURNING id",
    )
    assert run(capsys, "capacity", "--forget", NANO)[0] == 0
    assert run(capsys, "capacity", "--forget", GPT4O, "--target", "old")[0] == 0
    # Then nothing reads as in flight any more (target old, gone from the report, too), NANO's
    # configured budget is back, and target old has no budget series (0 would read "nothing may
    # be sent")
    assert capacity_series(h) == {
        ("waiting", "fastrouter", NANO): 0,
        ("in_flight", "fastrouter", NANO): 0,
        ("budget", "fastrouter", NANO): 5_000,
        ("waiting", "fastrouter", GPT4O): 0,
        ("in_flight", "fastrouter", GPT4O): 0,
        ("waiting", "old", GPT4O): 0,
        ("in_flight", "old", GPT4O): 0,
    }


def test_what_is_in_flight_and_waiting_is_read_through_ix_batches_capacity(db_url: str) -> None:
    # Given 20,000 done batches and a big job's 500 planned ones (open, not yet uploaded), beside
    # two batches in flight (1,200 and 800 tokens) and one waiting (700)
    job_id = enqueue(db_url, requests(1))
    with psycopg.connect(db_url) as conn:
        insert = (
            "INSERT INTO orchestrator.batches (job_id, target, endpoint, request_count, bytes, "
            "next_run_at, state, model, estimated_tokens, waiting_since, waiting_reason) "
            "SELECT %s, 'fastrouter', '/v1/chat/completions', 1, 1, now(), %s, %s, %s, %s, %s "
            "FROM generate_series(1, %s)"
        )
        conn.execute(insert, (job_id, "done", NANO, 5, None, None, 20_000))
        conn.execute(insert, (job_id, "planned", NANO, 5, None, None, 500))
        conn.execute(insert, (job_id, "submitted", NANO, 1200, None, None, 1))
        conn.execute(insert, (job_id, "creating", NANO, 800, None, None, 1))
        conn.execute(
            insert,
            (job_id, "uploaded", NANO, 700, "2026-11-30 00:00+00", "waiting_for_capacity: x", 1),
        )
        conn.execute("ANALYZE orchestrator.batches")
    # When the capacity gauges' query runs (every statement kept)
    with recorded_session(db_url) as (s, statements):
        usage = queries.capacity_usage(s)
    # Then its figures are right
    assert usage == [
        queries.CapacityUsage(
            "fastrouter",
            NANO,
            2_000,
            2,
            1,
            dt.datetime(2026, 11, 30, tzinfo=dt.UTC),
            "waiting_for_capacity: x",
        )
    ]
    # and it reads the batches in flight and waiting through their partial index
    ((statement, params),) = statements
    plan = plan_of(db_url, statement, params)
    assert "ix_batches_capacity" in plan and "Seq Scan" not in plan, plan
