"""The sweeps' promises, seen from outside: the orphan sweep (``orchestrator/sweep.py``) cancels
every remote batch that carries one of our create keys and that no batch adopted, however many
batches that are not orphans the provider lists before it; what it could not cancel is kept with
the provider's error and tried again; its log lines carry its figures and its errors. The
retention sweep's line says how long it took.

Orphans here are made as a provider makes them: a create carrying one of our recorded keys, from
the batch's own input file, that the provider carries out after the batch was created (the late
create of ``test_field_faults.py``), on the emulator over real HTTP and one manual clock."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

import psycopg
import structlog

from orchestrator import retention
from orchestrator.api.schemas import BatchObject
from tests.support import (
    Harness,
    chat_body,
    enqueue,
    harness,
    openai_harness,
    query,
    scalar,
    simple_requests,
)


def _late_create(h: Harness, job_id: int) -> BatchObject:
    """The job's batch created once more at the provider, with the key it was created with: a
    create the provider carried out after the daemon had created the batch again."""
    batch_id, file_id, key = query(
        h.db_url,
        "SELECT b.id, b.input_file_id, k.key FROM orchestrator.batches b "
        "JOIN orchestrator.create_keys k ON k.batch_id = b.id WHERE b.job_id = %s",
        job_id,
    )[0]
    return h.deps.clients("openai").create_batch(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        metadata={
            "orchestrator_key": str(key),
            "orchestrator_job": str(job_id),
            "orchestrator_batch": str(batch_id),
        },
    )


def _other_installation(h: Harness) -> BatchObject:
    """A batch another orchestrator created on the same account: its key is not one of ours."""
    line = {
        "custom_id": "theirs-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": chat_body("theirs"),
    }
    data = json.dumps(line).encode() + b"\n"
    client = h.deps.clients("openai")
    uploaded = client.upload([data], size=len(data), filename="theirs.jsonl")
    return client.create_batch(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        metadata={"orchestrator_key": str(uuid.uuid4())},
    )


def _status(h: Harness, remote_id: str) -> str:
    return h.deps.clients("openai").get_batch(remote_id).status


def _lines(captured: list[MutableMapping[str, Any]], event: str) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in line.items() if k != "event"}
        for line in captured
        if line["event"] == event
    ]


def test_sweep_cancels_an_orphan_listed_after_batches_that_are_not_orphans(db_url: str) -> None:
    with openai_harness(db_url) as h:
        # Given a job whose batch was created and completed (the adopted remote batch), then a
        # late create of it carried out by the provider (the orphan), then a batch of another
        # installation on the same account: listed newest first, the orphan comes after a batch
        # that is not ours
        job_id = enqueue(db_url, simple_requests(3), target="openai")
        assert h.run_job(job_id) == "completed"
        adopted = scalar(db_url, "SELECT remote_batch_id FROM orchestrator.batches")
        orphan = _late_create(h, job_id)
        theirs = _other_installation(h)
        assert [b.id for b in h.deps.clients("openai").iter_batches()] == [
            theirs.id,
            orphan.id,
            adopted,
        ]
        # When the sweep runs
        with structlog.testing.capture_logs() as captured:
            h.daemon.sweep_orphans(force=True)
        # Then the orphan is cancelled, and only it
        assert _status(h, orphan.id) == "cancelling"
        assert _status(h, theirs.id) == "validating"
        assert _status(h, adopted) == "completed"
        batch_id = scalar(db_url, "SELECT id FROM orchestrator.batches")
        assert query(
            db_url,
            "SELECT remote_batch_id, target, batch_id, remote_status, cancelled_at IS NOT NULL, "
            "last_error FROM orchestrator.orphan_batches",
        ) == [(orphan.id, "openai", batch_id, "validating", True, None)]
        assert scalar(db_url, "SELECT orphans_cancelled FROM orchestrator.batches") == 1
        assert [(c.path, c.status) for c in h.emulator.ledger.calls_to("cancel_batch")] == [
            (f"/v1/batches/{orphan.id}/cancel", 200)
        ]
    # and its warning line gives the sweep's figures: the three batches of the last 48 hours it
    # listed, the one orphan among them, cancelled
    assert _lines(captured, "orphan_sweep_done") == [
        {
            "log_level": "warning",
            "target": "openai",
            "listed": 3,
            "orphans": 1,
            "cancelled": 1,
            "failed": 0,
        }
    ]


def test_sweep_an_orphan_whose_cancel_fails_keeps_the_error_and_is_cancelled_next_round(
    db_url: str,
) -> None:
    with openai_harness(db_url) as h:
        # Given an orphan, and a provider that answers its cancel with a 500 once
        job_id = enqueue(db_url, simple_requests(3), target="openai")
        assert h.run_job(job_id) == "completed"
        orphan = _late_create(h, job_id)
        h.emulator.faults.add("cancel_batch", status=500, message="cancel is down", times=1)
        # When the sweep runs
        with structlog.testing.capture_logs() as captured:
            h.daemon.sweep_orphans(force=True)
        # Then the orphan is recorded, not cancelled, with the provider's error on its row
        rows = query(
            db_url,
            "SELECT remote_batch_id, cancelled_at IS NOT NULL, last_error "
            "FROM orchestrator.orphan_batches",
        )
        assert rows == [(orphan.id, False, "cancel is down")]
        assert _status(h, orphan.id) == "validating"
        assert scalar(db_url, "SELECT orphans_cancelled FROM orchestrator.batches") == 0
        assert _lines(captured, "orphan_sweep_done") == [
            {
                "log_level": "warning",
                "target": "openai",
                "listed": 2,
                "orphans": 1,
                "cancelled": 0,
                "failed": 1,
            }
        ]
        # and the next round cancels it, and clears the error
        h.daemon.sweep_orphans(force=True)
        assert query(
            db_url,
            "SELECT remote_batch_id, cancelled_at IS NOT NULL, last_error "
            "FROM orchestrator.orphan_batches",
        ) == [(orphan.id, True, None)]
        assert _status(h, orphan.id) == "cancelling"
        assert scalar(db_url, "SELECT orphans_cancelled FROM orchestrator.batches") == 1
    kinds = [
        r[0]
        for r in query(
            db_url, "SELECT kind FROM orchestrator.events WHERE kind LIKE 'batch_orphan%%'"
        )
    ]
    assert kinds == ["batch_orphan_found", "batch_orphan_cancelled"]


def test_sweep_orphans_a_list_that_fails_is_logged_with_the_providers_error(db_url: str) -> None:
    with openai_harness(db_url) as h:
        # Given a provider whose batch list answers 503
        h.emulator.faults.add("list_batches", status=503, message="list is down", times=1)
        # When the sweep runs
        with structlog.testing.capture_logs() as captured:
            reports = h.daemon.sweep_orphans(force=True)
        # Then the round is given up, with a warning that says why
        assert reports == []
        assert _lines(captured, "orphan_sweep_failed") == [
            {"log_level": "warning", "target": "openai", "error": "list is down"}
        ]
        # and the next round lists again
        assert [r.target for r in h.daemon.sweep_orphans(force=True)] == ["openai"]


def test_retention_sweep_says_how_long_it_took(db_url: str) -> None:
    # Given events older than the 90 days they are kept
    job_id = enqueue(db_url, simple_requests(1))
    with psycopg.connect(db_url) as conn:
        for n in range(3):
            conn.execute(
                "INSERT INTO orchestrator.events (kind, job_id, detail, at) "
                "VALUES ('old', %s, '{}', now() - interval '100 days' - %s * interval '1 day')",
                (job_id, n),
            )
    with harness(db_url, http=False) as h, structlog.testing.capture_logs() as captured:
        # When the daemon's retention timer sweeps
        started = time.monotonic()
        retention.sweep_for_daemon(h.deps)
        took = time.monotonic() - started
    # Then its line counts what went, and says how long that took: no longer than it did
    swept = _lines(captured, "retention_swept")
    assert len(swept) == 1
    seconds = swept[0].pop("seconds")
    assert swept == [{"log_level": "info", "events": 3, "statements": 1}]
    assert 0 <= seconds <= round(took, 3) + 0.001
