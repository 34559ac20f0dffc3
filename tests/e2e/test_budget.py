"""A job's estimate and its budget (``jobs.max_cost``): a job whose upper-bound cost is over its
budget, or cannot be bounded, fails before anything is uploaded, saying why with both figures."""

from __future__ import annotations

import math
from decimal import Decimal

import psycopg

from tests.support import chat_body, harness, query, scalar

MODEL = "openai/gpt-4.1-nano"


def _job(db_url: str, n: int, *, max_cost: str | None, max_tokens: int | None = 50) -> int:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO orchestrator.prices (model, valid_from, input_per_mtok, "
            "output_per_mtok, batch_discount) VALUES (%s, '2020-01-01', 1.00, 4.00, 0.5) "
            "ON CONFLICT DO NOTHING",
            (MODEL,),
        )
        job = conn.execute(
            "INSERT INTO orchestrator.jobs (name, max_cost) VALUES ('budget', %s) RETURNING id",
            (max_cost,),
        ).fetchone()[0]  # type: ignore[index]
        for i in range(n):
            body = chat_body(i)
            if max_tokens is None:
                del body["max_tokens"]
            else:
                body["max_tokens"] = max_tokens
            conn.execute(
                "INSERT INTO orchestrator.requests (job_id, custom_id, provider, body) "
                "VALUES (%s, %s, 'openai', %s::jsonb)",
                (job, f"r{i}", psycopg.types.json.Jsonb(body)),
            )
    return int(job)


def _expected(db_url: str, job: int, n: int) -> tuple[int, Decimal]:
    # By hand: each body's bytes / 4, rounded up; output at most 50 each; $1 / $4 per million at
    # half price
    sizes = [r[0] for r in query(
        db_url, "SELECT octet_length(body::text) FROM orchestrator.requests WHERE job_id = %s", job
    )]  # fmt: skip
    prompt = sum(math.ceil(size / 4) for size in sizes)
    return prompt, (Decimal(prompt) * 1 + Decimal(50 * n) * 4) * Decimal("0.5") / 1_000_000


def test_a_job_over_its_max_cost_fails_before_anything_is_uploaded(db_url: str) -> None:
    with harness(db_url) as h:
        job = _job(db_url, 4, max_cost="0.0001")
        assert h.run_job(job) == "failed"
        assert h.emulator.ledger.calls_to("upload_file") == []
    prompt, cost = _expected(db_url, job, 4)
    assert cost > Decimal("0.0001")
    error, est_prompt, est_output, est_cost = query(
        db_url,
        "SELECT error, estimated_prompt_tokens, estimated_max_output_tokens, estimated_max_cost "
        "FROM orchestrator.jobs",
    )[0]
    assert (est_prompt, est_output, est_cost) == (prompt, 200, cost)
    assert error == (
        f"the estimated cost is up to ${cost.normalize():f}, over the job's max_cost of $0.0001 "
        f"({prompt:,} prompt tokens estimated, up to 200 output tokens); nothing was sent"
    )


def test_a_job_within_its_max_cost_runs_and_keeps_its_estimate(db_url: str) -> None:
    with harness(db_url) as h:
        job = _job(db_url, 4, max_cost="1.00")
        assert h.run_job(job) == "completed"
    prompt, cost = _expected(db_url, job, 4)
    assert query(
        db_url,
        "SELECT estimated_prompt_tokens, estimated_max_output_tokens, estimated_max_cost "
        "FROM orchestrator.jobs",
    ) == [(prompt, 200, cost)]
    # what it used stays within what was estimated as its most
    assert scalar(db_url, "SELECT completion_tokens FROM orchestrator.jobs") <= 200


def test_a_job_with_a_budget_and_requests_without_an_output_bound_is_refused(db_url: str) -> None:
    with harness(db_url) as h:
        job = _job(db_url, 3, max_cost="1.00", max_tokens=None)
        assert h.run_job(job) == "failed"
        assert h.emulator.ledger.calls_to("upload_file") == []
    error = scalar(db_url, "SELECT error FROM orchestrator.jobs")
    assert "cannot be bounded: 3 request(s) set no max_tokens" in error


def test_without_a_budget_an_unbounded_job_runs_and_its_estimate_says_unknown(db_url: str) -> None:
    with harness(db_url) as h:
        job = _job(db_url, 2, max_cost=None, max_tokens=None)
        assert h.run_job(job) == "completed"
    assert query(
        db_url, "SELECT estimated_max_output_tokens, estimated_max_cost FROM orchestrator.jobs"
    ) == [(None, None)]


def test_a_max_cost_that_is_no_amount_of_money_fails_the_job_saying_so(db_url: str) -> None:
    # PostgreSQL's NUMERIC holds 'NaN' (found while testing the budget's mutants: such a job
    # failed with "internal error while planning: InvalidOperation")
    with harness(db_url) as h:
        job = _job(db_url, 2, max_cost="NaN")
        assert h.run_job(job) == "failed"
        assert h.emulator.ledger.calls_to("upload_file") == []
    assert scalar(db_url, "SELECT error FROM orchestrator.jobs WHERE id = %s", job) == (
        "max_cost is NaN, which is no amount of money; set it to the most the job may cost in "
        "USD (e.g. 5.00) or clear it (NULL: no budget)"
    )
