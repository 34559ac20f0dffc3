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
import platform
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from decimal import Decimal
from typing import Any, AnyStr, Protocol

import orjson
import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator import __version__
from orchestrator.domain.capacity_report import ModelCapacity, TargetCapacity
from orchestrator.domain.cost import COST_PLACES

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
    """Configure structlog and the stdlib loggers (SQLAlchemy, httpx, APScheduler, uvicorn,
    alembic) once: every record of every logger goes through the root logger's one handler, the
    same processors and the same redaction. (uvicorn adds handlers of its own unless given
    ``log_config=None``, which ``asgi.ServerThread`` does: its records propagate here.)"""
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
    # Our own api_request_* lines cover HTTP; SQLAlchemy's engine and pool would log every
    # statement and checkout at debug. Their warnings and errors still come through, as JSON.
    # alembic says which plugins it set up, seven lines at info before every migration.
    for noisy in ("httpx", "httpcore", "uvicorn.access", "sqlalchemy", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A wake-up while a tick runs is skipped by design (max_instances=1, coalesce); APScheduler
    # says so at WARNING, once per NOTIFY and per finished batch (2,628 lines in a 2,000-job run).
    # Failures of our timers are logged by the daemon itself.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


# Label values the gauges always show, so that a series that stops applying reads 0 (never a stale
# value, never a gap): every open job status, every open batch state (``queries.OPEN_STATES``).
OPEN_JOB_STATUSES = ("pending", "running")
FINISHED_JOB_STATUSES = ("completed", "failed", "cancelled")
# A scrape reads the database-derived gauges again when their last refresh is older than this (or
# this daemon has committed a change since).
FRESH_SECONDS = 2.0
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class ModelUsage(Protocol):
    """What one model of an ingested batch used (``ledger.ModelUsage``, from
    ``batch_model_costs``): its tokens, and its cost at our prices (None if unpriced)."""

    @property
    def model(self) -> str: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cost(self) -> Decimal | None: ...


class GaugeValues(Protocol):
    """The database-derived gauges at one moment, by label value (``queries.Gauges``)."""

    @property
    def jobs(self) -> Mapping[str, int]: ...
    @property
    def pending(self) -> Mapping[str, int]: ...
    @property
    def open_batches(self) -> Mapping[str, int]: ...
    @property
    def oldest_pending_job_age(self) -> float: ...
    @property
    def oldest_open_batch_age(self) -> float: ...
    @property
    def stuck(self) -> Mapping[str, int]: ...
    @property
    def paused(self) -> Mapping[str, bool]: ...
    @property
    def rate_limited(self) -> Mapping[str, bool]: ...


class Metrics:
    """The daemon's Prometheus metrics, on a registry of its own (several daemons per process
    in tests must not collide), with the process and Python collectors on it too. The names are
    the ones the alert rules and the dashboard use (README, "Monitoring"): do not rename them."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Gauge(
            "orchestrator_build_info", "The running build", ["version", "python"], registry=r
        ).labels(__version__, platform.python_version()).set(1)
        self.api_requests = Counter(
            "orchestrator_api_requests_total",
            "Calls to a Batch API, by templated route and HTTP status (error: no answer)",
            ["target", "route", "method", "status"],
            registry=r,
        )
        self.api_duration = Histogram(
            "orchestrator_api_request_duration_seconds",
            "Wall time of each call to a Batch API (to the headers for streamed downloads)",
            ["target", "route", "method"],
            buckets=API_BUCKETS,
            registry=r,
        )
        self.step_duration = Histogram(
            "orchestrator_step_duration_seconds",
            "Batch steps run, by step and outcome, and how long each took",
            ["step", "outcome"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.steps_in_flight = Gauge(
            "orchestrator_steps_in_flight", "Batch steps running in this daemon now", registry=r
        )
        self.jobs_planned = Counter(
            "orchestrator_jobs_planned_total", "Jobs planned", ["outcome"], registry=r
        )
        self.jobs = Gauge("orchestrator_jobs", "Open jobs by status", ["status"], registry=r)
        self.jobs_finished = Counter(
            "orchestrator_jobs_finished_total",
            "Jobs this daemon moved to completed, failed or cancelled",
            ["target", "status"],
            registry=r,
        )
        self.jobs_for_target_not_served = Gauge(
            "orchestrator_pending_jobs_not_served",
            "Pending jobs of a target this daemon does not serve (not in its configuration, or "
            "a built-in target without its key): it leaves them to a daemon that serves it",
            ["target"],
            registry=r,
        )
        self.open_batches = Gauge(
            "orchestrator_open_batches", "Open batches by local state", ["state"], registry=r
        )
        self.oldest_pending_job_age = Gauge(
            "orchestrator_oldest_pending_job_age_seconds",
            "Age of the oldest pending job (0 when none)",
            registry=r,
        )
        self.oldest_open_batch_age = Gauge(
            "orchestrator_oldest_open_batch_age_seconds",
            "Age of the oldest open batch (0 when none)",
            registry=r,
        )
        self.stuck_batches = Gauge(
            "orchestrator_stuck_batches",
            "Open batches failing for longer than stuck_after_seconds, or running past expires_at",
            ["target"],
            registry=r,
        )
        self.target_paused = Gauge(
            "orchestrator_target_paused",
            "1 while the target is paused (bad key, billing), else 0",
            ["target"],
            registry=r,
        )
        self.target_rate_limited = Gauge(
            "orchestrator_target_rate_limited",
            "1 while the target asked us to wait (429) and is not paused, else 0",
            ["target"],
            registry=r,
        )
        self.capacity_waiting = Gauge(
            "orchestrator_batches_waiting_for_capacity",
            "Batches uploaded and held back by admission until the target and model have capacity",
            ["target", "model"],
            registry=r,
        )
        self.capacity_budget = Gauge(
            "orchestrator_capacity_budget_tokens",
            "The enqueued-token budget in force (the lower of configured and learned); "
            "only for models with one",
            ["target", "model"],
            registry=r,
        )
        self.capacity_in_flight = Gauge(
            "orchestrator_capacity_in_flight_tokens",
            "Estimated prompt tokens of the batches in flight (creating, submitted)",
            ["target", "model"],
            registry=r,
        )
        self.tokens = Counter(
            "orchestrator_tokens_total",
            "Tokens ingested by this daemon",
            ["target", "model", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "orchestrator_cost_dollars_total",
            "Cost ingested by this daemon, in US dollars (the batches' costs, by model)",
            ["target", "model"],
            registry=r,
        )
        self.lease_takeovers = Counter(
            "orchestrator_lease_takeovers_total",
            "Batches this daemon claimed whose lease another owner had held and let expire",
            registry=r,
        )
        self.ambiguous_creates = Counter(
            "orchestrator_ambiguous_creates_total",
            "Creates whose outcome was unknown (timeout, 5xx or a cut connection after sending)",
            ["target"],
            registry=r,
        )
        self.orphans_cancelled = Counter(
            "orchestrator_orphans_cancelled_total",
            "Remote batches carrying our key that no batch adopted, cancelled by the orphan sweep",
            ["target"],
            registry=r,
        )
        self.call_cap_waits = Counter(
            "orchestrator_call_cap_waits_total",
            "Times the target's max_calls_per_minute was used up and its calls waited for the "
            "next minute (counted by the daemon that found it so)",
            ["target"],
            registry=r,
        )
        self.last_tick = Gauge(
            "orchestrator_last_tick_timestamp_seconds",
            "Unix time of the last successful tick",
            registry=r,
        )
        self.database_up = Gauge(
            "orchestrator_database_up",
            "1 if the last refresh of the gauges reached the database, else 0",
            registry=r,
        )
        self._targets: tuple[str, ...] = ()
        # time.monotonic() of the last committed event of this process (observe_event)
        self.changed_at = 0.0
        # the label values each gauge has shown (a tuple of them where it has several labels)
        self._shown: dict[Gauge, set[Any]] = {}
        self._before_scrape: Callable[[], None] | None = None

    def for_targets(self, targets: Iterable[str]) -> None:
        """Show every per-target series of the configured targets, at 0 until something
        happens (an alert on a rate needs the series to exist before its first increase)."""
        self._targets = tuple(targets)
        for target in self._targets:
            self.ambiguous_creates.labels(target)
            self.orphans_cancelled.labels(target)
            self.call_cap_waits.labels(target)
            for status in FINISHED_JOB_STATUSES:
                self.jobs_finished.labels(target, status)
        for status in OPEN_JOB_STATUSES:
            self.jobs.labels(status)

    # -- what happens, as it happens ----------------------------------------------------------

    def observe_api(
        self, target: str, route: str, method: str, status: str, seconds: float
    ) -> None:
        self.api_requests.labels(target, route, method, status).inc()
        self.api_duration.labels(target, route, method).observe(seconds)

    def observe_step(self, step: str, outcome: str, seconds: float) -> None:
        self.step_duration.labels(step, outcome).observe(seconds)

    def observe_event(self, kind: str, fields: Mapping[str, Any]) -> None:
        """A committed ledger event (``ledger.record``): the database-derived gauges are out of
        date from now on (the next scrape reads them again), and some events count here."""
        self.changed_at = time.monotonic()
        status = kind.removeprefix("job_")
        if status in FINISHED_JOB_STATUSES and fields.get("target"):
            self.jobs_finished.labels(fields["target"], status).inc()
        elif kind == "target_call_cap_reached":
            self.call_cap_waits.labels(fields["target"]).inc()

    def observe_ingest(
        self, target: str, cost: Decimal | None, models: Sequence[ModelUsage]
    ) -> None:
        """A batch ingested (committed): its tokens by model, and its cost (``batches.cost``)
        shared out to its models (:func:`cost_by_model`)."""
        for m in models:
            self.tokens.labels(target, m.model, "prompt").inc(m.prompt_tokens)
            self.tokens.labels(target, m.model, "completion").inc(m.completion_tokens)
        for model, dollars in cost_by_model(cost, models).items():
            self.cost.labels(target, model).inc(float(dollars))

    # -- what the database says ---------------------------------------------------------------

    def show(self, values: GaugeValues, *, open_states: Iterable[str]) -> None:
        """Set the database-derived gauges. Every label value of a fixed set (the open statuses
        and states, the configured targets and every target the database knows) gets a value,
        and one shown before that is no longer in the set reads 0: never a stale value."""
        targets = {*self._targets, *values.paused, *values.rate_limited, *values.stuck}
        self._set(self.jobs, {s: values.jobs.get(s, 0) for s in OPEN_JOB_STATUSES})
        self._set(self.open_batches, {s: values.open_batches.get(s, 0) for s in open_states})
        self._set(self.stuck_batches, {t: values.stuck.get(t, 0) for t in targets})
        self._set(self.target_paused, {t: int(values.paused.get(t, False)) for t in targets})
        self._set(
            self.target_rate_limited,
            {t: int(values.rate_limited.get(t, False)) for t in targets},
        )
        self.oldest_pending_job_age.set(values.oldest_pending_job_age)
        self.oldest_open_batch_age.set(values.oldest_open_batch_age)

    def show_not_served(self, pending: Mapping[str, int]) -> None:
        """The pending jobs of each target this daemon does not serve; a target shown before
        that it now serves, or whose jobs have left pending, reads 0."""
        self._set(self.jobs_for_target_not_served, pending)

    def show_capacity(self, targets: Iterable[TargetCapacity]) -> None:
        """Set the capacity gauges from the capacity report (``domain.capacity_report``), by
        target and model (a batch with no model stated: model ``""``). A target and model shown
        before and no longer in the report reads 0 waiting and 0 in flight; its budget series is
        removed once it has no budget (0 would read as "nothing may be sent")."""
        models = [m for t in targets for m in t.models]
        self._set(self.capacity_waiting, {_pair(m): m.waiting_batches for m in models})
        self._set(self.capacity_in_flight, {_pair(m): m.in_flight_tokens for m in models})
        budgets = {_pair(m): m.budget.tokens for m in models if m.budget is not None}
        shown = self._shown.setdefault(self.capacity_budget, set())
        for labels in shown - set(budgets):
            self.capacity_budget.remove(*labels)
        self._shown[self.capacity_budget] = set()
        self._set(self.capacity_budget, budgets)

    def _set(self, gauge: Gauge, values: Mapping[Any, float]) -> None:
        """``values`` by label value (a tuple of them for a gauge of several labels); a label
        value shown before and missing from ``values`` reads 0."""
        shown = self._shown.setdefault(gauge, set())
        for label in shown - set(values):
            _labelled(gauge, label).set(0)
        for label, value in values.items():
            _labelled(gauge, label).set(value)
        shown.update(values)

    # -- the scrape -------------------------------------------------------------------------------

    def before_scrape(self, hook: Callable[[], None] | None) -> None:
        """``hook`` runs before each ``render()`` (the daemon refreshes stale gauges there)."""
        self._before_scrape = hook

    def render(self) -> bytes:
        if self._before_scrape is not None:
            self._before_scrape()
        return generate_latest(self.registry)


def _labelled(gauge: Gauge, label: str | tuple[str, ...]) -> Gauge:
    return gauge.labels(*label) if isinstance(label, tuple) else gauge.labels(label)


def _pair(m: ModelCapacity) -> tuple[str, str]:
    """The (target, model) labels of a target and model."""
    return (m.target, m.model or "")


def cost_by_model(cost: Decimal | None, models: Sequence[ModelUsage]) -> dict[str, Decimal]:
    """A batch's cost (the provider's figure when it reports one, else the sum of our prices)
    shared out to its models: one model takes it all; several take their cost at our prices when
    those add up to it, else a share in proportion to their tokens. The shares add up to the
    batch's cost exactly (the last model takes what rounding left)."""
    if cost is None or not models:
        return {}
    if len(models) == 1:
        return {models[0].model: cost}
    priced = [m.cost for m in models]
    if all(c is not None for c in priced) and sum(c or 0 for c in priced) == cost:
        return {m.model: m.cost or Decimal(0) for m in models}
    tokens = [m.prompt_tokens + m.completion_tokens for m in models]
    total = sum(tokens)
    shares: dict[str, Decimal] = {}
    left = cost
    for i, m in enumerate(models):
        if i == len(models) - 1:
            share = left
        else:
            weight = Decimal(tokens[i]) / total if total else Decimal(1) / len(models)
            share = (cost * weight).quantize(COST_PLACES)
        shares[m.model] = shares.get(m.model, Decimal(0)) + share
        left -= share
    return shares


def health_app(health: Callable[[], tuple[bool, dict[str, Any]]], metrics: Metrics) -> Starlette:
    """``/healthz`` (200 while the daemon ticks and reaches its database, else 503 with the
    reason; paused targets and stuck batches are reported but do not make the daemon unhealthy)
    and ``/metrics``. Both are plain functions: Starlette runs them on its thread pool, so a
    database call they make never blocks the server's event loop."""

    def healthz(request: Request) -> Response:
        ok, body = health()
        return JSONResponse(body, status_code=200 if ok else 503)

    def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics_endpoint)])
