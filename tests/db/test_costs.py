"""Costs to the last digit, against hand computations: the price in force (per target and model,
from its ``valid_from`` on, with its batch discount), a FastRouter batch that mixes models, a
provider's own cost winning for its batch, a price change in the middle of a day, and the views
that report them. One rule (``orchestrator.price_in_force``) serves the daemon and the views."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest

from orchestrator.db import ledger, queries
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from orchestrator.domain import cost as costs
from orchestrator.ingest import ingest_lines
from tests.support import query, scalar

DAY = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
PRICES = [
    # target, model, valid_from, input, cached input, output, batch discount
    ("*", "gpt-a", DAY - dt.timedelta(days=30), "2.50", "1.25", "10.00", "0.5"),
    ("*", "gpt-a", DAY + dt.timedelta(hours=12), "3.00", None, "12.00", "0.5"),  # mid-day
    ("*", "gpt-a", DAY + dt.timedelta(days=5), "1000", None, "1000", "0"),  # not yet
    ("*", "gpt-b", DAY - dt.timedelta(days=30), "99", None, "99", "0"),  # any target...
    ("fastrouter", "gpt-b", DAY - dt.timedelta(days=1), "0.10", None, "0.40", "0"),  # ...its own
]


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def ok(cid: str, model: str, u: dict[str, Any]) -> bytes:
    body = {
        "model": model,
        "choices": [{"message": {"content": f"answer {cid}"}, "finish_reason": "stop"}],
        "usage": u,
    }
    line = {"custom_id": cid, "response": {"status_code": 200, "body": body}, "error": None}
    return orjson.dumps(line) + b"\n"


def failed(cid: str) -> bytes:
    line = {"custom_id": cid, "response": None, "error": {"code": "bad", "message": "no"}}
    return orjson.dumps(line) + b"\n"


@pytest.fixture
def conn(db_url: str) -> Any:
    with psycopg.connect(db_url, autocommit=True) as c:
        for row in PRICES:
            c.execute(
                "INSERT INTO orchestrator.prices (target, model, valid_from, input_per_mtok, "
                "cached_input_per_mtok, output_per_mtok, batch_discount) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                row,
            )
        yield c


# per batch() call: whether ingest's own sums were used (else the results were summed again)
kinds: list[bool] = []


def batch(
    conn: Any, db_url: str, job: int, cids: dict[str, str], lines: list[bytes], finished: dt.datetime,
    remote: dict[str, Any] | None = None,
) -> tuple[int, Decimal | None, str]:  # fmt: skip
    """A done batch of ``cids`` (custom_id → the model its request asks for), ingested from
    ``lines`` and costed as the daemon does. Returns (id, cost, source)."""
    # (requests only go into a pending job: this test adds a batch's requests at a time)
    conn.execute("UPDATE orchestrator.jobs SET status = 'pending' WHERE id = %s", (job,))
    for cid, model in cids.items():
        conn.execute(
            "INSERT INTO orchestrator.requests (job_id, custom_id, provider, body) "
            "VALUES (%s, %s, 'openai', %s)",
            (job, cid, orjson.dumps({"model": model, "messages": []}).decode()),
        )
    conn.execute("UPDATE orchestrator.jobs SET status = 'running' WHERE id = %s", (job,))
    batch_id = conn.execute(
        "INSERT INTO orchestrator.batches (job_id, target, endpoint, request_count, bytes, "
        "next_run_at, state) VALUES (%s, 'fastrouter', '/v1/chat/completions', %s, 0, now(), "
        "'ingesting') RETURNING id",
        (job, len(cids)),
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO orchestrator.batch_items (batch_id, custom_id, job_id, seq) "
        "SELECT %s, custom_id, job_id, seq FROM orchestrator.requests "
        "WHERE job_id = %s AND custom_id = ANY(%s)",
        (batch_id, job, list(cids)),
    )
    engine = make_engine(db_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            stats = ingest_lines(
                s, job_id=job, batch_id=batch_id, lines=iter(lines), max_attempts=1,
                resubmit=False,
            )  # fmt: skip
            # as the daemon does: from what ingest summed, unless a result needs its model from
            # its request (then the database sums them); both ways must agree
            totals = stats.model_totals()
            computed = ledger.record_model_costs(
                s, batch_id=batch_id, target="fastrouter", at=finished, totals=totals
            )
            by_table = ledger.record_model_costs(
                s, batch_id=batch_id, target="fastrouter", at=finished
            )
            assert by_table == computed
            kinds.append(totals is not None)
    finally:
        engine.dispose()
    cost, source = costs.batch_cost(costs.provider_cost(remote or {}), computed.cost)
    conn.execute(
        "UPDATE orchestrator.batches SET state = 'done', finished_at = %s, cost = %s, "
        "cost_source = %s WHERE id = %s",
        (finished, cost, source, batch_id),
    )
    return batch_id, cost, source


def test_costs_are_exact_per_result_batch_model_and_day(conn: Any, db_url: str) -> None:
    job = conn.execute(
        "INSERT INTO orchestrator.jobs (name) VALUES ('costs') RETURNING id"
    ).fetchone()[0]
    conn.execute("UPDATE orchestrator.jobs SET status = 'running' WHERE id = %s", (job,))
    # A FastRouter batch that mixes two models, finished at 10:00 (before the price change)
    b1, cost1, source1 = batch(
        conn, db_url, job, {"r1": "gpt-a", "r2": "gpt-b", "r3": "gpt-b"},
        [ok("r1", "gpt-a", usage(1000, 500, cached=200)), ok("r2", "gpt-b", usage(300, 100)),
         failed("r3")],
        DAY + dt.timedelta(hours=10),
    )  # fmt: skip
    # By hand. gpt-a, the first row: (800 × 2.50 + 200 × 1.25 + 500 × 10.00) × 0.5 / 10^6
    a1 = Decimal("0.003625")
    # gpt-b: FastRouter's own row wins over the '*' one: (300 × 0.10 + 100 × 0.40) / 10^6
    b_cost = Decimal("0.00007")
    assert (cost1, source1) == (a1 + b_cost, "prices")
    # One gpt-a result at 14:00, after the mid-day change: (1000 × 3.00 + 500 × 12.00) × 0.5
    b2, cost2, source2 = batch(
        conn, db_url, job, {"r4": "gpt-a"}, [ok("r4", "gpt-a", usage(1000, 500, cached=200))],
        DAY + dt.timedelta(hours=14),
    )  # fmt: skip
    a2 = Decimal("0.0045")  # cached tokens at the input rate: this row has no cached price
    assert (cost2, source2) == (a2, "prices")
    # A batch whose provider reports its cost: that figure wins; our estimate is kept beside it
    b3, cost3, source3 = batch(
        conn, db_url, job, {"r5": "gpt-a", "r6": "gpt-b"},
        [ok("r5", "gpt-a", usage(2000, 0)), ok("r6", "gpt-b", usage(1000, 1000))],
        DAY + dt.timedelta(hours=15), remote={"usage": {"cost": 0.01}},
    )  # fmt: skip
    assert (cost3, source3) == (Decimal("0.01"), "provider")
    # b1 has a failure the provider named no model for: summed from the table, after its model
    # came from its request; b2 and b3 from what ingest summed
    assert kinds[-3:] == [False, True, True]
    a3 = Decimal("0.003")  # 2000 × 3.00 × 0.5 / 10^6
    b3_est = Decimal("0.0005")  # (1000 × 0.10 + 1000 × 0.40) / 10^6
    # Per batch and model: the price row used and the cost at it
    rows = query(
        db_url,
        "SELECT m.batch_id, m.model, p.valid_from, m.cost, m.results FROM "
        "orchestrator.batch_model_costs m LEFT JOIN orchestrator.prices p ON p.id = m.price_id "
        "ORDER BY 1, 2",
    )
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        (b1, "gpt-a", a1, 1),
        (b1, "gpt-b", b_cost, 2),  # the failure is attributed to the model its request named
        (b2, "gpt-a", a2, 1),
        (b3, "gpt-a", a3, 1),
        (b3, "gpt-b", b3_est, 1),
    ]
    assert rows[2][2] == DAY + dt.timedelta(hours=12)
    # Per result, in the flat view: its cost, answer, finish reason and model
    flat = {
        r[0]: r[1:]
        for r in query(
            db_url,
            "SELECT custom_id, cost, answer, finish_reason, model, cached_tokens "
            "FROM orchestrator.request_results WHERE job_id = %s",
            job,
        )
    }
    assert flat["r1"] == (a1, "answer r1", "stop", "gpt-a", 200)
    assert flat["r2"][0] == b_cost and flat["r4"][0] == a2
    assert flat["r3"][0] == 0 and flat["r3"][3] == "gpt-b"  # a failure: no tokens, attributed
    assert flat["r5"][0] == a3 and flat["r6"][0] == b3_est  # estimates beside the provider's
    # each result its own answer; the failure the provider's error
    assert {cid: row[1] for cid, row in flat.items()} == {
        **{cid: f"answer {cid}" for cid in ("r1", "r2", "r4", "r5", "r6")},
        "r3": None,
    }
    assert query(
        db_url,
        "SELECT succeeded, status_code, error FROM orchestrator.results WHERE custom_id = 'r3'",
    ) == [(False, None, {"code": "bad", "message": "no"})]
    # Per day × target × model: computed and provider cost side by side, exact underneath
    day = {
        r[0]: r[1:]
        for r in query(
            db_url,
            "SELECT model, computed_cost, provider_cost, computed_cost_usd, batches, results "
            "FROM orchestrator.cost_by_day WHERE day = %s AND target = 'fastrouter'",
            DAY,
        )
    }
    # the provider's 0.01 for b3 shared by tokens: gpt-a 2000 of 4000, gpt-b 2000 of 4000
    assert day["gpt-a"] == (a1 + a2 + a3, Decimal("0.005"), Decimal("0.01"), 3, 3)
    assert day["gpt-b"] == (b_cost + b3_est, Decimal("0.005"), Decimal("0.00"), 2, 3)
    # and the job: the sum of its batches, whatever their source
    assert scalar(db_url, "SELECT count(*) FROM orchestrator.batches_by_state") == 1


def test_the_price_in_force_prefers_the_targets_own_row_then_the_latest_started(
    conn: Any, db_url: str
) -> None:
    engine = make_engine(db_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            at = DAY + dt.timedelta(hours=11)
            a = queries.price_in_force(s, "openai", "gpt-a", at)
            later = queries.price_in_force(s, "openai", "gpt-a", at + dt.timedelta(hours=1))
            b_fr = queries.price_in_force(s, "fastrouter", "gpt-b", at)
            b_any = queries.price_in_force(s, "openai", "gpt-b", at)
            early = queries.price_in_force(s, "fastrouter", "gpt-b", DAY - dt.timedelta(days=2))
            none = queries.price_in_force(s, "openai", "unknown", at)
    finally:
        engine.dispose()
    assert a is not None and a.input_per_mtok == Decimal("2.50")  # not the 12:00 row yet
    assert later is not None and later.input_per_mtok == Decimal("3.00")  # from 12:00 on
    assert b_fr is not None and b_fr.target == "fastrouter"
    assert b_any is not None and b_any.target == "*"
    assert early is not None and early.target == "*"  # fastrouter's own row starts a day later
    assert none is None


def test_deleting_a_job_deletes_its_results_events_and_costs(conn: Any, db_url: str) -> None:
    job = conn.execute("INSERT INTO orchestrator.jobs (name) VALUES ('x') RETURNING id").fetchone()[
        0
    ]
    conn.execute("UPDATE orchestrator.jobs SET status = 'running' WHERE id = %s", (job,))
    batch(conn, db_url, job, {"r1": "gpt-a"}, [ok("r1", "gpt-a", usage(10, 10))], DAY)
    conn.execute("INSERT INTO orchestrator.events (job_id, kind) VALUES (%s, 'x')", (job,))
    conn.execute("DELETE FROM orchestrator.jobs WHERE id = %s", (job,))
    for table in ("results", "events", "batches", "batch_model_costs", "requests"):
        assert scalar(db_url, f"SELECT count(*) FROM orchestrator.{table}") == 0, table
    assert query(db_url, "SELECT * FROM orchestrator.cost_by_day") == []


def test_the_answer_of_the_responses_api_and_the_size_of_an_embedding(db_url: str) -> None:
    responses = {
        "output": [
            {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "hm"}]},
            {"content": [{"type": "output_text", "text": "Hello, "}, {"type": "refusal"}]},
            {"content": [{"type": "output_text", "text": "world"}]},
        ],
        "status": "completed",
    }
    assert (
        scalar(
            db_url, "SELECT orchestrator.output_text(%s::jsonb)", orjson.dumps(responses).decode()
        )
        == "Hello, world"
    )
    assert scalar(db_url, "SELECT orchestrator.output_text('{\"output\": 3}'::jsonb)") is None
