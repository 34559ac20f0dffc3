"""The ledger: every write the orchestrator makes, and nothing else writes.

Jobs, batches, batch items, results, events, target state and workers change here only (the COPY
of result lines is streamed by ``ingest``, inside a transaction this module fences). None of these
functions commits: the caller frames one short transaction per transition
(``db.session.unit_of_work``).

**Compare-and-set.** Every write to a leased batch is one ``UPDATE … WHERE id = :id AND
lease_token = :token AND state = ANY(:expected)``. A move to a new state takes ``expected`` from
the transition table (``domain.states.sources_of``), so the table is enforced by the database
write itself; a write that keeps the state names the states it may happen in. No row matched:
``LeaseLost`` when the token is no longer current, ``IllegalTransition`` when it is and the state
is not one the write allows.

**Leases are on the database's clock.** A lease is taken, renewed and judged expired with the
database's ``now()``, never with a daemon's own clock, so a daemon whose clock is off cannot take
over a live lease. Schedules (``next_run_at``, a target's ``blocked_until``) are the daemon's.

**One lock order.** A transaction that locks both locks the batch row(s) first and the job row
after, and locks a job row only ``FOR NO KEY UPDATE`` (never ``FOR UPDATE``, which would wait
for the ``FOR KEY SHARE`` a foreign-key check on a batch row takes, and deadlock with a
transaction finishing another batch of the same job). A batch is updated once per transaction:
a step that must hold its batch across a long write (the ingest) locks it with a ``SELECT … FOR
NO KEY UPDATE`` first, not with an UPDATE, so the closing UPDATE is the row's only new version
and re-checks no foreign key.

**Events and logs.** :func:`record` writes the event row and emits the log line with the same
fields; the log line is emitted when the transaction commits (nothing is logged for a transition
that rolled back), and handed to the session's :data:`ON_EVENT` callable if it has one (the
daemon's metrics count committed transitions there). A state change that keeps no event
(``uploaded → creating`` and back) still gets its line, the same way (:func:`_log_on_commit`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.orm import Session

from orchestrator.db import queries
from orchestrator.db.models import (
    Batch,
    Capacity,
    CreateKey,
    Event,
    Job,
    OrphanBatch,
    Result,
    TargetState,
    Worker,
)
from orchestrator.db.queries import CALL_CAP_REASON, OPEN_STATES, Claimed
from orchestrator.db.session import raw_connection
from orchestrator.domain import lines as ln
from orchestrator.domain.cost import as_stored
from orchestrator.domain.decide import PATIENCE_EXHAUSTED
from orchestrator.domain.packing import Packer
from orchestrator.domain.states import JOB_TERMINAL, BatchState, JobStatus, sources_of
from orchestrator.errors import BatchNotFound, IllegalTransition, LeaseLost, RemoteIdTaken

log = structlog.get_logger("orchestrator.ledger")

RESULT_COLUMNS = (
    "job_id, custom_id, batch_id, attempt, succeeded, status_code, response, error, model, "
    "prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens"
)
_PENDING_LOGS = "orchestrator_pending_logs"
# ``Session.info`` key of a callable ``(kind, fields)`` called with each event once committed.
ON_EVENT = "orchestrator_on_event"


class Lease(Protocol):
    """What a write needs to know of the batch it fences: a :class:`queries.Claimed`."""

    @property
    def id(self) -> int: ...
    @property
    def token(self) -> int: ...
    @property
    def job_id(self) -> int: ...


# -- events and their log lines ---------------------------------------------------------


def record(
    session: Session,
    kind: str,
    *,
    level: str = "info",
    job_id: int | None = None,
    batch_id: int | None = None,
    **fields: Any,
) -> None:
    """The event row now, and the log line with the same fields once the transaction commits.

    Money is never a float: a Decimal field (a cost) is written as its exact decimal string
    ("0.00026000"), in the row and in the line alike, and None is JSON null."""
    fields = {key: _plain(value) for key, value in fields.items()}
    session.execute(
        sa.insert(Event).values(kind=kind, job_id=job_id, batch_id=batch_id, detail=fields)
    )
    ids = {k: v for k, v in (("job_id", job_id), ("batch_id", batch_id)) if v is not None}
    session.info.setdefault(_PENDING_LOGS, []).append((level, kind, {**ids, **fields}, True))


def _log_on_commit(session: Session, level: str, kind: str, lease: Lease, **fields: Any) -> None:
    """The log line of a state change that keeps no event row, once the transaction commits."""
    ids = {"job_id": lease.job_id, "batch_id": lease.id}
    session.info.setdefault(_PENDING_LOGS, []).append((level, kind, {**ids, **fields}, False))


def _plain(value: Any) -> Any:
    """``value`` as an event shows it: every Decimal in it as its exact decimal string, without
    an exponent (``format(d, "f")``: "0.00000001", never "1E-8"); anything else as it is."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, Mapping):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@sa.event.listens_for(Session, "after_commit")
def _emit_logs(session: Session) -> None:
    on_event = session.info.get(ON_EVENT)
    for level, kind, fields, is_event in session.info.pop(_PENDING_LOGS, ()):
        if is_event and on_event is not None:
            on_event(kind, fields)  # first: whoever reads the line may count on it
        getattr(log, level)(kind, **fields)


@sa.event.listens_for(Session, "after_rollback")
def _drop_logs(session: Session) -> None:
    session.info.pop(_PENDING_LOGS, None)


# -- the compare-and-set ------------------------------------------------------------------


def _cas(
    session: Session, lease: Lease, expected: Iterable[str], *, release: bool, **values: Any
) -> None:
    """The one UPDATE of a leased batch: matched only under ``lease`` and in ``expected``."""
    allowed = sorted(str(s) for s in expected)
    if release:
        values.update(lease_owner=None, lease_expires_at=None)
    stmt = (
        sa.update(Batch)
        .where(Batch.id == lease.id, Batch.lease_token == lease.token, Batch.state.in_(allowed))
        .values(updated_at=sa.func.now(), **values)
        .returning(Batch.id)
    )
    if session.execute(stmt).scalar_one_or_none() is not None:
        return
    current = session.execute(
        sa.select(Batch.state).where(Batch.id == lease.id, Batch.lease_token == lease.token)
    ).scalar_one_or_none()
    if current is None:
        raise LeaseLost(f"batch {lease.id}: lease token {lease.token} is no longer current")
    target = values.get("state", current)
    raise IllegalTransition(f"batch {lease.id}: {current} -> {target} is not an allowed move")


def move(
    session: Session, lease: Lease, to: BatchState, *, release: bool = False, **values: Any
) -> None:
    """Move the batch to ``to``, from a state the transition table allows it from."""
    _cas(session, lease, sources_of(to), release=release, state=to, **values)


def touch(
    session: Session,
    lease: Lease,
    in_states: Iterable[str],
    *,
    release: bool = False,
    **values: Any,
) -> None:
    """Write ``values`` without a change of state; the batch must be in one of ``in_states``."""
    _cas(session, lease, in_states, release=release, **values)


def lock(session: Session, lease: Lease, in_state: BatchState) -> None:
    """Hold the batch row for the rest of the transaction without writing it (see the lock order
    in the module docstring): LeaseLost unless ``lease`` holds it in ``in_state``."""
    found = session.execute(
        sa.select(Batch.id)
        .where(Batch.id == lease.id, Batch.lease_token == lease.token, Batch.state == str(in_state))
        .with_for_update(key_share=True)
    ).scalar_one_or_none()
    if found is None:
        raise LeaseLost(f"batch {lease.id}: lease token {lease.token} does not hold it here")


# -- leases (on the database's clock) ---------------------------------------------------------

_CLAIM = sa.text(
    f"""
    WITH c AS (
        SELECT b.id, b.lease_owner AS previous_owner FROM orchestrator.batches b
        WHERE b.state IN ({", ".join(repr(s) for s in OPEN_STATES)})
          AND b.next_run_at <= :now
          AND (b.lease_expires_at IS NULL OR b.lease_expires_at < now())
          AND (CAST(:targets AS text[]) IS NULL OR b.target = ANY(:targets))
          AND NOT EXISTS (
              SELECT 1 FROM orchestrator.target_state t
              WHERE t.target = b.target AND t.blocked_until > :now)
        ORDER BY b.priority DESC, b.next_run_at, b.id
        LIMIT :n
        FOR NO KEY UPDATE OF b SKIP LOCKED
    )
    UPDATE orchestrator.batches b
       SET lease_owner = :me, lease_token = b.lease_token + 1,
           lease_expires_at = now() + make_interval(secs => :ttl)
      FROM c, orchestrator.jobs j
     WHERE b.id = c.id AND j.id = b.job_id
    RETURNING {Claimed.COLUMNS}, c.previous_owner
    """
)


def claim_batches(
    session: Session,
    *,
    owner: uuid.UUID,
    now: dt.datetime,
    ttl: float,
    limit: int,
    targets: Collection[str] | None = None,
) -> list[Claimed]:
    """Lease up to ``limit`` batches that are due by ``now`` (the daemon's schedule) and whose
    lease, if any, has expired by the database's clock; only batches of ``targets`` (the ones this
    daemon knows: another daemon's configuration may have more) unless None. A batch whose expired
    lease another owner held (a daemon that died or stalled mid-step) is ``taken_over``, with an
    event saying whose."""
    if limit <= 0:
        return []
    params = {
        "me": owner,
        "now": now,
        "ttl": ttl,
        "n": limit,
        "targets": None if targets is None else list(targets),
    }
    rows = session.execute(_CLAIM, params).mappings()
    claimed = []
    for row in rows:
        fields = dict(row)
        previous = fields.pop("previous_owner")
        taken_over = previous is not None and previous != owner
        claimed.append(Claimed(**fields, taken_over=taken_over))
        if taken_over:
            record(
                session, "batch_lease_taken_over", level="warning", job_id=fields["job_id"],
                batch_id=fields["id"], worker=str(owner), previous_owner=str(previous),
                state=fields["state"],
            )  # fmt: skip
    return claimed


def renew_leases(
    session: Session, *, owner: uuid.UUID, tokens: Mapping[int, int], ttl: float
) -> set[int]:
    """Extend the leases this worker still holds; returns the ids renewed.

    Rows locked by one of our own transactions (an ingest in progress) are skipped: while locked
    nobody can claim them, and the transaction's compare-and-set checks the token anyway.
    """
    if not tokens:
        return set()
    rows = session.execute(
        sa.text(
            """
            UPDATE orchestrator.batches b
               SET lease_expires_at = now() + make_interval(secs => :ttl)
              FROM (SELECT id FROM orchestrator.batches
                     WHERE id = ANY(:ids) AND lease_owner = :me
                     FOR NO KEY UPDATE SKIP LOCKED) l
             WHERE b.id = l.id
            RETURNING b.id, b.lease_token
            """
        ),
        {"ids": list(tokens), "me": owner, "ttl": ttl},
    ).all()
    return {row.id for row in rows if tokens.get(row.id) == row.lease_token}


def release_leases(session: Session, *, owner: uuid.UUID, tokens: Mapping[int, int]) -> int:
    """Give back leases at shutdown, only where our token is still the current one."""
    released = 0
    for batch_id, token in tokens.items():
        result = session.execute(
            sa.update(Batch)
            .where(Batch.id == batch_id, Batch.lease_token == token, Batch.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
        )
        released += result.rowcount or 0  # type: ignore[attr-defined]
    return released


def wake_cancelled_jobs(session: Session, now: dt.datetime) -> int:
    """Make the open batches of jobs with a cancel request runnable now (they may be sleeping
    through a long poll backoff). Batches whose cancel was already sent keep their schedule."""
    result = session.execute(
        sa.text(
            """
            UPDATE orchestrator.batches b SET next_run_at = :now
              FROM (SELECT b2.id FROM orchestrator.batches b2
                      JOIN orchestrator.jobs j ON j.id = b2.job_id
                     WHERE j.status = 'running' AND j.cancel_requested_at IS NOT NULL
                       AND b2.state IN ('planned', 'uploaded', 'creating', 'submitted')
                       AND b2.next_run_at > :now AND b2.cancel_sent_at IS NULL
                       AND b2.cancel_retry_at IS NULL
                       FOR NO KEY UPDATE OF b2 SKIP LOCKED) w
             WHERE b.id = w.id
            """
        ),
        {"now": now},
    )
    return result.rowcount or 0  # type: ignore[attr-defined]


# -- operator commands ----------------------------------------------------------------------


def resolve_unknown_create(
    session: Session, batch_id: int, *, adopt: str | None, now: dt.datetime
) -> str:
    """An operator settles a create whose outcome is unknown: adopt the remote batch ``adopt``, or
    create again. The lease token is bumped, so a worker still holding the batch writes nothing
    after this. Returns how it was settled."""
    batch = session.execute(
        sa.select(Batch.id, Batch.job_id, Batch.state, Batch.lease_token)
        .where(Batch.id == batch_id)
        .with_for_update(key_share=True)
    ).one_or_none()
    if batch is None:
        raise BatchNotFound(
            f"no batch {batch_id}; list a job's batches with orchestrator status JOB"
        )
    if batch.state != BatchState.CREATING:
        raise IllegalTransition(f"batch {batch_id} is not waiting in 'creating'")
    values: dict[str, Any]
    if adopt:
        how, to = "adopted", BatchState.SUBMITTED
        values = {"remote_batch_id": adopt}
    else:
        how, to = "recreate", BatchState.UPLOADED
        values = {"idempotency_key": None}
    _operator_move(session, batch_id, sources_of(to), to, now=now, **values)
    record(
        session,
        "batch_resolved",
        job_id=batch.job_id,
        batch_id=batch_id,
        how=how,
        remote_batch_id=adopt,
    )
    return how


def reopen_for_reingest(session: Session, batch_id: int, *, now: dt.datetime) -> str:
    """An operator asks for a failed batch's results to be collected again (``orchestrator
    reingest``): typically one given up after its patience, whose output file was missing,
    unreadable or "not found". Returns its remote batch id.

    The only way out of a terminal state, and only from ``failed``: the failure results written
    when the batch was given up are removed (they were ours, not the provider's: a failed batch
    never committed an ingest), the batch goes back to ``submitted`` under a new lease token (so
    it is polled, then ingested, as usual), and its job is running again until it closes."""
    batch = session.execute(
        sa.select(
            Batch.id, Batch.job_id, Batch.state, Batch.remote_batch_id, Batch.last_error,
            Batch.cost,
        )
        .where(Batch.id == batch_id)
        .with_for_update(key_share=True)
    ).one_or_none()  # fmt: skip
    if batch is None:
        raise BatchNotFound(
            f"no batch {batch_id}; list a job's batches with orchestrator status JOB"
        )
    if batch.state != BatchState.FAILED:
        raise IllegalTransition(
            f"batch {batch_id} is {batch.state}; only a failed batch can be ingested again"
        )
    if batch.remote_batch_id is None:
        raise IllegalTransition(
            f"batch {batch_id} never reached the provider (it has no remote batch id): "
            "there is nothing to ingest"
        )
    removed = session.execute(
        sa.delete(Result).where(Result.batch_id == batch_id, Result.succeeded.is_(False))
    ).rowcount  # type: ignore[attr-defined]
    # what it cost is counted again when it is ingested again (a batch given up with files
    # short kept what they held, and its cost)
    _operator_move(
        session, batch_id, [BatchState.FAILED], BatchState.SUBMITTED, now=now,
        finished_at=None, unchanged_polls=0, cost=None, cost_source=None, **RECOVERED,
    )  # fmt: skip
    session.execute(
        sa.update(Job)
        .where(Job.id == batch.job_id)
        .values(
            status=sa.case(
                (Job.status.in_([s.value for s in JOB_TERMINAL]), JobStatus.RUNNING.value),
                else_=Job.status,
            ),
            finished_at=None,
            error=sa.case((Job.error == batch.last_error, None), else_=Job.error),
            cost=Job.cost - batch.cost if batch.cost is not None else Job.cost,
            updated_at=sa.func.now(),
        )
    )
    recount_job(session, batch.job_id)
    record(
        session,
        "batch_reingest_requested",
        level="warning",
        job_id=batch.job_id,
        batch_id=batch_id,
        remote_batch_id=batch.remote_batch_id,
        failure_results_removed=removed,
    )
    return str(batch.remote_batch_id)


def _operator_move(
    session: Session,
    batch_id: int,
    sources: Iterable[str],
    to: BatchState,
    *,
    now: dt.datetime,
    **values: Any,
) -> None:
    """An operator's move of a batch, due now: the lease token is bumped, so a worker still
    holding the batch writes nothing after the operator."""
    session.execute(
        sa.update(Batch)
        .where(Batch.id == batch_id, Batch.state.in_(sorted(str(s) for s in sources)))
        .values(
            state=to,
            next_run_at=now,
            lease_owner=None,
            lease_expires_at=None,
            lease_token=Batch.lease_token + 1,
            updated_at=sa.func.now(),
            **values,
        )
    )


def request_cancel(session: Session, job_id: int) -> tuple[str, bool] | None:
    """Ask for the job to be cancelled, unless it has finished: returns its status and whether the
    cancel was recorded (False: the job was already completed, failed or cancelled, and nothing
    was changed), or None if there is no such job."""
    status: str | None = session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.status.not_in([s.value for s in JOB_TERMINAL]))
        .values(cancel_requested_at=sa.func.coalesce(Job.cancel_requested_at, sa.func.now()))
        .returning(Job.status)
    ).scalar_one_or_none()
    if status is not None:
        return status, True
    finished: str | None = session.execute(
        sa.select(Job.status).where(Job.id == job_id)
    ).scalar_one_or_none()
    return None if finished is None else (finished, False)


# -- jobs ---------------------------------------------------------------------------------


def insert_job(
    session: Session,
    *,
    name: str,
    target: str,
    endpoint: str,
    max_attempts: int,
    priority: int,
) -> int:
    return session.execute(
        sa.insert(Job)
        .values(
            name=name, target=target, endpoint=endpoint, max_attempts=max_attempts,
            priority=priority,
        )
        .returning(Job.id)
    ).scalar_one()  # fmt: skip


def run_user_sql(session: Session, sql: str) -> None:
    """A statement written as a user would type it into psql (the demo's enqueue): sent as it
    is, with no parameter binding (its JSON may hold colons)."""
    raw_connection(session).execute(sql.encode())


def copy_requests(
    session: Session, job_id: int, rows: Iterable[tuple[str, Any, str, Any, str]]
) -> None:
    """COPY the job's requests: ``(custom_id, provider, method, url, body as JSON text)``."""
    cursor = raw_connection(session).cursor()
    with cursor.copy(
        "COPY orchestrator.requests (job_id, custom_id, provider, method, url, body) FROM STDIN"
    ) as copy:
        for row in rows:
            copy.write_row((job_id, *row))


class _Routing(Protocol):
    """Where a batch goes: a job being planned, or the batch a new one replaces."""

    @property
    def target(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def priority(self) -> int: ...


def _new_batch(
    session: Session,
    job_id: int,
    like: _Routing,
    *,
    round_: int,
    count: int,
    size: int,
    now: dt.datetime,
    model: str | None,
    tokens: int,
    first_sent_at: dt.datetime | None = None,
) -> int:
    """A ``planned`` batch of ``job_id``, sent where ``like`` goes; ``first_sent_at``: when its
    requests were first sent, for a later round or a part of a split."""
    return session.execute(
        sa.insert(Batch)
        .values(
            job_id=job_id, target=like.target, endpoint=like.endpoint, priority=like.priority,
            round=round_, state=BatchState.PLANNED, request_count=count, bytes=size,
            next_run_at=now, model=model, estimated_tokens=tokens, first_sent_at=first_sent_at,
        )
        .returning(Batch.id)
    ).scalar_one()  # fmt: skip


def insert_planned_batch(
    session: Session,
    job: Job,
    *,
    first_seq: int,
    last_seq: int,
    count: int,
    size: int,
    model: str | None,
    tokens: int,
    only_model: bool,
    now: dt.datetime,
) -> int:
    """A first-round batch of the requests ``first_seq..last_seq`` of a job being planned (of
    them, with ``only_model``, those of ``model``: a job of several models)."""
    batch_id = _new_batch(
        session, job.id, job, round_=1, count=count, size=size, now=now, model=model,
        tokens=tokens,
    )  # fmt: skip
    of_model = f" AND {queries.MODEL_TEXT} = :model" if only_model else ""
    inserted = session.execute(
        sa.text(
            "INSERT INTO orchestrator.batch_items (batch_id, custom_id, job_id, seq, attempt) "
            "SELECT :batch, r.custom_id, r.job_id, r.seq, 1 FROM orchestrator.requests r "
            f"WHERE r.job_id = :job AND r.seq BETWEEN :first AND :last{of_model}"
        ),
        {
            "batch": batch_id, "job": job.id, "first": first_seq, "last": last_seq,
            "model": model, "whitespace": queries.WHITESPACE,
        },
    ).rowcount  # type: ignore[attr-defined]  # fmt: skip
    if inserted != count:
        # the plan and the rows disagree (requests changed under it): roll back, send nothing
        raise RuntimeError(
            f"job {job.id}: planned {count} requests for batch {batch_id} but found {inserted}"
        )
    record(
        session, "batch_planned", job_id=job.id, batch_id=batch_id, requests=count, bytes=size,
        model=model, estimated_tokens=tokens,
    )  # fmt: skip
    return batch_id


def estimate_job(
    session: Session, job_id: int, *, prompt_tokens: int, max_output_tokens: int | None,
    max_cost: Decimal | None,
) -> None:  # fmt: skip
    """What the job is expected to use, at most (see ``queries.job_estimate``)."""
    session.execute(
        sa.update(Job)
        .where(Job.id == job_id)
        .values(
            estimated_prompt_tokens=prompt_tokens,
            estimated_max_output_tokens=max_output_tokens,
            estimated_max_cost=max_cost,
        )
    )


def start_job(
    session: Session, job_id: int, *, requests: int, batches: int, size: int, now: dt.datetime
) -> None:
    session.execute(
        sa.update(Job)
        .where(Job.id == job_id)
        .values(
            status=JobStatus.RUNNING,
            started_at=now,
            request_count=requests,
            batch_count=batches,
            updated_at=sa.func.now(),
        )
    )
    record(session, "job_planned", job_id=job_id, requests=requests, batches=batches, bytes=size)


def end_pending_job(
    session: Session,
    job_id: int,
    status: JobStatus,
    now: dt.datetime,
    *,
    error: str | None = None,
    stage: str,
) -> None:
    """A job that ends before any batch: failed validation, cancelled while pending."""
    target = session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.PENDING)
        .values(status=status, error=error, finished_at=now, updated_at=sa.func.now())
        .returning(Job.target)
    ).scalar_one_or_none()
    if target is not None:
        _notify_job_finished(session, job_id, status)
    detail: dict[str, Any] = {"stage": stage, "target": target}
    if error is not None:
        detail["error"] = error
    level = "error" if status == JobStatus.FAILED else "info"
    record(session, f"job_{status}", level=level, job_id=job_id, **detail)


def add_to_job(
    session: Session,
    job_id: int,
    *,
    succeeded: int = 0,
    failed: int = 0,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    total_tokens: int = 0,
    cost: Decimal | None = None,
    batches: int = 0,
    error: str | None = None,
) -> None:
    """Add to the job's counters (an UPDATE: it takes the job row FOR NO KEY UPDATE)."""
    values: dict[str, Any] = {
        "succeeded_count": Job.succeeded_count + succeeded,
        "failed_count": Job.failed_count + failed,
        "prompt_tokens": Job.prompt_tokens + prompt_tokens,
        "completion_tokens": Job.completion_tokens + completion_tokens,
        "total_tokens": Job.total_tokens + total_tokens,
        "batch_count": Job.batch_count + batches,
        "updated_at": sa.func.now(),
    }
    if cost is not None:
        values["cost"] = sa.func.coalesce(Job.cost, 0) + cost
    if error is not None:
        values["error"] = sa.func.coalesce(Job.error, error)
    session.execute(sa.update(Job).where(Job.id == job_id).values(**values))


def recount_job(session: Session, job_id: int) -> None:
    """Counters from the results themselves (after an upsert, where increments could double)."""
    session.execute(
        sa.text(
            """
            UPDATE orchestrator.jobs j SET
                succeeded_count = c.ok, failed_count = c.ko, prompt_tokens = c.pt,
                completion_tokens = c.ct, total_tokens = c.tt, updated_at = now()
              FROM (SELECT count(*) FILTER (WHERE succeeded) AS ok,
                           count(*) FILTER (WHERE NOT succeeded) AS ko,
                           COALESCE(sum(prompt_tokens), 0) AS pt,
                           COALESCE(sum(completion_tokens), 0) AS ct,
                           COALESCE(sum(total_tokens), 0) AS tt
                      FROM orchestrator.results WHERE job_id = :job) c
             WHERE j.id = :job
            """
        ),
        {"job": job_id},
    )


def finish_job_if_done(session: Session, job_id: int, now: dt.datetime) -> str | None:
    """If the job has no open batch left, give it its final status.

    The job row is locked FOR NO KEY UPDATE (see the lock order): of two transactions closing the
    job's last two batches at once, the second waits for the first to commit, then sees both
    batches closed.
    """
    job = session.scalars(
        sa.select(Job).where(Job.id == job_id).with_for_update(key_share=True)
    ).one()
    open_batches = session.execute(
        sa.select(sa.func.count())
        .select_from(Batch)
        .where(Batch.job_id == job_id, Batch.state.in_(OPEN_STATES))
    ).scalar_one()
    if job.status != JobStatus.RUNNING or open_batches:
        return None
    failed_batches = session.execute(
        sa.select(sa.func.count())
        .select_from(Batch)
        .where(Batch.job_id == job_id, Batch.state == BatchState.FAILED)
    ).scalar_one()
    if job.cancel_requested_at is not None:
        status = JobStatus.CANCELLED
    elif failed_batches:
        status = JobStatus.FAILED
    else:
        status = JobStatus.COMPLETED
    sources = set(
        session.execute(
            sa.select(Batch.cost_source)
            .where(Batch.job_id == job_id, Batch.state == BatchState.DONE)
            .distinct()
        ).scalars()
    )
    cost_source = (
        (sources.pop() or "none") if len(sources) == 1 else ("mixed" if sources else "none")
    )
    session.execute(
        sa.update(Job)
        .where(Job.id == job_id)
        .values(status=status, finished_at=now, cost_source=cost_source, updated_at=sa.func.now())
    )
    _notify_job_finished(session, job_id, status)
    record(
        session,
        f"job_{status}",
        level="error" if status == JobStatus.FAILED else "info",
        job_id=job_id,
        target=job.target,
        succeeded=job.succeeded_count,
        failed=job.failed_count,
        total_tokens=job.total_tokens,
        cost=job.cost,
        error=job.error,
    )
    return status


JOB_FINISHED = "orchestrator_job_finished"


def _notify_job_finished(session: Session, job_id: int, status: str) -> None:
    """``NOTIFY orchestrator_job_finished``: the job has just become terminal. Sent in the
    transaction that ends it, so a listener hears it when that commits, once, and never for one
    that rolls back. The payload holds no text a user wrote (a NOTIFY payload must stay under
    8000 bytes, and one too long would fail the transaction that ends the job), only
    ``{"job_id": 12, "status": "completed"}``."""
    payload = orjson.dumps({"job_id": job_id, "status": str(status)}).decode()
    session.execute(sa.select(sa.func.pg_notify(JOB_FINISHED, payload)))


# -- batches: the steps' transitions ---------------------------------------------------------
# One function per transition: its compare-and-set and its event, in the caller's transaction.
# ``worker`` names the daemon that made it (events only).

_B = BatchState
# A poll's count, for the write that records the poll (steps hold no SQL expressions of their own).
POLL_COUNT_PLUS_ONE = Batch.poll_count + 1


# A step went through: the batch's run of failures (if any) is over.
RECOVERED: Mapping[str, Any] = {"step_failures": 0, "last_error": None, "failing_since": None}


def _event(
    session: Session, lease: Lease, kind: str, *, level: str = "info", **fields: Any
) -> None:
    record(session, kind, level=level, job_id=lease.job_id, batch_id=lease.id, **fields)


def mark_uploaded(
    session: Session, lease: Lease, *, file_id: str, size: int, requests: int,
    next_run_at: dt.datetime, worker: str,
) -> None:  # fmt: skip
    """planned → uploaded: the JSONL is on the provider's side."""
    move(
        session, lease, _B.UPLOADED, input_file_id=file_id, bytes=size, request_count=requests,
        next_run_at=next_run_at, **RECOVERED,
    )  # fmt: skip
    _event(session, lease, "batch_uploaded", worker=worker, file_id=file_id, bytes=size,
           requests=requests)  # fmt: skip


def lock_capacity(session: Session, target: str) -> None:
    """Admission to ``target`` one at a time, across daemons, until the transaction ends: what
    is in flight cannot change between the count and the move to ``creating``. A transaction
    lock of its own (no row), taken before any row lock, so it joins no lock cycle."""
    session.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtext('orchestrator.capacity'), hashtext(:t))"),
        {"t": target},
    )


def wait_for_capacity(
    session: Session, lease: Lease, *, reason: str, next_run_at: dt.datetime,
    now: dt.datetime, first: bool, worker: str,
) -> None:  # fmt: skip
    """Admission holds the batch back (``reason``: ``waiting_for_capacity: …``); it asks again
    at ``next_run_at``. The event is written when the wait begins, not at every look."""
    touch(
        session, lease, [_B.UPLOADED], release=True, next_run_at=next_run_at,
        waiting_since=sa.func.coalesce(Batch.waiting_since, now), waiting_reason=reason,
    )  # fmt: skip
    if first:
        _event(session, lease, "batch_waiting_for_capacity", worker=worker, reason=reason)


def begin_create(session: Session, lease: Lease, *, key: uuid.UUID, at: dt.datetime) -> None:
    """uploaded → creating: the intent, committed before ``POST /batches`` is sent. The first
    create of a batch's requests is when they were first sent (``first_sent_at``)."""
    move(
        session, lease, _B.CREATING, idempotency_key=key, create_attempted_at=at,
        create_attempts=Batch.create_attempts + 1, waiting_since=None, waiting_reason=None,
        first_sent_at=sa.func.coalesce(Batch.first_sent_at, at),
    )  # fmt: skip
    session.execute(sa.insert(CreateKey).values(key=key, batch_id=lease.id))
    _log_on_commit(session, "info", "batch_create_started", lease, idempotency_key=str(key))


def resend_create(session: Session, lease: Lease, *, at: dt.datetime) -> None:
    """A create is sent again with the same key (reconcile found no batch carrying it)."""
    touch(
        session, lease, [_B.CREATING], create_attempted_at=at,
        create_attempts=Batch.create_attempts + 1,
    )  # fmt: skip


def create_unseen(session: Session, lease: Lease, *, error: str, worker: str) -> None:
    """The create's outcome is unknown (timeout, 5xx, cut connection): stay in ``creating``, so
    that the next attempt starts by reconciling."""
    touch(session, lease, [_B.CREATING])
    _event(session, lease, "batch_create_ambiguous", level="warning", worker=worker, error=error)


def create_refused(session: Session, lease: Lease) -> None:
    """creating → uploaded: a definite refusal (4xx, 429, or not sent): nothing was created."""
    move(session, lease, _B.UPLOADED, idempotency_key=None)
    _log_on_commit(session, "info", "batch_create_refused", lease)


def mark_submitted(
    session: Session, lease: Lease, *, how: str, remote_batch_id: str, status: str,
    next_run_at: dt.datetime, remote: Mapping[str, Any], worker: str,
) -> None:  # fmt: skip
    """creating → submitted: the remote batch is ours (``how``: created, or adopted).

    RemoteIdTaken if another batch already has ``remote_batch_id``."""
    holder = session.execute(
        sa.select(Batch.id).where(Batch.remote_batch_id == remote_batch_id, Batch.id != lease.id)
    ).scalar_one_or_none()
    if holder is not None:
        raise RemoteIdTaken(
            f"the provider answered the create with batch id {remote_batch_id!r}, which batch "
            f"{holder} already has; ids must never repeat (did the provider or the emulator "
            "restart and re-issue ids?). This batch fails rather than being created again."
        )
    move(
        session, lease, _B.SUBMITTED, release=True, remote_batch_id=remote_batch_id,
        unchanged_polls=0, next_run_at=next_run_at, **RECOVERED, **remote,
    )  # fmt: skip
    _event(session, lease, f"batch_{how}", worker=worker, remote_batch_id=remote_batch_id,
           status=status)  # fmt: skip


def count_unknown_outcome(session: Session, lease: Lease) -> None:
    """A create found unsettled: counted once per unknown outcome, whatever caused it (on a
    target that cannot list, at most this many extra remote batches can exist)."""
    touch(session, lease, [_B.CREATING], ambiguous_creates=Batch.ambiguous_creates + 1)


def note(session: Session, lease: Lease, kind: str, *, worker: str, **fields: Any) -> None:
    """An event about a batch the caller holds in ``creating`` (a reconciliation's finding)."""
    touch(session, lease, [_B.CREATING])
    _event(session, lease, kind, level="warning", worker=worker, **fields)


def park_for_review(
    session: Session, lease: Lease, *, next_run_at: dt.datetime, worker: str
) -> None:
    """An unknown create on a target that cannot list, under policy ``pause``."""
    touch(
        session, lease, [_B.CREATING], release=True, next_run_at=next_run_at,
        last_error="create outcome unknown; waiting for an operator "
        "(orchestrator resolve BATCH --adopt ID | --recreate)",
    )  # fmt: skip
    _event(session, lease, "batch_create_needs_review", level="warning", worker=worker,
           hint="orchestrator resolve BATCH --adopt ID | --recreate")  # fmt: skip


def poll_recorded(
    session: Session, lease: Lease, *, next_run_at: dt.datetime, remote: Mapping[str, Any],
    changed: bool, worker: str, previous: str | None = None,
) -> None:  # fmt: skip
    """A poll of a batch still running: its status, and when to look again."""
    touch(session, lease, [_B.SUBMITTED], release=True, next_run_at=next_run_at, **remote)
    if changed:
        _event(session, lease, "batch_status_changed", worker=worker, previous=previous,
               status=remote["remote_status"], request_counts=remote["request_counts"])  # fmt: skip


def mark_ingesting(
    session: Session, lease: Lease, *, next_run_at: dt.datetime, remote: Mapping[str, Any],
    worker: str, error: str | None = None, remote_batch_id: str | None = None,
    previous: str | None = None,
) -> None:  # fmt: skip
    """submitted → ingesting: the provider is done; collect what it produced. With ``error``: it
    failed the batch for a passing reason, and every request goes into the next round."""
    values = {**remote, "last_error": error} if error else dict(remote)
    move(session, lease, _B.INGESTING, next_run_at=next_run_at, **values)
    if error:
        _event(session, lease, "batch_failed_retryable", level="warning", worker=worker,
               remote_batch_id=remote_batch_id, error=error)  # fmt: skip
    else:
        _event(session, lease, "batch_status_changed", worker=worker, previous=previous,
               status=remote["remote_status"], request_counts=remote["request_counts"])  # fmt: skip


def ingest_refreshed(session: Session, lease: Lease, *, remote: Mapping[str, Any]) -> None:
    """The batch object, asked for again before another try at reading its files (its file ids
    may have changed); its run of failures goes on until the files are read."""
    touch(session, lease, [_B.INGESTING], **remote)


def cancel_sent(
    session: Session, lease: Lease, *, at: dt.datetime, kind: str, worker: str, **fields: Any
) -> None:
    touch(session, lease, [_B.SUBMITTED], cancel_sent_at=at)
    _event(session, lease, kind, worker=worker, **fields)


def cancel_failed(
    session: Session, lease: Lease, *, retry_at: dt.datetime, error: str, worker: str
) -> None:
    """A remote cancel that did not go through (5xx, timeout): try again at ``retry_at``; the
    batch goes on being polled meanwhile."""
    touch(
        session, lease, [_B.SUBMITTED], cancel_attempts=Batch.cancel_attempts + 1,
        cancel_retry_at=retry_at,
    )  # fmt: skip
    _event(session, lease, "batch_cancel_failed", level="warning", worker=worker, error=error,
           retry_at=retry_at.isoformat())  # fmt: skip


def token_limited(
    session: Session, lease: Lease, *, remote_batch_id: str, remote: Mapping[str, Any],
    error: str, next_run_at: dt.datetime, worker: str, reason: str, now: dt.datetime,
    limit_tokens: int | None = None, limit_model: str | None = None,
) -> None:  # fmt: skip
    """submitted → uploaded: the enqueued-token limit says "later"; create it again from the
    same input file then (the requests do not use up an attempt), waiting for capacity. The
    event keeps the limit the provider stated, and for which model, when its message states
    them."""
    move(
        session, lease, _B.UPLOADED, release=True, remote_batch_id=None, idempotency_key=None,
        remote_status=None, remote=dict(remote), last_error=error, next_run_at=next_run_at,
        waiting_since=now, waiting_reason=reason,
    )  # fmt: skip
    _event(session, lease, "batch_token_limited", level="warning", worker=worker,
           remote_batch_id=remote_batch_id, error=error, limit_tokens=limit_tokens,
           limit_model=limit_model, retry_at=next_run_at.isoformat())  # fmt: skip


# A refusal of a batch created after the limit was learned, while our estimate said it fitted:
# our estimate runs low for this content, so the learned budget goes down by this much.
LEARNED_SHRINK = 0.9


def learn_limit(
    session: Session,
    *,
    target: str,
    model: str | None,
    tokens: int,
    message: str,
    created_at: dt.datetime | None,
    now: dt.datetime,
) -> tuple[int | None, int]:
    """Store the enqueued-token limit a provider stated for ``model`` on ``target``: the lowest
    one seen. A batch created (at ``created_at``) after a limit no higher was learned and
    refused all the same lowers it by a tenth instead. Returns (before, after)."""
    key = model or ""
    before = session.execute(
        sa.select(Capacity.learned_tokens, Capacity.learned_at)
        .where(Capacity.target == target, Capacity.model == key)
        .with_for_update()
    ).first()
    if before is None:
        after = tokens
    elif (
        before.learned_tokens <= tokens
        and created_at is not None
        and created_at > before.learned_at
    ):
        after = max(1, int(before.learned_tokens * LEARNED_SHRINK))
    else:
        after = min(before.learned_tokens, tokens)
    previous = None if before is None else int(before.learned_tokens)
    if previous != after:
        stmt = pg.insert(Capacity).values(
            target=target, model=key, learned_tokens=after, learned_at=now, message=message
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=[Capacity.target, Capacity.model],
                set_={"learned_tokens": after, "learned_at": now, "message": message},
            )
        )
        record(
            session, "capacity_learned", level="warning", target=target, model=key,
            limit_tokens=after, previous=previous, stated=tokens,
        )  # fmt: skip
    return previous, after


def reschedule(session: Session, lease: Lease, *, next_run_at: dt.datetime, **values: Any) -> None:
    """Give the lease back and run the batch's step again at ``next_run_at`` (a retry, a
    blocked target, a crash), in whatever open state it is."""
    touch(session, lease, OPEN_STATES, release=True, next_run_at=next_run_at, **values)


def throttle(
    session: Session, lease: Lease, *, target: str, until: dt.datetime, error: str,
    **values: Any,
) -> None:  # fmt: skip
    """A 429: nobody calls the target before ``until``; this batch waits until then."""
    block_target(session, target, until=until, reason=f"rate limited: {error}", paused=False)
    reschedule(session, lease, next_run_at=until, **values)
    _event(session, lease, "target_throttled", target=target, until=until.isoformat(),
           error=error)  # fmt: skip


def pause_target(
    session: Session, lease: Lease, *, target: str, until: dt.datetime, reason: str,
    **values: Any,
) -> None:  # fmt: skip
    """Bad credentials or account: the target's jobs wait; its key is tried again at ``until``."""
    block_target(session, target, until=until, reason=reason, paused=True)
    reschedule(session, lease, next_run_at=until, **values)
    _event(session, lease, "target_paused", level="error", target=target, error=reason,
           hint="jobs wait; they resume by themselves once the key works")  # fmt: skip


def reupload(
    session: Session, lease: Lease, *, now: dt.datetime, error: str, **values: Any
) -> None:
    """→ planned: the provider lost our input file; build and upload it again."""
    move(
        session, lease, _B.PLANNED, release=True, input_file_id=None, idempotency_key=None,
        next_run_at=now, **values,
    )  # fmt: skip
    _event(session, lease, "batch_reupload", error=error)


# -- batches: whole-batch transitions ---------------------------------------------------------


def fail_batch(
    session: Session,
    lease: Lease,
    *,
    now: dt.datetime,
    message: str,
    code: str | None = None,
    by_line: dict[int, dict[str, Any]] | None = None,
    **values: Any,
) -> None:
    """The batch failed as a whole: its requests get final failure results carrying ``message``
    (and ``code``; or, per input line, ``by_line``), the job's ``error`` says why, and the job
    ends ``failed``."""
    move(
        session, lease, BatchState.FAILED, release=True,
        **{**values, "last_error": message, "finished_at": now},
    )  # fmt: skip
    error = ln.batch_error(message, code)
    written = fail_requests(session, batch_id=lease.id, error=error, by_line=by_line)
    add_to_job(session, lease.job_id, failed=written, error=message)
    record(
        session,
        "batch_failed",
        level="error",
        job_id=lease.job_id,
        batch_id=lease.id,
        error=message,
        requests=written,
    )
    finish_job_if_done(session, lease.job_id, now)


def cancel_locally(session: Session, lease: Lease, *, now: dt.datetime, stage: str) -> None:
    """A batch of a cancelled job that never reached the provider: nothing to call."""
    move(session, lease, BatchState.CANCELLED, release=True, finished_at=now)
    record(session, "batch_cancelled", job_id=lease.job_id, batch_id=lease.id, stage=stage)
    finish_job_if_done(session, lease.job_id, now)


_NO_RESULT = (
    " NOT EXISTS (SELECT 1 FROM orchestrator.results r"
    " WHERE r.job_id = bi.job_id AND r.custom_id = bi.custom_id)"
)


def resubmit(session: Session, batch_id: int, now: dt.datetime) -> tuple[int, int] | None:
    """A new batch (next round) with the requests of ``batch_id`` that have no result yet.

    Each goes at its next attempt if the provider ran it in ``batch_id``, and at the same attempt
    if it never did (``batch_items.ran`` is false: its line said ``batch_expired``): a request
    the provider did not run has not used an attempt. Returns ``(new_batch_id, requests)``, or
    None when there is nothing to send again. The new batch is a subset of a batch that fitted
    the target's limits, so it fits too.
    """
    source = session.get_one(Batch, batch_id)
    count = session.execute(
        sa.text(
            "SELECT count(*) FROM orchestrator.batch_items bi WHERE bi.batch_id = :b AND"
            + _NO_RESULT
        ),
        {"b": batch_id},
    ).scalar_one()
    if not count:
        return None
    # its share of the source's estimate (reading every body again to count would cost more
    # than the estimate is worth)
    tokens = -(-source.estimated_tokens * count // max(source.request_count, 1))
    new_id = _new_batch(
        session, source.job_id, source, round_=source.round + 1, count=count, size=0, now=now,
        model=source.model, tokens=tokens,
        first_sent_at=source.first_sent_at or source.create_attempted_at,
    )  # fmt: skip
    session.execute(
        sa.text(
            "INSERT INTO orchestrator.batch_items (batch_id, custom_id, job_id, seq, attempt) "
            "SELECT :new, bi.custom_id, bi.job_id, bi.seq, "
            "bi.attempt + CASE WHEN bi.ran IS FALSE THEN 0 ELSE 1 END "
            "FROM orchestrator.batch_items bi WHERE bi.batch_id = :b AND" + _NO_RESULT
        ),
        {"new": new_id, "b": batch_id},
    )
    add_to_job(session, source.job_id, batches=1)
    record(
        session,
        "batch_resubmitted",
        job_id=source.job_id,
        batch_id=new_id,
        from_batch=batch_id,
        requests=count,
    )
    return new_id, count


def split(
    session: Session,
    lease: Lease,
    *,
    now: dt.datetime,
    max_tokens: int | None = None,
    **values: Any,
) -> list[int]:
    """Replace a batch by parts (same attempt numbers): two halves when the provider found it too
    large, or parts of at most ``max_tokens`` estimated tokens when it is over its model's
    enqueued-token budget."""
    source = session.get_one(Batch, lease.id)
    items = session.execute(
        sa.text(
            "SELECT bi.seq, ceil(octet_length(r.body::text) / 4.0)::bigint AS tokens "
            "FROM orchestrator.batch_items bi JOIN orchestrator.requests r "
            "ON r.job_id = bi.job_id AND r.custom_id = bi.custom_id "
            "WHERE bi.batch_id = :b ORDER BY bi.seq"
        ),
        {"b": lease.id},
    ).all()
    if max_tokens is None:
        half = len(items) // 2
        parts = [
            (items[0].seq, items[half - 1].seq, half, sum(i.tokens for i in items[:half])),
            (items[half].seq, items[-1].seq, len(items) - half,
             sum(i.tokens for i in items[half:])),
        ]  # fmt: skip
    else:
        one = Packer(max_requests=len(items), max_bytes=1 << 62, max_tokens=max_tokens)
        chunks = [c for c in (one.add(i.seq, 0, int(i.tokens)) for i in items) if c]
        chunks.append(one.finish())  # type: ignore[arg-type]
        parts = [(c.first_seq, c.last_seq, c.count, c.tokens) for c in chunks]
    new_ids = []
    for first, last, count, tokens in parts:
        new_id = _new_batch(
            session, source.job_id, source, round_=source.round, count=count, size=0, now=now,
            model=source.model, tokens=int(tokens), first_sent_at=source.first_sent_at,
        )  # fmt: skip
        session.execute(
            sa.text(
                "INSERT INTO orchestrator.batch_items (batch_id, custom_id, job_id, seq, attempt) "
                "SELECT :new, custom_id, job_id, seq, attempt FROM orchestrator.batch_items "
                "WHERE batch_id = :b AND seq BETWEEN :first AND :last"
            ),
            {"new": new_id, "b": lease.id, "first": first, "last": last},
        )
        new_ids.append(new_id)
    move(
        session, lease, BatchState.SUPERSEDED, release=True, finished_at=now, waiting_since=None,
        waiting_reason=None, **values,
    )  # fmt: skip
    add_to_job(session, source.job_id, batches=len(new_ids) - 1)
    record(
        session,
        "batch_split",
        level="warning",
        job_id=source.job_id,
        batch_id=lease.id,
        into=new_ids,
        requests=len(items),
        max_tokens=max_tokens,
    )
    return new_ids


def finish_ingest(
    session: Session,
    lease: Lease,
    *,
    now: dt.datetime,
    counts: Mapping[str, int],
    cost: Decimal | None,
    cost_source: str | None,
    upserted: bool,
    retry: int,
    worker: str,
    summary: Mapping[str, int],
    give_up: str | None = None,
) -> tuple[int, int] | None:
    """Close an ingested batch (``ingesting → done``) in the transaction that wrote its results:
    its counters, the job's, the event, the next round for what is to be sent again, and the job's
    end if this was its last open batch. Returns the resubmitted ``(batch id, requests)``.

    ``give_up``: the files stayed short of what the provider counts for the whole patience. What
    they hold is kept all the same (a success is never thrown away), the batch's other requests get
    final failures carrying ``give_up``, nothing is sent again, and the batch fails with it (the
    job's error; ``orchestrator reingest`` collects more if the provider mends its files)."""
    cost = as_stored(cost)
    rest = 0
    if give_up is not None:
        error = ln.batch_error(give_up, PATIENCE_EXHAUSTED)
        rest = fail_requests(session, batch_id=lease.id, error=error)
        counts = {**counts, "failed_count": counts["failed_count"] + rest, "retried_count": 0}
    move(
        session,
        lease,
        BatchState.DONE if give_up is None else BatchState.FAILED,
        release=True,
        finished_at=now,
        cost=cost,
        cost_source=cost_source,
        **(RECOVERED if give_up is None else {"last_error": give_up}),
        **counts,
    )
    if upserted:
        recount_job(session, lease.job_id)
        add_to_job(session, lease.job_id, cost=cost, error=give_up)
    else:
        add_to_job(
            session,
            lease.job_id,
            succeeded=counts["succeeded_count"],
            failed=counts["failed_count"],
            prompt_tokens=counts["prompt_tokens"],
            completion_tokens=counts["completion_tokens"],
            total_tokens=counts["total_tokens"],
            cost=cost,
            error=give_up,
        )
    detail: dict[str, Any] = {"worker": worker, "cost": cost, **summary}
    record(session, "batch_ingested", job_id=lease.job_id, batch_id=lease.id, **detail)
    if give_up is not None:
        record(
            session, "batch_failed", level="error", job_id=lease.job_id, batch_id=lease.id,
            error=give_up, requests=rest,
        )  # fmt: skip
    again = resubmit(session, lease.id, now) if retry and give_up is None else None
    finish_job_if_done(session, lease.job_id, now)
    return again


# -- costs ------------------------------------------------------------------------------------


class ModelUsage(NamedTuple):
    """One model's row of ``batch_model_costs``: its tokens, and its cost at our prices (None
    when no price is in force)."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal | None


class ModelCosts(NamedTuple):
    """A batch's cost at our prices: None unless every model with tokens has a price in force;
    and what each model used."""

    cost: Decimal | None
    unpriced: list[str]
    models: list[ModelUsage]


class ModelTotals(NamedTuple):
    """What one model's results of a batch add up to (a row of ``batch_model_costs`` before
    its price)."""

    model: str
    results: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int


def _attribute_models(session: Session, batch_id: int) -> None:
    session.execute(
        sa.text(
            """
            UPDATE orchestrator.results r SET model = q.body ->> 'model'
              FROM orchestrator.requests q
             WHERE r.batch_id = :b AND r.model IS NULL
               AND q.job_id = r.job_id AND q.custom_id = r.custom_id
            """
        ),
        {"b": batch_id},
    )


# A batch's results per model: summed from the table, or as ingest summed them (the same columns).
_RESULTS_PER_MODEL = """
    SELECT COALESCE(r.model, '') AS model, count(*) AS results,
           sum(r.prompt_tokens) AS prompt, sum(r.completion_tokens) AS completion,
           sum(r.cached_tokens) AS cached, sum(r.reasoning_tokens) AS reasoning,
           sum(r.total_tokens) AS total
      FROM orchestrator.results r WHERE r.batch_id = :b
     GROUP BY 1
"""
_GIVEN_PER_MODEL = """
    SELECT * FROM unnest(CAST(:model AS text[]), CAST(:results AS bigint[]),
                         CAST(:prompt_tokens AS bigint[]), CAST(:completion_tokens AS bigint[]),
                         CAST(:cached_tokens AS bigint[]), CAST(:reasoning_tokens AS bigint[]),
                         CAST(:total_tokens AS bigint[]))
           AS g(model, results, prompt, completion, cached, reasoning, total)
"""


def record_model_costs(
    session: Session,
    *,
    batch_id: int,
    target: str,
    at: dt.datetime,
    totals: Sequence[ModelTotals] | None = None,
) -> ModelCosts:
    """Per model of the batch's results: tokens, the price in force at ``at`` (when the batch
    finished) and the cost at that price, in ``batch_model_costs``. Results without a model (a
    failure the provider did not attribute) take the model their request asked for. With
    ``totals`` (ingest summed what it wrote, every result with its model), the results are not
    read again."""
    given: dict[str, Any] = {}
    if totals is None:
        _attribute_models(session, batch_id)
    else:
        given = queries.unnest_params(totals, ModelTotals._fields)
    per_model = _RESULTS_PER_MODEL if totals is None else _GIVEN_PER_MODEL
    result = session.execute(
        sa.text(
            f"""
            INSERT INTO orchestrator.batch_model_costs AS m
                   (batch_id, model, price_id, results, prompt_tokens, completion_tokens,
                    cached_tokens, reasoning_tokens, total_tokens, cost)
            SELECT :b, t.model, p.id, t.results, t.prompt, t.completion, t.cached, t.reasoning,
                   t.total, orchestrator.token_cost(p, t.prompt, t.cached, t.completion)
              FROM ({per_model}) t
              LEFT JOIN LATERAL orchestrator.price_in_force(:target, t.model, :at) p ON true
            ON CONFLICT (batch_id, model) DO UPDATE SET
                price_id = EXCLUDED.price_id, results = EXCLUDED.results,
                prompt_tokens = EXCLUDED.prompt_tokens,
                completion_tokens = EXCLUDED.completion_tokens,
                cached_tokens = EXCLUDED.cached_tokens,
                reasoning_tokens = EXCLUDED.reasoning_tokens,
                total_tokens = EXCLUDED.total_tokens, cost = EXCLUDED.cost
            RETURNING m.model, m.cost, m.total_tokens, m.prompt_tokens, m.completion_tokens
            """
        ),
        {"b": batch_id, "target": target, "at": at, **given},
    )
    rows = sorted(result.all(), key=lambda row: str(row.model))
    unpriced = sorted(row.model for row in rows if row.cost is None and row.total_tokens)
    priced = [row.cost for row in rows if row.cost is not None]
    models = [
        ModelUsage(row.model, row.prompt_tokens or 0, row.completion_tokens or 0, row.cost)
        for row in rows
    ]
    if unpriced or not priced:
        return ModelCosts(None, unpriced, models)
    return ModelCosts(sum(priced, Decimal(0)), [], models)


# -- results ----------------------------------------------------------------------------------


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
            INSERT INTO orchestrator.results ({RESULT_COLUMNS})
            SELECT bi.job_id, bi.custom_id, bi.batch_id, bi.attempt, false, NULL, NULL,
                   COALESCE(v.error::jsonb, CAST(:error AS jsonb)),
                   (SELECT q.body ->> 'model' FROM orchestrator.requests q
                     WHERE q.job_id = bi.job_id AND q.custom_id = bi.custom_id),
                   0, 0, 0, 0, 0
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


STAGING = "ingest_staging"


def create_result_staging(session: Session) -> str:
    """A temporary table shaped like ``results`` (dropped at commit); returns its name."""
    session.execute(
        sa.text(
            f"CREATE TEMP TABLE {STAGING} (LIKE orchestrator.results INCLUDING DEFAULTS) "
            "ON COMMIT DROP"
        )
    )
    return STAGING


def upsert_results_from_staging(session: Session) -> None:
    """Re-ingested rows: a success is never overwritten, and a failure only by another batch's
    row or by a success."""
    session.execute(sa.text(
        f"""
        INSERT INTO orchestrator.results ({RESULT_COLUMNS})
        SELECT {RESULT_COLUMNS} FROM {STAGING}
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
    ))  # fmt: skip


class Retry(NamedTuple):
    """A request of an ingested batch to be sent again: the error it ended with (JSON text), and
    whether the provider ran it (False: it never did, and it used no attempt)."""

    error: str
    ran: bool


def note_retry_errors(session: Session, batch_id: int, retry: Mapping[str, Retry]) -> None:
    """Keep, on each batch item to be sent again, the retryable error it ended with and whether
    the provider ran it (what the next round's attempt number follows: ``resubmit``)."""
    if not retry:
        return
    session.execute(
        sa.text(
            """
            UPDATE orchestrator.batch_items bi SET error = v.error::jsonb, ran = v.ran
              FROM unnest(CAST(:ids AS text[]), CAST(:errors AS text[]), CAST(:ran AS boolean[]))
                   AS v(custom_id, error, ran)
             WHERE bi.batch_id = :b AND bi.custom_id = v.custom_id
            """
        ),
        {
            "b": batch_id,
            "ids": list(retry),
            "errors": [r.error for r in retry.values()],
            "ran": [r.ran for r in retry.values()],
        },
    )


# -- targets ----------------------------------------------------------------------------------


def block_target(
    session: Session, target: str, *, until: dt.datetime, reason: str, paused: bool
) -> None:
    """Nobody calls ``target`` before ``until``. A later deadline always wins."""
    stmt = pg.insert(TargetState).values(
        target=target, blocked_until=until, paused=paused, reason=reason
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[TargetState.target],
        set_={
            "blocked_until": sa.func.greatest(
                TargetState.blocked_until, stmt.excluded.blocked_until
            ),
            "paused": stmt.excluded.paused,
            "reason": stmt.excluded.reason,
            "updated_at": sa.func.now(),
        },
    )
    session.execute(stmt)


def clear_pause(session: Session, target: str) -> bool:
    """A call to the target worked: lift an auth/account pause. True if one was lifted."""
    result = session.execute(
        sa.update(TargetState)
        .where(TargetState.target == target, TargetState.paused.is_(True))
        .values(paused=False, reason=None, updated_at=sa.func.now())
    )
    lifted = bool(result.rowcount)  # type: ignore[attr-defined]
    if lifted:
        record(session, "target_resumed", level="warning", target=target)
    return lifted


def forget_capacity(session: Session, *, target: str, model: str) -> Capacity | None:
    """Delete the limit learned for ``model`` on ``target`` (``orchestrator capacity --forget``:
    the provider raised it), with an event that keeps what it was; None if none was learned.
    Admission goes back to the configured budget, and learns again if the provider refuses."""
    forgotten = session.execute(
        sa.delete(Capacity)
        .where(Capacity.target == target, Capacity.model == model)
        .returning(Capacity)
    ).scalar_one_or_none()
    if forgotten is not None:
        record(
            session,
            "capacity_forgotten",
            target=target,
            model=model,
            learned_tokens=forgotten.learned_tokens,
            learned_at=forgotten.learned_at.isoformat(),
            message=forgotten.message,
        )
    return forgotten


# The per-minute call cap (``max_calls_per_minute``): the target's row counts the calls of one
# minute, ``calls_minute`` (its start, on the daemons' clocks), for every daemon together. A
# minute later than the one counted starts again at 1; a minute earlier (a daemon whose clock is
# behind) counts toward the later one, so a lagging clock cannot reset the count and let a
# second ``cap`` calls through in the same minute. Cap 0: no permit at all (no row is made).
_CALL_PERMIT = sa.text(
    """
    INSERT INTO orchestrator.target_state AS t (target, calls_minute, calls_in_minute)
    SELECT CAST(:target AS text), CAST(:minute AS timestamptz), 1 WHERE :cap >= 1
    ON CONFLICT (target) DO UPDATE
       SET calls_minute = GREATEST(t.calls_minute, EXCLUDED.calls_minute),
           calls_in_minute = CASE WHEN t.calls_minute >= EXCLUDED.calls_minute
                                  THEN t.calls_in_minute + 1 ELSE 1 END
     WHERE t.calls_minute IS NULL OR t.calls_minute < EXCLUDED.calls_minute
        OR t.calls_in_minute < :cap
    RETURNING t.calls_in_minute
    """
)


def take_call_permit(session: Session, target: str, *, minute: dt.datetime, cap: int) -> int | None:
    """One call to ``target`` in the minute that starts at ``minute``, if fewer than ``cap`` were
    made in it: the call's number in its minute (1 to ``cap``), or None when none is left.

    One statement: the upsert locks the target's row until the caller's (short) transaction
    ends, so daemons taking permits at the same moment queue on it and none sees a stale count."""
    row = session.execute(_CALL_PERMIT, {"target": target, "minute": minute, "cap": cap})
    return row.scalar_one_or_none()


def call_cap_reached(session: Session, target: str, *, until: dt.datetime, cap: int) -> bool:
    """Nobody calls ``target`` before ``until`` (the next minute): its ``cap`` calls of this
    minute are used up. The block is the one a 429 sets (``blocked_until``), so claims skip the
    target's batches meanwhile and ``status`` shows it throttled, with its reason; the
    rate-limited gauge does not count it (a 429 is the provider's doing, the cap is ours). A
    pause (bad key) stays a pause, with its own reason. True for the one caller that set this
    block: it records ``target_call_cap_reached`` (once per block, whichever daemon and however
    many calls met it)."""
    reason = f"{CALL_CAP_REASON}max_calls_per_minute = {cap} reached"
    stmt = pg.insert(TargetState).values(target=target, blocked_until=until, reason=reason)
    upsert = stmt.on_conflict_do_update(
        index_elements=[TargetState.target],
        set_={
            "blocked_until": stmt.excluded.blocked_until,
            "reason": sa.case((TargetState.paused, TargetState.reason), else_=stmt.excluded.reason),
            "updated_at": sa.func.now(),
        },
        where=sa.or_(TargetState.blocked_until.is_(None), TargetState.blocked_until < until),
    ).returning(TargetState.target)
    blocked = session.execute(upsert).scalar_one_or_none() is not None
    if blocked:
        record(
            session, "target_call_cap_reached", target=target, max_calls_per_minute=cap,
            until=until.isoformat(),
        )  # fmt: skip
    return blocked


# -- workers ----------------------------------------------------------------------------------


def register_worker(
    session: Session, *, worker_id: uuid.UUID, hostname: str, pid: int, version: str
) -> None:
    session.execute(
        sa.insert(Worker).values(
            id=worker_id,
            hostname=hostname,
            pid=pid,
            version=version,
            started_at=sa.func.now(),
            heartbeat_at=sa.func.now(),
        )
    )


def heartbeat_worker(session: Session, worker_id: uuid.UUID) -> None:
    session.execute(
        sa.update(Worker).where(Worker.id == worker_id).values(heartbeat_at=sa.func.now())
    )


def stop_worker(session: Session, worker_id: uuid.UUID) -> None:
    session.execute(
        sa.update(Worker)
        .where(Worker.id == worker_id)
        .values(stopped_at=sa.func.now(), heartbeat_at=sa.func.now())
    )


# -- orphans ----------------------------------------------------------------------------------
# Remote batches that carry one of our create keys but that no batch adopted. Not a state change
# of any batch (no lease is involved): a record of its own, and a counter on the batch that sent
# the key.


def begin_orphan_sweep(
    session: Session, target: str, *, now: dt.datetime, every: float, force: bool = False
) -> bool:
    """Take this round of ``target``'s orphan sweep: True unless another daemon swept it less than
    ``every`` seconds ago (``force``: sweep anyway, as at start-up)."""
    stmt = pg.insert(TargetState).values(target=target, orphans_swept_at=now)
    due = sa.or_(
        TargetState.orphans_swept_at.is_(None),
        TargetState.orphans_swept_at <= now - dt.timedelta(seconds=every),
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=[TargetState.target],
        set_={"orphans_swept_at": stmt.excluded.orphans_swept_at},
        where=None if force else due,
    ).returning(TargetState.target)
    return session.execute(upsert).scalar_one_or_none() is not None


def orphan_found(
    session: Session, *, remote_batch_id: str, target: str, batch_id: int, job_id: int,
    status: str,
) -> bool:  # fmt: skip
    """Record an orphan (once; an event the first time). True if it still needs cancelling."""
    stmt = pg.insert(OrphanBatch).values(
        remote_batch_id=remote_batch_id, target=target, batch_id=batch_id, remote_status=status
    )
    inserted: sa.ColumnElement[bool] = sa.literal_column("xmax = 0", sa.Boolean)
    upsert = stmt.on_conflict_do_update(
        index_elements=[OrphanBatch.remote_batch_id],
        set_={"remote_status": stmt.excluded.remote_status},
    ).returning(inserted.label("inserted"), OrphanBatch.cancelled_at)
    row = session.execute(upsert).one()
    if row.inserted:
        record(
            session, "batch_orphan_found", level="warning", job_id=job_id, batch_id=batch_id,
            remote_batch_id=remote_batch_id, status=status, target=target,
            hint="a create carried out after we had given up on it; it is cancelled",
        )  # fmt: skip
    return row.cancelled_at is None


def orphan_cancelled(
    session: Session, *, remote_batch_id: str, target: str, batch_id: int, job_id: int
) -> bool:
    """The orphan's cancel went through: counted once on its batch. False if already counted."""
    done = session.execute(
        sa.update(OrphanBatch)
        .where(OrphanBatch.remote_batch_id == remote_batch_id, OrphanBatch.cancelled_at.is_(None))
        .values(cancelled_at=sa.func.now(), last_error=None)
        .returning(OrphanBatch.remote_batch_id)
    ).scalar_one_or_none()
    if done is None:
        return False
    session.execute(
        sa.update(Batch)
        .where(Batch.id == batch_id)
        .values(orphans_cancelled=Batch.orphans_cancelled + 1, updated_at=sa.func.now())
    )
    record(
        session, "batch_orphan_cancelled", level="warning", job_id=job_id, batch_id=batch_id,
        remote_batch_id=remote_batch_id, target=target,
    )  # fmt: skip
    return True


def orphan_cancel_failed(session: Session, *, remote_batch_id: str, error: str) -> None:
    """The cancel did not go through; the next sweep tries again."""
    session.execute(
        sa.update(OrphanBatch)
        .where(OrphanBatch.remote_batch_id == remote_batch_id)
        .values(last_error=error[:2000])
    )


# -- retention --------------------------------------------------------------------------------
# The deletes of history (orchestrator/retention.py frames them). Each statement removes at most
# ``limit`` rows, and the caller commits each in a transaction of its own, so no delete holds
# locks for long or makes a giant transaction. Events and workers are chosen with FOR UPDATE SKIP
# LOCKED: daemons sweeping at the same moment share the rows out and never wait for each other.
# A finished job goes only with ``cleanup --jobs-older-than``, and every statement that deletes
# its rows checks again that it is finished, older than the cutoff and has no open batch.

_OPEN_BATCH_STATES = ", ".join(f"'{s}'" for s in OPEN_STATES)
_JOB_TERMINAL_STATES = ", ".join(f"'{s.value}'" for s in sorted(JOB_TERMINAL))
# The job :job may go: finished before :before, with no batch still open.
_JOB_MAY_GO = f"""
    EXISTS (SELECT 1 FROM orchestrator.jobs j
             WHERE j.id = :job AND j.status IN ({_JOB_TERMINAL_STATES})
               AND j.finished_at < :before
               AND NOT EXISTS (SELECT 1 FROM orchestrator.batches ob
                                WHERE ob.job_id = j.id AND ob.state IN ({_OPEN_BATCH_STATES})))
"""
# One chunk of a finished job's rows, per table, in the order retention deletes them: results
# (the bulk), the batch items, the requests (whose foreign keys then find no batch item left to
# cascade to), the events.
#
# Every bounded delete here is ``key = ANY(ARRAY(SELECT key ... LIMIT n))``: the array is
# computed once and the rows are then fetched by their index. The plainer ``key IN (SELECT ...
# LIMIT n)`` is planned as a hash semi-join over a sequential scan of the whole table (measured:
# 389 ms for 5,000 of a million events, against 26 ms), on every statement of the sweep.
_JOB_CHUNK_SQL = {
    "results": f"""
        DELETE FROM orchestrator.results WHERE job_id = :job AND custom_id = ANY(ARRAY(
            SELECT custom_id FROM orchestrator.results
             WHERE job_id = :job AND {_JOB_MAY_GO} LIMIT :limit))
    """,
    "batch_items": f"""
        DELETE FROM orchestrator.batch_items WHERE ctid = ANY(ARRAY(
            SELECT bi.ctid FROM orchestrator.batch_items bi
             WHERE bi.batch_id IN (SELECT id FROM orchestrator.batches WHERE job_id = :job)
               AND {_JOB_MAY_GO} LIMIT :limit))
    """,
    "requests": f"""
        DELETE FROM orchestrator.requests WHERE job_id = :job AND custom_id = ANY(ARRAY(
            SELECT custom_id FROM orchestrator.requests
             WHERE job_id = :job AND {_JOB_MAY_GO} LIMIT :limit))
    """,
    "events": f"""
        DELETE FROM orchestrator.events WHERE id = ANY(ARRAY(
            SELECT id FROM orchestrator.events
             WHERE job_id = :job AND {_JOB_MAY_GO} ORDER BY id LIMIT :limit))
    """,
}
JOB_CHUNK_TABLES = tuple(_JOB_CHUNK_SQL)


def _deleted(session: Session, sql: str, **params: Any) -> int:
    result = session.execute(sa.text(sql), params)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def delete_old_events(session: Session, *, before: dt.datetime, limit: int) -> int:
    """Up to ``limit`` of the oldest events from before ``before`` (found by ``ix_events_at``),
    whatever their job: the events are the audit trail, nothing decides anything from them."""
    return _deleted(
        session,
        """
        DELETE FROM orchestrator.events WHERE id = ANY(ARRAY(
            SELECT id FROM orchestrator.events WHERE at < :before
             ORDER BY at LIMIT :limit FOR UPDATE SKIP LOCKED))
        """,
        before=before,
        limit=limit,
    )


def delete_old_workers(session: Session, *, before: dt.datetime, limit: int) -> int:
    """Up to ``limit`` worker rows not heard from since ``before``: daemons that stopped (their
    last heartbeat is their stop) or died. A live daemon heartbeats every third of a lease."""
    return _deleted(
        session,
        """
        DELETE FROM orchestrator.workers WHERE id = ANY(ARRAY(
            SELECT id FROM orchestrator.workers WHERE heartbeat_at < :before
             ORDER BY heartbeat_at LIMIT :limit FOR UPDATE SKIP LOCKED))
        """,
        before=before,
        limit=limit,
    )


def delete_job_chunk(
    session: Session, table: str, job_id: int, *, before: dt.datetime, limit: int
) -> int:
    """Up to ``limit`` rows of ``table`` (one of :data:`JOB_CHUNK_TABLES`) of a job finished
    before ``before`` with no open batch; none if the job is not (or no longer) such a job."""
    return _deleted(session, _JOB_CHUNK_SQL[table], job=job_id, before=before, limit=limit)


def delete_finished_job(session: Session, job_id: int, *, before: dt.datetime) -> tuple[int, int]:
    """The job's batches (their create keys, orphans and costs per model go with them), then the
    job: ``(batches, jobs)`` deleted, ``(0, 0)`` unless it is finished before ``before`` with no
    open batch. Its bulk (results, batch items, requests, events) is gone first, in chunks
    (:func:`delete_job_chunk`): what is left here is a few rows, and the ``jobs_delete_rows``
    trigger (migration 0005) finds no results or events left to take with it."""
    batches = _deleted(
        session,
        f"DELETE FROM orchestrator.batches WHERE job_id = :job AND {_JOB_MAY_GO}",
        job=job_id,
        before=before,
    )
    jobs = _deleted(
        session,
        f"DELETE FROM orchestrator.jobs WHERE id = :job AND {_JOB_MAY_GO}",
        job=job_id,
        before=before,
    )
    return batches, jobs


def provider_files_deleted(
    session: Session,
    *,
    job_id: int,
    batch_id: int,
    target: str,
    file_ids: list[str],
    already_gone: list[str],
) -> None:
    """The batch's files were deleted at the provider after its ingest (retention): ``file_ids``
    by us now, ``already_gone`` found deleted (404) before we asked."""
    record(
        session,
        "provider_files_deleted",
        job_id=job_id,
        batch_id=batch_id,
        target=target,
        file_ids=file_ids,
        already_gone=already_gone,
    )
