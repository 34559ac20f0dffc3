"""Anthropic's JSON shapes, made from the core's records (reference §2.2, §3, §4, §5).

- the error envelope ``{"type": "error", "error": {"type", "message"}, "request_id"}``, and the
  Cloudflare-style 413 body that has neither ``type`` nor ``request_id``;
- the ``MessageBatch`` object, from a core batch record and its snapshot;
- the results JSONL, converted line by line from the core's output and error files into
  ``{"custom_id", "result": {...}}`` lines, in a seeded shuffled order across both files.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from orchestrator.emulator.batches import BatchRecord
from orchestrator.emulator.errors import ApiProblem
from orchestrator.emulator.files import BlobDir
from orchestrator.emulator.ids import digest, hex_id
from orchestrator.emulator.lifecycle import Snapshot
from orchestrator.emulator.messages import EmuResponse, json_response

Json = dict[str, Any]

# Results stay downloadable this long after created_at; then the batch is archived.
ARCHIVE_SECONDS = 29 * 86400

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MESSAGES: dict[int, str] = {
    400: "Invalid request.",
    401: "invalid x-api-key",
    402: "Your credit balance is too low to access the Anthropic API.",
    403: "Your API key does not have permission to use the specified resource.",
    404: "Not found",
    409: "The request conflicts with the current state of the resource.",
    413: "Request exceeds the maximum size",
    429: "Number of requests has exceeded your rate limit. Please try again later.",
    500: "Internal server error",
    504: "Request timed out",
    529: "Overloaded",
}
# What a batch that the core failed as a whole (a `fail_with` fault, the enqueued-token budget)
# becomes: Anthropic has no failed batch, so every request ends `errored` with this type.
_FAILED_BATCH_TYPES = {"token_limit_exceeded": "rate_limit_error"}


def error_response(problem: ApiProblem) -> EmuResponse:
    """Every refusal of anthropic mode (handlers, faults, a revoked key): the problem's status
    and headers, Anthropic's envelope (the wire's ``finish`` fixes the headers)."""
    return json_response(problem.status, error_envelope(problem), problem.headers)


def error_envelope(problem: ApiProblem) -> dict[str, object]:
    """The body of an error answer; ``request_id`` is filled in once the call has one."""
    message = problem.message or _MESSAGES.get(problem.status, "Internal server error")
    if problem.status == 413:  # answered by Cloudflare before the API: no request id, no type
        return {"error": {"type": "request_too_large", "message": message}}
    error: Json = {"type": problem.type_ or ERROR_TYPES.get(problem.status, "api_error")}
    error["message"] = message
    if problem.code:
        error["details"] = {"error_code": problem.code}
    return {"type": "error", "error": error, "request_id": None}


def timestamp(moment: float) -> str:
    """RFC 3339 with microseconds and ``Z``, as Anthropic writes them."""
    when = dt.datetime.fromtimestamp(moment, tz=dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def processing_status(snap: Snapshot) -> str:
    if snap.status == "cancelling":
        return "canceling"
    return "ended" if snap.terminal else "in_progress"


def ended_at(snap: Snapshot) -> float | None:
    return snap.completed_at or snap.cancelled_at or snap.expired_at or snap.failed_at


def request_counts(record: BatchRecord, snap: Snapshot) -> dict[str, int]:
    """Every request is ``processing`` until the batch ends; then each has its outcome."""
    total = record.plan.rows
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if not snap.terminal:
        counts["processing"] = total
    elif snap.status == "failed":
        counts["errored"] = total
    else:
        errored = bisect.bisect_left(record.fail_rows, snap.processed)
        counts["succeeded"] = snap.processed - errored
        counts["errored"] = errored
        not_run = total - snap.processed
        counts["canceled" if snap.status == "cancelled" else "expired"] = not_run
    return counts


@dataclasses.dataclass(frozen=True)
class BatchView:
    """What the MessageBatch object needs besides the core's record and snapshot."""

    now: float
    # The absolute or relative URL of the results (used once the batch has ended).
    results_url: str


def message_batch(record: BatchRecord, snap: Snapshot, view: BatchView) -> Json:
    """All ten fields, nulls explicit, in the order of Anthropic's examples."""
    created = record.plan.created
    finished = ended_at(snap)
    archived = created + ARCHIVE_SECONDS
    return {
        "id": record.id,
        "type": "message_batch",
        "processing_status": processing_status(snap),
        "request_counts": request_counts(record, snap),
        "ended_at": timestamp(finished) if finished is not None else None,
        "created_at": timestamp(created),
        "expires_at": timestamp(record.plan.expires),
        "archived_at": timestamp(archived) if view.now >= archived else None,
        "cancel_initiated_at": (
            timestamp(record.cancel_requested) if record.cancel_requested is not None else None
        ),
        "results_url": view.results_url if snap.terminal else None,
    }


# -- results ---------------------------------------------------------------------------------


def result_line(core: Json) -> Json:
    """One line of the core's output or error file as an Anthropic results line."""
    custom_id = core.get("custom_id")
    response = core.get("response")
    if response is None:  # never ran: the batch was cancelled or expired first
        code = str((core.get("error") or {}).get("code"))
        return {"custom_id": custom_id, "result": {"type": _NOT_RUN.get(code, "expired")}}
    body = response.get("body") or {}
    if response.get("status_code") == 200:
        return {"custom_id": custom_id, "result": {"type": "succeeded", "message": body}}
    status = int(response.get("status_code") or 500)
    message = str((body.get("error") or {}).get("message") or _MESSAGES.get(status, ""))
    return errored(custom_id, ERROR_TYPES.get(status, "api_error"), message, response["request_id"])


_NOT_RUN = {"batch_cancelled": "canceled", "batch_expired": "expired"}


def errored(custom_id: object, kind: str, message: str, request_id: str | None) -> Json:
    error = {"type": "error", "error": {"type": kind, "message": message}}
    return {
        "custom_id": custom_id,
        "result": {"type": "errored", "error": {**error, "request_id": request_id}},
    }


def unrun_line(record: BatchRecord, snap: Snapshot, seed: int) -> Callable[[Json], Json]:
    """The converter from input lines for a batch the core failed as a whole, where nothing
    ran: each request ``errored`` with the batch's problem, or ``canceled`` if it was cancelled
    before the failure showed."""
    problem = record.problems[0] if record.problems else None
    code = problem.code if problem else "server_error"
    kind = _FAILED_BATCH_TYPES.get(code, "api_error")
    message = problem.message if problem else "The batch failed."

    def convert(line: Json) -> Json:
        custom_id = line.get("custom_id")
        if snap.status == "cancelled":
            return {"custom_id": custom_id, "result": {"type": "canceled"}}
        request_id = "req_" + hex_id(seed, record.id, custom_id, "failed")
        return errored(custom_id, kind, message, request_id)

    return convert


@dataclasses.dataclass(frozen=True)
class ResultsFile:
    path: Path
    bytes: int
    lines: int


def write_results(
    sources: list[Path],
    convert: Callable[[Json], Json],
    blobs: BlobDir,
    *,
    shuffle_key: bytes,
    crlf: bool = False,
) -> ResultsFile:
    """Convert every line of ``sources`` into one file, in an order shuffled by ``shuffle_key``.

    Only the lines' positions are held in memory; each line is read back by seeking.
    """
    positions = list(_positions(sources))
    random.Random(shuffle_key).shuffle(positions)
    end = b"\r\n" if crlf else b"\n"
    path = blobs.new_path()
    handles = [source.open("rb") for source in sources]
    try:
        with path.open("wb") as out:
            for number, offset in positions:
                handle = handles[number]
                handle.seek(offset)
                out.write(orjson.dumps(convert(orjson.loads(handle.readline()))) + end)
    finally:
        for handle in handles:
            handle.close()
    return ResultsFile(path, path.stat().st_size, len(positions))


def _positions(sources: list[Path]) -> Iterator[tuple[int, int]]:
    for number, source in enumerate(sources):
        offset = 0
        with source.open("rb") as handle:
            for raw in handle:
                if raw.strip():
                    yield number, offset
                offset += len(raw)


def shuffle_key(seed: int, batch_id: str) -> bytes:
    return digest(seed, "anthropic-results", batch_id)
