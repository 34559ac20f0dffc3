"""The steps' promises, seen from outside (the rows, the events, the emulator's record): a create
whose answer was lost is looked for behind the batches created since, not created again; a create
that did not happen is recorded as not found; a cancel that did not go through names the worker
that tried; a batch the provider failed line by line gives each request its own line's error."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import psycopg
import structlog

from orchestrator.emulator import EmulatorConfig
from tests.support import (
    API_KEY,
    FAST,
    Harness,
    assert_results_match_provider,
    chat_body,
    count,
    enqueue,
    events,
    failures,
    harness,
    openai_harness,
    query,
    scalar,
    settings_for,
    simple_requests,
)


def _details(db_url: str, job_id: int, kind: str) -> list[dict[str, Any]]:
    return [
        r[0]
        for r in query(
            db_url,
            "SELECT detail FROM orchestrator.events WHERE job_id = %s AND kind = %s ORDER BY id",
            job_id,
            kind,
        )
    ]


def _other_installation(h: Harness) -> str:
    """A batch another orchestrator creates on the same account (a key that is not ours)."""
    line = {
        "custom_id": "theirs-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": chat_body("theirs"),
    }
    data = json.dumps(line).encode() + b"\n"
    client = h.deps.clients("openai")
    uploaded = client.upload([data], size=len(data), filename="theirs.jsonl")
    created = client.create_batch(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        metadata={"orchestrator_key": str(uuid.uuid4())},
    )
    return created.id


def test_reconcile_finds_a_lost_create_behind_batches_created_since(db_url: str) -> None:
    with openai_harness(db_url, timeout_seconds=3.0, create_settle_seconds=10.0) as h:
        # Given a create the provider carried out but whose answer was lost (a 502)
        h.emulator.faults.add("create_batch", status=502, applied=True, times=1)
        job_id = enqueue(db_url, simple_requests(4), target="openai")
        h.run_until(lambda: bool(h.emulator.ledger.batches), seconds=1)
        assert scalar(db_url, "SELECT state FROM orchestrator.batches") == "creating"
        assert scalar(db_url, "SELECT last_error FROM orchestrator.batches") is not None
        ours = h.emulator.ledger.batches[0].id
        # and, before reconcile lists the batches, one created by someone else: the list,
        # newest first, shows it before ours
        theirs = _other_installation(h)
        # When the daemon reconciles, and runs the job
        submitted = (
            "SELECT state, step_failures, last_error, failing_since FROM orchestrator.batches"
        )
        h.run_until(lambda: query(db_url, submitted)[0][0] != "creating", seconds=1)
        # (the adoption cleared the lost answer's error: the batch is well again)
        assert query(db_url, submitted) == [("submitted", 0, None, None)]
        assert h.run_job(job_id, seconds=1) == "completed"
        # Then it found its own create behind the other one and adopted it: created once
        assert [b.id for b in h.emulator.ledger.batches] == [ours, theirs]
        assert scalar(db_url, "SELECT remote_batch_id FROM orchestrator.batches") == ours
        # and its event names the daemon that adopted it
        adopted = query(
            db_url,
            "SELECT (detail->>'worker') IS NOT NULL FROM orchestrator.events "
            "WHERE kind = 'batch_adopted'",
        )
        assert adopted == [(True,)]
        assert len(h.emulator.ledger.calls_to("create_batch")) == 2
    assert "batch_adopted" in events(db_url, job_id)
    assert "batch_create_reconciled" not in events(db_url, job_id)


def test_reconcile_a_create_that_never_happened_is_recorded_as_not_found(db_url: str) -> None:
    with openai_harness(db_url, timeout_seconds=3.0, create_settle_seconds=10.0) as h:
        # Given a create that the provider refused with a 502 before doing anything
        h.emulator.faults.add("create_batch", status=502, times=1)
        job_id = enqueue(db_url, simple_requests(4), target="openai")
        # When the daemon reconciles it, and runs the job
        assert h.run_job(job_id, seconds=1) == "completed"
        # Then it listed the batches, found none with its key and created the batch once
        assert len(h.emulator.ledger.batches) == 1
        assert h.emulator.ledger.calls_to("list_batches")
        worker = str(h.deps.worker_id)
    # and the event says so: not found, by listing
    assert _details(db_url, job_id, "batch_create_reconciled") == [
        {"found": False, "via": "list", "worker": worker}
    ]


def test_send_cancel_a_cancel_that_fails_is_recorded_with_the_worker_that_tried(
    db_url: str,
) -> None:
    config = EmulatorConfig(mode="openai", api_key=API_KEY, rows_per_second=1)
    settings = settings_for(db_url, preset="openai", target="openai")
    with harness(db_url, emulator_config=config, settings=settings) as h:
        job_id = enqueue(db_url, simple_requests(30), target="openai")
        h.run_until(lambda: count(db_url, "batches", "remote_status = 'in_progress'") == 1)
        # Given a provider whose cancel answers 503 once
        h.emulator.faults.add("cancel_batch", status=503, message="cancel is down", times=1)
        # When the job is cancelled
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "UPDATE orchestrator.jobs SET cancel_requested_at = now() WHERE id = %s", (job_id,)
            )
        h.run_until(lambda: "batch_cancel_failed" in events(db_url, job_id), seconds=1)
        worker = str(h.deps.worker_id)
        # Then the failed cancel is recorded with the provider's error and the worker that tried
        [failed] = _details(db_url, job_id, "batch_cancel_failed")
        tried = h.emulator.ledger.calls_to("cancel_batch")[0].at
        retry_at = dt.datetime.fromisoformat(failed.pop("retry_at")).timestamp()
        assert tried < retry_at <= tried + FAST.retry_base_seconds  # the first retry
        assert failed == {"worker": worker, "error": "cancel is down"}
        # and the cancel goes through later
        assert h.run_job(job_id, seconds=1) == "cancelled"
    assert [d["worker"] for d in _details(db_url, job_id, "batch_cancel_sent")] == [worker]


def test_remote_failed_each_request_gets_the_error_of_its_own_line(db_url: str) -> None:
    # Given a target that lets any per-line provider through, and a provider that refuses
    # a provider it does not know, on the line that names it
    settings = settings_for(db_url, providers=None)
    with harness(db_url, settings=settings) as h:
        requests = simple_requests(3)
        requests[1]["provider"] = "acme"
        job_id = enqueue(db_url, requests)
        # When the provider fails the batch
        assert h.run_job(job_id) == "failed"
    error = scalar(db_url, "SELECT error FROM orchestrator.jobs WHERE id = %s", job_id)
    # Then the request on that line carries that line's error, code, message and line number,
    # and the others the batch's
    unknown = (
        "Unknown provider 'acme'; expected one of ['anthropic', 'gemini', 'google', 'openai']."
    )
    assert failures(db_url) == {
        ("req-00000", None, "invalid_provider", error),
        ("req-00001", None, "invalid_provider", unknown),
        ("req-00002", None, "invalid_provider", error),
    }
    assert scalar(
        db_url, "SELECT error FROM orchestrator.results WHERE custom_id = 'req-00001'"
    ) == {"code": "invalid_provider", "message": unknown, "line": 2}


def test_our_cost_takes_the_targets_own_price_first_and_names_the_models_without_one(
    db_url: str,
) -> None:
    # Given a default price and the target's own price for one model, and none for another
    query(
        db_url,
        "INSERT INTO orchestrator.prices (target, model, valid_from, input_per_mtok, "
        "output_per_mtok) VALUES ('*', 'openai/gpt-4.1-nano', '2020-01-01', 1, 2), "
        "('fastrouter', 'openai/gpt-4.1-nano', '2020-01-01', 10, 20) RETURNING id",
    )
    requests = [
        *simple_requests(3),
        {"custom_id": "other-0", "body": chat_body(0, model="acme/unpriced")},
    ]
    with harness(db_url) as h, structlog.testing.capture_logs() as logs:
        job_id = enqueue(db_url, requests)
        # When the job runs
        assert h.run_job(job_id) == "completed"
        assert assert_results_match_provider(db_url, h.emulator) == 4
    # Then each model's cost at our prices used the target's own row, and the model with no
    # price has none, and is named in a warning
    rows = query(
        db_url,
        "SELECT m.model, m.results, p.target, p.input_per_mtok, m.cost IS NULL "
        "FROM orchestrator.batch_model_costs m "
        "LEFT JOIN orchestrator.prices p ON p.id = m.price_id ORDER BY m.model",
    )
    assert rows == [
        ("acme/unpriced", 1, None, None, True),
        ("openai/gpt-4.1-nano", 3, "fastrouter", 10, False),
    ]
    unpriced = [e["models"] for e in logs if e["event"] == "batch_models_unpriced"]
    assert unpriced == [["acme/unpriced"]]
