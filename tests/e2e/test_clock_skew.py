"""Daemons whose clocks disagree: leases are judged by the database's clock, not a daemon's.

Daemon A creates a batch; daemon B, whose clock runs 400 s ahead (an unsynchronised VM), ticks
while A's create is in flight. By B's clock A's 60 s lease ran out long ago; by the database's it
is live, and that is the clock that decides. FastRouter cannot list batches, so a takeover here
would create a second remote batch.
"""

from __future__ import annotations

import datetime as dt
import threading

from orchestrator import runner
from orchestrator.clock import ManualClock
from orchestrator.daemon import Daemon
from orchestrator.deps import make_deps
from tests.support import (
    assert_results_match_provider,
    enqueue,
    harness,
    scalar,
    simple_requests,
    wait_for,
)

SKEW = dt.timedelta(seconds=400)


def test_a_daemon_whose_clock_runs_400_s_ahead_takes_over_no_live_lease(db_url: str) -> None:
    with harness(db_url) as a:
        b_deps = make_deps(a.deps.settings, clock=ManualClock(a.clock.now() + SKEW), seed=2)
        b = Daemon(b_deps)
        try:
            job_id = enqueue(db_url, simple_requests(10))
            assert runner.plan_one(a.deps, job_id) == "running"
            # Given A is in the middle of POST /batches (the answer takes 4 s; B's three ticks
            # take a few tens of milliseconds)
            a.emulator.faults.add("create_batch", delay_seconds=4.0, times=1)
            busy = threading.Thread(target=a.daemon.tick, kwargs={"wait": True})
            busy.start()
            assert wait_for(lambda: bool(a.emulator.ledger.calls_to("create_batch")), timeout=30)
            # When B ticks meanwhile, with a clock 400 s ahead of A's (and of the database's)
            started = [b.tick(wait=True) for _ in range(3)]
            busy.join(timeout=60)
            # Then B started nothing: A's lease was live by the database's clock
            assert started == [0, 0, 0]
            assert scalar(db_url, "SELECT lease_token FROM orchestrator.batches") == 1
            assert scalar(db_url, "SELECT state FROM orchestrator.batches") == "submitted"
            # and both daemons then share the rest of the work: one remote batch, every result
            for _ in range(100):
                if a.job_status(job_id) == "completed":
                    break
                a.step(30)
                b_deps.clock.advance(30)  # type: ignore[attr-defined]
                b.tick(wait=True)
            assert a.job_status(job_id) == "completed"
            assert len(a.emulator.ledger.batches) == 1
            assert assert_results_match_provider(db_url, a.emulator) == 10
        finally:
            b.close()
            b_deps.close()
