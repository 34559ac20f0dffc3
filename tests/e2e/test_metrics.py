"""``/metrics`` of a real daemon, checked by hand computation; the gauges' queries read the open work
only.

The daemon runs as ``orchestrator run`` in a subprocess (debug logs, ``/metrics`` on a free port)
against the emulator on a fast clock, with faults: the key revoked at the start (the target is
paused) then restored, one 500 and one 429 on create. Every figure of the scrape is computed from
elsewhere: the emulator's own record of the calls it answered, the database's rows and the
emulator's price table. After the key is restored and the job has finished, the paused, throttled
and running series read 0 on the next scrape (no wait for the 15-s timer).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import __version__
from orchestrator.clock import ScaledClock
from orchestrator.db import ledger, queries
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer
from orchestrator.emulator.pricing import batch_cost
from orchestrator.observability import cost_by_model
from tests.support import (
    API_KEY,
    DaemonProcess,
    assert_results_match_provider,
    count,
    enqueue,
    harness,
    plan_of,
    query,
    recorded_session,
    scalar,
    simple_requests,
    wait_for,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# The emulator's routes as the metrics name them (relative to the target's base_url).
ROUTES = {
    "upload_file": ("/files", "POST"),
    "create_batch": ("/batches", "POST"),
    "get_batch": ("/batches/{id}", "GET"),
    "file_content": ("/files/{id}/content", "GET"),
}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of ``/metrics``, as Prometheus' own parser reads it."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@contextmanager
def daemon_with_metrics(
    db_url: str, server: EmulatorServer, tmp_path: Path
) -> Iterator[tuple[DaemonProcess, str]]:
    daemon = DaemonProcess(
        db_url,
        server.base_url,
        tmp_path,
        http_addr="127.0.0.1:0",
        # two batches of 5; a create whose answer was lost is reconciled 1 s later
        target={"max_requests_per_file": 5, "create_settle_seconds": 0.0},
    )
    daemon.env.update(ORCHESTRATOR_LOG_LEVEL="debug", PYTHONPATH=str(REPO))
    daemon.start()
    try:
        yield daemon, daemon.http_url()
    finally:
        daemon.stop()


def test_a_daemon_s_metrics_match_the_calls_the_rows_and_the_prices(
    db_url: str, tmp_path: Path
) -> None:
    config = EmulatorConfig(api_key=API_KEY, seed=12)
    with (
        Emulator(config, ScaledClock(20)) as emulator,
        EmulatorServer(emulator) as server,
    ):
        # Given a provider that refuses the key, then answers one create 500 and one 429
        emulator.revoke_key()
        emulator.faults.add("create_batch", status=500, times=1)
        emulator.faults.add("create_batch", status=429, retry_after=1, times=1)
        job_id = enqueue(db_url, simple_requests(10))
        with daemon_with_metrics(db_url, server, tmp_path) as (daemon, url):
            # When the daemon finds the key refused, the target is paused, and the scrape says so
            paused = "paused AND target = 'fastrouter'"
            assert wait_for(lambda: count(db_url, "target_state", paused) == 1, timeout=20), (
                daemon.logs()[-3000:]
            )
            during = scrape(url)
            assert value(during, "orchestrator_target_paused", target="fastrouter") == 1
            assert value(during, "orchestrator_target_rate_limited", target="fastrouter") == 0
            assert value(during, "orchestrator_jobs", status="running") == 1
            assert value(during, "orchestrator_jobs", status="pending") == 0
            assert value(during, "orchestrator_open_batches", state="planned") == 2
            assert value(during, "orchestrator_oldest_open_batch_age_seconds") > 0
            health = httpx.get(f"{url}/healthz", timeout=10).json()
            assert health["status"] == "degraded" and health["paused_targets"] == ["fastrouter"]

            # When the key works again, the job completes
            emulator.restore_key()
            # (its log line says so once the daemon has counted it: from then on, without
            # waiting for the timer nor for the FRESH_SECONDS a scrape may reuse a refresh for,
            # the next scrape reads the database again)
            completed = '"event": "job_completed"'
            assert wait_for(lambda: completed in daemon.logs(), timeout=30), daemon.logs()[-3000:]
            assert count(db_url, "jobs", f"id = {job_id} AND status = 'completed'") == 1
            calls = list(emulator.ledger.calls)
            after = scrape(url)
            health = httpx.get(f"{url}/healthz", timeout=10)
            # a request uvicorn cannot parse: it logs a warning, through our formatter
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
                sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                sock.recv(1024)
        logs = daemon.logs()
        as_produced = assert_results_match_provider(db_url, emulator)

    # Then the series of a problem that is gone read 0 on this scrape
    assert value(after, "orchestrator_target_paused", target="fastrouter") == 0
    assert value(after, "orchestrator_target_rate_limited", target="fastrouter") == 0
    assert value(after, "orchestrator_jobs", status="running") == 0
    assert value(after, "orchestrator_jobs", status="pending") == 0
    for state in queries.OPEN_STATES:
        assert value(after, "orchestrator_open_batches", state=state) == 0
    assert value(after, "orchestrator_stuck_batches", target="fastrouter") == 0
    assert value(after, "orchestrator_oldest_pending_job_age_seconds") == 0
    assert value(after, "orchestrator_oldest_open_batch_age_seconds") == 0
    assert value(after, "orchestrator_database_up") == 1
    assert health.status_code == 200 and health.json()["status"] == "ok"

    # API calls: exactly what the emulator answered, by route, method and status
    answered = collections.Counter((ROUTES[c.route], str(c.status)) for c in calls)
    counted = {
        ((dict(ls)["route"], dict(ls)["method"]), dict(ls)["status"]): v
        for (n, ls), v in after.items()
        if n == "orchestrator_api_requests_total" and v
    }
    assert counted == dict(answered)
    assert answered[(("/batches", "POST"), "500")] == 1
    assert answered[(("/batches", "POST"), "429")] == 1
    assert answered[(("/files", "POST"), "401")] >= 1
    batches = count(db_url, "batches")
    assert batches == 2
    assert answered[(("/files", "POST"), "200")] == batches
    assert answered[(("/batches", "POST"), "200")] == batches
    assert answered[(("/files/{id}/content", "GET"), "200")] == batches
    for route, method in ROUTES.values():
        calls_to = sum(n for ((r, m), _), n in answered.items() if (r, m) == (route, method))
        timed = total(
            after, "orchestrator_api_request_duration_seconds_count", route=route, method=method
        )
        assert timed == calls_to, route

    # Steps: one per call that went out, by outcome (a step ends at its first failed call)
    steps = "orchestrator_step_duration_seconds_count"
    failed_calls = sum(n for (_, status), n in answered.items() if status != "200")
    assert total(after, steps, outcome="api_error") == failed_calls
    assert total(after, steps, step="upload", outcome="ok") == batches
    assert total(after, steps, step="poll", outcome="ok") == answered[(ROUTES["get_batch"], "200")]
    assert total(after, steps, step="ingest", outcome="ok") == batches
    assert total(after, steps, outcome="crashed") + total(after, steps, outcome="lease_lost") == 0
    assert value(after, "orchestrator_steps_in_flight") == 0

    # Jobs and creates, counted as they happened
    assert value(after, "orchestrator_jobs_planned_total", outcome="running") == 1
    finished = "orchestrator_jobs_finished_total"
    assert value(after, finished, target="fastrouter", status="completed") == 1
    assert value(after, finished, target="fastrouter", status="failed") == 0
    assert value(after, "orchestrator_ambiguous_creates_total", target="fastrouter") == 1
    assert value(after, "orchestrator_lease_takeovers_total") == 0

    # Tokens and cost: the sums of the rows, and the emulator's prices applied to the tokens
    (model, prompt, completion), *others = query(
        db_url,
        "SELECT model, sum(prompt_tokens), sum(completion_tokens) FROM orchestrator.results "
        "GROUP BY model",
    )
    assert others == [] and prompt > 0 and completion > 0
    # by hand: ten answers as the provider wrote them, each of 11 prompt tokens (its messages,
    # '[{"content":"Say hello to #N","role":"user"}]', are 45 characters) and 15 completion
    # tokens (60 characters)
    assert as_produced == 10 and (prompt, completion) == (110, 150)
    tokens = "orchestrator_tokens_total"
    assert value(after, tokens, target="fastrouter", model=model, kind="prompt") == prompt
    assert value(after, tokens, target="fastrouter", model=model, kind="completion") == completion
    assert scalar(db_url, "SELECT sum(prompt_tokens) FROM orchestrator.batch_model_costs") == prompt
    cost = value(after, "orchestrator_cost_dollars_total", target="fastrouter", model=model)
    in_db = scalar(db_url, "SELECT cost FROM orchestrator.jobs WHERE id = %s", job_id)
    assert in_db == scalar(db_url, "SELECT sum(cost) FROM orchestrator.batches")
    assert cost == pytest.approx(float(in_db), abs=1e-12)
    by_hand = Decimal(repr(batch_cost(model, prompt, 0, completion)))
    assert abs(in_db - by_hand) <= Decimal("0.00000002") * batches

    # The build, the process, the tick
    assert value(after, "orchestrator_build_info", version=__version__, python=_python()) == 1
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert value(after, name) > 0
    assert total(after, "python_info") == 1
    assert abs(value(after, "orchestrator_last_tick_timestamp_seconds") - time.time()) < 10

    # Logs: every line JSON; one per API call, with the provider's request id
    lines = [json.loads(line) for line in logs.splitlines()]
    api = [x for x in lines if x["event"] in ("api_request_sent", "api_request_failed")]
    assert len(api) == len(calls)
    assert all(x["request_id"].startswith("req_") for x in api)
    assert len({x["request_id"] for x in api}) == len(api)
    sent = [x for x in api if x["event"] == "api_request_sent"]
    assert sent and {x["level"] for x in sent} == {"debug"}
    assert {x["status_code"] for x in sent} == {200}
    for x in api:
        assert {"target", "method", "route", "status_code", "duration_ms"} <= x.keys()
    assert API_KEY not in logs
    # state changes at info, each once: every create started ends created (2), refused (the 429,
    # and any create the 429 held back) or unknown (the 500: reconciled, then sent again)
    events = collections.Counter(x["event"] for x in lines)
    assert events["batch_create_refused"] >= 1
    assert events["batch_create_started"] == events["batch_create_refused"] + batches
    assert events["batch_created"] == batches and events["batch_create_ambiguous"] == 1
    assert events["job_completed"] == 1 and events["target_resumed"] == 1
    # the stdlib loggers come out through the same formatter: uvicorn's warning is JSON
    assert any(x.get("logger", "").startswith("uvicorn") for x in lines), logs[-2000:]


def _python() -> str:
    import platform

    return platform.python_version()


def test_the_gauges_read_the_open_work_through_the_partial_indexes(db_url: str) -> None:
    # Given 20,000 finished jobs with a batch each, beside a little open work
    # (history as a restore would bring it back: the enqueue rule, which wants new jobs pending,
    # is off for that one INSERT)
    with psycopg.connect(db_url) as conn:
        conn.execute("ALTER TABLE orchestrator.jobs DISABLE TRIGGER USER")
        conn.execute(
            "INSERT INTO orchestrator.jobs (name, status, finished_at) "
            "SELECT 'old ' || n, 'completed', now() FROM generate_series(1, 20000) n"
        )
        conn.execute("ALTER TABLE orchestrator.jobs ENABLE TRIGGER USER")
        conn.execute(
            "INSERT INTO orchestrator.batches (job_id, target, endpoint, state, next_run_at, "
            "request_count, bytes) SELECT id, 'fastrouter', '/v1/chat/completions', 'done', "
            "now(), 1, 1 FROM orchestrator.jobs"
        )
    enqueue(db_url, simple_requests(2))
    running = enqueue(db_url, simple_requests(2))
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE orchestrator.jobs SET status = 'running' WHERE id = %s", (running,))
        conn.execute(
            "INSERT INTO orchestrator.batches (job_id, target, endpoint, state, next_run_at, "
            "request_count, bytes) VALUES (%s, 'fastrouter', '/v1/chat/completions', "
            "'submitted', now(), 2, 1)",
            (running,),
        )
        conn.execute("ANALYZE orchestrator.jobs")
        conn.execute("ANALYZE orchestrator.batches")
    # When the daemon's gauges are read (every statement they run is kept)
    with recorded_session(db_url) as (s, statements):
        gauges = queries.gauges(s, now=dt.datetime.now(dt.UTC), stuck_after=3600)
    # Then they are right
    assert gauges.jobs == {"pending": 1, "running": 1}
    assert gauges.open_batches == {"submitted": 1}
    # and every statement on jobs or batches reads them through a partial index of open rows
    plans = {
        statement: plan_of(db_url, statement, params)
        for statement, params in statements
        if "orchestrator.jobs" in statement or "orchestrator.batches" in statement
    }
    assert len(plans) == 4, plans
    every = "\n".join(plans.values())
    assert "Seq Scan on jobs" not in every and "Seq Scan on batches" not in every, every
    assert "ix_jobs_open" in every and "ix_batches_runnable" in every, every


def test_a_series_that_no_longer_applies_reads_zero(db_url: str) -> None:
    """In process: the fixed label sets (configured targets and the ones the database knows),
    each refreshed to its current value or 0."""
    with harness(db_url, http=False) as h:
        metrics = h.deps.metrics
        later = h.clock.now() + dt.timedelta(minutes=5)
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "INSERT INTO orchestrator.target_state (target, blocked_until, paused, reason) "
                "VALUES ('fastrouter', %s, true, 'bad key'), ('gone', %s, false, '429')",
                (later, later),
            )
        enqueue(db_url, simple_requests(1))
        # the first scrape reads the database
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(metrics.render().decode())
            for s in family.samples
        }
        assert value(samples, "orchestrator_target_paused", target="fastrouter") == 1
        assert value(samples, "orchestrator_target_rate_limited", target="fastrouter") == 0
        assert value(samples, "orchestrator_target_rate_limited", target="gone") == 1
        assert value(samples, "orchestrator_jobs", status="pending") == 1
        assert value(samples, "orchestrator_jobs", status="running") == 0
        assert value(samples, "orchestrator_oldest_pending_job_age_seconds") >= 0
        assert value(samples, "orchestrator_ambiguous_creates_total", target="fastrouter") == 0
        # When the pause is lifted, the other target's row is gone and the job has started
        with psycopg.connect(db_url) as conn:
            conn.execute("UPDATE orchestrator.target_state SET paused = false")
            conn.execute("DELETE FROM orchestrator.target_state WHERE target = 'gone'")
            conn.execute("UPDATE orchestrator.jobs SET status = 'running'")
        h.daemon.refresh_metrics()
        # Then every series that no longer applies reads 0
        assert metrics.target_paused.labels("fastrouter")._value.get() == 0
        assert metrics.target_rate_limited.labels("fastrouter")._value.get() == 1
        assert metrics.target_rate_limited.labels("gone")._value.get() == 0
        assert metrics.jobs.labels("pending")._value.get() == 0
        assert metrics.jobs.labels("running")._value.get() == 1
        # and a deadline that has passed is no longer a rate limit
        h.clock.advance(301)
        h.daemon.refresh_metrics()
        assert metrics.target_rate_limited.labels("fastrouter")._value.get() == 0


def test_a_lease_taken_over_from_a_stalled_daemon_is_counted(db_url: str) -> None:
    with harness(db_url, http=False) as h:
        enqueue(db_url, simple_requests(2))
        h.daemon.tick(wait=True)  # planned
        # Given a batch another daemon leased and then stalled past its lease
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "UPDATE orchestrator.batches SET lease_owner = gen_random_uuid(), "
                "lease_expires_at = now() - interval '1 second'"
            )
        h.daemon.tick(wait=True)
        assert h.deps.metrics.lease_takeovers._value.get() == 1
        kinds = [r[0] for r in query(db_url, "SELECT kind FROM orchestrator.events")]
        assert kinds.count("batch_lease_taken_over") == 1
        # and a lease that was given back is not a takeover
        h.clock.advance(5)
        h.daemon.tick(wait=True)
        assert h.deps.metrics.lease_takeovers._value.get() == 1


def test_a_batch_s_cost_is_shared_out_to_its_models_to_the_cent() -> None:
    usage = [
        ledger.ModelUsage("a", 300, 100, Decimal("0.00030000")),
        ledger.ModelUsage("b", 100, 100, Decimal("0.00010000")),
    ]
    # our prices: each model its own cost
    assert cost_by_model(Decimal("0.00040000"), usage) == {
        "a": Decimal("0.00030000"),
        "b": Decimal("0.00010000"),
    }
    # the provider's figure: in proportion to the tokens, adding up to it exactly
    shares = cost_by_model(Decimal("0.00100001"), usage)
    assert sum(shares.values()) == Decimal("0.00100001")
    assert shares["a"] == Decimal("0.00066667")
    assert cost_by_model(None, usage) == {} and cost_by_model(Decimal(1), usage[:1]) == {
        "a": Decimal(1)
    }
