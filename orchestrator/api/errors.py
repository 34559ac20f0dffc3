"""How a failed call to the Batch API is reported: one class per kind of failure.

::

    ApiError                          kind                retryable
    ├── ApiTransportError             TRANSIENT           yes   connection refused/reset, bad framing,
    │   │                                                       any other httpx error
    │   ├── ApiTimeout                TRANSIENT           yes
    │   └── ApiTruncatedDownload      TRANSIENT           yes   fewer bytes than Content-Length
    ├── ApiDecodeError                TRANSIENT           yes   a body we cannot read (not JSON, a
    │   │                                                       broken gzip)
    │   └── ApiIncompleteOutput       TRANSIENT           yes   result files short of the counts
    ├── ApiRedirectLoop               ACCOUNT             no    redirected too often: pause the target
    ├── ApiKeyMissing                 ACCOUNT             no    not sent: the target has no key: pause it
    └── ApiStatusError                (by status)               every non-2xx answer
        ├── ApiBadRequest             INVALID             no    400
        ├── ApiAuthError              ACCOUNT             no    401, 403: pause the target
        ├── ApiPaymentRequired        ACCOUNT             no    402 (FastRouter: insufficient credits)
        ├── ApiNotFound               NOT_FOUND           no    404
        ├── ApiPayloadTooLarge        TOO_LARGE           no    413
        ├── ApiRateLimited            RATE_LIMITED        yes   429, with ``retry_after`` seconds
        │   └── TargetBlocked         RATE_LIMITED        yes   not sent: the target is throttled
        │       └── CallCapReached    RATE_LIMITED        yes   not sent: max_calls_per_minute used up
        ├── ApiServerError            TRANSIENT           yes   5xx, 408, 409
        └── ApiClientError            INVALID             no    any other 4xx

Every ``httpx.HTTPError`` the client meets becomes one of these: nothing else escapes it, so the
runner never takes a bad answer for a crash. Messages are the provider's own (``error.message`` of
either envelope), or say what happened without quoting the answer. Nothing here ever holds a
request header, and the client scrubs its credentials out of the answer before building one of
these (a proxy may quote the ``Authorization`` header in its message), so the API key cannot leak
through an exception.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from typing import Any, ClassVar

from orchestrator.domain.decide import ErrorKind


class ApiError(Exception):
    """A call to the Batch API failed."""

    kind: ClassVar[ErrorKind] = ErrorKind.INVALID

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.kind in (ErrorKind.TRANSIENT, ErrorKind.RATE_LIMITED)


class ApiTransportError(ApiError):
    """The request or the response did not make it through the network."""

    kind = ErrorKind.TRANSIENT


class ApiTimeout(ApiTransportError):
    """No answer within the client's timeout."""


class ApiTruncatedDownload(ApiTransportError):
    """A download ended before all of its bytes arrived."""


class ApiDecodeError(ApiError):
    """An answer whose body is not what the API documents, or that cannot be decoded at all (a
    ``Content-Encoding`` that does not match the bytes, as a proxy that mangles encodings sends)."""

    kind = ErrorKind.TRANSIENT


class ApiIncompleteOutput(ApiDecodeError):
    """A finished batch's result files hold far fewer lines than its ``request_counts`` (no
    output file yet, an HTML page, a body cut short): download again later, send nothing again."""


class ApiRedirectLoop(ApiError):
    """The call was redirected more often than the client follows (a loop).

    No provider redirects its API calls in a loop: this is the address, a ``base_url`` that points
    at a site or proxy that bounces the call between two places (``http`` ↔ ``https``, a login
    page, a missing path prefix), and every call to the target will meet it. So it pauses the
    target, as a bad key does (jobs wait, ``status`` and ``/healthz`` say why, a probe every
    ``pause`` interval), instead of failing batches, or retrying each one on its own as if it were
    a passing fault. A redirect answers instead of handling the call, so a create redirected in a
    loop created nothing."""

    kind = ErrorKind.ACCOUNT


class ApiKeyMissing(ApiError):
    """The call was not sent: the target has no key (its variable is not set). Sent without one,
    it would come back 401, and the target be paused as if its key were wrong; this pauses it
    with the reason that is true, naming the variable to set, and nothing reaches the provider.
    A daemon restarted with the key resumes the target's work as after a restored key."""

    kind = ErrorKind.ACCOUNT


class ApiStatusError(ApiError):
    """The API answered with an error status."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        type_: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.type = type_
        self.body = body

    def __str__(self) -> str:
        return f"HTTP {self.status_code}: {self.message}"


class ApiBadRequest(ApiStatusError):
    """400: the provider refused the request as invalid."""


class ApiAuthError(ApiStatusError):
    """401/403: the key is invalid, revoked or not allowed."""

    kind = ErrorKind.ACCOUNT


class ApiPaymentRequired(ApiStatusError):
    """402: the account has no credits left."""

    kind = ErrorKind.ACCOUNT


class ApiNotFound(ApiStatusError):
    """404: no such file or batch (or not yet, or not any more)."""

    kind = ErrorKind.NOT_FOUND


class ApiPayloadTooLarge(ApiStatusError):
    """413: the uploaded file is larger than the provider accepts."""

    kind = ErrorKind.TOO_LARGE


class ApiRateLimited(ApiStatusError):
    """429: slow down; ``retry_after`` is how long the provider asked us to wait, if it said."""

    kind = ErrorKind.RATE_LIMITED

    def __init__(
        self, status_code: int, message: str, *, retry_after: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(status_code, message, **kwargs)
        self.retry_after = retry_after


class TargetBlocked(ApiRateLimited):
    """The call was not sent: this target asked every daemon to wait (a 429 seen by anyone)."""


class CallCapReached(TargetBlocked):
    """The call was not sent: the target's ``max_calls_per_minute`` calls of this minute are used
    up, by all daemons together; ``retry_after`` is the time to the next minute.

    A TargetBlocked, so every caller treats it as one: the runner puts the batch back until then
    without counting a failure (our own cap is not the step failing), a create that meets it was
    not sent (a definite refusal, not an ambiguous create), and the sweeps try again next round.
    Its status code is 429 for the callers that branch on it; the provider sent nothing."""


class ApiServerError(ApiStatusError):
    """5xx (and 408/409): the provider failed; trying again later is expected to work."""

    kind = ErrorKind.TRANSIENT


class ApiClientError(ApiStatusError):
    """Any other 4xx."""


_BY_STATUS: dict[int, type[ApiStatusError]] = {
    400: ApiBadRequest,
    401: ApiAuthError,
    402: ApiPaymentRequired,
    403: ApiAuthError,
    404: ApiNotFound,
    408: ApiServerError,
    409: ApiServerError,
    413: ApiPayloadTooLarge,
    429: ApiRateLimited,
}


def error_for_status(
    status_code: int, body: Any, text: str, headers: Mapping[str, str]
) -> ApiStatusError:
    """The exception for one non-2xx answer. ``body`` is the parsed JSON body, if any."""
    message, code, type_ = _read_envelope(body, text, status_code)
    if status_code == 429:
        return ApiRateLimited(
            status_code,
            message,
            retry_after=parse_retry_after(headers),
            code=code,
            type_=type_,
            body=body,
        )
    cls = _BY_STATUS.get(status_code)
    if cls is None:
        cls = ApiServerError if status_code >= 500 else ApiClientError
    return cls(status_code, message, code=code, type_=type_, body=body)


def _read_envelope(body: Any, text: str, status_code: int) -> tuple[str, str | None, str | None]:
    """Both envelopes: OpenAI ``{message,type,param,code}``, FastRouter ``{message,type,code,status}``."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        code = error.get("code")
        type_ = error.get("type")
        return (
            str(error.get("message") or f"HTTP {status_code}"),
            None if code is None else str(code),
            None if type_ is None else str(type_),
        )
    if isinstance(error, str) and error:
        return error, None, None
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return body["message"], None, None
    snippet = text.strip()[:300]
    return (snippet or f"HTTP {status_code} with an empty body"), None, None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms``, then ``Retry-After`` in seconds or as an HTTP date (relative to ``Date``)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
        sent = email.utils.parsedate_to_datetime(lowered["date"]) if "date" in lowered else None
    except (TypeError, ValueError, KeyError):
        return None
    if sent is None:
        return None
    return max((when - sent).total_seconds(), 0.0)
