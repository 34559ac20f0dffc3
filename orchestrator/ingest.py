"""Ingest: a batch's output and error files become ``results`` rows, at COPY speed, in constant memory.

The files are downloaded to disk first (no transaction is open while the provider sends them), then
read line by line inside one fenced transaction that also moves the batch to ``done``:

* every line is parsed and classified (``domain/lines.py``); lines of requests that are not in the
  batch, duplicated lines and garbage are counted and skipped;
* successes stream straight into a ``COPY``; failures wait until both files are read, because a
  success for the same ``custom_id`` may still come (a success is never replaced by a failure);
* a failure is final when it is not retryable or the request has used its ``max_attempts``; it
  is then written too. Retryable ones, and requests missing from both files, are left without a
  result and go into the next round's batch (see ``steps.py``).

Memory holds the batch's member ids and its pending failures, bounded by the request limit of one
batch (50,000), never by the size of the files.

The fast path COPYs into ``results`` itself: the rows cannot exist yet, since a request only gets
into a batch while it has no final result. If any does exist (an operator re-ingesting a batch), the
same rows go to a temporary staging table and are upserted instead, so re-ingesting a file changes
nothing and a success is never overwritten.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from psycopg import Copy
from sqlalchemy.orm import Session

from orchestrator.db.session import raw_connection
from orchestrator.domain import lines as ln
from orchestrator.domain.cost import TokenTally

log = structlog.get_logger(__name__)

COLUMNS = (
    "job_id, custom_id, batch_id, attempt, succeeded, status_code, response, error, model, "
    "prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens"
)
WRITE_BUFFER = 256 * 1024
NULL = b"\\N"
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


@dataclasses.dataclass
class IngestStats:
    lines: int = 0
    succeeded: int = 0
    failed: int = 0  # final failures written
    retry: int = 0  # left for the next round
    missing: int = 0  # in neither file
    unknown_lines: int = 0
    duplicate_lines: int = 0
    malformed_lines: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    by_model: dict[str, TokenTally] = dataclasses.field(default_factory=dict)
    upserted: bool = False
    first_error: str | None = None

    def count(self, outcome: ln.LineOutcome) -> None:
        u = outcome.usage
        self.prompt_tokens += u.prompt_tokens
        self.completion_tokens += u.completion_tokens
        self.total_tokens += u.total_tokens
        self.cached_tokens += u.cached_tokens
        self.reasoning_tokens += u.reasoning_tokens
        if outcome.model and (u.prompt_tokens or u.completion_tokens):
            tally = self.by_model.setdefault(outcome.model, TokenTally())
            tally.prompt_tokens += u.prompt_tokens
            tally.completion_tokens += u.completion_tokens
            tally.cached_tokens += u.cached_tokens
        if outcome.succeeded:
            self.succeeded += 1
        else:
            self.failed += 1
            if self.first_error is None and outcome.error:
                self.first_error = str(outcome.error.get("message"))

    def summary(self) -> dict[str, int]:
        return {
            k: getattr(self, k)
            for k in (
                "lines",
                "succeeded",
                "failed",
                "retry",
                "missing",
                "unknown_lines",
                "duplicate_lines",
                "malformed_lines",
                "total_tokens",
            )
        }


def _text(value: str) -> bytes:
    """A text field in COPY's text format."""
    raw = value.encode()
    if b"\\" in raw or b"\t" in raw or b"\n" in raw or b"\r" in raw:
        raw = (
            raw.replace(b"\\", b"\\\\")
            .replace(b"\t", b"\\t")
            .replace(b"\n", b"\\n")
            .replace(b"\r", b"\\r")
        )
    return raw


def _json(value: Any) -> bytes:
    """A jsonb field in COPY's text format. PostgreSQL's jsonb cannot hold U+0000: it becomes
    U+FFFD rather than failing the whole file."""
    raw = orjson.dumps(value)
    if b"\\u0000" in raw:
        raw = _NUL_ESCAPE.sub(rb"\1\\ufffd", raw)
    return raw.replace(b"\\", b"\\\\")


class ResultCopy:
    """Formats result rows and streams them into one COPY (a context manager: an exception
    inside aborts the COPY, and with it the transaction)."""

    def __init__(self, copy: Copy, *, job_id: int, batch_id: int) -> None:
        self._copy = copy
        self._job = b"%d" % job_id
        self._batch = b"%d" % batch_id
        self._buffer: list[bytes] = []
        self._size = 0

    @classmethod
    @contextmanager
    def open(
        cls, session: Session, *, table: str, job_id: int, batch_id: int
    ) -> Iterator[ResultCopy]:
        cursor = raw_connection(session).cursor()
        with cursor.copy(f"COPY {table} ({COLUMNS}) FROM STDIN") as copy:
            writer = cls(copy, job_id=job_id, batch_id=batch_id)
            yield writer
            writer.flush()

    def write(self, outcome: ln.LineOutcome, attempt: int) -> None:
        u = outcome.usage
        row = b"\t".join(
            (
                self._job,
                _text(outcome.custom_id),
                self._batch,
                b"%d" % attempt,
                b"t" if outcome.succeeded else b"f",
                NULL if outcome.status_code is None else b"%d" % outcome.status_code,
                NULL if outcome.body is None else _json(outcome.body),
                NULL if outcome.error is None else _json(outcome.error),
                NULL if outcome.model is None else _text(outcome.model),
                b"%d\t%d\t%d\t%d\t%d"
                % (
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.total_tokens,
                    u.cached_tokens,
                    u.reasoning_tokens,
                ),
            )
        )
        self._buffer.append(row + b"\n")
        self._size += len(row) + 1
        if self._size >= WRITE_BUFFER:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._copy.write(b"".join(self._buffer))
            self._buffer.clear()
            self._size = 0


def read_lines(paths: Iterable[Path]) -> Iterable[bytes]:
    for path in paths:
        with path.open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    yield raw


def load_members(session: Session, batch_id: int) -> dict[str, int]:
    """custom_id → attempt for every request in the batch."""
    rows = session.execute(
        sa.text("SELECT custom_id, attempt FROM orchestrator.batch_items WHERE batch_id = :b"),
        {"b": batch_id},
    )
    return {row.custom_id: row.attempt for row in rows}


def results_exist(session: Session, job_id: int, batch_id: int) -> bool:
    return bool(
        session.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM orchestrator.batch_items bi "
                "JOIN orchestrator.results r ON r.job_id = bi.job_id AND r.custom_id = bi.custom_id "
                "WHERE bi.batch_id = :b)"
            ),
            {"b": batch_id},
        ).scalar_one()
    )


def _better_failure(old: ln.LineOutcome, new: ln.LineOutcome) -> bool:
    """Between two failures for one request, a final one says more than a retryable one."""
    return old.retryable and not new.retryable


class _Pass:
    """One reading of a batch's files."""

    def __init__(self, members: dict[str, int], copy: ResultCopy) -> None:
        self.members = members
        self.copy = copy
        self.stats = IngestStats()
        self.succeeded: set[str] = set()
        self.failures: dict[str, ln.LineOutcome] = {}

    def feed(self, raw: bytes) -> None:
        self.stats.lines += 1
        try:
            outcome = ln.classify(orjson.loads(raw))
        except (orjson.JSONDecodeError, ln.MalformedLine):
            self.stats.malformed_lines += 1
            return
        cid = outcome.custom_id
        attempt = self.members.get(cid)
        if attempt is None:
            self.stats.unknown_lines += 1
        elif cid in self.succeeded:
            self.stats.duplicate_lines += 1
        elif outcome.succeeded:
            self.succeeded.add(cid)
            if self.failures.pop(cid, None) is not None:
                self.stats.duplicate_lines += 1
            self.copy.write(outcome, attempt)
            self.stats.count(outcome)
        elif cid in self.failures:
            self.stats.duplicate_lines += 1
            if _better_failure(self.failures[cid], outcome):
                self.failures[cid] = outcome
        else:
            self.failures[cid] = outcome

    def settle(
        self, *, max_attempts: int, resubmit: bool, missing_error: dict[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """Write the final failures; return the retryable ones (custom_id → error)."""
        retry: dict[str, dict[str, Any]] = {}
        for cid, outcome in self.failures.items():
            attempt = self.members[cid]
            if outcome.retryable and resubmit and attempt < max_attempts:
                retry[cid] = outcome.error or {}
            else:
                self.copy.write(outcome, attempt)
                self.stats.count(outcome)
        for cid, attempt in self.members.items():
            if cid in self.succeeded or cid in self.failures:
                continue
            self.stats.missing += 1
            if not resubmit:
                continue  # a cancelled job: the request never ran, there is nothing to record
            missing = ln.LineOutcome(cid, False, True, None, None, missing_error, ln.NO_USAGE, None)
            if attempt < max_attempts:
                retry[cid] = missing.error or {}
            else:
                self.copy.write(missing, attempt)
                self.stats.count(missing)
        self.stats.retry = len(retry)
        return retry


def ingest_files(
    session: Session,
    *,
    job_id: int,
    batch_id: int,
    paths: Iterable[Path],
    max_attempts: int,
    resubmit: bool,
    missing_error: dict[str, Any] | None = None,
) -> IngestStats:
    """Read the files into ``results`` (inside the caller's fenced transaction)."""
    members = load_members(session, batch_id)
    upsert = results_exist(session, job_id, batch_id)
    table = "orchestrator.results"
    if upsert:
        session.execute(
            sa.text(
                "CREATE TEMP TABLE ingest_staging (LIKE orchestrator.results INCLUDING DEFAULTS) "
                "ON COMMIT DROP"
            )
        )
        table = "ingest_staging"
    with ResultCopy.open(session, table=table, job_id=job_id, batch_id=batch_id) as copy:
        reading = _Pass(members, copy)
        for raw in read_lines(paths):
            reading.feed(raw)
        retry = reading.settle(
            max_attempts=max_attempts,
            resubmit=resubmit,
            missing_error=missing_error or ln.missing_error(),
        )
    if upsert:
        _upsert_from_staging(session)
    reading.stats.upserted = upsert
    _note_retry_errors(session, batch_id, retry)
    return reading.stats


def _upsert_from_staging(session: Session) -> None:
    session.execute(
        sa.text(
            f"""
        INSERT INTO orchestrator.results ({COLUMNS})
        SELECT {COLUMNS} FROM ingest_staging
        ON CONFLICT (job_id, custom_id) DO UPDATE SET
            batch_id = EXCLUDED.batch_id, attempt = EXCLUDED.attempt,
            succeeded = EXCLUDED.succeeded, status_code = EXCLUDED.status_code,
            response = EXCLUDED.response, error = EXCLUDED.error, model = EXCLUDED.model,
            prompt_tokens = EXCLUDED.prompt_tokens,
            completion_tokens = EXCLUDED.completion_tokens,
            total_tokens = EXCLUDED.total_tokens, cached_tokens = EXCLUDED.cached_tokens,
            reasoning_tokens = EXCLUDED.reasoning_tokens, created_at = now()
        WHERE NOT orchestrator.results.succeeded
          AND (EXCLUDED.succeeded OR orchestrator.results.batch_id <> EXCLUDED.batch_id)
        """
        )
    )


def _note_retry_errors(session: Session, batch_id: int, retry: dict[str, dict[str, Any]]) -> None:
    if not retry:
        return
    session.execute(
        sa.text(
            """
            UPDATE orchestrator.batch_items bi SET error = v.error::jsonb
              FROM unnest(CAST(:ids AS text[]), CAST(:errors AS text[])) AS v(custom_id, error)
             WHERE bi.batch_id = :b AND bi.custom_id = v.custom_id
            """
        ),
        {
            "b": batch_id,
            "ids": list(retry),
            "errors": [orjson.dumps(e).decode() for e in retry.values()],
        },
    )


def fail_requests(
    session: Session,
    *,
    batch_id: int,
    error: dict[str, Any],
    by_line: dict[int, dict[str, Any]] | None = None,
) -> int:
    """Final failure results for every request of a batch that failed as a whole.

    ``by_line`` maps 1-based input line numbers (the provider's ``errors.data[].line``) to a more
    specific error for that request. Returns the number of rows written.
    """
    result = session.execute(
        sa.text(
            f"""
            INSERT INTO orchestrator.results ({COLUMNS})
            SELECT bi.job_id, bi.custom_id, bi.batch_id, bi.attempt, false, NULL, NULL,
                   COALESCE(v.error::jsonb, CAST(:error AS jsonb)), NULL, 0, 0, 0, 0, 0
              FROM (SELECT *, row_number() OVER (ORDER BY seq) AS line
                      FROM orchestrator.batch_items WHERE batch_id = :b) bi
              LEFT JOIN unnest(CAST(:lines AS int[]), CAST(:errors AS text[])) AS v(line, error)
                     ON v.line = bi.line
             WHERE NOT EXISTS (SELECT 1 FROM orchestrator.results r
                                WHERE r.job_id = bi.job_id AND r.custom_id = bi.custom_id)
            ON CONFLICT DO NOTHING
            """
        ),
        {
            "b": batch_id,
            "error": orjson.dumps(error).decode(),
            "lines": list((by_line or {}).keys()),
            "errors": [orjson.dumps(e).decode() for e in (by_line or {}).values()],
        },
    )
    return result.rowcount or 0  # type: ignore[attr-defined]
