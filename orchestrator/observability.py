"""Logs, metrics and health.

Logs are structlog events (``<noun>_<past verb>``), JSON when stdout is not a terminal, with every
configured secret redacted from every value before anything is rendered. Metrics are Prometheus
counters and gauges served on ``/metrics`` next to ``/healthz``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

REDACTED = "**********"


class Redactor:
    """A structlog processor that replaces every occurrence of a secret in any value."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s for s in secrets if s]

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, Mapping):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        return value

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self.secrets:
            return event
        for key, value in list(event.items()):
            if key.lower() in ("authorization", "api_key", "password"):
                event[key] = REDACTED
            else:
                event[key] = self._clean(value)
        return event


def configure_logging(
    *,
    level: str = "info",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: Any = None,
) -> None:
    """Configure structlog and the stdlib loggers (SQLAlchemy, httpx, APScheduler) once."""
    out = stream or sys.stdout
    renderer: Any
    if fmt == "console" or (fmt == "auto" and out.isatty()):
        renderer = structlog.dev.ConsoleRenderer()
    else:
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
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.dict_tracebacks
            if isinstance(renderer, structlog.processors.JSONRenderer)
            else _identity,
            redactor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "apscheduler", "uvicorn.access", "sqlalchemy.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _identity(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return event


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
