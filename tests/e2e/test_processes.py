"""Daemons as real processes: SIGKILLed at random moments, several at once, stopped with SIGTERM.

These tests run in real time, and that is the point of them: a SIGKILL, a signal handler, a lease
that expires while a process is dead and a heartbeat thread exist only in a real process on the
real clock. The daemons run ``python -m orchestrator run`` against a fresh database; the emulator
runs in this process over real HTTP on a scaled clock (x20: a batch's provider time is about a
second), so provider time never dominates. Waits are on our own daemons, bounded and generous;
no assertion depends on a wall-clock limit tighter than 10x what it measures on an idle machine.
Every test checks what the results *say* (``assert_results_match_provider``), not only how many
rows there are.
"""

from __future__ import annotations

import collections
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from orchestrator.clock import ScaledClock
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer
from tests.support import (
    API_KEY,
    DaemonProcess,
    all_terminal,
    assert_results_match_provider,
    count,
    enqueue,
    enqueue_generated,
    query,
    scalar,
    simple_requests,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@contextmanager
def served(mode: str, *, scale: float = 20.0, **config: object) -> Iterator[EmulatorServer]:
    emulator_config = EmulatorConfig(mode=mode, api_key=API_KEY, seed=11, **config)  # type: ignore[arg-type]
    with (
        Emulator(emulator_config, ScaledClock(scale)) as emulator,
        EmulatorServer(emulator) as server,
    ):
        yield server


def enqueue_jobs(db_url: str, jobs: int, size: int, target: str) -> list[int]:
    return [
        enqueue(db_url, simple_requests(size, prefix=f"j{n}-"), name=f"job {n}", target=target)
        for n in range(jobs)
    ]


def assert_exactly_one_result_per_request(db_url: str, jobs: int, size: int) -> None:
    assert count(db_url, "jobs", "status = 'completed'") == jobs
    assert count(db_url, "results") == jobs * size
    missing = scalar(
        db_url,
        """
        SELECT count(*) FROM orchestrator.requests q WHERE NOT EXISTS (
            SELECT 1 FROM orchestrator.results r
            WHERE r.job_id = q.job_id AND r.custom_id = q.custom_id)""",
    )
    assert missing == 0
    counted = scalar(db_url, "SELECT sum(succeeded_count + failed_count) FROM orchestrator.jobs")
    assert counted == jobs * size  # job counters agree with the rows: nothing counted twice


def registered(db_url: str, pid: int) -> bool:
    """Whether the daemon with this pid is up (it registers itself before its first tick)."""
    return count(db_url, "workers", "pid = %s AND stopped_at IS NULL", pid) > 0


def remote_creates_per_batch(server: EmulatorServer) -> collections.Counter[str]:
    return collections.Counter(
        (b.metadata or {}).get("orchestrator_batch", "?") for b in server.emulator.ledger.batches
    )


def assert_created_within_policy(db_url: str, server: EmulatorServer, mode: str) -> None:
    creates = remote_creates_per_batch(server)
    submitted = {
        str(r[0]): r[1]
        for r in query(
            db_url,
            "SELECT id, ambiguous_creates FROM orchestrator.batches "
            "WHERE remote_batch_id IS NOT NULL",
        )
    }
    assert set(creates) == set(submitted)
    if mode == "openai":
        # A target that lists batches: every chunk created exactly once, whatever happened.
        assert set(creates.values()) == {1}, creates
    else:
        # FastRouter cannot list: at most one extra remote batch per unknown outcome (README).
        for batch_id, n in creates.items():
            assert n <= 1 + submitted[batch_id], (batch_id, n, submitted[batch_id])


@pytest.mark.parametrize("mode", ["openai", "fastrouter"])
def test_sigkill_at_random_moments_loses_nothing_and_pays_once(
    db_url: str, tmp_path: Path, mode: str
) -> None:
    jobs, size, kills = 14, 200, 14
    rng = random.Random(2026)
    with served(mode) as server:
        faults = server.emulator.faults
        faults.add("*", status=503, probability=0.10, times=None)  # 10 % 5xx everywhere
        faults.add("create_batch", delay_seconds=1.5, probability=0.15, times=None)  # slow
        faults.add("get_batch", delay_seconds=1.5, probability=0.03, times=None)
        for route in ("upload_file", "file_content"):  # slow, but within the client's timeout
            faults.add(route, delay_seconds=0.7, probability=0.5, times=None)
        faults.add("file_content", truncate=0.5, times=3)  # downloads cut off mid-body
        daemon = DaemonProcess(db_url, server.base_url, tmp_path, preset=mode).start()
        mid_step = 0  # kills that landed while the daemon held a lease (a step under way)
        events = psycopg.connect(db_url, autocommit=True)

        def written() -> int:
            """How many events the daemons have written (read on a connection of its own)."""
            row = events.execute("SELECT count(*) FROM orchestrator.events").fetchone()
            assert row is not None
            return int(row[0])

        try:
            since = written()  # the events written by the time of the last kill
            for n in range(kills):
                # the jobs arrive while the daemon is being killed, so there is always work
                enqueue(db_url, simple_requests(size, prefix=f"j{n}-"), target=mode)
                # the kill lands at a seeded random moment of the work: once the daemons have
                # written 1 to 8 events (each a step of a job or a batch done) since the last
                # kill; the job just enqueued writes more than 8 on its own before it is done
                due = since + rng.randint(1, 8)
                reached = wait_for(lambda d=due: written() >= d, timeout=60, interval=0.01)
                assert reached, daemon.logs()[-3000:]
                if n % 4 == 0:  # a burst of 429s
                    faults.add("*", status=429, retry_after=1, times=5)
                mid_step += (
                    count(
                        db_url,
                        "batches",
                        "lease_expires_at > now() AND lease_owner IN "
                        "(SELECT id FROM orchestrator.workers WHERE pid = %s)",
                        daemon.pid,
                    )
                    > 0
                )
                daemon.kill()
                since = written()
                daemon.start()
                # let the new process come up before the next kill, so that on a loaded machine
                # the kills still land in a working daemon, not in one still importing
                assert wait_for(lambda: registered(db_url, daemon.pid), timeout=60)
            finished = wait_for(lambda: all_terminal(db_url), timeout=240, interval=0.1)
        finally:
            daemon.stop()
            events.close()
        assert finished, daemon.logs()[-3000:]
        assert daemon.starts == kills + 1
        print(f"{mode}: {mid_step} of {kills} kills landed mid-step")
        assert mid_step >= kills // 4, mid_step
        # the killed daemons' leases were taken over after they expired
        assert scalar(db_url, "SELECT max(lease_token) FROM orchestrator.batches") > 1
        assert_exactly_one_result_per_request(db_url, jobs, size)
        # every request succeeded, with the very body the provider produced for it
        assert assert_results_match_provider(db_url, server.emulator) == jobs * size
        assert_created_within_policy(db_url, server, mode)
        assert [c for c in server.emulator.ledger.calls if c.status == 429]
        assert "RemoteProtocolError after" in daemon.logs()  # the cut downloads were seen


def test_three_daemons_share_the_work(db_url: str, tmp_path: Path) -> None:
    jobs, size = 50, 40
    with served("openai") as server:
        server.emulator.faults.add("*", status=503, probability=0.05, times=None)
        enqueue_jobs(db_url, jobs, size, "openai")
        daemons = [
            DaemonProcess(
                db_url, server.base_url, tmp_path, preset="openai", name=f"d{n}", workers=2
            ).start()
            for n in range(3)
        ]
        try:
            finished = wait_for(lambda: all_terminal(db_url), timeout=180, interval=0.1)
        finally:
            for d in daemons:
                d.stop()
        assert finished
        assert_exactly_one_result_per_request(db_url, jobs, size)
        assert assert_results_match_provider(db_url, server.emulator) == jobs * size
        assert_created_within_policy(db_url, server, "openai")
    # the three ran side by side: each did some step of the work (events name the daemon that
    # did a step). Which daemon ingests what is up to the scheduler, so that is not asserted.
    by_worker = dict(
        query(
            db_url,
            "SELECT detail->>'worker', count(*) FROM orchestrator.events "
            "WHERE detail ? 'worker' GROUP BY 1",
        )
    )
    assert len(by_worker) == 3, by_worker
    assert scalar(db_url, "SELECT count(*) FROM orchestrator.workers") == 3


@pytest.mark.parametrize("route", ["upload_file", "file_content"])
def test_sigterm_mid_step_lets_the_step_finish_exits_0_and_a_new_daemon_finishes(
    db_url: str, tmp_path: Path, route: str
) -> None:
    with served("fastrouter") as server:
        # the step under way when SIGTERM arrives answers 2 s late (the grace period is 30 s)
        server.emulator.faults.add(route, delay_seconds=2.0, times=1)
        job_id = enqueue(db_url, simple_requests(100), target="fastrouter")
        first = DaemonProcess(
            db_url,
            server.base_url,
            tmp_path,
            name="first",
            shutdown_grace_seconds=30.0,
            target={"timeout_seconds": 30},
        ).start()
        assert wait_for(lambda: bool(server.emulator.ledger.calls_to(route)), timeout=60)
        first.signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0, first.logs()[-2000:]
        logs = first.logs()
        assert '"event": "daemon_stopped"' in logs
        assert '"event": "leases_released"' not in logs  # nothing was abandoned
        # The step in flight finished and its outcome was written before the exit
        if route == "upload_file":
            state, file_id = query(db_url, "SELECT state, input_file_id FROM orchestrator.batches")[
                0
            ]
            assert state != "planned" and file_id == server.emulator.ledger.files[0].id
        else:
            assert count(db_url, "results") == 100
        second = DaemonProcess(db_url, server.base_url, tmp_path, name="second").start()
        try:
            assert wait_for(lambda: all_terminal(db_url), timeout=120)
        finally:
            second.stop()
        # and the new daemon did not do that step again
        assert len(server.emulator.ledger.calls_to(route)) == 1
        assert assert_results_match_provider(db_url, server.emulator) == 100
    assert (
        scalar(db_url, "SELECT status FROM orchestrator.jobs WHERE id = %s", job_id) == "completed"
    )
    assert_exactly_one_result_per_request(db_url, 1, 100)
    assert set(remote_creates_per_batch(server).values()) == {1}


def test_sigterm_past_the_grace_period_releases_leases_for_the_next_daemon(
    db_url: str, tmp_path: Path
) -> None:
    with served("fastrouter") as server:
        server.emulator.faults.add("file_content", delay_seconds=6.0, times=1)
        enqueue(db_url, simple_requests(50), target="fastrouter")
        first = DaemonProcess(
            db_url,
            server.base_url,
            tmp_path,
            name="first",
            lease_seconds=60,
            shutdown_grace_seconds=1.0,
            target={"timeout_seconds": 30},
        ).start()
        assert wait_for(lambda: bool(server.emulator.ledger.calls_to("file_content")), timeout=30)
        first.signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0  # about 1.5 s here: the 1 s grace, then the exit
        assert '"event": "leases_released"' in first.logs()
        # the lease was given back: the next daemon need not wait out its 60 s
        assert (
            scalar(
                db_url, "SELECT count(*) FROM orchestrator.batches WHERE lease_owner IS NOT NULL"
            )
            == 0
        )
        second = DaemonProcess(db_url, server.base_url, tmp_path, name="second").start()
        try:
            assert wait_for(lambda: all_terminal(db_url), timeout=60)
        finally:
            second.stop()
        assert assert_results_match_provider(db_url, server.emulator) == 50
    assert_exactly_one_result_per_request(db_url, 1, 50)


def test_a_second_signal_exits_at_once(db_url: str, tmp_path: Path) -> None:
    with served("fastrouter") as server:
        server.emulator.faults.add("upload_file", delay_seconds=20.0, times=1)
        enqueue(db_url, simple_requests(10), target="fastrouter")
        daemon = DaemonProcess(
            db_url,
            server.base_url,
            tmp_path,
            shutdown_grace_seconds=30.0,
            target={"timeout_seconds": 60},
        ).start()
        assert wait_for(lambda: bool(server.emulator.ledger.calls_to("upload_file")), timeout=30)
        daemon.signal(signal.SIGTERM)
        # once it has taken the signal (its log says it is stopping, with its grace period),
        assert wait_for(lambda: '"event": "daemon_stopping"' in daemon.logs(), timeout=30), (
            daemon.logs()[-3000:]
        )
        assert '"grace_seconds": 30.0' in daemon.logs()
        assert daemon.alive()  # it is still finishing its step within the grace period
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) != 0
        # at once: measured here in well under 0.1 s, against a 20 s step and a 30 s grace
        assert time.monotonic() - started < 5
        # by the second signal, not at the end of a graceful stop that the first one began
        logs = daemon.logs()
        assert '"event": "daemon_killed"' in logs and '"event": "daemon_stopped"' not in logs


def test_a_heartbeat_keeps_a_long_upload_from_being_taken_over(db_url: str, tmp_path: Path) -> None:
    with served("fastrouter") as server:
        # An upload that lasts 2.5 leases (10 s against a 4 s lease), with another daemon ready
        # to pounce; no transaction is open meanwhile, so only the lease protects the batch. The
        # heartbeat renews every lease/3 (1.3 s): a takeover needs it to stall for 2.7 s, against
        # a few milliseconds of scheduling delay measured on an idle machine.
        server.emulator.faults.add("upload_file", delay_seconds=10.0, times=1)
        enqueue(db_url, simple_requests(20), target="fastrouter")
        daemons = [
            DaemonProcess(
                db_url,
                server.base_url,
                tmp_path,
                name=f"d{n}",
                lease_seconds=4.0,
                target={"timeout_seconds": 60},
            ).start()
            for n in range(2)
        ]
        try:
            assert wait_for(lambda: all_terminal(db_url), timeout=120)
        finally:
            for d in daemons:
                d.stop()
        uploads = server.emulator.ledger.calls_to("upload_file")
        assert len(uploads) == 1  # nobody took the batch over while it was being uploaded
        assert_exactly_one_result_per_request(db_url, 1, 20)
        assert assert_results_match_provider(db_url, server.emulator) == 20


def test_sigkill_in_the_middle_of_an_ingest_then_restart_gives_one_row_each(
    db_url: str, tmp_path: Path
) -> None:
    size = 20_000
    with served("fastrouter", scale=50, rows_per_second=100_000, completion_chars=1500) as server:
        job_id = enqueue_generated(db_url, size)
        daemon = DaemonProcess(
            db_url, server.base_url, tmp_path, lease_seconds=2.0, target={"timeout_seconds": 30}
        ).start()
        database = scalar(db_url, "SELECT current_database()")
        copying = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active'"
            " AND query LIKE 'COPY orchestrator.results%%'"
        )
        try:
            # When the daemon is killed while its COPY into results is running and the output
            # file is being downloaded into it (the COPY opens just before the download starts)
            assert wait_for(
                lambda: (
                    bool(server.emulator.ledger.calls_to("file_content"))
                    and scalar(db_url, copying, database) > 0
                ),
                timeout=60,
                interval=0.01,
            ), daemon.logs()[-2000:]
            daemon.kill()
            # Then nothing of the half-done ingest is visible
            assert wait_for(lambda: scalar(db_url, copying, database) == 0, timeout=10)
            assert count(db_url, "results") == 0
            assert scalar(db_url, "SELECT state FROM orchestrator.batches") == "ingesting"
            # And a restarted daemon ingests it all, once
            daemon.start()
            assert wait_for(lambda: all_terminal(db_url), timeout=120), daemon.logs()[-2000:]
        finally:
            daemon.stop()
        assert assert_results_match_provider(db_url, server.emulator) == size
    assert (
        scalar(db_url, "SELECT status FROM orchestrator.jobs WHERE id = %s", job_id) == "completed"
    )
    assert_exactly_one_result_per_request(db_url, 1, size)
    assert len(server.emulator.ledger.calls_to("file_content")) == 2
