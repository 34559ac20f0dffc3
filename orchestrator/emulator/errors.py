"""Error envelopes, in each mode's shape.

FastRouter: ``{"error": {"message", "type", "code": str, "status": int}}``.
OpenAI:     ``{"error": {"message", "type", "param": str|null, "code": str|null}}``.

Handlers raise :class:`ApiProblem`; the core turns it into a response with :func:`error_response`.
A mode of :mod:`orchestrator.emulator.modes` renders its own refusals (status, headers and body)
with :func:`register_error_renderer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from orchestrator.emulator.config import Mode
from orchestrator.emulator.messages import EmuResponse, json_response


@dataclasses.dataclass(frozen=True)
class _Default:
    fr_type: str
    fr_code: str
    fr_message: str
    oa_type: str
    oa_code: str | None
    oa_message: str


# Messages of the FastRouter column are the ones its docs print for each status.
_DEFAULTS: dict[int, _Default] = {
    400: _Default(
        "invalid_request_error", "bad_request", "Bad Request",
        "invalid_request_error", None, "Bad request.",
    ),
    401: _Default(
        "authentication_error", "invalid_api_key",
        "Invalid Credentials - Your API key is invalid, disabled, or your OAuth session has "
        "expired. Check your credentials.",
        "invalid_request_error", "invalid_api_key", "Incorrect API key provided.",
    ),
    402: _Default(
        "billing_error", "insufficient_credits", "Insufficient Credits",
        "insufficient_quota", "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    403: _Default(
        "permission_error", "moderation_blocked", "Moderation Blocked",
        "invalid_request_error", "unsupported_country_region_territory", "Forbidden.",
    ),
    404: _Default(
        "not_found_error", "not_found", "Not Found",
        "invalid_request_error", None, "Not found.",
    ),
    409: _Default(
        "conflict_error", "conflict", "Conflict",
        "invalid_request_error", "conflict", "The request conflicts with the current state.",
    ),
    413: _Default(
        "invalid_request_error", "payload_too_large", "Payload Too Large - File exceeds size limit",
        "invalid_request_error", None, "File is too large.",
    ),
    429: _Default(
        "rate_limit_error", "rate_limit_exceeded",
        "Rate Limited - You have exceeded your request limits (TPM/RPM). Slow down or increase "
        "your limits.",
        "requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again.",
    ),
    500: _Default(
        "server_error", "internal_server_error", "Internal Server Error",
        "server_error", None, "The server had an error while processing your request.",
    ),
    502: _Default(
        "server_error", "bad_gateway", "Model Down",
        "server_error", None, "Bad gateway.",
    ),
    503: _Default(
        "server_error", "service_unavailable", "Service Unavailable",
        "server_error", None, "The engine is currently overloaded, please try again later.",
    ),
    # A gateway in front of the provider giving up on a slow answer (the call may well have been
    # carried out behind it): the commonest lost answer of all.
    504: _Default(
        "server_error", "gateway_timeout", "Gateway Timeout",
        "server_error", None, "Gateway timeout.",
    ),
    # Anthropic's "overloaded" status; other providers never send it, but a client may meet it
    # behind any gateway, so a fault may ask for it in every mode.
    529: _Default(
        "server_error", "overloaded", "Overloaded",
        "server_error", None, "The engine is currently overloaded, please try again later.",
    ),
}  # fmt: skip

SUPPORTED_ERROR_STATUSES: frozenset[int] = frozenset(_DEFAULTS)


class ApiProblem(Exception):
    """A request the emulated API refuses; becomes an error envelope."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message or f"HTTP {status}")
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type_ = type_
        self.headers = dict(headers or {})
        # The wait a rate-limit fault asks for (``headers`` already say it in OpenAI's words).
        self.retry_after = retry_after


ErrorRenderer = Callable[[ApiProblem], EmuResponse]
# The modes of orchestrator.emulator.modes, which register on import.
_RENDERERS: dict[str, ErrorRenderer] = {}


def register_error_renderer(mode: Mode, renderer: ErrorRenderer) -> None:
    """Let a mode answer every refusal (handlers, faults, a revoked key) its own way: the
    envelope, and the status and headers too where its provider's differ from the problem's."""
    _RENDERERS[mode] = renderer


def error_response(mode: Mode, problem: ApiProblem) -> EmuResponse:
    renderer = _RENDERERS.get(mode)
    if renderer is not None:
        return renderer(problem)
    return json_response(problem.status, error_body(mode, problem), problem.headers)


def error_body(mode: Mode, problem: ApiProblem) -> dict[str, object]:
    default = _DEFAULTS.get(problem.status, _DEFAULTS[500])
    if mode == "openai":
        return {
            "error": {
                "message": problem.message or default.oa_message,
                "type": problem.type_ or default.oa_type,
                "param": problem.param,
                "code": problem.code if problem.code is not None else default.oa_code,
            }
        }
    return {
        "error": {
            "message": problem.message or default.fr_message,
            "type": problem.type_ or default.fr_type,
            "code": problem.code or default.fr_code,
            "status": problem.status,
        }
    }
