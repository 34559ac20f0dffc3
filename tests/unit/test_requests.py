from __future__ import annotations

import orjson
import pytest

from orchestrator.domain.requests import (
    LINE_END,
    LineHeads,
    RequestRow,
    Rules,
    endpoint_problem,
    line_head,
    line_size,
    request_problem,
)

RULES = Rules(
    endpoint="/v1/chat/completions",
    supported_endpoints=("/v1/chat/completions", "/v1/embeddings"),
    requires_provider=True,
    max_custom_id_length=64,
    max_line_bytes=10_000,
)
BODY = '{"model": "openai/gpt-4.1-nano", "messages": [{"role": "user", "content": "hi"}]}'


def _row(**kw: object) -> tuple[RequestRow, str]:
    """A request's envelope and its body's JSON text."""
    base = {"custom_id": "r1", "provider": "openai", "method": "POST", "url": None}
    body = str(kw.pop("body_json", BODY))
    base.update(kw)
    return RequestRow(**base), body  # type: ignore[arg-type]


def _line(request: tuple[RequestRow, str], *, endpoint: str, include_provider: bool) -> bytes:
    row, body = request
    head = line_head(row, endpoint=endpoint, include_provider=include_provider)
    line = head + body.encode() + LINE_END
    assert len(line) == line_size(head, len(body.encode()))
    return line


def _problem(request: tuple[RequestRow, str], rules: Rules = RULES) -> str | None:
    row, body = request
    line = _line(request, endpoint=rules.endpoint, include_provider=rules.requires_provider)
    return request_problem(row, orjson.loads(body), len(line), rules)


def test_the_line_carries_the_stored_body_byte_for_byte() -> None:
    line = _line(_row(), endpoint="/v1/chat/completions", include_provider=True)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    parsed = orjson.loads(line)
    assert parsed == {
        "custom_id": "r1",
        "provider": "openai",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": orjson.loads(BODY),
    }
    assert BODY.encode() in line


def test_provider_is_left_out_for_targets_that_do_not_take_it() -> None:
    line = _line(_row(), endpoint="/v1/chat/completions", include_provider=False)
    assert "provider" not in orjson.loads(line)


def test_a_valid_request_has_no_problem() -> None:
    assert _problem(_row()) is None


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        (_row(custom_id="x" * 65), "65 characters"),
        (_row(custom_id="  "), "custom_id is empty"),
        (_row(url="/v1/embeddings"), "does not match the job's endpoint"),
        (_row(method="GET"), "must use POST"),
        (_row(provider=None), "provider is missing"),
        (_row(body_json="[1, 2]"), "body must be a JSON object, not an array"),
        (_row(body_json='"text"'), "not a string"),
        (_row(body_json='{"messages": [{"role": "user", "content": "x"}]}'), 'no "model"'),
        (_row(body_json='{"model": "m"}'), "body.messages must be a non-empty array"),
        (_row(body_json='{"model": "m", "messages": ["hi"]}'), 'with a "role"'),
        (
            _row(
                body_json='{"model": "m", "messages": [{"role": "user", "content": "'
                + "x" * 20_000
                + '"}]}'
            ),
            "larger than the target's file limit",
        ),
    ],
)
def test_requests_sure_to_fail_are_named(row: tuple[RequestRow, str], fragment: str) -> None:
    problem = _problem(row)
    assert problem is not None and fragment in problem


def test_embeddings_need_an_input() -> None:
    rules = Rules(
        endpoint="/v1/embeddings",
        supported_endpoints=("/v1/embeddings",),
        requires_provider=False,
        max_custom_id_length=64,
        max_line_bytes=10_000,
    )
    assert "body.input is required" in str(_problem(_row(body_json='{"model": "m"}'), rules))
    assert _problem(_row(body_json='{"model": "m", "input": "x"}'), rules) is None


def test_an_unsupported_endpoint_is_a_job_level_problem() -> None:
    rules = Rules(
        endpoint="/v1/images/generations",
        supported_endpoints=("/v1/embeddings",),
        requires_provider=False,
        max_custom_id_length=64,
        max_line_bytes=1,
    )
    assert "not supported by this target" in str(endpoint_problem(rules))


@pytest.mark.parametrize("include_provider", [True, False])
def test_line_heads_are_line_head_byte_for_byte(include_provider: bool) -> None:
    heads = LineHeads(endpoint="/v1/chat/completions", include_provider=include_provider)
    rows = [
        RequestRow("a", "openai", "POST", None),
        RequestRow('q"uote\\é😀\n', "anthropic", None, "/v1/chat/completions"),
        RequestRow("b", None, "POST", "/v1/embeddings"),
        RequestRow("c", "openai", "POST", None),  # the first combination again
    ]
    for row in rows:
        expected = line_head(
            row, endpoint="/v1/chat/completions", include_provider=include_provider
        )
        assert heads(row) == expected
