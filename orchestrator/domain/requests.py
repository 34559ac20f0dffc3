"""Input lines: how a request row becomes a JSONL line, and what makes one sure to fail.

Everything the provider would reject for a reason we can see is caught here, before any byte is
uploaded, and reported with the request's ``custom_id`` and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson


@dataclasses.dataclass(frozen=True)
class Rules:
    """What a target accepts (from its configuration)."""

    endpoint: str
    supported_endpoints: tuple[str, ...]
    requires_provider: bool
    max_custom_id_length: int
    max_line_bytes: int
    # The per-line providers the target accepts (None: any), the job's completion window and the
    # windows the target accepts.
    providers: tuple[str, ...] | None = None
    completion_window: str = "24h"
    completion_windows: tuple[str, ...] = ("24h",)


@dataclasses.dataclass(frozen=True, slots=True)
class RequestRow:
    """A request's envelope: everything of its JSONL line but the body."""

    custom_id: str
    provider: str | None
    method: str | None
    url: str | None


LINE_END = b"}\n"


def line_head(row: RequestRow, *, endpoint: str, include_provider: bool) -> bytes:
    """The start of the request's JSONL line, up to its body: ``{"custom_id": …, "body":``.

    The line is this head, then the body's stored text byte for byte, then :data:`LINE_END`. It is
    written in these three parts, so that a body of 190 MB is never copied to build a line."""
    head: dict[str, Any] = {"custom_id": row.custom_id}
    if include_provider and row.provider:
        head["provider"] = row.provider
    head["method"] = row.method or "POST"
    head["url"] = row.url or endpoint
    return orjson.dumps(head)[:-1] + b',"body":'  # the closing brace comes after the body


class LineHeads:
    """:func:`line_head` for many requests of one batch, byte for byte the same, without building
    a dict for each: the part after the custom_id depends only on (provider, method, url), which
    rarely vary within a job, so it is made once per combination."""

    def __init__(self, *, endpoint: str, include_provider: bool) -> None:
        self._endpoint = endpoint
        self._include_provider = include_provider
        self._tails: dict[tuple[str | None, str | None, str | None], bytes] = {}

    def __call__(self, row: RequestRow) -> bytes:
        return self.head(row.custom_id, row.provider, row.method, row.url)

    def head(
        self, custom_id: str, provider: str | None, method: str | None, url: str | None
    ) -> bytes:
        """The same, from the row's values (a page of an upload makes no RequestRow)."""
        key = (provider, method, url)
        tail = self._tails.get(key)
        if tail is None:
            head = line_head(
                RequestRow("", *key),
                endpoint=self._endpoint,
                include_provider=self._include_provider,
            )
            tail = self._tails[key] = head[len(b'{"custom_id":""') :]
        return b'{"custom_id":' + orjson.dumps(custom_id) + tail


def line_size(head: bytes, body_bytes: int) -> int:
    """The bytes of a line whose head is ``head`` and whose body is ``body_bytes`` long."""
    return len(head) + body_bytes + len(LINE_END)


def endpoint_problem(rules: Rules) -> str | None:
    """What makes the whole job sure to fail: its endpoint, or its completion window."""
    if rules.endpoint not in rules.supported_endpoints:
        return (
            f"endpoint {rules.endpoint!r} is not supported by this target "
            f"(supported: {', '.join(rules.supported_endpoints)})"
        )
    if rules.completion_window not in rules.completion_windows:
        return (
            f"completion_window {rules.completion_window!r} is not accepted by this target "
            f"(accepted: {', '.join(rules.completion_windows)})"
        )
    return None


def request_problem(row: RequestRow, body: Any, line_bytes: int, rules: Rules) -> str | None:
    """Why this request is sure to fail, or None. ``body`` is the parsed body, or its shape: what
    :func:`_body_problem` reads of it and nothing more (planning never loads bodies)."""
    return (
        _custom_id_problem(row.custom_id, rules)
        or _envelope_problem(row, rules)
        or _body_problem(body, rules.endpoint)
        or _size_problem(line_bytes, rules)
    )


def _custom_id_problem(custom_id: str, rules: Rules) -> str | None:
    if not custom_id.strip():
        return "custom_id is empty"
    if len(custom_id) > rules.max_custom_id_length:
        return (
            f"custom_id is {len(custom_id)} characters long; "
            f"the target accepts at most {rules.max_custom_id_length}"
        )
    return None


def _envelope_problem(row: RequestRow, rules: Rules) -> str | None:
    if row.method not in (None, "POST"):
        return f"method is {row.method!r}; batch requests must use POST"
    url = row.url or rules.endpoint
    if url != rules.endpoint:
        return f"url {url!r} does not match the job's endpoint {rules.endpoint!r}"
    if rules.requires_provider and not (row.provider and row.provider.strip()):
        return "provider is missing; this target needs it on every request (e.g. 'openai')"
    if rules.requires_provider and rules.providers and row.provider not in rules.providers:
        return (
            f"provider {row.provider!r} is not one this target accepts "
            f"({', '.join(rules.providers)})"
        )
    return None


def _body_problem(body: Any, endpoint: str) -> str | None:
    # Reads the body's JSON type, whether "model" is a string with more than whitespace, whether
    # "messages" is a non-empty array of objects that all have a "role", and whether "input" is
    # null, "" or []: nothing else. Planning passes the body's shape instead of the body, built in
    # SQL (``queries.BODY_SHAPE``) to keep exactly these; a check that reads more must add it there.
    if not isinstance(body, Mapping):
        return f"body must be a JSON object, not {_json_type(body)}"
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        return 'body has no "model" (a non-empty string is required)'
    if endpoint.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "body.messages must be a non-empty array for /v1/chat/completions"
        if not all(isinstance(m, Mapping) and "role" in m for m in messages):
            return 'every entry of body.messages must be an object with a "role"'
    elif endpoint.endswith("/embeddings") and body.get("input") in (None, "", []):
        return "body.input is required for /v1/embeddings"
    return None


def _size_problem(line_bytes: int, rules: Rules) -> str | None:
    if line_bytes > rules.max_line_bytes:
        return (
            f"request is {line_bytes:,} bytes as a JSONL line, larger than the target's "
            f"file limit ({rules.max_line_bytes:,} bytes); it can never be sent"
        )
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
