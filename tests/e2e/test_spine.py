"""The spine, end to end over real HTTP (emulator on uvicorn) and real PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

import pytest

from orchestrator.emulator import EmulatorConfig
from tests.support import (
    API_KEY,
    assert_results_match_provider,
    enqueue,
    events,
    failures,
    harness,
    listed_failure,
    make_settings,
    query,
    scalar,
    simple_requests,
)


@pytest.mark.parametrize("mode", ["fastrouter", "openai"])
def test_job_of_100_with_10_failing_lands_100_results(db_url: str, mode: str) -> None:
    # Given a job of 100 requests, 10 of which the provider will refuse
    requests = simple_requests(100)
    failing = {r["custom_id"] for r in requests[::10]}
    config = EmulatorConfig(mode=mode, api_key=API_KEY, fail_custom_ids=frozenset(failing))
    settings = lambda base_url: make_settings(db_url, base_url, preset=mode, target=mode)  # noqa: E731
    with harness(db_url, emulator_config=config, settings=settings) as h:
        job_id = enqueue(db_url, requests, target=mode)

        # When the daemon runs until the job is finished
        status = h.run_job(job_id)
        # (each completion the very one the provider wrote for its custom_id)
        answered = assert_results_match_provider(db_url, h.emulator)

    # Then exactly 100 results, keyed by custom_id: 90 completions, 10 provider errors
    assert status == "completed"
    rows = query(
        db_url,
        "SELECT custom_id, succeeded, status_code, response, error "
        "FROM orchestrator.results WHERE job_id = %s",
        job_id,
    )
    assert len(rows) == 100
    assert {r[0] for r in rows} == {r["custom_id"] for r in requests}
    ok = [r for r in rows if r[1]]
    ko = [r for r in rows if not r[1]]
    assert len(ok) == 90 and len(ko) == 10
    assert {r[0] for r in ko} == failing
    assert all(r[3]["choices"][0]["message"]["content"] for r in ok)
    assert all(r[2] == 400 and r[4]["message"] for r in ko)
    assert answered == 90
    assert failures(db_url) == {listed_failure(custom_id) for custom_id in failing}

    # And usage and cost are on the batch and the job
    batch = query(
        db_url,
        "SELECT state, remote_status, total_tokens, cost, cost_source, "
        "usage, request_counts FROM orchestrator.batches WHERE job_id = %s",
        job_id,
    )
    assert len(batch) == 1
    state, remote_status, tokens, cost, source, usage, counts = batch[0]
    assert (state, remote_status) == ("done", "completed")
    assert tokens > 0 and usage["total_tokens"] > 0
    # By hand: 90 answers, each of 11 prompt tokens by the emulator's count (its messages,
    # '[{"content":"Say hello to #N","role":"user"}]', are 45 or 46 characters) and 15 completion
    # tokens (60 characters); the failures used none
    assert (tokens, usage["total_tokens"]) == (90 * (11 + 15), 90 * (11 + 15))
    assert query(
        db_url,
        "SELECT sum(prompt_tokens), sum(completion_tokens) FROM orchestrator.results "
        "WHERE job_id = %s",
        job_id,
    ) == [(90 * 11, 90 * 15)]
    if mode == "fastrouter":  # FastRouter reports cost on the batch; OpenAI does not
        assert cost is not None and cost > Decimal(0) and source == "provider"
        # its price for gpt-4.1-nano, $0.10 and $0.40 per million at half price for a batch:
        # (990 × 0.10 + 1,350 × 0.40) × 0.5 / 10^6
        assert cost == Decimal("0.0003195")
    else:
        assert cost is None and source == "none"  # no prices entered: unknown, and said so
    assert counts == {"total": 100, "completed": 90, "failed": 10}
    job = query(
        db_url,
        "SELECT succeeded_count, failed_count, total_tokens, cost, finished_at, cost_source "
        "FROM orchestrator.jobs WHERE id = %s",
        job_id,
    )[0]
    assert job[:2] == (90, 10) and job[2] == tokens and job[3] == cost and job[4] is not None
    assert job[5] == source  # the job's cost has the source of its one batch

    # And every transition left an event
    kinds = events(db_url, job_id)
    for kind in (
        "job_planned",
        "batch_planned",
        "batch_uploaded",
        "batch_created",
        "batch_status_changed",
        "batch_ingested",
        "job_completed",
    ):
        assert kind in kinds, kind
    statuses = [
        r[0]
        for r in query(
            db_url,
            "SELECT detail->>'status' FROM orchestrator.events "
            "WHERE job_id = %s AND kind = 'batch_status_changed' ORDER BY id",
            job_id,
        )
    ]
    assert statuses[-1] == "completed" and "in_progress" in statuses


def test_polling_backs_off_while_nothing_changes(db_url: str) -> None:
    # Given a batch that stays in progress for a long (virtual) time
    config = EmulatorConfig(api_key=API_KEY, rows_per_second=0.01)
    with harness(db_url, emulator_config=config) as h:
        job_id = enqueue(db_url, simple_requests(3))
        for _ in range(60):
            h.step(10)
        # Then the poll count grows far slower than the number of ticks
        polls = scalar(
            db_url, "SELECT poll_count FROM orchestrator.batches WHERE job_id = %s", job_id
        )
        calls = len(h.emulator.ledger.calls_to("get_batch"))
    assert calls == polls
    # 600 virtual seconds: a fixed 5 s poll would be ~120 polls; backoff (×1.5 to 30 s) is ~25
    assert 10 <= polls <= 35
