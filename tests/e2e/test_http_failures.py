"""What the daemon does with answers httpx itself cannot take: a body that does not match its
``Content-Encoding`` (``httpx.DecodingError``) and a redirect loop (``httpx.TooManyRedirects``).
Both used to escape the API client as crashes; they are API errors like any other now."""

from __future__ import annotations

import gc

import pytest

from orchestrator.db import queries
from orchestrator.emulator.faults import Garbage, Redirect
from tests.support import (
    assert_results_match_provider,
    count,
    enqueue,
    harness,
    make_settings,
    query,
    simple_requests,
)

pytestmark = pytest.mark.e2e


def test_a_poll_answered_with_a_broken_gzip_body_is_retried_not_crashed(db_url: str) -> None:
    with harness(db_url) as h:
        job_id = enqueue(db_url, simple_requests(10))
        h.run_until(lambda: count(db_url, "batches", "state = 'submitted'") == 1)
        # Given a proxy that answers two polls with a "gzip" body that is plain text
        garbage = h.emulator.faults.add("get_batch", Garbage(gzip=True), times=2)
        h.step()
        # Then the poll failed as a passing error (not a crash), with a message that says so
        last_error = query(db_url, "SELECT last_error FROM orchestrator.batches")[0][0]
        assert garbage.fired >= 1
        assert "could not be decoded" in last_error and "internal error" not in last_error
        # and the job completes once the answers are readable again
        assert h.run_job(job_id) == "completed"
        steps = h.deps.metrics.registry.get_sample_value
        assert assert_results_match_provider(db_url, h.emulator) == 10
    assert garbage.fired == 2
    count_of = "orchestrator_step_duration_seconds_count"
    assert steps(count_of, {"step": "poll", "outcome": "api_error"}) == 2
    assert steps(count_of, {"step": "poll", "outcome": "crashed"}) is None
    assert count(db_url, "results", "succeeded") == 10


def test_a_redirect_loop_pauses_the_target_until_it_is_gone(db_url: str) -> None:
    with harness(db_url) as h:
        job_id = enqueue(db_url, simple_requests(10))
        h.run_until(lambda: count(db_url, "batches", "state = 'submitted'") == 1)
        # Given a target whose address now sends every poll round in a loop
        loop = h.emulator.faults.add("get_batch", Redirect(), times=None)
        # When the daemon works for five virtual minutes
        for _ in range(30):
            h.step(10)
        # Then the job waits (nothing failed, nothing crashed), the target is paused and says
        # where to look, and it is probed about once per probe interval (30 s), not hammered
        assert h.job_status(job_id) == "running"
        assert count(db_url, "batches", "state = 'failed'") == 0
        paused = query(db_url, "SELECT paused, reason FROM orchestrator.target_state")
        assert paused[0][0] is True and "redirected more than 20 times" in paused[0][1]
        assert "base_url" in paused[0][1]
        assert 8 <= loop.fired // 21 <= 12
        crashed = {"step": "poll", "outcome": "crashed"}
        assert (
            h.deps.metrics.registry.get_sample_value(
                "orchestrator_step_duration_seconds_count", crashed
            )
            is None
        )
        # When the address is fixed, the job completes by itself
        h.emulator.faults.clear()
        assert h.run_job(job_id) == "completed"
        assert assert_results_match_provider(db_url, h.emulator) == 10
    assert count(db_url, "results", "succeeded") == 10
    assert query(db_url, "SELECT paused FROM orchestrator.target_state") == [(False,)]


def test_a_failed_step_frees_what_it_read_at_once_not_at_the_next_full_collection(
    db_url: str,
) -> None:
    """An upload that fails (the provider is unreachable) holds a 50,000-request batch's reads
    (16 MB) in its traceback's frames. Nothing may keep that traceback in a reference cycle:
    only the interpreter's rare full collections would free it, and a daemon retrying every few
    seconds grew to 1.4 GB between two of them."""
    enqueue(db_url, simple_requests(200))
    unreachable = lambda _base: make_settings(db_url, "http://127.0.0.1:9/v1")  # noqa: E731
    with harness(db_url, settings=unreachable) as h:
        h.daemon.tick(wait=True)  # planned
        gc.collect()
        gc.disable()
        try:
            h.step()  # the upload fails to connect
            h.step()  # and again, after its retry delay
            alive = [o for o in gc.get_objects() if isinstance(o, queries.BatchReader)]
        finally:
            gc.enable()
    assert count(db_url, "batches", "step_failures >= 2") == 1
    assert alive == []
