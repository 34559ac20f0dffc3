"""``orchestrator demo``: the whole product on one machine, with nothing to install.

An embedded PostgreSQL, the built-in emulator on a loopback port with a fast clock, and the daemon;
a few jobs enqueued with plain SQL, exactly as a user would; a summary when they are done.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import signal
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

from orchestrator.clock import ScaledClock
from orchestrator.config import FAST_DAEMON, Secret, Settings, make_target
from orchestrator.daemon import Daemon
from orchestrator.db import ledger, queries
from orchestrator.db.session import libpq_url, unit_of_work
from orchestrator.deps import Deps, make_deps
from orchestrator.embedded import EmbeddedPostgres, psql_command
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer
from orchestrator.observability import configure_logging

KEEP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TIME_SCALE = 30.0  # one real second is half a virtual minute on the emulator
TIMEOUT_SECONDS = 55.0

# One statement, so one transaction: the job and its requests appear together. These are shown
# to the user exactly as they run, so they can be pasted into psql.
ENQUEUE_CHAT = """\
WITH job AS (
    INSERT INTO orchestrator.jobs (name, endpoint)
    VALUES ('{name}', '/v1/chat/completions')
    RETURNING id
)
INSERT INTO orchestrator.requests (job_id, custom_id, provider, body)
SELECT job.id, '{prefix}' || n, 'openai',
       jsonb_build_object(
           'model', 'openai/gpt-4.1-nano',
           'messages', jsonb_build_array(
               jsonb_build_object('role', 'user', 'content', '{prompt}' || n)),
           'max_tokens', 200)
FROM job, generate_series(1, {n}) AS n;"""

ENQUEUE_EMBEDDINGS = """\
WITH job AS (
    INSERT INTO orchestrator.jobs (name, endpoint)
    VALUES ('{name}', '/v1/embeddings')
    RETURNING id
)
INSERT INTO orchestrator.requests (job_id, custom_id, provider, body)
SELECT job.id, '{prefix}' || n, 'openai',
       jsonb_build_object('model', 'openai/text-embedding-3-small',
                          'input', '{prompt}' || n)
FROM job, generate_series(1, {n}) AS n;"""

# List prices per million tokens, half off at the batch rate: the emulator reports its own cost
# (as FastRouter does), which wins; ours is kept beside it (cost_by_day, request_results).
PRICES_SQL = """\
INSERT INTO orchestrator.prices (model, valid_from, input_per_mtok, output_per_mtok, batch_discount)
VALUES ('openai/gpt-4.1-nano', '2025-04-14', 0.10, 0.40, 0.5),
       ('openai/text-embedding-3-small', '2024-01-25', 0.02, 0, 0.5);"""

SAMPLES = [
    (ENQUEUE_CHAT, "demo: product blurbs", "product-", "Write a one-line blurb for product #"),
    (ENQUEUE_CHAT, "demo: ticket triage", "ticket-", "Classify the urgency of support ticket #"),
    (ENQUEUE_EMBEDDINGS, "demo: doc embeddings", "doc-", "Paragraph number "),
]


def sample_sql(index: int, requests: int) -> str:
    """The SQL of sample job ``index`` (our own constants: nothing here comes from a user)."""
    template, name, prefix, prompt = SAMPLES[index % len(SAMPLES)]
    return template.format(name=name, prefix=prefix, prompt=prompt, n=int(requests))


def run_demo(settings: Settings, *, jobs: int = 3, requests: int = 40, keep: bool = False) -> int:
    started = time.monotonic()
    configure_logging(level="error", fmt=settings.log_format, stream=None)
    # imported once logging is quiet: alembic logs its plugins at info when it is imported
    from orchestrator.db import migrate

    print("batch-orchestrator demo: embedded PostgreSQL + built-in emulator + daemon\n")
    with EmbeddedPostgres() as pg:
        print(f"  PostgreSQL  embedded, temporary ({pg.url})")
        migrate.upgrade(pg.url)
        key = "demo-" + secrets.token_hex(8)
        emulator_config = EmulatorConfig(
            mode="fastrouter", seed=7, api_key=key, line_failure_rate=0.05, completion_chars=120
        )
        with (
            Emulator(emulator_config, ScaledClock(TIME_SCALE)) as emulator,
            EmulatorServer(emulator) as server,
        ):
            print(
                f"  Batch API   built-in emulator, FastRouter-shaped, at {server.base_url} "
                f"(1 s = {TIME_SCALE:.0f} s)"
            )
            code = _run(settings, pg.url, server.base_url, key, jobs, requests, started)
            if keep:
                _keep(pg.url)
            return code


def _run(
    settings: Settings, url: str, base_url: str, key: str, jobs: int, requests: int, started: float
) -> int:
    demo_settings = dataclasses.replace(
        settings,
        database_url=url,
        targets={
            "fastrouter": make_target(
                "fastrouter", "fastrouter", base_url=base_url, api_key=Secret(key)
            )
        },
        daemon=FAST_DAEMON,
    )
    deps = make_deps(demo_settings)
    daemon = Daemon(deps, listen_url=libpq_url(url))
    thread = threading.Thread(
        target=daemon.serve, kwargs={"install_signals": False}, name="daemon", daemon=True
    )
    thread.start()
    print(f"  daemon      {demo_settings.daemon.workers} workers, woken by NOTIFY\n")
    job_ids = _enqueue(deps, jobs, requests)
    print(f"enqueued {len(job_ids)} jobs of {requests} requests with plain SQL, e.g.:")
    print(_indent(sample_sql(0, requests)))
    print("\nwaiting for the daemon", end="", flush=True)
    finished = _wait(deps, job_ids)
    daemon.request_stop()
    thread.join(timeout=10)
    print()
    code = _summary(deps, job_ids)
    if not finished:
        print(f"\nthe jobs did not finish within {TIMEOUT_SECONDS:.0f} s")
        code = 1
    print(f"\ndemo finished in {time.monotonic() - started:.1f} s")
    deps.close()
    return code


def _keep(url: str) -> None:
    """Leave the database up for the user to explore until Ctrl-C (or SIGTERM, SIGHUP), and say
    how to connect: psql (the embedded server's own when there is none on the PATH) and the
    orchestrator's commands."""
    print(
        "\nThe database stays up until you press Ctrl-C. Connect to it from another terminal:\n"
        + _indent(f"{psql_command()} '{url}'")
        + "\nor use the orchestrator's commands on it:\n"
        + _indent(
            f"export ORCHESTRATOR_DATABASE_URL='{url}'\n"
            f"{_orchestrator_command()} status\n"
            f"{_orchestrator_command()} results 1 --format csv"
        ),
        flush=True,
    )
    # Ctrl-C, a closed terminal or a kill end the wait the same way: the database is stopped and
    # its temporary directory removed (a default SIGTERM would leave a server running behind).
    done = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in KEEP_SIGNALS}
    for sig in KEEP_SIGNALS:
        signal.signal(sig, lambda signum, frame: done.set())
    try:
        while not done.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print()


def _orchestrator_command() -> str:
    """``orchestrator`` if it is on the PATH, else the script next to this Python (the venv's)."""
    if shutil.which("orchestrator"):
        return "orchestrator"
    script = Path(sys.executable).parent / "orchestrator"
    return str(script) if script.is_file() else "orchestrator"


def _enqueue(deps: Deps, jobs: int, requests: int) -> list[int]:
    """Each sample job as a user would enqueue it: one SQL statement, its own transaction."""
    with unit_of_work(deps.sessions) as s:
        ledger.run_user_sql(s, PRICES_SQL)
    for n in range(jobs):
        with unit_of_work(deps.sessions) as s:
            ledger.run_user_sql(s, sample_sql(n, requests))
    with unit_of_work(deps.sessions) as s:
        return queries.job_ids(s)


def _wait(deps: Deps, job_ids: list[int]) -> bool:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        with unit_of_work(deps.sessions) as s:
            open_jobs = queries.open_job_count(s, job_ids)
        if not open_jobs:
            return True
        print(".", end="", flush=True)
        time.sleep(0.5)  # noqa: TID251 - the demo waits for its own daemon, in real time
    return False


def _summary(deps: Deps, job_ids: list[int]) -> int:
    with unit_of_work(deps.sessions) as s:
        jobs = queries.jobs(s, job_ids)
    rows = [
        [
            str(j.id),
            j.name or "",
            j.status,
            str(j.request_count or 0),
            str(j.succeeded_count),
            str(j.failed_count),
            f"{j.total_tokens:,}",
            "n/a" if j.cost is None else f"${j.cost:.6f}",
        ]
        for j in jobs
    ]
    total_cost = sum((j.cost or Decimal(0) for j in jobs), Decimal(0))
    rows.append(
        [
            "",
            "total",
            "",
            str(sum(j.request_count or 0 for j in jobs)),
            str(sum(j.succeeded_count for j in jobs)),
            str(sum(j.failed_count for j in jobs)),
            f"{sum(j.total_tokens for j in jobs):,}",
            f"${total_cost:.6f}",
        ]
    )
    headers = ["job", "name", "status", "requests", "succeeded", "failed", "tokens", "cost"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print("\nRead the results with SQL (psql, Metabase, Grafana), for example:")
    print(
        _indent(
            f"SELECT custom_id, status, answer, error_message, total_tokens, cost\n"
            f"  FROM orchestrator.request_results WHERE job_id = {job_ids[0]} ORDER BY seq;\n"
            "SELECT * FROM orchestrator.job_summary;\n"
            "SELECT * FROM orchestrator.cost_by_day;"
        )
    )
    ok = all(j.status == "completed" for j in jobs)
    return 0 if ok else 1


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
