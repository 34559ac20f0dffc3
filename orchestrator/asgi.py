"""Serve an ASGI app with uvicorn on a background thread (the daemon's /healthz, the emulator)."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any

import uvicorn

START_TIMEOUT = 10.0


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket for uvicorn (``port=0``: any free port)."""
    # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
    # IPPROTO_TCP, and without it Nagle + delayed ACK add ~40 ms to every response.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, telling another thread when it is ready to accept connections."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


class ServerThread:
    """uvicorn on a daemon thread; ``port=0`` picks a free port. Use as a context manager.
    With ``tls`` (a PEM certificate file and its key file) it serves HTTPS."""

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._log_level = log_level
        self._tls = tls
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the server is not running")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        sock = listen(self.host, self._requested_port)
        self._socket = sock
        config = uvicorn.Config(
            self.app,
            # no handlers of uvicorn's own: its records go to the root logger, so through the
            # formatter and the redaction configure_logging installed (JSON like every line)
            log_config=None,
            log_level=self._log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            ssl_certfile=self._tls[0] if self._tls else None,
            ssl_keyfile=self._tls[1] if self._tls else None,
        )
        self._server = _Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"http-{self.port}",
            daemon=True,
        )
        self._thread.start()
        if not self._server.ready.wait(START_TIMEOUT) or not self._server.started:
            self.stop()
            raise RuntimeError(f"the HTTP server on {self.host} did not start")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(START_TIMEOUT)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
