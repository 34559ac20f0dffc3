"""Bad input: the job fails at once with an error naming the request and the problem, and the
emulator's ledger shows that nothing was uploaded."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.support import chat_body, enqueue, harness, make_settings, query, scalar


def _small_files(db_url: str):  # type: ignore[no-untyped-def]
    """A target whose files may hold at most 1 MB (the default is 200 MB)."""
    return lambda base_url: make_settings(db_url, base_url, max_file_bytes=1024 * 1024)


def _run_bad(db_url: str, requests: list[dict[str, object]], **job: object) -> tuple[str, str]:
    with harness(db_url, settings=_small_files(db_url)) as h:
        job_id = enqueue(db_url, requests, **job)  # type: ignore[arg-type]
        status = h.run_job(job_id, max_steps=5)
        uploads = h.emulator.ledger.calls_to("upload_file")
        creates = h.emulator.ledger.calls_to("create_batch")
    assert uploads == [] and creates == []
    error = scalar(db_url, "SELECT error FROM orchestrator.jobs WHERE id = %s", job_id)
    assert (
        scalar(db_url, "SELECT count(*) FROM orchestrator.batches WHERE job_id = %s", job_id) == 0
    )
    return status, error


GOOD = [{"custom_id": f"ok-{i}", "body": chat_body(i)} for i in range(3)]


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"custom_id": "bad-json", "body": "[1, 2, 3]"}, "body must be a JSON object"),
        (
            {"custom_id": "no-model", "body": {"messages": [{"role": "user", "content": "x"}]}},
            'body has no "model"',
        ),
        ({"custom_id": "no-messages", "body": {"model": "m"}}, "body.messages must be a non-empty"),
        ({"custom_id": "x" * 65, "body": chat_body(1)}, "65 characters long"),
        (
            {"custom_id": "wrong-url", "url": "/v1/embeddings", "body": chat_body(1)},
            "url '/v1/embeddings' does not match the job's endpoint '/v1/chat/completions'",
        ),
        (
            {"custom_id": "no-provider", "provider": None, "body": chat_body(1)},
            "provider is missing",
        ),
        (
            {"custom_id": "gemini", "provider": "gemini", "body": chat_body(1)},
            "provider 'gemini' is not one this target accepts (openai, anthropic)",
        ),
        (
            {
                "custom_id": "huge",
                "body": {
                    "model": "m",
                    "messages": [{"role": "user", "content": "x" * (1024 * 1024)}],
                },
            },
            "larger than the target's file limit",
        ),
    ],
    ids=[
        "malformed-body",
        "no-model",
        "no-messages",
        "long-custom-id",
        "url-mismatch",
        "no-provider",
        "unknown-provider",
        "request-too-large",
    ],
)
def test_a_bad_request_fails_the_job_naming_it(
    db_url: str, bad: dict[str, object], fragment: str
) -> None:
    status, error = _run_bad(db_url, [*GOOD, bad])
    assert status == "failed"
    assert f"request {bad['custom_id']!r}" in error
    assert fragment in error
    assert "nothing was sent" in error


def test_every_bad_request_is_counted_and_the_first_ones_listed(db_url: str) -> None:
    bad = [{"custom_id": f"b{i}", "body": {"model": "m"}} for i in range(8)]
    status, error = _run_bad(db_url, [*GOOD, *bad])
    assert status == "failed"
    assert error.startswith("8 of 11 requests are invalid")
    assert "request 'b0'" in error and "request 'b4'" in error and "and 3 more" in error


def test_a_job_with_no_requests_fails(db_url: str) -> None:
    status, error = _run_bad(db_url, [])
    assert status == "failed" and "no requests" in error


def test_an_endpoint_the_target_does_not_offer_fails(db_url: str) -> None:
    status, error = _run_bad(
        db_url,
        [{"custom_id": "a", "url": "/v1/moderations", "body": {"model": "m", "input": "x"}}],
        endpoint="/v1/moderations",
    )
    assert status == "failed" and "not supported by this target" in error


def test_a_completion_window_the_target_does_not_accept_fails(db_url: str) -> None:
    status, error = _run_bad(db_url, GOOD, completion_window="48h")
    assert status == "failed"
    assert "completion_window '48h' is not accepted by this target (accepted: 24h)" in error


def test_a_duplicate_custom_id_is_refused_at_insert_and_nothing_is_stored(db_url: str) -> None:
    with pytest.raises(psycopg.errors.UniqueViolation) as caught:
        enqueue(db_url, [*GOOD, {"custom_id": "ok-1", "body": chat_body(9)}])
    assert "(job_id, custom_id)" in str(caught.value) and "ok-1" in str(caught.value)
    assert query(db_url, "SELECT id FROM orchestrator.jobs") == []


def test_malformed_json_is_refused_by_postgres_at_insert(db_url: str) -> None:
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        enqueue(db_url, [{"custom_id": "a", "body": '{"model": "m", '}])
    assert query(db_url, "SELECT id FROM orchestrator.jobs") == []
    assert json.dumps  # the body column is jsonb: syntax errors never reach the daemon
