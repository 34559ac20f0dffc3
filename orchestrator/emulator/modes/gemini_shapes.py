"""Gemini's JSON shapes, as pure functions: errors, times, states, counts, files, answers, rows.

Everything here is a function of its arguments (the seed included), so equal calls give equal
bytes. The wire adapter (:mod:`orchestrator.emulator.modes.gemini`) decides when to use which.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

import orjson

from orchestrator.emulator.errors import ApiProblem
from orchestrator.emulator.ids import digest
from orchestrator.emulator.lines import (
    LineContext,
    LineUsage,
    cached_tokens,
    completion_text,
    estimate_tokens,
    text_tokens,
)
from orchestrator.emulator.messages import EmuResponse, dump_json

Json = dict[str, Any]

# The endpoint the core files Gemini rows under (the `url` of its internal request lines).
GENERATE_CONTENT = "/v1beta/models:generateContent"
BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
JSON_TYPE = "application/json; charset=UTF-8"
# Inline create bodies must stay under 20 MB (the guide); larger work goes through a file.
MAX_INLINE_BYTES = 20 * 1024 * 1024
INVALID_ROW_MESSAGE = "Request contains an invalid argument."
_MAX_CANDIDATES = 8

# The core's statuses as Gemini states. `cancelling` has no Gemini name: the job keeps running
# (or pending) until the cancel lands.
STATES: dict[str, str] = {
    "validating": "BATCH_STATE_PENDING",
    "in_progress": "BATCH_STATE_RUNNING",
    "finalizing": "BATCH_STATE_RUNNING",
    "completed": "BATCH_STATE_SUCCEEDED",
    "failed": "BATCH_STATE_FAILED",
    "expired": "BATCH_STATE_EXPIRED",
    "cancelled": "BATCH_STATE_CANCELLED",
}

# HTTP status -> gRPC code, for rows (google.rpc.Status.code is a gRPC code, not HTTP).
GRPC_CODES: dict[int, int] = {
    400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 429: 8, 499: 1,
    500: 13, 501: 12, 502: 14, 503: 14, 504: 4,
}  # fmt: skip

# What the core's refusals become: (HTTP status sent, canonical status, default message).
# Google sends no 401/402/413 here: a bad key is a 400 (API_KEY_INVALID), billing a 400
# FAILED_PRECONDITION, an oversized body a 400.
_ERRORS: dict[int, tuple[int, str, str]] = {
    400: (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
    402: (400, "FAILED_PRECONDITION", "Billing is required for this request."),
    403: (403, "PERMISSION_DENIED", "The caller does not have permission"),
    404: (404, "NOT_FOUND", "Requested entity was not found."),
    409: (409, "ABORTED", "The operation was aborted."),
    413: (400, "INVALID_ARGUMENT", f"Request payload size exceeds the limit: {MAX_INLINE_BYTES} bytes."),
    429: (
        429, "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    500: (
        500, "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    502: (502, "UNAVAILABLE", "Bad Gateway."),
    503: (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: (504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}  # fmt: skip
CANONICAL_STATUSES = frozenset(
    {
        "INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "UNAUTHENTICATED",
        "PERMISSION_DENIED", "NOT_FOUND", "ABORTED", "ALREADY_EXISTS", "RESOURCE_EXHAUSTED",
        "CANCELLED", "INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED", "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
    }
)  # fmt: skip
_RPC = "type.googleapis.com/google.rpc."


# -- requests and answers ------------------------------------------------------------------------


def field(payload: object, *names: str) -> Any:
    """A field under its camelCase or snake_case name (protobuf JSON accepts both)."""
    if not isinstance(payload, dict):
        return None
    for name in names:
        if name in payload:
            return payload[name]
    return None


def json_object(body: bytes, allow_empty: bool = False) -> Json:
    """A request body that must be a JSON object (``{}`` for an empty one if allowed)."""
    if not body.strip() and allow_empty:
        return {}
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiProblem(400, f"Invalid JSON payload received. {exc}") from None
    if not isinstance(payload, dict):
        raise ApiProblem(400, "Invalid JSON payload received: expected an object.")
    return payload


def ok(body: Json) -> EmuResponse:
    return EmuResponse(200, {"content-type": JSON_TYPE}, dump_json(body))


# -- errors --------------------------------------------------------------------------------------


def error_response(problem: ApiProblem) -> EmuResponse:
    """Google's envelope ``{"error": {code, message, status, details}}``. A 429 never carries
    Retry-After (nor x-ratelimit-*): a fault's ``retry_after`` becomes a RetryInfo detail."""
    sent, status, message = _ERRORS.get(problem.status, _ERRORS[500])
    if problem.code in CANONICAL_STATUSES:
        status = problem.code
    error: Json = {"code": sent, "message": problem.message or message, "status": status}
    details = _details(problem, message)
    if details:
        error["details"] = details  # protobuf JSON leaves an empty list out
    return EmuResponse(sent, {"content-type": JSON_TYPE}, dump_json({"error": error}))


def _details(problem: ApiProblem, message: str) -> list[Json]:
    if problem.status == 401:
        return [
            {
                "@type": _RPC + "ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {"@type": _RPC + "LocalizedMessage", "locale": "en-US", "message": message},
        ]
    if problem.status != 429:
        return []
    details: list[Json] = [
        {
            "@type": _RPC + "QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/batch_requests",
                    "quotaId": "BatchRequestsPerMinutePerProject",
                    "quotaValue": "100",
                }
            ],
        },
        {
            "@type": _RPC + "Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
    ]
    if problem.retry_after is not None:
        seconds = max(0, math.ceil(problem.retry_after))
        details.append({"@type": _RPC + "RetryInfo", "retryDelay": f"{seconds}s"})
    return details


# -- times, states, counts -----------------------------------------------------------------------


def rfc3339(moment: float) -> str:
    """RFC 3339 in UTC with nanoseconds and ``Z``, as protobuf Timestamps are written."""
    whole = math.floor(moment)
    nanos = min(999_999_999, round((moment - whole) * 1e9))
    stamp = dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def gemini_state(status: str, started: bool) -> str:
    if status == "cancelling":
        return "BATCH_STATE_RUNNING" if started else "BATCH_STATE_PENDING"
    return STATES[status]


def batch_stats(rows: int, counts: Mapping[str, int], done: bool) -> dict[str, str]:
    """``batchStats``: int64 values as strings, zero-valued keys left out."""
    succeeded, failed = counts["completed"], counts["failed"]
    stats = {
        "requestCount": rows,
        "successfulRequestCount": succeeded,
        "failedRequestCount": failed,
        "pendingRequestCount": 0 if done else max(0, rows - succeeded - failed),
    }
    return {key: str(value) for key, value in stats.items() if value}


def failure_code(problem_code: str) -> int:
    """The gRPC code of a whole-batch failure, from the core's problem code."""
    if problem_code == "token_limit_exceeded":
        return 8
    if problem_code == "server_error":
        return 13
    return 3


# -- files ---------------------------------------------------------------------------------------


def file_object(
    file_id: str,
    size: int,
    created: float,
    expires: float | None,
    info: Mapping[str, Any],
    base_url: str,
) -> Json:
    """A File. ``info``: displayName, mimeType, sha256Hash, source (UPLOADED or GENERATED)."""
    name = f"files/{file_id}"
    obj: Json = {"name": name}
    if info.get("displayName"):
        obj["displayName"] = info["displayName"]
    obj["mimeType"] = info.get("mimeType") or "application/octet-stream"
    obj["sizeBytes"] = str(size)
    obj["createTime"] = obj["updateTime"] = rfc3339(created)
    if expires is not None:
        obj["expirationTime"] = rfc3339(expires)
    if info.get("sha256Hash"):
        obj["sha256Hash"] = info["sha256Hash"]
    obj["uri"] = f"{base_url}/v1beta/{name}"
    if info.get("source") == "GENERATED":
        obj["downloadUri"] = f"{base_url}/download/v1beta/{name}:download?alt=media"
    obj["state"] = "ACTIVE"
    obj["source"] = info.get("source", "UPLOADED")
    return obj


# -- answers and result rows ---------------------------------------------------------------------


def generate_content(ctx: LineContext, custom_id: object, body: Json) -> tuple[Json, LineUsage]:
    """A GenerateContentResponse for one request (the core's answer for GENERATE_CONTENT)."""
    model = body.get("model")
    generation = body.get("generationConfig")
    config: Json = generation if isinstance(generation, dict) else {}
    prompt = estimate_tokens(body.get("contents"))
    limit = _positive_int(config.get("maxOutputTokens"))
    candidates: list[Json] = []
    output = 0
    for number in range(min(_positive_int(config.get("candidateCount")) or 1, _MAX_CANDIDATES)):
        text = completion_text(ctx.config, custom_id, body, number)
        finish = "STOP"
        if limit is not None and text_tokens(text) > limit:
            text, finish = text[: limit * 4], "MAX_TOKENS"
        output += text_tokens(text)
        content = {"parts": [{"text": text}], "role": "model"}
        candidates.append({"content": content, "finishReason": finish, "index": number})
    cached = cached_tokens(prompt)
    thoughts = _thoughts(config, prompt)
    usage: Json = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output + thoughts,
    }
    if cached:
        usage["cachedContentTokenCount"] = cached
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    response_id = base64.urlsafe_b64encode(
        digest(ctx.config.seed, ctx.batch_id, ctx.index, "response")[:16]
    ).decode("ascii")
    name = model.removeprefix("models/") if isinstance(model, str) else None
    answer = {
        "candidates": candidates,
        "usageMetadata": usage,
        "modelVersion": name,
        "responseId": response_id.rstrip("="),
    }
    return answer, LineUsage(name, prompt, cached, output + thoughts)


def _thoughts(config: Json, prompt: int) -> int:
    """Thinking tokens when the request gives a positive thinking budget (billed as output)."""
    thinking = config.get("thinkingConfig")
    budget = _positive_int(thinking.get("thinkingBudget")) if isinstance(thinking, dict) else None
    return min(budget, 16 + prompt % 48) if budget is not None else 0


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


def result_row(line: Json, result: Json, ok: bool) -> tuple[Json, bool]:
    """A row of the results (the core's LineShape for Gemini batches): ``{"key", "response"}``
    or ``{"key", "error": Status}`` for a file batch, ``{"metadata", ...}`` for an inline one.
    Every row goes to the one responses file, in the core's row order."""
    row: Json = {}
    if "key" in line:
        row["key"] = line["key"]
    if "metadata" in line:
        row["metadata"] = line["metadata"]
    response = result.get("response")
    if response is None:  # never ran: the batch was cancelled or expired first
        error = result.get("error") or {}
        code = 1 if error.get("code") == "batch_cancelled" else 4
        row["error"] = {"code": code, "message": error.get("message", "")}
    elif response.get("status_code") == 200:
        row["response"] = None if line.get("gemini_null") else response.get("body")
    else:
        status = int(response.get("status_code", 500))
        message = INVALID_ROW_MESSAGE
        if not line.get("gemini_invalid"):
            message = (response.get("body") or {}).get("error", {}).get("message") or message
        row["error"] = {"code": GRPC_CODES.get(status, 2), "message": message}
    return row, True
