"""The per-minute call cap holds with three daemons running: ``max_calls_per_minute`` bounds the
calls that all of them together make to the target in each minute, counted in the emulator's
ledger (the provider's side), and the work still all completes, without a failure of our own.

Three daemons on one database and one emulator, sharing the manual clock (so the emulator's
``CallEntry.at`` is on the daemons' clock). Six jobs make some 30 calls in their first minute
without a cap (each an upload, a create, polls and a download); with a cap of 8 they spread over
four minutes.
"""

from __future__ import annotations

import collections
import datetime as dt

import pytest
import structlog

from orchestrator.cli import main
from orchestrator.clock import SystemClock
from orchestrator.daemon import Daemon
from orchestrator.db import ledger
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from orchestrator.deps import make_deps
from orchestrator.emulator import EmulatorConfig
from tests.support import (
    API_KEY,
    Harness,
    assert_results_match_provider,
    enqueue,
    harness,
    query,
    settings_for,
    simple_requests,
)

CAP = 8
JOBS = 6
REQUESTS = 3


def test_the_per_minute_call_cap_holds_with_three_daemons_running(db_url: str) -> None:
    with (
        structlog.testing.capture_logs() as lines,
        harness(db_url, settings=settings_for(db_url, max_calls_per_minute=CAP)) as h,
    ):
        others = [make_deps(h.deps.settings, clock=h.clock, seed=n) for n in (2, 3)]
        daemons = [h.daemon, *(Daemon(d) for d in others)]
        try:
            # Given six jobs, enqueued at once at the start of a minute
            now = h.clock.now()
            h.clock.advance(60 - now.second - now.microsecond / 1e6)
            jobs = [
                enqueue(db_url, simple_requests(REQUESTS, f"j{n}-"), name=f"job{n}")
                for n in range(JOBS)
            ]
            # When the three daemons tick in turn, five virtual seconds apart, until all is done
            for _ in range(120):  # 10 virtual minutes; it takes 4
                if all(h.job_status(j) == "completed" for j in jobs):
                    break
                for daemon in daemons:
                    daemon.tick(wait=True)
                h.clock.advance(5)
            # Then every job completed with every result
            assert [h.job_status(j) for j in jobs] == ["completed"] * JOBS
            assert assert_results_match_provider(db_url, h.emulator) == JOBS * REQUESTS
            # and no minute had more than CAP calls, by all daemons together, while some minute
            # had exactly CAP: the cap was what held them back
            per_minute = collections.Counter(int(c.at // 60) for c in h.emulator.ledger.calls)
            assert max(per_minute.values()) == CAP, per_minute
            assert all(c.status != 429 for c in h.emulator.ledger.calls)
            # (the database counted the very calls the provider saw, in the last minute too)
            ((minute, counted, reason),) = query(
                db_url,
                "SELECT calls_minute, calls_in_minute, reason FROM orchestrator.target_state",
            )
            assert counted == per_minute[int(minute.timestamp() // 60)]
            assert reason == f"call cap: max_calls_per_minute = {CAP} reached"  # what status shows
            # and the cap is no failure: no step failed, no job or batch says anything went wrong
            assert query(
                db_url,
                "SELECT count(*) FILTER (WHERE step_failures > 0 OR failing_since IS NOT NULL "
                "OR last_error IS NOT NULL), count(*) FROM orchestrator.batches",
            ) == [(0, JOBS)]
            assert query(
                db_url, "SELECT count(*) FROM orchestrator.jobs WHERE error IS NOT NULL"
            ) == [(0,)]
            # (nor did one fail on the way: its failures are reset by the step that then worked)
            assert not {"step_failed", "step_crashed", "target_throttled"} & {
                line["event"] for line in lines
            }
            # and each block was recorded once (one event per minute the cap was met in), and counted
            until = [
                u for (u,) in query(
                    db_url,
                    "SELECT detail->>'until' FROM orchestrator.events "
                    "WHERE kind = 'target_call_cap_reached'",
                )
            ]  # fmt: skip
            assert len(until) >= 2 and len(until) == len(set(until))  # it held minute after minute
            waits = sum(
                d.metrics.registry.get_sample_value(
                    "orchestrator_call_cap_waits_total", {"target": "fastrouter"}
                )
                or 0.0
                for d in (h.deps, *others)
            )
            assert waits == len(until)
        finally:
            for daemon in daemons[1:]:
                daemon.close()
            for d in others:
                d.close()


def _to_next_minute(h: Harness, *, plus: float = 0.0) -> dt.datetime:
    """Advance the clock to the start of the next minute (and ``plus`` seconds); its start."""
    now = h.clock.now()
    h.clock.advance(60 - now.second - now.microsecond / 1e6 + plus)
    return h.clock.now().replace(second=0, microsecond=0)


def test_a_create_that_meets_the_cap_is_not_sent_and_waits_for_the_next_minute(
    db_url: str,
) -> None:
    config = EmulatorConfig(mode="openai", api_key=API_KEY)
    settings = settings_for(db_url, preset="openai", target="openai", max_calls_per_minute=1)
    with (
        structlog.testing.capture_logs() as lines,
        harness(db_url, http=False, emulator_config=config, settings=settings) as h,
    ):
        # Given a target capped at 1 call a minute, and a job that needs an upload and a create
        minute = _to_next_minute(h, plus=10)
        job_id = enqueue(db_url, simple_requests(2), target="openai")
        # When the daemon plans it and runs its batch: the upload takes the minute's one call
        h.daemon.tick(wait=True)
        h.daemon.tick(wait=True)
        # Then the create was not sent: a definite refusal (no remote batch, no ambiguity to
        # reconcile), the batch waits for the next minute without a failure, and so does the
        # target (claims skip it)
        assert [c.route for c in h.emulator.ledger.calls] == ["upload_file"]
        assert h.emulator.ledger.batches == []
        next_minute = minute + dt.timedelta(minutes=1)
        assert query(
            db_url,
            "SELECT state, idempotency_key, next_run_at, step_failures, failing_since, "
            "last_error FROM orchestrator.batches",
        ) == [("uploaded", None, next_minute, 0, None, None)]
        assert query(db_url, "SELECT blocked_until FROM orchestrator.target_state") == [
            (next_minute,)
        ]
        ok, health = h.daemon.health()  # listed, with its reason, and nothing is degraded
        assert ok and health["status"] == "ok"
        assert [(t["target"], t["reason"]) for t in health["targets"]] == [
            ("openai", "call cap: max_calls_per_minute = 1 reached")
        ]
        events = [line["event"] for line in lines]
        assert "batch_create_refused" in events and "batch_create_ambiguous" not in events
        # and the orphan sweep, run meanwhile, calls nothing and raises nothing (its next round
        # lists again)
        assert h.daemon.sweep_orphans(force=True) == []
        assert len(h.emulator.ledger.calls) == 1
        assert [line["log_level"] for line in lines if line["event"] == "orphan_sweep_failed"] == [
            "warning"
        ]
        # When the next minute comes, the create goes, and the job completes at a call a minute
        assert _to_next_minute(h) == next_minute
        h.daemon.tick(wait=True)
        assert [c.route for c in h.emulator.ledger.calls][1:] == ["create_batch"]
        assert h.run_job(job_id, seconds=15) == "completed"
        per_minute = collections.Counter(int(c.at // 60) for c in h.emulator.ledger.calls)
        assert set(per_minute.values()) == {1}
        assert query(db_url, "SELECT max(step_failures), count(*) FROM orchestrator.batches") == [
            (0, 1)
        ]
        assert query(db_url, "SELECT count(*) FROM orchestrator.results WHERE succeeded") == [(2,)]
        assert assert_results_match_provider(db_url, h.emulator) == 2
        assert not {"step_failed", "step_crashed"} & {line["event"] for line in lines}


def test_status_shows_a_capped_target_throttled_until_when_and_why(
    cli: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a target whose calls of a minute are used up (on the real clock, as status reads it;
    # the minute after next, so that the test cannot cross its end)
    until = SystemClock().now().replace(second=0, microsecond=0) + dt.timedelta(minutes=2)
    engine = make_engine(cli)
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            ledger.call_cap_reached(s, "fastrouter", until=until, cap=60)
    finally:
        engine.dispose()
    # When the user asks for the status, then it says so, and until when
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert (
        f"target fastrouter: throttled until {until:%H:%M:%S} "
        "(call cap: max_calls_per_minute = 60 reached)"
    ) in out
