"""Classification of the lines of a batch's output and error files (spec sections 3.3 to 3.5).

A line is a success only when its response has a 2xx ``status_code`` and its ``error`` is null.
Everything else is a failure, which is *retryable* (worth sending again in a new batch) or *final*:

* ``error: {code, message}`` with no response (the request never ran): ``batch_expired``,
  ``batch_cancelled``, ``request_timeout`` and rate-limit or server codes are retryable; any other
  code is final.
* ``response.status_code`` 408, 409, 429, 5xx, or 0 (seen in the wild): retryable. Other 4xx: final,
  the provider's own message is kept.

Both error shapes of the spec are accepted: the error inside ``response.body.error`` with a top-level
``error: null``, and a top-level ``error`` object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

RETRYABLE_ERROR_CODES = frozenset(
    {
        "batch_expired",
        "batch_cancelled",
        "request_timeout",
        "rate_limit_exceeded",
        "rate_limited",
        "server_error",
        "internal_error",
        "service_unavailable",
        "timeout",
    }
)
RETRYABLE_STATUS = frozenset({0, 408, 409, 429})


class Usage(NamedTuple):
    """Token counts of one response (a tuple: made once per line on the ingest hot path)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


NO_USAGE = Usage()


@dataclasses.dataclass(frozen=True, slots=True)
class LineOutcome:
    custom_id: str
    succeeded: bool
    retryable: bool
    status_code: int | None
    body: Any  # the response body (a completion, or the provider's error envelope), or None
    error: dict[str, Any] | None  # normalised {code, message, type, param} for failures
    usage: Usage
    model: str | None


class MalformedLine(ValueError):
    """A line that is not a result object with a string ``custom_id``."""


def status_retryable(status_code: int) -> bool:
    return status_code in RETRYABLE_STATUS or status_code >= 500


def success(line: Any) -> tuple[str, int, Any, Usage, str | None] | None:
    """The common case, fast: ``(custom_id, status_code, body, usage, model)`` when ``line`` (as
    orjson parses it) is a plain success, else None and the caller uses :func:`classify`.

    Ingest calls this once per line, so it checks exact types and builds no objects beyond the
    returned tuple; anything unusual falls through to the full classification.
    """
    if type(line) is not dict or line.get("error"):
        return None
    custom_id = line.get("custom_id")
    response = line.get("response")
    if type(custom_id) is not str or not custom_id or type(response) is not dict:
        return None
    status = response.get("status_code")
    if type(status) is not int or not 200 <= status < 300:
        return None
    body = response.get("body")
    usage, model = read_usage(body)
    return custom_id, status, body, usage, model


def classify(line: Any) -> LineOutcome:
    """Classify one parsed JSONL line. Raises :class:`MalformedLine` for garbage."""
    if not isinstance(line, Mapping):
        raise MalformedLine("a result line must be a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise MalformedLine("a result line has no custom_id")
    response = line.get("response")
    top_error = line.get("error")
    if not isinstance(response, Mapping):
        return _never_ran(custom_id, top_error)
    status = response.get("status_code")
    status_code = status if isinstance(status, int) else 0
    body = response.get("body")
    usage, model = read_usage(body)
    if 200 <= status_code < 300 and not top_error:
        return LineOutcome(custom_id, True, False, status_code, body, None, usage, model)
    error = _normalise_error(top_error or _body_error(body), status_code)
    retryable = status_retryable(status_code) or error.get("code") in RETRYABLE_ERROR_CODES
    return LineOutcome(custom_id, False, retryable, status_code, body, error, usage, model)


# Codes of a line that says the provider never ran the request because its window closed first:
# sending it again uses no attempt (``ingest``, ``ledger.resubmit``). A batch cancelled by the
# provider (``batch_cancelled``) still uses one, so that a provider that cancels every batch
# cannot keep the daemon sending them for ever.
NOT_RUN_CODES = frozenset({"batch_expired"})


def not_run(outcome: LineOutcome) -> bool:
    """Whether ``outcome`` says the provider never ran the request (no response; an error code
    of :data:`NOT_RUN_CODES`), so that it has not used an attempt."""
    return (
        outcome.status_code is None
        and outcome.error is not None
        and outcome.error.get("code") in NOT_RUN_CODES
    )


def _never_ran(custom_id: str, top_error: Any) -> LineOutcome:
    error = _normalise_error(top_error, None)
    retryable = error.get("code") in RETRYABLE_ERROR_CODES
    return LineOutcome(custom_id, False, retryable, None, None, error, NO_USAGE, None)


def _body_error(body: Any) -> Any:
    if isinstance(body, Mapping):
        return body.get("error", body)
    return body


def _normalise_error(raw: Any, status_code: int | None) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        error: dict[str, Any] = {
            "code": raw.get("code"),
            "message": raw.get("message") or _default_message(status_code),
        }
        for key in ("type", "param"):
            if raw.get(key) is not None:
                error[key] = raw[key]
    elif isinstance(raw, str) and raw:
        error = {"code": None, "message": raw}
    else:
        error = {"code": None, "message": _default_message(status_code)}
    if status_code is not None:
        error["status_code"] = status_code
    return error


def _default_message(status_code: int | None) -> str:
    if status_code is None:
        return "the provider reported a failure without a message"
    return f"the request failed with HTTP {status_code}"


def missing_error() -> dict[str, Any]:
    """The error recorded for a request that is in neither the output nor the error file."""
    return {
        "code": "missing_result",
        "message": "the provider returned no line for this request in the output or error file",
    }


def batch_error(message: str, code: str | None = None) -> dict[str, Any]:
    """The error recorded for every request of a batch that failed as a whole."""
    return {"code": code or "batch_failed", "message": message}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def read_usage(body: Any) -> tuple[Usage, str | None]:
    """Token usage and model of a response body (chat, completions, embeddings, responses), as
    orjson parses it. The chat/embeddings shape is read first, without detours: ingest calls
    this once per line."""
    if type(body) is not dict:
        return NO_USAGE, None
    model = body.get("model")
    if type(model) is not str:
        model = None
    usage = body.get("usage")
    if type(usage) is not dict:
        return NO_USAGE, model
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    total = usage.get("total_tokens")
    if type(prompt) is int and type(completion) is int and type(total) is int:
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if type(details) is dict else 0
        out = usage.get("completion_tokens_details")
        reasoning = out.get("reasoning_tokens") if type(out) is dict else 0
        return Usage(
            prompt,
            completion,
            total or prompt + completion,
            cached if type(cached) is int else 0,
            reasoning if type(reasoning) is int else 0,
        ), model
    return _other_usage(usage), model


def _other_usage(usage: dict[str, Any]) -> Usage:
    """The Responses API's names (input/output tokens), or values of the wrong type."""
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    total = _int(usage.get("total_tokens")) or prompt + completion
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    out_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    reasoning = _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    return Usage(prompt, completion, total, cached, reasoning)


# A completed batch whose files cover fewer than this share of the requests the provider counts as
# done (``completed + failed``) was not read whole: a missing or unreadable file, an HTML page
# from a proxy, a body cut short. That is a passing problem (download again later), never a reason
# to send the requests again. A smaller shortfall with every line readable is the provider's own
# (it does drop lines, spec X8): those requests go into the next round.
SHORT_READ_SHARE = 0.5


def short_read(
    counts: Mapping[str, Any] | None, *, covered: int, members: int, malformed: int
) -> str | None:
    """Why the files read for a finished batch cannot be all it produced, or None if they can.

    ``covered``: distinct requests of the batch with a line in either file; ``members``: the
    requests in the batch; ``malformed``: lines that were not JSON result lines."""
    if not isinstance(counts, Mapping):
        return None
    try:
        done = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
    except (TypeError, ValueError):
        return None
    expected = min(done, members)
    if covered >= expected:
        return None
    if covered >= expected * SHORT_READ_SHARE and not malformed:
        return None
    unreadable = f" and {malformed} unreadable line(s)" if malformed else ""
    return (
        f"the result files hold lines for {covered} of the {expected} requests the provider "
        f"counts as done{unreadable}"
    )
