"""Runs one leased batch through as many steps as are due now, and applies the decision about any
failure with one fenced write. Also plans one pending job. Called from the daemon's worker pool."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.orm import Session

from orchestrator import plan, steps
from orchestrator import transitions as tr
from orchestrator.api.errors import ApiError, TargetBlocked
from orchestrator.db import repo
from orchestrator.db.repo import Claimed
from orchestrator.db.session import unit_of_work
from orchestrator.deps import Deps
from orchestrator.domain import decide as dc
from orchestrator.domain.decide import Step
from orchestrator.domain.states import BatchState
from orchestrator.errors import ConfigError, LeaseLost

log = structlog.get_logger(__name__)

STEP_NAMES = {
    BatchState.PLANNED: Step.UPLOAD,
    BatchState.UPLOADED: Step.CREATE,
    BatchState.CREATING: Step.RECONCILE,
    BatchState.SUBMITTED: Step.POLL,
    BatchState.INGESTING: Step.INGEST,
}


def run_batch(deps: Deps, claimed: Claimed) -> None:
    """Run the leased batch until it is rescheduled, finished, or its lease is lost."""
    current: Claimed | None = claimed
    with structlog.contextvars.bound_contextvars(job_id=claimed.job_id, batch_id=claimed.id):
        while current is not None:
            current = _one_step(deps, current)


def _one_step(deps: Deps, b: Claimed) -> Claimed | None:
    step = STEP_NAMES[BatchState(b.state)]
    try:
        go_on = steps.STEPS[b.state](deps, b)
        if not go_on:
            return None
        with unit_of_work(deps.sessions) as s:
            return repo.refresh(s, b.id, b.token)
    except LeaseLost as exc:
        log.warning("lease_lost", step=step, error=str(exc))
    except TargetBlocked as exc:
        at = deps.clock.now() + dt.timedelta(seconds=exc.retry_after or 1.0)
        _write(deps, lambda s: repo.release(s, b.id, b.token, next_run_at=at))
    except ApiError as exc:
        error = exc
        _write(deps, lambda s: _apply_failure(deps, s, b, step, error))
    except Exception as exc:  # the outer guard: a bug must not kill the worker or lose the batch
        log.exception("step_crashed", step=step)
        crash = exc
        _write(deps, lambda s: _crashed(deps, s, b, crash))
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
    decision = dc.decide(
        exc.kind,
        step=step,
        failures=failures,
        message=exc.message,
        retry_after=getattr(exc, "retry_after", None),
        now=now,
        policy=deps.policy,
        rng=deps.rng,
    )
    values: dict[str, Any] = {"step_failures": failures, "last_error": str(exc)[:2000]}
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
            repo.release(s, b.id, b.token, next_run_at=at, **values)
        case dc.Throttle(until=until):
            repo.block_target(
                s, b.target, until=until, reason=f"rate limited: {exc.message}", paused=False
            )
            repo.release(s, b.id, b.token, next_run_at=until, **values)
            repo.record_event(
                s,
                "target_throttled",
                job_id=b.job_id,
                batch_id=b.id,
                target=b.target,
                until=until.isoformat(),
                error=exc.message,
            )
        case dc.PauseTarget(until=until, reason=reason):
            repo.block_target(s, b.target, until=until, reason=reason, paused=True)
            repo.release(s, b.id, b.token, next_run_at=until, **values)
            repo.record_event(
                s, "target_paused", job_id=b.job_id, batch_id=b.id, target=b.target, error=reason
            )
            log.error(
                "target_paused",
                target=b.target,
                error=reason,
                hint="jobs wait; they resume by themselves once the key works",
            )
        case dc.Split():
            if b.request_count > 1:
                tr.split(s, batch_id=b.id, token=b.token, now=now)
            else:
                tr.fail_batch(
                    s,
                    batch_id=b.id,
                    job_id=b.job_id,
                    token=b.token,
                    now=now,
                    message=f"the provider refused the file as too large: {exc}",
                )
        case dc.Reupload():
            repo.release(
                s,
                b.id,
                b.token,
                state=BatchState.PLANNED,
                input_file_id=None,
                idempotency_key=None,
                next_run_at=now,
                **values,
            )
            repo.record_event(
                s, "batch_reupload", job_id=b.job_id, batch_id=b.id, error=exc.message
            )
        case dc.Fail(message=message):
            tr.fail_batch(
                s,
                batch_id=b.id,
                job_id=b.job_id,
                token=b.token,
                now=now,
                message=f"{step} failed: {message}",
            )


def _crashed(deps: Deps, s: Session, b: Claimed, exc: Exception) -> None:
    failures = b.step_failures + 1
    delay = deps.policy.retry.delay(failures, deps.rng)
    repo.release(
        s,
        b.id,
        b.token,
        step_failures=failures,
        last_error=f"internal error: {type(exc).__name__}: {exc}"[:2000],
        next_run_at=deps.clock.now() + dt.timedelta(seconds=delay),
    )


def plan_one(deps: Deps, job_id: int) -> str | None:
    """Plan the job if it is still pending and nobody else is at it. Returns its new status."""
    with structlog.contextvars.bound_contextvars(job_id=job_id):
        try:
            with unit_of_work(deps.sessions) as s:
                job = repo.lock_pending_job(s, job_id)
                if job is None:
                    return None
                try:
                    target = deps.settings.target(job.target)
                except ConfigError:
                    target = None
                return plan.plan_job(s, job, target, deps.clock.now())
        except Exception as exc:  # a poisoned job must not be retried forever
            log.exception("job_plan_crashed")
            with unit_of_work(deps.sessions) as s:
                job = repo.lock_pending_job(s, job_id)
                if job is not None:
                    plan.fail_job(
                        s,
                        job,
                        deps.clock.now(),
                        f"internal error while planning: {type(exc).__name__}: {exc}",
                    )
            return None
