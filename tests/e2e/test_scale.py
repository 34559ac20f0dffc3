"""Jobs of any size, resubmission of what is worth sending again, and cancellation at each stage."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest

from orchestrator.emulator import Emulator, EmulatorConfig
from tests.support import (
    API_KEY,
    FAST,
    assert_events_name_their_worker,
    assert_results_match_provider,
    count,
    enqueue,
    enqueue_generated,
    events,
    failures,
    harness,
    query,
    scalar,
    settings_for,
    simple_requests,
)

# What the provider says of a line it never ran (error shape b).
CANCELLED = "This request was not executed because the batch was cancelled."
EXPIRED = "This request could not be executed before the completion window expired."


def _successes_as_produced(db_url: str, emulator: Emulator, job_id: int) -> int:
    """``assert_results_match_provider`` for a job whose every request succeeded, at the pace of
    120,000 results (the bodies parsed with orjson): each result is a success holding the very
    body of the provider's success line for its custom_id. Returns how many were checked."""
    produced: dict[str, Any] = {}
    for (remote,) in query(
        db_url, "SELECT remote_batch_id FROM orchestrator.batches WHERE job_id = %s", job_id
    ):
        for line in emulator.produced(remote):
            assert line["custom_id"] not in produced, line["custom_id"]
            produced[line["custom_id"]] = line
    rows = query(
        db_url,
        "SELECT custom_id, succeeded, status_code, response::text FROM orchestrator.results "
        "WHERE job_id = %s",
        job_id,
    )
    for custom_id, succeeded, status_code, response in rows:
        line = produced.pop(custom_id)
        assert line["error"] is None and line["response"]["status_code"] == 200, line
        assert (succeeded, status_code) == (True, 200), custom_id
        assert orjson.loads(response) == line["response"]["body"], custom_id
    assert produced == {}  # no line of the provider's left without its result
    return len(rows)


@pytest.mark.slow
def test_a_job_of_120000_requests_runs_as_3_batches(db_url: str) -> None:
    config = EmulatorConfig(api_key=API_KEY, rows_per_second=20_000, completion_chars=20)
    with harness(db_url, emulator_config=config) as h:
        job_id = enqueue_generated(db_url, 120_000)
        assert h.run_job(job_id, seconds=10) == "completed"
        files = h.emulator.ledger.files
        # every one of them with the very answer the provider wrote for its custom_id
        assert _successes_as_produced(db_url, h.emulator, job_id) == 120_000
    sizes = [
        r[0]
        for r in query(
            db_url,
            "SELECT request_count FROM orchestrator.batches WHERE job_id = %s ORDER BY id",
            job_id,
        )
    ]
    assert sizes == [50_000, 50_000, 20_000]
    assert sorted(f.num_rows for f in files if f.purpose == "batch") == [20_000, 50_000, 50_000]
    assert count(db_url, "results", "job_id = %s AND succeeded", job_id) == 120_000
    assert (
        scalar(db_url, "SELECT succeeded_count FROM orchestrator.jobs WHERE id = %s", job_id)
        == 120_000
    )


def test_an_expired_batch_keeps_its_results_and_resubmits_only_the_rest(db_url: str) -> None:
    # 100 requests at 1 row/s with a 60 s window: about half finish before the batch expires
    config = EmulatorConfig(
        api_key=API_KEY, rows_per_second=1, validation_seconds=5, completion_window_seconds=60
    )
    with harness(db_url, emulator_config=config) as h:
        job_id = enqueue(db_url, simple_requests(100))
        assert h.run_job(job_id, seconds=5) == "completed"
        uploads = [f.num_rows for f in h.emulator.ledger.files if f.purpose == "batch"]
        assert assert_results_match_provider(db_url, h.emulator) == 100
    rounds = query(
        db_url,
        "SELECT round, request_count, succeeded_count, remote_status "
        "FROM orchestrator.batches WHERE job_id = %s ORDER BY id",
        job_id,
    )
    (r1, n1, ok1, st1), (r2, n2, ok2, st2) = rounds[0], rounds[1]
    assert (r1, n1, st1) == (1, 100, "expired") and 0 < ok1 < 100
    assert r2 == 2 and n2 == 100 - ok1  # only what did not finish was sent again
    assert (st2, ok2) == ("completed", n2)
    assert uploads[:2] == [100, 100 - ok1]
    assert count(db_url, "results", "job_id = %s AND succeeded", job_id) == 100
    # the first round's results were kept, not redone
    first_batch = scalar(
        db_url, "SELECT min(id) FROM orchestrator.batches WHERE job_id = %s", job_id
    )
    assert count(db_url, "results", "job_id = %s AND batch_id = %s", job_id, first_batch) == ok1
    # (the provider runs the lines in order: the first ok1 of them, before the window closed)
    kept = query(
        db_url,
        "SELECT custom_id FROM orchestrator.results WHERE batch_id = %s ORDER BY custom_id",
        first_batch,
    )
    assert [r[0] for r in kept] == [f"req-{i:05d}" for i in range(ok1)]
    # and the rest ran once too, at their first attempt: the provider never ran them in round 1
    assert count(db_url, "results", "job_id = %s AND attempt = 1", job_id) == 100
    assert "batch_resubmitted" in events(db_url, job_id)


def test_attempts_stop_at_max_attempts_and_the_last_error_is_kept(db_url: str) -> None:
    # the provider runs every request, and answers each one 500, every time
    with harness(db_url) as h:
        h.emulator.faults.add_batch_fault(line_500=1.0, times=None)
        job_id = enqueue(db_url, simple_requests(6), max_attempts=2)
        assert h.run_job(job_id, seconds=5) == "completed"
        uploads = [f.num_rows for f in h.emulator.ledger.files if f.purpose == "batch"]
        assert assert_results_match_provider(db_url, h.emulator) == 0
    assert uploads == [6, 6]  # sent twice, then no more
    rows = query(
        db_url,
        "SELECT custom_id, attempt, succeeded, status_code, error->>'type', error->>'message' "
        "FROM orchestrator.results WHERE job_id = %s ORDER BY custom_id",
        job_id,
    )
    message = "The server had an error while processing your request. Sorry about that!"
    assert rows == [(f"req-{i:05d}", 2, False, 500, "server_error", message) for i in range(6)]
    assert scalar(db_url, "SELECT failed_count FROM orchestrator.jobs WHERE id = %s", job_id) == 6


def test_requests_the_provider_never_ran_are_sent_again_without_using_an_attempt(
    db_url: str,
) -> None:
    # A slow provider: 10 requests a second, and a batch expires 8 s after it was created (the
    # first second validating), so each round runs 70 requests and returns the rest
    # batch_expired. Before, each round used an attempt of every request it returned: with
    # max_attempts = 3, 120 of these 330 requests ended as failures without ever having run.
    config = EmulatorConfig(
        api_key=API_KEY, rows_per_second=10, validation_seconds=1, completion_window_seconds=8
    )
    with harness(db_url, emulator_config=config) as h:
        job_id = enqueue(db_url, simple_requests(330), max_attempts=3)
        assert h.run_job(job_id, seconds=2) == "completed"
        uploads = [f.num_rows for f in h.emulator.ledger.files if f.purpose == "batch"]
        assert assert_results_match_provider(db_url, h.emulator) == 330
    assert uploads == [330, 260, 190, 120, 50]
    # every request ran once, at its first attempt: the rounds it waited through were not attempts
    assert query(
        db_url, "SELECT attempt, succeeded, count(*) FROM orchestrator.results GROUP BY 1, 2"
    ) == [(1, True, 330)]
    assert query(db_url, "SELECT DISTINCT attempt FROM orchestrator.batch_items") == [(1,)]
    ingested = [
        r[0]
        for r in query(
            db_url,
            "SELECT detail FROM orchestrator.events WHERE kind = 'batch_ingested' ORDER BY id",
        )
    ]
    assert [(d["succeeded"], d["not_run"], d["retry"]) for d in ingested] == [
        (70, 260, 260), (70, 190, 190), (70, 120, 120), (70, 50, 50), (50, 0, 0),
    ]  # fmt: skip


def test_requests_the_provider_never_runs_end_once_their_patience_is_spent(db_url: str) -> None:
    # A provider that never gets to them before its 30 s window closes, and a daemon whose
    # patience is 5 minutes: they are sent again, round after round, more often than
    # max_attempts (none of those rounds was an attempt), until 5 minutes after they were first
    # sent; then each ends as a failure with the provider's batch_expired, at attempt 1.
    config = EmulatorConfig(api_key=API_KEY, rows_per_second=0.001, completion_window_seconds=30)
    daemon = dataclasses.replace(FAST, patience_seconds=300)
    with harness(db_url, emulator_config=config, settings=settings_for(db_url, daemon=daemon)) as h:
        job_id = enqueue(db_url, simple_requests(6), max_attempts=2)
        assert h.run_job(job_id, seconds=5) == "completed"
        uploads = [f.num_rows for f in h.emulator.ledger.files if f.purpose == "batch"]
        assert assert_results_match_provider(db_url, h.emulator) == 0
    assert len(uploads) >= 5 and set(uploads) == {6}
    rows = query(
        db_url,
        "SELECT custom_id, attempt, succeeded, status_code, error->>'code', error->>'message' "
        "FROM orchestrator.results WHERE job_id = %s ORDER BY custom_id",
        job_id,
    )
    assert rows == [(f"req-{i:05d}", 1, False, None, "batch_expired", EXPIRED) for i in range(6)]
    rounds = query(
        db_url,
        "SELECT first_sent_at, finished_at FROM orchestrator.batches WHERE job_id = %s "
        "ORDER BY round",
        job_id,
    )
    first = rounds[0][0]
    assert {r[0] for r in rounds} == {first}  # every round carries when they were first sent
    patience_end = first + dt.timedelta(seconds=300)
    assert all(finished < patience_end for _, finished in rounds[:-1])
    assert rounds[-1][1] >= patience_end
    last = query(
        db_url,
        "SELECT detail FROM orchestrator.events WHERE kind = 'batch_ingested' ORDER BY id DESC",
    )[0][0]
    assert (last["not_run"], last["not_run_final"], last["failed"], last["retry"]) == (6, 6, 6, 0)


def test_cancel_a_pending_job_makes_no_api_call(db_url: str) -> None:
    with harness(db_url) as h:
        job_id = enqueue(db_url, simple_requests(5))
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "UPDATE orchestrator.jobs SET cancel_requested_at = now() WHERE id = %s", (job_id,)
            )
        assert h.run_job(job_id) == "cancelled"
        assert h.emulator.ledger.calls == []


def _first_ran_then(db_url: str, done: int, code: str, message: str) -> None:
    """Of 100 requests, the first ``done`` (in the order the provider runs them) succeeded and
    the rest ended with the provider's ``code`` and ``message``, never run."""
    assert query(
        db_url, "SELECT custom_id FROM orchestrator.results WHERE succeeded ORDER BY custom_id"
    ) == [(f"req-{i:05d}",) for i in range(done)]
    assert failures(db_url) == {(f"req-{i:05d}", None, code, message) for i in range(done, 100)}


def _cancel(db_url: str, job_id: int) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE orchestrator.jobs SET cancel_requested_at = now() WHERE id = %s", (job_id,)
        )


def test_cancel_an_uploaded_batch_creates_nothing(db_url: str) -> None:
    with harness(db_url) as h:
        h.emulator.faults.add("create_batch", status=429, retry_after=60, times=1)
        job_id = enqueue(db_url, simple_requests(5))
        h.run_until(lambda: bool(h.emulator.ledger.calls_to("create_batch")), seconds=1)
        assert scalar(db_url, "SELECT state FROM orchestrator.batches") == "uploaded"
        _cancel(db_url, job_id)
        assert h.run_job(job_id) == "cancelled"
        assert len(h.emulator.ledger.calls_to("create_batch")) == 1  # the refused one only
        assert h.emulator.ledger.batches == []
    assert count(db_url, "results") == 0


def _openai(db_url: str):  # type: ignore[no-untyped-def]
    return settings_for(db_url, preset="openai", target="openai")


def test_cancel_in_progress_cancels_remotely_and_keeps_the_partial_results(db_url: str) -> None:
    config = EmulatorConfig(mode="openai", api_key=API_KEY, rows_per_second=1)
    with harness(db_url, emulator_config=config, settings=_openai(db_url)) as h:
        job_id = enqueue(db_url, simple_requests(100), target="openai")
        h.run_until(
            lambda: (
                (
                    scalar(
                        db_url,
                        "SELECT (request_counts->>'completed')::int FROM orchestrator.batches",
                    )
                    or 0
                )
                >= 20
            ),
            seconds=5,
        )
        _cancel(db_url, job_id)
        assert h.run_job(job_id) == "cancelled"
        assert len(h.emulator.ledger.calls_to("cancel_batch")) == 1
        assert len(h.emulator.ledger.batches) == 1  # nothing resubmitted
        matched = assert_results_match_provider(db_url, h.emulator)
    done = count(db_url, "results", "job_id = %s AND succeeded", job_id)
    cancelled = count(
        db_url, "results", "job_id = %s AND error->>'code' = 'batch_cancelled'", job_id
    )
    assert 20 <= done < 100
    assert done + cancelled == 100  # every line the provider returned was kept
    # the first lines, in the order the provider ran them, with its answers; the rest not run
    assert matched == done
    _first_ran_then(db_url, done, "batch_cancelled", CANCELLED)
    assert scalar(db_url, "SELECT remote_status FROM orchestrator.batches") == "cancelled"


def test_cancel_while_finalizing_still_collects_every_result(db_url: str) -> None:
    config = EmulatorConfig(
        mode="openai", api_key=API_KEY, rows_per_second=1000, finalizing_seconds=600
    )
    with harness(db_url, emulator_config=config, settings=_openai(db_url)) as h:
        job_id = enqueue(db_url, simple_requests(20), target="openai")
        h.run_until(
            lambda: (
                scalar(db_url, "SELECT remote_status FROM orchestrator.batches") == "finalizing"
            ),
            seconds=5,
        )
        _cancel(db_url, job_id)
        assert h.run_job(job_id, seconds=30) == "cancelled"
        # (every line had run before it was finalizing: every one a success, as produced)
        matched = assert_results_match_provider(db_url, h.emulator)
    # whatever the provider did with the cancel, every result it produced is in
    produced = count(db_url, "results", "job_id = %s", job_id)
    assert produced == 20
    assert matched == 20
    assert "batch_ingested" in events(db_url, job_id)


def test_cancel_on_a_target_that_cannot_cancel_collects_results_and_resubmits_nothing(
    db_url: str,
) -> None:
    # FastRouter documents no cancel: the batch runs to its end, its results are kept
    config = EmulatorConfig(api_key=API_KEY, rows_per_second=1, completion_window_seconds=60)
    with harness(db_url, emulator_config=config) as h:
        job_id = enqueue(db_url, simple_requests(100))
        h.run_until(
            lambda: (
                scalar(db_url, "SELECT remote_status FROM orchestrator.batches") == "in_progress"
            ),
            seconds=5,
        )
        _cancel(db_url, job_id)
        assert h.run_job(job_id) == "cancelled"
        assert h.emulator.ledger.calls_to("cancel_batch") == []
        assert len(h.emulator.ledger.batches) == 1  # the expired rest is not sent again
        matched = assert_results_match_provider(db_url, h.emulator)
    assert "batch_cancel_unsupported" in events(db_url, job_id)
    done = count(db_url, "results", "job_id = %s AND succeeded", job_id)
    assert 0 < done < 100
    # the lines the provider ran before its window closed, with its answers; the rest expired
    assert matched == done
    _first_ran_then(db_url, done, "batch_expired", EXPIRED)


def test_per_line_429_500_and_missing_lines_are_sent_again_duplicates_are_ignored(
    db_url: str,
) -> None:
    with harness(db_url) as h:
        # the first batch comes back with per-line 429s and 500s, lines missing from both files,
        # duplicated lines and in shuffled order; the resubmission comes back clean
        h.emulator.faults.add_batch_fault(
            line_429=0.1,
            line_500=0.1,
            missing_lines=0.1,
            duplicate_lines=0.1,
            shuffle=True,
            times=1,
        )
        job_id = enqueue(db_url, simple_requests(200))
        assert h.run_job(job_id) == "completed"
        # each request's answer is the one of the round it succeeded in, duplicates and all
        assert assert_results_match_provider(db_url, h.emulator) == 200
    first, second = query(
        db_url, "SELECT detail FROM orchestrator.events WHERE kind = 'batch_ingested' ORDER BY id"
    )
    assert first[0]["duplicate_lines"] > 0 and first[0]["missing"] > 0
    assert first[0]["retry"] > 0 and first[0]["succeeded"] + first[0]["retry"] == 200
    assert second[0]["succeeded"] == first[0]["retry"]
    assert count(db_url, "results", "job_id = %s AND succeeded", job_id) == 200
    resent = scalar(db_url, "SELECT request_count FROM orchestrator.batches WHERE round = 2")
    assert resent == first[0]["retry"]


def test_an_empty_error_file_id_and_a_batch_without_usage_are_handled(db_url: str) -> None:
    with harness(db_url) as h:
        h.emulator.faults.add_batch_fault(empty_error_file_id=True, no_usage=True, times=1)
        with psycopg.connect(db_url) as conn:  # our own price, used when the provider gives none
            conn.execute(
                "INSERT INTO orchestrator.prices (model, valid_from, input_per_mtok, "
                "output_per_mtok) VALUES ('openai/gpt-4.1-nano', '2020-01-01', 1, 2), "
                "('openai/gpt-4.1-nano', '2099-01-01', 1000, 2000)"  # not in force yet
            )
        job_id = enqueue(db_url, simple_requests(10))
        assert h.run_job(job_id) == "completed"
        assert assert_results_match_provider(db_url, h.emulator) == 10
    usage, error_file, cost, source, prompt, completion = query(
        db_url,
        "SELECT usage, error_file_id, cost, cost_source, prompt_tokens, "
        "completion_tokens FROM orchestrator.batches",
    )[0]
    assert usage is None and error_file is None
    assert source == "prices"
    assert cost == (prompt * 1 + completion * 2) / __import__("decimal").Decimal(1_000_000)
    assert count(db_url, "results", "succeeded") == 10
    # By hand: each prompt '[{"content":"Say hello to #N","role":"user"}]' is 45 characters, 11
    # tokens by the emulator's count; each answer 60 characters, 15 tokens. At $1 and $2 per
    # million: (110 + 150 x 2) / 10^6.
    assert (prompt, completion) == (110, 150)
    assert query(
        db_url, "SELECT sum(prompt_tokens), sum(completion_tokens) FROM orchestrator.results"
    ) == [(110, 150)]
    assert cost == Decimal("0.00041")


def test_a_batch_stuck_in_finalizing_is_waited_for_not_abandoned(db_url: str) -> None:
    with harness(db_url) as h:
        h.emulator.faults.add_batch_fault(stuck_finalizing=6 * 3600, times=1)
        job_id = enqueue(db_url, simple_requests(10))
        assert h.run_job(job_id, seconds=300, max_steps=200) == "completed"
        polls = len(h.emulator.ledger.calls_to("get_batch"))
        assert assert_results_match_provider(db_url, h.emulator) == 10
    assert count(db_url, "results", "succeeded") == 10
    # six hours of finalizing, polled with backoff (30 s cap in the tests' settings)
    assert 20 < polls < 2000


def test_a_batch_failed_for_a_passing_reason_is_sent_again(db_url: str) -> None:
    with harness(db_url) as h:
        h.emulator.faults.add_batch_fault(fail_with="server_error", times=1)
        job_id = enqueue(db_url, simple_requests(12))
        assert h.run_job(job_id) == "completed"
        assert assert_results_match_provider(db_url, h.emulator) == 12
    rounds = query(
        db_url, "SELECT round, remote_status, request_count FROM orchestrator.batches ORDER BY id"
    )
    assert rounds == [(1, "failed", 12), (2, "completed", 12)]
    assert count(db_url, "results", "succeeded AND attempt = 2") == 12
    # the job counts the batches it has, the round sent again among them
    assert scalar(db_url, "SELECT batch_count FROM orchestrator.jobs WHERE id = %s", job_id) == 2
    assert "batch_failed_retryable" in events(db_url, job_id)
    kinds = ("batch_uploaded", "batch_created", "batch_failed_retryable", "batch_status_changed")
    assert_events_name_their_worker(db_url, h.deps.worker_id, *kinds)
    # each upload's event says which file, how big and how many requests, as the batch row does;
    # and each batch keeps when the provider finished it
    uploads = query(
        db_url,
        "SELECT e.detail->>'file_id', (e.detail->>'bytes')::bigint, "
        "(e.detail->>'requests')::int FROM orchestrator.events e "
        "WHERE e.kind = 'batch_uploaded' ORDER BY e.id",
    )
    assert uploads == query(
        db_url, "SELECT input_file_id, bytes, request_count FROM orchestrator.batches ORDER BY id"
    )
    assert count(db_url, "batches", "remote_finished_at IS NULL") == 0


def test_a_batch_failed_for_good_fails_the_job_with_the_providers_message(db_url: str) -> None:
    with harness(db_url) as h:
        h.emulator.faults.add_batch_fault(fail_with="invalid_model", times=1)
        job_id = enqueue(db_url, simple_requests(3))
        assert h.run_job(job_id) == "failed"
    error = scalar(db_url, "SELECT error FROM orchestrator.jobs WHERE id = %s", job_id)
    assert "invalid_model" in error and "injected fault" in error
    assert count(db_url, "results", "NOT succeeded") == 3
    # every request carries the provider's reason, as the job does
    assert failures(db_url) == {(f"req-{i:05d}", None, "invalid_model", error) for i in range(3)}
    assert error.startswith("the provider failed batch ") and error.endswith(
        ": invalid_model: The batch failed: invalid_model (injected fault)."
    )


def test_a_cancel_that_answers_5xx_is_retried_on_backoff_and_never_stops_polling(
    db_url: str,
) -> None:
    config = EmulatorConfig(mode="openai", api_key=API_KEY, rows_per_second=1)
    with harness(db_url, emulator_config=config, settings=_openai(db_url)) as h:
        job_id = enqueue(db_url, simple_requests(60), target="openai")
        h.run_until(lambda: count(db_url, "batches", "remote_status = 'in_progress'") == 1)
        # Given a provider whose cancel endpoint answers 503 every time
        h.emulator.faults.add("cancel_batch", status=503, times=None)
        _cancel(db_url, job_id)
        polls_before = len(h.emulator.ledger.calls_to("get_batch"))
        # When the daemon ticks every virtual second for two minutes
        for _ in range(120):
            h.step(1)
        cancels = len(h.emulator.ledger.calls_to("cancel_batch"))
        polls = len(h.emulator.ledger.calls_to("get_batch")) - polls_before
        # Then the cancel is tried again on the retry backoff (1 s base, 20 s cap here), not on
        # every tick, and polling goes on all the while
        assert 3 <= cancels <= 12, cancels
        assert polls >= cancels
        assert "batch_cancel_failed" in events(db_url, job_id)
        # and the batch, finished by the provider, is collected: every result kept
        h.emulator.faults.clear()
        assert h.run_job(job_id) == "cancelled"
        matched = assert_results_match_provider(db_url, h.emulator)
    done = count(db_url, "results", "job_id = %s AND succeeded", job_id)
    cancelled = count(
        db_url, "results", "job_id = %s AND error->>'code' = 'batch_cancelled'", job_id
    )
    assert done >= 1 and done + cancelled == 60
    # the lines run before the cancel took, with the provider's answers; the rest not run
    assert matched == done
    assert failures(db_url) == {
        (f"req-{i:05d}", None, "batch_cancelled", CANCELLED) for i in range(done, 60)
    }
