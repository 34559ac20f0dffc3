"""Benchmark issue 10: many small jobs end to end, against the provider's own processing time.

    .venv/bin/python scripts/bench_e2e.py                        # make bench-e2e: 2,000 jobs × 5
    .venv/bin/python scripts/bench_e2e.py --jobs 200             # a quick look
    .venv/bin/python scripts/bench_e2e.py --rate 20              # 20 jobs a second, not flat out
    .venv/bin/python scripts/bench_e2e.py --workers 8 --time-scale 60
    .venv/bin/python scripts/bench_e2e.py --daemons 2           # two daemon processes share it
    .venv/bin/python scripts/bench_e2e.py --daemons 1,3         # scale out: 1, then 3 daemons

Everything runs as its users run it, each in its own process: the built-in emulator
(``python -m orchestrator emulator --time-scale S``, a real HTTP server whose clock runs S times
faster than real time) and the daemon (``python -m orchestrator run``, configured by a TOML file
and the environment, paced like the tests' daemons: ``FAST_DAEMON``). Jobs are inserted with plain
SQL, one statement (so one transaction) per job, as fast as one connection goes or at ``--rate``
jobs a second, while the daemon runs.

Two runs, each on a fresh database with a fresh daemon, against the same emulator:

* **many jobs**: ``--jobs`` jobs of ``--requests-per-job`` requests (one batch each);
* **baseline**: one job with as many requests in all (one batch): the same work for the
  provider without the many-jobs overhead.

With ``--daemons 1,3`` the many-jobs run is made once per count (each on a fresh database, the
first count being the baseline of the others), and the baseline with the first count. Each run
also reports its throughput (jobs, requests, batches and API calls a second, from the first INSERT
to the last job completed) and what the database did for it: the CPU time of the daemons'
backends (from ``/proc``, sampled through ``pg_stat_activity``: the server must run on this
machine), the transactions and rows written (``pg_stat_database`` of the run's own database, less
the benchmark's own queries) and the daemons' connections at their peak.

For each: when the first upload happened (from the first INSERT), when the last job was planned,
the time from the last INSERT to the last job ``completed`` (seen by polling every 50 ms), the
emulator's own processing time for that job's batch (validation + rows ÷ rows per second +
finalizing, in real seconds at the time scale; checked against the batches' remote created and
completed timestamps), the overhead (the difference); where each job's time went (from the
events: waiting to be planned, planned → uploaded, created → seen completed, ingest), the CPU time
of the daemon and of the emulator, how busy the machine was and the load average.

Databases are created on the PostgreSQL at 127.0.0.1:5432 (or on the server of ``--db-url``),
else in an embedded one, and dropped at the end; the daemon and the emulator are stopped. Figures
only, no timed assertions; the exit status is non-zero unless every job completed with every
request succeeded. The report is also written to ``bench-results/e2e.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from benchdb import Databases, pg_server

# Benchmark this checkout's package (imported lazily, below), not whichever checkout an editable
# install points at: `python scripts/...` puts scripts/, not the checkout, first on the path.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

JOBS = 2000
REQUESTS_PER_JOB = 5
TIME_SCALE = 20.0  # as the process tests: a 5-request batch takes the provider about 0.5 s
API_KEY = "sk-bench-e2e-0123456789abcdef"
RESULTS_DIR = Path("bench-results")
START_TIMEOUT = 60.0
WATCH_INTERVAL = 0.05  # how often the end of the run is looked for
SAMPLE_INTERVAL = 0.5  # progress and database samples (printed every PRINT_EVERY samples)
PRINT_EVERY = 10
BENCH_APP = "bench-e2e"  # application_name of the benchmark's own connections
ENQUEUE_APP = "bench-e2e-enqueue"  # the "user" inserting jobs
DAEMON_APP = "batch-orchestrator"  # the daemons' pool (orchestrator.db.session.make_engine)
LISTEN_APP = "(none: LISTEN)"  # the daemons' LISTEN connection has no application_name
TERMINAL = ("completed", "failed", "cancelled")

# One statement per job: the job and its requests in one transaction, as the README shows.
ENQUEUE = """
WITH job AS (
    INSERT INTO orchestrator.jobs (name) VALUES (%(name)s) RETURNING id
)
INSERT INTO orchestrator.requests (job_id, custom_id, provider, body)
SELECT job.id, 'req-' || lpad(n::text, 6, '0'), 'openai',
       jsonb_build_object(
           'model', 'openai/gpt-4.1-nano',
           'messages', jsonb_build_array(
               jsonb_build_object('role', 'user', 'content', 'Say hello to #' || n)))
FROM job, generate_series(1, %(n)s) AS n
"""


# -- databases ---------------------------------------------------------------------------------


# -- processes -----------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """A clean environment: none of the developer's own settings, this checkout on the path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ORCHESTRATOR_", "FASTROUTER_", "OPENAI_")) and k != "DATABASE_URL"
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


@dataclasses.dataclass
class EmulatorProcess:
    process: subprocess.Popen[bytes]
    port_file: Path
    time_scale: float
    url: str = ""

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.port_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"the emulator exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the emulator did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{int(self.port_file.read_text())}"


def start_emulator(
    work: Path, time_scale: float, extra: Sequence[str] = (), label: str = "emulator"
) -> EmulatorProcess:
    port_file = work / f"{label}.port"
    command = [
        sys.executable, "-m", "orchestrator", "emulator", "--port", "0",
        "--port-file", str(port_file), "--api-key", API_KEY, "--log-level", "warning",
        "--time-scale", str(time_scale), "--storage-dir", str(work / f"{label}-store"), *extra,
    ]  # fmt: skip
    with (work / f"{label}.log").open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env()
        )
    return EmulatorProcess(process, port_file, time_scale)


def toml_values(values: dict[str, Any]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    return "\n".join(lines) + "\n"


def start_daemon(
    db_url: str,
    base_url: str,
    workers: int,
    work: Path,
    label: str,
    *,
    fast: bool = True,
) -> subprocess.Popen[bytes]:
    """``orchestrator run`` with FAST_DAEMON's pacing (as the tests' daemon processes), or with
    the default settings (``fast=False``)."""
    from orchestrator.config import FAST_DAEMON

    pacing = (
        {k: v for k, v in dataclasses.asdict(FAST_DAEMON).items() if v is not None} if fast else {}
    )
    config = work / f"daemon-{label}.toml"
    config.write_text(
        "[daemon]\n"
        + toml_values({**pacing, "workers": workers, "http_addr": ""})
        + "\n[targets.fastrouter]\n"
        + toml_values({"preset": "fastrouter", "base_url": base_url, "api_key_env": "BENCH_KEY"})
    )
    env = child_env(
        ORCHESTRATOR_DATABASE_URL=db_url,
        ORCHESTRATOR_CONFIG=str(config),
        ORCHESTRATOR_LOG_FORMAT="json",
        ORCHESTRATOR_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "info"),
        ORCHESTRATOR_HTTP_ADDR="off",
        BENCH_KEY=API_KEY,
    )
    with (work / f"daemon-{label}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )


# -- one run ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scenario:
    label: str
    jobs: int
    requests_per_job: int
    daemons: int = 1

    def describe(self) -> str:
        return f"{self.jobs:,} job{'s' if self.jobs != 1 else ''} × {self.requests_per_job:,}"


class Sampler(threading.Thread):
    """Every SAMPLE_INTERVAL: job and batch counts, the load average, the database's connections
    to the run's database by application, and the CPU time of each backend serving the daemons (or
    the inserts); prints every few samples."""

    def __init__(self, db_url: str, started: float, label: str) -> None:
        super().__init__(name="sampler", daemon=True)
        self.db_url = db_url
        self.started = started
        self.label = label
        self.samples: list[dict[str, Any]] = []
        self.stopped = threading.Event()
        self.queries = 0  # transactions of our own in the run's database (subtracted)
        # pid → (application, CPU seconds when first seen, when last seen, seen in the first sample)
        self.backends: dict[int, list[Any]] = {}
        self.peak_connections: dict[str, int] = {}

    def run(self) -> None:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.db_url, autocommit=True, application_name=BENCH_APP) as c,
        ):
            self.watch_backends(c, first=True)
            while not self.stopped.wait(SAMPLE_INTERVAL):
                jobs = counts(c, "SELECT status, count(*) FROM orchestrator.jobs GROUP BY 1")
                batches = counts(c, "SELECT state, count(*) FROM orchestrator.batches GROUP BY 1")
                self.queries += 2
                self.watch_backends(c)
                sample = {
                    "t": round(time.monotonic() - self.started, 2),
                    "load1": os.getloadavg()[0],
                    "jobs": jobs,
                    "batches": batches,
                }
                self.samples.append(sample)
                if len(self.samples) % PRINT_EVERY == 0:
                    print(f"  [{self.label}] {progress(sample)}", flush=True)

    def watch_backends(self, c: psycopg.Connection[Any], *, first: bool = False) -> None:
        rows = c.execute(
            "SELECT pid, application_name FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name <> %s",
            (BENCH_APP,),
        ).fetchall()
        self.queries += 1
        apps: dict[str, int] = {}
        for pid, name in rows:
            app = name or LISTEN_APP
            apps[app] = apps.get(app, 0) + 1
            cpu = cpu_seconds(pid)
            seen = self.backends.get(pid)
            if seen is None:
                self.backends[pid] = [app, cpu, cpu, first]
            elif cpu == cpu:  # not NaN: the backend is still there
                seen[2] = cpu
        apps["total"] = sum(apps.values())
        for app, n in apps.items():
            self.peak_connections[app] = max(self.peak_connections.get(app, 0), n)

    def backend_cpu(self, app: str) -> float:
        """CPU seconds of the backends of ``app`` during the run (a backend that was there at the
        start counts from then; one born later, from its birth)."""
        return sum(
            last - (begin if was_there else 0.0)
            for a, begin, last, was_there in self.backends.values()
            if a == app and last == last
        )

    def stop(self) -> None:
        self.stopped.set()
        if self.ident is not None:  # started
            self.join(timeout=10)


DB_COUNTERS = (
    "xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted",
    "blks_read", "blks_hit",
)  # fmt: skip


def db_counters(server_url: str, name: str) -> dict[str, int]:
    """The run's database's cumulative counters (``pg_stat_database``), read from another
    database so that the reading is not counted."""
    with psycopg.connect(server_url, autocommit=True, application_name=BENCH_APP) as conn:
        row = conn.execute(
            f"SELECT {', '.join(DB_COUNTERS)} FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    return dict(zip(DB_COUNTERS, (int(v) for v in row or ()), strict=False))


def wait_backends_gone(server_url: str, name: str) -> None:
    """After the daemons exit, their backends flush their statistics as they go: wait for them."""
    deadline = time.monotonic() + 30
    with psycopg.connect(server_url, autocommit=True, application_name=BENCH_APP) as conn:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name <> %s"
        while one(conn, sql, name, BENCH_APP) and time.monotonic() < deadline:
            time.sleep(0.05)
        conn.execute("SELECT pg_stat_clear_snapshot()")


def emulator_calls(emulator: EmulatorProcess) -> dict[str, int]:
    """How many API calls the emulator has answered, by route (its ledger)."""
    import httpx

    ledger = httpx.get(emulator.url + "/_emulator/ledger", timeout=60).json()
    out: dict[str, int] = {}
    for call in ledger.get("calls", []):
        key = f"{call['method']} {call['route']}"
        out[key] = out.get(key, 0) + 1
    return out


def counts(conn: psycopg.Connection[Any], sql: str) -> dict[str, int]:
    return {str(k): int(n) for k, n in conn.execute(sql)}


def progress(sample: dict[str, Any]) -> str:
    jobs, batches = sample["jobs"], sample["batches"]
    job_part = " ".join(f"{k} {jobs.get(k, 0)}" for k in ("pending", "running", "completed"))
    states = ("planned", "uploaded", "submitted", "ingesting", "done")
    batch_part = " ".join(f"{k} {batches.get(k, 0)}" for k in states)
    return (
        f"t={sample['t']:6.1f}s  jobs: {job_part}  batches: {batch_part}  "
        f"load {sample['load1']:.2f}"
    )


def wait_registered(db_url: str, daemons: list[subprocess.Popen[bytes]], work: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with psycopg.connect(db_url, autocommit=True, application_name=BENCH_APP) as conn:
        sql = "SELECT count(*) FROM orchestrator.workers WHERE stopped_at IS NULL"
        while one(conn, sql) < len(daemons):
            if any(d.poll() is not None for d in daemons):
                logs = "".join(p.read_text()[-2000:] for p in work.glob("daemon-*.log"))
                raise RuntimeError(f"a daemon exited:\n{logs}")
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not start")
            time.sleep(0.05)


def one(conn: psycopg.Connection[Any], sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def insert_jobs(db_url: str, s: Scenario, rate: float) -> tuple[float, float]:
    """Insert the jobs, one autocommitted statement each; returns the monotonic times right
    after the first and the last commit."""
    first = last = 0.0
    begun = time.monotonic()
    with psycopg.connect(db_url, autocommit=True, application_name=ENQUEUE_APP) as conn:
        for i in range(s.jobs):
            if rate > 0:
                time.sleep(max(0.0, begun + i / rate - time.monotonic()))
            conn.execute(
                ENQUEUE, {"name": f"bench e2e {s.label} #{i + 1}", "n": s.requests_per_job}
            )
            last = time.monotonic()
            if i == 0:
                first = last
    return first, last


def wait_done(
    db_url: str, daemons: list[subprocess.Popen[bytes]], deadline: float, polls: list[int]
) -> tuple[float | None, str]:
    """The monotonic time at which no job is left open (None on a timeout or a dead daemon);
    counts its queries in ``polls``. The moment is when the notification the daemon sends with
    the commit that ends a job arrives (``orchestrator_job_finished``), not the next look after
    it: looking every ``WATCH_INTERVAL`` alone would add half that to every figure."""
    with psycopg.connect(db_url, autocommit=True, application_name=BENCH_APP) as conn:
        conn.execute("LISTEN orchestrator_job_finished")
        sql = f"SELECT count(*) FROM orchestrator.jobs WHERE status NOT IN {TERMINAL}"
        heard = time.monotonic()
        while True:
            polls[0] += 1
            if one(conn, sql) == 0:
                return heard, ""
            dead = [d.returncode for d in daemons if d.poll() is not None]
            if dead:
                return None, f"a daemon exited with {dead[0]}"
            if time.monotonic() > deadline:
                return None, "timed out"
            for _ in conn.notifies(timeout=WATCH_INTERVAL, stop_after=1):
                pass
            heard = time.monotonic()


def provider_seconds(rows: int, time_scale: float) -> float:
    """The emulator's own time for a batch of ``rows`` (its defaults), in real seconds."""
    from orchestrator.emulator.config import EmulatorConfig

    c = EmulatorConfig()
    return (c.validation_seconds + rows / c.rows_per_second + c.finalizing_seconds) / time_scale


def facts(db_url: str) -> dict[str, Any]:
    """What the database says about the run (times in seconds from the first INSERT, on the
    database's clock; a job's finished_at is the daemon's, the same host's clock here)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            """
            WITH t AS (SELECT min(created_at) AS t0, max(created_at) AS t1 FROM orchestrator.jobs),
                 e AS (SELECT kind, at FROM orchestrator.events)
            SELECT
              extract(epoch FROM t.t1 - t.t0),
              extract(epoch FROM (SELECT min(at) FROM e WHERE kind = 'batch_uploaded') - t.t0),
              extract(epoch FROM (SELECT max(at) FROM e WHERE kind = 'job_planned') - t.t0),
              (SELECT count(*) FROM e WHERE kind = 'batch_uploaded' AND at <= t.t1),
              (SELECT count(*) FROM orchestrator.jobs WHERE finished_at <= t.t1),
              (SELECT count(*) FROM orchestrator.batches),
              (SELECT count(*) FROM orchestrator.results WHERE succeeded),
              (SELECT count(*) FROM orchestrator.results WHERE NOT succeeded)
            FROM t
            """
        ).fetchone()
        assert row is not None
        remote = [
            float(v)
            for (v,) in conn.execute(
                "SELECT extract(epoch FROM remote_finished_at - remote_created_at) "
                "FROM orchestrator.batches WHERE remote_finished_at IS NOT NULL"
            )
        ]
        statuses = counts(conn, "SELECT status, count(*) FROM orchestrator.jobs GROUP BY 1")
        stages = stage_seconds(conn)
    keys = (
        "insert_span", "first_upload", "last_planned", "uploads_before_last_insert",
        "completed_before_last_insert", "batches", "succeeded", "failed",
    )  # fmt: skip
    out: dict[str, Any] = {
        k: None if v is None else float(v) for k, v in zip(keys, row, strict=True)
    }
    out.update(remote_virtual=remote, statuses=statuses, stages=stages)
    return out


# Where a job's time goes: the moments of its (first-round) batch, from the events, in order.
STAGES = (
    ("INSERT → planned", "inserted", "job_planned"),
    ("planned → uploaded", "batch_planned", "batch_uploaded"),
    ("uploaded → created", "batch_uploaded", "batch_created"),
    ("created → seen completed (provider + poll wait)", "batch_created", "seen_completed"),
    ("seen completed → ingested", "seen_completed", "batch_ingested"),
    ("INSERT → job completed", "inserted", "job_completed"),
)


def stage_seconds(conn: psycopg.Connection[Any]) -> dict[str, list[float]]:
    rows = conn.execute(
        """
        SELECT j.created_at,
               min(e.at) FILTER (WHERE e.kind = 'job_planned'),
               min(e.at) FILTER (WHERE e.kind = 'batch_planned'),
               min(e.at) FILTER (WHERE e.kind = 'batch_uploaded'),
               min(e.at) FILTER (WHERE e.kind = 'batch_created'),
               min(e.at) FILTER (WHERE e.kind = 'batch_status_changed'
                                   AND e.detail ->> 'status' = 'completed'),
               min(e.at) FILTER (WHERE e.kind = 'batch_ingested'),
               min(e.at) FILTER (WHERE e.kind = 'job_completed')
        FROM orchestrator.jobs j JOIN orchestrator.events e ON e.job_id = j.id
        GROUP BY j.id
        """
    ).fetchall()
    names = (
        "inserted", "job_planned", "batch_planned", "batch_uploaded", "batch_created",
        "seen_completed", "batch_ingested", "job_completed",
    )  # fmt: skip
    out: dict[str, list[float]] = {label: [] for label, _, _ in STAGES}
    for r in rows:
        at = dict(zip(names, r, strict=True))
        for label, a, b in STAGES:
            if at[a] is not None and at[b] is not None:
                out[label].append((at[b] - at[a]).total_seconds())
    return out


def run_scenario(
    dbs: Databases, template: str, emulator: EmulatorProcess, s: Scenario, args: Any, work: Path
) -> dict[str, Any]:
    print(
        f"{s.label}: {s.describe()} requests, {s.daemons} daemon(s) of {args.workers} workers",
        flush=True,
    )
    name = dbs.create(s.label, template=template)
    url = dbs.url(name)
    daemons = [
        start_daemon(url, emulator.base_url, args.workers, work, f"{s.label}-{i + 1}")
        for i in range(s.daemons)
    ]
    pids = [d.pid for d in daemons]
    sampler = Sampler(url, time.monotonic(), s.label)
    polls = [0]
    try:
        wait_registered(url, daemons, work)
        calls0 = emulator_calls(emulator)
        db0 = db_counters(dbs.server, name)
        cpu0 = [sum(cpu_seconds(p) for p in pids), cpu_seconds(emulator.process.pid)]
        busy0 = cpu_busy()
        started = sampler.started = time.monotonic()
        sampler.start()
        first, last = insert_jobs(url, s, args.rate)
        print(f"  [{s.label}] last INSERT at t={last - started:.1f}s", flush=True)
        done, why = wait_done(url, daemons, last + args.timeout, polls)
        cpu1 = [sum(cpu_seconds(p) for p in pids), cpu_seconds(emulator.process.pid)]
        busy1 = cpu_busy()
        load = os.getloadavg()[0]
        calls1 = emulator_calls(emulator)
    finally:
        sampler.stop()
        for d in daemons:
            stop(d)
    wait_backends_gone(dbs.server, name)
    db1 = db_counters(dbs.server, name)
    found = facts(url)
    expected = s.jobs * s.requests_per_job
    ok = (
        done is not None
        and found["statuses"] == {"completed": s.jobs}
        and found["succeeded"] == expected
        and not found["failed"]
    )
    if not ok:
        why = why or f"jobs {found['statuses']}, {found['succeeded']:.0f} of {expected} succeeded"
    provider = provider_seconds(s.requests_per_job, args.time_scale)
    after_last = None if done is None else done - last
    span = None if done is None else done - first
    db = {k: db1.get(k, 0) - db0.get(k, 0) for k in DB_COUNTERS}
    db["own_queries"] = sampler.queries + polls[0]  # ours, in the run's database: not the daemons'
    return {
        "label": s.label,
        "jobs": s.jobs,
        "requests_per_job": s.requests_per_job,
        "daemons": s.daemons,
        "workers": args.workers,
        "ok": ok,
        "why": why,
        "insert_seconds": last - first,
        "after_last_insert": after_last,
        "span": span,
        "provider_seconds": provider,
        "overhead": None if after_last is None else after_last - provider,
        "provider_observed": [v / args.time_scale for v in found.pop("remote_virtual")],
        "daemon_cpu": cpu1[0] - cpu0[0],
        "emulator_cpu": cpu1[1] - cpu0[1],
        "db_cpu_daemons": sampler.backend_cpu(DAEMON_APP) + sampler.backend_cpu(LISTEN_APP),
        "db_cpu_enqueue": sampler.backend_cpu(ENQUEUE_APP),
        "db": db,
        "connections": sampler.peak_connections,
        "api_calls": {k: calls1.get(k, 0) - calls0.get(k, 0) for k in calls1},
        "cpu_busy": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
        "load_end": load,
        "load_max": max([x["load1"] for x in sampler.samples] + [load]),
        "samples": sampler.samples,
        **found,
    }


# -- the report ----------------------------------------------------------------------------------


def seconds(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f} s"


def spread(values: list[float]) -> str:
    """Median / p95 (/ max), or the one value."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f} s"
    p95 = statistics.quantiles(values, n=20, method="inclusive")[18]
    return f"{statistics.median(values):.2f} / {p95:.2f} / {max(values):.2f} s"


def rows_of(r: dict[str, Any]) -> list[tuple[str, str]]:
    observed = r["provider_observed"]
    check = f" (remote timestamps: {statistics.median(observed):.2f} s)" if observed else ""
    per_job = None if r["overhead"] is None else r["overhead"] / r["jobs"] * 1000
    rows = [
        ("jobs × requests", f"{r['jobs']:,} × {r['requests_per_job']:,}"),
        ("first → last INSERT", seconds(r["insert_seconds"])),
        ("first upload, from the first INSERT", seconds(r["first_upload"])),
        ("last job planned, from the first INSERT", seconds(r["last_planned"])),
        ("batches uploaded / jobs completed before the last INSERT",
         f"{r['uploads_before_last_insert']:,.0f} / {r['completed_before_last_insert']:,.0f}"),
        ("**last INSERT → last job completed**", seconds(r["after_last_insert"])),
        ("emulator processing time of a batch", seconds(r["provider_seconds"]) + check),
        ("**overhead** (the difference)", seconds(r["overhead"])),
        ("overhead per job", "n/a" if per_job is None else f"{per_job:,.0f} ms"),
    ]  # fmt: skip
    rows += [(f"per job: {label} (median / p95 / max)", spread(r["stages"][label]))
             for label, _, _ in STAGES]  # fmt: skip
    rows += throughput_rows(r) + database_rows(r)
    rows += [
        ("daemon CPU (all daemons)", seconds(r["daemon_cpu"], 1)),
        ("emulator CPU", seconds(r["emulator_cpu"], 1)),
        ("machine CPU busy (every process)", f"{r['cpu_busy']:.0%}"),
        ("load average, 1 min (at the end / max)", f"{r['load_end']:.2f} / {r['load_max']:.2f}"),
    ]
    return rows


def per_second(n: float, span: float | None) -> str:
    return "n/a" if not span else f"{n / span:,.1f}"


def throughput_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """What the daemons carried, from the first INSERT to the last job completed."""
    span = r["span"]
    calls = sum(r["api_calls"].values())
    return [
        ("daemons × workers", f"{r['daemons']} × {r['workers']}"),
        ("**first INSERT → last job completed**", seconds(span)),
        ("**jobs / s**", per_second(r["jobs"], span)),
        ("requests / s", per_second(r["jobs"] * r["requests_per_job"], span)),
        ("batches / s", per_second(r["batches"], span)),
        ("API calls / s (the emulator's count)", per_second(calls, span)),
        ("API calls per batch", f"{calls / max(1, r['batches']):.1f}"),
    ]


def database_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """What the database did for the run: its own database's counters, less our own queries."""
    db, jobs, batches = r["db"], r["jobs"], max(1, r["batches"])
    requests = jobs * r["requests_per_job"]
    xacts = db["xact_commit"] + db["xact_rollback"] - db["own_queries"]
    written = db["tup_inserted"] + db["tup_updated"] + db["tup_deleted"]
    cpu, span = r["db_cpu_daemons"], r["span"]
    conns = r["connections"]
    per_daemon = conns.get(DAEMON_APP, 0) + conns.get(LISTEN_APP, 0)
    return [
        ("**database CPU for the daemons** (their backends)", seconds(cpu, 1)),
        ("database CPU per job / per request", f"{cpu / jobs * 1000:.1f} / {cpu / requests * 1000:.2f} ms"),
        ("database CPU, share of one core over the run",
         "n/a" if not span else f"{cpu / span:.0%}"),
        ("database CPU for the INSERTs (the users' enqueue)", seconds(r["db_cpu_enqueue"], 1)),
        ("transactions (daemons + inserts)", f"{xacts:,}"),
        ("transactions per job / per batch", f"{xacts / jobs:.1f} / {xacts / batches:.1f}"),
        ("transactions / s", per_second(xacts, span)),
        ("rows written (inserted + updated + deleted)",
         f"{written:,} ({db['tup_inserted']:,} + {db['tup_updated']:,} + {db['tup_deleted']:,})"),
        ("rows written per request", f"{written / requests:.1f}"),
        ("rollbacks", f"{db['xact_rollback']:,}"),
        ("peak connections to the database (all daemons)", f"{per_daemon}"),
        ("peak connections per daemon", f"{per_daemon / r['daemons']:.1f}"),
    ]  # fmt: skip


def report(meta: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    table = [rows_of(r) for r in runs]
    out = [
        f"End to end: {meta['daemons']} daemon(s) of {meta['workers']} workers and the emulator "
        f"(time x{meta['time_scale']:g}), each in its own process; PostgreSQL {meta['postgres']} "
        f"({meta['server']}); {meta['cpus']} CPUs, load average {meta['load_before']:.2f} before "
        f"the run; arrival: {meta['arrival']}",
        "",
        "| measure | " + " | ".join(r["label"] for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    if table:
        for i, (name, _) in enumerate(table[0]):
            out.append(f"| {name} | " + " | ".join(t[i][1] for t in table) + " |")
    for r in runs:
        if not r["ok"]:
            out.append(f"\n{r['label']}: NOT every job completed: {r['why']}")
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------------


def daemon_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("each count must be at least 1")
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--requests-per-job", type=int, default=REQUESTS_PER_JOB)
    parser.add_argument(
        "--time-scale", type=float, default=TIME_SCALE, help="the emulator's virtual s per real s"
    )
    parser.add_argument("--workers", type=int, default=4, help="each daemon's worker pool")
    parser.add_argument(
        "--daemons",
        type=daemon_counts,
        default=[1],
        help="daemon processes sharing the work; a list (1,3) runs the many-jobs run once per "
        "count, the first being the baseline of the others",
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="jobs inserted per second (0: as fast as possible)"
    )
    parser.add_argument(
        "--db-url", help="a PostgreSQL server where databases may be created (default: local)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds after the last INSERT before giving up",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-job run")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import orchestrator
    from orchestrator.db.migrate import upgrade

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    counts = args.daemons
    scenarios = [
        Scenario(
            "many-jobs" if len(counts) == 1 else f"many-jobs-{n}d",
            args.jobs,
            args.requests_per_job,
            n,
        )
        for n in counts
    ]
    if not args.no_baseline:
        scenarios.append(Scenario("baseline", 1, args.jobs * args.requests_per_job, counts[0]))
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    runs: list[dict[str, Any]] = []
    emulator = start_emulator(work, args.time_scale)
    try:
        with pg_server(args.db_url) as (server, where):
            dbs = Databases(server, "bench_e2e")
            try:
                template = dbs.create("template")
                upgrade(dbs.url(template))
                emulator.wait_ready()
                for s in scenarios:
                    runs.append(run_scenario(dbs, template, emulator, s, args, work))
                    if not runs[-1]["ok"]:
                        break
                postgres = dbs.version()
            finally:
                dbs.drop_all()
    finally:
        stop(emulator.process)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    meta = {
        "postgres": postgres,
        "server": where,
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "daemons": ",".join(str(n) for n in args.daemons),
        "load_before": load_before,
        "time_scale": args.time_scale,
        "arrival": f"{args.rate:g} jobs/s" if args.rate > 0 else "as fast as one connection goes",
        "package": str(Path(orchestrator.__file__).parent),
        "python": sys.version.split()[0],
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
    }
    text = report(meta, runs)
    print("\n" + text)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / "e2e.json"
    path.write_text(json.dumps({"meta": meta, "runs": runs, "report": text}, indent=2) + "\n")
    kept = f"; logs kept in {work}" if args.keep else ""
    print(f"\n({meta['seconds']:.0f} s in all; written to {path}{kept})")
    ok = len(runs) == len(scenarios) and all(r["ok"] for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
