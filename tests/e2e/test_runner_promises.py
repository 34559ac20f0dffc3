"""The runner's promise about bugs, seen from the rows and the logs: a step that raises what
nobody expected neither kills the worker nor loses the batch. The batch keeps its lease-free
schedule: it is tried again on the retry backoff, the error is on the batch (where ``status``
shows it), and once the step works again the job ends with every result the provider produced."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import structlog

from orchestrator import steps
from orchestrator.domain.states import BatchState
from tests.support import (
    assert_results_match_provider,
    enqueue,
    harness,
    query,
    simple_requests,
)

SQL = (
    "SELECT state, step_failures, last_error, failing_since, next_run_at "
    "FROM orchestrator.batches WHERE job_id = %s"
)


def test_a_step_that_crashes_is_retried_on_backoff_with_its_error_on_the_batch(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with harness(db_url) as h, structlog.testing.capture_logs() as logs:
        job_id = enqueue(db_url, simple_requests(3))
        # Given a bug in the poll step: it raises what no handler expects, with a long message
        step, poll = steps.STEPS[BatchState.SUBMITTED]
        crashes: list[dt.datetime] = []

        def broken(deps: Any, b: Any) -> bool:
            crashes.append(h.clock.now())
            raise RuntimeError("a bug in the poll step " + "x" * 3000)

        monkeypatch.setitem(steps.STEPS, BatchState.SUBMITTED, (step, broken))
        # When the batch is submitted and its first poll comes (ticks only: h.step fails a test
        # at the first crash, which is what this one wants)
        for _ in range(100):
            if crashes:
                break
            h.daemon.tick(wait=True)
            h.clock.advance(5)
        assert len(crashes) == 1
        # Then the batch is still there, submitted, with the error a person can read, cut to the
        # column's length, and its retry on the first step of the backoff (half the base to the
        # base: 0.5 to 1 s here)
        base = h.deps.policy.retry.base
        [(state, failures, last_error, since, next_run)] = query(db_url, SQL, job_id)
        assert (state, failures, since) == ("submitted", 1, crashes[0])
        assert (
            last_error
            == ("internal error: RuntimeError: a bug in the poll step " + "x" * 3000)[:2000]
        )
        assert base / 2 <= (next_run - crashes[0]).total_seconds() <= base
        assert [e["step"] for e in logs if e["event"] == "step_crashed"] == ["poll"]
        # When it crashes again at its retry
        h.clock.advance((next_run - h.clock.now()).total_seconds())
        h.daemon.tick(wait=True)
        assert len(crashes) == 2
        # Then the second retry waits on the backoff's next step (1 to 2 s here), and the run of
        # failures keeps its start
        [(state, failures, _, since, next_run)] = query(db_url, SQL, job_id)
        assert (state, failures, since) == ("submitted", 2, crashes[0])
        assert base <= (next_run - crashes[1]).total_seconds() <= 2 * base
        # When the bug is gone, the job ends with the provider's results, none lost
        monkeypatch.setitem(steps.STEPS, BatchState.SUBMITTED, (step, poll))
        # (ticks again: the daemon's crash counter still holds the two crashes above)
        for _ in range(100):
            if h.job_status(job_id) == "completed":
                break
            h.daemon.tick(wait=True)
            h.clock.advance(5)
        assert h.job_status(job_id) == "completed"
        assert len(crashes) == 2
        assert assert_results_match_provider(db_url, h.emulator, job_id=job_id) == 3
        [(state, failures, last_error, _, _)] = query(db_url, SQL, job_id)
        assert (state, failures, last_error) == ("done", 0, None)


def test_planning_a_job_starts_it_at_the_daemons_now(db_url: str) -> None:
    with harness(db_url) as h:
        job_id = enqueue(db_url, simple_requests(2))
        planned_at = h.clock.now()
        h.daemon.tick(wait=True)
        # the job is running from the moment it was planned (what status and the views show)
        assert query(
            db_url, "SELECT status, started_at FROM orchestrator.jobs WHERE id = %s", job_id
        ) == [("running", planned_at)]
