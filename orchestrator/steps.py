"""The effectful steps, one per local batch state: read (short transaction) → one remote call
(no transaction open) → fenced write (short transaction).

Each step returns True when the batch should go straight on to its next step under the same
lease, False when it was rescheduled (and its lease given back). API failures are not handled here:
they propagate to the runner, which classifies them (``domain/decide.py``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import structlog

from orchestrator import memory, retention
from orchestrator.api.client import BatchApiClient
from orchestrator.api.errors import (
    ApiBadRequest,
    ApiClientError,
    ApiError,
    ApiIncompleteOutput,
    ApiNotFound,
)
from orchestrator.api.schemas import BatchObject
from orchestrator.clock import from_unix
from orchestrator.config import TargetConfig
from orchestrator.db import ledger, queries
from orchestrator.db.queries import Claimed
from orchestrator.db.session import Session, unit_of_work
from orchestrator.deps import Deps
from orchestrator.domain import backoff, capacity
from orchestrator.domain import cost as costs
from orchestrator.domain import lines as ln
from orchestrator.domain import requests as rq
from orchestrator.domain.decide import (
    PATIENCE_EXHAUSTED,
    ErrorKind,
    Step,
    duration,
    gave_up,
    patience_spent,
)
from orchestrator.domain.states import BatchState, RemoteStatus, remote_terminal
from orchestrator.errors import RemoteIdTaken
from orchestrator.ingest import ingest_lines

log = structlog.get_logger(__name__)

StepFn = Callable[[Deps, Claimed], bool]
# Batch-level failure codes that say "not now" rather than "never" (the requests are sent again).
RETRYABLE_BATCH_CODES = frozenset(
    {"rate_limit_exceeded", "server_error", "internal_error", "service_unavailable", "timeout"}
)
# How far back to look through the target's batch list for a create we are unsure of.
RECONCILE_LOOKBACK = dt.timedelta(hours=2)


def _worker(deps: Deps) -> str:
    return str(deps.worker_id)


def _cancel_if_requested(deps: Deps, b: Claimed, stage: str) -> bool:
    if not b.job_cancel_requested:
        return False
    with unit_of_work(deps.sessions) as s:
        ledger.cancel_locally(s, b, now=deps.clock.now(), stage=stage)
    return True


# A step run later than this after it was due was not tried meanwhile (no daemon ran it: all
# stopped, or down): that time does not count against the batch's patience.
LATE_SECONDS = 300.0


def failing_since(b: Claimed, now: dt.datetime) -> dt.datetime | None:
    """When the batch's current run of failures began, as its patience counts it: moved forward
    by the time its retry waited past when it was due (beyond ``LATE_SECONDS``), so that the
    patience counts only time in which a daemon kept trying. Without it, a daemon back from an
    outage longer than the patience would give a batch up at its first try, files and all."""
    if b.failing_since is None or b.next_run_at is None:
        return b.failing_since
    late = (now - b.next_run_at).total_seconds() - LATE_SECONDS
    if late <= 0:
        return b.failing_since
    return min(b.failing_since + dt.timedelta(seconds=late), now)


def given_up(step: Step, message: str, b: Claimed) -> str:
    """The error of a batch given up after its patience (the job's ``error``): the step, how long
    it failed, the last failure, and how to collect later what the provider produced."""
    text = f"{step} failed: {message}"
    if b.remote_batch_id:
        text += (
            f"; what the provider produced for batch {b.remote_batch_id} can be collected later "
            f"with: orchestrator reingest {b.id}"
        )
    return text


# -- planned → uploaded ------------------------------------------------------------------


def upload(deps: Deps, b: Claimed) -> bool:
    """Build the batch's JSONL while it is sent: its size first (from the bodies' sizes, none
    read), then a page of bodies at a time, each read in a short transaction of its own, turned
    into lines and sent before the next is read. No transaction is open while bytes are sent,
    and no file is spooled."""
    if _cancel_if_requested(deps, b, "planned"):
        return False
    target = deps.settings.target(b.target)
    heads = rq.LineHeads(endpoint=b.endpoint, include_provider=target.requires_provider)
    with unit_of_work(deps.sessions) as s:
        reader = queries.BatchReader(
            s, b.id, prefetched=lambda job, first, last: deps.prefetch.take((job, first, last))
        )
    size, count = _measure(reader, heads), len(reader.items)
    uploaded = deps.clients(b.target).upload(
        _lines(deps, reader, heads), size=size, filename=f"batch-{b.id}-round-{b.round}.jsonl"
    )
    # Pages of up to 32 MB leave freed memory that the allocator keeps; give it back, so that an
    # idle daemon does not hold it.
    memory.release()
    with unit_of_work(deps.sessions) as s:
        ledger.mark_uploaded(
            s,
            b,
            file_id=uploaded.id,
            size=size,
            requests=count,
            next_run_at=deps.clock.now(),
            worker=_worker(deps),
        )
    return True


def _measure(reader: queries.BatchReader, heads: rq.LineHeads) -> int:
    """The bytes of the batch's JSONL, from the bodies' sizes (none read)."""
    head = heads.head
    return sum(
        rq.line_size(head(cid, provider, method, url), body_bytes)
        for _, body_bytes, cid, provider, method, url in reader.items
    )


def _lines(deps: Deps, reader: queries.BatchReader, heads: rq.LineHeads) -> Iterator[bytes]:
    """The batch's JSONL, a page of lines at a time; a body larger than a page in slices, so that
    none is held whole. Each read is its own transaction, closed before its bytes go out."""
    line_head, end = heads.head, rq.LINE_END
    for page in reader.pages():
        with unit_of_work(deps.sessions) as s:
            rows = reader.read(s, page)
        parts: list[bytes] = []
        for r in rows:
            head = line_head(r.custom_id, r.provider, r.method, r.url)
            if r.body is None:
                yield b"".join(parts)
                parts.clear()
                yield head
                for start in range(0, r.body_bytes, queries.PAGE_BYTES):
                    with unit_of_work(deps.sessions) as s:
                        piece = queries.body_slice(s, r, start, queries.PAGE_BYTES)
                    yield piece
                    del piece  # not held while the next slice is read
                yield end
            else:
                parts += (head, r.body, end)
        rows.clear()
        yield b"".join(parts)
        parts.clear()


# -- uploaded → creating → submitted -----------------------------------------------------


def create(deps: Deps, b: Claimed) -> bool:
    if _cancel_if_requested(deps, b, "uploaded"):
        return False
    key = uuid.uuid4()
    now = deps.clock.now()
    target = deps.settings.target(b.target)
    with unit_of_work(deps.sessions) as s:
        decision = _admission(s, b, target)
        match decision:
            case capacity.Admit():
                # The intent, committed before anything is sent.
                ledger.begin_create(s, b, key=key, at=now)
            case capacity.Wait(reason=reason):
                again = now + dt.timedelta(seconds=target.capacity_recheck_seconds)
                ledger.wait_for_capacity(
                    s, b, reason=reason, next_run_at=again, now=now,
                    first=b.waiting_since is None, worker=_worker(deps),
                )  # fmt: skip
            case capacity.Split(max_tokens=max_tokens):
                ledger.split(s, b, now=now, max_tokens=max_tokens)
    if not isinstance(decision, capacity.Admit):
        return False
    intent = dataclasses.replace(
        b, state=BatchState.CREATING, idempotency_key=key, create_attempted_at=now
    )
    return send_create(deps, intent)


def _admission(s: Session, b: Claimed, target: TargetConfig) -> capacity.Admission:
    """May ``b`` be created now (``domain/capacity.py``)? Without a budget for its model or a
    cap on the target there is nothing to count, and nothing is locked."""
    learned = queries.learned_limit(s, b.target, b.model)
    budget = capacity.budget_in_force(target.configured_budget(b.model), learned)
    if budget is None and target.max_batches_in_flight is None:
        return capacity.Admit()
    ledger.lock_capacity(s, b.target)
    load = queries.admission_load(s, batch_id=b.id, target=b.target, model=b.model)
    return capacity.admit(
        model=b.model,
        tokens=b.estimated_tokens,
        requests=b.request_count,
        load=load,
        budget=budget.tokens if budget else None,
        max_batches=target.max_batches_in_flight,
    )


def send_create(deps: Deps, b: Claimed) -> bool:
    """POST /batches for a batch whose intent (state ``creating``, key) is committed."""
    assert b.input_file_id is not None
    assert b.idempotency_key is not None
    try:
        created = deps.clients(b.target).create_batch(
            input_file_id=b.input_file_id,
            endpoint=b.endpoint,
            completion_window=b.job_completion_window,
            metadata={
                "orchestrator_key": str(b.idempotency_key),
                "orchestrator_job": str(b.job_id),
                "orchestrator_batch": str(b.id),
            },
        )
    except ApiError as exc:
        _record_failed_create(deps, b, exc)
        raise
    adopt(deps, b, created, how="created")
    return False


def _record_failed_create(deps: Deps, b: Claimed, exc: ApiError) -> None:
    """Was the batch created or not? The runner then decides when to try again."""
    ambiguous = exc.kind is ErrorKind.TRANSIENT
    with unit_of_work(deps.sessions) as s:
        if ambiguous:
            # Timeout, 5xx, broken connection, unreadable answer: it may exist. Stay in
            # 'creating', so that the next attempt starts by reconciling.
            ledger.create_unseen(s, b, error=exc.message, worker=_worker(deps))
        else:
            # A definite refusal (4xx, 429, or not sent at all): nothing was created.
            ledger.create_refused(s, b)
    if ambiguous:
        deps.metrics.ambiguous_creates.labels(b.target).inc()


def adopt(deps: Deps, b: Claimed, remote: BatchObject, *, how: str) -> None:
    now = deps.clock.now()
    try:
        with unit_of_work(deps.sessions) as s:
            ledger.mark_submitted(
                s,
                b,
                how=how,
                remote_batch_id=remote.id,
                status=remote.status,
                next_run_at=deps.poll_schedule.next_poll(
                    now=now, unchanged_polls=0, rng=deps.rng, polls=0
                ),
                remote=_remote_fields(remote),
                worker=_worker(deps),
            )
    except RemoteIdTaken as exc:
        _fail(deps, b, str(exc), "remote_id_taken")


def reconcile(deps: Deps, b: Claimed) -> bool:
    """A batch found in ``creating``: a create may or may not have reached the provider (its
    answer was lost, or the daemon died in between). Find out before creating anything again."""
    target = deps.settings.target(b.target)
    if target.can_list:
        settle_at = _settled_at(b, target, deps.clock.now())
        if deps.clock.now() < settle_at:
            # The create we lost the answer of may still be carried out: listing now could
            # miss it and create again (paying twice). Look once it can no longer land.
            with unit_of_work(deps.sessions) as s:
                ledger.reschedule(s, b, next_run_at=settle_at)
            return False
    with unit_of_work(deps.sessions) as s:
        ledger.count_unknown_outcome(s, b)
    if target.can_list:
        found = _find_by_key(deps, b)
        if found is not None:
            adopt(deps, b, found, how="adopted")
            return False
        _note(deps, b, "batch_create_reconciled", found=False, via="list")
    elif target.ambiguous_create_policy == "pause":
        return _park_for_review(deps, b)
    elif target.ambiguous_create_policy == "fail":
        _fail(
            deps,
            b,
            "a create may or may not have reached the provider, which "
            "cannot list batches; policy 'fail' stops here to avoid paying twice",
        )
        return False
    else:
        _note(
            deps,
            b,
            "batch_create_reconciled",
            found=None,
            via="policy:recreate",
            hint="the target cannot list batches; creating again may duplicate one",
        )
    if _cancel_if_requested(deps, b, "creating"):
        return False
    now = deps.clock.now()
    with unit_of_work(deps.sessions) as s:
        ledger.resend_create(s, b, at=now)
    return send_create(deps, dataclasses.replace(b, create_attempted_at=now))


def _settled_at(b: Claimed, target: TargetConfig, now: dt.datetime) -> dt.datetime:
    """When a create sent at ``b.create_attempted_at`` can no longer be carried out: the client's
    timeout plus the target's settle margin (bounded, not absolute: the orphan sweep catches a
    create that lands even later)."""
    sent = b.create_attempted_at or now
    return sent + dt.timedelta(seconds=target.timeout_seconds + target.create_settle_seconds)


def _find_by_key(deps: Deps, b: Claimed) -> BatchObject | None:
    key = str(b.idempotency_key)
    since = (b.create_attempted_at or deps.clock.now()) - RECONCILE_LOOKBACK
    for remote in deps.clients(b.target).iter_batches():
        if remote.metadata.get("orchestrator_key") == key:
            return remote
        created = from_unix(remote.created_at)
        if created is not None and created < since:
            break  # newest first: everything further is older than our attempt
    return None


def _park_for_review(deps: Deps, b: Claimed) -> bool:
    with unit_of_work(deps.sessions) as s:
        ledger.park_for_review(
            s, b, next_run_at=deps.clock.now() + dt.timedelta(hours=1), worker=_worker(deps)
        )
    return False


def _note(deps: Deps, b: Claimed, kind: str, **detail: Any) -> None:
    with unit_of_work(deps.sessions) as s:
        ledger.note(s, b, kind, worker=_worker(deps), **detail)


def _fail(deps: Deps, b: Claimed, message: str, code: str | None = None, **values: Any) -> None:
    """The batch failed as a whole, with ``message`` on the job row."""
    with unit_of_work(deps.sessions) as s:
        ledger.fail_batch(s, b, now=deps.clock.now(), message=message, code=code, **values)


# -- submitted → ingesting ---------------------------------------------------------------


def poll(deps: Deps, b: Claimed) -> bool:
    assert b.remote_batch_id is not None
    client = deps.clients(b.target)
    if b.job_cancel_requested and b.cancel_sent_at is None and _cancel_due(deps, b):
        _send_cancel(deps, b)
    remote = client.get_batch(b.remote_batch_id)
    now = deps.clock.now()
    changed = remote.status != b.remote_status
    unchanged = 0 if changed else b.unchanged_polls + 1
    fields = dict(
        _remote_fields(remote),
        poll_count=ledger.POLL_COUNT_PLUS_ONE,
        unchanged_polls=unchanged,
        polled_at=now,
        **ledger.RECOVERED,
    )
    if not remote_terminal(remote.status):
        overdue = _overdue(deps, b, remote, now)
        if overdue is not None:
            _fail(deps, b, overdue, PATIENCE_EXHAUSTED, **fields)
            return False
        at = deps.poll_schedule.next_poll(
            now=now,
            unchanged_polls=unchanged,
            rng=deps.rng,
            expires_at=from_unix(remote.expires_at),
            # finalizing: its requests have all run; early polls again, from that change
            polls=unchanged if remote.status == RemoteStatus.FINALIZING else b.poll_count + 1,
            created_at=b.create_attempted_at,  # the daemon's clock, as now
            done_at=backoff.eta(
                status=remote.status,
                counts=remote.request_counts,
                before=b.request_counts,
                since=b.polled_at,
                now=now,
            ),
        )
        with unit_of_work(deps.sessions) as s:
            ledger.poll_recorded(
                s,
                b,
                next_run_at=at,
                remote=fields,
                changed=changed,
                worker=_worker(deps),
                previous=b.remote_status,
            )
        return False
    if remote.status == RemoteStatus.FAILED:
        return _remote_failed(deps, b, remote, fields)
    with unit_of_work(deps.sessions) as s:
        ledger.mark_ingesting(
            s, b, next_run_at=now, remote=fields, worker=_worker(deps), previous=b.remote_status
        )
    return True


def _overdue(deps: Deps, b: Claimed, remote: BatchObject, now: dt.datetime) -> str | None:
    """A batch the provider still reports running (typically ``finalizing``) a patience past its
    ``expires_at``: it is given up, with a message saying so and how to collect it later."""
    expires = from_unix(remote.expires_at)
    if expires is None:
        return None
    late = (now - expires).total_seconds()
    if late < deps.policy.patience_seconds:
        return None
    return (
        f"the provider still reports batch {remote.id} {remote.status!r} {duration(late)} after "
        f"its expires_at ({expires:%Y-%m-%d %H:%M:%S} UTC); given up. What it produces can be "
        f"collected later with: orchestrator reingest {b.id}"
    )


def _cancel_due(deps: Deps, b: Claimed) -> bool:
    return b.cancel_retry_at is None or deps.clock.now() >= b.cancel_retry_at


def _send_cancel(deps: Deps, b: Claimed) -> None:
    target = deps.settings.target(b.target)
    detail: dict[str, Any] = {}
    if not target.can_cancel:
        kind = "batch_cancel_unsupported"  # collect what it produces; resubmit nothing
    else:
        assert b.remote_batch_id is not None
        try:
            deps.clients(b.target).cancel_batch(b.remote_batch_id)
            kind = "batch_cancel_sent"
        except (ApiBadRequest, ApiNotFound, ApiClientError) as exc:
            # Typically: already finished. Its results are collected as usual.
            kind, detail = "batch_cancel_refused", {"error": exc.message}
        except ApiError as exc:
            if exc.kind is not ErrorKind.TRANSIENT:
                raise  # a 429 or a bad key: the runner throttles or pauses the target for all
            # Not now (5xx, timeout, cut connection): try again on the retry backoff, and poll
            # meanwhile.
            delay = deps.policy.retry.delay(b.cancel_attempts + 1, deps.rng)
            retry_at = deps.clock.now() + dt.timedelta(seconds=delay)
            with unit_of_work(deps.sessions) as s:
                ledger.cancel_failed(
                    s, b, retry_at=retry_at, error=exc.message, worker=_worker(deps)
                )
            return
    with unit_of_work(deps.sessions) as s:
        ledger.cancel_sent(s, b, at=deps.clock.now(), kind=kind, worker=_worker(deps), **detail)


def _remote_failed(deps: Deps, b: Claimed, remote: BatchObject, fields: dict[str, Any]) -> bool:
    codes = {e.code for e in remote.errors if e.code}
    if "token_limit_exceeded" in codes and not b.job_cancel_requested:
        return _create_again_later(deps, b, remote)
    if codes and codes <= RETRYABLE_BATCH_CODES:
        return _retry_every_request(deps, b, remote, fields)
    by_line = {
        e.line: {"code": e.code, "message": e.message, "line": e.line}
        for e in remote.errors
        if e.line is not None
    }
    message = f"the provider failed batch {remote.id}: {remote.error_summary()}"
    _fail(deps, b, message, min(codes) if codes else None, by_line=by_line, **fields)
    return False


def _create_again_later(deps: Deps, b: Claimed, remote: BatchObject) -> bool:
    """Enqueued-token limit: "later", not "failed". Create it again from the same input file once
    the provider's queue has drained (spec 5.4); the requests do not use up an attempt."""
    summary = remote.error_summary()
    # the limit the provider states, when it states one: recorded with the event
    learned = next(
        (
            found
            for e in remote.errors
            if e.code == "token_limit_exceeded"
            and (found := capacity.enqueued_limit(e.message)) is not None
        ),
        None,
    )
    now = deps.clock.now()
    target = deps.settings.target(b.target)
    with unit_of_work(deps.sessions) as s:
        if learned is not None:
            # Admission keeps the model within it from now on, for every daemon: this batch
            # waits in line until it fits (and is split first if it is over it alone).
            _, limit = ledger.learn_limit(
                s, target=b.target, model=b.model, tokens=learned.tokens, message=summary,
                created_at=b.create_attempted_at, now=now,
            )  # fmt: skip
            at = now
            reason = (
                f"{capacity.WAITING}: the provider's enqueued-token limit for "
                f"{b.model or 'the model'} is {limit:,} (learned from token_limit_exceeded)"
            )
        else:
            # No limit stated: nothing to plan by; try again after the target's wait.
            at = now + dt.timedelta(seconds=target.token_limit_retry_seconds)
            reason = (
                f"{capacity.WAITING}: token_limit_exceeded without a stated limit; created "
                f"again at {at:%Y-%m-%d %H:%M:%S} UTC"
            )
        ledger.token_limited(
            s,
            b,
            remote_batch_id=remote.id,
            remote=remote.raw,
            error=summary,
            next_run_at=at,
            now=now,
            reason=reason,
            worker=_worker(deps),
            limit_tokens=learned.tokens if learned else None,
            limit_model=learned.model if learned else None,
        )
    return False


def _retry_every_request(
    deps: Deps, b: Claimed, remote: BatchObject, fields: dict[str, Any]
) -> bool:
    """Failed for a passing reason: every request used one attempt and goes into the next round,
    as if its line had come back "request_timeout". The ingest step does exactly that."""
    summary = remote.error_summary()
    with unit_of_work(deps.sessions) as s:
        ledger.mark_ingesting(
            s,
            b,
            next_run_at=deps.clock.now(),
            remote=fields,
            worker=_worker(deps),
            error=summary,
            remote_batch_id=remote.id,
        )
    return True


def _remote_fields(remote: BatchObject) -> dict[str, Any]:
    return {
        "remote_status": remote.status,
        "request_counts": dict(remote.request_counts) if remote.request_counts else None,
        "output_file_id": remote.output_file_id,
        "error_file_id": remote.error_file_id,
        "usage": dict(remote.usage) if remote.usage else None,
        "remote": dict(remote.raw),
        "remote_created_at": from_unix(remote.created_at),
        "expires_at": from_unix(remote.expires_at),
        "in_progress_at": from_unix(remote.in_progress_at),
        "finalizing_at": from_unix(remote.finalizing_at),
        "remote_finished_at": from_unix(remote.finished_at),
    }


# -- ingesting → done --------------------------------------------------------------------


def ingest(deps: Deps, b: Claimed) -> bool:
    if b.step_failures and b.remote_batch_id:
        # The last try could not read the files whole: ask again (an output_file_id that was
        # null may be there now), then download again.
        remote = deps.clients(b.target).get_batch(b.remote_batch_id)
        with unit_of_work(deps.sessions) as s:
            ledger.ingest_refreshed(s, b, remote=_remote_fields(remote))
    with unit_of_work(deps.sessions) as s:
        batch = queries.batch(s, b.id)
        file_ids = [f for f in (batch.output_file_id, batch.error_file_id) if f]
        remote_obj = dict(batch.remote or {})
        counts = batch.request_counts
        failed = batch.remote_status == RemoteStatus.FAILED
        missing = (
            ln.batch_error(batch.last_error or "the provider failed the batch", "batch_failed")
            if failed
            else None
        )
        first_sent = batch.first_sent_at or batch.create_attempted_at
    files = ", ".join(file_ids) if file_ids else "none"
    now = deps.clock.now()
    since = failing_since(b, now)
    _ingest_transaction(
        deps,
        b,
        _streamed(deps.clients(b.target), file_ids),
        remote_obj,
        missing,
        check=None if failed else (counts, files),
        resend_not_run=_patience_lasts(deps, first_sent),
        # files still short now, at the end of the patience: keep what they hold (below)
        short_since=since if b.step_failures and patience_spent(now, since, deps.policy) else None,
    )
    # Committed: the results are safe. Only now may the provider's copies go (where asked).
    retention.delete_provider_files(deps, b, file_ids)
    return False


def _patience_lasts(deps: Deps, first_sent: dt.datetime | None) -> bool:
    """Whether requests the provider never ran may be sent again: until the daemon's
    ``patience_seconds`` have passed since they were first sent (they use no attempt, so this is
    what bounds their rounds)."""
    if first_sent is None:
        return True
    waited = (deps.clock.now() - first_sent).total_seconds()
    return waited < deps.policy.patience_seconds


def _streamed(client: BatchApiClient, file_ids: list[str]) -> Iterator[bytes]:
    """The lines of the output file, then of the error file, as they arrive."""
    for file_id in file_ids:
        try:
            with client.open_lines(file_id) as lines:
                yield from lines
        except ApiError as exc:  # say which file, for the batch's last_error and the job's error
            exc.message = f"result file {file_id}: {exc.message}"
            exc.args = (exc.message,)
            raise


def _ingest_transaction(
    deps: Deps,
    b: Claimed,
    lines: Iterator[bytes],
    remote: dict[str, Any],
    missing: dict[str, Any] | None,
    *,
    check: tuple[Any, str] | None = None,
    resend_not_run: bool = True,
    short_since: dt.datetime | None = None,
) -> None:
    """Read the files into results and close the batch, in one transaction. With ``check``
    (the provider's request_counts and the file ids read): files that fall far short of the
    counts roll everything back and raise ApiIncompleteOutput (try again later); unless they have
    been short since ``short_since``, a whole patience: then what they hold is kept, and the batch
    fails for the rest (found by the lifecycle model: a provider that dropped most lines for good
    had the few successes its files held thrown away with the batch)."""
    now = deps.clock.now()
    with unit_of_work(deps.sessions) as s:
        # Lock first (no write yet: see the ledger's lock order): nobody else writes this batch
        # from here, and a lost lease stops us before anything is downloaded.
        ledger.lock(s, b, BatchState.INGESTING)
        stats = ingest_lines(
            s,
            job_id=b.job_id,
            batch_id=b.id,
            lines=lines,
            max_attempts=b.job_max_attempts,
            resubmit=not b.job_cancel_requested,
            missing_error=missing,
            spool_dir=deps.tmp_dir(),
            scrub=deps.clients(b.target).scrub,
            resend_not_run=resend_not_run,
        )
        give_up = None
        if check is not None:
            counts, files = check
            short = ln.short_read(
                counts,
                covered=stats.covered,
                members=stats.members,
                malformed=stats.malformed_lines,
            )
            if short and short_since is None:
                # Raised inside the transaction: nothing read is kept, nothing is sent again.
                raise ApiIncompleteOutput(f"{short} (files read: {files})")
            if short:
                message = gave_up(now, short_since, f"{short} (files read: {files})")
                give_up = given_up(Step.INGEST, message, b)
        cost, source, usage = _batch_cost(s, b, remote, now, totals=stats.model_totals())
        ledger.finish_ingest(
            s,
            b,
            now=now,
            counts={
                "succeeded_count": stats.succeeded,
                "failed_count": stats.failed,
                "retried_count": stats.retry,
                **stats.tokens()._asdict(),
            },
            cost=cost,
            cost_source=source,
            upserted=stats.upserted,
            retry=stats.retry,
            worker=_worker(deps),
            summary=stats.summary(),
            give_up=give_up,
        )
    deps.metrics.observe_ingest(b.target, costs.as_stored(cost), usage.models)


def _batch_cost(
    session: Session,
    b: Claimed,
    remote: dict[str, Any],
    at: dt.datetime,
    *,
    totals: list[ledger.ModelTotals] | None,
) -> tuple[Decimal | None, str, ledger.ModelCosts]:
    """Our prices, per model, are always recorded (``batch_model_costs``); the provider's figure,
    when it reports one, is the batch's cost."""
    computed = ledger.record_model_costs(
        session, batch_id=b.id, target=b.target, at=at, totals=totals
    )
    if computed.unpriced:
        log.warning("batch_models_unpriced", models=computed.unpriced)
    cost, source = costs.batch_cost(costs.provider_cost(remote), computed.cost)
    return cost, source, computed


# The one step table: what runs a batch in each open state, and its name for decisions and logs.
STEPS: dict[str, tuple[Step, StepFn]] = {
    BatchState.PLANNED: (Step.UPLOAD, upload),
    BatchState.UPLOADED: (Step.CREATE, create),
    BatchState.CREATING: (Step.RECONCILE, reconcile),
    BatchState.SUBMITTED: (Step.POLL, poll),
    BatchState.INGESTING: (Step.INGEST, ingest),
}
