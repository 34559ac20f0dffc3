"""Fault injection: rules that make the next calls to a route misbehave.

A :class:`FaultRule` names a route (or ``*``), how many times it fires (``times``; None for no
limit) and optionally a ``probability`` drawn from an RNG seeded by the config's seed, so a run
is reproducible. What it does is a :class:`Fault`: an object that wraps the normal handling of the
call (``proceed``) and may replace, delay or alter its response. New kinds register a JSON parser
with :func:`register_fault_kind` so the admin endpoint can create them too.

Two families share the rule list:

- response faults (``status``, ``delay``, ``truncate``): at most one fires per call, the first
  matching rule in the order they were added;
- marking faults (``batch``, ``not_ready``, in :mod:`orchestrator.emulator.marks`): bound to the
  route that creates the object they mark; every matching rule fires, and only when the call does
  create it, so a 429 rule and a batch rule on ``create_batch`` never shadow each other.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import math
import random
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from orchestrator.emulator.config import Mode
from orchestrator.emulator.errors import SUPPORTED_ERROR_STATUSES, ApiProblem, error_response
from orchestrator.emulator.ids import digest
from orchestrator.emulator.marks import BATCH_FAULT_KEYS, BatchFault, FileNotReady
from orchestrator.emulator.messages import EmuRequest, EmuResponse
from orchestrator.emulator.routes import ROUTE_NAMES

ANY_ROUTE = "*"


@dataclasses.dataclass(frozen=True)
class FaultContext:
    """The call a fault is applied to."""

    mode: Mode
    route: str
    request: EmuRequest
    # Run a call later, once the emulator's clock has moved on by the given seconds (the next
    # call to the emulator at or past that moment runs it first).
    later: Callable[[float, Proceed], None] | None = None


Proceed = Callable[[], EmuResponse]


class Fault(Protocol):
    kind: ClassVar[str]

    def apply(self, ctx: FaultContext, proceed: Proceed) -> EmuResponse: ...

    def to_json(self) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class HttpError:
    """Answer with an error status (and envelope) instead of handling the call.

    ``retry_after`` adds ``Retry-After`` (and ``retry-after-ms``); a 429 also gets the
    ``x-ratelimit-*`` headers. ``delay_seconds`` makes the error arrive late.

    ``applied``: the call is carried out first (a ``create_batch`` creates its batch), and only
    the answer is the error, as when a gateway or load balancer times out in front of a server
    that did the work. This is the ambiguous outcome a client must reconcile.

    ``echo_auth``: the error message quotes the request's ``Authorization`` header, as some
    proxies and misconfigured gateways do; a client must not log or store it.
    """

    kind: ClassVar[str] = "status"
    status: int
    retry_after: float | None = None
    message: str | None = None
    code: str | None = None
    delay_seconds: float = 0.0
    applied: bool = False
    echo_auth: bool = False

    def __post_init__(self) -> None:
        if self.status not in SUPPORTED_ERROR_STATUSES:
            raise ValueError(f"status must be one of {sorted(SUPPORTED_ERROR_STATUSES)}")

    def apply(self, ctx: FaultContext, proceed: Proceed) -> EmuResponse:
        if self.applied:
            proceed()  # the work is done; its answer is lost
        ctx.request.drain()
        headers = _retry_headers(self.status, self.retry_after)
        message = self.message
        if self.echo_auth:
            auth = ctx.request.headers.get("authorization", "")
            message = f"{message or 'request rejected'} (received Authorization: {auth})"
        problem = ApiProblem(
            self.status, message, code=self.code, headers=headers, retry_after=self.retry_after
        )
        response = error_response(ctx.mode, problem)
        response.delay_seconds = self.delay_seconds
        return response

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HttpError:
        return cls(
            status=int(data["status"]),
            retry_after=_optional_float(data.get("retry_after")),
            message=data.get("message"),
            code=data.get("code"),
            delay_seconds=float(data.get("delay_seconds") or 0.0),
            applied=bool(data.get("applied", False)),
            echo_auth=bool(data.get("echo_auth", False)),
        )


@dataclasses.dataclass(frozen=True)
class Delay:
    """Handle the call normally but answer ``seconds`` late (real seconds, in the HTTP adapter).

    The work is done either way, as on a real server whose reply is lost to a client timeout:
    that is the ambiguous case a client must reconcile.
    """

    kind: ClassVar[str] = "delay"
    seconds: float

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError("seconds must be > 0")

    def apply(self, ctx: FaultContext, proceed: Proceed) -> EmuResponse:
        response = proceed()
        response.delay_seconds += self.seconds
        return response

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Delay:
        return cls(float(data.get("seconds", data.get("delay_seconds", 0.0))))


@dataclasses.dataclass(frozen=True)
class TruncatedBody:
    """Answer normally, but cut the body off: the headers declare the full ``content-length``,
    only ``truncate`` (a fraction, at least one byte short) of the body is sent, and then the
    connection drops. An httpx client sees ``RemoteProtocolError`` mid-read, as when a proxy or
    the provider's storage breaks a long download. Error answers pass through uncut."""

    kind: ClassVar[str] = "truncate"
    truncate: float = 0.5
    # The body ends cleanly, short, with a content-length that says so: no HTTP error at all
    # (a proxy that buffered part of the answer). Only a client that checks what it read
    # against what the API says it should hold can notice.
    clean: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.truncate < 1.0:
            raise ValueError("truncate must be a fraction in [0, 1)")

    def apply(self, ctx: FaultContext, proceed: Proceed) -> EmuResponse:
        response = proceed()
        if response.status < 300:
            if self.clean:
                response.end_early(self.truncate)
            else:
                response.cut_short(self.truncate)
        return response

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "truncate": self.truncate}
        if self.clean:
            data["clean"] = True
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TruncatedBody:
        return cls(
            float(data.get("truncate", data.get("fraction", 0.5))),
            clean=bool(data.get("clean", False)),
        )


FaultParser = Callable[[Mapping[str, Any]], Fault]
FAULT_KINDS: dict[str, FaultParser] = {
    HttpError.kind: HttpError.from_json,
    Delay.kind: Delay.from_json,
    TruncatedBody.kind: TruncatedBody.from_json,
    BatchFault.kind: BatchFault.from_json,
    FileNotReady.kind: FileNotReady.from_json,
}


def register_fault_kind(kind: str, parser: FaultParser) -> None:
    """Let the admin endpoint build faults of a new kind from JSON."""
    FAULT_KINDS[kind] = parser


def fault_from_json(data: Mapping[str, Any]) -> Fault:
    """A fault from its JSON form; ``kind`` may be left out when a key says it (``status``,
    ``truncate``, ``not_ready``, a batch option, else a delay)."""
    kind = data.get("kind") or _infer_kind(data)
    parser = FAULT_KINDS.get(kind)
    if parser is None:
        raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
    return parser(data)


def _infer_kind(data: Mapping[str, Any]) -> str:
    for key, kind in (("status", "status"), ("truncate", "truncate"), ("not_ready", "not_ready")):
        if key in data:
            return kind
    if BATCH_FAULT_KEYS & set(data):
        return BatchFault.kind
    return Delay.kind


def marked_route(fault: Fault) -> str | None:
    """The route whose created objects a marking fault marks; None for a response fault."""
    route = getattr(fault, "marks_route", None)
    return route if isinstance(route, str) else None


@dataclasses.dataclass
class FaultRule:
    """A fault bound to a route, with how often it may still fire."""

    id: int
    route: str
    fault: Fault
    times: int | None
    probability: float | None
    fired: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "route": self.route,
            "times": self.times,
            "probability": self.probability,
            "fired": self.fired,
            **self.fault.to_json(),
        }


class FaultInjector:
    """The active rules, checked in the order they were added; at most one fires per call."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(digest(seed, "faults"))
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._revoked = False

    def add(
        self,
        route: str = ANY_ROUTE,
        fault: Fault | None = None,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        message: str | None = None,
        code: str | None = None,
        delay_seconds: float = 0.0,
        truncate: float | None = None,
        applied: bool = False,
        echo_auth: bool = False,
        times: int | None = 1,
        probability: float | None = None,
    ) -> FaultRule:
        """Add a rule. Give a ``fault``, or ``status`` (an HttpError, optionally delayed, applied
        or quoting the key), or ``truncate`` (a TruncatedBody), or only ``delay_seconds`` (a
        Delay). ``times=None`` fires without limit."""
        if fault is None:
            if status is not None:
                fault = HttpError(
                    status, retry_after, message, code, delay_seconds, applied, echo_auth
                )
            elif truncate is not None:
                fault = TruncatedBody(truncate)
            elif delay_seconds > 0:
                fault = Delay(delay_seconds)
            else:
                raise ValueError("give a fault, a status, truncate or delay_seconds")
        return self._add_rule(route, fault, times, probability)

    def add_batch_fault(
        self,
        fault: BatchFault | None = None,
        *,
        stuck_finalizing: float = 0.0,
        empty_error_file_id: bool = False,
        line_429: float = 0.0,
        line_500: float = 0.0,
        missing_lines: float = 0.0,
        duplicate_lines: float = 0.0,
        shuffle: bool = False,
        no_usage: bool = False,
        fail_with: str = "",
        hide_output: float = 0.0,
        echo_auth: bool = False,
        times: int | None = 1,
        probability: float | None = None,
    ) -> FaultRule:
        """Mark the next ``times`` batches created (None: every one from now on); see BatchFault.

        ``stuck_finalizing=math.inf`` holds them in finalizing until ``Emulator.release_stuck``.
        """
        if fault is None:
            fault = BatchFault(
                stuck_finalizing, empty_error_file_id, line_429, line_500, missing_lines,
                duplicate_lines, shuffle, no_usage, fail_with, hide_output=hide_output,
                echo_auth=echo_auth,
            )  # fmt: skip
        return self._add_rule(BatchFault.marks_route, fault, times, probability)

    def add_file_not_ready(
        self, seconds: float, *, times: int | None = 1, probability: float | None = None
    ) -> FaultRule:
        """The next ``times`` uploads stay invisible ("not found") for ``seconds`` virtual seconds."""
        return self._add_rule(FileNotReady.marks_route, FileNotReady(seconds), times, probability)

    def add_json(self, data: Mapping[str, Any]) -> FaultRule:
        """A rule from the admin endpoint's JSON: ``{"route", "times", "probability", ...fault}``."""
        times = data.get("times", 1)
        if times is not None and (not isinstance(times, int) or isinstance(times, bool)):
            raise ValueError("times must be a positive integer or null")
        probability = _optional_float(data.get("probability"))
        fault = fault_from_json(data)
        return self._add_rule(str(data.get("route", ANY_ROUTE)), fault, times, probability)

    def _add_rule(
        self, route: str, fault: Fault, times: int | None, probability: float | None
    ) -> FaultRule:
        marks = marked_route(fault)
        if marks is not None:
            if route not in (ANY_ROUTE, marks):
                raise ValueError(
                    f"{fault.kind!r} faults mark what {marks!r} creates; route {route!r}"
                )
            route = marks
        if route != ANY_ROUTE and route not in ROUTE_NAMES:
            raise ValueError(f"unknown route {route!r}; known: {sorted(ROUTE_NAMES)} or '*'")
        if times is not None and times < 1:
            raise ValueError("times must be a positive integer or None")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be in [0, 1]")
        with self._lock:
            rule = FaultRule(next(self._ids), route, fault, times, probability)
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def take(self, route: str) -> Fault | None:
        """The response fault to apply to this call, if a rule fires (using up one of its times)."""
        with self._lock:
            for rule in self._rules:
                if rule.route not in (ANY_ROUTE, route) or marked_route(rule.fault) is not None:
                    continue
                if self._fires(rule):
                    return rule.fault
        return None

    def take_marks(self, route: str) -> list[Fault]:
        """Every marking fault that fires for the object this call has just created."""
        with self._lock:
            return [
                rule.fault
                for rule in list(self._rules)
                if marked_route(rule.fault) == route and self._fires(rule)
            ]

    def _fires(self, rule: FaultRule) -> bool:
        """Draw the rule's probability; when it fires, use up one of its times. Lock held."""
        if rule.probability is not None and self._rng.random() >= rule.probability:
            return False
        rule.fired += 1
        if rule.times is not None and rule.fired >= rule.times:
            self._rules.remove(rule)
        return True

    @property
    def key_revoked(self) -> bool:
        with self._lock:
            return self._revoked

    def set_key_revoked(self, revoked: bool) -> None:
        with self._lock:
            self._revoked = revoked


def _retry_headers(status: int, retry_after: float | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if retry_after is not None:
        # Retry-After takes whole seconds; the SDKs read retry-after-ms first for precision.
        headers["retry-after"] = str(max(0, math.ceil(retry_after)))
        headers["retry-after-ms"] = str(max(0, round(retry_after * 1000)))
    if status == 429:
        reset = _go_duration(retry_after if retry_after is not None else 1.0)
        headers.update(
            {
                "x-ratelimit-limit-requests": "5000",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": reset,
                "x-ratelimit-limit-tokens": "2000000",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": reset,
            }
        )
    return headers


def _go_duration(seconds: float) -> str:
    """OpenAI's reset format: ``12ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s"


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclasses.dataclass(frozen=True)
class Garbage:
    """Answer ``200`` with a body that is not what the API documents: a few lines of text that
    quote the request's ``Authorization`` header, as a misrouted request answered by a debugging
    echo service, or a proxy's own page, does. The call is not carried out.

    ``gzip`` labels the text ``Content-Encoding: gzip``, as a proxy that mangles encodings does: an
    HTTP client then fails while decoding the body, with the body (and the key in it) in hand.
    """

    kind: ClassVar[str] = "garbage"
    gzip: bool = False

    def apply(self, ctx: FaultContext, proceed: Proceed) -> EmuResponse:
        ctx.request.drain()
        auth = ctx.request.headers.get("authorization", "")
        body = (
            f"echo: {ctx.request.method} {ctx.request.path}\n"
            f"authorization: {auth}\n"
            "this is not the API you are looking for\n"
        ).encode()
        headers = {"content-type": "text/plain; charset=utf-8"}
        if self.gzip:
            headers["content-encoding"] = "gzip"
        return EmuResponse(200, headers, body)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "gzip": self.gzip}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Garbage:
        return cls(gzip=bool(data.get("gzip", False)))


register_fault_kind(Garbage.kind, Garbage.from_json)


@dataclasses.dataclass(frozen=True)
class LateApply:
    """Answer an error now (``status``, a gateway's 502 by default) and carry the call out
    ``seconds`` later (virtual seconds): a create that a queueing gateway or a slow server applies
    after the client has given up on it. A client that concludes "not created" too early and
    creates again gets two batches, both paid."""

    kind: ClassVar[str] = "late"
    seconds: float
    status: int = 502

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError("seconds must be > 0")
        if self.status not in SUPPORTED_ERROR_STATUSES:
            raise ValueError(f"status must be one of {sorted(SUPPORTED_ERROR_STATUSES)}")

    def apply(self, ctx: FaultContext, proceed: Proceed) -> EmuResponse:
        if ctx.later is None:
            raise RuntimeError("this emulator cannot defer calls")
        ctx.request.body = (b"".join(ctx.request.body),)  # kept for when it is carried out
        ctx.later(self.seconds, proceed)
        problem = ApiProblem(self.status, "upstream request timeout")
        return error_response(ctx.mode, problem)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "seconds": self.seconds, "status": self.status}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LateApply:
        return cls(float(data["seconds"]), int(data.get("status", 502)))


register_fault_kind(LateApply.kind, LateApply.from_json)


@dataclasses.dataclass(frozen=True)
class HtmlPage:
    """Answer ``200`` with ``Content-Type: text/html`` and a web page (a proxy's error or login
    page, a CDN's challenge) instead of what the API documents. The call is not carried out: on
    ``file_content`` the client gets a "file" of HTML lines, none of them a result."""

    kind: ClassVar[str] = "html"

    def apply(self, ctx: FaultContext, proceed: Proceed) -> EmuResponse:
        ctx.request.drain()
        body = (
            b"<!DOCTYPE html>\n<html>\n<head><title>502 Bad Gateway</title></head>\n"
            b"<body><h1>502 Bad Gateway</h1><p>The upstream server is unavailable.</p></body>\n"
            b"</html>\n"
        )
        return EmuResponse(200, {"content-type": "text/html; charset=utf-8"}, body)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HtmlPage:
        return cls()


register_fault_kind(HtmlPage.kind, HtmlPage.from_json)


@dataclasses.dataclass(frozen=True)
class Gzipped:
    """Answer normally, with the body compressed (``Content-Encoding: gzip``, ``Content-Length``
    of the compressed bytes), as a provider or CDN that compresses large downloads does."""

    kind: ClassVar[str] = "gzip"

    def apply(self, ctx: FaultContext, proceed: Proceed) -> EmuResponse:
        response = proceed()
        if response.status < 300:
            body = gzip.compress(response.read())
            response.body = body
            response.headers["content-encoding"] = "gzip"
            response.headers["content-length"] = str(len(body))
        return response

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Gzipped:
        return cls()


register_fault_kind(Gzipped.kind, Gzipped.from_json)


@dataclasses.dataclass(frozen=True)
class Redirect:
    """Answer a redirect (``307`` keeps the method and the body) to the very URL that was
    called, as a site that bounces a call between two addresses does: each rule firing is one
    hop, so with ``times=None`` a client that follows redirects goes round until it gives up
    (a redirect loop), and with ``times=1`` it is sent back once and then answered. The call is
    not carried out by the hop that redirects."""

    kind: ClassVar[str] = "redirect"
    status: int = 307

    def __post_init__(self) -> None:
        if self.status not in (301, 302, 303, 307, 308):
            raise ValueError("status must be a redirect: 301, 302, 303, 307 or 308")

    def apply(self, ctx: FaultContext, proceed: Proceed) -> EmuResponse:
        ctx.request.drain()
        location = ctx.request.path
        if ctx.request.query:
            location += "?" + urllib.parse.urlencode(dict(ctx.request.query))
        return EmuResponse(self.status, {"location": location, "content-length": "0"}, b"")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "status": self.status}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Redirect:
        return cls(status=int(data.get("status", 307)))


register_fault_kind(Redirect.kind, Redirect.from_json)
