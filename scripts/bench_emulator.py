"""Benchmark the emulator on one large batch, against a plain uvicorn baseline in the same run.

    .venv/bin/python scripts/bench_emulator.py                 # 50,000 lines, ~60 MB of results
    .venv/bin/python scripts/bench_emulator.py --lines 5000    # a quick look
    .venv/bin/python scripts/bench_emulator.py --fault batch:line_429=0.1,duplicate_lines=0.05,shuffle

The emulator runs as its users run it, ``python -m orchestrator emulator``, in its own process
(``--port 0 --port-file``), so the peak RSS printed is the server's own (VmHWM from /proc). The
script times upload, create → completed (the virtual clock jumps through the admin endpoint, so
this is the real cost of producing the result files) and download, then does the same transfers
against a bare ASGI app on uvicorn that only drains uploads and streams a file — the floor any
HTTP server in this stack pays — and a JSON floor: parsing and re-serialising the same result lines
in-process. It prints figures; it asserts nothing (the team's rule for benchmarks).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

CHAT = "/v1/chat/completions"
# About 1.2 KB per result line: 50,000 lines come to ~60 MB, the size the budget is set for.
DEFAULT_COMPLETION_CHARS = 560
BUDGET_SECONDS = 20.0
BUDGET_RSS_MB = 400.0
START_TIMEOUT = 30.0


@dataclasses.dataclass
class Run:
    """Seconds per phase, bytes moved, and peak memory of one side."""

    upload: float = 0.0
    process: float = 0.0
    download: float = 0.0
    upload_bytes: int = 0
    download_bytes: int = 0
    server_peak_mb: float = 0.0

    @property
    def total(self) -> float:
        return self.upload + self.process + self.download


# -- the input -------------------------------------------------------------------------------


def write_input(path: Path, lines: int) -> int:
    with path.open("wb") as out:
        for i in range(lines):
            line = {
                "custom_id": f"request-{i:06d}",
                "provider": "openai",
                "method": "POST",
                "url": CHAT,
                "body": {
                    "model": "openai/gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": f"Question {i}: what is {i} + {i % 97}?"},
                    ],
                    "max_tokens": 1000,
                },
            }
            out.write(orjson.dumps(line) + b"\n")
    return path.stat().st_size


# -- processes ---------------------------------------------------------------------------------


@contextlib.contextmanager
def serve(command: list[str], port_file: Path) -> Iterator[tuple[str, int]]:
    """Start a server process that writes its port to ``port_file``; yield (url, pid)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists():
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {process.communicate()[1].decode()}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{int(port_file.read_text())}", process.pid
    finally:
        process.terminate()
        process.communicate(timeout=30)


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the emulator run -----------------------------------------------------------------------------


def bench_emulator(args: argparse.Namespace, work: Path, source: Path) -> tuple[Run, Path]:
    port_file, output = work / "emulator.port", work / "output.jsonl"
    command = [
        sys.executable, "-m", "orchestrator", "emulator", "--port", "0",
        "--port-file", str(port_file), "--mode", args.mode, "--log-level", "warning",
        "--completion-chars", str(args.completion_chars), "--storage-dir", str(work / "store"),
    ]  # fmt: skip
    for spec in args.fault:
        command += ["--fault", spec]
    run = Run()
    with serve(command, port_file) as (url, pid), client(url + "/v1") as http:
        run.upload, file_id = timed(upload, http, source)
        run.upload_bytes = source.stat().st_size
        started = time.perf_counter()
        batch = http.post(
            "/batches",
            json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"},
        ).json()
        # Jump the virtual clock past validation, every row (50 rows/s) and finalizing.
        seconds = 60 + args.lines / 50
        httpx.post(url + "/_emulator/clock/advance", json={"seconds": seconds}).raise_for_status()
        while batch["status"] != "completed":
            batch = http.get(f"/batches/{batch['id']}").json()
        run.process = time.perf_counter() - started
        run.download, run.download_bytes = timed(download, http, batch["output_file_id"], output)
        run.server_peak_mb = peak_rss_mb(pid)
    return run, output


@contextlib.contextmanager
def client(base_url: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer bench"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as http:
        yield http


def upload(http: httpx.Client, source: Path) -> str:
    with source.open("rb") as fh:
        response = http.post("/files", data={"purpose": "batch"}, files={"file": (source.name, fh)})
    response.raise_for_status()
    return str(response.json()["id"])


def download(http: httpx.Client, file_id: str, dest: Path) -> int:
    written = 0
    with http.stream("GET", f"/files/{file_id}/content") as response, dest.open("wb") as out:
        response.raise_for_status()
        for chunk in response.iter_raw(1024 * 1024):
            out.write(chunk)
            written += len(chunk)
    return written


def timed(function: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


# -- the baselines ----------------------------------------------------------------------------


def bench_baseline(work: Path, source: Path, output: Path) -> Run:
    port_file = work / "baseline.port"
    command = [
        sys.executable,
        __file__,
        "--serve-baseline",
        str(output),
        "--port-file",
        str(port_file),
    ]
    run = Run()
    with serve(command, port_file) as (url, pid), client(url) as http:
        run.upload, _ = timed(upload, http, source)
        run.upload_bytes = source.stat().st_size
        run.download, run.download_bytes = timed(download, http, "any", work / "baseline.jsonl")
        run.server_peak_mb = peak_rss_mb(pid)
    run.process = json_floor(output)
    return run


def json_floor(output: Path) -> float:
    """Parse and re-serialise every result line: the JSON work any producer of them must do."""
    started = time.perf_counter()
    with output.open("rb") as lines, open("/dev/null", "wb") as sink:
        for line in lines:
            sink.write(orjson.dumps(orjson.loads(line)) + b"\n")
    return time.perf_counter() - started


def serve_baseline(content: Path, port_file: Path) -> None:
    """A bare ASGI app: drains any POST body, answers any GET with ``content`` streamed."""
    import uvicorn

    from orchestrator.asgi import listen

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        size = 0
        more = True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        if scope["method"] == "POST":
            body = orjson.dumps({"id": "file-baseline", "bytes": size})
            await send(
                {"type": "http.response.start", "status": 200, "headers": _length(len(body))}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": _length(content.stat().st_size),
            }
        )
        with content.open("rb") as fh:
            while chunk := fh.read(64 * 1024):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    sock = listen("127.0.0.1", 0)
    port_file.write_text(str(sock.getsockname()[1]))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def _length(size: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-length", str(size).encode()), (b"content-type", b"application/octet-stream")]


# -- report ----------------------------------------------------------------------------------------


def report(args: argparse.Namespace, emulator: Run, baseline: Run) -> None:
    client_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mb = 1024 * 1024
    faults = f", faults: {' '.join(args.fault)}" if args.fault else ""
    print(
        f"\nemulator benchmark: {args.lines:,} lines ({args.mode} mode{faults}), "
        f"upload {emulator.upload_bytes / mb:.1f} MB, download {emulator.download_bytes / mb:.1f} MB"
    )
    print(f"{'':28}{'emulator':>12}{'baseline':>12}{'ratio':>8}")
    rows = [
        ("upload", emulator.upload, baseline.upload),
        ("create -> completed", emulator.process, baseline.process),
        ("download", emulator.download, baseline.download),
        ("total", emulator.total, baseline.total),
    ]
    for name, ours, floor in rows:
        print(f"{name + ' (s)':28}{ours:>12.2f}{floor:>12.2f}{ours / floor:>8.1f}")
    peak = emulator.server_peak_mb
    print(f"{'server peak RSS (MB)':28}{peak:>12.0f}{baseline.server_peak_mb:>12.0f}")
    print(f"{'client peak RSS (MB)':28}{client_peak:>12.0f}")
    print(
        f"download throughput: emulator {emulator.download_bytes / mb / emulator.download:.0f} MB/s,"
        f" baseline {baseline.download_bytes / mb / baseline.download:.0f} MB/s"
    )
    print(
        "baseline: a bare ASGI app on the same uvicorn (upload drained, file streamed); its "
        "create -> completed is the JSON floor (orjson parse + dump of the same result lines)"
    )
    within = emulator.total < BUDGET_SECONDS and peak < BUDGET_RSS_MB
    print(
        f"budget (< {BUDGET_SECONDS:.0f} s total, server < {BUDGET_RSS_MB:.0f} MB): "
        f"{'within' if within else 'OVER'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--completion-chars", type=int, default=DEFAULT_COMPLETION_CHARS)
    parser.add_argument("--mode", choices=("fastrouter", "openai"), default="fastrouter")
    parser.add_argument(
        "--fault", action="append", default=[], help="passed on to the emulator (repeatable)"
    )
    parser.add_argument("--serve-baseline", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline is not None:
        serve_baseline(args.serve_baseline, args.port_file)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as tmp:
        work = Path(tmp)
        source = work / "input.jsonl"
        print(f"writing {args.lines:,} request lines ...", flush=True)
        write_input(source, args.lines)
        print("emulator run ...", flush=True)
        emulator, output = bench_emulator(args, work, source)
        print("baseline run ...", flush=True)
        baseline = bench_baseline(work, source, output)
        report(args, emulator, baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
