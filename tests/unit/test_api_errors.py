from __future__ import annotations

import pytest

from orchestrator.api.errors import (
    ApiAuthError,
    ApiBadRequest,
    ApiClientError,
    ApiDecodeError,
    ApiError,
    ApiIncompleteOutput,
    ApiNotFound,
    ApiPayloadTooLarge,
    ApiPaymentRequired,
    ApiRateLimited,
    ApiRedirectLoop,
    ApiServerError,
    ApiStatusError,
    ApiTimeout,
    ApiTransportError,
    ApiTruncatedDownload,
    CallCapReached,
    TargetBlocked,
    error_for_status,
    parse_retry_after,
)
from orchestrator.api.schemas import BatchObject
from orchestrator.domain.decide import ErrorKind


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "30"}, 30.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "2500", "Retry-After": "30"}, 2.5),
        (
            {
                "Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT",
                "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
            },
            30.0,
        ),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, None),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_forms(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_both_error_envelopes_are_read() -> None:
    fr = error_for_status(
        429,
        {
            "error": {
                "message": "slow down",
                "type": "rate_limit",
                "code": "rate_limited",
                "status": 429,
            }
        },
        "",
        {},
    )
    oa = error_for_status(
        400,
        {"error": {"message": "bad", "type": "invalid_request_error", "param": "x", "code": None}},
        "",
        {},
    )
    assert (
        isinstance(fr, ApiRateLimited) and fr.message == "slow down" and fr.code == "rate_limited"
    )
    assert oa.message == "bad" and oa.code is None and oa.type == "invalid_request_error"


def test_a_non_json_error_body_keeps_a_snippet() -> None:
    err = error_for_status(502, None, "<html>Bad gateway</html>", {})
    assert err.message == "<html>Bad gateway</html>" and err.retryable


def test_empty_file_ids_mean_no_file() -> None:
    batch = BatchObject.from_json(
        {
            "batch_id": "fr_batch-1",
            "status": "completed",
            "output_file_id": None,
            "error_file_id": "",
        }
    )
    assert batch.id == "fr_batch-1" and batch.output_file_id is None and batch.error_file_id is None


def test_validation_errors_summary_names_lines() -> None:
    batch = BatchObject.from_json(
        {
            "id": "b",
            "status": "failed",
            "errors": {
                "object": "list",
                "data": [{"code": "duplicate_custom_id", "message": "dup", "line": 3}],
            },
        }
    )
    assert batch.error_summary() == "duplicate_custom_id: dup (line 3)"


ENVELOPE = {"error": {"message": "m", "type": "t", "code": "c"}}


@pytest.mark.parametrize(
    ("status", "cls", "kind"),
    [
        (400, ApiBadRequest, ErrorKind.INVALID),
        (401, ApiAuthError, ErrorKind.ACCOUNT),
        (402, ApiPaymentRequired, ErrorKind.ACCOUNT),
        (403, ApiAuthError, ErrorKind.ACCOUNT),
        (404, ApiNotFound, ErrorKind.NOT_FOUND),
        (405, ApiClientError, ErrorKind.INVALID),
        (408, ApiServerError, ErrorKind.TRANSIENT),
        (409, ApiServerError, ErrorKind.TRANSIENT),
        (413, ApiPayloadTooLarge, ErrorKind.TOO_LARGE),
        (422, ApiClientError, ErrorKind.INVALID),
        (430, ApiClientError, ErrorKind.INVALID),
        (499, ApiClientError, ErrorKind.INVALID),
        (500, ApiServerError, ErrorKind.TRANSIENT),
        (501, ApiServerError, ErrorKind.TRANSIENT),
        (502, ApiServerError, ErrorKind.TRANSIENT),
        (599, ApiServerError, ErrorKind.TRANSIENT),
    ],
)
def test_error_for_status_maps_a_status_to_its_kind(
    status: int, cls: type[ApiStatusError], kind: ErrorKind
) -> None:
    err = error_for_status(status, ENVELOPE, '{"error": …}', {"Retry-After": "7"})
    assert type(err) is cls
    assert (err.kind, err.retryable) == (kind, kind is ErrorKind.TRANSIENT)
    assert (err.status_code, err.message, err.code, err.type) == (status, "m", "c", "t")
    assert err.body is ENVELOPE
    assert str(err) == f"HTTP {status}: m"
    assert not hasattr(err, "retry_after")


@pytest.mark.parametrize(("headers", "retry_after"), [({"Retry-After": "7"}, 7.0), ({}, None)])
def test_error_for_status_429_is_rate_limited_with_the_wait_asked_for(
    headers: dict[str, str], retry_after: float | None
) -> None:
    err = error_for_status(429, ENVELOPE, "", headers)
    assert type(err) is ApiRateLimited
    assert (err.kind, err.retryable) == (ErrorKind.RATE_LIMITED, True)
    assert (err.status_code, err.message, err.code, err.type) == (429, "m", "c", "t")
    assert err.retry_after == retry_after
    assert err.body is ENVELOPE
    assert str(err) == "HTTP 429: m"


@pytest.mark.parametrize(
    ("status", "body", "text", "read"),
    [
        (  # OpenAI's envelope
            400,
            {
                "error": {
                    "message": "bad",
                    "type": "invalid_request_error",
                    "param": "x",
                    "code": None,
                }
            },
            "",
            ("bad", None, "invalid_request_error"),
        ),
        (  # FastRouter's, with a numeric code
            402,
            {"error": {"message": "Insufficient credits", "type": "payment", "code": 402}},
            "",
            ("Insufficient credits", "402", "payment"),
        ),
        (  # an envelope without message or type: the status
            500,
            {"error": {"code": "server_error"}},
            "",
            ("HTTP 500", "server_error", None),
        ),
        (400, {"error": "Unauthorized"}, "", ("Unauthorized", None, None)),  # a bare string
        (  # a flag, and the message beside it
            403,
            {"error": True, "message": "Forbidden by the proxy"},
            "",
            ("Forbidden by the proxy", None, None),
        ),
        (401, {"message": "Invalid API key"}, "", ("Invalid API key", None, None)),
        (  # no JSON: a snippet of the text, stripped
            502,
            None,
            "  <html>Bad gateway</html>\n",
            ("<html>Bad gateway</html>", None, None),
        ),
        (503, None, "x" * 400, ("x" * 300, None, None)),  # at most 300 characters of it
        (503, None, " \n", ("HTTP 503 with an empty body", None, None)),
        (400, {"error": ""}, "", ("HTTP 400 with an empty body", None, None)),
    ],
)
def test_error_for_status_keeps_the_providers_message(
    status: int, body: object, text: str, read: tuple[str, str | None, str | None]
) -> None:
    err = error_for_status(status, body, text, {})
    assert (err.message, err.code, err.type) == read
    assert str(err) == f"HTTP {status}: {read[0]}"


@pytest.mark.parametrize(
    ("cls", "kind"),
    [
        (ApiError, ErrorKind.INVALID),
        (ApiTransportError, ErrorKind.TRANSIENT),
        (ApiTimeout, ErrorKind.TRANSIENT),
        (ApiTruncatedDownload, ErrorKind.TRANSIENT),
        (ApiDecodeError, ErrorKind.TRANSIENT),
        (ApiIncompleteOutput, ErrorKind.TRANSIENT),
        (ApiRedirectLoop, ErrorKind.ACCOUNT),
    ],
)
def test_api_error_without_a_status_carries_its_message_and_kind(
    cls: type[ApiError], kind: ErrorKind
) -> None:
    err = cls("POST /v1/files: timed out")
    assert (err.kind, err.retryable) == (kind, kind is ErrorKind.TRANSIENT)
    assert err.message == "POST /v1/files: timed out"
    assert str(err) == "POST /v1/files: timed out"


@pytest.mark.parametrize("cls", [TargetBlocked, CallCapReached])
def test_target_blocked_is_rate_limited_until_the_wait_is_over(
    cls: type[TargetBlocked],
) -> None:
    err = cls(429, "target 'fastrouter' asked us to wait 12s more", retry_after=12.0)
    assert isinstance(err, ApiRateLimited)
    assert (err.kind, err.retryable, err.retry_after) == (ErrorKind.RATE_LIMITED, True, 12.0)
    assert str(err) == "HTTP 429: target 'fastrouter' asked us to wait 12s more"
    assert (err.status_code, err.code, err.type, err.body) == (429, None, None, None)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),  # under a second
        ({"retry-after-ms": "-100"}, 0.0),
        ({"retry-after-ms": "soon", "Retry-After": "30"}, 30.0),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": ""}, None),
        (
            {
                "Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT",
                "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
            },
            0.0,
        ),
        (
            {
                "Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT",  # already past
                "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
            },
            0.0,
        ),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT", "Date": "garbage"}, None),
    ],
)
def test_parse_retry_after_is_never_negative(
    headers: dict[str, str], expected: float | None
) -> None:
    assert parse_retry_after(headers) == expected
