"""Benchmark issue 14: what the daemon adds to the provider's own time, phase by phase.

    .venv/bin/python scripts/bench_overhead.py            # make bench-overhead: the three cases
    .venv/bin/python scripts/bench_overhead.py --only 50k

Three cases, each on a fresh database, with the built-in emulator and the daemon each in its own
process (``orchestrator emulator``, ``orchestrator run``), as users run them:

* **50k**: one job of 50,000 requests (one INSERT statement), the daemon paced as the tests'
  daemon processes (``FAST_DAEMON``), the emulator at x200 (50,000 rows at 50 a second: about 5 s);
  run five times (``--runs``), each on a fresh database: the run of median overhead is reported
  with its phases, every run's overhead beside it, and the highest peak RSS of them;
* **2000x5**: 2,000 jobs of 5 requests, one INSERT each, as fast as one connection goes, same
  pacing, the emulator at x20;
* **3req**: one job of 3 requests, the daemon with its **default settings**, the emulator in real
  time taking 3 s over it (1 s validating, 1 s running the rows, 1 s finalizing).

For each: the time from the commit of the (last) INSERT to the job(s) ``completed``; the
provider's own create → completed time (the emulator's plan, checked against the remote
timestamps); their difference, the daemon's **overhead**; and where it went, from the events of
the (slowest) job: commit → planned, planned → uploaded, uploaded → created, the wait between the
provider finishing and the daemon seeing it, seen → ingested; and the daemon's peak RSS. For 50k
the run also measures the **floor** on the same database, as the baseline: one read of the
50,000 rows (``COPY … TO``) and one ``COPY`` of its 50,000 results into a table like ``results``
(logged, as durable as ``results``; timed to its commit); and, per run, the overhead above that
run's own floor, which the load of a shared machine moves less than either.

Databases are created on the PostgreSQL at 127.0.0.1:5432 (or the server of ``--db-url``), else
in an embedded one, and dropped at the end. Figures only; the exit status is non-zero unless every
job completed with every request succeeded. Written to ``bench-results/overhead.json`` too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from bench_e2e import (
    ENQUEUE,
    ENQUEUE_APP,
    RESULTS_DIR,
    start_daemon,
    start_emulator,
    stop,
    wait_done,
    wait_registered,
)
from benchdb import Databases, pg_server


@dataclasses.dataclass(frozen=True)
class Case:
    label: str
    jobs: int
    requests_per_job: int
    time_scale: float
    fast: bool = True  # FAST_DAEMON pacing; False: the default settings
    validation_seconds: float = 30.0  # the emulator's defaults, in virtual seconds
    rows_per_second: float = 50.0
    finalizing_seconds: float = 5.0

    def provider_seconds(self) -> float:
        """The emulator's create → completed time of one batch, in real seconds (its plan)."""
        rows = self.requests_per_job / self.rows_per_second
        return (self.validation_seconds + rows + self.finalizing_seconds) / self.time_scale

    def emulator_args(self) -> list[str]:
        return [
            "--validation-seconds", str(self.validation_seconds),
            "--rows-per-second", str(self.rows_per_second),
            "--finalizing-seconds", str(self.finalizing_seconds),
        ]  # fmt: skip


CASES = {
    "50k": Case("50,000 requests", 1, 50_000, 200.0),
    "2000x5": Case("2,000 jobs × 5", 2_000, 5, 20.0),
    "3req": Case(
        "3 requests, default settings",
        1,
        3,
        1.0,
        fast=False,
        validation_seconds=1.0,
        rows_per_second=3.0,
        finalizing_seconds=1.0,
    ),
}

# The moments of a job, from its events (``events.at`` is when each row was written).
MOMENTS = """
    SELECT j.id,
           min(e.at) FILTER (WHERE e.kind = 'job_planned'),
           min(e.at) FILTER (WHERE e.kind = 'batch_uploaded'),
           min(e.at) FILTER (WHERE e.kind = 'batch_created'),
           min(e.at) FILTER (WHERE e.kind = 'batch_status_changed'
                               AND e.detail ->> 'status' = 'completed'),
           min(e.at) FILTER (WHERE e.kind = 'batch_ingested'),
           j.finished_at,
           max(b.remote_finished_at - b.remote_created_at)
      FROM orchestrator.jobs j
      JOIN orchestrator.events e ON e.job_id = j.id
      JOIN orchestrator.batches b ON b.job_id = j.id
     GROUP BY j.id
"""
PHASES = (
    "commit → planned",
    "planned → uploaded",
    "uploaded → created",
    "provider done → seen done",
    "seen done → ingested",
)


def insert(url: str, case: Case) -> tuple[float, dt.datetime]:
    """The jobs, one statement each; the monotonic and wall times of the last commit."""
    with psycopg.connect(url, autocommit=True, application_name=ENQUEUE_APP) as conn:
        for i in range(case.jobs):
            conn.execute(
                ENQUEUE, {"name": f"overhead {case.label} #{i + 1}", "n": case.requests_per_job}
            )
        return time.monotonic(), dt.datetime.now(dt.UTC)


def phases(url: str, case: Case, committed: dt.datetime) -> dict[str, float]:
    """Where the slowest job's time went, from the commit."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(MOMENTS).fetchall()
    slowest = max(rows, key=lambda r: r[6])
    _, planned, uploaded, created, seen, ingested, _, remote = slowest
    provider = case.provider_seconds()
    return {
        "commit → planned": (planned - committed).total_seconds(),
        "planned → uploaded": (uploaded - planned).total_seconds(),
        "uploaded → created": (created - uploaded).total_seconds(),
        "provider done → seen done": (seen - created).total_seconds() - provider,
        "seen done → ingested": (ingested - seen).total_seconds(),
        "remote": remote.total_seconds() / case.time_scale,
    }


def peak_rss(pid: int) -> float:
    """The process's peak resident memory so far, in MB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def floor(url: str) -> dict[str, float]:
    """The physical floor of the 50k case on this database: one read of the requests' rows and
    one COPY of their results (the results the run wrote, into a table like ``results``)."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        read = 0
        with cur.copy(
            "COPY (SELECT r.custom_id, r.provider, r.body FROM orchestrator.requests r "
            "ORDER BY r.job_id, r.seq) TO STDOUT"
        ) as copy:
            for block in copy:
                read += len(block)
        read_s = time.perf_counter() - started
        blocks: list[bytes] = []
        with cur.copy("COPY orchestrator.results TO STDOUT") as copy:
            blocks.extend(bytes(b) for b in copy)
        conn.rollback()
        # A table of its own, like ``results`` and as durable: a TEMP table would skip the
        # write-ahead log, which a result that must survive a crash cannot (it cost a third of
        # the COPY on the machine of the README's figures). Timed to its commit, as ingest is.
        cur.execute(
            "CREATE TABLE orchestrator.floor_results (LIKE orchestrator.results INCLUDING ALL)"
        )
        conn.commit()
        settle(url)
        started = time.perf_counter()
        with cur.copy("COPY orchestrator.floor_results FROM STDIN") as copy:
            for block in blocks:
                copy.write(block)
        conn.commit()
        write_s = time.perf_counter() - started
        cur.execute("DROP TABLE orchestrator.floor_results")
        conn.commit()
    return {"read": read_s, "copy": write_s, "read_bytes": read}


def settle(url: str) -> None:
    """Start a run on a quiet machine: what the runs before wrote (some 150 MB each, and the
    databases dropped) flushed to disk first, not while this one is timed."""
    with contextlib.suppress(psycopg.Error), psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # a superuser's; elsewhere the run simply starts
    os.sync()
    time.sleep(1)


def run(
    case: Case, dbs: Databases, template: str, work: Path, workers: int, attempt: int = 1
) -> dict[str, Any]:
    print(
        f"{case.label}: {case.jobs:,} × {case.requests_per_job:,} requests (run {attempt})",
        flush=True,
    )
    name = dbs.create(f"o{case.jobs}x{case.requests_per_job}_{attempt}", template=template)
    url = dbs.url(name)
    settle(url)
    emulator = start_emulator(
        work,
        case.time_scale,
        case.emulator_args(),
        label=f"emulator-{case.jobs}x{case.requests_per_job}-{attempt}",  # a port file of its own
    )
    try:
        emulator.wait_ready()
        daemon = start_daemon(url, emulator.base_url, workers, work, name, fast=case.fast)
        try:
            wait_registered(url, [daemon], work)
            last, committed = insert(url, case)
            done, why = wait_done(url, [daemon], last + 600, [0])
            peak = peak_rss(daemon.pid)
        finally:
            stop(daemon)
    finally:
        stop(emulator.process)
    with psycopg.connect(url) as conn:
        completed = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FROM orchestrator.jobs"
        ).fetchone()
        succeeded = conn.execute(
            "SELECT count(*) FROM orchestrator.results WHERE succeeded"
        ).fetchone()
    assert completed is not None
    assert succeeded is not None
    ok = (
        done is not None
        and completed[0] == case.jobs
        and succeeded[0] == case.jobs * case.requests_per_job
    )
    out: dict[str, Any] = {
        "case": case.label,
        "ok": ok,
        "why": why if not ok else "",
        "commit_to_completed": None if done is None else done - last,
        "provider": case.provider_seconds(),
        "daemon_peak_rss_mb": peak,
    }
    if ok:
        out["overhead"] = out["commit_to_completed"] - case.provider_seconds()
        out["phases"] = phases(url, case, committed)
        if case.requests_per_job >= 50_000:
            out["floor"] = floor(url)
        print(
            f"  overhead {out['overhead']:.2f} s: "
            + ", ".join(f"{k} {v:.2f}" for k, v in out["phases"].items() if k != "remote"),
            flush=True,
        )
    dbs.drop(name)
    return out


def report(results: list[dict[str, Any]]) -> str:
    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    lines = [
        "| measure | " + " | ".join(r["case"] for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    rows: list[tuple[str, list[str]]] = [
        ("commit → completed", [cell(r["commit_to_completed"]) for r in results]),
        ("provider's create → completed (remote timestamps)", [
            f"{r['provider']:.2f} s ({r['phases']['remote']:.2f} s)" if r["ok"] else "n/a"
            for r in results
        ]),
        ("**daemon overhead** (the difference)", [
            f"**{r['overhead']:.2f} s**" if r["ok"] else "n/a" for r in results
        ]),
    ]  # fmt: skip
    if any(len(r.get("overheads", ())) > 1 for r in results):
        rows.append(("… its runs (the median's phases below)", [
            ", ".join(f"{o:.2f}" for o in sorted(r["overheads"])) + " s"
            if len(r.get("overheads", ())) > 1 else "one run"
            for r in results
        ]))  # fmt: skip
    for phase in PHASES:
        rows.append(
            (f"… {phase}", [cell(r["phases"][phase]) if r["ok"] else "n/a" for r in results])
        )
    rows.append(("daemon peak RSS", [f"{r['daemon_peak_rss_mb']:.0f} MB" for r in results]))
    for name, values in rows:
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    for r in results:
        if "floor" in r:
            f = r["floor"]
            lines.append(
                f"\nFloor of {r['case']} on this database (the baseline): one read of the rows "
                f"{f['read']:.2f} s ({f['read_bytes'] / 1e6:.1f} MB) + one COPY of the results "
                f"{f['copy']:.2f} s = {f['read'] + f['copy']:.2f} s, against an overhead of "
                f"{r['overhead']:.2f} s"
            )
            above = r.get("above_floor")
            if above and len(above) > 1:
                lines.append(
                    "Overhead above the floor, each run against its own: "
                    + ", ".join(f"{a:.2f}" for a in sorted(above))
                    + f" s (median {statistics.median(above):.2f} s)"
                )
        if not r["ok"]:
            lines.append(f"\n{r['case']}: FAILED: {r['why']}")
    return "\n".join(lines)


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median overhead, with every run's overhead beside it (any failed run is
    reported instead: a figure is only given when every run completed)."""
    failed = [r for r in runs if not r["ok"]]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r["overhead"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["overheads"] = [r["overhead"] for r in runs]
    if all("floor" in r for r in runs):
        # per run, against the floor measured on that run's database a moment later: the load
        # of a shared machine moves both, their difference less
        chosen["above_floor"] = [
            r["overhead"] - r["floor"]["read"] - r["floor"]["copy"] for r in runs
        ]
    chosen["daemon_peak_rss_mb"] = max(r["daemon_peak_rss_mb"] for r in runs)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", choices=list(CASES), action="append")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--runs", type=int, default=5, help="runs of the 50k case; its median is reported"
    )
    parser.add_argument("--db-url", help="a PostgreSQL server where databases may be created")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    from orchestrator.db.migrate import upgrade

    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    results = []
    try:
        with pg_server(args.db_url) as (server, _where):
            dbs = Databases(server, "bench_overhead")
            try:
                template = dbs.create("template")
                upgrade(dbs.url(template))
                for key in args.only or list(CASES):
                    runs = [
                        run(CASES[key], dbs, template, work, args.workers, attempt)
                        for attempt in range(1, (max(1, args.runs) if key == "50k" else 1) + 1)
                    ]
                    results.append(median(runs))
            finally:
                dbs.drop_all()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = report(results)
    print("\n" + text)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "overhead.json").write_text(
        json.dumps({"results": results, "report": text}, indent=2, default=str) + "\n"
    )
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
