"""Many batches of one job finishing at the same moment: no deadlock, nothing crashed.

Each ingest transaction locks its batch row, COPYs the results, updates the batch once, adds to the
job's counters and closes the job if it was the last open batch. With the job row locked FOR
UPDATE after a second update of the batch row (which re-checks the batch's foreign key with FOR
KEY SHARE on the job), two such transactions deadlock; the ledger's lock order (README, "How it
works") rules that out. Real PostgreSQL, the emulator over real HTTP, a pool of 20 workers.
"""

from __future__ import annotations

import dataclasses

import structlog

from orchestrator.emulator import EmulatorConfig
from tests.support import (
    API_KEY,
    FAST,
    assert_results_match_provider,
    count,
    enqueue,
    harness,
    scalar,
    settings_for,
    simple_requests,
)

BATCHES, PER_BATCH = 20, 50


def deadlocks(db_url: str) -> int:
    return int(
        scalar(
            db_url,
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        )
    )


def test_twenty_batches_of_one_job_ingesting_at_once_never_deadlock(db_url: str) -> None:
    config = EmulatorConfig(mode="openai", api_key=API_KEY)

    settings = settings_for(
        db_url,
        preset="openai",
        target="openai",
        max_requests_per_file=PER_BATCH,
        daemon=dataclasses.replace(FAST, workers=BATCHES),
    )

    with harness(db_url, emulator_config=config, settings=settings) as h:
        job_id = enqueue(db_url, simple_requests(BATCHES * PER_BATCH), target="openai")
        h.run_until(lambda: count(db_url, "batches", "state = 'submitted'") == BATCHES)
        assert count(db_url, "batches") == BATCHES
        before = deadlocks(db_url)
        # Given the provider finished all twenty, and every download takes a moment, so that the
        # twenty ingest transactions overlap
        h.clock.advance(3600)
        h.emulator.faults.add("file_content", delay_seconds=0.3, times=None)
        # When one tick claims all twenty and the pool runs their ingests side by side
        with structlog.testing.capture_logs() as logs:
            h.daemon.tick(wait=True)
        # Then each one finished in its first transaction: no deadlock, no crash, no retry
        assert deadlocks(db_url) - before == 0
        assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
        assert count(db_url, "batches", "state = 'done'") == BATCHES
        assert count(db_url, "batches", "step_failures > 0 OR last_error IS NOT NULL") == 0
        assert len(h.emulator.ledger.calls_to("file_content")) == BATCHES
        assert h.job_status(job_id) == "completed"
        assert assert_results_match_provider(db_url, h.emulator) == BATCHES * PER_BATCH
    assert scalar(db_url, "SELECT succeeded_count FROM orchestrator.jobs") == BATCHES * PER_BATCH
