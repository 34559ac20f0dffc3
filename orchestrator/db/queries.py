"""Reads: what the steps, the daemon and the commands need to know. None of them writes (writes
are :mod:`orchestrator.db.ledger`'s), and none commits: the caller frames the transaction."""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, ClassVar, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.db.models import Batch, Capacity, Job, TargetState, Worker
from orchestrator.db.session import raw_connection
from orchestrator.domain import capacity, packing
from orchestrator.domain.states import BATCH_TERMINAL, JOB_TERMINAL, BatchState, JobStatus
from orchestrator.errors import LeaseLost

OPEN_STATES = tuple(s.value for s in BatchState if s not in BATCH_TERMINAL)
# How the reason of a target's block begins while its max_calls_per_minute is used up
# (``ledger.call_cap_reached``): a wait of our own choosing, not the provider's, which the
# rate-limited gauge (and the alert on it) leaves out.
CALL_CAP_REASON = "call cap: "
# The open batches, spelled as the partial index ``ix_batches_runnable`` spells them, so that a
# query that says this reads the open batches only, whatever the history beside them.
OPEN_BATCH = f"state NOT IN ({', '.join(repr(str(s)) for s in sorted(BATCH_TERMINAL))})"
FETCH_ROWS = 2000

# A batch whose steps have been failing since before :since, or that the provider still reports
# running past its expires_at (by as long).
STUCK = """
               AND (failing_since <= :since
                    OR (state = 'submitted' AND expires_at <= :since
                        AND remote_status IN ('validating', 'in_progress', 'finalizing',
                                              'cancelling')))"""


@dataclasses.dataclass(frozen=True)
class Claimed:
    """A leased batch and what its steps need to know about its job."""

    COLUMNS: ClassVar[str] = """
        b.id, b.job_id, b.lease_token AS token, b.state, b.target, b.endpoint, b.round,
        b.remote_batch_id, b.input_file_id, b.idempotency_key, b.step_failures,
        b.failing_since, b.unchanged_polls, b.poll_count, b.polled_at, b.request_counts,
        b.remote_status, b.expires_at, b.cancel_sent_at,
        b.cancel_attempts, b.cancel_retry_at,
        b.create_attempted_at, b.request_count, b.model, b.estimated_tokens, b.waiting_since,
        b.next_run_at,
        j.completion_window AS job_completion_window, j.max_attempts AS job_max_attempts,
        (j.cancel_requested_at IS NOT NULL) AS job_cancel_requested
    """

    id: int
    job_id: int
    token: int
    state: str
    target: str
    endpoint: str
    round: int
    remote_batch_id: str | None
    input_file_id: str | None
    idempotency_key: uuid.UUID | None
    step_failures: int
    failing_since: dt.datetime | None
    unchanged_polls: int
    poll_count: int
    polled_at: dt.datetime | None
    request_counts: dict[str, Any] | None
    remote_status: str | None
    expires_at: dt.datetime | None
    cancel_sent_at: dt.datetime | None
    cancel_attempts: int
    cancel_retry_at: dt.datetime | None
    create_attempted_at: dt.datetime | None
    request_count: int
    model: str | None
    estimated_tokens: int
    waiting_since: dt.datetime | None
    next_run_at: dt.datetime | None  # when the step was due (a late one: no daemon was running)
    job_completion_window: str
    job_max_attempts: int
    job_cancel_requested: bool
    # Claimed from another owner whose lease had expired (``ledger.claim_batches``).
    taken_over: bool = False


def refresh(session: Session, batch_id: int, token: int) -> Claimed:
    """The batch as it is now, if ``token`` still holds its lease (else LeaseLost)."""
    row = (
        session.execute(
            sa.text(
                f"SELECT {Claimed.COLUMNS} FROM orchestrator.batches b "
                "JOIN orchestrator.jobs j ON j.id = b.job_id "
                "WHERE b.id = :id AND b.lease_token = :token AND b.lease_owner IS NOT NULL"
            ),
            {"id": batch_id, "token": token},
        )
        .mappings()
        .first()
    )
    if row is None:
        raise LeaseLost(f"batch {batch_id}: lease token {token} is no longer current")
    return Claimed(**row)


# -- jobs ----------------------------------------------------------------------------------


def _ours(targets: Collection[str]) -> sa.ColumnElement[bool]:
    """A pending job this daemon may take: one for a target it knows, or one whose cancel was
    requested (ending it calls no provider). A job for a target it does not know stays pending,
    for a daemon whose configuration has that target (a fleet in the middle of a configuration
    change), instead of failing."""
    return sa.or_(Job.target.in_(list(targets)), Job.cancel_requested_at.is_not(None))


def pending_job_ids(session: Session, limit: int, *, targets: Collection[str]) -> list[int]:
    """The next pending jobs to plan, of the ``targets`` this daemon knows (see :func:`_ours`)."""
    rows = session.execute(
        sa.select(Job.id)
        .where(Job.status == JobStatus.PENDING, _ours(targets))
        .order_by(Job.priority.desc(), Job.id)
        .limit(limit)
    )
    return list(rows.scalars())


def lock_pending_job(session: Session, job_id: int, *, targets: Collection[str]) -> Job | None:
    """The job, locked (FOR NO KEY UPDATE: the lock order), if it is still pending, for one of the
    ``targets`` this daemon knows (see :func:`_ours`), and nobody else is planning it."""
    return session.scalars(
        sa.select(Job)
        .where(Job.id == job_id, Job.status == JobStatus.PENDING, _ours(targets))
        .with_for_update(skip_locked=True, key_share=True)
    ).first()


def pending_by_target(session: Session) -> dict[str, int]:
    """How many jobs are pending, by target (``orchestrator status`` names those of a target its
    configuration does not know)."""
    rows = session.execute(
        sa.select(Job.target, sa.func.count())
        .where(Job.status == JobStatus.PENDING)
        .group_by(Job.target)
    ).all()
    return {target: int(n) for target, n in rows}


def job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def jobs(session: Session, job_ids: Iterable[int] | None = None, *, limit: int = 20) -> list[Job]:
    """The given jobs in id order, or the ``limit`` newest."""
    if job_ids is not None:
        query = sa.select(Job).where(Job.id.in_(list(job_ids))).order_by(Job.id)
    else:
        query = sa.select(Job).order_by(Job.id.desc()).limit(limit)
    return list(session.scalars(query).all())


def open_job_count(session: Session, job_ids: Iterable[int]) -> int:
    return session.execute(
        sa.select(sa.func.count())
        .select_from(Job)
        .where(Job.id.in_(list(job_ids)), Job.status.not_in([t.value for t in JOB_TERMINAL]))
    ).scalar_one()


def job_ids(session: Session) -> list[int]:
    return list(session.scalars(sa.select(Job.id).order_by(Job.id)).all())


def job_batches(session: Session, job_id: int) -> list[Batch]:
    return list(
        session.scalars(sa.select(Batch).where(Batch.job_id == job_id).order_by(Batch.id)).all()
    )


# What ``orchestrator results`` prints of each request, in this order and under these names: columns
# of the view ``orchestrator.request_results`` (one row per request). The one place to change them.
RESULT_COLUMNS = (
    "custom_id, status, status_code, answer, error_message AS error, finish_reason, model, "
    "prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, total_tokens, cost, "
    "attempt, batch_id"
)
# The statuses ``results --failed`` keeps: every request whose outcome is final and not a success.
NOT_SUCCEEDED = ("failed", "not_run", "cancelled")


def request_results(session: Session, job_id: int, *, failed_only: bool = False) -> Any:
    """The job's requests with their outcomes (:data:`RESULT_COLUMNS`), in the order they were
    inserted (``seq``), through a server-side cursor: :data:`FETCH_ROWS` rows in memory at a time,
    whatever the size of the job. Only those failed, not run or cancelled if ``failed_only``."""
    only = " AND status = ANY(:statuses)" if failed_only else ""
    return session.execute(
        sa.text(
            f"SELECT {RESULT_COLUMNS} FROM orchestrator.request_results "
            f"WHERE job_id = :job{only} ORDER BY seq"
        ).execution_options(yield_per=FETCH_ROWS),
        {"job": job_id, "statuses": list(NOT_SUCCEEDED)},
    )


def _counted(key: str) -> str:
    """A count of a batch's provider ``request_counts``: 0 unless it is a non-negative number."""
    return (
        f"CASE WHEN jsonb_typeof(b.request_counts -> '{key}') = 'number' "
        f"THEN GREATEST(floor((b.request_counts ->> '{key}')::numeric), 0) ELSE 0 END"
    )


# Each batch's progress as the provider counts it: ``total`` (its request_counts' total, else the
# requests we put in it) and ``done`` (completed + failed, at most the total; all of them once the
# batch is done, whatever the provider counted).
BATCH_PROGRESS = f"""
    SELECT b.id, b.job_id, b.state,
           CASE WHEN b.state = 'done' THEN t.total ELSE LEAST(t.done, t.total) END AS done, t.total
      FROM orchestrator.batches b,
           LATERAL (SELECT COALESCE(NULLIF({_counted("total")}, 0), b.request_count) AS total,
                           {_counted("completed")} + {_counted("failed")} AS done) t
"""
# The batches whose requests a job's progress counts: the open ones and the done ones.
PROGRESS_STATES = (*OPEN_STATES, BatchState.DONE.value)


def job_progress(session: Session, job_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
    """job id → (done, total): :data:`BATCH_PROGRESS` summed over the job's open and done batches
    (none for a job without such batches)."""
    rows = session.execute(
        sa.text(
            f"SELECT p.job_id, sum(p.done), sum(p.total) FROM ({BATCH_PROGRESS}) p "
            "WHERE p.job_id = ANY(:jobs) AND p.state = ANY(:states) GROUP BY p.job_id"
        ),
        {"jobs": list(job_ids), "states": list(PROGRESS_STATES)},
    ).all()
    return {job_id: (int(done), int(total)) for job_id, done, total in rows}


def batch_progress(session: Session, job_id: int) -> dict[int, tuple[int, int]]:
    """batch id → (done, total) (:data:`BATCH_PROGRESS`) for every batch of the job."""
    rows = session.execute(
        sa.text(f"SELECT p.id, p.done, p.total FROM ({BATCH_PROGRESS}) p WHERE p.job_id = :job"),
        {"job": job_id},
    ).all()
    return {batch_id: (int(done), int(total)) for batch_id, done, total in rows}


# -- batches ---------------------------------------------------------------------------------


def batch(session: Session, batch_id: int) -> Batch:
    return session.get_one(Batch, batch_id)


def open_batches_by_state(session: Session) -> list[tuple[str, int]]:
    rows = session.execute(
        sa.select(Batch.state, sa.func.count())
        .where(Batch.state.not_in([x.value for x in BATCH_TERMINAL]))
        .group_by(Batch.state)
    ).all()
    return [(state, n) for state, n in rows]


# Python's whitespace (``str.isspace``): what ``str.strip()`` takes off, for ``btrim`` below.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# A body's "model" as planning reads it (a string over 1,024 characters cut to that, after the
# whitespace that strip() takes off): the key of its chunk (one model per batch).
MODEL_TEXT_CHARACTERS = 1024
MODEL_TEXT = f"""CASE WHEN length(r.body ->> 'model') <= {MODEL_TEXT_CHARACTERS} THEN r.body ->> 'model'
            ELSE left(btrim(r.body ->> 'model', :whitespace), {MODEL_TEXT_CHARACTERS}) END"""
# What planning's checks read of a body (``domain/requests.py``: ``_body_problem``), read in SQL
# so that no body is loaded, as plain columns (a JSON object per row would cost more to build and
# to parse than the checks: 0.55 s against 0.09 s for 50,000 requests): its JSON type; "model" if
# it is a string (one over 1,024 characters cut to that, after the whitespace that strip() takes
# off: :data:`MODEL_TEXT`); "messages": NULL if not an array, 0 if empty, 1 if all its entries are
# objects with a "role", 2 otherwise; "input": NULL if absent, 0 if null, "" or [], 1 otherwise.
# :func:`body_shape` turns them into the shape the checks read. Constant size, whatever the body's.
BODY_SHAPE = f"""
    jsonb_typeof(r.body) AS body_type,
    CASE WHEN jsonb_typeof(r.body -> 'model') = 'string' THEN {MODEL_TEXT} END AS model,
    CASE WHEN jsonb_typeof(r.body -> 'messages') = 'array' THEN
        CASE WHEN r.body -> 'messages' = '[]' THEN 0
             WHEN jsonb_path_exists(
                 r.body, 'lax $.messages[*] ? (@.type() != "object" || !(exists(@.role)))')
             THEN 2 ELSE 1 END END AS messages_kind,
    CASE WHEN r.body -> 'input' IN ('null', '""', '[]') THEN 0
         WHEN r.body ? 'input' THEN 1 END AS input_kind
"""
# A request's output at most, for the job's estimate (:data:`_ESTIMATE`): max_completion_tokens,
# max_tokens or max_output_tokens, the first a number; 0 for embeddings (:embeddings).
OUTPUT_BOUND = """CASE WHEN :embeddings THEN 0 ELSE COALESCE(
    CASE WHEN jsonb_typeof(r.body -> 'max_completion_tokens') = 'number'
         THEN (r.body ->> 'max_completion_tokens')::numeric END,
    CASE WHEN jsonb_typeof(r.body -> 'max_tokens') = 'number'
         THEN (r.body ->> 'max_tokens')::numeric END,
    CASE WHEN jsonb_typeof(r.body -> 'max_output_tokens') = 'number'
         THEN (r.body ->> 'max_output_tokens')::numeric END) END"""
_NOT_AN_OBJECT: dict[str, Any] = {"array": [], "string": "", "number": 0, "boolean": False}
_MESSAGES: dict[int, list[Any]] = {0: [], 1: [{"role": None}], 2: [None]}


def body_shape(
    body_type: str, model: str | None, messages_kind: int | None, input_kind: int | None
) -> Any:
    """The shape of a body that :data:`BODY_SHAPE` read: what ``_body_problem`` judges the same
    as the body itself."""
    if body_type != "object":
        return _NOT_AN_OBJECT.get(body_type)
    messages = None if messages_kind is None else _MESSAGES[messages_kind]
    return {"model": model, "messages": messages, "input": 1 if input_kind else None}


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedRequest:
    """A request as planning reads it: never its body, only its size and shape."""

    custom_id: str
    provider: str | None
    method: str | None
    url: str | None
    seq: int
    body_bytes: int  # the body's length as JSONL text
    body_shape: Any  # :func:`body_shape`


# A body as its input line carries it: the stored JSON text, in UTF-8.
BODY_TEXT = "convert_to(r.body::text, 'UTF8')"
# Upload reads bodies a page at a time: at most this much body text per query (and per slice of a
# body larger than that), and at most this many rows (for tiny rows, their objects outweigh them).
PAGE_BYTES = 32 * 1024 * 1024
PAGE_ROWS = 2000
# libpq keeps its input buffer as large as the largest row it has received, for the life of the
# connection: one that read a body larger than this is closed after its transaction, not pooled.
KEEP_CONNECTION_BYTES = 8 * 1024 * 1024


def job_requests(session: Session, job_id: int) -> Iterator[PlannedRequest]:
    """The job's requests in enqueue order, through a server-side cursor (:class:`PlannedRequest`).
    No body is loaded, so every row is small and a fixed number of them is fetched at a time."""
    rows = session.execute(
        sa.text(
            "SELECT r.custom_id, r.provider, r.method, r.url, r.seq, "
            f"octet_length({BODY_TEXT}) AS body_bytes, {BODY_SHAPE} "
            "FROM orchestrator.requests r WHERE r.job_id = :job ORDER BY r.seq"
        ),
        {"job": job_id, "whitespace": WHITESPACE},
        # a server-side cursor: Result.yield_per alone would still fetch every row at once
        execution_options={"yield_per": FETCH_ROWS},
    )
    for cid, provider, method, url, seq, size, kind, model, messages, input_ in rows:
        yield PlannedRequest(
            cid, provider, method, url, seq, size, body_shape(kind, model, messages, input_)
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RequestGroup:
    """The requests of a job that share their envelope and the shape of their body, summed up
    (:func:`job_request_groups`): what planning's checks and packer need of them when their
    custom_ids are :data:`PLAIN_ID`, so that one row stands for all."""

    provider: str | None
    method: str | None
    url: str | None
    body_shape: Any  # :func:`body_shape`
    plain_ids: bool  # every custom_id is PLAIN_ID
    longest_id: int  # characters (= bytes, when plain)
    count: int
    first_seq: int
    last_seq: int
    id_bytes: int  # the custom_ids' bytes, summed
    body_bytes: int  # the bodies' bytes as JSONL text, summed
    longest: int  # the most bytes of one request's custom_id and body together
    tokens: int  # estimated prompt tokens, summed (domain/capacity.py)
    unbounded: int  # requests without an output bound (OUTPUT_BOUND)
    max_output: Decimal  # their output bounds, summed


# A custom_id that JSON writes as itself between quotes, one byte per character: printable ASCII
# but the quote and the backslash (a space, whitespace of any kind, is not in it either).
PLAIN_ID = (
    "r.custom_id ~ '^[\\x21-\\x7e]+$' AND strpos(r.custom_id, '\"') = 0 "
    "AND strpos(r.custom_id, '\\') = 0"
)


# A job of this many requests or more is grouped by parallel workers of the server, where it has
# them (max_parallel_workers_per_gather): the query computes a few things of every body, and its
# rows were just inserted, so the planner's statistics do not know them yet (0.07 s, against 0.13
# s, for 50,000 requests on 2 cores). Smaller ones are not worth starting workers for.
PARALLEL_FROM = 10_000
_PARALLEL_SETTINGS = (
    "parallel_setup_cost",
    "parallel_tuple_cost",
    "min_parallel_table_scan_size",
    "min_parallel_index_scan_size",
)


def _parallel(session: Session, on: bool) -> None:
    """Let the planner use parallel workers for the next statements of this transaction
    whatever it thinks of their size (``on``), or give it back its own judgement."""
    value = "'0'" if on else "reset_val"
    session.execute(
        sa.text(
            f"SELECT set_config(name, {value}, true) FROM pg_settings WHERE name = ANY(:names)"
        ),
        {"names": list(_PARALLEL_SETTINGS)},
    )


def job_request_groups(session: Session, job_id: int, *, embeddings: bool) -> list[RequestGroup]:
    """The job's requests grouped by what planning checks (provider, method, url, the body's
    shape), with what packing adds up: one pass over the job's rows in the database, none sent
    here. A job of 50,000 requests is a few rows (0.07 s, against 0.4 s row by row).

    ``OFFSET 0`` keeps the inner query a query of its own: flattened into the aggregate, each
    body would be rendered as text once for every aggregate that reads its size (three times:
    0.18 s against 0.13 s for 50,000 small bodies, 22 s for 600 bodies of 1 MB); as it is, the
    parallel workers compute each row's values once, and the aggregate reads them."""
    span = session.execute(
        sa.text("SELECT max(seq) - min(seq) + 1 FROM orchestrator.requests WHERE job_id = :job"),
        {"job": job_id},
    ).scalar_one()
    parallel = span is not None and span >= PARALLEL_FROM
    if parallel:
        _parallel(session, True)
    rows = session.execute(
        sa.text(
            f"""
            SELECT provider, method, url, body_type, model, messages_kind, input_kind,
                   bool_and(plain), max(octet_length(custom_id)), count(*), min(seq), max(seq),
                   sum(octet_length(custom_id)), sum(body_bytes),
                   max(octet_length(custom_id) + body_bytes), sum((body_bytes + 3) / 4),
                   count(*) FILTER (WHERE bound IS NULL), COALESCE(sum(bound), 0)
              FROM (SELECT r.custom_id, r.provider, r.method, r.url, r.seq,
                           {PLAIN_ID} AS plain, {OUTPUT_BOUND} AS bound,
                           octet_length({BODY_TEXT}) AS body_bytes, {BODY_SHAPE}
                      FROM orchestrator.requests r WHERE r.job_id = :job
                    OFFSET 0) q
             GROUP BY provider, method, url, body_type, model, messages_kind, input_kind
            """
        ),
        {"job": job_id, "whitespace": WHITESPACE, "embeddings": embeddings},
    ).all()
    if parallel:
        _parallel(session, False)
    groups = []
    for row in rows:
        provider, method, url, kind, model, messages, input_, plain, *sums, max_output = row
        longest_id, n, first, last, id_bytes, body_bytes, longest, tokens, unbounded = map(
            int, sums
        )
        shape = body_shape(kind, model, messages, input_)
        groups.append(
            RequestGroup(
                provider, method, url, shape, bool(plain), longest_id, n, first, last,
                id_bytes, body_bytes, longest, tokens, unbounded, Decimal(max_output),
            )
        )  # fmt: skip
    return groups


class RequestText(NamedTuple):
    """A request of a batch as its input line needs it (a tuple: an upload makes 50,000)."""

    seq: int
    job_id: int
    custom_id: str
    provider: str | None
    method: str | None
    url: str | None
    body_bytes: int
    # The body's text in UTF-8; None for a body larger than a page (read it with body_slices).
    body: bytes | None


_BATCH_ITEMS = (
    "FROM orchestrator.batch_items bi JOIN orchestrator.requests r "
    "ON r.job_id = bi.job_id AND r.custom_id = bi.custom_id WHERE bi.batch_id = %s"
)


# What an upload reads of each request before its first byte: (seq, body bytes, custom_id,
# provider, method, url).
ReaderItem = tuple[int, int, str, str | None, str | None, str | None]
_ITEM_COLUMNS = f"octet_length({BODY_TEXT}), r.custom_id, r.provider, r.method, r.url"


def range_items(session: Session, job_id: int, first: int, last: int) -> list[ReaderItem]:
    """The :data:`ReaderItem` of the job's requests ``first`` to ``last`` (seq), in order."""
    with raw_connection(session).cursor() as cur:
        cur.execute(
            f"SELECT r.seq, {_ITEM_COLUMNS} FROM orchestrator.requests r "
            "WHERE r.job_id = %s AND r.seq BETWEEN %s AND %s ORDER BY r.seq",
            (job_id, first, last),
        )
        return cur.fetchall()


class BatchReader:
    """The requests of a batch in the batch's order, for its input file, read in short
    transactions, none of them open while the file is sent.

    Made in one (the caller's), it reads what each line needs but the body, and each body's size
    (:attr:`items`), so that the file's size is known before any body is read. :meth:`pages` cuts
    them into pages: at most ``page_bytes`` (default :data:`PAGE_BYTES`) of body text, at most
    :data:`PAGE_ROWS` requests and at least one, so a body larger than a page comes alone; and
    :meth:`read` reads one page's bodies, in a transaction of its own (a body alone in its page
    comes without its text: :func:`body_slice` reads it, a slice per transaction). Requests never
    change once enqueued; should one change all the same, a page's count or a body's size no longer
    matches what was measured, and the read fails rather than send another file. A connection that
    read a body over :data:`KEEP_CONNECTION_BYTES` is closed at the end of its transaction."""

    def __init__(
        self,
        session: Session,
        batch_id: int,
        *,
        page_bytes: int | None = None,
        prefetched: Callable[[int, int, int], list[ReaderItem] | None] | None = None,
    ) -> None:
        """``prefetched(job_id, first_seq, last_seq)``: :func:`range_items` of that range, if
        they were read already (``orchestrator/prefetch.py``), else None."""
        self._batch_id = batch_id
        self._page_bytes = page_bytes or PAGE_BYTES
        self._job_id = session.get_one(Batch, batch_id).job_id
        with raw_connection(session).cursor() as cur:
            cur.execute(
                "SELECT min(seq), max(seq), count(*) FROM orchestrator.batch_items "
                "WHERE batch_id = %s",
                (batch_id,),
            )
            row = cur.fetchone()
            first, last, count = row if row and row[2] else (0, 0, 0)
            items = None
            if count and last - first + 1 == count:
                # its seqs are a whole range (a first-round batch of one model): the requests
                # by their own index, without joining the items
                if prefetched is not None:
                    items = prefetched(self._job_id, first, last)
                if items is None:
                    items = range_items(session, self._job_id, first, last)
            else:
                cur.execute(
                    f"SELECT bi.seq, {_ITEM_COLUMNS} {_BATCH_ITEMS} ORDER BY bi.seq", (batch_id,)
                )
                items = cur.fetchall()
            # (seq, body bytes, custom_id, provider, method, url) of every request
            self.items: list[ReaderItem] = items

    @property
    def batch_id(self) -> int:
        return self._batch_id

    def pages(self) -> list[packing.Chunk]:
        sizes = [(seq, size) for seq, size, *_ in self.items]
        return list(packing.pages(sizes, max_bytes=self._page_bytes, max_count=PAGE_ROWS))

    def read(self, session: Session, page: packing.Chunk) -> list[RequestText]:
        """One page of :meth:`pages`, its bodies read in ``session``."""
        alone = page.count == 1 and page.bytes > self._page_bytes  # in slices, not here
        at = bisect.bisect_left(self.items, (page.first_seq,))
        sizes = {seq: size for seq, size, *_ in self.items[at : at + page.count]}
        if not alone and max(sizes.values()) > KEEP_CONNECTION_BYTES:
            session.connection().detach()
        body = "NULL::bytea" if alone else BODY_TEXT
        with raw_connection(session).cursor(binary=True) as cur:
            if page.last_seq - page.first_seq + 1 == page.count:
                # every seq of the range is the batch's (seq is unique in a job): read the
                # requests by their own index, without joining the items (a page of a
                # first-round batch of one model, nearly always: 2.5 times faster)
                cur.execute(
                    "SELECT r.seq, r.job_id, r.custom_id, r.provider, r.method, r.url, "
                    f"{body} FROM orchestrator.requests r "
                    "WHERE r.job_id = %s AND r.seq BETWEEN %s AND %s ORDER BY r.seq",
                    (self._job_id, page.first_seq, page.last_seq),
                )
            else:
                cur.execute(
                    "SELECT bi.seq, bi.job_id, r.custom_id, r.provider, r.method, r.url, "
                    f"{body} {_BATCH_ITEMS} "
                    "AND r.job_id = %s AND r.seq BETWEEN %s AND %s ORDER BY bi.seq",
                    (self._batch_id, self._job_id, page.first_seq, page.last_seq),
                )
            rows, changed = [], False
            for seq, job, cid, provider, method, url, text in cur.fetchall():
                size = sizes.get(seq, -1)
                changed = changed or size < 0 or (text is not None and len(text) != size)
                rows.append(RequestText(seq, job, cid, provider, method, url, size, text))
        if changed or len(rows) != page.count:
            raise RuntimeError(f"batch {self._batch_id}: its requests changed while read")
        return rows


def batch_requests(
    session: Session, batch_id: int, *, page_bytes: int | None = None
) -> Iterator[list[RequestText]]:
    """Every page of a new :class:`BatchReader`, read in ``session``."""
    reader = BatchReader(session, batch_id, page_bytes=page_bytes)
    for page in reader.pages():
        yield reader.read(session, page)


def body_slice(session: Session, request: RequestText, start: int, length: int) -> bytes:
    """``length`` bytes (fewer at its end) of the body of a request that came without it, from
    ``start``. Each slice renders the body again on the server: slow for hundreds of MB, but this
    process never holds more than a slice."""
    if length > KEEP_CONNECTION_BYTES:
        session.connection().detach()
    with raw_connection(session).cursor(binary=True) as cur:
        cur.execute(
            f"SELECT substring({BODY_TEXT} FROM %s FOR %s) FROM orchestrator.requests r "
            "WHERE r.job_id = %s AND r.custom_id = %s",
            (start + 1, length, request.job_id, request.custom_id),
        )
        piece: bytes | None = (cur.fetchone() or (None,))[0]
    if piece is None or len(piece) != min(length, request.body_bytes - start):
        raise RuntimeError(f"request {request.custom_id!r}: its body changed while read")
    return piece


def body_slices(
    session: Session, request: RequestText, *, slice_bytes: int | None = None
) -> Iterator[bytes]:
    """The body of a request that came without it, ``slice_bytes`` (default :data:`PAGE_BYTES`)
    at a time (:func:`body_slice`), in ``session``."""
    slice_bytes = slice_bytes or PAGE_BYTES
    for start in range(0, request.body_bytes, slice_bytes):
        yield body_slice(session, request, start, slice_bytes)


def batch_members(session: Session, batch_id: int) -> dict[str, int]:
    """custom_id → attempt for every request in the batch (plain psycopg: 50,000 rows)."""
    cursor = raw_connection(session).execute(
        "SELECT custom_id, attempt FROM orchestrator.batch_items WHERE batch_id = %s", (batch_id,)
    )
    return dict(cursor.fetchall())


def results_exist(session: Session, batch_id: int) -> bool:
    """Whether any request of the batch has a result already (a re-ingest)."""
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


# -- prices ------------------------------------------------------------------------------


class PriceRow(NamedTuple):
    id: int
    target: str
    model: str
    valid_from: dt.datetime
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None
    batch_discount: Decimal


def price_in_force(session: Session, target: str, model: str, at: dt.datetime) -> PriceRow | None:
    """The price row in force for ``model`` on ``target`` at ``at``, by the one rule the views use
    too (``orchestrator.price_in_force``, migration 0005): the target's own row before a ``'*'``
    row, then the latest ``valid_from`` not after ``at``."""
    row = session.execute(
        sa.text(
            "SELECT id, target, model, valid_from, input_per_mtok, output_per_mtok, "
            "cached_input_per_mtok, batch_discount "
            "FROM orchestrator.price_in_force(:target, :model, :at)"
        ),
        {"target": target, "model": model, "at": at},
    ).one_or_none()
    return None if row is None else PriceRow(*row)


def next_due(session: Session, *, after: dt.datetime) -> dt.datetime | None:
    """When the next open batch falls due after ``after`` (the first entry of the partial index
    ``ix_batches_runnable``), for the daemon to tick then rather than at its next timer."""
    due: dt.datetime | None = session.execute(
        sa.text(
            f"SELECT next_run_at FROM orchestrator.batches WHERE {OPEN_BATCH} "
            "AND next_run_at > :after ORDER BY next_run_at LIMIT 1"
        ),
        {"after": after},
    ).scalar_one_or_none()
    return due


# -- capacity ------------------------------------------------------------------------------------
# What admission counts, read through the partial index ix_batches_capacity (its predicate spelled
# as the index spells it): the batches in flight (creating, submitted) and those waiting for
# capacity (uploaded, with waiting_since), per target and model. A target and model whose only
# batches are uploaded and not held back (about to be created) has no row.

CAPACITY_BATCHES = "state IN ('uploaded', 'creating', 'submitted')"
IN_FLIGHT = "state IN ('creating', 'submitted')"
WAITING = "state = 'uploaded' AND waiting_since IS NOT NULL"
_CAPACITY_USAGE = sa.text(
    f"""
    SELECT target, model,
           COALESCE(sum(estimated_tokens) FILTER (WHERE {IN_FLIGHT}), 0) AS in_flight_tokens,
           count(*) FILTER (WHERE {IN_FLIGHT}) AS in_flight_batches,
           count(*) FILTER (WHERE {WAITING}) AS waiting_batches,
           min(waiting_since) FILTER (WHERE {WAITING}) AS oldest_waiting_since,
           (array_agg(waiting_reason ORDER BY waiting_since, id)
               FILTER (WHERE {WAITING}))[1] AS waiting_reason
      FROM orchestrator.batches
     WHERE {CAPACITY_BATCHES}
     GROUP BY target, model
    HAVING count(*) FILTER (WHERE {IN_FLIGHT} OR ({WAITING})) > 0
     ORDER BY target, model
    """
)


class CapacityUsage(NamedTuple):
    """One target and model: the estimated tokens and the batches in flight, and the batches
    waiting for capacity, with the oldest one's waiting_since and reason."""

    target: str
    model: str | None
    in_flight_tokens: int
    in_flight_batches: int
    waiting_batches: int
    oldest_waiting_since: dt.datetime | None
    waiting_reason: str | None


def capacity_usage(session: Session) -> list[CapacityUsage]:
    """Per target and model, what is in flight and what waits (a cost that follows the open
    work: the partial index ``ix_batches_capacity``)."""
    return [
        CapacityUsage(t, m, int(tokens), int(flying), int(waiting), since, reason)
        for t, m, tokens, flying, waiting, since, reason in session.execute(_CAPACITY_USAGE)
    ]


def learned_capacity(session: Session, *, target: str | None = None) -> list[Capacity]:
    """The limits learned from providers (of ``target`` only, if given), by target and model."""
    query = sa.select(Capacity).order_by(Capacity.target, Capacity.model)
    if target is not None:
        query = query.where(Capacity.target == target)
    return list(session.scalars(query).all())


class JobWaiting(NamedTuple):
    """A job's batches waiting for capacity: how many, the oldest one's waiting_since, and one
    reason (the same rule as the view ``job_summary``: the least of them)."""

    batches: int
    since: dt.datetime
    reason: str | None


def jobs_waiting(session: Session, job_ids: Iterable[int]) -> dict[int, JobWaiting]:
    """job id → its batches waiting for capacity, for the jobs of ``job_ids`` that have any."""
    rows = session.execute(
        sa.text(
            "SELECT job_id, count(*), min(waiting_since), min(waiting_reason) "
            f"FROM orchestrator.batches WHERE job_id = ANY(:jobs) AND {WAITING} GROUP BY job_id"
        ),
        {"jobs": list(job_ids)},
    ).all()
    return {job_id: JobWaiting(int(n), since, reason) for job_id, n, since, reason in rows}


# -- the daemon's gauges ----------------------------------------------------------------------
# Each reads the open work only, through the partial indexes ix_jobs_open, ix_batches_runnable and
# ix_batches_capacity: their cost follows what is pending and running, never the finished history
# beside it (tests/e2e/test_metrics.py checks the plans). The learned limits are a row per target
# and model.

_OPEN_JOBS = sa.text(
    "SELECT status, target, count(*) FROM orchestrator.jobs "
    "WHERE status IN ('pending', 'running') GROUP BY status, target"
)
_OLDEST_PENDING_JOB = sa.text(
    "SELECT GREATEST(extract(epoch FROM now() - created_at), 0) FROM orchestrator.jobs "
    "WHERE status = 'pending' ORDER BY created_at LIMIT 1"
)
_OPEN_BATCHES = sa.text(
    f"""
    SELECT state, target, count(*) AS n,
           GREATEST(extract(epoch FROM now() - min(created_at)), 0) AS oldest,
           count(*) FILTER (WHERE true {STUCK}) AS stuck
      FROM orchestrator.batches
     WHERE {OPEN_BATCH}
     GROUP BY state, target
    """
)


class Gauges(NamedTuple):
    """The open work and the targets' state, as the daemon's gauges show them."""

    jobs: dict[str, int]  # open jobs by status
    pending: dict[str, int]  # pending jobs by target
    open_batches: dict[str, int]  # by state
    oldest_pending_job_age: float  # seconds, 0 when none
    oldest_open_batch_age: float
    stuck: dict[str, int]  # stuck batches by target
    paused: dict[str, bool]  # by target, every target the database knows
    rate_limited: dict[str, bool]  # blocked_until in the future, not paused, not our call cap
    capacity: list[CapacityUsage]  # in flight and waiting, by target and model
    learned: list[Capacity]  # the limits learned from providers


def gauges(session: Session, *, now: dt.datetime, stuck_after: float) -> Gauges:
    """What the gauges show, at a cost that follows the open work (``now`` is the daemon's, for
    a target's blocked_until and for what is stuck; ages are on the database's clock, like the
    rows' created_at)."""
    jobs: dict[str, int] = {}
    pending: dict[str, int] = {}
    for status, target, n in session.execute(_OPEN_JOBS).all():
        jobs[status] = jobs.get(status, 0) + int(n)
        if status == JobStatus.PENDING:
            pending[target] = int(n)
    pending_age = session.execute(_OLDEST_PENDING_JOB).scalar_one_or_none()
    since = now - dt.timedelta(seconds=stuck_after)
    batches: dict[str, int] = {}
    stuck: dict[str, int] = {}
    oldest = 0.0
    for row in session.execute(_OPEN_BATCHES, {"since": since}).all():
        batches[row.state] = batches.get(row.state, 0) + int(row.n)
        stuck[row.target] = stuck.get(row.target, 0) + int(row.stuck)
        oldest = max(oldest, float(row.oldest))
    paused: dict[str, bool] = {}
    limited: dict[str, bool] = {}
    for t in target_states(session):
        paused[t.target] = bool(t.paused)
        blocked = bool(t.blocked_until and t.blocked_until > now)
        limited[t.target] = blocked and not t.paused and not held_by_call_cap(t)
    return Gauges(
        jobs=jobs,
        pending=pending,
        open_batches=batches,
        oldest_pending_job_age=float(pending_age or 0.0),
        oldest_open_batch_age=oldest,
        stuck=stuck,
        paused=paused,
        rate_limited=limited,
        capacity=capacity_usage(session),
        learned=learned_capacity(session),
    )


# -- targets and workers ---------------------------------------------------------------------


def held_by_call_cap(t: TargetState) -> bool:
    """Whether the target's block (if any) is its own ``max_calls_per_minute``, not a 429."""
    return not t.paused and (t.reason or "").startswith(CALL_CAP_REASON)


def target_state(session: Session, target: str) -> TargetState | None:
    return session.get(TargetState, target)


def target_states(session: Session) -> Sequence[TargetState]:
    return session.scalars(sa.select(TargetState).order_by(TargetState.target)).all()


def live_workers(session: Session, *, within_seconds: float) -> Sequence[Worker]:
    """The daemons that are running: not stopped, and seen within ``within_seconds`` (the lease
    time; they heartbeat three times per lease) on the database's clock. A daemon killed without
    a goodbye (SIGKILL, a lost VM) keeps its row but drops out of this list."""
    return session.scalars(
        sa.select(Worker)
        .where(
            Worker.stopped_at.is_(None),
            Worker.heartbeat_at
            > sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, within_seconds),
        )
        .order_by(Worker.started_at)
    ).all()


class OrphanOwner(NamedTuple):
    """The batch that sent a create key, as the orphan sweep needs to judge a remote batch."""

    key: uuid.UUID
    batch_id: int
    job_id: int
    state: str
    idempotency_key: uuid.UUID | None
    remote_batch_id: str | None


def create_key_owners(session: Session, keys: list[uuid.UUID]) -> dict[uuid.UUID, OrphanOwner]:
    """For each of ``keys`` that we sent, the batch that sent it."""
    if not keys:
        return {}
    rows = session.execute(
        sa.text(
            "SELECT k.key, b.id AS batch_id, b.job_id, b.state, b.idempotency_key, "
            "b.remote_batch_id FROM orchestrator.create_keys k "
            "JOIN orchestrator.batches b ON b.id = k.batch_id WHERE k.key = ANY(:keys)"
        ),
        {"keys": keys},
    ).all()
    return {row.key: OrphanOwner(*row) for row in rows}


def adopted_remote_ids(session: Session, remote_ids: list[str]) -> set[str]:
    """Which of ``remote_ids`` a batch of ours has adopted."""
    if not remote_ids:
        return set()
    return set(
        session.execute(
            sa.text(
                "SELECT remote_batch_id FROM orchestrator.batches WHERE remote_batch_id = ANY(:ids)"
            ),
            {"ids": remote_ids},
        ).scalars()
    )


# -- capacity ----------------------------------------------------------------------------------


def learned_limits(session: Session, target: str) -> dict[str, int]:
    """model → the enqueued-token limit learned for it on ``target`` (table ``capacity``)."""
    rows = session.execute(
        sa.text("SELECT model, learned_tokens FROM orchestrator.capacity WHERE target = :t"),
        {"t": target},
    ).all()
    return {model: int(tokens) for model, tokens in rows}


def learned_limit(session: Session, target: str, model: str | None) -> int | None:
    found = session.execute(
        sa.text(
            "SELECT learned_tokens FROM orchestrator.capacity WHERE target = :t AND model = :m"
        ),
        {"t": target, "m": model or ""},
    ).scalar_one_or_none()
    return None if found is None else int(found)


# What a batch asking to be created sees of its target (``domain.capacity.Load``): the batches in
# flight (creating, submitted), and the line of those waiting to be created (uploaded), ordered by
# priority, then turn (the n-th of its job, counting the job's batches created so far on this
# target), then id. Read through the partial index ix_batches_capacity, plus each waiting job's
# batches by job_id for its turn.
_LOAD = f"""
    WITH open AS (
        SELECT b.id, b.job_id, b.priority, b.state, b.model, b.estimated_tokens
          FROM orchestrator.batches b
         WHERE b.target = :target AND b.{CAPACITY_BATCHES}
    ), served AS (
        SELECT x.job_id, count(*) AS n
          FROM orchestrator.batches x
         WHERE x.job_id IN (SELECT job_id FROM open WHERE state = 'uploaded')
           AND x.target = :target
           AND x.state IN ('creating', 'submitted', 'ingesting', 'done', 'failed')
         GROUP BY x.job_id
    ), line AS (
        SELECT o.id, o.priority, o.model, o.estimated_tokens,
               row_number() OVER (PARTITION BY o.job_id ORDER BY o.id) + COALESCE(s.n, 0) AS turn
          FROM open o LEFT JOIN served s ON s.job_id = o.job_id
         WHERE o.state = 'uploaded'
    )
    SELECT
        (SELECT COALESCE(sum(estimated_tokens), 0) FROM open
          WHERE {IN_FLIGHT} AND model IS NOT DISTINCT FROM :model) AS tokens_in_flight,
        COALESCE(sum(l.estimated_tokens) FILTER (WHERE l.model IS NOT DISTINCT FROM :model), 0)
            AS tokens_ahead,
        (SELECT count(*) FROM open WHERE {IN_FLIGHT}) AS batches_in_flight,
        count(l.id) AS batches_ahead
      FROM line me
      LEFT JOIN line l
        ON l.id <> me.id
       AND (l.priority > me.priority
            OR (l.priority = me.priority AND (l.turn, l.id) < (me.turn, me.id)))
     WHERE me.id = :me
     GROUP BY me.id
"""


def admission_load(
    session: Session, *, batch_id: int, target: str, model: str | None
) -> capacity.Load:
    """What batch ``batch_id`` (in state uploaded) sees of its target when it asks to go."""
    row = (
        session.execute(sa.text(_LOAD), {"target": target, "model": model, "me": batch_id})
        .mappings()
        .first()
    )
    return capacity.Load(**{k: int(v) for k, v in row.items()}) if row else capacity.Load()


class StuckBatch(NamedTuple):
    id: int
    job_id: int
    target: str
    state: str
    remote_status: str | None
    failing_since: dt.datetime | None
    expires_at: dt.datetime | None
    last_error: str | None


def stuck_batches(
    session: Session, *, now: dt.datetime, stuck_after: float, limit: int = 100
) -> list[StuckBatch]:
    """Open batches whose steps have been failing for ``stuck_after`` seconds or more, or that the
    provider still reports running past their ``expires_at`` (by ``stuck_after`` too)."""
    rows = session.execute(
        sa.text(
            f"""
            SELECT id, job_id, target, state, remote_status, failing_since, expires_at, last_error
              FROM orchestrator.batches
             WHERE {OPEN_BATCH} {STUCK}
             ORDER BY LEAST(failing_since, expires_at), id
             LIMIT :n
            """
        ),
        {"since": now - dt.timedelta(seconds=stuck_after), "n": limit},
    ).all()
    return [StuckBatch(*row) for row in rows]


class ModelEstimate(NamedTuple):
    """A job's requests for one model, before anything is sent: how many, their estimated prompt
    tokens, how many have no output bound, the sum of the bounds, and the cost at most."""

    model: str
    requests: int
    prompt_tokens: int
    unbounded: int
    max_output_tokens: int
    priced: bool
    max_cost: Decimal | None


# A request's estimated prompt tokens: its body's length in bytes over 4 (about 4 bytes of English
# text per token; the JSON around the text counts too, so the estimate leans high). Its output at
# most: max_completion_tokens, max_tokens or max_output_tokens, the first a number (embeddings: 0).
# The totals per model (model, requests, prompt, unbounded, max_output) priced at :at.
_PRICED = """
    SELECT t.model, t.requests, t.prompt, t.unbounded, t.max_output, p.id IS NOT NULL AS priced,
           orchestrator.token_cost(p, t.prompt, 0, t.max_output) AS max_cost
      FROM ({totals}) t
      LEFT JOIN LATERAL orchestrator.price_in_force(:target, t.model, :at) p ON true
     ORDER BY t.model
"""
_ESTIMATE = _PRICED.format(
    totals=f"""
        SELECT COALESCE(r.body ->> 'model', '') AS model, count(*) AS requests,
               sum((octet_length({BODY_TEXT}) + 3) / 4)::bigint AS prompt,
               count(*) FILTER (WHERE b.bound IS NULL) AS unbounded,
               COALESCE(sum(b.bound), 0)::bigint AS max_output
          FROM orchestrator.requests r
          CROSS JOIN LATERAL (SELECT {OUTPUT_BOUND} AS bound) b
         WHERE r.job_id = :job
         GROUP BY 1"""
)
_ESTIMATE_OF_TOTALS = _PRICED.format(
    totals="""
        SELECT model, requests, prompt, unbounded, max_output::bigint AS max_output
          FROM unnest(CAST(:model AS text[]), CAST(:requests AS bigint[]),
                      CAST(:prompt_tokens AS bigint[]), CAST(:unbounded AS bigint[]),
                      CAST(:max_output_tokens AS numeric[]))
               AS g(model, requests, prompt, unbounded, max_output)"""
)


def unnest_params(rows: Sequence[NamedTuple], fields: Sequence[str]) -> dict[str, list[Any]]:
    """Rows as one array per field, named after it: the parameters of an ``unnest(:field, …)``
    that turns them back into rows on the server, in one statement."""
    return {field: [getattr(row, field) for row in rows] for field in fields}


class EstimateTotals(NamedTuple):
    """What :data:`_ESTIMATE` adds up for one model, added up already (from a job's groups)."""

    model: str
    requests: int
    prompt_tokens: int
    unbounded: int
    max_output_tokens: Decimal


def job_estimate(
    session: Session,
    *,
    job_id: int,
    target: str,
    endpoint: str,
    at: dt.datetime,
    totals: Sequence[EstimateTotals] | None = None,
) -> list[ModelEstimate]:
    """The job's estimate per model, at the prices in force at ``at`` (the one price rule); from
    its ``totals`` per model when planning has them (its requests are not read again)."""
    if totals is not None:
        rows = session.execute(
            sa.text(_ESTIMATE_OF_TOTALS),
            {"target": target, "at": at, **unnest_params(totals, EstimateTotals._fields)},
        ).all()
        return [ModelEstimate(*row) for row in rows]
    rows = session.execute(
        sa.text(_ESTIMATE),
        {
            "job": job_id,
            "target": target,
            "at": at,
            "embeddings": endpoint.endswith("/embeddings"),
        },
    ).all()
    return [ModelEstimate(*row) for row in rows]


# -- retention ------------------------------------------------------------------------------------


def database_now(session: Session) -> dt.datetime:
    """The database's clock: retention's cutoffs are taken from it, as leases are."""
    return session.execute(sa.text("SELECT now()")).scalar_one()  # type: ignore[no-any-return]


def old_event_count(session: Session, *, before: dt.datetime) -> int:
    return int(
        session.execute(
            sa.text("SELECT count(*) FROM orchestrator.events WHERE at < :before"),
            {"before": before},
        ).scalar_one()
    )


def old_worker_count(session: Session, *, before: dt.datetime) -> int:
    return int(
        session.execute(
            sa.text("SELECT count(*) FROM orchestrator.workers WHERE heartbeat_at < :before"),
            {"before": before},
        ).scalar_one()
    )


_TERMINAL_JOB_STATES = ", ".join(f"'{s.value}'" for s in sorted(JOB_TERMINAL))
_OPEN_STATE_LIST = ", ".join(f"'{s}'" for s in OPEN_STATES)


def finished_jobs_before(
    session: Session, *, before: dt.datetime, after_id: int, limit: int
) -> list[int]:
    """Ids above ``after_id``, in order, of jobs finished (completed, failed, cancelled) before
    ``before`` with no batch still open: those ``cleanup --jobs-older-than`` may delete."""
    rows = session.execute(
        sa.text(
            f"""
            SELECT j.id FROM orchestrator.jobs j
             WHERE j.status IN ({_TERMINAL_JOB_STATES}) AND j.finished_at < :before
               AND j.id > :after
               AND NOT EXISTS (SELECT 1 FROM orchestrator.batches b
                                WHERE b.job_id = j.id AND b.state IN ({_OPEN_STATE_LIST}))
             ORDER BY j.id LIMIT :limit
            """
        ),
        {"before": before, "after": after_id, "limit": limit},
    )
    return list(rows.scalars())


def job_row_counts(
    session: Session, job_ids: list[int], *, events_before: dt.datetime | None
) -> dict[str, int]:
    """What deleting ``job_ids`` would delete, per table (``cleanup --dry-run``); their events
    older than ``events_before`` are left out (the events sweep counts them)."""
    row = session.execute(
        sa.text(
            """
            SELECT
              (SELECT count(*) FROM orchestrator.results WHERE job_id = ANY(:jobs)) AS results,
              (SELECT count(*) FROM orchestrator.batch_items bi
                 JOIN orchestrator.batches b ON b.id = bi.batch_id
                WHERE b.job_id = ANY(:jobs)) AS batch_items,
              (SELECT count(*) FROM orchestrator.requests WHERE job_id = ANY(:jobs)) AS requests,
              (SELECT count(*) FROM orchestrator.events WHERE job_id = ANY(:jobs)
                  AND (CAST(:events_before AS timestamptz) IS NULL
                       OR at >= CAST(:events_before AS timestamptz))) AS events,
              (SELECT count(*) FROM orchestrator.batches WHERE job_id = ANY(:jobs)) AS batches
            """
        ),
        {"jobs": job_ids, "events_before": events_before},
    ).one()
    return {**row._asdict(), "jobs": len(job_ids)}
