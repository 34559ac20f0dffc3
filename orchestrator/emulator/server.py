"""Real-HTTP adapter: a Starlette app (one catch-all route) served by uvicorn.

Uploads stream from ``request.stream()`` into the core, which runs in a worker thread and pulls
each chunk back from the event loop; downloads stream from disk. A delay fault sleeps here for
real, so a client's timeout fires exactly as it would against a slow provider.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.from_thread
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from orchestrator.asgi import ServerThread, listen
from orchestrator.clock import ScaledClock
from orchestrator.emulator.config import MODES, EmulatorConfig
from orchestrator.emulator.core import Emulator
from orchestrator.emulator.messages import EmuRequest, EmuResponse

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
DEFAULT_PORT = 8800


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
    async def endpoint(request: Request) -> Response:
        emu_request = EmuRequest.build(
            request.method,
            request.url.path,
            query=dict(request.query_params),
            headers=request.headers.items(),
            body=_BodyBridge(request.stream()),
        )
        emu_response = await run_in_threadpool(emulator.handle, emu_request)
        if emu_response.delay_seconds > 0:
            await anyio.sleep(emu_response.delay_seconds)
        return _to_starlette(emu_response)

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=METHODS)])


def _to_starlette(response: EmuResponse) -> Response:
    if isinstance(response.body, bytes):
        return Response(response.body, response.status, response.headers)
    # Closing in a background task releases the file even if the client went away early.
    return StreamingResponse(
        response.body,
        response.status,
        response.headers,
        background=BackgroundTask(response.close),
    )


class EmulatorServer(ServerThread):
    """Serve an emulator over real HTTP on a background thread (a context manager).

    ``port=0`` picks a free port; ``.url`` and ``.base_url`` say where it listens.
    """

    def __init__(
        self,
        emulator: Emulator,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        super().__init__(create_app(emulator), host=host, port=port, log_level=log_level)
        self.emulator = emulator

    @property
    def base_url(self) -> str:
        return self.url + self.emulator.config.path_prefix

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
    parser.add_argument("--prefix", default="/v1", help="API path prefix ('' for none)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="virtual seconds per real second (600: one real second is ten minutes)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for ids, texts and faults")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="share of lines failing")
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    parser.add_argument("--validation-seconds", type=float, default=5.0)
    parser.add_argument("--rows-per-second", type=float, default=50.0)
    parser.add_argument("--finalizing-seconds", type=float, default=5.0)
    parser.add_argument("--completion-chars", type=int, default=60)
    parser.add_argument("--storage-dir", type=Path, default=None, help="where files are kept")


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        mode=args.mode,
        path_prefix=args.prefix,
        seed=args.seed,
        api_key=args.api_key,
        validation_seconds=args.validation_seconds,
        rows_per_second=args.rows_per_second,
        finalizing_seconds=args.finalizing_seconds,
        line_failure_rate=args.failure_rate,
        completion_chars=args.completion_chars,
        storage_dir=args.storage_dir,
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Serve in the foreground until Ctrl-C; returns the process exit code."""
    try:
        config = config_from_args(args)
        clock = ScaledClock(args.time_scale)
        sock = listen(args.host, args.port)
    except (ValueError, OSError) as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    with Emulator(config, clock) as emulator, sock:
        port = sock.getsockname()[1]
        print(
            f"emulator ({config.mode}, time x{args.time_scale}) serving "
            f"http://{args.host}:{port}{config.path_prefix}; admin at /_emulator; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        server = uvicorn.Server(uvicorn.Config(create_app(emulator), log_level="info"))
        server.run(sockets=[sock])
    return 0
