"""The protocols of DESIGN.md section 4, one by one, in process on a manual clock shared with the
emulator (over real HTTP): each test would fail without the protocol it names."""

from __future__ import annotations

import logging

import pytest
import structlog

from orchestrator.cli import main
from orchestrator.emulator import EmulatorConfig
from tests.support import (
    API_KEY,
    assert_events_name_their_worker,
    assert_results_match_provider,
    count,
    enqueue,
    events,
    failures,
    harness,
    query,
    scalar,
    settings_for,
    simple_requests,
)


def test_a_revoked_key_pauses_the_target_jobs_wait_and_resume_by_themselves(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with harness(db_url) as h:
        job_id = enqueue(db_url, simple_requests(10))
        # Given a key the provider has revoked
        h.emulator.revoke_key()
        # When the daemon works for ten virtual minutes
        for _ in range(60):
            h.step(10)
        # Then the job waits: nothing is failed, the target is paused and says why
        assert h.job_status(job_id) == "running"
        assert count(db_url, "batches", "state = 'failed'") == 0
        assert count(db_url, "results") == 0
        paused = query(
            db_url,
            "SELECT paused, reason FROM orchestrator.target_state WHERE target = 'fastrouter'",
        )
        assert paused and paused[0][0] is True and "invalid" in paused[0][1].lower()
        ok, health = h.daemon.health()
        assert ok and health["status"] == "degraded"
        assert health["targets"][0]["paused"] is True
        # and it keeps probing, not hammering: about one call per probe interval (30 s)
        assert 15 <= len(h.emulator.ledger.calls_to("upload_file", status=401)) <= 25
        monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", db_url)
        try:
            assert main(["status"]) == 0
        finally:
            logging.getLogger().handlers.clear()
            structlog.reset_defaults()
        assert "target fastrouter: PAUSED" in capsys.readouterr().out
        # When the key works again, the job completes with no one touching it
        h.emulator.restore_key()
        assert h.run_job(job_id) == "completed"
        assert assert_results_match_provider(db_url, h.emulator) == 10
    assert count(db_url, "results", "succeeded") == 10
    assert "target_resumed" in [r[0] for r in query(db_url, "SELECT kind FROM orchestrator.events")]
    assert query(db_url, "SELECT paused FROM orchestrator.target_state") == [(False,)]
    # the pause's event tells the operator that nothing needs doing once the key works
    hints = query(
        db_url,
        "SELECT DISTINCT detail->>'hint' FROM orchestrator.events WHERE kind = 'target_paused'",
    )
    assert hints == [("jobs wait; they resume by themselves once the key works",)]


def test_after_a_429_with_retry_after_30_nobody_calls_the_target_for_30_s(db_url: str) -> None:
    with harness(db_url) as h:
        for n in range(4):
            enqueue(db_url, simple_requests(5, prefix=f"j{n}-"))
        h.run_until(lambda: count(db_url, "batches", "state = 'submitted'") == 4, seconds=1)
        # Given the provider answers one poll with 429 and Retry-After: 30
        h.emulator.faults.add("get_batch", status=429, retry_after=30, times=1)
        h.run_until(lambda: bool(h.emulator.ledger.calls_to("get_batch", status=429)), seconds=1)
        refused_at = h.emulator.ledger.calls_to("get_batch", status=429)[0].at
        # When the daemon keeps ticking every virtual second
        for _ in range(45):
            h.step(1)
        later = [c.at - refused_at for c in h.emulator.ledger.calls if c.at > refused_at]
        matched = assert_results_match_provider(db_url, h.emulator)
    # Then the next call to the target comes 30 s or more after the 429, and then work resumes
    assert later and min(later) >= 30
    assert count(db_url, "jobs", "status = 'completed'") == 4
    assert matched == 20  # every request of the four jobs, with the provider's answer


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 502, "applied": True},  # a gateway in front lost the answer
        {"status": 503, "applied": True, "delay_seconds": 1.0},  # late, past the client timeout
        {"truncate": 0.5},  # the connection dropped in the middle of the answer
        {"delay_seconds": 1.5},  # the answer came after the client's timeout
    ],
    ids=[
        "502-after-creating",
        "late-503-after-creating",
        "dropped-connection",
        "answered-after-the-timeout",
    ],
)
def test_openai_a_create_the_provider_carried_out_but_never_answered_is_adopted_not_repeated(
    db_url: str, answer: dict[str, object]
) -> None:
    config = EmulatorConfig(mode="openai", api_key=API_KEY)

    settings = settings_for(db_url, preset="openai", target="openai", timeout_seconds=0.5)

    with harness(db_url, emulator_config=config, settings=settings) as h:
        # Given a provider that creates the batch and then fails to deliver the answer
        h.emulator.faults.add("create_batch", times=1, **answer)  # type: ignore[arg-type]
        job_id = enqueue(db_url, simple_requests(10), target="openai")
        assert h.run_job(job_id) == "completed"
        created = h.emulator.ledger.batches
        # Then that batch, found by its key in the provider's list, is the only one: paid once
        assert len(created) == 1
        remote = scalar(db_url, "SELECT remote_batch_id FROM orchestrator.batches")
        assert remote == created[0].id
        assert assert_results_match_provider(db_url, h.emulator) == 10
    kinds = events(db_url, job_id)
    assert "batch_create_ambiguous" in kinds and "batch_adopted" in kinds
    assert "batch_created" not in kinds


def test_fastrouter_a_create_carried_out_but_never_answered_costs_at_most_one_extra_batch(
    db_url: str,
) -> None:
    settings = settings_for(db_url, timeout_seconds=0.5)

    with harness(db_url, settings=settings) as h:
        # Given a provider that creates the batch and then answers 502 (and cannot list batches)
        h.emulator.faults.add("create_batch", status=502, applied=True, times=1)
        job_id = enqueue(db_url, simple_requests(10))
        assert h.run_job(job_id) == "completed"
        created = h.emulator.ledger.batches
        # Then the recreate policy made exactly one extra remote batch, counted and recorded
        ambiguous = scalar(db_url, "SELECT sum(ambiguous_creates) FROM orchestrator.batches")
        assert ambiguous == 1 and len(created) == 2
        remote = scalar(db_url, "SELECT remote_batch_id FROM orchestrator.batches")
        assert remote == created[1].id  # the results come from the one it adopted, once
        assert assert_results_match_provider(db_url, h.emulator) == 10
    assert "batch_create_reconciled" in events(db_url, job_id)


def test_openai_a_create_lost_before_it_arrived_is_created_after_checking(db_url: str) -> None:
    config = EmulatorConfig(mode="openai", api_key=API_KEY)

    settings = settings_for(db_url, preset="openai", target="openai")

    with harness(db_url, emulator_config=config, settings=settings) as h:
        h.emulator.faults.add("create_batch", status=502, times=1)  # refused: nothing created
        job_id = enqueue(db_url, simple_requests(10), target="openai")
        assert h.run_job(job_id) == "completed"
        assert len(h.emulator.ledger.batches) == 1
        assert h.emulator.ledger.calls_to("list_batches")  # it looked before creating again
        assert assert_results_match_provider(db_url, h.emulator) == 10
    kinds = events(db_url, job_id)
    assert kinds.count("batch_create_ambiguous") == 1 and "batch_create_reconciled" in kinds


def test_fastrouter_an_ambiguous_create_follows_the_recreate_policy_with_an_event(
    db_url: str,
) -> None:
    settings = settings_for(db_url, timeout_seconds=0.5)

    with harness(db_url, settings=settings) as h:
        h.emulator.faults.add("create_batch", delay_seconds=1.5, times=1)
        job_id = enqueue(db_url, simple_requests(10))
        assert h.run_job(job_id) == "completed"
        created = h.emulator.ledger.batches
        # the results are the adopted batch's, as the provider produced them
        assert assert_results_match_provider(db_url, h.emulator) == 10
    # FastRouter cannot list batches: the documented policy creates again, at most once per
    # ambiguous create, and records it
    ambiguous = scalar(db_url, "SELECT sum(ambiguous_creates) FROM orchestrator.batches")
    assert ambiguous == 1 and len(created) == 1 + ambiguous
    reconciled = query(
        db_url, "SELECT detail FROM orchestrator.events WHERE kind = 'batch_create_reconciled'"
    )
    assert reconciled[0][0]["via"] == "policy:recreate"
    assert count(db_url, "results", "succeeded") == 10  # results of the adopted one, once


def test_fastrouter_policy_pause_waits_for_an_operator(db_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(db_url, timeout_seconds=0.5, ambiguous_create_policy="pause")

    with harness(db_url, settings=settings) as h:
        h.emulator.faults.add("create_batch", delay_seconds=1.5, times=1)
        job_id = enqueue(db_url, simple_requests(4))
        for _ in range(10):
            h.step(5)
        assert "batch_create_needs_review" in events(db_url, job_id)
        assert len(h.emulator.ledger.batches) == 1  # and nothing more was created
        batch_id = scalar(db_url, "SELECT id FROM orchestrator.batches WHERE job_id = %s", job_id)
        # When the operator adopts the batch the provider did create
        monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", db_url)
        try:
            assert main(["resolve", str(batch_id), "--adopt", h.emulator.ledger.batches[0].id]) == 0
        finally:
            logging.getLogger().handlers.clear()
            structlog.reset_defaults()
        assert h.run_job(job_id) == "completed"
        assert len(h.emulator.ledger.batches) == 1
        assert assert_results_match_provider(db_url, h.emulator) == 4


@pytest.mark.parametrize(("mode", "refusal"), [("fastrouter", 413), ("openai", 400)])
def test_413_splits_the_chunk_and_both_halves_complete(
    db_url: str, mode: str, refusal: int
) -> None:
    # The provider's limit is lower than the one configured for the target. FastRouter answers
    # 413; OpenAI answers 400 "File is too large." (spec X7), which splits the same way.
    config = EmulatorConfig(mode=mode, api_key=API_KEY, max_file_bytes=6_000)  # type: ignore[arg-type]
    settings = settings_for(db_url, preset=mode, target=mode)
    with harness(db_url, emulator_config=config, settings=settings) as h:
        job_id = enqueue(db_url, simple_requests(40), target=mode)  # ~9 KB of JSONL
        assert h.run_job(job_id) == "completed"
        assert len(h.emulator.ledger.calls_to("upload_file", status=refusal)) >= 1
        assert len(h.emulator.ledger.batches) >= 2
        assert assert_results_match_provider(db_url, h.emulator) == 40
    assert count(db_url, "batches", "state = 'superseded'") >= 1
    assert count(db_url, "results", "succeeded") == 40
    assert "batch_split" in events(db_url, job_id)


def test_a_400_to_a_status_call_or_a_download_is_asked_again_not_taken_for_a_refusal(
    db_url: str,
) -> None:
    # (found by the lifecycle model: a 400 to a status call gave the batch up, abandoning what
    # the provider went on to produce)
    with harness(db_url) as h:
        h.emulator.faults.add("get_batch", status=400, message="bad request", times=2)
        h.emulator.faults.add("file_content", status=400, message="bad request", times=1)
        job_id = enqueue(db_url, simple_requests(5))
        assert h.run_job(job_id) == "completed"
        assert len(h.emulator.ledger.calls_to("get_batch", status=400)) == 2
        assert len(h.emulator.ledger.calls_to("file_content", status=400)) == 1
        assert assert_results_match_provider(db_url, h.emulator) == 5
        assert len(h.emulator.ledger.batches) == 1


def test_a_400_fails_the_batch_with_the_providers_message_on_the_job(db_url: str) -> None:
    with harness(db_url) as h:
        h.emulator.faults.add(
            "create_batch", status=400, times=None, message="endpoint is not allowed for this key"
        )
        job_id = enqueue(db_url, simple_requests(5))
        assert h.run_job(job_id) == "failed"
    error = scalar(db_url, "SELECT error FROM orchestrator.jobs WHERE id = %s", job_id)
    assert "endpoint is not allowed for this key" in error
    # every request has its final result, carrying the same message
    rows = query(
        db_url, "SELECT error->>'message' FROM orchestrator.results WHERE job_id = %s", job_id
    )
    assert len(rows) == 5 and all("endpoint is not allowed" in r[0] for r in rows)
    assert error == "create failed: endpoint is not allowed for this key"
    assert failures(db_url) == {(f"req-{i:05d}", None, "batch_failed", error) for i in range(5)}


def test_a_file_not_found_right_after_upload_is_retried(db_url: str) -> None:
    with harness(db_url) as h:
        h.emulator.faults.add("create_batch", status=404, times=2, message="File ID not found")
        job_id = enqueue(db_url, simple_requests(5))
        assert h.run_job(job_id) == "completed"
        assert len(h.emulator.ledger.calls_to("upload_file")) == 1
        assert assert_results_match_provider(db_url, h.emulator) == 5
    assert count(db_url, "results", "succeeded") == 5


def test_token_limit_exceeded_without_a_stated_limit_means_later_not_failed(db_url: str) -> None:
    # Given an enqueued-token budget that fits one job's batch but not two at once, a provider
    # whose refusal names no limit (so there is nothing to learn), and a target that waits 120 s
    # (not the default 900) before creating a token-limited batch again
    config = EmulatorConfig(
        api_key=API_KEY,
        enqueued_token_limit=500,
        token_limit_states_limit=False,
        rows_per_second=1,
    )
    wait = settings_for(db_url, token_limit_retry_seconds=120.0)
    with harness(db_url, emulator_config=config, settings=wait) as h:
        first = enqueue(db_url, simple_requests(30, prefix="a-"))
        h.run_until(lambda: count(db_url, "batches", "state = 'submitted'") == 1, seconds=1)
        second = enqueue(db_url, simple_requests(30, prefix="b-"))
        # When the second batch fails with token_limit_exceeded while the first runs
        h.run_until(lambda: "batch_token_limited" in events(db_url, second), seconds=5)
        # (to be created again 120 s after the poll that saw it, by the clock the daemon keeps:
        # that poll ran in the last step, and the clock moved on 5 s since)
        retry_at = scalar(
            db_url,
            "SELECT (detail->>'retry_at')::timestamptz FROM orchestrator.events "
            "WHERE kind = 'batch_token_limited'",
        )
        assert 115 <= (retry_at - h.clock.now()).total_seconds() <= 120
        # it waits, visibly, and says why
        reason = scalar(
            db_url, "SELECT waiting_reason FROM orchestrator.job_summary WHERE job_id = %s", second
        )
        assert reason.startswith("waiting_for_capacity: token_limit_exceeded without a stated")
        # and the batch shows the provider's refusal as its last error (what status prints)
        last_error = scalar(
            db_url, "SELECT last_error FROM orchestrator.batches WHERE job_id = %s", second
        )
        assert "Too many tokens are enqueued" in last_error
        # Then it is created again later, from the same file, and both jobs complete
        assert h.run_job(first) == "completed"
        assert h.run_job(second, seconds=60) == "completed"
        # no batch created since still says it waits (the create clears the reason)
        assert count(db_url, "batches", "waiting_reason IS NOT NULL") == 0
        uploads = [f for f in h.emulator.ledger.files if f.purpose == "batch"]
        created = h.emulator.ledger.batches
        # both jobs' answers, from the batches the provider did run
        assert assert_results_match_provider(db_url, h.emulator) == 60
    limited = query(
        db_url,
        "SELECT detail->>'error', detail->'limit_tokens', detail->>'limit_model' "
        "FROM orchestrator.events WHERE kind = 'batch_token_limited'",
    )
    error, limit_tokens, limit_model = limited[0]
    assert_events_name_their_worker(db_url, h.deps.worker_id, "batch_token_limited")
    assert "Too many tokens are enqueued" in error
    # nothing stated, nothing learned
    assert (limit_tokens, limit_model) == (None, None)
    assert count(db_url, "capacity") == 0
    assert len(uploads) == 2 and len(created) == 3  # one file per job; one create again
    assert count(db_url, "results", "succeeded") == 60
    assert count(db_url, "batches", "state = 'failed'") == 0


def test_a_batch_id_the_provider_hands_out_twice_fails_the_batch_instead_of_paying_again(
    db_url: str,
) -> None:
    # Given a provider that restarted and hands out ids from the start again (an emulator run
    # twice with the same seed and no instance), after a first job has used them
    with harness(db_url) as first:
        first_job = enqueue(db_url, simple_requests(3), name="first")
        assert first.run_job(first_job) == "completed"
        assert assert_results_match_provider(db_url, first.emulator) == 3
    with harness(db_url) as h:
        job_id = enqueue(db_url, simple_requests(3), name="second")
        # When the second job's create is answered with the id the first batch already has
        assert h.run_job(job_id) == "failed"
        # Then it is not taken for an unknown outcome: nothing is created again
        assert len(h.emulator.ledger.calls_to("create_batch")) == 1
    error = scalar(db_url, "SELECT error FROM orchestrator.jobs WHERE id = %s", job_id)
    assert "which batch 1 already has; ids must never repeat" in error
    # its requests fail with that reason; the first job's answers stand
    assert (
        failures(db_url)
        == failures(db_url, "job_id = %s", job_id)
        == {(f"req-{i:05d}", None, "remote_id_taken", error) for i in range(3)}
    )
    assert query(
        db_url, "SELECT job_id, custom_id FROM orchestrator.results WHERE succeeded ORDER BY 2"
    ) == [(first_job, f"req-{i:05d}") for i in range(3)]
    assert "batch_create_reconciled" not in events(db_url, job_id)
