"""Benchmark issue 5: ingest speed against a plain COPY, ingest memory against file size, upload.

    .venv/bin/python scripts/bench_ingest.py                # make bench: 50,000 lines, 5 runs
    .venv/bin/python scripts/bench_ingest.py --runs 3
    .venv/bin/python scripts/bench_ingest.py --lines 5000   # a quick look
    .venv/bin/python scripts/bench_ingest.py --profile bench-results/prof  # cProfile the ingests

a. Ingest of one 50,000-line output file (~1 KB per response body) through the orchestrator's own
   path, ``steps.ingest`` on a batch in state ``ingesting``: download from the emulator over real
   HTTP, parse, COPY into ``orchestrator.results``, commit. Against it, in the same run: a plain
   psycopg COPY (``write_row`` of the same rows, already parsed, ``Jsonb`` for the jsonb columns)
   into ``bench_baseline`` (``LIKE orchestrator.results INCLUDING ALL``), timed from COPY start to
   commit. Each side runs in a fresh Python process on a fresh copy of the database, after a
   CHECKPOINT; the order alternates from run to run.
b. Peak resident memory (VmHWM) of a real daemon, ``python -m orchestrator run``, while it ingests
   output files of 50,000 lines from ~20 MB to ~200 MB, and of an idle daemon. A chat line's
   envelope alone is ~740 bytes (50,000 of them: ~36 MB), so the ~20 MB file is of embeddings
   with 10-dimension vectors; the others are chat completions of 1, ~450 and ~3,450 characters.
   For context, also a batch whose 50,000 lines all failed (failures are held until both files
   are read, so this is the path whose memory grows with the lines, not with the file).
c. The upload step of a 50,000-request chunk (JSONL from a server-side cursor into a temp file,
   streamed upload): seconds and peak memory, in a fresh process.

The emulator runs as its users run it, ``python -m orchestrator emulator``, one process per
setting, so no server thread shares the GIL with the code being timed; batches are brought to
``ingesting`` by calling the steps in this process and moving the emulator's clock through its
admin endpoint. Databases are created on the PostgreSQL at 127.0.0.1:5432 (or
``BENCH_DATABASE_URL``), else in an embedded one, and dropped at the end. Figures only, no timed
assertions; the report is also written to ``bench-results/ingest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import datetime as dt
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from benchdb import Databases, pg_server
from psycopg.types.json import Jsonb

LINES = 50_000
RUNS = 5
API_KEY = "sk-bench-ingest-0123456789"
TARGET = "fastrouter"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
BODY_BYTES = 1024  # part a: about 1 KB per response body
SMALL_FILE_BYTES = 20 * 1024 * 1024  # part b
BIG_FILE_BYTES = 200 * 1024 * 1024  # part b
RESULTS_DIR = Path("bench-results")
MB = 1024 * 1024
START_TIMEOUT = 60.0
DAEMON_TIMEOUT = 600.0
RESULT_COLUMNS = (
    "job_id, custom_id, batch_id, attempt, succeeded, status_code, response, error, model, "
    "prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens"
)


# -- what is enqueued ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One output file to produce: which endpoint, and how long the emulator's answers are."""

    label: str
    endpoint: str
    completion_chars: int = 1  # chat: the reply's length (an emulator setting)
    dimensions: int = 1  # embeddings: the vector's length (a request field)
    failure_rate: float = 0.0  # share of lines the emulator fails with a 400 (a setting)

    @property
    def emulator_key(self) -> tuple[int, float]:
        return self.completion_chars, self.failure_rate

    def body(self, i: int) -> dict[str, Any]:
        if self.endpoint == EMBEDDINGS:
            return {
                "model": "openai/text-embedding-3-small",
                "input": f"Embed #{i}",
                "dimensions": self.dimensions,
            }
        # No max_tokens: the emulator's reply is then exactly completion_chars long.
        return {
            "model": "openai/gpt-4.1-nano",
            "messages": [{"role": "user", "content": f"Say hello to #{i}"}],
        }

    def describe(self) -> str:
        if self.failure_rate >= 1:
            return "every line failed with a 400: error file only"
        if self.endpoint == EMBEDDINGS:
            return f"embeddings, {self.dimensions} dimensions"
        return f"chat, {self.completion_chars:,}-character replies"


def scenarios(lines: int) -> list[Scenario]:
    """Sized with the emulator's own line builder: ~1 KB bodies; ~20 MB and ~200 MB files."""
    from orchestrator.emulator.config import EmulatorConfig
    from orchestrator.emulator.lines import LineContext, success_line

    def measure(s: Scenario) -> tuple[float, float]:
        config = EmulatorConfig(completion_chars=s.completion_chars)
        line_sizes, body_sizes = [], []
        for i in range(50):
            ctx = LineContext(config, "fr_batch-" + "0" * 24, s.endpoint, i, 1_700_000_000)
            line, _ = success_line(ctx, {"custom_id": f"req-{i:06d}", "body": s.body(i)})
            line_sizes.append(len(orjson.dumps(line)) + 1)
            body_sizes.append(len(orjson.dumps(line["response"]["body"])))
        return statistics.mean(line_sizes), statistics.mean(body_sizes)

    chat_line, chat_body = measure(Scenario("", CHAT, completion_chars=1))
    emb_line1 = measure(Scenario("", EMBEDDINGS, dimensions=1))[0]
    per_dimension = (measure(Scenario("", EMBEDDINGS, dimensions=101))[0] - emb_line1) / 100
    dimensions = round((SMALL_FILE_BYTES / lines - emb_line1) / per_dimension) + 1
    return [
        Scenario("20mb", EMBEDDINGS, dimensions=max(1, min(4096, dimensions))),
        Scenario("chat-min", CHAT, completion_chars=1),
        Scenario("1kb", CHAT, completion_chars=max(1, round(BODY_BYTES - chat_body + 1))),
        Scenario(
            "200mb", CHAT, completion_chars=max(1, round(BIG_FILE_BYTES / lines - chat_line + 1))
        ),
        # Not a size point: failures wait in memory until both files are read (ingest.py).
        Scenario("failed", CHAT, completion_chars=1, failure_rate=1.0),
    ]


# -- helpers shared by the parent and the child processes ----------------------------------------


def vm_mb(field: str, pid: int | str = "self") -> float:
    """A ``VmRSS``/``VmHWM`` line of /proc/<pid>/status, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
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


def claim_one(deps: Any, state: str) -> Any:
    from orchestrator.db import ledger
    from orchestrator.db.session import unit_of_work

    with unit_of_work(deps.sessions) as s:
        claimed = ledger.claim_batches(
            s, owner=deps.worker_id, now=deps.clock.now(), ttl=3600, limit=1
        )
    if len(claimed) != 1 or claimed[0].state != state:
        raise RuntimeError(f"expected one batch in state {state!r}, claimed {claimed}")
    return claimed[0]


def checkpoint(db_url: str) -> None:
    """Flush dirty buffers before a timed run, so no side pays for the other's writes."""
    with contextlib.suppress(psycopg.Error), psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def one(conn: psycopg.Connection[Any], sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


# -- child processes: each timed step runs in a fresh interpreter ---------------------------------


def child_upload(p: dict[str, Any]) -> dict[str, Any]:
    """Part c: ``steps.upload`` of a planned batch; gives the lease back afterwards."""
    from orchestrator import steps
    from orchestrator.clock import ManualClock, from_unix
    from orchestrator.db import ledger
    from orchestrator.db.session import unit_of_work
    from orchestrator.deps import make_deps

    clock = ManualClock(from_unix(p["now"]))
    deps = make_deps(settings_for(p["db_url"], p["base_url"]), clock=clock)
    b = claim_one(deps, "planned")
    gc.collect()
    before = vm_mb("VmRSS")
    reset_peak()
    started = time.perf_counter()
    steps.upload(deps, b)
    seconds = time.perf_counter() - started
    step_peak = vm_mb("VmHWM")
    with unit_of_work(deps.sessions) as s:
        ledger.reschedule(s, b, next_run_at=deps.clock.now())
    deps.close()
    with psycopg.connect(p["db_url"]) as conn:
        written = one(conn, "SELECT bytes FROM orchestrator.batches WHERE id = %s", b.id)
    return {
        "seconds": seconds,
        "bytes": written,
        "rss_before_mb": before,
        "step_peak_mb": step_peak,
    }


def child_ingest(p: dict[str, Any]) -> dict[str, Any]:
    """Part a, orchestrator side: ``steps.ingest`` of a batch in ``ingesting``, timed whole (the
    download streams into the COPY, so it is inside the figure and not separable)."""
    from orchestrator import steps
    from orchestrator.clock import SystemClock
    from orchestrator.deps import make_deps

    deps = make_deps(settings_for(p["db_url"], p["base_url"]), clock=SystemClock())
    b = claim_one(deps, "ingesting")
    deps.clients(b.target)  # a daemon's client is long-lived: its TLS setup is not part of a step
    checkpoint(p["db_url"])
    gc.collect()
    before = vm_mb("VmRSS")
    reset_peak()
    profiler = cProfile.Profile() if p.get("profile") else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    steps.ingest(deps, b)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - started
    step_peak = vm_mb("VmHWM")
    if profiler is not None:
        profiler.dump_stats(p["profile"])
    deps.close()
    with psycopg.connect(p["db_url"]) as conn:
        rows = one(conn, "SELECT count(*) FROM orchestrator.results WHERE batch_id = %s", b.id)
        state = one(conn, "SELECT state FROM orchestrator.batches WHERE id = %s", b.id)
    if state != "done" or rows != p["lines"]:
        raise RuntimeError(f"ingest left the batch {state} with {rows} results")
    return {
        "seconds": seconds,
        "rows": rows,
        "rss_before_mb": before,
        "step_peak_mb": step_peak,
    }


def child_baseline(p: dict[str, Any]) -> dict[str, Any]:
    """Part a, the physical limit: the same rows, parsed beforehand (not timed), written with
    ``cursor.copy`` + ``write_row`` into an equivalent table, timed from COPY start to commit."""
    from orchestrator.domain import lines as ln

    rows = []
    with Path(p["output"]).open("rb") as fh:
        for raw in fh:
            o = ln.classify(orjson.loads(raw))
            u = o.usage
            rows.append(
                (
                    p["job_id"],
                    o.custom_id,
                    p["batch_id"],
                    1,
                    o.succeeded,
                    o.status_code,
                    None if o.body is None else Jsonb(o.body),
                    None if o.error is None else Jsonb(o.error),
                    o.model,
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.total_tokens,
                    u.cached_tokens,
                    u.reasoning_tokens,
                )
            )
    with psycopg.connect(p["db_url"]) as conn:
        conn.execute("CREATE TABLE bench_baseline (LIKE orchestrator.results INCLUDING ALL)")
        conn.commit()
        checkpoint(p["db_url"])
        gc.collect()
        started = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY bench_baseline ({RESULT_COLUMNS}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        conn.commit()
        seconds = time.perf_counter() - started
        count = one(conn, "SELECT count(*) FROM bench_baseline")
    if count != p["lines"]:
        raise RuntimeError(f"the baseline wrote {count} rows")
    return {"seconds": seconds, "rows": count}


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "upload": child_upload,
    "ingest": child_ingest,
    "baseline": child_baseline,
}


def child_main(mode: str, params: str) -> int:
    from orchestrator.observability import configure_logging

    # As the daemon logs (JSON, info), to stderr, which the parent sends to a file.
    configure_logging(level="info", fmt="json", stream=sys.stderr)
    print(json.dumps(CHILDREN[mode](json.loads(params))), flush=True)
    return 0


def run_child(mode: str, params: dict[str, Any], log: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--params", json.dumps(params)]
    with log.open("ab") as err:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {mode} exited {done.returncode}:\n{log.read_text()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


# -- databases ----------------------------------------------------------------------------------


# -- the emulator, in its own process ------------------------------------------------------------


@dataclasses.dataclass
class EmulatorProcess:
    completion_chars: int
    process: subprocess.Popen[bytes]
    port_file: Path
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

    def advance(self, seconds: float) -> None:
        response = httpx.post(f"{self.url}/_emulator/clock/advance", json={"seconds": seconds})
        response.raise_for_status()

    @contextlib.contextmanager
    def content(self, file_id: str) -> Iterator[httpx.Response]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        url = f"{self.base_url}/files/{file_id}/content"
        with httpx.stream("GET", url, headers=headers, timeout=600) as response:
            response.raise_for_status()
            yield response

    def file_bytes(self, file_id: str) -> int:
        """The size of a file (FastRouter has no file metadata route): its content's length."""
        with self.content(file_id) as response:
            return int(response.headers["content-length"])

    def download(self, file_id: str, dest: Path) -> None:
        with self.content(file_id) as response, dest.open("wb") as out:
            for chunk in response.iter_raw(MB):
                out.write(chunk)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_emulator(work: Path, completion_chars: int, failure_rate: float) -> EmulatorProcess:
    name = f"chars{completion_chars}-fail{failure_rate}"
    port_file = work / f"emulator-{name}.port"
    command = [
        sys.executable, "-m", "orchestrator", "emulator", "--port", "0",
        "--port-file", str(port_file), "--api-key", API_KEY, "--log-level", "warning",
        "--completion-chars", str(completion_chars), "--failure-rate", str(failure_rate),
        "--storage-dir", str(work / f"store-{name}"),
    ]  # fmt: skip
    with (work / f"emulator-{name}.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return EmulatorProcess(completion_chars, process, port_file)


# -- getting a batch to `ingesting` --------------------------------------------------------------


def enqueue(db_url: str, scenario: Scenario, lines: int) -> int:
    """One job of ``lines`` requests, with SQL (COPY for the requests), in one transaction."""
    with psycopg.connect(db_url) as conn:
        job_id = int(
            one(
                conn,
                "INSERT INTO orchestrator.jobs (name, endpoint) VALUES (%s, %s) RETURNING id",
                f"bench ingest {scenario.label}",
                scenario.endpoint,
            )
        )
        sql = "COPY orchestrator.requests (job_id, custom_id, provider, body) FROM STDIN"
        with conn.cursor() as cur, cur.copy(sql) as copy:
            for i in range(lines):
                body = orjson.dumps(scenario.body(i)).decode()
                copy.write_row((job_id, f"req-{i:06d}", "openai", body))
    return job_id


@dataclasses.dataclass
class Prepared:
    scenario: Scenario
    emulator: EmulatorProcess
    name: str  # the database, holding one batch in `ingesting` with no lease
    job_id: int
    batch_id: int
    output_file_id: str  # or the error file's, when every line failed
    output_bytes: int
    upload: dict[str, Any]


def prepare(
    dbs: Databases, emulator: EmulatorProcess, scenario: Scenario, lines: int, work: Path
) -> Prepared:
    """Enqueue, plan, upload (in a child: part c), create, poll until the batch is `ingesting`;
    then give its lease back. This daemon's clock starts a day in the past, so that any process
    on the system clock finds the batch due."""
    from orchestrator import runner, steps
    from orchestrator.clock import ManualClock, SystemClock
    from orchestrator.db import ledger, queries
    from orchestrator.db.session import unit_of_work
    from orchestrator.deps import make_deps

    name = dbs.create(scenario.label, template=dbs.template)
    url = dbs.url(name)
    job_id = enqueue(url, scenario, lines)
    clock = ManualClock(SystemClock().now() - dt.timedelta(days=1))
    deps = make_deps(settings_for(url, emulator.base_url), clock=clock)
    try:
        if runner.plan_one(deps, job_id) != "running":
            raise RuntimeError("the job was not planned")
        upload = run_child(
            "upload",
            {"db_url": url, "base_url": emulator.base_url, "now": clock.now().timestamp()},
            work / f"child-upload-{scenario.label}.log",
        )
        b = claim_one(deps, "uploaded")
        steps.create(deps, b)  # gives the lease back; polls later
        clock.advance(3600)
        emulator.advance(3600)  # past validation, every row (50 rows/s) and finalizing
        b = claim_one(deps, "submitted")
        if not steps.poll(deps, b):  # the emulator writes the result files now
            raise RuntimeError("the batch did not finish")
        with unit_of_work(deps.sessions) as s:
            batch = queries.batch(s, b.id)
            output_file_id = batch.output_file_id or batch.error_file_id
            if batch.state != "ingesting" or output_file_id is None:
                raise RuntimeError(f"batch {b.id} is {batch.state}, without a result file")
            ledger.reschedule(s, b, next_run_at=clock.now())
    finally:
        deps.close()
    size = emulator.file_bytes(output_file_id)
    return Prepared(scenario, emulator, name, job_id, b.id, output_file_id, size, upload)


# -- part b: a real daemon process -----------------------------------------------------------------


def daemon_env(db_url: str, base_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ORCHESTRATOR_", "FASTROUTER_", "OPENAI_")) and k != "DATABASE_URL"
    }
    env.update(
        ORCHESTRATOR_DATABASE_URL=db_url,
        FASTROUTER_API_KEY=API_KEY,
        FASTROUTER_BASE_URL=base_url,
        ORCHESTRATOR_HTTP_ADDR="off",
        ORCHESTRATOR_LOG_FORMAT="json",
    )
    return env


@contextlib.contextmanager
def daemon(db_url: str, base_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run"],
            env=daemon_env(db_url, base_url),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def logged_at(log: Path, event: str) -> dt.datetime | None:
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == event:
                return dt.datetime.fromisoformat(record["timestamp"])
    return None


def daemon_ingest(db_url: str, base_url: str, batch_id: int, log: Path) -> dict[str, Any]:
    """Start ``orchestrator run``; it claims the batch at its first tick and ingests it. Its peak
    RSS is read once the batch is done, before it is stopped."""
    started = time.perf_counter()
    with (
        daemon(db_url, base_url, log) as process,
        psycopg.connect(db_url, autocommit=True) as conn,
    ):
        sql = "SELECT state FROM orchestrator.batches WHERE id = %s"
        while (state := one(conn, sql, batch_id)) not in ("done", "failed"):
            if process.poll() is not None:
                raise RuntimeError(f"the daemon exited:\n{log.read_text()[-3000:]}")
            if time.perf_counter() - started > DAEMON_TIMEOUT:
                raise RuntimeError("the daemon did not ingest the batch in time")
            time.sleep(0.05)
        peak = vm_mb("VmHWM", process.pid)
        rows = one(conn, "SELECT count(*) FROM orchestrator.results WHERE batch_id = %s", batch_id)
    begun, ingested = logged_at(log, "daemon_started"), logged_at(log, "batch_ingested")
    seconds = (ingested - begun).total_seconds() if begun and ingested else float("nan")
    return {"state": state, "rows": rows, "seconds": seconds, "peak_mb": peak}


def daemon_idle(db_url: str, base_url: str, log: Path, seconds: float = 4.0) -> dict[str, Any]:
    with daemon(db_url, base_url, log) as process:
        time.sleep(seconds)
        if process.poll() is not None:
            raise RuntimeError(f"the daemon exited:\n{log.read_text()[-3000:]}")
        return {"peak_mb": vm_mb("VmHWM", process.pid), "rss_mb": vm_mb("VmRSS", process.pid)}


# -- the three parts -------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def part_a(dbs: Databases, p: Prepared, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    output = work / "output-a.jsonl"
    p.emulator.download(p.output_file_id, output)  # for the baseline's rows (not timed)
    runs = []
    for i in range(args.runs):
        name = dbs.create(f"a{i}", template=p.name)
        url = dbs.url(name)
        order = ["orchestrator", "baseline"] if i % 2 == 0 else ["baseline", "orchestrator"]
        run: dict[str, Any] = {"run": i + 1, "order": order}
        for side in order:
            params: dict[str, Any] = {"db_url": url, "lines": args.lines}
            if side == "orchestrator":
                params["base_url"] = p.emulator.base_url
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    params["profile"] = str(args.profile.resolve() / f"ingest-run{i + 1}.prof")
                result = run_child("ingest", params, work / "child-ingest.log")
            else:
                params.update(output=str(output), job_id=p.job_id, batch_id=p.batch_id)
                result = run_child("baseline", params, work / "child-baseline.log")
            result["rows_per_second"] = result["rows"] / result["seconds"]
            run[side] = result
        o, b = run["orchestrator"], run["baseline"]
        run["ratio"] = o["rows_per_second"] / b["rows_per_second"]
        runs.append(run)
        print(
            f"  run {i + 1}: orchestrator {o['rows_per_second']:,.0f} rows/s ({o['seconds']:.2f} s),"
            f" plain COPY {b['rows_per_second']:,.0f} rows/s ({b['seconds']:.2f} s)",
            flush=True,
        )
        dbs.drop(name)

    def med(side: str, key: str) -> float:
        return median([r[side][key] for r in runs])

    orch, base = med("orchestrator", "rows_per_second"), med("baseline", "rows_per_second")
    return {
        "lines": args.lines,
        "output_bytes": p.output_bytes,
        "scenario": p.scenario.describe(),
        "response_body_bytes": body_bytes(output),
        "runs": runs,
        "median_orchestrator_rows_per_second": orch,
        "median_baseline_rows_per_second": base,
        "median_orchestrator_seconds": med("orchestrator", "seconds"),
        "median_baseline_seconds": med("baseline", "seconds"),
        "median_orchestrator_step_peak_mb": med("orchestrator", "step_peak_mb"),
        "ratio_of_medians": orch / base,
        "target_ratio": 0.8,
    }


def body_bytes(output: Path) -> int:
    with output.open("rb") as fh:
        return len(orjson.dumps(orjson.loads(fh.readline())["response"]["body"]))


def part_b(dbs: Databases, files: list[Prepared], work: Path) -> dict[str, Any]:
    idle_db = dbs.create("idle", template=dbs.template)
    idle = daemon_idle(dbs.url(idle_db), files[0].emulator.base_url, work / "daemon-idle.log")
    dbs.drop(idle_db)
    print(f"  idle daemon: peak {idle['peak_mb']:.0f} MB", flush=True)
    measured: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for p in sorted(files, key=lambda f: (f.scenario.failure_rate, f.output_bytes)):
        log = work / f"daemon-{p.scenario.label}.log"
        result = daemon_ingest(dbs.url(p.name), p.emulator.base_url, p.batch_id, log)
        result.update(output_bytes=p.output_bytes, scenario=p.scenario.describe())
        (failed if p.scenario.failure_rate else measured).append(result)
        print(
            f"  {p.output_bytes / MB:.0f} MB file ({p.scenario.describe()}): daemon peak "
            f"{result['peak_mb']:.0f} MB ({result['rows']:,} rows ingested {result['seconds']:.1f} s"
            " after it started)",
            flush=True,
        )
        dbs.drop(p.name)
    small, big = measured[0], measured[-1]
    growth = big["peak_mb"] / small["peak_mb"] - 1
    return {
        "idle": idle,
        "files": measured,
        "failed_lines": failed,
        "growth_smallest_to_largest": growth,
        "target": "largest < 200 MB and within 20 % of the smallest",
        "within_target": big["peak_mb"] < 200 and abs(growth) <= 0.2,
    }


def part_c(uploads: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": uploads,
        "median_seconds": median([u["seconds"] for u in uploads]),
        "median_step_peak_mb": median([u["step_peak_mb"] for u in uploads]),
        "median_rss_before_mb": median([u["rss_before_mb"] for u in uploads]),
        "bytes": uploads[0]["bytes"] if uploads else 0,
    }


# -- the report ------------------------------------------------------------------------------------


def report(meta: dict[str, Any], a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]) -> str:
    lines = a["lines"]
    target = a["target_ratio"]
    out = [
        "",
        f"ingest benchmark (issue 5): {lines:,} lines; PostgreSQL {meta['postgres']} "
        f"({meta['server']}); emulator in its own process; {meta['cpus']} CPUs",
        "",
        f"a. ingest of a {a['output_bytes'] / MB:.1f} MB output file ({a['scenario']}, "
        f"{a['response_body_bytes']:,} B response bodies): rows/s (seconds)",
        f"   {'run':<15}{'orchestrator':>20}{'plain COPY':>20}{'ratio':>7}",
    ]
    for r in a["runs"]:
        o, p = r["orchestrator"], r["baseline"]
        first = "orch first" if r["order"][0] == "orchestrator" else "COPY first"
        out.append(
            f"   {r['run']:<3}{first:<12}{o['rows_per_second']:>11,.0f} ({o['seconds']:4.2f} s)"
            f"{p['rows_per_second']:>11,.0f} ({p['seconds']:4.2f} s){r['ratio']:>7.2f}"
        )
    out.append(
        f"   {'median':<15}{a['median_orchestrator_rows_per_second']:>11,.0f} "
        f"({a['median_orchestrator_seconds']:4.2f} s)"
        f"{a['median_baseline_rows_per_second']:>11,.0f} ({a['median_baseline_seconds']:4.2f} s)"
        f"{a['ratio_of_medians']:>7.2f}"
    )
    verdict = "met" if a["ratio_of_medians"] >= target else "NOT met"
    out += [
        f"   target, orchestrator >= {target:.1f} x plain COPY: {verdict} (ratio of medians "
        f"{a['ratio_of_medians']:.2f})",
        "",
        f"b. peak RSS (VmHWM) of `orchestrator run` ingesting {lines:,} lines",
        f"   {'idle daemon':<52}{b['idle']['peak_mb']:>5.0f} MB",
    ]
    for f in b["files"]:
        out.append(
            f"   {f['output_bytes'] / MB:>5.1f} MB file ({f['scenario']})"
            f"{'':<{max(0, 36 - len(f['scenario']))}}{f['peak_mb']:>5.0f} MB"
            f"   ingested in {f['seconds']:.1f} s"
        )
    verdict = "met" if b["within_target"] else "NOT met"
    out.append(
        f"   largest vs smallest file: {b['growth_smallest_to_largest']:+.0%}; "
        f"target (< 200 MB, within 20 %): {verdict}"
    )
    for f in b["failed_lines"]:
        out.append(
            f"   and for context, {f['output_bytes'] / MB:.1f} MB, {f['scenario']}:"
            f" {f['peak_mb']:.0f} MB (failures wait on disk until both files are read)"
        )
    out += [
        "",
        f"c. upload step of a {lines:,}-request chunk ({c['bytes'] / MB:.1f} MB of JSONL), "
        "fresh process each time",
        "   "
        + ", ".join(f"{u['seconds']:.2f} s / {u['step_peak_mb']:.0f} MB" for u in c["runs"])
        + f"; median {c['median_seconds']:.2f} s, peak RSS {c['median_step_peak_mb']:.0f} MB"
        f" (RSS before the step: {c['median_rss_before_mb']:.0f} MB)",
        "",
        "For the README:",
        "",
        "| measure | orchestrator | reference |",
        "|---|---|---|",
        f"| ingest, {lines:,} lines, {a['output_bytes'] / MB:.0f} MB file (download, parse, COPY,"
        f" commit) | {a['median_orchestrator_rows_per_second']:,.0f} rows/s "
        f"({a['ratio_of_medians']:.2f} x) | plain COPY of the parsed rows: "
        f"{a['median_baseline_rows_per_second']:,.0f} rows/s |",
    ]
    for f in b["files"]:
        out.append(
            f"| daemon peak RSS, ingesting a {f['output_bytes'] / MB:.0f} MB file "
            f"| {f['peak_mb']:.0f} MB | idle daemon: {b['idle']['peak_mb']:.0f} MB |"
        )
    out.append(
        f"| upload of {lines:,} requests ({c['bytes'] / MB:.1f} MB) | {c['median_seconds']:.2f} s, "
        f"peak RSS {c['median_step_peak_mb']:.0f} MB | RSS before the step: "
        f"{c['median_rss_before_mb']:.0f} MB |"
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=LINES)
    parser.add_argument("--runs", type=int, default=RUNS, help="runs of part a (each side)")
    parser.add_argument("--profile", type=Path, help="write a cProfile of each timed ingest here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.params)

    from orchestrator.db.migrate import upgrade
    from orchestrator.observability import configure_logging

    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    started = time.perf_counter()
    plan = scenarios(args.lines)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    emulators: dict[tuple[int, float], EmulatorProcess] = {}
    for s in plan:  # one per emulator setting; they start while the database is being prepared
        if s.emulator_key not in emulators:
            emulators[s.emulator_key] = start_emulator(work, *s.emulator_key)
    try:
        with pg_server() as (server, where):
            dbs = Databases(server, "bench_ingest")
            try:
                dbs.template = dbs.create("template")
                upgrade(dbs.url(dbs.template))
                for emulator in emulators.values():
                    emulator.wait_ready()
                prepared: dict[str, Prepared] = {}
                for s in plan:
                    print(f"preparing {args.lines:,} requests ({s.describe()}) ...", flush=True)
                    p = prepare(dbs, emulators[s.emulator_key], s, args.lines, work)
                    prepared[s.label] = p
                    print(
                        f"  {p.output_bytes / MB:.1f} MB result file ready; upload step "
                        f"{p.upload['seconds']:.2f} s, peak RSS {p.upload['step_peak_mb']:.0f} MB",
                        flush=True,
                    )
                print(f"a. ingest vs plain COPY, {args.runs} runs ...", flush=True)
                a = part_a(dbs, prepared["1kb"], args, work)
                print("b. daemon memory while ingesting ...", flush=True)
                b = part_b(dbs, list(prepared.values()), work)
                # Part c: the chat chunks only (the same 50,000 requests each time).
                c = part_c([p.upload for p in prepared.values() if p.scenario.endpoint == CHAT])
                meta: dict[str, Any] = {
                    "postgres": dbs.version(),
                    "server": where,
                    "cpus": os.cpu_count(),
                    "python": sys.version.split()[0],
                    "emulator": "its own process (python -m orchestrator emulator)",
                    "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                }
            finally:
                dbs.drop_all()
    finally:
        for emulator in emulators.values():
            emulator.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    text = report(meta, a, b, c)
    print(text)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / "ingest.json"
    document = {"meta": meta, "ingest": a, "memory": b, "upload": c, "report": text}
    path.write_text(json.dumps(document, indent=2) + "\n")
    kept = f"; work directory kept: {work}" if args.keep else ""
    print(f"\n({meta['seconds']:.0f} s in all; written to {path}{kept})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
