"""``orchestrator enqueue FILE`` (or ``-``, stdin): JSONL requests become one job, in one transaction.

This is a convenience: enqueueing with plain SQL (README) is the primary interface and needs no
orchestrator code at all. Each line is ``{"custom_id", "body"}`` plus optional ``provider``,
``method`` and ``url`` (the same fields as a Batch API input line). Lines are checked for JSON
syntax and duplicate ids here, before anything is written; everything else is checked by the
daemon, which reports problems on the job row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import orjson
from sqlalchemy.orm import Session

from orchestrator.db import ledger
from orchestrator.errors import OrchestratorError


class BadInputFile(OrchestratorError):
    """The JSONL file cannot be enqueued as it is."""


def read_requests(fh: IO[bytes], source: str) -> Iterator[tuple[str, Any, Any, Any, str]]:
    """(custom_id, provider, method, url, body as JSON text) per line; raises on the first bad
    line, naming it."""
    seen: set[str] = set()
    for number, raw in enumerate(fh, start=1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadInputFile(f"{source}:{number}: not valid JSON ({exc})") from None
        if not isinstance(line, dict):
            raise BadInputFile(f"{source}:{number}: each line must be a JSON object")
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise BadInputFile(f"{source}:{number}: custom_id is missing or not a string")
        if custom_id in seen:
            raise BadInputFile(f"{source}:{number}: custom_id {custom_id!r} appears twice")
        seen.add(custom_id)
        if "body" not in line:
            raise BadInputFile(f"{source}:{number}: request {custom_id!r} has no body")
        yield (
            custom_id,
            line.get("provider"),
            line.get("method"),
            line.get("url"),
            orjson.dumps(line["body"]).decode(),
        )


def enqueue_lines(
    session: Session,
    fh: IO[bytes],
    *,
    source_name: str,
    name: str,
    target: str = "fastrouter",
    endpoint: str = "/v1/chat/completions",
    max_attempts: int = 3,
    priority: int = 0,
) -> int:
    """Insert the job and the requests read from ``fh`` (a file, or stdin for ``orchestrator
    enqueue -``; COPY) in the caller's transaction; returns the job id. ``source_name`` names the
    stream in the message of a bad line."""
    job_id = ledger.insert_job(
        session,
        name=name,
        target=target,
        endpoint=endpoint,
        max_attempts=max_attempts,
        priority=priority,
    )
    ledger.copy_requests(
        session,
        job_id,
        (
            (custom_id, provider, method or "POST", url, body)
            for custom_id, provider, method, url, body in read_requests(fh, source_name)
        ),
    )
    return job_id
