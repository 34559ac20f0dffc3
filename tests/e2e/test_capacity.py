"""Capacity: the enqueued-token budget learned from the provider, admission within it, splitting,
and fair, prioritised admission (README "Capacity"). The emulator keeps, for every create, the
model's tokens enqueued at that moment including the new batch's (its ledger's
``enqueued_tokens``): the tests read the provider's side from there."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import psycopg

from orchestrator.emulator import EmulatorConfig
from tests.support import (
    API_KEY,
    assert_results_match_provider,
    count,
    enqueue,
    enqueue_generated,
    events,
    harness,
    query,
    scalar,
    settings_for,
    simple_requests,
)

MODEL = "openai/gpt-4.1-nano"
LIMIT = 2_000_000


def _big_request(job: str, n: int) -> dict[str, Any]:
    # 10,000 tokens by the emulator's count: its messages as compact JSON are 40,000 characters
    # ('[{"content":"' + text + '","role":"user"}]': 30 characters around the text), over 4
    text = f"{job}{n:05d} " + "x" * (39_970 - len(f"{job}{n:05d} "))
    return {
        "custom_id": f"{job}-{n:05d}",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 5},
    }


def _our_estimate(request: dict[str, Any]) -> int:
    # The daemon's rule by hand: the body as PostgreSQL prints a jsonb (keys by length, then
    # alphabetically; ", " and ": " between them), in bytes, over 4, rounded up
    body = request["body"]
    printed = json.dumps(
        {
            "model": body["model"],
            "messages": [{"role": m["role"], "content": m["content"]} for m in body["messages"]],
            "max_tokens": body["max_tokens"],
        }
    )
    return math.ceil(len(printed.encode()) / 4)


def _refused(entry: Any) -> bool:
    return "token_limit_exceeded" in entry.problems


def test_five_jobs_needing_three_times_the_budget_all_complete_within_it(db_url: str) -> None:
    # Given a provider whose enqueued-token limit is 2,000,000 for the model, a daemon that has
    # been told nothing of it, and five jobs that need 6,000,000 tokens together (one of them,
    # 2,400,000, more than the limit alone)
    sizes = {"a": 240, "b": 120, "c": 100, "d": 80, "e": 60}
    config = EmulatorConfig(api_key=API_KEY, enqueued_token_limit=LIMIT, rows_per_second=10)
    with harness(db_url, emulator_config=config, settings=settings_for(db_url)) as h:
        jobs = {}
        for name, n in sizes.items():
            requests = [_big_request(name, i) for i in range(n)]
            jobs[name] = enqueue(db_url, requests, name=name)
        assert sum(sizes.values()) * 10_000 == 6_000_000
        estimate_a = sum(_our_estimate(_big_request("a", i)) for i in range(240))
        # When the daemon runs until the provider first refuses a batch for the limit
        h.run_until(lambda: count(db_url, "capacity") == 1, seconds=5)
        before_learning = len(h.emulator.ledger.batches)
        # and then until every job is done
        for job_id in jobs.values():
            assert h.run_job(job_id, seconds=5, max_steps=2000) == "completed"
        created = h.emulator.ledger.batches
        # each answer is the one the provider wrote for its request, in the batch that ran it
        assert assert_results_match_provider(db_url, h.emulator) == 600
    # Then every job completed with all its results, and no batch failed
    assert count(db_url, "results", "succeeded") == 600
    assert count(db_url, "batches", "state = 'failed'") == 0
    # the limit was learned from the provider's message
    learned = query(db_url, "SELECT target, model, learned_tokens FROM orchestrator.capacity")
    assert learned == [("fastrouter", MODEL, LIMIT)]
    # and the refusal that taught it keeps, on its event, the limit it stated and for which model
    stated = query(
        db_url,
        "SELECT (detail->>'limit_tokens')::bigint, detail->>'limit_model' "
        "FROM orchestrator.events WHERE kind = 'batch_token_limited' ORDER BY id LIMIT 1",
    )
    assert stated == [(LIMIT, MODEL)]
    # some batches were refused before anything was known (every create of the first moments)
    assert any(_refused(e) for e in created[:before_learning])
    # after the first refusal was seen, no batch was refused for the limit
    assert not [e.id for e in created[before_learning:] if _refused(e)]
    # the tokens in flight at the provider never passed the limit, by its own count
    admitted = [e for e in created if not e.problems]
    peak = max(e.enqueued_tokens[MODEL] for e in admitted)
    assert peak <= LIMIT
    # and capacity was shared: at some moment two jobs' batches were in flight together
    assert peak > 1_200_000
    # the job over the limit alone was split, by our estimate, into parts within it
    parts = query(
        db_url,
        "SELECT estimated_tokens, request_count FROM orchestrator.batches "
        "WHERE job_id = %s AND state = 'done' ORDER BY id",
        jobs["a"],
    )
    assert sum(n for _, n in parts) == 240
    assert sum(t for t, _ in parts) == estimate_a
    assert all(t <= LIMIT for t, _ in parts) and len(parts) == math.ceil(estimate_a / LIMIT)
    assert "batch_split" in events(db_url, jobs["a"])
    # every batch's estimate is the sum of its requests' (checked for the jobs not split)
    for name in "bcde":
        estimate = sum(_our_estimate(_big_request(name, i)) for i in range(sizes[name]))
        done = query(
            db_url,
            "SELECT estimated_tokens FROM orchestrator.batches "
            "WHERE job_id = %s AND state = 'done'",
            jobs[name],
        )
        assert done == [(estimate,)]


def test_a_learned_limit_survives_a_restart_and_plans_the_next_job(db_url: str) -> None:
    # Given a provider with a small limit (300 tokens) that the daemon learned while running a
    # first job of 40 small requests (about 440 tokens by the provider's count)
    config = EmulatorConfig(api_key=API_KEY, enqueued_token_limit=300, rows_per_second=20)
    with harness(db_url, emulator_config=config) as h:
        first = enqueue(db_url, simple_requests(40, prefix="a-"))
        assert h.run_job(first) == "completed"
        assert len([e for e in h.emulator.ledger.batches if _refused(e)]) == 1
        assert assert_results_match_provider(db_url, h.emulator) == 40
    assert scalar(db_url, "SELECT learned_tokens FROM orchestrator.capacity") == 300
    # When another daemon starts (nothing in memory), against a fresh provider with that limit
    # (another seed: a restarted emulator must not hand out the same batch ids again)
    with harness(db_url, emulator_config=dataclasses.replace(config, seed=2)) as h:
        second = enqueue(db_url, simple_requests(40, prefix="b-"))
        assert h.run_job(second) == "completed"
        created = h.emulator.ledger.batches
        assert assert_results_match_provider(db_url, h.emulator, job_id=second) == 40
    # Then the job was planned within the learned limit from the start: nothing was refused
    assert created and not [e.id for e in created if e.problems]
    rows = query(
        db_url,
        "SELECT estimated_tokens, request_count FROM orchestrator.batches WHERE job_id = %s",
        second,
    )
    per_request = scalar(
        db_url,
        "SELECT max(ceil(octet_length(body::text) / 4.0)) FROM orchestrator.requests "
        "WHERE job_id = %s",
        second,
    )
    assert len(rows) > 1 and all(t <= 300 for t, _ in rows)
    assert sum(n for _, n in rows) == 40
    # (greedy: each batch but the last is full, short of one more request)
    assert all(t + per_request > 300 for t, _ in rows[:-1])
    assert "batch_token_limited" not in events(db_url, second)
    assert count(db_url, "results", "succeeded") == 80


def _create_order(h: Any) -> list[int]:
    """The jobs whose batches the provider created, in order (one entry per batch)."""
    return [int((e.metadata or {})["orchestrator_job"]) for e in h.emulator.ledger.batches]


def test_small_jobs_are_admitted_before_a_huge_jobs_remaining_chunks(db_url: str) -> None:
    # Given a 300,000-request job (6 chunks of 50,000, about 1.1M tokens each by our estimate), a
    # budget that holds one such chunk but not two, one batch in flight at a time, and a provider
    # that takes a while over a chunk (50,000 rows at 1,000 a second)
    config = EmulatorConfig(api_key=API_KEY, rows_per_second=1_000)
    settings = settings_for(
        db_url, enqueued_token_budgets={MODEL: 1_500_000}, max_batches_in_flight=1
    )
    in_flight: list[int] = []

    def looked() -> bool:
        in_flight.append(count(db_url, "batches", "state IN ('creating', 'submitted')"))
        return True

    def done(*jobs: int) -> bool:
        return looked() and all(h.job_status(job) == "completed" for job in jobs)

    with harness(db_url, emulator_config=config, settings=settings) as h:
        big = enqueue_generated(db_url, 300_000)
        h.run_until(lambda: count(db_url, "batches", "state = 'submitted'") == 1, seconds=1)
        assert count(db_url, "batches", "job_id = %s", big) == 6
        # When two small jobs arrive behind it: one of the same priority, then (planned after it)
        # one of a higher priority
        equal = enqueue(db_url, simple_requests(3, prefix="eq-"), name="equal")
        h.run_until(lambda: count(db_url, "batches", "job_id = %s", equal) == 1, seconds=1)
        high = enqueue(db_url, simple_requests(3, prefix="hi-"), name="high")
        with psycopg.connect(db_url) as conn:
            conn.execute("UPDATE orchestrator.jobs SET priority = 10 WHERE id = %s", (high,))
        h.run_until(lambda: count(db_url, "batches", "waiting_since IS NOT NULL") == 7)
        # all wait for capacity, visibly, while the first chunk runs
        waiting = query(
            db_url,
            "SELECT job_id, waiting_for_capacity, waiting_reason FROM orchestrator.job_summary "
            "ORDER BY job_id",
        )
        h.run_until(lambda: done(equal, high), seconds=5)
        order = _create_order(h)
    # Then the high-priority job went first once the first chunk was done, and the equal one
    # next, not held behind the five chunks waiting before it; one batch in flight at most
    assert order == [big, high, equal]
    assert max(in_flight) == 1
    assert [(job, n) for job, n, _ in waiting] == [(big, 5), (equal, 1), (high, 1)]
    # (each reason is that of its last look: what was in flight and ahead of it then)
    assert all(
        r.startswith("waiting_for_capacity: ") and "max_batches_in_flight is 1" in r
        for _, _, r in waiting
    ), waiting
    assert waiting[2][2] == (
        "waiting_for_capacity: 1 batch(es) in flight and 0 ahead in line; the target's "
        "max_batches_in_flight is 1"
    )


def test_a_job_of_two_models_is_planned_as_one_batch_per_model(db_url: str) -> None:
    # Given a job whose requests alternate between two models
    other = "openai/gpt-4o-mini"
    requests = [
        {"custom_id": f"r{i:02d}", "body": {**simple_requests(1)[0]["body"], "model": m}}
        for i, m in enumerate([MODEL, other] * 5)
    ]
    with harness(db_url) as h:
        job = enqueue(db_url, requests)
        # When it runs
        assert h.run_job(job) == "completed"
        # (each request answered by its own model's batch, as the provider answered it)
        assert assert_results_match_provider(db_url, h.emulator) == 10
    # Then each batch holds one model's requests, all of them, and says which model
    rows = query(
        db_url,
        "SELECT b.model, array_agg(bi.custom_id ORDER BY bi.seq), b.estimated_tokens "
        "FROM orchestrator.batches b JOIN orchestrator.batch_items bi ON bi.batch_id = b.id "
        "GROUP BY b.id ORDER BY b.id",
    )
    assert [(m, ids) for m, ids, _ in rows] == [
        (MODEL, [f"r{i:02d}" for i in range(0, 10, 2)]),
        (other, [f"r{i:02d}" for i in range(1, 10, 2)]),
    ]
    # (each estimate is its requests' bodies in bytes over 4, rounded up, summed)
    for model, _, tokens in rows:
        assert tokens == scalar(
            db_url,
            "SELECT sum(ceil(octet_length(body::text) / 4.0)) FROM orchestrator.requests "
            "WHERE job_id = %s AND body->>'model' = %s",
            job,
            model,
        )
    assert count(db_url, "results", "succeeded") == 10
    assert query(
        db_url, "SELECT custom_id, model FROM orchestrator.results ORDER BY custom_id"
    ) == [(f"r{i:02d}", m) for i, m in enumerate([MODEL, other] * 5)]
