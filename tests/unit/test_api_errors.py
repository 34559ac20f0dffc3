from __future__ import annotations

import pytest

from orchestrator.api.errors import ApiRateLimited, error_for_status, parse_retry_after
from orchestrator.api.schemas import BatchObject


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
