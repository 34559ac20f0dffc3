"""Result lines: what the emulated provider "answered" for each input line.

Everything is a pure function of the config's seed and the input line, so equal inputs give
byte-identical files. Shapes follow the spec's §3.3 (success) and §3.4 (error shapes a and b).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import math
import random
import struct
from collections.abc import Callable
from typing import Any

import orjson

from orchestrator.emulator.config import EmulatorConfig
from orchestrator.emulator.ids import digest, hex_id, unit_float

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
SUPPORTED_ENDPOINTS: tuple[str, ...] = (CHAT, EMBEDDINGS)
# The endpoints OpenAI's Batch API accepts at create (spec section 1.2), the emulator's own list:
# it does not share the product's beliefs, so that it can check them.
OPENAI_BATCH_ENDPOINTS: tuple[str, ...] = (
    "/v1/responses",
    CHAT,
    EMBEDDINGS,
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)

# OpenAI caches prompt prefixes in 128-token steps once a prompt reaches 1,024 tokens.
_CACHE_MIN_TOKENS = 1024
_CACHE_STEP = 128
_MAX_CHOICES = 8

_WORDS = (
    "the", "batch", "emulator", "answers", "every", "request", "with", "a", "short",
    "deterministic", "reply", "so", "tests", "can", "compare", "results", "byte", "for",
    "across", "runs", "and", "machines", "while", "benchmarks", "size", "each", "line",
)  # fmt: skip

_LONGEST_WORD = max(len(word) for word in _WORDS)
_STREAM_MIN_CHARS = 64 * 1024

Json = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class LineFailure:
    """Why a line gets an error response (a 400 unless said otherwise) in the error file."""

    message: str
    param: str | None = None
    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None


# What a rate-limited or crashed upstream call looks like inside a batch's results.
RATE_LIMITED = LineFailure(
    "Rate limit reached for requests. Please try again later.",
    status=429,
    type="requests",
    code="rate_limit_exceeded",
)
SERVER_ERROR = LineFailure(
    "The server had an error while processing your request. Sorry about that!",
    status=500,
    type="server_error",
)


@dataclasses.dataclass(frozen=True)
class LineUsage:
    model: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclasses.dataclass(frozen=True)
class LineContext:
    """What a result line needs besides the input line itself."""

    config: EmulatorConfig
    batch_id: str
    endpoint: str
    index: int
    processed_at: int


# The response body of a line that succeeds and its usage, from the line's context, its
# custom_id and its body.
BodyMaker = Callable[[LineContext, object, Json], tuple[Json, LineUsage]]
# Why the provider would refuse a line's body (None: it would not), once the model is known.
BodyCheck = Callable[[Json], LineFailure | None]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """How the emulator answers an endpoint that a mode of ``orchestrator.emulator.modes`` adds
    (anthropic's ``/v1/messages``, gemini's generateContent): the response body of a line that
    succeeds, and the checks a line's body must pass."""

    make_body: BodyMaker
    check: BodyCheck | None = None


# Keyed by the `url` of the lines (and the endpoint of their batch); modes register on import.
_ENDPOINTS: dict[str, Endpoint] = {}


def register_endpoint(url: str, endpoint: Endpoint) -> None:
    """Teach the core to check and answer lines of another endpoint than chat and embeddings."""
    _ENDPOINTS[url] = endpoint


def failure_of(
    config: EmulatorConfig, custom_id: object, body: object, url: object = None
) -> LineFailure | None:
    """Whether this line fails, decided from the config and the line alone (``url``: the
    endpoint it is for, whose registered checks apply too)."""
    if isinstance(custom_id, str) and custom_id in config.fail_custom_ids:
        return LineFailure(f"Emulated failure: custom_id {custom_id!r} is in fail_custom_ids.")
    rate = config.line_failure_rate
    if rate > 0 and unit_float(config.seed, "line-failure", custom_id) < rate:
        return LineFailure(f"Emulated failure: line_failure_rate={rate} selected {custom_id!r}.")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return LineFailure("you must provide a model parameter", "model")
    endpoint = _ENDPOINTS.get(url) if isinstance(url, str) else None
    if endpoint is not None and endpoint.check is not None:
        return endpoint.check(body)
    return None


def success_line(ctx: LineContext, line: Json) -> tuple[Json, LineUsage]:
    body = line.get("body") or {}
    endpoint = _ENDPOINTS.get(ctx.endpoint)
    if endpoint is not None:
        answer, usage = endpoint.make_body(ctx, line.get("custom_id"), body)
    elif ctx.endpoint == EMBEDDINGS:
        answer, usage = _embedding_body(ctx, line.get("custom_id"), body)
    else:
        answer, usage = _chat_body(ctx, line.get("custom_id"), body)
    response = {"status_code": 200, "request_id": _request_id(ctx), "body": answer}
    return _envelope(ctx, line, response, None), usage


def http_error_line(ctx: LineContext, line: Json, failure: LineFailure) -> Json:
    """Error shape (a): the request ran and got an HTTP error."""
    error = {
        "message": failure.message,
        "type": failure.type,
        "param": failure.param,
        "code": failure.code,
    }
    body = {"error": error}
    response = {"status_code": failure.status, "request_id": _request_id(ctx), "body": body}
    return _envelope(ctx, line, response, None)


def not_run_line(ctx: LineContext, line: Json, code: str, message: str) -> Json:
    """Error shape (b): the request never ran (batch cancelled or expired)."""
    return _envelope(ctx, line, None, {"code": code, "message": message})


def _envelope(ctx: LineContext, line: Json, response: Json | None, error: Json | None) -> Json:
    line_id = "batch_req_" + hex_id(ctx.config.seed, ctx.batch_id, ctx.index)
    return {"id": line_id, "custom_id": line.get("custom_id"), "response": response, "error": error}


def _request_id(ctx: LineContext) -> str:
    return "req_" + hex_id(ctx.config.seed, ctx.batch_id, ctx.index, "request")


def _chat_body(ctx: LineContext, custom_id: object, body: Json) -> tuple[Json, LineUsage]:
    model = body.get("model")
    prompt = estimate_tokens(body.get("messages"))
    limit = _max_tokens(body)
    choices: list[Json] = []
    completion = 0
    for number in range(_choice_count(body)):
        text = completion_text(ctx.config, custom_id, body, number)
        text, finish = _truncate(text, limit)
        completion += text_tokens(text)
        message: Json = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        choices.append(
            {"index": number, "message": message, "logprobs": None, "finish_reason": finish}
        )
    cached = cached_tokens(prompt)
    answer = {
        "id": "chatcmpl-" + hex_id(ctx.config.seed, ctx.batch_id, ctx.index, "chat"),
        "object": "chat.completion",
        "created": ctx.processed_at,
        "model": model,
        "choices": choices,
        "usage": _chat_usage(prompt, cached, completion),
        "service_tier": "default",
        "system_fingerprint": "fp_emulator",
    }
    return answer, LineUsage(_model_name(model), prompt, cached, completion)


def _chat_usage(prompt: int, cached: int, completion: int) -> Json:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _embedding_body(ctx: LineContext, custom_id: object, body: Json) -> tuple[Json, LineUsage]:
    inputs = _embedding_inputs(body.get("input"))
    dims = body.get("dimensions")
    size = dims if isinstance(dims, int) and 1 <= dims <= 4096 else ctx.config.embedding_dimensions
    as_base64 = body.get("encoding_format") == "base64"
    data = [
        {
            "object": "embedding",
            "index": number,
            "embedding": _vector(ctx.config.seed, custom_id, item, size, as_base64),
        }
        for number, item in enumerate(inputs)
    ]
    prompt = estimate_tokens(body.get("input"))
    answer = {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
    return answer, LineUsage(_model_name(body.get("model")), prompt, 0, 0)


def _embedding_inputs(value: object) -> list[object]:
    # `input` is a string, a list of strings, a list of token ids or a list of such lists.
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return list(value)
    return [value]


def _vector(seed: int, custom_id: object, item: object, size: int, as_base64: bool) -> object:
    rng = random.Random(digest(seed, "embedding", custom_id, _canonical(item)))
    values = [round(rng.uniform(-1.0, 1.0), 6) for _ in range(size)]
    if as_base64:
        return base64.b64encode(struct.pack(f"<{size}f", *values)).decode("ascii")
    return values


def completion_text(config: EmulatorConfig, custom_id: object, body: Json, number: int = 0) -> str:
    """Exactly ``config.completion_chars`` characters, fixed by seed, custom_id and body.

    A slice of one long seeded word stream, starting at a word boundary the hash picks: as varied
    as drawing words one by one, at a fraction of the cost for kilobyte-sized replies.
    """
    size = config.completion_chars
    stream = _word_stream(config.seed, max(_STREAM_MIN_CHARS, 4 * size))
    key = digest(config.seed, "completion", custom_id, _canonical(body), number)
    start = int.from_bytes(key[:8], "big") % (len(stream) - size - _LONGEST_WORD - 1)
    start = stream.index(" ", start) + 1
    return stream[start : start + size]


@functools.lru_cache(maxsize=16)
def _word_stream(seed: int, length: int) -> str:
    rng = random.Random(digest(seed, "word-stream"))
    words: list[str] = []
    total = 0
    while total < length:
        word = rng.choice(_WORDS)
        words.append(word)
        total += len(word) + 1
    return " ".join(words)


def estimate_tokens(value: object) -> int:
    """About four characters of JSON per token, at least one."""
    return max(1, len(_canonical(value)) // 4)


def cached_tokens(prompt_tokens: int) -> int:
    if prompt_tokens < _CACHE_MIN_TOKENS:
        return 0
    return (prompt_tokens // 2) // _CACHE_STEP * _CACHE_STEP


def text_tokens(text: str) -> int:
    """About four characters per token, at least one (what the fake completions count)."""
    return max(1, math.ceil(len(text) / 4))


def _truncate(text: str, limit: int | None) -> tuple[str, str]:
    if limit is not None and text_tokens(text) > limit:
        return text[: limit * 4], "length"
    return text, "stop"


def _max_tokens(body: Json) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


def _choice_count(body: Json) -> int:
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
        return min(n, _MAX_CHOICES)
    return 1


def _model_name(model: object) -> str | None:
    return model if isinstance(model, str) else None


def _canonical(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
