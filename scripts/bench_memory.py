"""Benchmark issue 10, item 12: peak memory of planning and upload, whatever the requests' sizes.

    .venv/bin/python scripts/bench_memory.py                      # every case, both modes
    .venv/bin/python scripts/bench_memory.py --cases 190mb,mix    # some of them

Each case is one job enqueued with SQL (bodies generated inside PostgreSQL), of sizes the 200 MB
file limit allows: 600 requests of 1 MB (three files), one request of 190 MB, 50,000 requests of
1 KB, and a mix (1 KB, 400 KB and one 100 MB request in one file). A fresh Python process per case
and mode plans the job (``runner.plan_one``, as the daemon's planning lane does) and uploads each
of its batches (``steps.upload``) to the emulator, which runs in its own process
(``python -m orchestrator emulator``), so that only the orchestrator's memory is measured. Read
from ``/proc/self/status``: RSS before the work, peak RSS (VmHWM, reset before each part) while
planning and while uploading, and RSS once the work is done (a daemon then idle until its next
job).

Two modes, in the same run, on copies of the same database:

* ``paged``: the code as it is. Planning reads each body's size and shape (``db/queries.py``:
  ``job_requests``), never the body; upload reads bodies a page of at most 32 MB at a time and a
  larger body alone, in slices, and gives freed memory back to the OS afterwards.
* ``baseline``: the code before issue 10, reproduced in this script: planning and upload fetch
  2,000 rows at a time through a server-side cursor, whatever their size; planning parses every
  body; each line is built whole; nothing is given back.

The PostgreSQL is ``BENCH_DATABASE_URL`` if set, else 127.0.0.1:5432, else an embedded one; the
databases made here are dropped at the end. Figures only, no timed assertions; the report is also
written to ``bench-results/memory.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from benchdb import Databases, pg_server

# This checkout's orchestrator, for this process, its children and the emulator (not the one an
# editable install elsewhere points to).
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
API_KEY = "sk-bench-memory-0123456789"
TARGET = "fastrouter"
ENDPOINT = "/v1/chat/completions"
RESULTS_DIR = Path("bench-results")
MB = 1024 * 1024
LIMIT_MB = 300
START_TIMEOUT = 60.0
BASELINE_FETCH_ROWS = 2000  # the fixed row count of the code before
MODES = ("baseline", "paged")


@dataclasses.dataclass(frozen=True)
class Group:
    """``count`` requests whose message content is ``chars`` characters long."""

    count: int
    chars: int


@dataclasses.dataclass(frozen=True)
class Case:
    label: str
    description: str
    groups: tuple[Group, ...]


CASES = [
    Case("1mb", "600 requests of 1 MB (three files)", (Group(600, 1_000_000),)),
    Case("190mb", "one request of 190 MB", (Group(1, 190_000_000),)),
    Case("1kb", "50,000 requests of 1 KB", (Group(50_000, 1_000),)),
    Case(
        "mix",
        "10,000 x 1 KB, 150 x 400 KB, one of 100 MB, 10,000 x 1 KB (one file)",
        (Group(10_000, 1_000), Group(150, 400_000), Group(1, 100_000_000), Group(10_000, 1_000)),
    ),
]


# -- helpers shared by the parent and the child processes ----------------------------------------


def vm_mb(field: str) -> float:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset this process's VmHWM to its current RSS (Linux: ``5 > /proc/self/clear_refs``)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def settings_for(db_url: str, base_url: str) -> Any:
    from orchestrator.config import DaemonSettings, Secret, Settings, make_target

    target = make_target(
        TARGET, "fastrouter", base_url=base_url, api_key=Secret(API_KEY), timeout_seconds=600
    )
    return Settings(
        database_url=db_url,
        targets={TARGET: target},
        daemon=DaemonSettings(workers=1, lease_seconds=3600, http_addr=None),
    )


# -- the code before, reproduced: the baseline mode -----------------------------------------------


def install_baseline() -> None:
    """Planning and upload as they were before issue 10: 2,000 rows per fetch, bodies parsed in
    planning, each line built whole (``b'%s,"body":%s}\\n' % (prefix, body.encode())``)."""
    import orjson
    import sqlalchemy as sa

    from orchestrator import plan, steps
    from orchestrator.db.session import unit_of_work
    from orchestrator.domain import requests as rq
    from orchestrator.domain.packing import Packer

    def build_line(r: Any, *, endpoint: str, include_provider: bool) -> bytes:
        head: dict[str, Any] = {"custom_id": r.custom_id}
        if include_provider and r.provider:
            head["provider"] = r.provider
        head["method"] = r.method or "POST"
        head["url"] = r.url or endpoint
        prefix = orjson.dumps(head)[:-1]
        return b'%s,"body":%s}\n' % (prefix, r.body.encode())

    def validate_and_pack(session: Any, job: Any, target: Any) -> Any:
        rules = plan.rules_for(job, target)
        result = plan.Validation()
        packer = Packer(
            max_requests=target.max_requests_per_file, max_bytes=target.file_byte_budget
        )
        rows = session.execute(
            sa.text(
                "SELECT custom_id, provider, method, url, body::text AS body, seq "
                "FROM orchestrator.requests WHERE job_id = :job ORDER BY seq"
            ),
            {"job": job.id},
        ).yield_per(BASELINE_FETCH_ROWS)
        for r in rows:
            row = rq.RequestRow(r.custom_id, r.provider, r.method, r.url)
            line = build_line(r, endpoint=job.endpoint, include_provider=target.requires_provider)
            result.total += 1
            problem = rq.request_problem(row, orjson.loads(r.body), len(line), rules)
            if problem:
                result.invalid += 1
                result.problems.append(problem)
                continue
            result.bytes += len(line)
            closed = packer.add(r.seq, len(line))
            if closed:
                result.chunks.append(closed)
        last = packer.finish()
        if last:
            result.chunks.append(last)
        return result

    def lines(deps: Any, reader: Any, heads: Any) -> Iterator[bytes]:
        with unit_of_work(deps.sessions) as s:
            yield from _lines_in(s, reader, heads)

    def _lines_in(s: Any, reader: Any, heads: Any) -> Iterator[bytes]:
        rows = s.execute(
            sa.text(
                "SELECT r.custom_id, r.provider, r.method, r.url, r.body::text AS body, "
                "r.seq FROM orchestrator.batch_items bi JOIN orchestrator.requests r "
                "  ON r.job_id = bi.job_id AND r.custom_id = bi.custom_id "
                "WHERE bi.batch_id = :b ORDER BY bi.seq"
            ),
            {"b": reader.batch_id},
        ).yield_per(BASELINE_FETCH_ROWS)
        for r in rows:
            head = heads(rq.RequestRow(r.custom_id, r.provider, r.method, r.url))
            yield b"%s%s}\n" % (head, r.body.encode())  # each line built whole

    plan.validate_and_pack = validate_and_pack  # type: ignore[assignment]
    steps._lines = lines  # type: ignore[assignment]


# -- the child: one case, one mode, in a fresh interpreter ----------------------------------------


def child(p: dict[str, Any]) -> dict[str, Any]:
    from orchestrator import runner, steps
    from orchestrator.clock import SystemClock
    from orchestrator.db import ledger
    from orchestrator.db.session import unit_of_work
    from orchestrator.deps import make_deps

    if p["mode"] == "baseline":
        install_baseline()
    deps = make_deps(settings_for(p["db_url"], p["base_url"]), clock=SystemClock())
    deps.clients(TARGET)  # a daemon's client is long-lived
    gc.collect()
    before = vm_mb("VmRSS")

    reset_peak()
    started = time.perf_counter()
    status = runner.plan_one(deps, p["job_id"])
    plan_seconds = time.perf_counter() - started
    plan_peak = vm_mb("VmHWM")
    if status != "running":
        raise RuntimeError(f"the job was not planned: {status}")

    gc.collect()
    reset_peak()
    started = time.perf_counter()
    with unit_of_work(deps.sessions) as s:
        claimed = ledger.claim_batches(
            s, owner=deps.worker_id, now=deps.clock.now(), ttl=3600, limit=100
        )
    uploaded = 0
    for b in claimed:
        if b.state != "planned":
            raise RuntimeError(f"batch {b.id} is {b.state}")
        steps.upload(deps, b)
        uploaded += 1
    upload_seconds = time.perf_counter() - started
    upload_peak = vm_mb("VmHWM")
    gc.collect()
    idle = vm_mb("VmRSS")
    deps.close()
    with psycopg.connect(p["db_url"]) as conn:
        row = conn.execute(
            "SELECT count(*), sum(bytes), sum(request_count) FROM orchestrator.batches "
            "WHERE state = 'uploaded'"
        ).fetchone()
    assert row is not None
    if row[0] != uploaded or row[0] == 0:
        raise RuntimeError(f"{uploaded} uploads, {row[0]} batches uploaded")
    return {
        "mode": p["mode"],
        "batches": uploaded,
        "file_bytes": int(row[1]),
        "requests": int(row[2]),
        "rss_before_mb": before,
        "plan_peak_mb": plan_peak,
        "plan_seconds": plan_seconds,
        "upload_peak_mb": upload_peak,
        "upload_seconds": upload_seconds,
        "idle_after_mb": idle,
    }


def run_child(params: dict[str, Any], log: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", json.dumps(params)]
    with log.open("ab") as err:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child exited {done.returncode}:\n{log.read_text()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


# -- databases and the emulator -------------------------------------------------------------------


@contextlib.contextmanager
def emulator(work: Path) -> Iterator[str]:
    """``python -m orchestrator emulator`` in its own process; yields its base URL."""
    port_file = work / "emulator.port"
    command = [
        sys.executable, "-m", "orchestrator", "emulator", "--port", "0",
        "--port-file", str(port_file), "--api-key", API_KEY, "--log-level", "warning",
        "--storage-dir", str(work / "store"),
    ]  # fmt: skip
    with (work / "emulator.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the emulator did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{int(port_file.read_text())}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def enqueue(db_url: str, case: Case) -> int:
    """One pending job, its bodies generated by PostgreSQL (nothing this large passes through
    this process), in one transaction."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "INSERT INTO orchestrator.jobs (name, target, endpoint) VALUES (%s, %s, %s) "
            "RETURNING id",
            (f"bench memory {case.label}", TARGET, ENDPOINT),
        ).fetchone()
        assert row is not None
        job_id = int(row[0])
        for g, group in enumerate(case.groups):
            conn.execute(
                """
                INSERT INTO orchestrator.requests (job_id, custom_id, provider, body)
                SELECT %(job)s, %(prefix)s || lpad(n::text, 6, '0'), 'openai',
                       jsonb_build_object('model', 'openai/gpt-4.1-nano', 'messages',
                           jsonb_build_array(jsonb_build_object('role', 'user', 'content',
                               left(repeat(md5(n::text), %(chars)s / 32 + 1), %(chars)s))))
                FROM generate_series(1, %(count)s) AS n
                """,
                {"job": job_id, "prefix": f"g{g}-", "chars": group.chars, "count": group.count},
            )
    return job_id


# -- the report -----------------------------------------------------------------------------------


def report(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    out = [
        "",
        f"memory benchmark (issue 10, item 12): PostgreSQL {meta['postgres']} ({meta['server']});"
        f" emulator in its own process; {meta['cpus']} CPUs; Python {meta['python']}",
        "",
        f"   {'case':<58}{'mode':<10}{'before':>8}{'planning':>16}{'upload':>18}{'idle after':>12}",
    ]
    for r in results:
        for m in MODES:
            x = r[m]
            out.append(
                f"   {r['description'][:57]:<58}{m:<10}{x['rss_before_mb']:>5.0f} MB"
                f"{x['plan_peak_mb']:>6.0f} MB {x['plan_seconds']:>5.1f} s"
                f"{x['upload_peak_mb']:>7.0f} MB {x['upload_seconds']:>6.1f} s"
                f"{x['idle_after_mb']:>9.0f} MB"
            )
    worst = max(max(r["paged"]["plan_peak_mb"], r["paged"]["upload_peak_mb"]) for r in results)
    verdict = "met" if worst < LIMIT_MB else "NOT met"
    out += [
        f"   peak RSS of the paged code, worst case: {worst:.0f} MB; target < {LIMIT_MB} MB: "
        f"{verdict}",
        "",
        "For the README:",
        "",
        "| case | peak RSS, planning | peak RSS, upload | RSS after, idle |",
        "|---|---|---|---|",
    ]
    for r in results:
        b, p = r["baseline"], r["paged"]
        out.append(
            f"| {r['description']} | {p['plan_peak_mb']:.0f} MB (before: {b['plan_peak_mb']:.0f})"
            f" | {p['upload_peak_mb']:.0f} MB (before: {b['upload_peak_mb']:.0f}) "
            f"| {p['idle_after_mb']:.0f} MB (before: {b['idle_after_mb']:.0f}) |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--cases", default=",".join(c.label for c in CASES), help="comma-separated labels"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        from orchestrator.observability import configure_logging

        configure_logging(level="warning", fmt="json", stream=sys.stderr)
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0

    from orchestrator.db.migrate import upgrade
    from orchestrator.observability import configure_logging

    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    wanted = args.cases.split(",")
    cases = [c for c in CASES if c.label in wanted]
    if len(cases) != len(wanted):
        parser.error(f"cases are {', '.join(c.label for c in CASES)}")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    results: list[dict[str, Any]] = []
    try:
        with pg_server() as (server, where), emulator(work) as base_url:
            dbs = Databases(server, "bench_memory")
            try:
                template = dbs.create("template")
                upgrade(dbs.url(template))
                for case in cases:
                    print(f"{case.description}: enqueueing ...", flush=True)
                    source = dbs.create(case.label, template=template)
                    job_id = enqueue(dbs.url(source), case)
                    result: dict[str, Any] = {"case": case.label, "description": case.description}
                    for mode in MODES:
                        name = dbs.create(f"{case.label}_{mode}", template=source)
                        params = {
                            "mode": mode,
                            "db_url": dbs.url(name),
                            "base_url": base_url,
                            "job_id": job_id,
                        }
                        x = run_child(params, work / f"child-{case.label}-{mode}.log")
                        result[mode] = x
                        print(
                            f"  {mode:<9} {x['batches']} file(s), {x['file_bytes'] / MB:.0f} MB:"
                            f" planning peak {x['plan_peak_mb']:.0f} MB"
                            f" ({x['plan_seconds']:.1f} s), upload peak"
                            f" {x['upload_peak_mb']:.0f} MB ({x['upload_seconds']:.1f} s),"
                            f" idle after {x['idle_after_mb']:.0f} MB",
                            flush=True,
                        )
                        dbs.drop(name)
                    dbs.drop(source)
                    results.append(result)
                meta: dict[str, Any] = {
                    "postgres": dbs.version(),
                    "server": where,
                    "cpus": os.cpu_count(),
                    "python": sys.version.split()[0],
                    "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                }
            finally:
                dbs.drop_all()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    text = report(meta, results)
    print(text)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / "memory.json"
    path.write_text(json.dumps({"meta": meta, "cases": results, "report": text}, indent=2) + "\n")
    print(f"\n({meta['seconds']:.0f} s in all; written to {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
