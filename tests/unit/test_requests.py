from __future__ import annotations

import dataclasses

import orjson
import pytest

from orchestrator.domain import requests
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
    base: dict[str, object] = {
        "custom_id": "r1",
        "provider": "openai",
        "method": "POST",
        "url": None,
    }
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
    ("row", "problem"),
    [
        (
            _row(custom_id="x" * 65),
            "custom_id is 65 characters long; the target accepts at most 64",
        ),
        (_row(custom_id="x" * 64), None),  # the limit itself is allowed
        (_row(custom_id="  "), "custom_id is empty"),
        (
            _row(url="/v1/embeddings"),
            "url '/v1/embeddings' does not match the job's endpoint '/v1/chat/completions'",
        ),
        (_row(url="/v1/chat/completions"), None),
        (_row(method="GET"), "method is 'GET'; batch requests must use POST"),
        (_row(method=None), None),  # POST is written for it
        (
            _row(provider=None),
            "provider is missing; this target needs it on every request (e.g. 'openai')",
        ),
        (
            _row(provider=" "),
            "provider is missing; this target needs it on every request (e.g. 'openai')",
        ),
        (_row(body_json="[1, 2]"), "body must be a JSON object, not an array"),
        (_row(body_json='"text"'), "body must be a JSON object, not a string"),
        (_row(body_json="null"), "body must be a JSON object, not null"),
        (_row(body_json="true"), "body must be a JSON object, not a boolean"),
        (_row(body_json="3"), "body must be a JSON object, not a number"),
        (_row(body_json="2.5"), "body must be a JSON object, not a number"),
        (
            _row(body_json='{"messages": [{"role": "user", "content": "x"}]}'),
            'body has no "model" (a non-empty string is required)',
        ),
        (
            _row(body_json='{"model": " ", "messages": [{"role": "user", "content": "x"}]}'),
            'body has no "model" (a non-empty string is required)',
        ),
        (
            _row(body_json='{"model": "m"}'),
            "body.messages must be a non-empty array for /v1/chat/completions",
        ),
        (
            _row(body_json='{"model": "m", "messages": []}'),
            "body.messages must be a non-empty array for /v1/chat/completions",
        ),
        (
            _row(body_json='{"model": "m", "messages": "hi"}'),
            "body.messages must be a non-empty array for /v1/chat/completions",
        ),
        (
            _row(body_json='{"model": "m", "messages": ["hi"]}'),
            'every entry of body.messages must be an object with a "role"',
        ),
        (
            _row(body_json='{"model": "m", "messages": [{"content": "hi"}]}'),
            'every entry of body.messages must be an object with a "role"',
        ),
        (
            _row(
                body_json='{"model": "m", "messages": [{"role": "user", "content": "'
                + "x" * 20_000
                + '"}]}'
            ),
            "request is 20,153 bytes as a JSONL line, larger than the target's file limit "
            "(10,000 bytes); it can never be sent",
        ),
    ],
)
def test_requests_sure_to_fail_are_named(row: tuple[RequestRow, str], problem: str | None) -> None:
    assert _problem(row) == problem


@pytest.mark.parametrize(
    ("line_bytes", "problem"),
    [
        (10_000, None),  # a line of the limit exactly fits
        (
            10_001,
            "request is 10,001 bytes as a JSONL line, larger than the target's file limit "
            "(10,000 bytes); it can never be sent",
        ),
    ],
)
def test_request_problem_a_line_larger_than_the_file_limit_can_never_be_sent(
    line_bytes: int, problem: str | None
) -> None:
    row, body = _row()
    assert request_problem(row, orjson.loads(body), line_bytes, RULES) == problem


@pytest.mark.parametrize(
    ("provider", "problem"),
    [
        ("openai", None),
        ("anthropic", None),
        ("mistral", "provider 'mistral' is not one this target accepts (openai, anthropic)"),
    ],
)
def test_request_problem_names_a_provider_the_target_does_not_accept(
    provider: str, problem: str | None
) -> None:
    rules = dataclasses.replace(RULES, providers=("openai", "anthropic"))
    assert _problem(_row(provider=provider), rules) == problem


EMBEDDINGS = Rules(
    endpoint="/v1/embeddings",
    supported_endpoints=("/v1/embeddings",),
    requires_provider=False,
    max_custom_id_length=64,
    max_line_bytes=10_000,
)


@pytest.mark.parametrize(
    ("body_json", "problem"),
    [
        ('{"model": "m"}', "body.input is required for /v1/embeddings"),
        ('{"model": "m", "input": null}', "body.input is required for /v1/embeddings"),
        ('{"model": "m", "input": ""}', "body.input is required for /v1/embeddings"),
        ('{"model": "m", "input": []}', "body.input is required for /v1/embeddings"),
        ('{"model": "m", "input": "x"}', None),
        ('{"model": "m", "input": ["a", "b"]}', None),
        ('{"model": "m", "input": [1, 2]}', None),  # token ids
        ('{"input": "x"}', 'body has no "model" (a non-empty string is required)'),
    ],
)
def test_embeddings_need_an_input(body_json: str, problem: str | None) -> None:
    assert _problem(_row(body_json=body_json), EMBEDDINGS) == problem


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        (RULES, None),
        (
            dataclasses.replace(RULES, endpoint="/v1/images/generations"),
            "endpoint '/v1/images/generations' is not supported by this target "
            "(supported: /v1/chat/completions, /v1/embeddings)",
        ),
        (
            dataclasses.replace(RULES, completion_window="48h", completion_windows=("24h", "1h")),
            "completion_window '48h' is not accepted by this target (accepted: 24h, 1h)",
        ),
        (
            dataclasses.replace(RULES, completion_window="1h", completion_windows=("24h", "1h")),
            None,
        ),
    ],
)
def test_endpoint_problem_names_an_unsupported_endpoint_or_window(
    rules: Rules, problem: str | None
) -> None:
    assert endpoint_problem(rules) == problem


@pytest.mark.parametrize(
    ("row", "include_provider", "head"),
    [
        (
            RequestRow("r1", "openai", None, None),
            True,
            b'{"custom_id":"r1","provider":"openai","method":"POST",'
            b'"url":"/v1/chat/completions","body":',
        ),
        (
            RequestRow("r1", "openai", "POST", "/v1/chat/completions"),
            False,
            b'{"custom_id":"r1","method":"POST","url":"/v1/chat/completions","body":',
        ),
        (
            RequestRow("r2", "", None, None),  # an empty provider is left out
            True,
            b'{"custom_id":"r2","method":"POST","url":"/v1/chat/completions","body":',
        ),
    ],
)
def test_line_head_fills_in_post_and_the_jobs_endpoint(
    row: RequestRow, include_provider: bool, head: bytes
) -> None:
    assert (
        line_head(row, endpoint="/v1/chat/completions", include_provider=include_provider) == head
    )


@pytest.mark.parametrize("include_provider", [True, False])
def test_line_heads_are_line_head_byte_for_byte(include_provider: bool) -> None:
    heads = LineHeads(endpoint="/v1/chat/completions", include_provider=include_provider)
    rows = [
        RequestRow("a", "openai", "POST", None),
        RequestRow('q"uote\\é😀\n', "anthropic", None, "/v1/chat/completions"),
        RequestRow("b", None, "POST", "/v1/embeddings"),
        RequestRow("c", "openai", "POST", None),  # the first combination again
        RequestRow("d", "openai", "GET", None),  # refused later, but its size is measured first
    ]
    for row in rows:
        expected = line_head(
            row, endpoint="/v1/chat/completions", include_provider=include_provider
        )
        assert heads(row) == expected
        assert heads.head(row.custom_id, row.provider, row.method, row.url) == expected


def test_line_heads_build_each_envelope_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning measures 50,000 requests a job: the envelope is made once per combination."""
    built: list[RequestRow] = []
    real = requests.line_head

    def counting(row: RequestRow, *, endpoint: str, include_provider: bool) -> bytes:
        built.append(row)
        return real(row, endpoint=endpoint, include_provider=include_provider)

    monkeypatch.setattr(requests, "line_head", counting)
    heads = LineHeads(endpoint="/v1/chat/completions", include_provider=True)
    for i in range(100):
        heads(RequestRow(f"r{i}", "openai" if i % 2 else "anthropic", "POST", None))
    assert built == [
        RequestRow("", "anthropic", "POST", None),
        RequestRow("", "openai", "POST", None),
    ]
