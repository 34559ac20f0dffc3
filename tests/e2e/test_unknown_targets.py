"""Targets that are safe to misconfigure: a daemon that does not know a job's target leaves the job
to a daemon that does (it stays pending, and the gauge, the log and ``status`` say why), and a
target with no key is paused with that reason before anything is sent. Two daemons in this
process, each with its own configuration, on the project's emulator; the rows, the emulator's
ledger, the gauges and the log lines are what is held."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from orchestrator.cli import main
from orchestrator.config import Settings
from orchestrator.emulator import EmulatorConfig
from tests.support import (
    API_KEY,
    FAST,
    assert_results_match_provider,
    count,
    enqueue,
    harness,
    query,
    settings_for,
    simple_requests,
)

OPENAI_MODE = EmulatorConfig(mode="openai", api_key=API_KEY)
WAITING = "orchestrator_pending_jobs_not_served"


def _status(capsys: pytest.CaptureFixture[str]) -> str:
    """``orchestrator status`` as configured by the environment (the built-in targets only)."""
    capsys.readouterr()
    try:
        assert main(["status"]) == 0
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    return capsys.readouterr().out


def test_a_job_for_a_target_one_daemon_does_not_know_waits_for_the_daemon_that_knows_it(
    cli: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db_url = cli
    knows_groq = settings_for(db_url, preset="openai", target="groq")
    with (
        harness(db_url) as a,  # fastrouter only
        harness(db_url, emulator_config=OPENAI_MODE, settings=knows_groq) as b,
    ):
        # Given a job for groq, then one for fastrouter, both pending
        groq_job = enqueue(db_url, simple_requests(3), target="groq")
        own_job = enqueue(db_url, simple_requests(2))
        # When the daemon that does not know groq works, and reads its gauges twice
        with structlog.testing.capture_logs() as logs:
            assert a.run_job(own_job) == "completed"
            for _ in range(3):
                a.step()
            a.daemon.refresh_metrics()
            a.daemon.refresh_metrics()
        # Then it ran its own job and left the groq job pending, untouched: no error, no batch
        assert query(
            db_url,
            "SELECT status, error, request_count FROM orchestrator.jobs WHERE id = %s",
            groq_job,
        ) == [("pending", None, None)]
        assert count(db_url, "batches", "job_id = %s", groq_job) == 0
        assert count(db_url, "events", "job_id = %s", groq_job) == 0
        # and said so once, on its gauge and in one log line
        registry = a.deps.metrics.registry
        assert registry.get_sample_value(WAITING, {"target": "groq"}) == 1
        said = [e for e in logs if e["event"] == "jobs_for_target_not_served"]
        assert said == [
            {
                "event": "jobs_for_target_not_served",
                "log_level": "warning",
                "target": "groq",
                "count": 1,
                "served": ["fastrouter"],
                "hint": "they wait for a daemon whose configuration has [targets.groq]",
            }
        ]
        # and `orchestrator status`, configured without groq, names it
        out = _status(capsys)
        assert (
            "1 pending job waits for a target this configuration does not know (groq 1): "
            "groq: they wait for a daemon whose configuration has [targets.groq]"
        ) in out.splitlines()
        # When the daemon that knows groq plans the job, the other one, well past the batches'
        # schedule, does not take them (a step of a target it does not know would crash: the
        # harness fails on that)
        b.run_until(lambda: count(db_url, "batches", "job_id = %s", groq_job) > 0)
        a.clock.advance(3600)
        for _ in range(3):
            a.step()
        # Then the daemon that knows groq completes it, every result the provider's
        assert b.run_job(groq_job) == "completed"
        assert assert_results_match_provider(db_url, b.emulator, job_id=groq_job) == 3
        # and the first daemon's gauge reads 0 again
        a.daemon.refresh_metrics()
        assert registry.get_sample_value(WAITING, {"target": "groq"}) == 0
    assert "does not know" not in _status(capsys)


def test_a_cancelled_job_for_a_target_this_daemon_does_not_know_is_cancelled(db_url: str) -> None:
    with harness(db_url) as h:
        job_id = enqueue(db_url, simple_requests(2), target="groq")
        query(db_url, "UPDATE orchestrator.jobs SET cancel_requested_at = now() RETURNING id")
        h.step()
        # ending it calls no provider: any daemon may
        assert h.job_status(job_id) == "cancelled"
        assert h.emulator.ledger.calls == []


def _groq_from_file(db_url: str, tmp_path: Path, **env: str) -> Callable[[str], Settings]:
    """The settings a daemon reads from a TOML file declaring ``groq`` (key in GROQ_API_KEY) at
    the emulator, and from ``env``; paced like the other in-process daemons."""

    def make(base_url: str) -> Settings:
        config = tmp_path / "orchestrator.toml"
        config.write_text(
            f'[targets.groq]\npreset = "openai"\nbase_url = "{base_url}"\n'
            'api_key_env = "GROQ_API_KEY"\n'
        )
        environ = {"ORCHESTRATOR_CONFIG": str(config), "ORCHESTRATOR_DATABASE_URL": db_url}
        return dataclasses.replace(Settings.from_env({**environ, **env}), daemon=FAST)

    return make


def test_a_target_with_no_key_is_paused_as_such_and_nothing_is_sent(
    db_url: str, tmp_path: Path
) -> None:
    # Given a daemon whose file declares groq, with GROQ_API_KEY not set
    without_key = _groq_from_file(db_url, tmp_path)
    with harness(db_url, emulator_config=OPENAI_MODE, settings=without_key) as h:
        job_id = enqueue(db_url, simple_requests(3), target="groq")
        # When it works for a while
        for _ in range(5):
            h.step()
        # Then the target is paused for want of a key, naming the variable to set
        assert query(db_url, "SELECT target, paused, reason FROM orchestrator.target_state") == [
            ("groq", True, "no key set (set GROQ_API_KEY)")
        ]
        paused = query(
            db_url, "SELECT detail FROM orchestrator.events WHERE kind = 'target_paused'"
        )
        assert [d["error"] for (d,) in paused] == ["no key set (set GROQ_API_KEY)"]
        # and nothing reached the provider; the job waits, nothing failed
        assert h.emulator.ledger.calls == []
        assert h.job_status(job_id) == "running"
        assert count(db_url, "batches", "state = 'failed'") == 0
    # When the daemon is restarted with the key
    with_key = _groq_from_file(db_url, tmp_path, GROQ_API_KEY=API_KEY)
    with harness(db_url, emulator_config=OPENAI_MODE, settings=with_key) as h:
        # Then the work resumes as after a restored key, and the pause is lifted
        assert h.run_job(job_id) == "completed"
        assert assert_results_match_provider(db_url, h.emulator) == 3
    assert query(db_url, "SELECT paused FROM orchestrator.target_state") == [(False,)]
    assert count(db_url, "events", "kind = 'target_resumed'") == 1


def test_a_daemon_without_a_built_in_targets_key_leaves_its_jobs_to_one_that_has_it(
    cli: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db_url = cli

    def fastrouter_key_only(base_url: str) -> Settings:
        environ = {
            "ORCHESTRATOR_DATABASE_URL": db_url,
            "FASTROUTER_API_KEY": API_KEY,
            "FASTROUTER_BASE_URL": base_url,
        }
        return dataclasses.replace(Settings.from_env(environ), daemon=FAST)

    has_openai_key = settings_for(db_url, preset="openai", target="openai")
    with (
        harness(db_url, settings=fastrouter_key_only) as a,
        harness(db_url, emulator_config=OPENAI_MODE, settings=has_openai_key) as b,
    ):
        # Given a daemon that knows the built-in openai target but has no OPENAI_API_KEY
        assert "openai" in a.deps.settings.targets
        job_id = enqueue(db_url, simple_requests(3), target="openai")
        # When it works and reads its gauges
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                a.step()
            a.daemon.refresh_metrics()
        # Then it leaves the job pending and pauses nothing (another daemon may hold the key):
        # nothing is sent, nothing is paused for everyone
        assert h_status(db_url, job_id) == ("pending", None)
        assert count(db_url, "target_state", "paused") == 0
        assert b.emulator.ledger.calls == []
        said = [e for e in logs if e["event"] == "jobs_for_target_not_served"]
        assert [(e["target"], e["hint"]) for e in said] == [
            ("openai", "set OPENAI_API_KEY for a daemon to run them")
        ]
        assert a.deps.metrics.registry.get_sample_value(WAITING, {"target": "openai"}) == 1
        # When the daemon that has the key works, it runs the job; the first one takes no batch
        assert b.run_job(job_id) == "completed"
        for _ in range(3):
            a.step()
        assert assert_results_match_provider(db_url, b.emulator, job_id=job_id) == 3


def h_status(db_url: str, job_id: int) -> tuple[str, str | None]:
    [(status, error)] = query(
        db_url, "SELECT status, error FROM orchestrator.jobs WHERE id = %s", job_id
    )
    return status, error
