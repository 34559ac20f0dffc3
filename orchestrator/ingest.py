"""Ingest: a batch's output and error files become ``results`` rows, at COPY speed, in constant memory.

The files stream from the API straight into one ``COPY``, inside the fenced transaction that also
moves the batch to ``done`` (so a crash, a cut-off download or a lost lease leaves nothing behind,
and the next attempt starts over). The transaction is open while the *file transfer* runs, never
while the provider works on the batch.

* Every line is parsed once; a plain success takes a fast path (``domain.lines.success``) and is
  written at once. Lines of requests that are not in the batch, duplicated lines and garbage are
  counted and skipped.
* Failures wait until both files are read, because a success for the same ``custom_id`` may still
  come (a success is never replaced by a failure). They wait on disk, in a spool file, so that a
  batch whose 50,000 lines all failed costs no more memory than one that succeeded.
* A failure is final when it is not retryable or the request has used its ``max_attempts``; it is
  then written too. Retryable ones, and requests missing from both files, are left without a result
  and go into the next round's batch (``ledger.resubmit``). A request the provider never ran (its
  line says ``batch_expired``) has used no attempt: it is sent again whatever its attempt number,
  as long as the patience since its requests were first sent lasts (``resend_not_run``); then it
  is final too.

Memory holds the batch's member ids and a small index of its failures, bounded by the request limit
of one batch (50,000), never by the size of the files.

A provider may quote the API key back (a proxy echoing the ``Authorization`` header in an error
message). What the lines say is scrubbed before it is stored, at a cost the fast path can carry: a
success on the fast path is checked for the whole key only (one ``bytes in`` per secret on the raw
line; a line that holds it takes the full path), while every other line (failures, the rare
unusual success) is searched for any run of ``MIN_FRAGMENT`` characters of a secret (a few
searches of the raw line: ``Scrubber.found_in_json``) and, if one is there, scrubbed in full
before it is classified: error messages are where a key, or a key cut short, gets quoted.

The fast path COPYs into ``results`` itself: the rows cannot exist yet, since a request only gets
into a batch while it has no final result. If any does exist (an operator re-ingesting a batch), the
same rows go to a temporary staging table and are upserted instead, so re-ingesting a file changes
nothing and a success is never overwritten.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson
import structlog
from psycopg import Copy
from sqlalchemy.orm import Session

from orchestrator.db import ledger, queries
from orchestrator.db.session import raw_connection
from orchestrator.domain import lines as ln
from orchestrator.observability import Scrubber

log = structlog.get_logger(__name__)

COLUMNS = ledger.RESULT_COLUMNS
# One COPY text-format row; every field already escaped (see _text, _json).
ROW = b"%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n"
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
    not_run: int = 0  # lines saying the provider never ran the request (batch_expired)
    not_run_final: int = 0  # of those, given up: their patience to be sent again is spent
    unknown_lines: int = 0
    duplicate_lines: int = 0
    malformed_lines: int = 0
    members: int = 0  # requests in the batch
    upserted: bool = False
    # Per model of the results written (None: the provider named none): results, then their
    # prompt, completion, total, cached and reasoning tokens, as ``ledger.ModelTotals`` sums them.
    models: dict[str | None, list[int]] = dataclasses.field(default_factory=dict)

    def count(self, usage: ln.Usage, model: str | None) -> None:
        """One result written."""
        sums = self.models.get(model)
        if sums is None:
            sums = self.models[model] = [0, 0, 0, 0, 0, 0]
        sums[0] += 1
        if usage[2]:  # total
            prompt, completion, total, cached, reasoning = usage
            sums[1] += prompt
            sums[2] += completion
            sums[3] += total
            sums[4] += cached
            sums[5] += reasoning

    def tokens(self) -> ln.Usage:
        """The tokens of every result written, all models together."""
        return ln.Usage(*(sum(sums[i] for sums in self.models.values()) for i in range(1, 6)))

    def model_totals(self) -> list[ledger.ModelTotals] | None:
        """What the batch's results add up to per model, as written here: None where that is
        not all the batch's results hold (results upserted beside earlier ones) or a result still
        needs its model from its request (the provider named none): the database then sums them."""
        if self.upserted or None in self.models:
            return None
        named = {model: sums for model, sums in self.models.items() if model is not None}
        return [ledger.ModelTotals(model, *named[model]) for model in sorted(named)]

    @property
    def covered(self) -> int:
        """Distinct requests of the batch that had a line in either file."""
        return self.members - self.missing

    def summary(self) -> dict[str, int]:
        return {
            k: getattr(self, k)
            for k in (
                "lines",
                "succeeded",
                "failed",
                "retry",
                "missing",
                "not_run",
                "not_run_final",
                "unknown_lines",
                "duplicate_lines",
                "malformed_lines",
            )
        } | {"total_tokens": self.tokens().total_tokens}


def _text(value: str) -> bytes:
    """A text field in COPY's text format."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return value.encode()


_MODELS: dict[str, bytes] = {}


def _model(model: str) -> bytes:
    """A model name as a COPY field: few distinct values, so remembered."""
    field = _MODELS.get(model)
    if field is None:
        field = _text(model)
        if len(_MODELS) < 1000:
            _MODELS[model] = field
    return field


def _json(value: Any) -> bytes:
    """A jsonb field in COPY's text format. orjson escapes every control character, so only
    backslashes need doubling; and PostgreSQL's jsonb cannot hold U+0000, which becomes U+FFFD
    rather than failing the whole file."""
    raw = orjson.dumps(value)
    if b"\\" not in raw:
        return raw
    if b"\\u0000" in raw:
        raw = _NUL_ESCAPE.sub(rb"\1\\ufffd", raw)
    return raw.replace(b"\\", b"\\\\")


def _row(
    job: bytes,
    batch: bytes,
    custom_id: str,
    attempt: int,
    succeeded: bool,
    status: int | None,
    body: Any,
    error: Any,
    usage: ln.Usage,
    model: str | None,
) -> bytes:
    return ROW % (
        job, _text(custom_id), batch, attempt, b"t" if succeeded else b"f",
        NULL if status is None else b"%d" % status,
        NULL if body is None else _json(body),
        NULL if error is None else _json(error),
        NULL if model is None else _model(model),
        *usage,
    )  # fmt: skip


class ResultCopy:
    """Streams rows into one COPY, in large writes (a context manager: an exception inside aborts
    the COPY, and with it the transaction)."""

    def __init__(self, copy: Copy) -> None:
        self._copy = copy
        self._buffer: list[bytes] = []
        self._size = 0

    @classmethod
    @contextmanager
    def open(cls, session: Session, table: str) -> Iterator[ResultCopy]:
        cursor = raw_connection(session).cursor()
        with cursor.copy(f"COPY {table} ({COLUMNS}) FROM STDIN") as copy:
            writer = cls(copy)
            yield writer
            writer.flush()

    def write(self, row: bytes) -> None:
        self._buffer.append(row)
        self._size += len(row)
        if self._size >= WRITE_BUFFER:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._copy.write(b"".join(self._buffer))
            self._buffer.clear()
            self._size = 0


class _Failure(NamedTuple):
    retryable: bool
    final: bool  # written as a result unless a success for the request comes later
    offset: int  # where its COPY row sits in the spool
    length: int
    # The error as JSON text, for batch_items when it is sent again. A str on purpose: a small
    # bytes object from orjson.dumps keeps a 4 KB buffer, 200 MB for 50,000 failures.
    error: str
    usage: ln.Usage
    model: str | None
    ran: bool  # False: the provider never ran it (no attempt used)


class _Pass:
    """One reading of a batch's files."""

    def __init__(
        self, *, job_id: int, batch_id: int, members: dict[str, int], copy: ResultCopy,
        spool: IO[bytes], max_attempts: int, resubmit: bool, scrub: Scrubber | None = None,
        resend_not_run: bool = True,
    ) -> None:  # fmt: skip
        self.scrub = scrub if scrub else None
        # The secrets whole, as bytes: the fast path's only check.
        self.whole = tuple(s.encode() for s in scrub.secrets) if scrub else ()
        self.job = b"%d" % job_id
        self.batch = b"%d" % batch_id
        self.members = members
        self.copy = copy
        self.spool = spool
        self.max_attempts = max_attempts
        self.resubmit = resubmit
        self.resend_not_run = resend_not_run
        self.stats = IngestStats()
        self.succeeded: set[str] = set()
        self.failures: dict[str, _Failure] = {}

    def feed(self, raw: bytes) -> None:
        self.stats.lines += 1
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.stats.malformed_lines += 1
            return
        fast = ln.success(line)
        if fast is None:
            self._feed_other(line, raw)
            return
        for secret in self.whole:
            if secret in raw:  # a success that quotes a secret: the full path, which scrubs
                self._feed_other(line, raw)
                return
        custom_id, status, body, usage, model = fast
        attempt = self.members.get(custom_id)
        if attempt is None:
            self.stats.unknown_lines += 1
        elif custom_id in self.succeeded:
            self.stats.duplicate_lines += 1
        else:
            self._success(custom_id, attempt, status, body, usage, model)

    def _success(
        self,
        custom_id: str,
        attempt: int,
        status: int,
        body: Any,
        usage: ln.Usage,
        model: str | None,
    ) -> None:
        self.succeeded.add(custom_id)
        if self.failures and self.failures.pop(custom_id, None) is not None:
            self.stats.duplicate_lines += 1
        self.copy.write(
            _row(self.job, self.batch, custom_id, attempt, True, status, body, None, usage, model)
        )
        self.stats.succeeded += 1
        self.stats.count(usage, model)

    def _feed_other(self, line: Any, raw: bytes) -> None:
        if self.scrub is not None and self.scrub.found_in_json(raw):
            line = self.scrub.deep(line)
        try:
            outcome = ln.classify(line)
        except ln.MalformedLine:
            self.stats.malformed_lines += 1
            return
        cid = outcome.custom_id
        attempt = self.members.get(cid)
        if attempt is None:
            self.stats.unknown_lines += 1
        elif cid in self.succeeded:
            self.stats.duplicate_lines += 1
        elif outcome.succeeded:
            self._success(
                cid, attempt, outcome.status_code or 200, outcome.body, outcome.usage, outcome.model
            )
        else:
            previous = self.failures.get(cid)
            if previous is not None:
                self.stats.duplicate_lines += 1
                if not (previous.retryable and not outcome.retryable):
                    return  # keep the first; a final failure says more than a retryable one
            self.failures[cid] = self._spool(outcome, attempt)

    def _spool(self, outcome: ln.LineOutcome, attempt: int) -> _Failure:
        row = _row(
            self.job,
            self.batch,
            outcome.custom_id,
            attempt,
            False,
            outcome.status_code,
            outcome.body,
            outcome.error,
            outcome.usage,
            outcome.model,
        )
        offset = self.spool.tell()
        self.spool.write(row)
        ran = not ln.not_run(outcome)
        if ran:
            final = not (outcome.retryable and self.resubmit and attempt < self.max_attempts)
        else:  # no attempt used: bounded by the patience, not by max_attempts
            final = not (self.resubmit and self.resend_not_run)
        return _Failure(
            outcome.retryable,
            final,
            offset,
            len(row),
            orjson.dumps(outcome.error or {}).decode(),
            outcome.usage,
            outcome.model,
            ran,
        )

    def settle(self, missing_error: dict[str, Any]) -> dict[str, ledger.Retry]:
        """Write the final failures; return the ones to send again (custom_id → error, ran)."""
        retry: dict[str, ledger.Retry] = {}
        self.spool.flush()
        for cid, failure in self.failures.items():  # in spool order: sequential reads
            if not failure.ran:
                self.stats.not_run += 1
            if failure.final:
                self.spool.seek(failure.offset)
                self.copy.write(self.spool.read(failure.length))
                self.stats.failed += 1
                self.stats.count(failure.usage, failure.model)
                if not failure.ran and self.resubmit:
                    self.stats.not_run_final += 1
            else:
                retry[cid] = ledger.Retry(failure.error, failure.ran)
        missing_json = orjson.dumps(missing_error).decode()
        for cid, attempt in self.members.items():
            if cid in self.succeeded or cid in self.failures:
                continue
            self.stats.missing += 1
            if not self.resubmit:
                continue  # a cancelled job: the request never ran, there is nothing to record
            if attempt < self.max_attempts:
                retry[cid] = ledger.Retry(missing_json, True)  # it may have run: lines get lost
            else:
                self.copy.write(
                    _row(
                        self.job,
                        self.batch,
                        cid,
                        attempt,
                        False,
                        None,
                        None,
                        missing_error,
                        ln.NO_USAGE,
                        None,
                    )
                )
                self.stats.failed += 1
                self.stats.count(ln.NO_USAGE, None)
        self.stats.retry = len(retry)
        self.stats.members = len(self.members)
        return retry


def ingest_lines(
    session: Session,
    *,
    job_id: int,
    batch_id: int,
    lines: Iterable[bytes],
    max_attempts: int,
    resubmit: bool,
    missing_error: dict[str, Any] | None = None,
    spool_dir: Path | None = None,
    scrub: Scrubber | None = None,
    resend_not_run: bool = True,
) -> IngestStats:
    """Read result lines into ``results`` (inside the caller's fenced transaction); ``scrub``
    takes the secrets (the API key the lines were fetched with) out of what is stored;
    ``resend_not_run``: whether requests the provider never ran may still be sent again (their
    patience lasts), else their failure is final."""
    members = queries.batch_members(session, batch_id)
    upsert = queries.results_exist(session, batch_id)
    table = ledger.create_result_staging(session) if upsert else "orchestrator.results"
    with tempfile.TemporaryFile(dir=spool_dir) as spool, \
            ResultCopy.open(session, table) as copy:  # fmt: skip
        reading = _Pass(
            job_id=job_id,
            batch_id=batch_id,
            members=members,
            copy=copy,
            spool=spool,
            max_attempts=max_attempts,
            resubmit=resubmit,
            scrub=scrub,
            resend_not_run=resend_not_run,
        )
        for raw in lines:
            reading.feed(raw)
        retry = reading.settle(missing_error or ln.missing_error())
    if upsert:
        ledger.upsert_results_from_staging(session)
    reading.stats.upserted = upsert
    ledger.note_retry_errors(session, batch_id, retry)
    return reading.stats


def read_files(paths: Iterable[Path]) -> Iterator[bytes]:
    """The lines of files on disk (for tests and tools; the daemon streams from the API)."""
    for path in paths:
        with path.open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    yield raw
