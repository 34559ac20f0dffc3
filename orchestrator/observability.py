"""Logs, metrics and health.

Logs are structlog events (``<noun>_<past verb>``), JSON when stdout is not a terminal. Every
configured secret is kept out of them twice: the :class:`Redactor` cleans every value before
anything is rendered, and the formatter scrubs the finished line again (what a renderer or a
library put there: a traceback, an object's ``repr``). Tracebacks are rendered without the frames'
local variables. Both passes catch a secret in part too (:class:`Scrubber`), so a key that something
cut short on the way is still caught. Metrics are Prometheus counters and gauges served on
``/metrics`` next to ``/healthz``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, AnyStr

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

REDACTED = "**********"
# A run of this many characters of a secret counts as the secret.
MIN_FRAGMENT = 8
# Characters a fragment may not contain: a JSON or repr rendering escapes them, so such a fragment
# would not match there, and replacing around one could cut an escape sequence in two.
_ESCAPED = re.compile(r'["\\\x00-\x1f\x7f]')
# Half an escape sequence just before a match (``\``, ``\u00``), taken into the redaction with it.
_ESCAPE_HEAD = re.compile(r"(?<!\\)(?:\\\\)*\\(?:u[0-9a-fA-F]{0,3})?$")


class Scrubber:
    """Replaces every secret in a text with ``REDACTED``, whole or in part: any run of text made
    of pieces of ``MIN_FRAGMENT`` or more consecutive characters of a secret (a key cut short by
    whatever quoted it, a traceback or a message truncated to some length, is caught too)."""

    def __init__(self, secrets: Iterable[str], *, min_fragment: int = MIN_FRAGMENT) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        pieces: set[str] = set(self.secrets)
        # Every piece holds one of these: its secret cut in blocks of half a piece (a piece of n
        # characters always spans a whole block of n // 2). A text with no block in it holds no
        # piece: a few searches tell, not one per piece (a piece of a 28-character key: 21).
        blocks: set[str] = set()
        for secret in self.secrets:
            n = min(min_fragment, len(secret))
            pieces.update(secret[i : i + n] for i in range(len(secret) - n + 1))
            k = max(n // 2, 1)
            blocks.update(secret[j : j + k] for j in range(0, len(secret) - k + 1, k))
        self._pieces = sorted(p for p in pieces if p in self.secrets or not _ESCAPED.search(p))
        self._blocks = sorted(blocks)
        # The same in JSON, as bytes, each as a JSON string spells it. A secret JSON must escape
        # counts whole only, and blocks of it may be escaped: it is a block of its own.
        self._json_pieces = [_json_spelling(p) for p in self._pieces]
        self._json_blocks = sorted(
            {_json_spelling(b) for b in blocks if not _ESCAPED.search(b)}
            | {_json_spelling(s) for s in self.secrets if _ESCAPED.search(s)}
        )

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def found_in(self, text: str) -> bool:
        """Whether any secret, or any piece of one, occurs in ``text``."""
        return _holds_any(text, self._blocks, self._pieces)

    def found_in_json(self, raw: bytes) -> bool:
        """Whether a JSON text, as bytes (a line of a result file), may hold a secret or a piece
        of one, without parsing it: exact for pieces written as plain characters, and True for
        any text that escapes characters with ``\\u`` or ``\\/`` (a piece could hide behind one)."""
        if not self._json_pieces:
            return False
        if b"\\" in raw and (b"\\u" in raw or b"\\/" in raw):
            return True
        return _holds_any(raw, self._json_blocks, self._json_pieces)

    def __call__(self, text: str) -> str:
        if not self._pieces or not self.found_in(text):
            return text
        spans: list[list[int]] = []
        for piece in self._pieces:
            at = text.find(piece)
            while at != -1:
                spans.append([at, at + len(piece)])
                at = text.find(piece, at + 1)
        spans.sort()
        merged: list[list[int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out: list[str] = []
        done = 0
        for start, end in merged:
            head = _ESCAPE_HEAD.search(text, max(done, start - 6), start)
            out.append(text[done : head.start() if head else start])
            out.append(REDACTED)
            done = end
        out.append(text[done:])
        return "".join(out)

    def deep(self, value: Any) -> Any:
        """``value`` with every string in it (mapping keys too) scrubbed; tuples stay tuples."""
        if not self._pieces:
            return value
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {self.deep(k): self.deep(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return tuple(self.deep(v) for v in value)
        if isinstance(value, list):
            return [self.deep(v) for v in value]
        return value


def _holds_any(text: AnyStr, blocks: list[AnyStr], pieces: list[AnyStr]) -> bool:
    for block in blocks:
        if block in text:
            return any(piece in text for piece in pieces)
    return False


def _json_spelling(text: str) -> bytes:
    """``text`` as it stands between the quotes of a JSON string (UTF-8, the usual escapes)."""
    return orjson.dumps(text)[1:-1]


class Redactor:
    """A structlog processor that replaces every occurrence of a secret in any value."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.scrub = Scrubber(secrets)

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self.scrub:
            return event
        for key, value in list(event.items()):
            if key.lower() in ("authorization", "api_key", "password"):
                event[key] = REDACTED
            else:
                event[key] = self.scrub.deep(value)
        return event


class RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """The last pass: the rendered line, whatever put what into it, with every secret scrubbed."""

    def __init__(self, *args: Any, scrub: Scrubber, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(super().format(record))


def configure_logging(
    *,
    level: str = "info",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: Any = None,
) -> None:
    """Configure structlog and the stdlib loggers (SQLAlchemy, httpx, APScheduler, uvicorn) once:
    every record of every logger goes through the same processors and the same redaction."""
    out = stream or sys.stdout
    renderer: Any
    tracebacks: Any
    if fmt == "console" or (fmt == "auto" and out.isatty()):
        # A plain traceback (no locals, whatever is installed), as a string the Redactor sees.
        tracebacks = structlog.processors.format_exc_info
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    else:
        # Frame locals would hold secrets, cut to 80 characters where no redaction finds them.
        transformer = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        tracebacks = structlog.processors.ExceptionRenderer(transformer)
        renderer = structlog.processors.JSONRenderer()
    redactor = Redactor(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = RedactingFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            tracebacks,
            redactor,
            renderer,
        ],
        scrub=redactor.scrub,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access", "sqlalchemy.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A wake-up while a tick runs is skipped by design (max_instances=1, coalesce); APScheduler
    # says so at WARNING, once per NOTIFY and per finished batch (2,628 lines in a 2,000-job run).
    # Failures of our timers are logged by the daemon itself.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


class Metrics:
    """The daemon's Prometheus metrics, on a registry of its own (several daemons per process
    in tests must not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.steps = Counter(
            "orchestrator_steps_total",
            "Batch steps run",
            ["step", "outcome"],
            registry=self.registry,
        )
        self.jobs_planned = Counter(
            "orchestrator_jobs_planned_total", "Jobs planned", ["outcome"], registry=self.registry
        )
        self.in_flight = Gauge(
            "orchestrator_in_flight", "Batches being worked on now", registry=self.registry
        )
        self.open_batches = Gauge(
            "orchestrator_open_batches",
            "Open batches by local state",
            ["state"],
            registry=self.registry,
        )
        self.jobs = Gauge("orchestrator_jobs", "Jobs by status", ["status"], registry=self.registry)
        self.target_blocked = Gauge(
            "orchestrator_target_blocked",
            "1 while a target is throttled or paused",
            ["target", "paused"],
            registry=self.registry,
        )

        self.orphans_cancelled = Counter(
            "orchestrator_orphans_cancelled_total",
            "Remote batches carrying our key that no batch adopted, cancelled by the orphan sweep",
            ["target"],
            registry=self.registry,
        )
        self.stuck_batches = Gauge(
            "orchestrator_stuck_batches",
            "Open batches failing for longer than stuck_after_seconds, or running past expires_at",
            ["target"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def health_app(health: Callable[[], tuple[bool, dict[str, Any]]], metrics: Metrics) -> Starlette:
    """``/healthz`` (200 while the daemon ticks and reaches its database, else 503; paused targets
    are reported but do not make the daemon unhealthy) and ``/metrics``."""

    async def healthz(request: Request) -> Response:
        ok, body = health()
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics_endpoint)])
