"""Real-HTTP adapter: a Starlette app (one catch-all route) served by uvicorn.

Uploads stream from ``request.stream()`` into the core, which runs in a worker thread and pulls
each chunk back from the event loop; downloads stream from disk. A delay fault sleeps here for
real, so a client's timeout fires exactly as it would against a slow provider; a truncate fault
sends part of the body and drops the connection, so the client's read breaks mid-body.
"""

from __future__ import annotations

import argparse
import contextvars
import logging
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import FrameType

import anyio
import anyio.from_thread
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from orchestrator.asgi import ServerThread, listen
from orchestrator.clock import ScaledClock
from orchestrator.emulator.config import MODES, EmulatorConfig
from orchestrator.emulator.core import Emulator
from orchestrator.emulator.fault_specs import parse_fault_spec
from orchestrator.emulator.messages import EmuRequest, EmuResponse

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
DEFAULT_PORT = 8800

# Set in the task that serves a response cut short on purpose; read by the log filter below.
_DELIBERATE_CUT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "emulator_deliberate_cut", default=False
)
_UVICORN_INCOMPLETE = "ASGI callable returned without completing response."


class _BodyBridge:
    """The request body as a sync iterator, for the core running in a worker thread."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := anyio.from_thread.run(self._next)) is not None:
            if chunk:
                yield chunk

    async def _next(self) -> bytes | None:
        try:
            return await anext(self._stream)
        except StopAsyncIteration:
            return None


def create_app(emulator: Emulator) -> Starlette:
    _quiet_deliberate_cuts()

    async def endpoint(request: Request) -> Response:
        emu_request = EmuRequest.build(
            request.method,
            request.url.path,
            query=dict(request.query_params),
            headers=request.headers.items(),
            body=_BodyBridge(request.stream()),
            base_url=str(request.base_url).rstrip("/"),
        )
        emu_response = await run_in_threadpool(emulator.handle, emu_request)
        if emu_response.delay_seconds > 0:
            await anyio.sleep(emu_response.delay_seconds)
        return _to_starlette(emu_response)

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=METHODS)])


def _to_starlette(response: EmuResponse) -> Response:
    if response.drop_connection:
        return _CutShortResponse(response)
    if isinstance(response.body, bytes):
        return Response(response.body, response.status, response.headers)
    # Closing in a background task releases the file even if the client went away early.
    return StreamingResponse(
        response.body,
        response.status,
        response.headers,
        background=BackgroundTask(response.close),
    )


class _CutShortResponse(Response):
    """Headers with the full ``content-length``, the (shortened) body, then no end of message:
    uvicorn closes the connection, and the client sees the body cut off."""

    def __init__(self, response: EmuResponse) -> None:
        super().__init__(status_code=response.status, headers=response.headers)
        self._emu = response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        body = self._emu.body
        try:
            chunks = iterate_in_threadpool(iter((body,) if isinstance(body, bytes) else body))
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            self._emu.close()
        _DELIBERATE_CUT.set(True)


class _QuietDeliberateCuts(logging.Filter):
    """Drops uvicorn's error line for a response cut short by a fault, and only for those."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_DELIBERATE_CUT.get() and record.msg == _UVICORN_INCOMPLETE)


def _quiet_deliberate_cuts() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDeliberateCuts) for f in logger.filters):
        logger.addFilter(_QuietDeliberateCuts())


class EmulatorServer(ServerThread):
    """Serve an emulator over real HTTP on a background thread (a context manager).

    ``port=0`` picks a free port; ``.url`` and ``.base_url`` say where it listens: ``.url`` is
    the root, for SDKs that add the API's version themselves (anthropic, google-genai);
    ``.base_url`` adds the mode's API root (``/v1``, ``/v1beta`` in gemini mode).
    """

    def __init__(
        self,
        emulator: Emulator,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        tls: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(create_app(emulator), host=host, port=port, log_level=log_level, tls=tls)
        self.emulator = emulator

    @property
    def base_url(self) -> str:
        return self.url + self.emulator.config.api_root

    def start(self) -> EmulatorServer:
        super().start()
        return self

    def __enter__(self) -> EmulatorServer:
        return self.start()


# -- `orchestrator emulator ...` ---------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``orchestrator emulator`` command."""
    parser.add_argument("--mode", choices=MODES, default="fastrouter", help="API flavour")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument(
        "--port-file", type=Path, default=None, help="write the port here once listening"
    )
    parser.add_argument("--prefix", default="/v1", help="API path prefix ('' for none)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="virtual seconds per real second (600: one real second is ten minutes)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for ids, texts and faults")
    parser.add_argument(
        "--instance",
        default=None,
        help="mixed into file and batch ids (default: fresh per run, so a restart never reuses "
        "an id); give the same value to reproduce a run's ids byte for byte",
    )
    parser.add_argument("--failure-rate", type=float, default=0.0, help="share of lines failing")
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    parser.add_argument("--validation-seconds", type=float, default=5.0)
    parser.add_argument("--rows-per-second", type=float, default=50.0)
    parser.add_argument("--finalizing-seconds", type=float, default=5.0)
    parser.add_argument("--cancel-seconds", type=float, default=5.0)
    parser.add_argument(
        "--completion-window-seconds",
        type=int,
        default=0,
        help="unfinished batches expire then (default: the mode's, 24 h; 48 h for gemini)",
    )
    parser.add_argument("--completion-chars", type=int, default=60)
    parser.add_argument(
        "--max-requests",
        type=int,
        default=0,
        help="lines per batch (default: the mode's, 50,000; 100,000 for anthropic)",
    )
    parser.add_argument(
        "--max-file-bytes",
        type=int,
        default=0,
        help="largest upload or create body (default: the mode's, 200 MB; 256 MB for anthropic)",
    )
    parser.add_argument("--output-order", choices=("input", "shuffled"), default="input")
    parser.add_argument(
        "--lazy-results",
        action="store_true",
        help="write a batch's result files when first asked for, not ahead while it runs",
    )
    parser.add_argument(
        "--enqueued-token-limit",
        type=int,
        default=None,
        help="enqueued prompt tokens per model; a batch past it fails token_limit_exceeded",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ROUTE:K=V,...",
        help="a fault rule, repeatable; e.g. create_batch:status=429,retry_after=30,times=3 | "
        "get_batch:delay=5,probability=0.1 | file_content:truncate=0.5 | "
        "upload_file:not_ready=10 | batch:stuck_finalizing=300 | batch:line_429=0.1,shuffle "
        "(times defaults to unlimited)",
    )
    parser.add_argument(
        "--relative-results-url",
        action="store_true",
        help="anthropic mode: results_url as a path on this host, not an absolute URL",
    )
    parser.add_argument("--storage-dir", type=Path, default=None, help="where files are kept")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        mode=args.mode,
        path_prefix=args.prefix,
        seed=args.seed,
        instance=args.instance if args.instance is not None else secrets.token_hex(4),
        api_key=args.api_key,
        validation_seconds=args.validation_seconds,
        rows_per_second=args.rows_per_second,
        finalizing_seconds=args.finalizing_seconds,
        cancel_seconds=args.cancel_seconds,
        completion_window_seconds=args.completion_window_seconds,
        line_failure_rate=args.failure_rate,
        completion_chars=args.completion_chars,
        max_requests_per_file=args.max_requests,
        max_file_bytes=args.max_file_bytes,
        output_order=args.output_order,
        enqueued_token_limit=args.enqueued_token_limit,
        prepare_results=not args.lazy_results,
        storage_dir=args.storage_dir,
        relative_results_url=args.relative_results_url,
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Serve in the foreground until Ctrl-C or SIGTERM; returns the process exit code."""
    try:
        config = config_from_args(args)
        clock = ScaledClock(args.time_scale)
        specs = [parse_fault_spec(spec) for spec in args.fault]
    except ValueError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    with Emulator(config, clock) as emulator:
        try:
            for spec in specs:
                emulator.faults.add_json(spec)
            sock = listen(args.host, args.port)
        except (ValueError, OSError) as exc:
            print(f"emulator: {exc}", file=sys.stderr)
            return 2
        with sock:
            _serve(emulator, sock, args)
    return 0


def _serve(emulator: Emulator, sock: socket.socket, args: argparse.Namespace) -> None:
    port = sock.getsockname()[1]
    config = emulator.config
    rules = len(emulator.faults.rules())
    print(
        f"emulator ({config.mode}, time x{args.time_scale}, {rules} fault rule(s)) serving "
        f"http://{args.host}:{port}{config.api_root}; admin at /_emulator; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    if args.port_file is not None:
        # Written whole then renamed, so a reader polling for it never sees half a number.
        partial = args.port_file.with_name(args.port_file.name + ".partial")
        partial.write_text(f"{port}\n")
        partial.replace(args.port_file)
    app = create_app(emulator)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=False))
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again, to this handler:
    # leaving through SystemExit rather than dying of the signal lets Emulator.close() run.
    raise SystemExit(0)
