"""Promises of ``ledger`` transitions held from the outside over a whole daemon run (in process,
on a manual clock shared with the emulator over real HTTP): the rows, the event rows and their
fields, the log lines and what the emulator recorded, for a local cancel, a batch failed whole,
a create parked for an operator, a lost input file, a split, a 429 and the orphan sweep."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import structlog

from orchestrator.cli import main
from orchestrator.emulator import EmulatorConfig
from orchestrator.emulator.faults import LateApply
from tests.support import (
    API_KEY,
    assert_results_match_provider,
    count,
    enqueue,
    failures,
    harness,
    openai_harness,
    query,
    scalar,
    settings_for,
    simple_requests,
)


def _cli(monkeypatch: pytest.MonkeyPatch, db_url: str, *argv: str) -> int:
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", db_url)
    try:
        return main(list(argv))
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()


def _events(db_url: str, kind: str) -> list[tuple[Any, ...]]:
    """(job_id, batch_id, detail) of every event of ``kind``, in order."""
    return query(
        db_url,
        "SELECT job_id, batch_id, detail FROM orchestrator.events WHERE kind = %s ORDER BY id",
        kind,
    )


def _kinds(db_url: str) -> list[str]:
    return [r[0] for r in query(db_url, "SELECT kind FROM orchestrator.events ORDER BY id")]


# -- a batch of a cancelled job that never reached the provider ---------------------------------


def test_cancel_locally_records_the_batch_cancelled_on_its_job(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with harness(db_url) as h:
        # Given a batch still planned (its first upload answered 503, to be tried again)
        h.emulator.faults.add("upload_file", status=503, times=1)
        job_id = enqueue(db_url, simple_requests(3))
        h.run_until(lambda: bool(h.emulator.ledger.calls_to("upload_file", status=503)), seconds=0)
        batch_id = scalar(db_url, "SELECT id FROM orchestrator.batches WHERE state = 'planned'")
        # When the job is cancelled
        assert _cli(monkeypatch, db_url, "cancel", str(job_id)) == 0
        assert h.run_job(job_id) == "cancelled"
        assert len(h.emulator.ledger.calls_to("upload_file")) == 1  # nothing sent after
    # Then the batch's cancel is one of the job's events (what `status JOB` and a report read)
    assert _events(db_url, "batch_cancelled") == [(job_id, batch_id, {"stage": "planned"})]
    assert query(
        db_url, "SELECT kind FROM orchestrator.events WHERE job_id = %s ORDER BY id", job_id
    )[-2:] == [("batch_cancelled",), ("job_cancelled",)]
    # and the batch and the job ended at the same moment, on the daemon's clock
    ended = query(
        db_url,
        "SELECT b.state, b.finished_at = j.finished_at FROM orchestrator.batches b "
        "JOIN orchestrator.jobs j ON j.id = b.job_id",
    )
    assert ended == [("cancelled", True)]


# -- a batch failed as a whole ------------------------------------------------------------------


def test_fail_batch_counts_every_request_of_the_batch_as_failed_on_the_job(db_url: str) -> None:
    with harness(db_url) as h:
        h.emulator.faults.add("create_batch", status=400, times=None, message="model not allowed")
        job_id = enqueue(db_url, simple_requests(5))
        assert h.run_job(job_id) == "failed"
    error = "create failed: model not allowed"
    # the job's counters say what its results say: five failures
    assert query(
        db_url,
        "SELECT succeeded_count, failed_count, error FROM orchestrator.jobs WHERE id = %s",
        job_id,
    ) == [(0, 5, error)]
    assert failures(db_url) == {(f"req-{i:05d}", None, "batch_failed", error) for i in range(5)}
    [(_, _, detail)] = _events(db_url, "job_failed")
    assert (detail["succeeded"], detail["failed"], detail["error"]) == (0, 5, error)


def test_reingest_of_a_batch_refused_at_create_says_there_is_nothing_to_ingest(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with harness(db_url) as h:
        h.emulator.faults.add("create_batch", status=400, times=None, message="model not allowed")
        job_id = enqueue(db_url, simple_requests(2))
        assert h.run_job(job_id) == "failed"
    batch_id = scalar(db_url, "SELECT id FROM orchestrator.batches")
    capsys.readouterr()
    assert _cli(monkeypatch, db_url, "reingest", str(batch_id)) == 1
    assert capsys.readouterr().err == (
        f"orchestrator: batch {batch_id} never reached the provider (it has no remote batch "
        "id): there is nothing to ingest\n"
    )


# -- a create whose outcome is unknown, under policy pause --------------------------------------


def test_park_for_review_gives_the_lease_back_and_tells_the_operator_what_to_run(
    db_url: str,
) -> None:
    settings = settings_for(db_url, timeout_seconds=0.5, ambiguous_create_policy="pause")
    with harness(db_url, settings=settings) as h, structlog.testing.capture_logs() as logs:
        h.emulator.faults.add("create_batch", delay_seconds=1.5, times=1)
        job_id = enqueue(db_url, simple_requests(4))
        h.run_until(lambda: bool(_events(db_url, "batch_create_needs_review")), seconds=5)
        worker = str(h.deps.worker_id)
    hint = "orchestrator resolve BATCH --adopt ID | --recreate"
    batch_id = scalar(db_url, "SELECT id FROM orchestrator.batches")
    assert _events(db_url, "batch_create_needs_review") == [
        (job_id, batch_id, {"worker": worker, "hint": hint})
    ]
    # a warning: nothing moves until someone runs the hint
    parked = [e for e in logs if e["event"] == "batch_create_needs_review"]
    assert parked == [
        {"event": "batch_create_needs_review", "log_level": "warning", "job_id": job_id,
         "batch_id": batch_id, "worker": worker, "hint": hint},
    ]  # fmt: skip
    # the batch waits in creating with no lease held: any daemon may take it when it falls due
    assert query(
        db_url, "SELECT state, lease_owner, lease_expires_at, last_error FROM orchestrator.batches"
    ) == [
        (
            "creating",
            None,
            None,
            "create outcome unknown; waiting for an operator "
            "(orchestrator resolve BATCH --adopt ID | --recreate)",
        )
    ]


# -- the provider lost the input file -----------------------------------------------------------


def test_reupload_sends_the_file_again_when_the_provider_lost_it(db_url: str) -> None:
    with harness(db_url) as h:
        # the create answers 404 for the file more times than a file just uploaded can take
        h.emulator.faults.add("create_batch", status=404, message="No such file", times=5)
        job_id = enqueue(db_url, simple_requests(3))
        assert h.run_job(job_id) == "completed"
        uploads = h.emulator.ledger.calls_to("upload_file", status=200)
        assert len(uploads) == 2
        created = h.emulator.ledger.batches
        assert len(created) == 1
        assert assert_results_match_provider(db_url, h.emulator) == 3
    assert _events(db_url, "batch_reupload") == [
        (job_id, scalar(db_url, "SELECT id FROM orchestrator.batches"), {"error": "No such file"})
    ]
    # the batch the provider ran is the one made from the file sent again
    assert (
        scalar(db_url, "SELECT input_file_id FROM orchestrator.batches") == created[0].input_file_id
    )
    assert count(db_url, "results", "NOT succeeded") == 0


# -- a file the provider finds too large --------------------------------------------------------


def test_split_gives_the_lease_back_and_counts_the_batches_the_job_really_has(
    db_url: str,
) -> None:
    config = EmulatorConfig(mode="fastrouter", api_key=API_KEY, max_file_bytes=6_000)
    with harness(db_url, emulator_config=config) as h:
        job_id = enqueue(db_url, simple_requests(40))  # ~9 KB of JSONL: two halves fit
        assert h.run_job(job_id) == "completed"
        assert len(h.emulator.ledger.calls_to("upload_file", status=413)) == 1
    rows = query(
        db_url,
        "SELECT id, state, request_count, lease_owner, lease_expires_at "
        "FROM orchestrator.batches ORDER BY id",
    )
    first, a, b = (r[0] for r in rows)
    # every batch, the one split too, is free of any lease once it is finished
    assert rows == [
        (first, "superseded", 40, None, None),
        (a, "done", 20, None, None),
        (b, "done", 20, None, None),
    ]
    # the job has the two batches that ran, not three, not one
    assert scalar(db_url, "SELECT batch_count FROM orchestrator.jobs WHERE id = %s", job_id) == 2
    assert _events(db_url, "batch_split") == [
        (job_id, first, {"into": [a, b], "requests": 40, "max_tokens": None})
    ]


# -- a 429 --------------------------------------------------------------------------------------


def test_throttle_blocks_the_target_without_pausing_it_and_says_why(db_url: str) -> None:
    with harness(db_url) as h:
        h.emulator.faults.add("create_batch", status=429, retry_after=20, message="slow down")
        job_id = enqueue(db_url, simple_requests(3))
        h.run_until(lambda: bool(h.emulator.ledger.calls_to("create_batch", status=429)))
        # Then the target is throttled (a wait), not paused (a key or account problem)
        [(target, blocked_until, paused, reason)] = query(
            db_url, "SELECT target, blocked_until, paused, reason FROM orchestrator.target_state"
        )
        assert (target, paused, reason) == ("fastrouter", False, "rate limited: slow down")
        [(_, batch_id, detail)] = _events(db_url, "target_throttled")
        assert detail == {
            "target": "fastrouter", "until": blocked_until.isoformat(), "error": "slow down",
        }  # fmt: skip
        assert batch_id == scalar(db_url, "SELECT id FROM orchestrator.batches")
        assert h.run_job(job_id) == "completed"
    # and no pause was ever lifted: there was none
    assert not {"target_paused", "target_resumed"} & set(_kinds(db_url))


# -- the orphan sweep ---------------------------------------------------------------------------


def test_begin_orphan_sweep_sweeps_again_once_the_interval_has_passed(db_url: str) -> None:
    with openai_harness(db_url) as h:
        every = h.deps.settings.daemon.orphan_sweep_seconds
        swept = []
        for advance in (0.0, every - 1, 1.0, every / 2, every / 2):
            h.clock.advance(advance)
            swept.append(len(h.daemon.sweep_orphans()))
        # once per interval, the first at once, each listing the target's batches
        assert swept == [1, 0, 1, 0, 1]
        assert len(h.emulator.ledger.calls_to("list_batches")) == 3
        assert scalar(db_url, "SELECT orphans_swept_at FROM orchestrator.target_state") == (
            h.clock.now()
        )


def test_an_orphan_is_recorded_its_failed_cancel_kept_then_its_cancel_counted_on_its_batch(
    db_url: str,
) -> None:
    with openai_harness(db_url, timeout_seconds=3.0, create_settle_seconds=10.0) as h:
        # Given a create carried out 10 minutes after it answered 504: it was created again
        h.emulator.faults.add("create_batch", LateApply(600.0), times=1)
        job_id = enqueue(db_url, simple_requests(4), target="openai")
        h.run_until(lambda: count(db_url, "batches", "state = 'submitted'") == 1, seconds=2)
        h.clock.advance(600)
        h.emulator.run_due()
        batch_id, adopted = query(db_url, "SELECT id, remote_batch_id FROM orchestrator.batches")[0]
        [orphan] = [b.id for b in h.emulator.ledger.batches if b.id != adopted]
        # When the sweep finds it and its cancel fails
        h.emulator.faults.add("cancel_batch", status=500, message="cancel went wrong", times=1)
        assert [(r.orphans, r.cancelled, r.failed) for r in h.daemon.sweep_orphans(force=True)] == [
            (1, 0, 1)
        ]
        # Then the orphan is recorded, with why its cancel failed, for the next sweep
        assert query(
            db_url,
            "SELECT remote_batch_id, target, batch_id, cancelled_at, last_error "
            "FROM orchestrator.orphan_batches",
        ) == [(orphan, "openai", batch_id, None, "cancel went wrong")]
        assert _events(db_url, "batch_orphan_found") == [
            (
                job_id,
                batch_id,
                {
                    "remote_batch_id": orphan,
                    "status": "validating",
                    "target": "openai",
                    "hint": "a create carried out after we had given up on it; it is cancelled",
                },
            )
        ]
        # When the next sweep cancels it
        before = scalar(db_url, "SELECT clock_timestamp()")
        assert [(r.orphans, r.cancelled, r.failed) for r in h.daemon.sweep_orphans(force=True)] == [
            (1, 1, 0)
        ]
    # Then the cancel is counted once on the batch that sent the key, and said on its job
    assert query(
        db_url, "SELECT cancelled_at IS NOT NULL, last_error FROM orchestrator.orphan_batches"
    ) == [(True, None)]
    assert query(db_url, "SELECT orphans_cancelled, updated_at >= %s FROM orchestrator.batches",
                 before) == [(1, True)]  # fmt: skip
    # (the batches' view shows the change as the latest in their state)
    assert query(
        db_url,
        "SELECT state, last_change_at >= %s FROM orchestrator.batches_by_state",
        before,
    ) == [("submitted", True)]
    assert _events(db_url, "batch_orphan_cancelled") == [
        (job_id, batch_id, {"remote_batch_id": orphan, "target": "openai"})
    ]


def test_policy_fail_fails_a_create_of_unknown_outcome_saying_why_and_sends_nothing_again(
    db_url: str,
) -> None:
    settings = settings_for(db_url, timeout_seconds=0.5, ambiguous_create_policy="fail")
    with harness(db_url, settings=settings) as h:
        # Given a create whose answer comes after the client gave up, on a target that cannot
        # list its batches (FastRouter), under policy 'fail'
        h.emulator.faults.add("create_batch", delay_seconds=1.5, times=1)
        job_id = enqueue(db_url, simple_requests(4))
        # When the daemon runs the job
        assert h.run_job(job_id) == "failed"
        creates = len(h.emulator.ledger.calls_to("create_batch"))
    # Then the batch and the job fail with the reason, and the create was never sent again
    why = (
        "a create may or may not have reached the provider, which cannot list batches; "
        "policy 'fail' stops here to avoid paying twice"
    )
    assert creates == 1
    assert query(db_url, "SELECT state, last_error FROM orchestrator.batches") == [("failed", why)]
    assert scalar(db_url, "SELECT error FROM orchestrator.jobs WHERE id = %s", job_id) == why
