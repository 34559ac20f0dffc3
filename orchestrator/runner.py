"""Runs one leased batch through as many steps as are due now, and applies the decision about any
failure with one fenced write. Also plans one pending job. Called from the daemon's worker pool."""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable
from typing import Any

import structlog

from orchestrator import plan, steps
from orchestrator.api.errors import ApiError, TargetBlocked
from orchestrator.db import ledger, queries
from orchestrator.db.queries import Claimed
from orchestrator.db.session import TRANSIENT_DB_ERRORS, Session, unit_of_work
from orchestrator.deps import Deps
from orchestrator.domain import decide as dc
from orchestrator.domain.decide import Step
from orchestrator.domain.packing import Chunk
from orchestrator.errors import LeaseLost

log = structlog.get_logger(__name__)


def run_batch(deps: Deps, claimed: Claimed) -> None:
    """Run the leased batch until it is rescheduled, finished, or its lease is lost."""
    current: Claimed | None = claimed
    with structlog.contextvars.bound_contextvars(job_id=claimed.job_id, batch_id=claimed.id):
        while current is not None:
            current = _one_step(deps, current)


def _one_step(deps: Deps, b: Claimed) -> Claimed | None:
    """One step of the batch, timed and counted by outcome: ok, lease_lost, target_blocked (not
    sent: the target asked everyone to wait), api_error (the decision is applied here) or
    crashed (a bug: logged with its traceback, retried)."""
    step, run = steps.STEPS[b.state]
    outcome = "crashed"
    started = time.monotonic()
    try:
        go_on = run(deps, b)
        outcome = "ok"
        if not go_on:
            return None
        with unit_of_work(deps.sessions) as s:
            return queries.refresh(s, b.id, b.token)
    except LeaseLost as exc:
        outcome = "lease_lost"
        log.warning("lease_lost", step=step, error=str(exc))
    except TargetBlocked as exc:
        outcome = "target_blocked"
        at = deps.clock.now() + dt.timedelta(seconds=exc.retry_after or 1.0)
        _write(deps, lambda s: ledger.reschedule(s, b, next_run_at=at))
    # The exception goes to the write bound in a partial, never into a local of this frame: this
    # frame is in its traceback, and a local holding it (a closure's cell too) would make a cycle
    # that keeps every frame of the step alive (an upload's reads among them, 16 MB for 50,000
    # requests) until the interpreter's next full collection.
    except ApiError as exc:
        outcome = "api_error"
        _write(deps, functools.partial(_apply_failure, deps, b=b, step=step, exc=exc))
    except Exception as exc:  # the outer guard: a bug must not kill the worker or lose the batch
        log.exception("step_crashed", step=step)
        _write(deps, functools.partial(_crashed, deps, b=b, exc=exc))
    finally:
        deps.metrics.observe_step(step, outcome, time.monotonic() - started)
    return None


def _write(deps: Deps, write: Callable[[Session], None]) -> None:
    try:
        with unit_of_work(deps.sessions) as s:
            write(s)
    except LeaseLost as exc:
        log.warning("lease_lost", error=str(exc))


def _apply_failure(deps: Deps, s: Session, b: Claimed, step: Step, exc: ApiError) -> None:
    now = deps.clock.now()
    failures = b.step_failures + 1
    since = steps.failing_since(b, now)
    decision = dc.decide(
        exc.kind,
        step=step,
        failures=failures,
        message=exc.message,
        retry_after=getattr(exc, "retry_after", None),
        now=now,
        policy=deps.policy,
        rng=deps.rng,
        since=since,
    )
    values: dict[str, Any] = {
        "step_failures": failures,
        "last_error": str(exc)[:2000],
        "failing_since": since or now,
    }
    log.warning(
        "step_failed",
        step=step,
        error=str(exc),
        kind=exc.kind,
        decision=type(decision).__name__,
        failures=failures,
    )
    match decision:
        case dc.Retry(at=at):
            ledger.reschedule(s, b, next_run_at=at, **values)
        case dc.Throttle(until=until):
            ledger.throttle(s, b, target=b.target, until=until, error=exc.message, **values)
        case dc.PauseTarget(until=until, reason=reason):
            ledger.pause_target(s, b, target=b.target, until=until, reason=reason, **values)
        case dc.Split():
            if b.request_count > 1:
                ledger.split(s, b, now=now)
            else:
                message = f"the provider refused the file as too large: {exc}"
                ledger.fail_batch(s, b, now=now, message=message)
        case dc.Reupload():
            ledger.reupload(s, b, now=now, error=exc.message, **values)
        case dc.Fail(message=message, code=code):
            if code == dc.PATIENCE_EXHAUSTED:
                message = steps.given_up(step, message, b)
            else:
                message = f"{step} failed: {message}"
            ledger.fail_batch(s, b, now=now, message=message, code=code)


def _crashed(deps: Deps, s: Session, b: Claimed, exc: Exception) -> None:
    failures = b.step_failures + 1
    delay = deps.policy.retry.delay(failures, deps.rng)
    ledger.reschedule(
        s,
        b,
        step_failures=failures,
        failing_since=steps.failing_since(b, deps.clock.now()) or deps.clock.now(),
        last_error=f"internal error: {type(exc).__name__}: {exc}"[:2000],
        next_run_at=deps.clock.now() + dt.timedelta(seconds=delay),
    )


# A chunk this large has its upload's first read started while planning writes it (the read
# takes 0.07 s for 50,000 requests; for a few hundred it is not worth a thread's hop).
READ_AHEAD_FROM = 5_000


def _read_ahead(deps: Deps, job_id: int) -> Callable[[list[Chunk]], None]:
    def start(chunks: list[Chunk]) -> None:
        for chunk in chunks:
            if chunk.count >= READ_AHEAD_FROM:
                deps.prefetch.start(
                    (job_id, chunk.first_seq, chunk.last_seq),
                    functools.partial(_read_items, deps, job_id, chunk.first_seq, chunk.last_seq),
                )

    return start


def _read_items(deps: Deps, job_id: int, first: int, last: int) -> list[queries.ReaderItem]:
    with unit_of_work(deps.sessions) as s:
        return queries.range_items(s, job_id, first, last)


def plan_one(deps: Deps, job_id: int) -> str | None:
    """Plan the job if it is still pending, for a target this daemon knows, and nobody else is
    at it. Returns its new status (None: left as it was).

    A database that is away or a transaction that lost a conflict leaves the job pending for the
    next tick; any other exception is a bug in planning this job, which then fails with the
    error on its row rather than being retried forever.
    """
    with structlog.contextvars.bound_contextvars(job_id=job_id):
        try:
            with unit_of_work(deps.sessions) as s:
                job = queries.lock_pending_job(s, job_id, targets=deps.settings.served)
                if job is None:
                    return None
                return plan.plan_job(
                    s,
                    job,
                    deps.settings.targets.get(job.target),
                    deps.clock.now(),
                    planned=_read_ahead(deps, job_id),
                )
        except TRANSIENT_DB_ERRORS as exc:
            log.warning("job_plan_deferred", error=f"{type(exc).__name__}: {exc}"[:300])
            return None
        except Exception as exc:  # a poisoned job must not be retried forever
            log.exception("job_plan_crashed")
            with unit_of_work(deps.sessions) as s:
                job = queries.lock_pending_job(s, job_id, targets=deps.settings.served)
                if job is not None:
                    plan.fail_job(
                        s,
                        job,
                        deps.clock.now(),
                        f"internal error while planning: {type(exc).__name__}: {exc}",
                    )
            return None
