"""A daemon that lost its lease writes nothing: not a state, not a result.

Two daemons are played here step by step, in one process, on the manual clock the emulator also
runs on: A claims a batch, A's lease expires (on the database's clock, which judges leases, as when A
stalls in a GC pause or a long network call with its heartbeat stuck), B claims it and does the work, and only
then does A's step come back and try to write. The interleaving is exact, so these tests cannot
pass by luck of timing; the process tests show the same with real processes.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid

import pytest
import structlog

from orchestrator import runner, steps
from orchestrator.cli import main
from orchestrator.db import ledger
from orchestrator.db.queries import Claimed
from orchestrator.db.session import unit_of_work
from orchestrator.emulator import EmulatorConfig
from orchestrator.errors import LeaseLost
from tests.support import (
    API_KEY,
    Harness,
    assert_results_match_provider,
    count,
    enqueue,
    events,
    expire_leases,
    harness,
    make_settings,
    query,
    scalar,
    simple_requests,
)

LEASE = 60.0


def claim(h: Harness) -> Claimed:
    """The one runnable batch, claimed by a daemon of its own."""
    with unit_of_work(h.deps.sessions) as s:
        (claimed,) = ledger.claim_batches(
            s, owner=uuid.uuid4(), now=h.clock.now(), ttl=LEASE, limit=1
        )
    return claimed


def plan(h: Harness, job_id: int) -> None:
    assert runner.plan_one(h.deps, job_id) == "running"


def test_a_step_that_lost_its_lease_to_another_daemon_writes_nothing(db_url: str) -> None:
    config = EmulatorConfig(mode="openai", api_key=API_KEY)

    def settings(base_url: str):  # type: ignore[no-untyped-def]
        return make_settings(db_url, base_url, preset="openai", target="openai")

    with harness(db_url, emulator_config=config, settings=settings) as h:
        job_id = enqueue(db_url, simple_requests(10), target="openai")
        plan(h, job_id)
        # Given daemon A holds the batch, and its lease runs out before A writes anything
        a = claim(h)
        expire_leases(db_url)
        # When daemon B takes it over and uploads and creates the remote batch
        b = claim(h)
        assert (b.id, b.token) == (a.id, a.token + 1)
        runner.run_batch(h.deps, b)
        after_b = query(
            db_url, "SELECT state, input_file_id, remote_batch_id FROM orchestrator.batches"
        )
        assert after_b[0][0] == "submitted"
        # and then A's upload step comes back and tries to record its own upload
        runner.run_batch(h.deps, a)
        # Then A's write is refused: the batch is exactly as B left it
        assert (
            query(db_url, "SELECT state, input_file_id, remote_batch_id FROM orchestrator.batches")
            == after_b
        )
        # and the job completes with one remote batch, whose results are the ones recorded
        assert h.run_job(job_id) == "completed"
        assert len(h.emulator.ledger.batches) == 1
        assert assert_results_match_provider(db_url, h.emulator) == 10


def test_an_ingest_that_lost_its_lease_writes_no_result_and_downloads_nothing(
    db_url: str,
) -> None:
    with harness(db_url) as h:
        job_id = enqueue(db_url, simple_requests(10))
        plan(h, job_id)
        runner.run_batch(h.deps, claim(h))  # upload, create: submitted
        h.clock.advance(3600)  # the provider finishes the batch
        # Given daemon A polls the batch (completed: its ingest is next, under the same lease)
        a = claim(h)
        assert steps.poll(h.deps, a)
        assert scalar(db_url, "SELECT state FROM orchestrator.batches") == "ingesting"
        a = dataclasses.replace(a, state="ingesting")
        # and loses its lease to daemon B
        expire_leases(db_url)
        b = claim(h)
        downloads = len(h.emulator.ledger.calls_to("file_content"))
        # When A's ingest runs with its stale lease
        runner.run_batch(h.deps, a)
        # Then it wrote no result, counted nothing, and did not even download the file
        assert count(db_url, "results") == 0
        assert scalar(db_url, "SELECT succeeded_count FROM orchestrator.jobs") == 0
        assert scalar(db_url, "SELECT state FROM orchestrator.batches") == "ingesting"
        assert len(h.emulator.ledger.calls_to("file_content")) == downloads
        # and B, the lease holder, ingests every result once
        runner.run_batch(h.deps, b)
        assert h.job_status(job_id) == "completed"
        assert count(db_url, "results") == 10
        assert scalar(db_url, "SELECT succeeded_count FROM orchestrator.jobs") == 10
        assert assert_results_match_provider(db_url, h.emulator) == 10
    assert count(db_url, "events", "kind = 'batch_ingested'") == 1


def test_an_operators_resolve_takes_the_batch_from_the_worker_that_holds_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with harness(db_url) as h:
        job_id = enqueue(db_url, simple_requests(5))
        plan(h, job_id)
        # Given a worker holding a batch whose create intent is committed (its answer pending)
        a = claim(h)
        assert steps.upload(h.deps, a)
        with unit_of_work(h.deps.sessions) as s:
            ledger.begin_create(s, a, key=uuid.uuid4(), at=h.clock.now())
        # When an operator decides to create it again
        monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", db_url)
        try:
            assert main(["resolve", str(a.id), "--recreate"]) == 0
        finally:
            logging.getLogger().handlers.clear()
            structlog.reset_defaults()
        # Then the worker's next write is refused, and the operator's decision stands
        with pytest.raises(LeaseLost), unit_of_work(h.deps.sessions) as s:
            ledger.create_unseen(s, a, error="late answer", worker="a")
        state, owner, token = query(
            db_url, "SELECT state, lease_owner, lease_token FROM orchestrator.batches"
        )[0]
        assert (state, owner, token) == ("uploaded", None, a.token + 1)
        assert "batch_resolved" in events(db_url, job_id)
        # and the batch goes on from there
        assert h.run_job(job_id) == "completed"
        assert len(h.emulator.ledger.batches) == 1
